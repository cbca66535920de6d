"""The sandboxed validator child. Standalone: stdlib and torch only, no Django.

Run as `python -I sandbox_child.py` with a JSON request on stdin:
{"path": ..., "format": "torchscript"|"torch_export", "signature": {...}|null}.
Writes one JSON line to stdout: {"ok": true, "signature", "parameter_count", "load_time_ms"}
or {"ok": false, "reason"}. Nothing else reaches stdout: before the model is loaded, stdout's
descriptor is kept for the verdict alone and descriptor 1 points at stderr, so whatever the
model prints (TorchScript's print(), from forward() or from a task it forked that outlives it)
lands in stderr and can never be read as a verdict.
"""

import contextlib
import json
import os
import re
import sys
import time
import traceback

DTYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BF16": "bfloat16",
}


def datatype_of(torch, dtype):
    for name, attr in DTYPES.items():
        if getattr(torch, attr) == dtype:
            return name
    raise ValueError(f"the model uses the dtype {dtype}, which has no Open Inference Protocol datatype")


def zeros_for(torch, inputs, lower_bounds=None, grow: int = 0):
    """Zeros for each input in its signature's shape: each variable dimension at its smallest, plus `grow`."""
    tensors = []
    for spec, bounds in zip(inputs, lower_bounds or [None] * len(inputs), strict=True):
        shape = [max(1, (bounds or {}).get(i, 1)) + grow if dim == -1 else dim for i, dim in enumerate(spec["shape"])]
        tensors.append(torch.zeros(shape, dtype=getattr(torch, DTYPES[spec["datatype"]])))
    return tensors


def mark_varying_dims(torch, module, inputs, lower_bounds, outputs):
    """An input with a variable dimension past the first (a sequence length, an image size): run once more
    with every variable dimension one larger, and mark -1 the output dimensions that moved with it.

    One pass alone would record such an output at the size of the zeros it was given (`[-1, 1, 8]` for
    hidden states of any length), a signature the runtime would then hold every answer to. A model that
    refuses the larger input keeps what the first pass recorded.
    """
    if not any(-1 in spec["shape"][1:] for spec in inputs):
        return outputs
    try:
        with torch.inference_mode():
            again = describe_outputs(torch, module(*zeros_for(torch, inputs, lower_bounds, grow=1)))
    except Exception:
        return outputs
    for out, other in zip(outputs, again, strict=False):
        if len(out["shape"]) == len(other["shape"]):
            out["shape"] = [-1 if a != b else a for a, b in zip(out["shape"], other["shape"], strict=True)]
    return outputs


def describe_outputs(torch, out):
    if isinstance(out, torch.Tensor):
        items = [("output__0", out)]
    elif isinstance(out, dict):
        items = list(out.items())
    elif isinstance(out, list | tuple):
        items = [(f"output__{i}", t) for i, t in enumerate(out)]
    else:
        raise ValueError(
            f"the model returned {type(out).__name__}; return a tensor, or a tuple, list or dict of tensors"
        )
    outputs = []
    for name, tensor in items:
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"output {name!r} is a {type(tensor).__name__}, not a tensor")
        outputs.append({"name": str(name), "datatype": datatype_of(torch, tensor.dtype), "shape": list(tensor.shape)})
    return outputs


def mark_batch_dims(declared_inputs, outputs):
    # An output's leading dimension follows the inputs' variable leading dimension.
    if declared_inputs and all(spec["shape"][:1] == [-1] for spec in declared_inputs):
        for out in outputs:
            if out["shape"]:
                out["shape"][0] = -1
    return outputs


def export_signature(torch, ep):
    """Inputs as recorded in a torch.export program; symbolic dims become -1."""
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    ranges = getattr(ep, "range_constraints", {}) or {}
    inputs, lower = [], []
    for name in ep.graph_signature.user_inputs:
        node = placeholders.get(name)
        val = node.meta.get("val") if node is not None else None
        if not isinstance(val, torch.Tensor):
            raise ValueError(f"input {name!r} is not a tensor; only tensor inputs can be served")
        shape, bounds = [], {}
        for i, dim in enumerate(val.shape):
            if isinstance(dim, int):
                shape.append(dim)
            else:
                shape.append(-1)
                expr = dim.node.expr
                vr = ranges.get(expr)
                if vr is not None:
                    with contextlib.suppress(TypeError, ValueError):
                        bounds[i] = int(vr.lower)
        inputs.append({"name": name, "datatype": datatype_of(torch, val.dtype), "shape": shape})
        lower.append(bounds)
    return inputs, lower


