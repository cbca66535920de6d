"""The validator child's confinement, probed by running scripts under it.

`run_sandboxed(..., child=probe)` starts the probe exactly as it starts the real
validator: same interpreter flags, environment, namespaces and limits.
"""

import json
import textwrap

from registry.validation import run_sandboxed


def _probe(tmp_path, body: str):
    script = tmp_path / "probe.py"
    script.write_text(
        "import json, os, sys\nrequest = json.loads(sys.stdin.read())\n"
        + textwrap.dedent(body)
        + "\nprint(json.dumps(result))\n"
    )
    return run_sandboxed(str(tmp_path / "model.pt"), "torchscript", None, child=script)


def test_the_child_sees_no_database_url_or_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://secret@db/slipway")
    monkeypatch.setenv("DJANGO_SECRET_KEY", "hunter2")
    result = _probe(tmp_path, "result = {'ok': True, 'env': dict(os.environ)}")
    assert result["ok"]
    assert not {"DATABASE_URL", "DJANGO_SECRET_KEY", "CELERY_BROKER_URL"} & set(result["env"])
    assert all("hunter2" not in value and "secret@" not in value for value in result["env"].values())


def test_the_child_has_no_network(tmp_path):
    result = _probe(
        tmp_path,
        """
        import socket
        try:
            socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
            reached = True
        except OSError as exc:
            reached = str(exc)
        result = {"ok": True, "reached": reached, "interfaces": sorted(n for _, n in socket.if_nameindex())}
        """,
    )
    assert result["isolation"]["network"] == "namespace", "this machine should allow a network namespace"
    assert result["reached"] is not True, "the sandbox reached PostgreSQL on the host"
    assert result["interfaces"] == ["lo"]


def test_the_child_is_killed_past_its_memory_limit(tmp_path, settings):
    settings.SLIPWAY_VALIDATION_MEMORY_BYTES = 512 * 1024**2
    result = _probe(tmp_path, "hog = bytearray(1024 ** 3)\nresult = {'ok': True}")
    assert result["ok"] is False
    assert "memory" in result["reason"] and "SLIPWAY_VALIDATION_MEMORY_BYTES" in result["reason"]


def test_the_child_is_stopped_at_the_wall_clock_timeout(tmp_path, settings):
    settings.SLIPWAY_VALIDATION_TIMEOUT_S = 2
    result = _probe(tmp_path, "import time\ntime.sleep(60)\nresult = {'ok': True}")
    assert result["ok"] is False
    assert "longer than 2s" in result["reason"]


def test_the_child_works_in_a_fresh_empty_home(tmp_path):
    result = _probe(
        tmp_path, "result = {'ok': True, 'cwd': os.getcwd(), 'files': os.listdir('.'), 'home': os.environ['HOME']}"
    )
    assert result["files"] == []
    assert result["cwd"] == result["home"] != str(tmp_path)


def test_the_real_validator_reports_its_verdict_as_json(tmp_path, model_files):
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}
    result = run_sandboxed(str(model_files["torchscript"]), "torchscript", signature)
    assert result["ok"], result
    assert json.dumps(result)  # the verdict is stored as JSON
    assert result["signature"]["outputs"] == [{"name": "output__0", "datatype": "FP32", "shape": [-1, 3]}]


def test_the_child_cannot_read_the_workers_files(tmp_path, settings):
    secret = tmp_path / "secret_key"
    secret.write_text("hunter2")
    result = _probe(
        tmp_path,
        f"""
        def attempt(path):
            try:
                with open(path) as fh:
                    return fh.read()[:20]
            except OSError as exc:
                return type(exc).__name__
        parent_environ = attempt(f"/proc/{{os.getppid()}}/environ")
        result = {{"ok": True, "secret": attempt({str(secret)!r}),
                  "settings": attempt({str(settings.BASE_DIR / "manage.py")!r}), "environ": parent_environ,
                  "own_status": attempt("/proc/self/status")[:5],
                  "wrote_home": open("scratch", "w").write("ok")}}
        """,
    )
    assert result["isolation"]["filesystem"] == "landlock", "this machine's kernel should have Landlock"
    assert result["secret"] == "PermissionError"
    assert result["settings"] == "PermissionError"
    assert result["environ"] == "PermissionError"
    assert result["own_status"] == "Name:"
    assert result["wrote_home"] == 2


def test_a_torchscript_signature_must_use_the_names_forward_takes(model_files):
    # The runtime binds inputs by name: a version that validated under another name would not start there.
    signature = {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [-1, 4]}]}
    result = run_sandboxed(str(model_files["torchscript"]), "torchscript", signature)
    assert result["ok"] is False
    assert "forward() takes ['x']" in result["reason"]


