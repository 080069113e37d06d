"""Post-training quantization of state dicts to INT8 (per channel) or FP16, and back.

INT8 is symmetric per output channel: row ``c`` of a weight reshaped to
``(shape[0], -1)`` is stored as ``round(w / scale_c)`` in ``[-127, 127]`` with
``scale_c = max|w_c| / 127``. This covers Linear, Conv1d/Conv2d, GRU/LSTM and embedding
weights and low-rank adapter matrices alike, since all of them have the output channel on
dim 0.

The manifest records, for every original tensor, how it was stored and the error measured
against the original, so the loss of a restore is known before the weights are used.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from mycelium.errors import ConfigError, IntegrityError

logger = logging.getLogger(__name__)
_lossy_warning_shown = False

QuantizationMode = Literal["int8", "fp16"]

MANIFEST_FORMAT_VERSION = 1
INT8_MAX = 127
FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504

SCHEME_INT8 = "int8_per_channel"
SCHEME_FP16 = "fp16"
SCHEME_FP32 = "fp32"
# Non-floating tensors (integer counters, boolean masks) are copied without conversion.
SCHEME_UNCHANGED = "unchanged"
LOSSY_SCHEMES = frozenset({SCHEME_INT8, SCHEME_FP16})
_NUMPY_FLOATS = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


@dataclass(frozen=True)
class QuantizedState:
    """Quantized tensors, flat and ready for ``safetensors.torch.save_file``, and their manifest.

    ``manifest`` is JSON-serialisable: ``{"format_version", "mode", "max_relative_error",
    "tensors": {original_name: entry}}``, with entries in the order of the state dict.
    Each entry has ``scheme`` (``int8_per_channel``, ``fp16``, ``fp32`` or ``unchanged``),
    the original ``dtype`` and ``shape``, and ``stored_as``, the keys in ``tensors``. It
    also has ``max_abs_error`` and ``relative_error`` (max abs error / max abs value). A
    tensor kept at a higher precision than the mode has a ``reason``.
    """

    tensors: dict[str, torch.Tensor]
    manifest: dict[str, Any]

    @property
    def max_abs_error(self) -> float:
        """Largest absolute error over all tensors."""
        return max_abs_error(self.manifest)


def quantize_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    mode: QuantizationMode,
    *,
    max_relative_error: float = 0.02,
) -> QuantizedState:
    """Quantize every floating tensor of ``state_dict`` to ``mode``.

    Args:
        state_dict: tensor name to tensor, as returned by ``Module.state_dict()``.
        mode: ``"int8"`` stores floating tensors with ``ndim >= 2`` as INT8 per output
            channel, plus one float32 scale per channel. 0-D and 1-D floating tensors
            (biases, norm weights) are stored as float32. ``"fp16"`` stores every floating
            tensor as float16.
        max_relative_error: a tensor whose quantization error (max abs error divided by
            max abs value) exceeds this is stored as float32 instead, with the measured
            error in its ``reason``. In INT8 mode the rounding error is at most half a step,
            that is ``max|w_c| / 254`` per channel, so the default of 0.02 rarely triggers.

    Non-floating tensors are stored unchanged. A floating tensor that contains NaN or
    infinite values is stored as float32 and logged as a warning, because neither scheme can
    represent it faithfully.

    Raises:
        ConfigError: ``mode`` or ``max_relative_error`` is invalid, or a stored key of one
            tensor (``<name>.q``, ``<name>.scale``) collides with another tensor's name.
    """
    if mode not in ("int8", "fp16"):
        raise ConfigError(f"Invalid quantization mode {mode!r}: use 'int8' or 'fp16'.")
    if not max_relative_error > 0:
        raise ConfigError(
            f"Invalid max_relative_error {max_relative_error!r}: use a positive number such as 0.02."
        )

    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name, tensor in state_dict.items():
        original = tensor.detach().to("cpu")
        if mode == "int8":
            stored, entry = _quantize_tensor_int8(name, original, max_relative_error)
        else:
            stored, entry = _quantize_tensor_fp16(name, original, max_relative_error)
        for key in stored:
            if key in tensors or (key != name and key in state_dict):
                raise ConfigError(
                    f"Stored key {key!r} of tensor {name!r} collides with another tensor's name: "
                    "rename the parameter or use mode='fp16', which stores every tensor under its own name."
                )
        tensors.update(stored)
        entries[name] = entry

    manifest: dict[str, Any] = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "mode": mode,
        "max_relative_error": max_relative_error,
        "tensors": entries,
    }
    summary = summarize_manifest(manifest)
    logger.info(
        "Quantized %d tensors to %s: %d int8, %d fp16, %d fp32, %d unchanged, max abs error %.3g.",
        summary["tensor_count"],
        mode,
        summary["scheme_counts"][SCHEME_INT8],
        summary["scheme_counts"][SCHEME_FP16],
        summary["scheme_counts"][SCHEME_FP32],
        summary["scheme_counts"][SCHEME_UNCHANGED],
        summary["max_abs_error"],
    )
    return QuantizedState(tensors=tensors, manifest=manifest)


def dequantize_state_dict(
    tensors: Mapping[str, torch.Tensor], manifest: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Restore the original names, shapes and dtypes from quantized tensors and their manifest.

    Floating tensors come back in their original dtype (float32 for ordinary models).
    Logs one warning per call when any tensor was stored lossily, with the largest error
    measured at quantization time.

    Raises:
        IntegrityError: the manifest is malformed, a tensor that the manifest lists is
            missing, has the wrong shape or dtype, or ``tensors`` contains a key that the
            manifest does not list.
    """
    entries = manifest.get("tensors")
    if not isinstance(entries, Mapping):
        raise IntegrityError(
            "Quantization manifest has no 'tensors' mapping: restore manifest.json of this "
            "version from the DVC remote."
        )

    restored: dict[str, torch.Tensor] = {}
    used_keys: set[str] = set()
    for name, entry in entries.items():
        restored[name] = _dequantize_tensor(name, entry, tensors)
        used_keys.update(entry["stored_as"])

    unexpected = sorted(set(tensors) - used_keys)
    if unexpected:
        raise IntegrityError(
            f"Weights contain tensors that the quantization manifest does not list: {unexpected[:5]}. "
            "The weights file and manifest.json belong to different versions: restore this "
            "version from the DVC remote."
        )

    summary = summarize_manifest(manifest)
    if summary["lossy_tensor_count"] and summary["max_abs_error"] > 0:
        # Warn once per process; later restores log the same facts at debug level.
        global _lossy_warning_shown
        log = logger.debug if _lossy_warning_shown else logger.warning
        _lossy_warning_shown = True
        log(
            "Restoring %d %s-quantized tensors is lossy: max abs error %.3g, max relative error %.3g.",
            summary["lossy_tensor_count"],
            summary["mode"],
            summary["max_abs_error"],
            summary["max_relative_error"],
        )
    return restored


