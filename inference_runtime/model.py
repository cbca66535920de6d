"""Loading one model: checksum, format by content, device and precision, signature, warm-up.

Everything here runs on the model thread (see batching.py): loading, warm-up and every
forward pass, so CUDA state and torch's thread-local modes stay on one thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import warnings
import zipfile
from typing import Any, NamedTuple

import numpy as np
import torch

from inference_runtime import datatypes
from inference_runtime.config import Config
from inference_runtime.datatypes import TensorSpec
from inference_runtime.errors import InferenceFailed, ModelLoadError

log = logging.getLogger("inference_runtime")

PLATFORMS = {"torchscript": "pytorch_torchscript", "torch_export": "pytorch_torch_export"}
# The Open Inference Protocol datatypes as torch dtypes (datatypes.py has their numpy equivalents).
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
}

FROM_TORCH: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}


def datatype_of(dtype: torch.dtype) -> str:
    try:
        return FROM_TORCH[dtype]
    except KeyError:
        raise ValueError(f"the model produces {dtype}, which has no Open Inference Protocol datatype") from None


def to_tensor(array: np.ndarray, datatype: str) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if datatype == "BF16" else tensor


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU tensor as numpy, BF16 as its raw bits (the wire format)."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


# --dtype: what FP32 weights and inputs are computed in. Only FP32 ones: a model that declares an input or keeps
# a weight in FP64, FP16 or BF16 chose that precision (FP16 would turn an FP64 input of 1e6 into inf).
COMPUTE_DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}

# The runtime hands torch read-only views of request bodies; the model never writes to
# its inputs, so torch's one-time warning about it is noise.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class Outputs(NamedTuple):
    arrays: list[np.ndarray]
    specs: list[TensorSpec]  # name and datatype of each


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def detect_format(path: str) -> str:
    """'torchscript' or 'torch_export', from the archive's members (never the file name).

    Raises OSError when the file cannot be opened (missing, a directory, no permission): not a format question."""
    with open(path, "rb") as fh:
        try:
            with zipfile.ZipFile(fh) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelLoadError(
                f"{path} is not a TorchScript or torch.export archive ({exc}). "
                "Save the model with torch.jit.save(torch.jit.script(model), ...) or torch.export.save(...)."
            ) from None
    roots = {name.split("/", 1)[0] for name in names if "/" in name}
    for root in sorted(roots):
        if f"{root}/archive_format" in names and any(n.startswith(f"{root}/models/") for n in names):
            return "torch_export"
        if (
            f"{root}/constants.pkl" in names
            and f"{root}/data.pkl" in names
            and any(n.startswith(f"{root}/code/") for n in names)
        ):
            return "torchscript"
    raise ModelLoadError(
        f"{path} is a zip archive but neither TorchScript nor torch.export (a torch.save() pickle?). "
        "Slipway serves self-contained programs: use torch.jit.save or torch.export.save."
    )


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but torch sees no CUDA device. Use --device auto or cpu.")
    return torch.device(requested)


def _export_inputs(program: Any) -> tuple[list[TensorSpec], list[dict[int, tuple[int, int | None]]]]:
    """Inputs recorded in a torch.export program (symbolic dims become -1) and their ranges."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    ranges = getattr(program, "range_constraints", {}) or {}
    specs, bounds = [], []
    for name in program.graph_signature.user_inputs:
        node = placeholders.get(name)
        value = node.meta.get("val") if node is not None else None
        if not isinstance(value, torch.Tensor):
            raise ModelLoadError(f"input {name!r} of the program is not a tensor; only tensor inputs can be served")
        shape, dims = [], {}
        for i, dim in enumerate(value.shape):
            if isinstance(dim, int):
                shape.append(dim)
                continue
            shape.append(-1)
            constraint = ranges.get(dim.node.expr)
            low, high = 1, None
            if constraint is not None:
                # sympy bounds; an unbounded one is sympy's infinity, which int() refuses
                with contextlib.suppress(Exception):
                    low = max(1, int(constraint.lower))
                with contextlib.suppress(Exception):
                    high = int(constraint.upper) if constraint.upper.is_finite else None
            dims[i] = (low, high)
        try:
            datatype = datatype_of(value.dtype)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        specs.append(TensorSpec(name, datatype, tuple(shape)))
        bounds.append(dims)
    return specs, bounds


