"""params.yaml -> typed, validated settings. A bad value fails at load time, naming its field."""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter
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


class PairTable(_Settings):
    """A table of row pairs labelled equal (1) or not (0), drawn within each part of the prepared
    table ``of``. ``pairs`` sets how many pairs each listed part gets."""

    of: str
    pairs: dict[Literal["train", "calibration", "stream", "test"], int]
    equal_fraction: float = Field(default=0.5, ge=0, le=1)

    @field_validator("pairs")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {part: count for part, count in value.items() if count < 1}
        if bad:
            raise ValueError(f"pair counts must be at least 1 (leave a part out for none), got {bad}")
        return value


class Prepare(_Settings):
    datasets: dict[str, DatasetSplit]
    pairs: dict[str, PairTable] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _pairs_of_known_tables(self) -> "Prepare":
        unknown = {name: table.of for name, table in self.pairs.items() if table.of not in self.datasets}
        if unknown:
            raise ValueError(f"pairs {unknown} are drawn from tables not defined under prepare.datasets")
        clashing = sorted(set(self.pairs) & set(self.datasets))
        if clashing:
            raise ValueError(f"{clashing} are defined both under prepare.datasets and prepare.pairs; rename one")
        return self

    @property
    def tables(self) -> set[str]:
        """Names of every prepared table: the data sets and the pair tables."""
        return set(self.datasets) | set(self.pairs)


class UpstreamSettings(_Settings):
    """One upstream input of a chained domain: slot ``slot`` reads ``output`` of ``domain``."""

    slot: str
    domain: str
    output: Literal["logits", "embedding"] = "logits"


class ExpertTraining(_Settings):
    dataset: str | None = None
    # Inputs from other domains' experts; the expert then trains on their outputs.
    upstream: list[UpstreamSettings] = Field(default_factory=list)
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
    batch_size: int = Field(default=64, gt=0)
    min_samples: dict[str, int] = Field(default_factory=dict)
    default_min_samples: int = Field(gt=0)
    # A patch is registered only if its held-out accuracy minus the accuracy without it is at
    # least this much: 0.0 rejects a patch that lowers accuracy on the rows it was trained for.
    min_accuracy_gain: float = Field(default=0.0, ge=-1.0, le=1.0)

    def min_samples_for(self, domain: str) -> int:
        return self.min_samples.get(domain, self.default_min_samples)


class ContinualPatch(_Settings):
    """Low-rank patch settings of the continual-learning benchmark (see ``Patch``)."""

    rank: int = Field(gt=0)
    alpha: float = Field(gt=0)
    epochs: int = Field(gt=0)
    lr: float = Field(gt=0)
    batch_size: int = Field(default=64, gt=0)

    def as_patch(self) -> Patch:
        return Patch(rank=self.rank, alpha=self.alpha, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                     default_min_samples=1)


class PartRows(_Settings):
    """Rows of one part of a scenario: ``rows`` slices the source (null: all rows, or to the end),
    then ``train`` rows train and ``test`` other rows test."""

    rows: tuple[int, int | None] | None = None
    train: int = Field(gt=0)
    test: int = Field(gt=0)


class TwoPartScenario(_Settings):
    """A scenario with an old and a new part of one task: Mycelium patches its expert for the new part.

    ``expert`` trains Mycelium's expert and, with the same architecture and recipe, every
    baseline network. ``autoencoder`` sets the ``AutoencoderOOD`` of the domain check that an
    image expert and its patches get (empty: the defaults of ``fit_domain_check``).
    """

    expert: ExpertTraining
    patch: ContinualPatch
    old: PartRows
    new: PartRows
    autoencoder: dict[str, Any] = Field(default_factory=dict)


class SplitMnistScenario(_Settings):
    """Split MNIST at 28x28: five tasks of two digits; Mycelium trains one expert per task.

    ``network`` is the baselines' network over all ten digits. ``autoencoder`` sets the
    ``AutoencoderOOD`` of each task's domain check, which untagged routing reads.
    """

    train_per_task: int = Field(gt=0)
    test_per_task: int = Field(gt=0)
    expert: ExpertTraining
    network: ExpertTraining
    autoencoder: dict[str, Any] = Field(default_factory=dict)


