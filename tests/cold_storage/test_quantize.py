"""Quantization round trips on real layers: INT8 per channel, FP16, and the fp32 fallbacks."""

import json
import logging

import pytest
import safetensors.torch
import torch
from torch import nn

from mycelium.cold_storage import quantize as quantize_module
from mycelium.cold_storage.quantize import (
    FP16_MAX,
    dequantize_state_dict,
    fp32_size_bytes,
    quantize_state_dict,
    summarize_manifest,
)
from mycelium.errors import ConfigError, IntegrityError


def _batchnorm_with_statistics() -> nn.Module:
    # Running statistics and num_batches_tracked differ from their initial values after
    # one forward pass in training mode.
    layer = nn.BatchNorm2d(6)
    layer(torch.randn(4, 6, 5, 5) * 3 + 1)
    return layer


LAYERS = {
    "linear": lambda: nn.Linear(32, 16),
    "conv2d": lambda: nn.Conv2d(3, 8, kernel_size=3),
    "conv1d": lambda: nn.Conv1d(4, 12, kernel_size=5),
    "gru": lambda: nn.GRU(input_size=10, hidden_size=16, num_layers=2),
    "batchnorm": _batchnorm_with_statistics,
    "embedding": lambda: nn.Embedding(50, 8),
}


def _state_dict(layer_name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return LAYERS[layer_name]().state_dict()


def _relative_error(original: torch.Tensor, restored: torch.Tensor) -> float:
    # Max abs error over max abs value; an all-zero tensor (a fresh norm bias) uses the
    # abs error alone.
    abs_error = float((restored - original).abs().max())
    absmax = float(original.abs().max())
    return abs_error / absmax if absmax > 0 else abs_error


@pytest.mark.parametrize("layer_name", LAYERS)
@pytest.mark.parametrize("mode", ["int8", "fp16"])
def test_round_trip_keeps_names_shapes_dtypes(layer_name, mode):
    original = _state_dict(layer_name)

    quantized = quantize_state_dict(original, mode)
    restored = dequantize_state_dict(quantized.tensors, quantized.manifest)

    assert list(restored) == list(original)
    for name, tensor in original.items():
        assert restored[name].shape == tensor.shape, name
        assert restored[name].dtype == tensor.dtype, name


@pytest.mark.parametrize("layer_name", LAYERS)
def test_int8_round_trip_is_close(layer_name):
    original = _state_dict(layer_name)

    quantized = quantize_state_dict(original, "int8")
    restored = dequantize_state_dict(quantized.tensors, quantized.manifest)

    for name, tensor in original.items():
        entry = quantized.manifest["tensors"][name]
        if tensor.is_floating_point() and tensor.ndim >= 2:
            assert entry["scheme"] == "int8_per_channel", name
            assert _relative_error(tensor, restored[name]) < 0.01, name
            assert entry["relative_error"] == pytest.approx(_relative_error(tensor, restored[name]), rel=1e-3)
        else:
            assert entry["scheme"] in ("fp32", "unchanged"), name
            assert torch.equal(restored[name], tensor), name


@pytest.mark.parametrize("layer_name", LAYERS)
def test_fp16_round_trip_is_close(layer_name):
    original = _state_dict(layer_name)

    quantized = quantize_state_dict(original, "fp16")
    restored = dequantize_state_dict(quantized.tensors, quantized.manifest)

    for name, tensor in original.items():
        if tensor.is_floating_point():
            assert quantized.tensors[name].dtype == torch.float16, name
            assert _relative_error(tensor, restored[name]) < 1e-3, name
        else:
            assert torch.equal(restored[name], tensor), name


def test_int8_stores_one_scale_per_output_channel():
    original = _state_dict("conv2d")

    quantized = quantize_state_dict(original, "int8")

    assert quantized.tensors["weight.q"].dtype == torch.int8
    assert quantized.tensors["weight.q"].shape == (8, 3, 3, 3)
    assert quantized.tensors["weight.scale"].dtype == torch.float32
    assert quantized.tensors["weight.scale"].shape == (8,)
    assert "weight" not in quantized.tensors
    assert quantized.tensors["bias"].dtype == torch.float32
    assert quantized.manifest["tensors"]["bias"]["reason"] == "1-D tensor"


def test_int8_covers_every_gru_weight():
    original = _state_dict("gru")

    quantized = quantize_state_dict(original, "int8")

    schemes = {name: entry["scheme"] for name, entry in quantized.manifest["tensors"].items()}
    for layer in (0, 1):
        assert schemes[f"weight_ih_l{layer}"] == "int8_per_channel"
        assert schemes[f"weight_hh_l{layer}"] == "int8_per_channel"
        assert schemes[f"bias_ih_l{layer}"] == "fp32"


def test_int8_weights_file_about_4x_smaller():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    state_dict = model.state_dict()
    assert sum(tensor.numel() for tensor in state_dict.values()) >= 100_000

    quantized = quantize_state_dict(state_dict, "int8")
    fp32_bytes = len(safetensors.torch.save(state_dict))
    int8_bytes = len(safetensors.torch.save(quantized.tensors))

    assert fp32_bytes / int8_bytes >= 3.8


def test_fp16_keeps_tensor_over_range_fp32():
    state_dict = {"small": torch.randn(4, 4), "huge": torch.tensor([[1.0, 70000.0], [2.0, -3.0]])}

    quantized = quantize_state_dict(state_dict, "fp16")
    restored = dequantize_state_dict(quantized.tensors, quantized.manifest)

    entry = quantized.manifest["tensors"]["huge"]
    assert entry["scheme"] == "fp32"
    assert "65504" in entry["reason"]
    assert quantized.tensors["huge"].dtype == torch.float32
    assert torch.equal(restored["huge"], state_dict["huge"])
    assert "huge" in summarize_manifest(quantized.manifest)["kept_higher_precision"]
    assert quantized.manifest["tensors"]["small"]["scheme"] == "fp16"


def test_fp16_keeps_underflowing_tensor_fp32():
    tiny = torch.full((3, 3), 1e-9)
    tiny[0, 0] = 1e-8

    quantized = quantize_state_dict({"tiny": tiny}, "fp16")

    entry = quantized.manifest["tensors"]["tiny"]
    assert entry["scheme"] == "fp32"
    assert "underflow to zero" in entry["reason"]
    assert torch.equal(quantized.tensors["tiny"], tiny)


def test_fp16_range_limit_is_65504():
    assert FP16_MAX == 65504.0


def test_int8_error_over_limit_keeps_fp32():
    torch.manual_seed(0)
    weight = torch.randn(8, 16)

    quantized = quantize_state_dict({"weight": weight}, "int8", max_relative_error=1e-4)

    entry = quantized.manifest["tensors"]["weight"]
    assert entry["scheme"] == "fp32"
    assert "exceeds max_relative_error 0.0001" in entry["reason"]
    assert torch.equal(quantized.tensors["weight"], weight)


def test_all_zero_channel_gets_scale_one():
    weight = torch.randn(3, 4)
    weight[1] = 0.0

    quantized = quantize_state_dict({"weight": weight}, "int8")
    restored = dequantize_state_dict(quantized.tensors, quantized.manifest)

    assert quantized.tensors["weight.scale"][1] == 1.0
    assert torch.equal(restored["weight"][1], torch.zeros(4))
    assert torch.isfinite(restored["weight"]).all()


def test_non_finite_weight_kept_fp32():
    weight = torch.randn(3, 4)
    weight[2, 1] = float("nan")

    quantized = quantize_state_dict({"weight": weight}, "int8")
    restored = dequantize_state_dict(quantized.tensors, quantized.manifest)

    assert quantized.manifest["tensors"]["weight"]["scheme"] == "fp32"
    assert "NaN or infinite" in quantized.manifest["tensors"]["weight"]["reason"]
    assert torch.equal(torch.isnan(restored["weight"]), torch.isnan(weight))
    assert torch.equal(torch.nan_to_num(restored["weight"]), torch.nan_to_num(weight))


def test_non_floating_tensor_stored_unchanged():
    original = _state_dict("batchnorm")

    quantized = quantize_state_dict(original, "int8")

    assert quantized.tensors["num_batches_tracked"].dtype == torch.int64
    assert quantized.tensors["num_batches_tracked"] == 1
    assert quantized.manifest["tensors"]["num_batches_tracked"]["scheme"] == "unchanged"


def test_manifest_is_json_serialisable():
    quantized = quantize_state_dict(_state_dict("gru"), "int8")

    decoded = json.loads(json.dumps(quantized.manifest, allow_nan=False))

    assert decoded == quantized.manifest
    assert decoded["mode"] == "int8"


def test_tied_weights_are_stored_separately():
    shared = torch.randn(5, 4)
    state_dict = {"embedding.weight": shared, "head.weight": shared, "norm.weight": torch.ones(4)}
    state_dict["norm.bias"] = state_dict["norm.weight"]

    quantized = quantize_state_dict(state_dict, "int8")
    encoded = safetensors.torch.save(quantized.tensors)

    assert len(safetensors.torch.load(encoded)) == len(quantized.tensors)


def test_missing_tensor_raises_integrity_error():
    quantized = quantize_state_dict(_state_dict("linear"), "int8")
    del quantized.tensors["weight.scale"]

    with pytest.raises(IntegrityError, match=r"'weight'.*'weight\.scale' is missing"):
        dequantize_state_dict(quantized.tensors, quantized.manifest)


def test_shape_mismatch_raises_integrity_error():
    quantized = quantize_state_dict(_state_dict("linear"), "fp16")
    quantized.tensors["bias"] = quantized.tensors["bias"][:3]

    with pytest.raises(IntegrityError, match=r"'bias'.*shape \(3,\).*expects \(16,\)"):
        dequantize_state_dict(quantized.tensors, quantized.manifest)


def test_unlisted_tensor_raises_integrity_error():
    quantized = quantize_state_dict(_state_dict("linear"), "int8")
    quantized.tensors["extra"] = torch.zeros(2)

    with pytest.raises(IntegrityError, match="extra"):
        dequantize_state_dict(quantized.tensors, quantized.manifest)


def test_restore_warns_once_with_measured_error(caplog, monkeypatch):
    monkeypatch.setattr(quantize_module, "_lossy_warning_shown", False)
    quantized = quantize_state_dict(_state_dict("conv1d"), "int8")

    with caplog.at_level(logging.WARNING, logger="mycelium.cold_storage.quantize"):
        dequantize_state_dict(quantized.tensors, quantized.manifest)
        dequantize_state_dict(quantized.tensors, quantized.manifest)

    warnings = [record for record in caplog.records if record.name == "mycelium.cold_storage.quantize"]
    assert len(warnings) == 1
    assert "lossy" in warnings[0].getMessage()
    assert f"{quantized.max_abs_error:.3g}" in warnings[0].getMessage()


def test_lossless_restore_does_not_warn(caplog):
    state_dict = {"bias": torch.randn(4), "count": torch.tensor(3)}
    quantized = quantize_state_dict(state_dict, "int8")

    with caplog.at_level(logging.WARNING, logger="mycelium.cold_storage.quantize"):
        dequantize_state_dict(quantized.tensors, quantized.manifest)

    assert caplog.records == []


@pytest.mark.parametrize("mode", ["int4", "INT8", ""])
def test_invalid_mode_raises_config_error(mode):
    with pytest.raises(ConfigError, match="quantization mode"):
        quantize_state_dict(_state_dict("linear"), mode)


def test_colliding_stored_key_raises_config_error():
    state_dict = {"proj": torch.randn(4, 4), "proj.scale": torch.randn(4)}

    with pytest.raises(ConfigError, match="collides"):
        quantize_state_dict(state_dict, "int8")


def test_fp32_size_bytes_counts_floats_as_four_bytes():
    state_dict = {
        "weight": torch.zeros(3, 2, dtype=torch.float16),
        "bias": torch.zeros(3, dtype=torch.float64),
        "count": torch.tensor(0, dtype=torch.int64),
    }

    assert fp32_size_bytes(state_dict) == (6 + 3) * 4 + 8
