"""Stage prepare: load the real data sets, validate them with Great Expectations, split, write Parquet."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mycelium.config import DatasetSplit, PairTable, Params
from mycelium.data.pairs import make_pairs
from mycelium.data.sources import load_source
from mycelium.validation.expectations import build_expectations, split_valid_rows, validate_frame

logger = logging.getLogger(__name__)

PARTS = ("train", "calibration", "stream", "test")


@dataclass(frozen=True)
class PreparedTable:
    """Row counts of one prepared table and where its parts were written."""

    name: str
    folder: Path
    rows: dict[str, int]
    quarantined: int


def split_table(frame: pd.DataFrame, split: DatasetSplit, seed: int) -> dict[str, pd.DataFrame]:
    """Cut ``frame`` into train, calibration, stream and test parts as ``split`` defines.

    Train and calibration are the leading rows, after a seeded shuffle for ``order: shuffle``.
    Test rows are drawn at random from the rest, and the stream keeps the remaining rows in order.
    """
    if split.rows is not None:
        start, stop = split.rows
        frame = frame.iloc[start:stop]
    frame = frame.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    if split.order == "shuffle":
        frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    n_train = int(round(split.train * len(frame)))
    n_calibration = int(round(split.calibration * len(frame)))
    rest = frame.iloc[n_train + n_calibration :]
    test_mask = np.zeros(len(rest), dtype=bool)
    test_mask[rng.choice(len(rest), size=int(round(split.test * len(frame))), replace=False)] = True
    return {
        "train": frame.iloc[:n_train],
        "calibration": frame.iloc[n_train : n_train + n_calibration],
        "stream": rest[~test_mask],
        "test": rest[test_mask],
    }


def prepare_table(name: str, split: DatasetSplit, source: pd.DataFrame, params: Params) -> PreparedTable:
    """Validate one source table, quarantine its bad rows, split it and write its parts."""
    spec = build_expectations(source.dropna(), label_column="label")
    clean, report = split_valid_rows(source, spec, name=name, quarantine_dir=params.paths.quarantine)
    parts = split_table(clean, split, params.seed)
    folder = params.paths.prepared / name
    folder.mkdir(parents=True, exist_ok=True)
    for part, frame in parts.items():
        if len(frame):
            validate_frame(frame, spec, name=f"{name}/{part}")
        frame.reset_index(drop=True).to_parquet(folder / f"{part}.parquet", index=False)
    (folder / "expectations.json").write_text(json.dumps(spec, indent=1))
    quarantined = len(source) - len(clean)
    logger.info("Prepared %s: %s, %d rows quarantined", name, {p: len(f) for p, f in parts.items()}, quarantined)
    return PreparedTable(name, folder, {p: len(f) for p, f in parts.items()}, quarantined)


def prepare_pairs(name: str, settings: PairTable, params: Params) -> PreparedTable:
    """Draw the pair table ``name`` within each part of the prepared table ``settings.of``.

    Pairs never mix parts, so no test image of the source table appears in a training pair.
    Each part is validated with Great Expectations like the source tables; parts not listed
    in ``settings.pairs`` are not written.
    """
    folder = params.paths.prepared / name
    folder.mkdir(parents=True, exist_ok=True)
    parts = {}
    for offset, (part, count) in enumerate(sorted(settings.pairs.items())):
        source = read_part(params, settings.of, part)
        parts[part] = make_pairs(source, count, equal_fraction=settings.equal_fraction, seed=params.seed + offset)
    spec = build_expectations(pd.concat(parts.values(), ignore_index=True), label_column="label")
    for part, frame in parts.items():
        validate_frame(frame, spec, name=f"{name}/{part}")
        frame.to_parquet(folder / f"{part}.parquet", index=False)
    (folder / "expectations.json").write_text(json.dumps(spec, indent=1))
    logger.info("Prepared pairs %s of %s: %s", name, settings.of, {p: len(f) for p, f in parts.items()})
    return PreparedTable(name, folder, {p: len(f) for p, f in parts.items()}, 0)


def prepare(params: Params) -> list[PreparedTable]:
    """Run the prepare stage for every table in ``params.prepare.datasets``, then the pair tables."""
    sources: dict[str, pd.DataFrame] = {}
    tables = []
    for name, split in params.prepare.datasets.items():
        if split.source not in sources:
            sources[split.source] = load_source(split.source)
        tables.append(prepare_table(name, split, sources[split.source], params))
    for name, settings in params.prepare.pairs.items():
        tables.append(prepare_pairs(name, settings, params))
    summary = {t.name: {"rows": t.rows, "quarantined": t.quarantined} for t in tables}
    (params.paths.prepared / "summary.json").write_text(json.dumps(summary, indent=1))
    return tables


def read_part(params: Params, dataset: str, part: str) -> pd.DataFrame:
    """Return one prepared part, e.g. ``read_part(params, "segments", "test")``."""
    return pd.read_parquet(params.paths.prepared / dataset / f"{part}.parquet")
