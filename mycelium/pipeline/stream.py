"""Stage stream: replay the prepared batches through Mycelium, as production would see them.

The replay runs on a simulated clock (``stream.seconds_per_batch`` per batch), so the idle
times that the sweep reads do not depend on how fast this machine is.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mycelium.config import Params
from mycelium.errors import ConfigError, DataValidationError
from mycelium.experts.fitting import chain_features
from mycelium.pipeline.prepare import read_part
from mycelium.pipeline.train import chain_plan, upstream_inputs
from mycelium.routing.tags import safe_name
from mycelium.subgraph import load_subgraph
from mycelium.system import BatchResult, Mycelium

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduledBatch:
    """One batch of the replay: which table it comes from, its tag and its place."""

    phase: str
    dataset: str
    tag: str | None
    index: int


class SimulatedClock:
    """A clock that moves only when ``advance`` is called."""

    def __init__(self, start: float = 0.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def build_schedule(params: Params) -> list[ScheduledBatch]:
    """Interleave each phase's feeds in a seeded order; each feed keeps its own batch order."""
    rng = np.random.default_rng(params.seed)
    schedule: list[ScheduledBatch] = []
    cursor: dict[str, int] = defaultdict(int)
    for phase in params.stream.phases:
        slots = [i for i, feed in enumerate(phase.feeds) for _ in range(feed.batches)]
        for feed_index in rng.permutation(slots):
            feed = phase.feeds[int(feed_index)]
            schedule.append(ScheduledBatch(phase.name, feed.dataset, feed.tag, cursor[feed.dataset]))
            cursor[feed.dataset] += 1
    return schedule


class BatchSource:
    """Cuts consecutive batches from each table's stream part."""

    def __init__(self, params: Params):
        self.params = params
        self._tables: dict[str, pd.DataFrame] = {}

    def check(self, schedule: list[ScheduledBatch]) -> None:
        """Raise ConfigError before the run if any scheduled batch lies past its table's end."""
        for item in schedule:
            self._rows(item)

    def _rows(self, item: ScheduledBatch) -> tuple[pd.DataFrame, int, int]:
        if item.dataset not in self._tables:
            self._tables[item.dataset] = read_part(self.params, item.dataset, "stream")
        table = self._tables[item.dataset]
        size = self.params.stream.batch_size[item.dataset]
        start = item.index * size
        if start + size > len(table):
            raise ConfigError(
                f"Batch {item.index} of {item.dataset!r} needs rows {start}-{start + size} but its stream part "
                f"has {len(table)} rows; lower the feed's batches or stream.batch_size.{item.dataset} in params.yaml."
            )
        return table, start, size

    def batch(self, item: ScheduledBatch) -> pd.DataFrame:
        table, start, size = self._rows(item)
        return table.iloc[start : start + size].reset_index(drop=True)


