"""Bundle: one folder holding one frozen subgraph version (an expert with its ordered patches).

Files of a bundle:

- ``weights.safetensors``: the quantized tensors (see ``quantize.py``).
- ``manifest.json``: the quantization manifest, needed to restore the weights.
- ``buffer.parquet``: the mini-buffer of recent samples (feature columns and labels).
- ``smote.json``: the SMOTE settings used to generate synthetic samples from the buffer.
- ``expectations.json``: the data expectations of the domain.
- ``metadata.json``: the caller's metadata plus the size and sha256 of every other file.
  It is written last, so a folder without it was never completed.

Nothing in a bundle is unpickled: tensors are read with safetensors, tables with Parquet and
everything else as JSON, each only after its sha256 matched. ``metadata.json`` cannot
contain its own hash. It is protected by the DVC md5 of the version folder (see ``store.py``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import safetensors
import safetensors.torch
import torch

from mycelium.cold_storage.quantize import (
    QuantizationMode,
    dequantize_state_dict,
    fp32_size_bytes,
    quantize_state_dict,
    summarize_manifest,
)
from mycelium.errors import ConfigError, DataValidationError, IntegrityError, StorageError
from mycelium.hashing import sha256_bytes, sha256_file

logger = logging.getLogger(__name__)

BUNDLE_FORMAT_VERSION = 1

WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
BUFFER_FILE = "buffer.parquet"
SMOTE_FILE = "smote.json"
EXPECTATIONS_FILE = "expectations.json"
METADATA_FILE = "metadata.json"
REFERENCES_FILE = "references.safetensors"
DATA_FILES = (WEIGHTS_FILE, MANIFEST_FILE, BUFFER_FILE, SMOTE_FILE, EXPECTATIONS_FILE)
# Files a bundle has only when the writer passed them; metadata.json lists the ones present.
OPTIONAL_FILES = (REFERENCES_FILE,)

# Keys of metadata.json that write_bundle sets. A caller's value for one of them is replaced.
RESERVED_METADATA_KEYS = frozenset(
    {
        "format_version",
        "created_at",
        "torch_version",
        "quantization",
        "quantization_summary",
        "fp32_bytes",
        "stored_bytes",
        "files",
    }
)

_RESTORE_FIX = "restore this version from the DVC remote (ColdStore.checkout)"


@dataclass(frozen=True)
class BundleInfo:
    """Sizes and metadata of a bundle that ``write_bundle`` wrote.

    ``stored_bytes`` is the size of every file of the bundle on disk, ``metadata.json``
    included. ``quantization`` is the summary of the quantization manifest: counts per
    scheme, tensors kept at higher precision with the reason, and the largest errors.
    """

    path: Path
    stored_bytes: int
    fp32_bytes: int
    weights_bytes: int
    quantization: dict[str, Any]
    metadata: dict[str, Any]


@dataclass(frozen=True)
class LoadedBundle:
    """Contents of a verified bundle. ``state_dict`` is dequantized to the original dtypes.

    The mini-buffer's bytes were verified with the rest, but they are parsed into ``buffer``
    on first access, because serving the restored model does not need them and parsing a wide
    buffer takes longer than loading the weights.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    smote: dict[str, Any]
    expectations: dict[str, Any]
    manifest: dict[str, Any]
    buffer_bytes: bytes = field(repr=False)
    # Unquantized tensors stored beside the weights, e.g. the subgraph's OOD references.
    references: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @cached_property
    def buffer(self) -> pd.DataFrame:
        """The mini-buffer: feature columns and labels.

        Raises:
            IntegrityError: the verified Parquet bytes cannot be parsed.
        """
        return _parse(self.path, BUFFER_FILE, lambda data: pd.read_parquet(io.BytesIO(data)), self.buffer_bytes)