def _declared(specs: list[dict] | None) -> list[TensorSpec] | None:
    if not specs:
        return None
    result = []
    for spec in specs:
        if spec["datatype"] not in TORCH_DTYPES:
            raise ModelLoadError(
                f"the signature gives {spec['name']!r} the datatype {spec['datatype']!r}; "
                f"a PyTorch model takes one of {', '.join(TORCH_DTYPES)}"
            )
        result.append(TensorSpec(spec["name"], spec["datatype"], tuple(spec["shape"])))
    return result


def _check_declared(declared: list[TensorSpec], recorded: list[TensorSpec]) -> None:
    if [d.name for d in declared] != [r.name for r in recorded]:
        raise ModelLoadError(
            f"the signature names the inputs {[d.name for d in declared]}, "
            f"the archive takes {[r.name for r in recorded]} (in this order)"
        )
    for d, r in zip(declared, recorded, strict=True):
        if r.datatype is not None and d.datatype != r.datatype:
            raise ModelLoadError(f"input {d.name!r} is {r.datatype} in the archive, the signature says {d.datatype}")
        if r.shape is not None and (
            len(d.shape) != len(r.shape) or any(rd != -1 and dd != rd for dd, rd in zip(d.shape, r.shape, strict=True))
        ):
            raise ModelLoadError(f"input {d.name!r} has shape {list(r.shape)} in the archive, not {list(d.shape)}")


def _check_declared_output(
    declared: TensorSpec, actual: str, first: torch.Tensor, batched: torch.Tensor | None, seen: TensorSpec
) -> None:
    """A declared output against what the warm-up returned: every answer is cast to the declared datatype and
    metadata shows the declared shape, so neither may contradict the model.

    Any float datatype may be declared for a float output (--dtype computes in another precision, and the
    answer is cast back); other datatypes must match. Each fixed dimension must be what the first pass
    (one row, each variable dimension at its smallest, as Slipway's validator runs it) returned; when the
    model batches, the first dimension must also be the batch's (-1, then)."""
    floats = datatypes.FLOATING
    datatype_fits = declared.datatype == actual or (declared.datatype in floats and actual in floats)
    shape = list(first.shape)
    shape_fits = len(declared.shape) == len(shape) and all(
        want in (-1, got) for want, got in zip(declared.shape, shape, strict=True)
    )
    if shape_fits and declared.shape and batched is not None:
        shape_fits = declared.shape[0] in (-1, batched.shape[0])
    if datatype_fits and shape_fits:
        return
    returned = f"{actual} {shape}" + (f" for one row, {list(batched.shape)} for a batch" if batched is not None else "")
    rule = "" if datatype_fits else " (a float output may be declared as any float datatype; others must match)"
    raise ModelLoadError(
        f"the signature declares output {declared.name!r} as {declared.datatype} {list(declared.shape)}, but the "
        f"model returns {returned} in its warm-up{rule}. Declare it as {seen.datatype} {list(seen.shape)}, "
        "or leave the outputs out of the signature and the runtime learns them."
    )


def _outputs_as_list(out: Any) -> tuple[list[str] | None, list[torch.Tensor]]:
    """A model's return value as (names if it had any, tensors)."""
    if isinstance(out, torch.Tensor):
        return None, [out]
    if isinstance(out, dict):
        return [str(k) for k in out], list(out.values())
    if isinstance(out, list | tuple):
        return None, list(out)
    raise TypeError(f"the model returned {type(out).__name__}; return a tensor, or a tuple, list or dict of tensors")