class StreamRun:
    """Runs the replay and measures test accuracy around every event.

    ``run`` replays everything; the Prefect flow calls ``start``, ``process``, ``sweep`` and
    ``finish`` as separate tasks instead.
    """

    def __init__(self, params: Params):
        self.params = params
        self.schedule = build_schedule(params)
        self.source = BatchSource(params)
        self.source.check(self.schedule)
        # The replay ends at the wall-clock time it started, so the last-use times it records
        # are in the past for any later sweep that reads the real clock.
        self.clock = SimulatedClock(time.time() - len(self.schedule) * params.stream.seconds_per_batch)
        self.tests: dict[str, pd.DataFrame] = {}
        self.datasets_of: dict[str, set[str]] = defaultdict(set)
        self.accuracy_rows: list[dict[str, Any]] = []
        self.measurements: list[dict[str, Any]] = []
        shutil.rmtree(params.paths.run, ignore_errors=True)
        self.system = Mycelium(params, clock=self.clock)

    def register_initial_experts(self) -> None:
        """Register the experts of the train_experts stage under their domain tags.

        Upstream domains come first. A chained domain's reference is its training rows
        passed through its upstream experts, the input its own expert reads.
        """
        for domain in self.params.training_order():
            settings = self.params.experts[domain]
            subgraph = load_subgraph(self.params.paths.models / safe_name(domain))
            reference = read_part(self.params, settings.dataset, "train")
            if settings.upstream:
                reference = chain_features(chain_plan(self.params, domain), reference, self.system.subgraph)
            self.system.register(subgraph, tags=[domain], reference=reference, reason="initial expert",
                                 upstream=upstream_inputs(self.params, domain))
            self.datasets_of[domain].add(settings.dataset)
        for phase in self.params.stream.phases:
            for feed in phase.feeds:
                if feed.tag is not None:
                    self.datasets_of[self.system.controller.resolve(feed.tag).name].add(feed.dataset)

    def test_set(self, dataset: str) -> pd.DataFrame:
        if dataset not in self.tests:
            self.tests[dataset] = read_part(self.params, dataset, "test")
        return self.tests[dataset]

    def measure(self, domain: str, moment: str) -> dict[str, float]:
        """Record the served subgraph's test accuracy on every table of ``domain``."""
        scores = {d: self.system.evaluate(domain, self.test_set(d)) for d in sorted(self.datasets_of[domain])}
        self.measurements.append({"step": self.system.step, "domain": domain, "moment": moment, "accuracy": scores})
        return scores

    def start(self) -> None:
        """Register the initial experts and measure their test accuracy before any batch."""
        self.register_initial_experts()
        for domain in list(self.datasets_of):
            self.measure(domain, "start")

    def process(self, item: ScheduledBatch) -> dict[str, Any]:
        """Advance the clock and ingest one scheduled batch; return what happened as plain data."""
        self.clock.advance(self.params.stream.seconds_per_batch)
        batch = self.source.batch(item)
        try:
            result = self.system.ingest(batch, item.tag, name=f"{item.dataset}-{item.index:03d}")
        except DataValidationError as exc:
            return {"dataset": item.dataset, "quarantined": exc.quarantine_path}
        self._after_batch(item, result)
        return {"dataset": item.dataset, **result.__dict__}

    def sweep_due(self, position: int) -> bool:
        return position % self.params.cold_storage.sweep_every == 0

    def run(self) -> dict[str, Any]:
        """Replay the whole schedule without Prefect and return the summary."""
        self.start()
        for position, item in enumerate(self.schedule, start=1):
            self.process(item)
            if self.sweep_due(position):
                self.sweep()
        return self.finish()

    def _after_batch(self, item: ScheduledBatch, result: BatchResult) -> None:
        if result.domain is not None:
            if item.tag is None:
                self.datasets_of[result.domain].add(item.dataset)
            self.accuracy_rows.append({
                "step": result.step, "domain": result.domain, "dataset": item.dataset,
                "accuracy": result.accuracy, "version": result.version, "phase": item.phase,
            })
        for action in result.actions:
            if action == "patched":
                self.measure(result.domain, "after_patch")
            elif action == "remembered":
                self.measure(result.domain, "after_restore")
            elif action.startswith("registered "):
                domain = action.split(" ", 1)[1]
                self.datasets_of[domain].add(item.dataset)
                self.measure(domain, "after_registration")

    def sweep(self) -> list[str]:
        """Run the sweep policy and return the swept domains."""
        hot_before = {name for name, r in self.system.controller.table.domains.items() if r.state == "hot"}
        planned = {name: self.measure(name, "before_sweep") for name in hot_before if self._idle_enough(name)}
        evictions = self.system.sweep()
        evicted = {e.domain for e in evictions}
        # Keep "before_sweep" measurements only for the domains that were actually swept.
        self.measurements = [
            m for m in self.measurements
            if not (m["moment"] == "before_sweep" and m["domain"] in set(planned) - evicted)
        ]
        return sorted(evicted)

    def _idle_enough(self, domain: str) -> bool:
        record = self.system.controller.domain(domain)
        idle = self.clock() - (record.locality.last_used or 0.0)
        return idle > self.params.cold_storage.max_idle_s and not record.pinned

    def finish(self) -> dict[str, Any]:
        # A chained domain gets no patch or restore measurement when only its upstream changed.
        for domain in self.system.controller.table.upstream:
            if all(self.system.controller.domain(stage.domain).state == "hot"
                   for stage in self.system.controller.chain(domain).stages):
                self.measure(domain, "end")
        run = self.params.paths.run
        pd.DataFrame(self.accuracy_rows).to_csv(run / "stream_accuracy.csv", index=False)
        summary = {
            "batches": len(self.schedule),
            "simulated_seconds": self.clock(),
            "measurements": self.measurements,
            "domains": self.system.domain_table(),
        }
        (run / "stream_summary.json").write_text(json.dumps(summary, indent=1, default=float))
        return summary