def write_bundle(
    directory: Path,
    *,
    state_dict: Mapping[str, torch.Tensor],
    mode: QuantizationMode,
    metadata: Mapping[str, Any],
    buffer: pd.DataFrame,
    smote: Mapping[str, Any],
    expectations: Mapping[str, Any],
    max_relative_error: float = 0.02,
    references: Mapping[str, torch.Tensor] | None = None,
) -> BundleInfo:
    """Quantize ``state_dict`` and write a complete bundle to ``directory`` atomically.

    Every file is written and fsynced in a temporary sibling folder, which is then renamed
    to ``directory``. A crash leaves either no bundle or a complete one, plus at worst a
    hidden ``.<name>.tmp-*`` folder. Reload the bundle with ``read_bundle`` before dropping
    the hot copy of the model.

    Args:
        directory: the bundle folder to create. Its parent is created if needed.
        state_dict: weights of the subgraph, e.g. ``module.state_dict()``.
        mode: ``"int8"`` or ``"fp16"``, see ``quantize_state_dict``.
        metadata: JSON-serialisable facts about the subgraph (domain, architecture and
            config, lifecycle history, last use, metrics). Keys in
            ``RESERVED_METADATA_KEYS`` are set by this function.
        buffer: the mini-buffer, stored as Parquet. Column names must be strings.
        smote: SMOTE settings, see ``smote.smote_settings``.
        expectations: the domain's data expectations, as JSON.
        max_relative_error: passed to ``quantize_state_dict``.
        references: tensors stored exactly, not quantized, in ``references.safetensors``:
            statistics such as a Mahalanobis precision matrix lose too much in INT8.

    Raises:
        StorageError: ``directory`` exists (versions are immutable) or writing failed.
        DataValidationError: ``buffer`` is not a DataFrame or has non-string column names.
        ConfigError: ``metadata``, ``smote`` or ``expectations`` is not JSON-serialisable,
            or the quantization settings are invalid.
    """
    directory = Path(directory)
    if directory.exists():
        raise StorageError(
            f"Bundle folder {directory} already exists: bundle versions are immutable, so write "
            "the new version to a new folder (ColdStore.next_version_path gives the next one)."
        )
    _check_buffer(buffer)

    quantized = quantize_state_dict(state_dict, mode, max_relative_error=max_relative_error)
    weights_bytes = safetensors.torch.save(
        quantized.tensors,
        metadata={"format": "pt", "mycelium_quantization": mode},
    )
    contents = {
        WEIGHTS_FILE: weights_bytes,
        MANIFEST_FILE: _json_bytes(quantized.manifest, "quantization manifest"),
        BUFFER_FILE: _parquet_bytes(buffer),
        SMOTE_FILE: _json_bytes(smote, "smote"),
        EXPECTATIONS_FILE: _json_bytes(expectations, "expectations"),
    }
    if references:
        contents[REFERENCES_FILE] = safetensors.torch.save({k: v.contiguous() for k, v in references.items()})
    files = {name: {"sha256": sha256_bytes(data), "bytes": len(data)} for name, data in contents.items()}

    overridden = sorted(RESERVED_METADATA_KEYS & set(metadata))
    if overridden:
        logger.debug("Bundle %s: replacing the caller's metadata keys %s.", directory, overridden)
    quantization_summary = summarize_manifest(quantized.manifest)
    full_metadata = {
        **metadata,
        "format_version": BUNDLE_FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "torch_version": torch.__version__,
        "quantization": mode,
        "quantization_summary": quantization_summary,
        "fp32_bytes": fp32_size_bytes(state_dict),
        # Size of the files listed below. metadata.json is not included, as it cannot list itself.
        "stored_bytes": sum(entry["bytes"] for entry in files.values()),
        "files": files,
    }
    metadata_bytes = _json_bytes(full_metadata, "metadata")

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        for name, data in contents.items():
            _write_synced(staging / name, data)
        _write_synced(staging / METADATA_FILE, metadata_bytes)
        _fsync_directory(staging)
        if directory.exists():
            raise StorageError(
                f"Bundle folder {directory} was created by someone else while this bundle was "
                "being written: write this version to a new folder."
            )
        os.rename(staging, directory)
        _fsync_directory(directory.parent)
    except OSError as exc:
        raise StorageError(
            f"Failed to write bundle {directory}: {exc}. Check free disk space and permissions "
            "of the parent folder, then write the bundle again."
        ) from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

    info = BundleInfo(
        path=directory,
        stored_bytes=full_metadata["stored_bytes"] + len(metadata_bytes),
        fp32_bytes=full_metadata["fp32_bytes"],
        weights_bytes=len(weights_bytes),
        quantization=quantization_summary,
        metadata=full_metadata,
    )
    logger.info(
        "Wrote bundle %s: %d bytes stored, %d bytes as float32, weights %s, max abs error %.3g.",
        directory,
        info.stored_bytes,
        info.fp32_bytes,
        mode,
        quantization_summary["max_abs_error"],
    )
    return info


def read_bundle(directory: Path) -> LoadedBundle:
    """Verify every file of a bundle against ``metadata.json``, then load it.

    Each file is read once into memory, its size and sha256 are checked, and only after
    every file passed are they parsed, so a tampered or truncated file loads nothing. The
    mini-buffer is parsed when ``LoadedBundle.buffer`` is first read.
    Restoring the weights is lossy and logs one warning (see ``dequantize_state_dict``).

    Raises:
        IntegrityError: the folder or ``metadata.json`` is missing or unreadable, or a file
            is missing, has the wrong size or the wrong sha256.
    """
    directory = Path(directory)
    metadata = _read_metadata(directory)
    contents = {name: _read_verified(directory, name, metadata["files"][name]) for name in _listed_files(metadata)}

    tensors = _parse(directory, WEIGHTS_FILE, safetensors.torch.load, contents[WEIGHTS_FILE])
    manifest = _parse(directory, MANIFEST_FILE, json.loads, contents[MANIFEST_FILE])
    smote = _parse(directory, SMOTE_FILE, json.loads, contents[SMOTE_FILE])
    expectations = _parse(directory, EXPECTATIONS_FILE, json.loads, contents[EXPECTATIONS_FILE])
    state_dict = dequantize_state_dict(tensors, manifest)

    return LoadedBundle(
        path=directory,
        state_dict=state_dict,
        metadata=metadata,
        smote=smote,
        expectations=expectations,
        manifest=manifest,
        buffer_bytes=contents[BUFFER_FILE],
        references=(_parse(directory, REFERENCES_FILE, safetensors.torch.load, contents[REFERENCES_FILE])
                    if REFERENCES_FILE in contents else {}),
    )


def verify_bundle(directory: Path) -> None:
    """Check the size and sha256 of every file listed in ``metadata.json``, loading nothing.

    Raises:
        IntegrityError: as ``read_bundle``.
    """
    directory = Path(directory)
    metadata = _read_metadata(directory)
    for name in _listed_files(metadata):
        expected = metadata["files"][name]
        path = directory / name
        actual_size = _file_size(directory, name)
        _check_size(directory, name, expected, actual_size)
        _check_sha256(directory, name, expected, sha256_file(path))


# Writing.