class LoadedModel:
    """A model ready for forward passes on numpy batches."""

    def __init__(self, *, config: Config, module: Any, fmt: str, device: torch.device, inputs: list[TensorSpec]):
        self.config = config
        self.module = module
        self.format = fmt
        self.platform = PLATFORMS[fmt]
        self.device = device
        self.compute_dtype = COMPUTE_DTYPES[config.dtype]
        self.inputs = inputs
        self.input_index = {spec.name: i for i, spec in enumerate(inputs)}
        # A batch stacks requests along dim 0: only when every input declares a variable first dimension.
        self.batchable = all(spec.shape and spec.shape[0] == -1 for spec in inputs)
        # A torch.export program's ranges for its variable dimensions, per input ({dim: (low, high)}),
        # checked for every request: its guards would refuse anything else with an AssertionError.
        self.bounds: list[dict[int, tuple[int, int | None]]] | None = None
        # Rows one request may have: the batch size, and what the program was exported for.
        self.max_request_rows = config.max_batch_size
        self.outputs: list[TensorSpec] | None = None
        self.fixed_outputs = False
        self.output_index: dict[str, int] | None = None
        self._out_dtypes: list[torch.dtype] = []
        self.load_seconds = 0.0
        self.parameter_count = 0

    # --- the hot path (model thread) ---------------------------------------------------
    def forward(self, arrays: list[np.ndarray], datatypes_in: tuple[str, ...]) -> Outputs:
        """One forward pass: inputs are numpy arrays in the model's input order, of these datatypes.

        Returns the outputs with their names and datatypes: the signature's (or the warm-up's),
        to which they are cast; without either, what this pass returned (a model served without
        a signature may return other datatypes for other inputs).
        """
        device, compute = self.device, self.compute_dtype
        tensors = []
        with torch.inference_mode():
            for array, datatype in zip(arrays, datatypes_in, strict=True):
                tensor = torch.from_numpy(array)
                if datatype == "BF16":
                    tensor = tensor.view(torch.bfloat16)
                if device.type != "cpu":
                    tensor = tensor.to(device)
                if compute is not None and datatype == "FP32":
                    tensor = tensor.to(compute)
                tensors.append(tensor)
            names, outs = _outputs_as_list(self.module(*tensors))
            specs, wanted = (self.outputs, self._out_dtypes) if self.fixed_outputs else self._specs_of(names, outs)
            if len(outs) != len(specs):
                raise InferenceFailed(f"the model returned {len(outs)} outputs; its signature declares {len(specs)}")
            results = []
            for i, tensor in enumerate(outs):
                if not isinstance(tensor, torch.Tensor):
                    raise InferenceFailed(f"output {i} of the model is a {type(tensor).__name__}, not a tensor")
                if tensor.dtype != wanted[i]:
                    tensor = tensor.to(wanted[i])
                if tensor.device.type != "cpu":
                    tensor = tensor.cpu()
                results.append(to_numpy(tensor.contiguous()))
        return Outputs(results, specs)

    def _specs_of(self, names: list[str] | None, tensors: list[Any]) -> tuple[list[TensorSpec], list[torch.dtype]]:
        """Without a signature or a warm-up: what this pass returned (FP32 in place of the --dtype precision)."""
        specs, wanted = [], []
        for i, tensor in enumerate(tensors):
            if not isinstance(tensor, torch.Tensor):
                raise InferenceFailed(f"output {i} of the model is a {type(tensor).__name__}, not a tensor")
            dtype = torch.float32 if tensor.dtype == self.compute_dtype else tensor.dtype
            try:
                datatype = datatype_of(dtype)
            except ValueError as exc:
                raise InferenceFailed(str(exc)) from None
            specs.append(TensorSpec(names[i] if names else f"output__{i}", datatype, None))
            wanted.append(dtype)
        if self.outputs is None:
            self.outputs = specs  # what model metadata shows: what the first request returned
        return specs, wanted

    # --- start-up ----------------------------------------------------------------------
    def can_warm_up(self) -> bool:
        # A TorchScript model without a signature has nothing to make zeros from.
        return all(spec.shape is not None and spec.datatype is not None for spec in self.inputs)

    def _zeros(self, rows: int, bump: int, bounds: list[dict] | None) -> list[np.ndarray]:
        """Inputs of zeros: `rows` rows when the model batches, each other variable dimension its smallest + `bump`."""
        arrays = []
        for spec, dims in zip(self.inputs, bounds or [{} for _ in self.inputs], strict=True):
            shape = []
            for i, dim in enumerate(spec.shape):
                if dim != -1:
                    shape.append(dim)
                    continue
                low, high = dims.get(i, (1, None))
                want = rows if (i == 0 and self.batchable) else low + bump
                shape.append(max(low, want if high is None else min(want, high)))
            arrays.append(np.zeros(shape, dtype=datatypes.NUMPY[spec.datatype]))
        return arrays

    def own_output_dtypes(self, bounds: list[dict] | None) -> list[torch.dtype] | None:
        """Under --dtype, before the weights are cast: the dtype of each output in one pass at full precision, so
        that each is answered in the datatype the model gives it (FP32 where the --dtype precision only computes
        it, FP16 where the model makes FP16 itself). None when that pass fails: outputs in the --dtype precision
        are then taken for FP32 ones."""
        try:
            _, tensors = self._forward_raw(self._zeros(1, 0, bounds), cast=False)
        except Exception as exc:
            log.warning(
                "the model failed at full precision (%s): outputs in %s are answered as FP32", exc, self.config.dtype
            )
            return None
        return [tensor.dtype if isinstance(tensor, torch.Tensor) else None for tensor in tensors]

    def warm_up(
        self,
        declared_outputs: list[TensorSpec] | None,
        bounds: list[dict] | None,
        own_dtypes: list[torch.dtype | None] | None = None,
    ) -> None:
        """Run the model on zeros (batch 1, then a full batch) and learn its outputs from it."""
        if not self.can_warm_up():
            log.warning("no signature: skipping warm-up; each answer has the outputs its forward pass returned")
            self._fix_outputs(declared_outputs)
            return

        one = self._zeros(1, 0, bounds)
        try:
            first = self._forward_raw(one)
        except Exception as exc:
            shapes = ", ".join(spec.describe() for spec in self.inputs)
            raise ModelLoadError(f"the model does not run on its signature ({shapes}): {describe_error(exc)}") from None
        names, tensors = first
        second = None
        rows = self.config.max_batch_size if self.batchable else 1
        batch = self._zeros(rows, 1, bounds)
        try:
            second = self._forward_raw(batch)
        except Exception as exc:
            if self.batchable:
                log.warning("the model failed on a batch of %d rows (%s): batching is off", rows, describe_error(exc))
                self.batchable = False
        if self.batchable and not (_follows_rows(tensors, len(one[0])) and _follows_rows(second[1], len(batch[0]))):
            # An output without a row per input row (a sum over the batch, a scalar) cannot be split back:
            # stacked, each caller would get a slice of everyone's result.
            log.warning("the model's outputs do not follow its inputs' first dimension: batching is off")
            self.batchable = False

        if declared_outputs is not None and len(declared_outputs) != len(tensors):
            raise ModelLoadError(
                f"the signature declares {len(declared_outputs)} outputs, the model returns {len(tensors)}"
            )
        if declared_outputs is not None and names is not None and [d.name for d in declared_outputs] != names:
            # Answers are matched to the declared outputs by position: other names, or the same in another
            # order, would put one output's values under another's name.
            raise ModelLoadError(
                f"the signature declares the outputs {[d.name for d in declared_outputs]}, but the model returns "
                f"{names} (a dict, by name, in this order): declare them with the model's names, in its order"
            )
        outputs = []
        for i, tensor in enumerate(tensors):
            if not isinstance(tensor, torch.Tensor):
                raise ModelLoadError(f"output {i} of the model is a {type(tensor).__name__}, not a tensor")
            try:
                actual = datatype_of(tensor.dtype)
            except ValueError as exc:
                raise ModelLoadError(str(exc)) from None
            name = names[i] if names else f"output__{i}"
            own = own_dtypes[i] if own_dtypes is not None and len(own_dtypes) == len(tensors) else None
            if own in FROM_TORCH:
                datatype = FROM_TORCH[own]  # what the model gives it without --dtype
            elif tensor.dtype == self.compute_dtype:
                datatype = "FP32"  # not known: an output in the --dtype precision is taken for an FP32 one
            else:
                datatype = actual
            shape = list(tensor.shape)
            batched = second[1][i] if second is not None and i < len(second[1]) else None
            batched = batched if isinstance(batched, torch.Tensor) else None
            if batched is not None:
                other = batched.shape
                shape = [d if len(other) == len(shape) and other[j] == d else -1 for j, d in enumerate(shape)]
            seen = TensorSpec(name, datatype, tuple(shape))
            if declared_outputs is not None:
                _check_declared_output(declared_outputs[i], actual, tensor, batched if self.batchable else None, seen)
            outputs.append(seen if declared_outputs is None else declared_outputs[i])
        self._fix_outputs(outputs)

    def _forward_raw(self, arrays: list[np.ndarray], cast: bool = True) -> tuple[list[str] | None, list[torch.Tensor]]:
        with torch.inference_mode():
            tensors = []
            for array, spec in zip(arrays, self.inputs, strict=True):
                tensor = to_tensor(array, spec.datatype).to(self.device)
                if cast and self.compute_dtype is not None and spec.datatype == "FP32":
                    tensor = tensor.to(self.compute_dtype)
                tensors.append(tensor)
            return _outputs_as_list(self.module(*tensors))

    def _fix_outputs(self, outputs: list[TensorSpec] | None) -> None:
        """Outputs known before the first request (declared, or seen in the warm-up): every answer has these."""
        self.outputs = outputs
        self.fixed_outputs = outputs is not None
        self.output_index = {spec.name: i for i, spec in enumerate(outputs)} if outputs else None
        self._out_dtypes = [TORCH_DTYPES[spec.datatype] for spec in outputs or []]


