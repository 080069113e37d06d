"""Bundle write/read round trips, integrity checks and the sha256 helpers."""

import json
import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mycelium.cold_storage.bundle import (
    DATA_FILES,
    METADATA_FILE,
    read_bundle,
    verify_bundle,
    write_bundle,
)
from mycelium.cold_storage.smote import smote_settings
from mycelium.errors import ConfigError, DataValidationError, IntegrityError, StorageError
from mycelium.hashing import sha256_bytes, sha256_file, sha256_state_dict


class TinyExpert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 8, kernel_size=3)
        self.norm = nn.BatchNorm1d(8)
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.head = nn.Linear(16, 3)


@pytest.fixture
def state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return TinyExpert().state_dict()


@pytest.fixture
def buffer() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(60, 4)), columns=["f0", "f1", "f2", "f3"])
    frame["label"] = rng.integers(0, 3, size=60)
    return frame


def _write(directory, state_dict, buffer, mode="int8"):
    return write_bundle(
        directory,
        state_dict=state_dict,
        mode=mode,
        metadata={"domain": "sequences/gait", "architecture": {"name": "gru", "hidden": 16}, "accuracy": 0.91},
        buffer=buffer,
        smote=smote_settings(buffer["label"].to_numpy()),
        expectations={"columns": ["f0", "f1", "f2", "f3", "label"], "label_values": [0, 1, 2]},
    )


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("mode", ["int8", "fp16"])
def test_round_trip_restores_every_part(tmp_path, state_dict, buffer, mode):
    directory = tmp_path / "bundle"

    _write(directory, state_dict, buffer, mode)
    loaded = read_bundle(directory)

    assert list(loaded.state_dict) == list(state_dict)
    for name, tensor in state_dict.items():
        assert torch.allclose(loaded.state_dict[name].float(), tensor.float(), atol=0.01, rtol=0), name
    pd.testing.assert_frame_equal(loaded.buffer, buffer)
    assert loaded.smote == json.loads(json.dumps(smote_settings(buffer["label"].to_numpy())))
    assert loaded.expectations["label_values"] == [0, 1, 2]
    assert loaded.manifest["mode"] == mode
    assert loaded.metadata["domain"] == "sequences/gait"
    assert loaded.metadata["architecture"] == {"name": "gru", "hidden": 16}


def test_restored_weights_load_into_module(tmp_path, state_dict, buffer):
    _write(tmp_path / "bundle", state_dict, buffer)

    module = TinyExpert()
    module.load_state_dict(read_bundle(tmp_path / "bundle").state_dict)

    assert module.norm.num_batches_tracked == state_dict["norm.num_batches_tracked"]


def test_metadata_lists_every_file_with_hash_and_size(tmp_path, state_dict, buffer):
    directory = tmp_path / "bundle"

    info = _write(directory, state_dict, buffer)
    metadata = json.loads((directory / METADATA_FILE).read_text())

    assert sorted(metadata["files"]) == sorted(DATA_FILES)
    for name, entry in metadata["files"].items():
        assert entry["sha256"] == sha256_file(directory / name), name
        assert entry["bytes"] == (directory / name).stat().st_size, name
    for key in ("format_version", "created_at", "torch_version", "fp32_bytes", "stored_bytes"):
        assert key in metadata, key
    assert metadata["quantization"] == "int8"
    assert info.stored_bytes == sum(path.stat().st_size for path in directory.iterdir())
    assert info.weights_bytes == (directory / "weights.safetensors").stat().st_size
    assert info.fp32_bytes == sum(tensor.numel() * 4 for tensor in state_dict.values()) + 4
    assert info.quantization["scheme_counts"]["int8_per_channel"] == 4


def test_write_leaves_no_staging_folder(tmp_path, state_dict, buffer):
    _write(tmp_path / "bundle", state_dict, buffer)

    assert [path.name for path in tmp_path.iterdir()] == ["bundle"]


def test_write_refuses_existing_folder(tmp_path, state_dict, buffer):
    directory = tmp_path / "bundle"
    _write(directory, state_dict, buffer)
    before = {name: sha256_file(directory / name) for name in os.listdir(directory)}

    with pytest.raises(StorageError, match="immutable"):
        _write(directory, state_dict, buffer)

    assert {name: sha256_file(directory / name) for name in os.listdir(directory)} == before


def test_write_rejects_unserialisable_metadata(tmp_path, state_dict, buffer):
    with pytest.raises(ConfigError, match="metadata is not JSON-serialisable"):
        write_bundle(
            tmp_path / "bundle",
            state_dict=state_dict,
            mode="int8",
            metadata={"model": nn.Linear(2, 2)},
            buffer=buffer,
            smote={},
            expectations={},
        )

    assert list(tmp_path.iterdir()) == []


def test_write_rejects_non_string_columns(tmp_path, state_dict):
    with pytest.raises(DataValidationError, match="non-string column names"):
        write_bundle(
            tmp_path / "bundle",
            state_dict=state_dict,
            mode="int8",
            metadata={},
            buffer=pd.DataFrame(np.zeros((3, 2))),
            smote={},
            expectations={},
        )


