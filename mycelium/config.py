"""params.yaml -> typed, validated settings. A bad value fails at load time, naming its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mycelium.errors import ConfigError


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(_Settings):
    prepared: Path
    quarantine: Path
    models: Path
    run: Path
    cold_store: Path
    remote: Path
    metrics: Path
    plots: Path


class DatasetSplit(_Settings):
    """Split of one prepared table: leading train and calibration rows, then the rest split at
    random into test rows and stream rows (kept in order)."""

    source: str
    order: Literal["shuffle", "time"]
    rows: tuple[int, int | None] | None = None
    train: float = Field(ge=0, lt=1)
    calibration: float = Field(ge=0, lt=1)
    test: float = Field(ge=0, lt=1)

    @model_validator(mode="after")
    def _fractions_leave_a_stream(self) -> "DatasetSplit":
        if self.rows is not None and self.rows[1] is not None and self.rows[1] <= self.rows[0]:
            raise ValueError(f"rows {list(self.rows)} selects nothing; use [start, stop] with stop > start or null")
        total = self.train + self.calibration + self.test
        if total >= 1:
            raise ValueError(f"train + calibration + test is {total:.2f}; it must stay below 1 to leave stream rows")
        return self


class Prepare(_Settings):
    datasets: dict[str, DatasetSplit]


class ExpertTraining(_Settings):
    dataset: str | None = None
    architecture: str
    config: dict[str, Any] = Field(default_factory=dict)
    normalization: Literal["per_feature", "global"] = "per_feature"
    epochs: int = Field(gt=0)
    lr: float = Field(gt=0)
    batch_size: int = Field(default=64, gt=0)


class NewExpert(ExpertTraining):
    tag_prefix: str
    min_samples: int = Field(gt=1)
    holdout_fraction: float = Field(gt=0, lt=1)


class Patch(_Settings):
    rank: int = Field(gt=0)
    alpha: float = Field(gt=0)
    epochs: int = Field(gt=0)
    lr: float = Field(gt=0)
    min_samples: dict[str, int] = Field(default_factory=dict)
    default_min_samples: int = Field(gt=0)

    def min_samples_for(self, domain: str) -> int:
        return self.min_samples.get(domain, self.default_min_samples)


class PageHinkleySettings(_Settings):
    min_instances: int = Field(gt=0)
    delta: float = Field(ge=0)
    threshold: float = Field(gt=0)
    alpha: float = Field(default=1 - 0.0001, gt=0, le=1)
    standardize: bool = False
    min_std: float = Field(default=0.05, gt=0)


class Drift(_Settings):
    persistence: int = Field(gt=0)
    min_window: int = Field(ge=2)
    alpha: float = Field(gt=0, lt=1)
    window_size: int = Field(gt=1)
    quantile: float = Field(gt=0, le=1)
    margin: float = Field(gt=0)
    page_hinkley: PageHinkleySettings


class OOD(_Settings):
    target_fpr: float = Field(gt=0, lt=1)
    min_tail_samples: int = Field(default=10, gt=0)
    min_accepted_fraction: float = Field(gt=0, le=1)


class Quantization(_Settings):
    default: Literal["int8", "fp16"]
    per_domain: dict[str, Literal["int8", "fp16"]] = Field(default_factory=dict)

    def mode_for(self, domain: str) -> str:
        return self.per_domain.get(domain, self.default)


class ColdStorage(_Settings):
    """Sweep policy, hot-memory budget and bundle settings.

    ``policy`` picks the sweep policy: ``lru`` (least recently used) or ``activity``
    (decayed use count times reload cost per byte, see ``cold_storage/activity.py``).
    Domains in ``pinned`` are never swept. ``reload_base_s`` and ``reload_bytes_per_s``
    estimate a domain's reload cost for the activity policy until a restore of that domain
    has been measured.
    """

    quantization: Quantization
    buffer_size: int = Field(ge=500, le=1000)
    buffer_min: int = Field(gt=0)
    smote_k: int = Field(gt=0)
    hot_budget_bytes: int = Field(gt=0)
    max_idle_s: float = Field(gt=0)
    sweep_every: int = Field(gt=0)
    probe_rows: int = Field(gt=0)
    policy: Literal["lru", "activity"] = "lru"
    pinned: list[str] = Field(default_factory=list)
    reload_base_s: float = Field(default=0.5, gt=0)
    reload_bytes_per_s: float = Field(default=50_000_000.0, gt=0)


class Remembering(_Settings):
    """Fine-tune and validation-gate settings of Remembering.

    ``wait_timeout_s`` is how long a request waits for another process that is restoring
    the same domain before it raises ``RememberTimeoutError``.
    """

    finetune_lr: float = Field(gt=0)
    finetune_steps: int = Field(ge=0)
    gate_tolerance: float = Field(ge=0, le=1)
    holdout_fraction: float = Field(gt=0, lt=1)
    wait_timeout_s: float = Field(default=300.0, gt=0)


class Feed(_Settings):
    dataset: str
    tag: str | None
    batches: int = Field(gt=0)


class Phase(_Settings):
    name: str
    feeds: list[Feed]


class Stream(_Settings):
    seconds_per_batch: float = Field(gt=0)
    batch_size: dict[str, int]
    phases: list[Phase]

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 1}
        if bad:
            raise ValueError(f"batch sizes must be at least 1, got {bad}")
        return value


class Params(_Settings):
    """Every setting of a run, read from params.yaml."""

    seed: int
    paths: Paths
    prepare: Prepare
    experts: dict[str, ExpertTraining]
    new_expert: NewExpert
    patch: Patch
    drift: Drift
    ood: OOD
    cold_storage: ColdStorage
    remembering: Remembering
    stream: Stream

    @model_validator(mode="after")
    def _datasets_exist(self) -> "Params":
        known = set(self.prepare.datasets)
        used = {e.dataset for e in self.experts.values()} | {
            f.dataset for phase in self.stream.phases for f in phase.feeds
        }
        missing = sorted(d for d in used if d is not None and d not in known)
        if missing:
            raise ValueError(f"datasets {missing} are used but not defined under prepare.datasets ({sorted(known)})")
        no_size = sorted({f.dataset for p in self.stream.phases for f in p.feeds} - set(self.stream.batch_size))
        if no_size:
            raise ValueError(f"stream.batch_size has no entry for {no_size}")
        return self

    def resolve(self, root: Path) -> "Params":
        """Return a copy whose paths are absolute, relative to ``root``."""
        paths = {name: (root / value).resolve() for name, value in self.paths.model_dump().items()}
        return self.model_copy(update={"paths": Paths(**paths)})


def _describe_error(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"
    value = error.get("input")
    if isinstance(value, dict):
        return f"{location}: {error['msg']}"
    shown = repr(value)
    return f"{location}: {error['msg']} (got {shown[:80]}{'...' if len(shown) > 80 else ''})"


def load_params(path: Path | str = "params.yaml", *, root: Path | str | None = None) -> Params:
    """Read params.yaml and validate it; paths become absolute under ``root`` (default: its folder)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Settings file {str(path)!r} not found; run from the project folder or pass its path.")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} is not a YAML mapping of settings; pass the project's params.yaml.")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe_error(err) for err in exc.errors())
        raise ConfigError(f"Invalid settings in {path}: {problems}. Fix these values in {path.name}.") from exc
    return params.resolve(Path(root) if root else path.resolve().parent)