def fp32_size_bytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Return the size in bytes of ``state_dict`` with every floating tensor as float32.

    Non-floating tensors count with their own element size.
    """
    total = 0
    for tensor in state_dict.values():
        element_size = 4 if tensor.is_floating_point() else tensor.element_size()
        total += tensor.numel() * element_size
    return total


def summarize_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Return counts per scheme, the tensors kept at higher precision and the largest errors."""
    entries: Mapping[str, Mapping[str, Any]] = manifest.get("tensors", {})
    scheme_counts = {SCHEME_INT8: 0, SCHEME_FP16: 0, SCHEME_FP32: 0, SCHEME_UNCHANGED: 0}
    for entry in entries.values():
        scheme_counts[entry["scheme"]] = scheme_counts.get(entry["scheme"], 0) + 1
    lossy = [entry for entry in entries.values() if entry["scheme"] in LOSSY_SCHEMES]
    return {
        "mode": manifest.get("mode"),
        "tensor_count": len(entries),
        "scheme_counts": scheme_counts,
        "lossy_tensor_count": len(lossy),
        "kept_higher_precision": {
            name: entry["reason"] for name, entry in entries.items() if "reason" in entry
        },
        "max_abs_error": max_abs_error(manifest),
        "max_relative_error": max((entry["relative_error"] for entry in entries.values()), default=0.0),
    }