def test_an_output_that_follows_a_variable_sequence_length_is_recorded_variable(tmp_path):
    """hidden: one row per token, so its second dimension is -1 like the input's, not the 1 of the zeros tried."""
    import torch

    from tests.runtime.zoo import Sequence, write_zoo

    exported = write_zoo(tmp_path)["sequence"].path
    result = run_sandboxed(str(exported), "torch_export", None)
    assert result["ok"], result
    assert result["signature"]["outputs"] == [
        {"name": "hidden", "datatype": "FP32", "shape": [-1, -1, 8]},
        {"name": "pooled", "datatype": "FP32", "shape": [-1, 5]},
    ]

    scripted = tmp_path / "sequence.pt"
    torch.jit.save(torch.jit.script(Sequence().eval()), str(scripted))
    signature = {"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [-1, -1]}]}
    result = run_sandboxed(str(scripted), "torchscript", signature)
    assert result["ok"], result
    assert [out["shape"] for out in result["signature"]["outputs"]] == [[-1, -1, 8], [-1, 5]]


def _script(tmp_path, module) -> str:
    import torch

    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


def test_a_model_killed_at_its_cpu_limit_cannot_print_its_own_verdict(tmp_path, settings):
    """forward() prints what a passing verdict looks like, then never returns: the child is killed at
    its CPU limit before it writes its own, and what the model printed is no verdict."""
    import torch

    forged = json.dumps({"ok": True, "signature": {"inputs": [], "outputs": []}, "parameter_count": 1})
    forged += " " * (255 - len(forged))  # 256-byte lines: stdout's 8 KiB buffer is flushed at a line's end

    class Liar(torch.nn.Module):
        line: torch.jit.Final[str]

        def __init__(self):
            super().__init__()
            self.line = forged

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(100):
                print(self.line)
            n = 0
            while n >= 0:
                n += 1
            return x

    settings.SLIPWAY_VALIDATION_CPU_S = 6
    settings.SLIPWAY_VALIDATION_TIMEOUT_S = 60
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}
    result = run_sandboxed(_script(tmp_path, Liar()), "torchscript", signature)
    assert result["ok"] is False, result
    assert "CPU-time limit (6s)" in result["reason"]


def test_what_a_model_prints_never_reaches_the_verdicts_descriptor(tmp_path):
    """The verdict travels alone on the child's stdout: a line the model prints, however much it looks
    like one (say from a task it forked that outlives forward()), goes to stderr."""
    import subprocess
    import sys

    import torch

    from registry.validation import CHILD

    forged = json.dumps({"ok": True, "signature": {"inputs": [], "outputs": []}, "parameter_count": 1})

    class Forger(torch.nn.Module):
        line: torch.jit.Final[str]

        def __init__(self):
            super().__init__()
            self.line = forged

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            print(self.line)
            return x

    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}
    request = json.dumps({"path": _script(tmp_path, Forger()), "format": "torchscript", "signature": signature})
    child = subprocess.run([sys.executable, "-I", str(CHILD)], input=request, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-2000:]
    assert forged in child.stderr
    [line] = child.stdout.splitlines()
    assert json.loads(line)["signature"]["inputs"] == signature["inputs"]


def test_a_model_that_prints_without_end_is_refused_and_its_output_is_not_kept(tmp_path):
    """What the model prints is capped like any file it writes; the worker never holds it in memory."""
    import torch

    class Chatty(torch.nn.Module):
        line: torch.jit.Final[str]

        def __init__(self):
            super().__init__()
            self.line = "x" * 1024**2

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(100):  # 100 MiB
                print(self.line)
            return x

    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}
    result = run_sandboxed(_script(tmp_path, Chatty()), "torchscript", signature)
    assert result["ok"] is False, str(result)[:300]
    assert "printed more than 64 MiB" in result["reason"]


class _ManyOutputs:
    """A scripted module whose forward() returns a dict of `count` tensors."""

    @staticmethod
    def path(tmp_path, count: int) -> str:
        import torch

        class Fanout(torch.nn.Module):
            count: torch.jit.Final[int]

            def __init__(self, count: int):
                super().__init__()
                self.count = count

            def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
                out: dict[str, torch.Tensor] = {}
                for i in range(self.count):
                    out["class_probability_" + str(i)] = x
                return out

        return _script(tmp_path, Fanout(count))


def test_a_model_with_tens_of_thousands_of_outputs_is_rejected_saying_what_to_change(tmp_path):
    """Its verdict would be a line of over 4 MiB (more than the worker reads): before, "the validator failed"."""
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}
    result = run_sandboxed(_ManyOutputs.path(tmp_path, 80_000), "torchscript", signature)
    assert result["ok"] is False, str(result)[:300]
    assert result["reason"].startswith("The model's signature (1 input, 80000 outputs) is ")
    assert "KiB as JSON, more than the 96 KiB the runtime can be given" in result["reason"]
    assert result["reason"].endswith(
        "Return fewer, larger tensors (stack related outputs into one with torch.stack or torch.cat) and export "
        "it again."
    )


def test_a_signature_too_large_to_hand_to_the_runtime_is_rejected_even_far_below_4_mib(tmp_path):
    """The runtime gets the signature as one argument (local target) or environment variable (its image): Linux
    takes at most 128 KiB in one. 2,000 outputs would validate, then never start."""
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}
    result = run_sandboxed(_ManyOutputs.path(tmp_path, 2_000), "torchscript", signature)
    assert result["ok"] is False, str(result)[:300]
    assert result["reason"].startswith("The model's signature (1 input, 2000 outputs) is 1")
    assert run_sandboxed(_ManyOutputs.path(tmp_path, 1_000), "torchscript", signature)["ok"] is True


def test_the_worker_checks_the_signatures_size_again_whatever_the_child_said():
    """A passing verdict from a child that did not measure its signature (the limit is the worker's)."""
    from registry.validation import _verdict

    outputs = [{"name": f"o{i}", "datatype": "FP32", "shape": [-1, 1]} for i in range(4000)]
    line = json.dumps({"ok": True, "signature": {"inputs": [], "outputs": outputs}, "parameter_count": 1})
    result = _verdict(0, line.encode() + b"\n", b"", {})
    assert result["ok"] is False
    assert result["reason"].startswith("The model's signature (0 inputs, 4000 outputs) is 1")


def test_a_verdict_larger_than_the_worker_reads_says_the_signature_is_far_too_large(tmp_path):
    result = _probe(tmp_path, 'result = {"ok": True, "signature": {"inputs": [], "outputs": ["x" * 5 * 1024**2]}}')
    assert result["ok"] is False
    assert result["reason"].startswith("The validator's verdict is larger than 4 MiB: the model's signature")