def _follows_rows(outputs: list[Any], rows: int) -> bool:
    """Whether every output has `rows` rows: what splitting a batch back needs."""
    return all(isinstance(out, torch.Tensor) and out.ndim > 0 and out.shape[0] == rows for out in outputs)


def describe_error(exc: BaseException, limit: int = 400) -> str:
    """What went wrong, in a line: "RuntimeError: ...". TorchScript's own line ("The following operation failed
    in the TorchScript interpreter.") says nothing: the error it wraps is the message's last line, its type
    included."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        return lines[-1][:limit]
    return f"{type(exc).__name__}: {lines[0][:limit] if lines else ''}"


def _reduce_precision(module: Any, compute: torch.dtype) -> None:
    """FP32 parameters and buffers to `compute`; the others as they are (module.to(dtype) would cast every
    floating point one, and an FP64 weight would then meet an FP64 input that is not cast)."""
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.dtype == torch.float32:
                tensor.data = tensor.data.to(compute)


def load_model(config: Config) -> LoadedModel:
    """Verify, load, place and warm up the model; raises ModelLoadError with a reason a person can act on."""
    started = time.perf_counter()
    path = config.model_path
    try:
        if config.sha256:
            actual = sha256_of(path)
            if actual != config.sha256:
                raise ModelLoadError(
                    f"SHA-256 mismatch for {path}: expected {config.sha256}, the file has {actual}. "
                    "Refusing to serve a file that is not the validated artifact."
                )
        fmt = detect_format(path)
    except OSError as exc:
        raise ModelLoadError(f"cannot read the model file {path}: {exc.strerror or exc}") from None
    device = resolve_device(config.device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)

    bounds = None
    declared = config.signature or {}
    try:
        if fmt == "torchscript":
            module = torch.jit.load(path, map_location=device)
            module.eval()
            names = [arg.name for arg in module.forward.schema.arguments[1:]]
            recorded = [TensorSpec(name, None, None) for name in names]
            parameter_count = sum(p.numel() for p in module.parameters())
        else:
            program = torch.export.load(path)
            recorded, bounds = _export_inputs(program)
            params = set(program.graph_signature.parameters)
            parameter_count = sum(t.numel() for k, t in program.state_dict.items() if k in params)
            module = program.module()
            module.to(device)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"torch could not load {path} as {fmt} ({describe_error(exc)}). "
            f"Export it again with torch {torch.__version__.split('+')[0]}."
        ) from None

    declared_inputs = _declared(declared.get("inputs"))
    if declared_inputs is not None:
        _check_declared(declared_inputs, recorded)
        if fmt == "torch_export":
            declared_inputs = recorded  # the program is the authority on what it accepts
    inputs = declared_inputs or recorded

    model = LoadedModel(config=config, module=module, fmt=fmt, device=device, inputs=inputs)
    model.parameter_count = int(parameter_count)
    if bounds is not None and any(bounds):
        model.bounds = bounds
        highs = [dims[0][1] for dims in bounds if 0 in dims and dims[0][1] is not None]
        if model.batchable and highs:
            model.max_request_rows = min(config.max_batch_size, *highs)
    own_dtypes = None
    if model.compute_dtype is not None:
        # --dtype changes how the model computes, not what it answers: learn its outputs' own dtypes first.
        own_dtypes = model.own_output_dtypes(bounds) if model.can_warm_up() else None
        _reduce_precision(module, model.compute_dtype)
    model.warm_up(_declared(declared.get("outputs")), bounds, own_dtypes)
    model.load_seconds = time.perf_counter() - started
    return model