def check_declared(declared, recorded):
    if [d["name"] for d in declared] != [r["name"] for r in recorded]:
        raise SignatureMismatch(
            f"the signature names inputs {[d['name'] for d in declared]}, "
            f"the archive records {[r['name'] for r in recorded]}"
        )
    for d, r in zip(declared, recorded, strict=True):
        if d["datatype"] != r["datatype"]:
            raise SignatureMismatch(f"input {d['name']!r} is {r['datatype']} in the archive, not {d['datatype']}")
        if len(d["shape"]) != len(r["shape"]) or any(
            rd != -1 and dd != rd for dd, rd in zip(d["shape"], r["shape"], strict=True)
        ):
            raise SignatureMismatch(f"input {d['name']!r} has shape {r['shape']} in the archive, not {d['shape']}")


def error_summary(exc: Exception) -> str:
    """The line of an error that says what went wrong.

    TorchScript wraps the real error after a generic first line and a traceback of
    the scripted code; the real message is its last line.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1] if len(lines) > 1 and "TorchScript interpreter" in lines[0] else lines[0]
    prefix = f"{type(exc).__name__}: "
    return (line[len(prefix) :] if line.startswith(prefix) else line)[:400]


class SignatureMismatch(Exception):
    pass


def validate(request):
    import torch

    torch.set_num_threads(1)
    path, fmt, signature = request["path"], request["format"], request.get("signature")
    started = time.perf_counter()
    lower_bounds = None
    try:
        if fmt == "torchscript":
            module = torch.jit.load(path, map_location="cpu")
            module.eval()
            parameter_count = sum(p.numel() for p in module.parameters())
            inputs = signature["inputs"]
            # The runtime binds inputs to forward()'s arguments by name: a version is
            # only ready if it will start there.
            takes = [arg.name for arg in module.forward.schema.arguments[1:]]
            if [spec["name"] for spec in inputs] != takes:
                raise SignatureMismatch(
                    f"the signature names the inputs {[spec['name'] for spec in inputs]}, "
                    f"the model's forward() takes {takes} (in this order); use those names"
                )
        else:
            ep = torch.export.load(path)
            recorded, lower_bounds = export_signature(torch, ep)
            if signature:
                check_declared(signature["inputs"], recorded)
            inputs = recorded if not signature else signature["inputs"]
            module = ep.module()
            params = set(ep.graph_signature.parameters)
            parameter_count = sum(t.numel() for k, t in ep.state_dict.items() if k in params)
    except SignatureMismatch as exc:
        return {"ok": False, "reason": f"The signature does not match the archive: {exc}. Fix or omit the signature."}
    except Exception as exc:
        if "Weights only load failed" in str(exc):  # TORCH_FORCE_WEIGHTS_ONLY_LOAD refused a pickle
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            return {
                "ok": False,
                "reason": "The archive holds a pickled Python object"
                + (f" ({found.group(1)})" if found else "")
                + ", not only tensors. Unpickling it would run arbitrary code, so Slipway refuses it. "
                "Export the model with tensors as its example inputs and constants: "
                "torch.export.save(torch.export.export(model, example_inputs), 'model.pt2').",
            }
        return {
            "ok": False,
            "reason": f"torch could not load the archive ({type(exc).__name__}: {str(exc)[:400]}). "
            "Export it again with the same torch version as the runtime.",
        }
    load_ms = (time.perf_counter() - started) * 1000

    try:
        with torch.inference_mode():
            out = module(*zeros_for(torch, inputs, lower_bounds))
        outputs = mark_batch_dims(inputs, describe_outputs(torch, out))
    except Exception as exc:
        shapes = ", ".join(f"{s['name']}: {s['datatype']} {s['shape']}" for s in inputs)
        return {
            "ok": False,
            "reason": f"The model does not accept its signature ({shapes}): {type(exc).__name__}: "
            f"{error_summary(exc)}. Check the input names, order, shapes and datatypes.",
        }
    outputs = mark_varying_dims(torch, module, inputs, lower_bounds, outputs)
    signature = {"inputs": inputs, "outputs": outputs}
    # A signature past the limit could not be handed to the runtime, and would make this verdict's line
    # larger than the worker reads: say how large it is instead (the worker words the rejection).
    size, limit = len(json.dumps(signature, separators=(",", ":"))), request.get("max_signature_bytes")
    if limit and size > limit:
        return {"ok": True, "signature_too_large": {"inputs": len(inputs), "outputs": len(outputs), "size": size}}
    return {
        "ok": True,
        "signature": signature,
        "parameter_count": int(parameter_count),
        "load_time_ms": round(load_ms, 2),
    }


def main():
    verdict = os.fdopen(os.dup(1), "w")  # the verdict's own descriptor, which no print() reaches
    os.dup2(2, 1)  # the model's prints (TorchScript's go to descriptor 1 through Python's print) go to stderr
    sys.stdout = sys.stderr
    try:
        request = json.loads(sys.stdin.read())
        result = validate(request)
    except MemoryError:
        result = {"ok": False, "reason": "The model needs more memory than the validator may use."}
    except Exception:
        result = {"ok": False, "reason": "The validator crashed: " + traceback.format_exc(limit=3)[-600:]}
    verdict.write(json.dumps(result) + "\n")
    verdict.flush()


if __name__ == "__main__":
    main()