@pytest.mark.parametrize("name", DATA_FILES)
def test_tampered_byte_is_detected(tmp_path, state_dict, buffer, name, caplog):
    directory = tmp_path / "bundle"
    _write(directory, state_dict, buffer)
    expected = sha256_file(directory / name)
    _flip_byte(directory / name, offset=20)
    actual = sha256_file(directory / name)

    with caplog.at_level(logging.DEBUG, logger="mycelium.cold_storage.quantize"):
        with pytest.raises(IntegrityError) as raised:
            read_bundle(directory)

    message = str(raised.value)
    assert name in message
    assert expected in message
    assert actual in message
    assert "restore this version from the DVC remote" in message
    # Nothing was loaded: dequantization, which always logs, never ran.
    assert caplog.records == []


def test_truncated_file_is_detected(tmp_path, state_dict, buffer):
    directory = tmp_path / "bundle"
    _write(directory, state_dict, buffer)
    with open(directory / "weights.safetensors", "r+b") as handle:
        handle.truncate(100)

    with pytest.raises(IntegrityError, match=r"weights\.safetensors has 100 bytes"):
        read_bundle(directory)


def test_missing_file_is_detected(tmp_path, state_dict, buffer):
    directory = tmp_path / "bundle"
    _write(directory, state_dict, buffer)
    (directory / "buffer.parquet").unlink()

    with pytest.raises(IntegrityError, match=r"missing buffer\.parquet"):
        read_bundle(directory)


def test_missing_metadata_is_detected(tmp_path, state_dict, buffer):
    directory = tmp_path / "bundle"
    _write(directory, state_dict, buffer)
    (directory / METADATA_FILE).unlink()

    with pytest.raises(IntegrityError, match="no metadata.json"):
        read_bundle(directory)


def test_missing_folder_is_detected(tmp_path):
    with pytest.raises(IntegrityError, match="does not exist"):
        read_bundle(tmp_path / "absent")


def test_unknown_format_version_is_rejected(tmp_path, state_dict, buffer):
    directory = tmp_path / "bundle"
    _write(directory, state_dict, buffer)
    metadata = json.loads((directory / METADATA_FILE).read_text())
    metadata["format_version"] = 99
    (directory / METADATA_FILE).write_text(json.dumps(metadata))

    with pytest.raises(IntegrityError, match="format_version 99"):
        read_bundle(directory)


def test_verify_bundle_checks_hashes_only(tmp_path, state_dict, buffer, caplog):
    directory = tmp_path / "bundle"
    _write(directory, state_dict, buffer)

    with caplog.at_level(logging.DEBUG, logger="mycelium.cold_storage.quantize"):
        verify_bundle(directory)
    assert caplog.records == []

    _flip_byte(directory / "smote.json", offset=5)
    with pytest.raises(IntegrityError, match=r"smote\.json has sha256"):
        verify_bundle(directory)


class TestHashing:
    def test_sha256_bytes_known_answer(self):
        assert sha256_bytes(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    def test_sha256_file_matches_bytes(self, tmp_path):
        data = os.urandom(3 * 1024 * 1024 + 17)
        (tmp_path / "blob").write_bytes(data)

        assert sha256_file(tmp_path / "blob") == sha256_bytes(data)

    def test_state_dict_hash_ignores_order(self, state_dict):
        reversed_dict = dict(reversed(list(state_dict.items())))

        assert sha256_state_dict(reversed_dict) == sha256_state_dict(state_dict)

    def test_state_dict_hash_sees_one_bit(self, state_dict):
        changed = {name: tensor.clone() for name, tensor in state_dict.items()}
        changed["head.weight"].view(torch.int32)[0, 0] ^= 1

        assert sha256_state_dict(changed) != sha256_state_dict(state_dict)

    def test_state_dict_hash_sees_dtype_and_shape(self):
        values = torch.arange(6, dtype=torch.float32)

        digests = {
            sha256_state_dict({"w": values}),
            sha256_state_dict({"w": values.reshape(2, 3)}),
            sha256_state_dict({"w": values.to(torch.float64)}),
            sha256_state_dict({"v": values}),
        }

        assert len(digests) == 4

    def test_state_dict_hash_accepts_views_and_bfloat16(self):
        weight = torch.randn(4, 3)

        assert sha256_state_dict({"w": weight.t()}) == sha256_state_dict({"w": weight.t().contiguous()})
        assert len(sha256_state_dict({"w": weight.to(torch.bfloat16)})) == 64


def test_references_stored_exactly(tmp_path):
    references = {"0.mean": torch.randn(8, dtype=torch.float64), "0.precision": torch.randn(8, 8, dtype=torch.float64)}
    write_bundle(
        tmp_path / "v0001",
        state_dict={"w": torch.randn(16, 8)},
        mode="int8",
        metadata={"domain": "d"},
        buffer=pd.DataFrame({"x": [1.0, 2.0], "label": [0, 1]}),
        smote={},
        expectations={},
        references=references,
    )

    loaded = read_bundle(tmp_path / "v0001")

    assert set(loaded.references) == set(references)
    for name, tensor in references.items():
        assert torch.equal(loaded.references[name], tensor)