class Continual(_Settings):
    """Settings of the continual-learning benchmark (benchmarks/continual.py).

    ``calibration_fraction`` of a new expert's training rows calibrate its OOD reference.
    ``eval_batch_rows`` is the batch size of test rows when Mycelium serves one batch at a time.
    ``fisher_samples`` rows of each part estimate EWC's diagonal Fisher information.
    """

    seeds: list[int] = Field(min_length=1)
    buffer_size: int = Field(gt=0)
    ewc_lambda: float = Field(ge=0)
    fisher_samples: int = Field(gt=0)
    calibration_fraction: float = Field(gt=0, lt=1)
    eval_batch_rows: int = Field(gt=0)
    digits_shift: TwoPartScenario
    rainfall: TwoPartScenario
    split_mnist: SplitMnistScenario


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
    has been measured. ``remote_url``, when set, is the DVC remote of the cold store in place
    of the folder ``paths.remote``, for example shared object storage (``s3://...``).
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
    remote_url: str | None = None

    @field_validator("remote_url")
    @classmethod
    def _is_url(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError(f"{value!r} is not a URL such as s3://bucket/mycelium-cold; "
                             "set a local folder in paths.remote instead")
        return value


class Remembering(_Settings):
    """Fine-tune and validation-gate settings of Remembering.

    ``wait_timeout_s`` is how long a request waits for another process that is restoring
    the same domain before it raises ``RememberTimeoutError``. A patch training waits as
    long for the domain's lock before it raises ``DomainBusyError``.
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


class Orchestration(_Settings):
    """Prefect server, work pools, workers, schedules and concurrency of `mycelium orchestrate up`.

    Times are in seconds, and ``port`` 0 picks a free port. ``training_lease_s`` is how long
    a training run's slot outlives a run that stops renewing it (a killed worker), and
    ``slot_timeout_s`` how long a run waits for its domain's slot before it fails, polling at
    most every ``slot_retry_max_s``. ``late_sweep_after_s`` is how far past its scheduled
    time a sweep may start before it is skipped.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=4200, ge=0, lt=65536)
    training_pool: str = "mycelium-training"
    light_pool: str = "mycelium-light"
    training_workers: int = Field(default=1, ge=0)
    light_workers: int = Field(default=1, ge=0)
    runs_per_worker: int = Field(default=1, gt=0)
    worker_poll_s: float = Field(default=2.0, gt=0)
    sweep_cron: str = "0 * * * *"
    timezone: str = "UTC"
    late_sweep_after_s: float = Field(default=3600.0, gt=0)
    training_lease_s: float = Field(default=120.0, ge=60)
    slot_timeout_s: float = Field(default=3600.0, gt=0)
    slot_retry_max_s: float = Field(default=30.0, ge=0)
    retries: int = Field(default=3, ge=0)
    retry_delay_s: float = Field(default=2.0, ge=0)
    ingest_batch_rows: int = Field(default=250, gt=0)
    server_start_timeout_s: float = Field(default=180.0, gt=0)

    @field_validator("sweep_cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a 5-field cron expression such as '0 * * * *'")
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
    orchestration: Orchestration = Field(default_factory=Orchestration)
    continual: Continual

    @model_validator(mode="after")
    def _datasets_exist(self) -> "Params":
        known = self.prepare.tables
        used = {e.dataset for e in self.experts.values()} | {
            f.dataset for phase in self.stream.phases for f in phase.feeds
        }
        missing = sorted(d for d in used if d is not None and d not in known)
        if missing:
            raise ValueError(f"datasets {missing} are used but not defined under prepare.datasets ({sorted(known)})")
        no_size = sorted({f.dataset for p in self.stream.phases for f in p.feeds} - set(self.stream.batch_size))
        if no_size:
            raise ValueError(f"stream.batch_size has no entry for {no_size}")
        unknown = {name: [u.domain for u in e.upstream if u.domain not in self.experts]
                   for name, e in self.experts.items()}
        unknown = {name: domains for name, domains in unknown.items() if domains}
        if unknown:
            raise ValueError(f"experts {unknown} name upstream domains that are not under experts")
        try:
            TopologicalSorter({name: [u.domain for u in e.upstream] for name, e in self.experts.items()}).prepare()
        except CycleError as exc:
            cycle = " -> ".join(reversed(exc.args[1]))
            raise ValueError(f"the upstream inputs of experts form the cycle {cycle}; remove one of them") from None
        return self

    def training_order(self) -> list[str]:
        """Return the domains under ``experts`` with every upstream domain before its consumers."""
        graph = {name: [u.domain for u in e.upstream] for name, e in self.experts.items()}
        return list(TopologicalSorter(graph).static_order())

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
        raise ConfigError(f"Settings file {str(path)!r} not found; run from the project folder or pass its path "
                          "(on the command line: `mycelium --params FILE COMMAND`).")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} is not a YAML mapping of settings; pass the project's params.yaml.")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe_error(err) for err in exc.errors())
        raise ConfigError(f"Invalid settings in {path}: {problems}. Fix these values in {path.name}.") from exc
    return params.resolve(Path(root) if root else path.resolve().parent)