def max_abs_error(manifest: Mapping[str, Any]) -> float:
    """Return the largest ``max_abs_error`` over the manifest's tensors (0.0 if none)."""
    entries: Mapping[str, Mapping[str, Any]] = manifest.get("tensors", {})
    return max((entry["max_abs_error"] for entry in entries.values()), default=0.0)


# Quantization of one tensor. Each returns the stored tensors by key and the manifest entry.


def _quantize_tensor_int8(
    name: str, original: torch.Tensor, max_relative_error: float
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not original.is_floating_point():
        return _store_unchanged(name, original)
    if original.ndim < 2:
        return _store_fp32(name, original, f"{original.ndim}-D tensor")
    fallback_reason = _reason_to_keep_fp32(original)
    if fallback_reason is not None:
        return _store_fp32(name, original, fallback_reason)

    weight = original.to(torch.float32)
    channels = weight.reshape(weight.shape[0], -1)
    scale = channels.abs().amax(dim=1) / INT8_MAX
    # An all-zero channel gets scale 1, so nothing divides by zero and it restores to zeros.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    quantized = torch.round(channels / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    restored = (quantized.to(torch.float32) * scale[:, None]).reshape(original.shape)
    abs_error, relative_error = _measure_error(original, restored)

    if relative_error > max_relative_error:
        return _store_fp32(
            name,
            original,
            f"INT8 relative error {relative_error:.4g} exceeds max_relative_error {max_relative_error:g}",
        )
    stored = {
        f"{name}.q": quantized.reshape(original.shape).contiguous(),
        f"{name}.scale": scale.contiguous(),
    }
    entry = _entry(SCHEME_INT8, original, list(stored), abs_error, relative_error)
    return stored, entry


def _quantize_tensor_fp16(
    name: str, original: torch.Tensor, max_relative_error: float
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not original.is_floating_point():
        return _store_unchanged(name, original)
    fallback_reason = _reason_to_keep_fp32(original)
    if fallback_reason is not None:
        return _store_fp32(name, original, fallback_reason)

    absmax = float(original.abs().max()) if original.numel() else 0.0
    if absmax > FP16_MAX:
        return _store_fp32(name, original, f"abs max {absmax:.6g} exceeds the float16 range {FP16_MAX:g}")

    half = original.to(torch.float16)
    abs_error, relative_error = _measure_error(original, half)
    if relative_error > max_relative_error:
        underflow_count = int(((original != 0) & (half == 0)).sum())
        return _store_fp32(
            name,
            original,
            f"{underflow_count} of {original.numel()} values underflow to zero in float16 and the "
            f"relative error {relative_error:.4g} exceeds max_relative_error {max_relative_error:g}",
        )
    stored = {name: half.contiguous().clone()}
    return stored, _entry(SCHEME_FP16, original, [name], abs_error, relative_error)


def _reason_to_keep_fp32(original: torch.Tensor) -> str | None:
    if original.numel() == 0:
        return "empty tensor"
    non_finite = int((~torch.isfinite(original)).sum())
    if non_finite:
        logger.warning(
            "Tensor with shape %s contains %d NaN or infinite values: stored as float32.",
            tuple(original.shape),
            non_finite,
        )
        return f"contains {non_finite} NaN or infinite values"
    return None


def _store_fp32(
    name: str, original: torch.Tensor, reason: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    # clone() so that tied weights never share storage, which safetensors rejects.
    stored = original.to(torch.float32).contiguous().clone()
    if original.numel() and torch.isfinite(original).all():
        abs_error, relative_error = _measure_error(original, stored)
    else:
        abs_error, relative_error = 0.0, 0.0
    entry = _entry(SCHEME_FP32, original, [name], abs_error, relative_error)
    entry["reason"] = reason
    return {name: stored}, entry


def _store_unchanged(name: str, original: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    stored = original.contiguous().clone()
    return {name: stored}, _entry(SCHEME_UNCHANGED, original, [name], 0.0, 0.0)


def _measure_error(original: torch.Tensor, approximation: torch.Tensor) -> tuple[float, float]:
    reference = original.to(torch.float64)
    abs_error = float((approximation.to(torch.float64) - reference).abs().max())
    absmax = float(reference.abs().max())
    relative_error = abs_error / absmax if absmax > 0 else 0.0
    return abs_error, relative_error


def _entry(
    scheme: str, original: torch.Tensor, stored_as: list[str], abs_error: float, relative_error: float
) -> dict[str, Any]:
    return {
        "scheme": scheme,
        "dtype": _dtype_name(original.dtype),
        "shape": list(original.shape),
        "stored_as": stored_as,
        "max_abs_error": abs_error,
        "relative_error": relative_error,
    }


# Restore of one tensor.


def _dequantize_tensor(
    name: str, entry: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    try:
        scheme = entry["scheme"]
        shape = tuple(int(size) for size in entry["shape"])
        dtype = _dtype_from_name(entry["dtype"])
        stored_as = list(entry["stored_as"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(
            f"Quantization manifest entry of tensor {name!r} is malformed ({exc!r}): restore "
            "manifest.json of this version from the DVC remote."
        ) from exc

    for key in stored_as:
        if key not in tensors:
            raise IntegrityError(
                f"Tensor {name!r} is listed in the quantization manifest but {key!r} is missing "
                "from the weights: restore this version from the DVC remote."
            )

    if scheme == SCHEME_INT8:
        quantized = tensors[f"{name}.q"]
        scale = tensors[f"{name}.scale"]
        _check_shape(name, f"{name}.q", quantized, shape)
        _check_shape(name, f"{name}.scale", scale, shape[:1])
        if quantized.dtype != torch.int8:
            raise IntegrityError(
                f"Tensor {name!r} should be stored as int8 but {name}.q has dtype {quantized.dtype}: "
                "restore this version from the DVC remote."
            )
        channels = np.multiply(
            quantized.reshape(shape[0], -1).numpy(), scale.to(torch.float32).numpy()[:, None], dtype=np.float32
        )
        return _convert(torch.from_numpy(channels.reshape(shape)), dtype)

    if scheme in (SCHEME_FP16, SCHEME_FP32, SCHEME_UNCHANGED):
        stored = tensors[name]
        _check_shape(name, name, stored, shape)
        return _convert(stored, dtype)

    raise IntegrityError(
        f"Tensor {name!r} has unknown quantization scheme {scheme!r}: restore manifest.json of "
        "this version from the DVC remote or upgrade Mycelium."
    )


def _convert(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Restores run elementwise work in NumPy, which uses one thread. torch's intra-op thread
    # pool costs more than the work on tensors of this size: int8 to float32 for 200,000 weights
    # took 26 ms with 2 threads and 0.04 ms with 1 (torch 2.13, 2-core machine under load).
    if tensor.dtype == dtype:
        return tensor
    numpy_dtype = _NUMPY_FLOATS.get(dtype)
    if numpy_dtype is None or tensor.dtype not in _NUMPY_FLOATS:
        return tensor.to(dtype)
    return torch.from_numpy(tensor.numpy().astype(numpy_dtype))


def _check_shape(name: str, key: str, stored: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(stored.shape) != expected:
        raise IntegrityError(
            f"Tensor {name!r}: stored {key!r} has shape {tuple(stored.shape)} but the quantization "
            f"manifest expects {expected}: restore this version from the DVC remote."
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype
