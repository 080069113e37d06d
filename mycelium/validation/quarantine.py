"""Quarantine of rejected batches: every rejected row is kept on disk with the reason.

Each quarantined batch is one folder ``<quarantine_dir>/<UTC timestamp>-<safe name>/``
holding ``batch.parquet`` (the rows, index included) and ``reason.json``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

logger = logging.getLogger(__name__)

BATCH_FILE = "batch.parquet"
REASON_FILE = "reason.json"
_MAX_NAME_LENGTH = 80
_MAX_SUFFIX = 10_000


def _safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return safe[:_MAX_NAME_LENGTH] or "batch"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _parquet_ready(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Return a copy that Parquet accepts, and the columns that had to become strings.

    A rejected batch can be malformed in ways Parquet refuses: non-string or duplicate
    column names, or object columns that mix numbers and text. Names are stringified and
    made unique, and mixed columns are written as text, so the rows are still kept.
    """
    ready = df.copy()
    names: list[str] = []
    for position, column in enumerate(df.columns):
        name = str(column)
        if name in names:
            name = f"{name}__{position}"
        names.append(name)
    ready.columns = names

    converted: list[str] = []
    for name in names:
        if ready[name].dtype != object:
            continue
        try:
            pa.array(ready[name], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            ready[name] = ready[name].map(lambda value: None if pd.isna(value) else str(value))
            converted.append(name)
    return ready, converted


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def _publish(staging: Path, parent: Path, stem: str) -> Path:
    """Rename ``staging`` to the first free ``stem``, ``stem-1``, ... folder name."""
    for suffix in range(_MAX_SUFFIX):
        target = parent / (stem if suffix == 0 else f"{stem}-{suffix}")
        if target.exists():
            continue
        try:
            # os.replace over an existing non-empty folder fails instead of overwriting it.
            os.replace(staging, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise
        return target
    raise FileExistsError(
        f"No free quarantine folder name for {stem!r} in {parent} after {_MAX_SUFFIX} tries. "
        "Move old quarantined batches elsewhere."
    )


def quarantine_batch(df: pd.DataFrame, *, name: str, reason: str, quarantine_dir: Path) -> Path:
    """Write a rejected batch and the reason for it into a new quarantine folder.

    The files are written into a temporary folder beside the target, then renamed into
    place, so a reader never sees a half-written quarantine. An earlier quarantine is never
    overwritten: a name clash gets a ``-1``, ``-2``, ... suffix.

    Args:
        df: the rejected rows, every one of them.
        name: the batch's name, used in the folder name after unsafe characters are replaced.
        reason: why the batch was rejected, in plain words.
        quarantine_dir: parent folder of all quarantined batches, created if missing.

    Returns:
        The new quarantine folder.
    """
    quarantine_dir = Path(quarantine_dir)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    created_at = datetime.now(timezone.utc)
    stem = f"{created_at.strftime('%Y%m%dT%H%M%S%fZ')}-{_safe_name(name)}"

    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{stem}-", dir=quarantine_dir))
    try:
        ready, converted = _parquet_ready(df)
        batch_path = staging / BATCH_FILE
        ready.to_parquet(batch_path, index=True)
        _write_json(
            staging / REASON_FILE,
            {
                "name": name,
                "reason": reason,
                "row_count": int(len(df)),
                "columns": [str(column) for column in df.columns],
                "columns_written_as_text": converted,
                "created_at": created_at.isoformat(),
                "batch_sha256": _sha256(batch_path),
            },
        )
        folder = _publish(staging, quarantine_dir, stem)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    logger.info("Quarantined batch %r (%d rows) in %s", name, len(df), folder)
    return folder


def holds_rows(folder: Path, df: pd.DataFrame) -> bool:
    """Return True when quarantine ``folder`` contains as many rows as ``df``, with the same columns."""
    try:
        reason = json.loads((Path(folder) / REASON_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return reason.get("row_count") == len(df) and reason.get("columns") == [str(c) for c in df.columns]


def list_quarantine(quarantine_dir: Path) -> list[dict[str, Any]]:
    """Read the ``reason.json`` of every quarantined batch, oldest first.

    Each entry is the stored reason with ``path`` (the folder) added. A folder whose
    ``reason.json`` is missing or unreadable is skipped with a warning.
    """
    quarantine_dir = Path(quarantine_dir)
    if not quarantine_dir.is_dir():
        return []

    entries: list[dict[str, Any]] = []
    for folder in sorted(quarantine_dir.iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        reason_path = folder / REASON_FILE
        try:
            entry = json.loads(reason_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning(
                "Skipped quarantine folder %s: cannot read %s: %s", folder, REASON_FILE, exc
            )
            continue
        entry["path"] = str(folder)
        entries.append(entry)
    return entries