def _check_buffer(buffer: pd.DataFrame) -> None:
    if not isinstance(buffer, pd.DataFrame):
        raise DataValidationError(
            f"Bundle buffer must be a pandas DataFrame, got {type(buffer).__name__}: pass the "
            "mini-buffer as a DataFrame of feature columns and a label column."
        )
    bad_columns = [column for column in buffer.columns if not isinstance(column, str)]
    if bad_columns:
        raise DataValidationError(
            f"Bundle buffer has non-string column names {bad_columns[:5]}, which Parquet cannot "
            "store: rename them, e.g. buffer.columns = buffer.columns.map(str)."
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


def _json_bytes(value: Mapping[str, Any], description: str) -> bytes:
    try:
        text = json.dumps(value, indent=2, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"Bundle {description} is not JSON-serialisable: {exc}. Convert the value to str, int, "
            "float (finite), bool, list or dict."
        ) from exc
    return text.encode("utf-8")


def _parquet_bytes(buffer: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    try:
        buffer.to_parquet(sink, engine="pyarrow")
    except (TypeError, ValueError) as exc:
        raise DataValidationError(
            f"Bundle buffer cannot be written as Parquet: {exc}. Convert object columns to "
            "numbers or strings."
        ) from exc
    return sink.getvalue()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# Reading and verification.


def _read_metadata(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise IntegrityError(f"Bundle folder {directory} does not exist: {_RESTORE_FIX}.")
    path = directory / METADATA_FILE
    try:
        metadata = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise IntegrityError(
            f"Bundle {directory} has no {METADATA_FILE}, so it was never completed or was "
            f"damaged: {_RESTORE_FIX}."
        ) from exc
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path} is unreadable ({exc}): {_RESTORE_FIX}.") from exc

    if not isinstance(metadata, dict) or not isinstance(metadata.get("files"), dict):
        raise IntegrityError(f"{path} has no 'files' table of hashes: {_RESTORE_FIX}.")
    format_version = metadata.get("format_version")
    if format_version != BUNDLE_FORMAT_VERSION:
        raise IntegrityError(
            f"{path} has format_version {format_version!r}, but this Mycelium reads only "
            f"version {BUNDLE_FORMAT_VERSION}: {_RESTORE_FIX} or use the Mycelium version that wrote it."
        )
    for name in DATA_FILES:
        entry = metadata["files"].get(name)
        if not isinstance(entry, dict) or "sha256" not in entry or "bytes" not in entry:
            raise IntegrityError(f"{path} lists no sha256 and size for {name}: {_RESTORE_FIX}.")
    return metadata


def _listed_files(metadata: dict[str, Any]) -> tuple[str, ...]:
    return DATA_FILES + tuple(name for name in OPTIONAL_FILES if name in metadata["files"])


def _file_size(directory: Path, name: str) -> int:
    try:
        return (directory / name).stat().st_size
    except FileNotFoundError as exc:
        raise IntegrityError(f"Bundle {directory} is missing {name}: {_RESTORE_FIX}.") from exc


def _read_verified(directory: Path, name: str, expected: Mapping[str, Any]) -> bytes:
    _check_size(directory, name, expected, _file_size(directory, name))
    data = (directory / name).read_bytes()
    # Checked again on the bytes actually read, in case the file changed after stat().
    _check_size(directory, name, expected, len(data))
    _check_sha256(directory, name, expected, sha256_bytes(data))
    return data


def _check_size(directory: Path, name: str, expected: Mapping[str, Any], actual: int) -> None:
    if actual != expected["bytes"]:
        raise IntegrityError(
            f"{directory / name} has {actual} bytes, but {METADATA_FILE} expects "
            f"{expected['bytes']} (sha256 {expected['sha256']}), so it is truncated or "
            f"tampered: {_RESTORE_FIX}."
        )


def _check_sha256(directory: Path, name: str, expected: Mapping[str, Any], actual: str) -> None:
    if actual != expected["sha256"]:
        raise IntegrityError(
            f"{directory / name} has sha256 {actual}, but {METADATA_FILE} expects "
            f"{expected['sha256']}, so it is tampered: {_RESTORE_FIX}."
        )


def _parse(directory: Path, name: str, parser: Callable[[bytes], Any], data: bytes) -> Any:
    # Reached only with bytes whose sha256 matched, so a failure here means the bundle was
    # written wrongly, not damaged later.
    try:
        return parser(data)
    except (ValueError, OSError, RuntimeError, safetensors.SafetensorError) as exc:
        raise IntegrityError(
            f"{directory / name} matches its sha256 but cannot be parsed ({exc!r}): the bundle "
            "was written by an incompatible version; rewrite it from the hot model if it is "
            "still loaded."
        ) from exc
