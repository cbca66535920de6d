import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from controlplane.devserver import bind_address


class Command(BaseCommand):
    help = "Write a small model (a 4-feature classifier) to try Slipway with, and print how to upload it."

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=["torchscript", "pt2"], default="torchscript")
        parser.add_argument("--out", help="Where to write it (default: var/demo/iris.pt or iris.pt2).")

    def handle(self, *args, format, out, **options):
        import torch  # only this command needs torch; the web and worker never import it

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
        suffix = ".pt" if format == "torchscript" else ".pt2"
        path = Path(out or settings.VAR_DIR / "demo" / f"iris{suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if format == "torchscript":
            torch.jit.save(torch.jit.script(model), str(path))
        else:
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.export.export(model, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(path))
        # nn.Sequential's forward() takes one argument named "input".
        signature = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]}
        self.stderr.write(f"Wrote {path} ({path.stat().st_size} bytes). Upload it with the signature:")
        self.stderr.write(
            f'  curl -H "Authorization: Bearer $TOKEN" -F artifact=@{path} '
            f"-F 'signature={json.dumps(signature)}' http://{bind_address()}/api/v1/models/iris/versions/"
        )
        self.stdout.write(json.dumps(signature))
