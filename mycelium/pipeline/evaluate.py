"""Stage evaluate: turn the stream's events and measurements into metrics.json and plots."""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mycelium.config import Params  # noqa: E402
from mycelium.events import read_events  # noqa: E402

logger = logging.getLogger(__name__)

MARKED_EVENTS = {"patch_trained": "patch", "domain_registered": "new expert", "swept": "swept", "gate_passed": "restored"}


def _measurement(measurements: list[dict[str, Any]], domain: str, moment: str, *, last: bool = False) -> dict | None:
    found = [m for m in measurements if m["domain"] == domain and m["moment"] == moment]
    if not found:
        return None
    return found[-1] if last else found[0]


def domain_metrics(params: Params, summary: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Return per-domain accuracy before and after each event, forgetting, sizes and restore time."""
    measurements = summary["measurements"]
    metrics: dict[str, Any] = {}
    for row in summary["domains"]:
        domain = row["domain"]
        entry: dict[str, Any] = {"state": row["state"], "version": row["version"], "patches": row["patches"]}
        start = _measurement(measurements, domain, "start")
        if start:
            entry["accuracy_start"] = start["accuracy"]
        patch = _measurement(measurements, domain, "after_patch", last=True)
        if start and patch:
            old = params.experts[domain].dataset
            entry["accuracy_after_patch"] = patch["accuracy"]
            entry["forgetting_old_data"] = start["accuracy"][old] - patch["accuracy"][old]
            new = [d for d in patch["accuracy"] if d != old]
            entry["gain_new_data"] = {d: patch["accuracy"][d] - start["accuracy"][d] for d in new}
        patch_events = [e for e in events if e["event"] == "patch_trained" and e["domain"] == domain]
        if patch_events:
            entry["expert_unchanged_by_patches"] = all(
                e["expert_sha256_before"] == e["expert_sha256_after"] for e in patch_events
            )
            entry["patch_train_seconds"] = sum(e["seconds"] for e in patch_events)
        registration = _measurement(measurements, domain, "after_registration")
        if registration:
            entry["accuracy_after_registration"] = registration["accuracy"]
            registered = next(e["step"] for e in events if e["event"] == "domain_registered" and e["domain"] == domain)
            entry["batches_routed_after_registration"] = sum(
                1 for e in events if e["event"] == "batch_routed" and e["domain"] == domain and e["step"] > registered
            )
        swept = [e for e in events if e["event"] == "swept" and e["domain"] == domain]
        if swept:
            last = swept[-1]
            entry["bundle_bytes"] = last["bundle_bytes"]
            entry["weights_bytes"] = last["weights_bytes"]
            entry["fp32_bytes"] = last["fp32_bytes"]
            entry["weights_compression"] = last["compression"]
            entry["quantization"] = last["quantization"]
            before = [m for m in measurements if m["domain"] == domain and m["step"] <= last["step"]]
            entry["accuracy_before_sweep"] = before[-1]["accuracy"] if before else None
        restored = _measurement(measurements, domain, "after_restore", last=True)
        gate = [e for e in events if e["event"] == "gate_passed" and e["domain"] == domain]
        if restored and gate:
            entry["accuracy_after_restore"] = restored["accuracy"]
            entry["restore_seconds"] = gate[-1]["restore_seconds"]
            if entry.get("accuracy_before_sweep"):
                entry["restore_accuracy_change"] = {
                    d: restored["accuracy"][d] - entry["accuracy_before_sweep"][d] for d in restored["accuracy"]
                }
        if row.get("upstream"):
            entry.update(chain_metrics(measurements, events, domain, row["upstream"]))
        metrics[domain] = entry
    return metrics


def chain_metrics(measurements: list[dict[str, Any]], events: list[dict[str, Any]], domain: str,
                  upstream: str) -> dict[str, Any]:
    """Return a chained domain's test accuracy at the end, and how many rows each stage served
    at each subgraph version and chain depth (``{"a": {"vision/digits v2 depth 1": 200}}``)."""
    entry: dict[str, Any] = {"upstream": upstream}
    end = _measurement(measurements, domain, "end", last=True)
    if end:
        entry["accuracy_end"] = end["accuracy"]
    served: dict[str, Counter] = {}
    for event in events:
        if event["event"] != "batch_routed" or event["domain"] != domain:
            continue
        for stage in event.get("stages", []):
            for depth, rows in stage["depth_counts"].items():
                key = f"{stage['domain']} v{stage['version']} depth {depth}"
                served.setdefault(stage["slot"], Counter())[key] += rows
    entry["rows_served_by_stage"] = {slot: dict(counts) for slot, counts in served.items()}
    return entry


def plot_accuracy(params: Params, accuracy: pd.DataFrame, events: list[dict[str, Any]]) -> None:
    """Write plots/accuracy.csv for `dvc plots` and plots/accuracy.png with the events marked."""
    folder = params.paths.plots
    folder.mkdir(parents=True, exist_ok=True)
    accuracy.to_csv(folder / "accuracy.csv", index=False)
    figure, axes = plt.subplots(figsize=(13, 5))
    for domain, rows in accuracy.groupby("domain"):
        axes.plot(rows["step"], rows["accuracy"], marker=".", label=domain)
    for event in events:
        if event["event"] in MARKED_EVENTS and event.get("step", 0) > 0:
            axes.axvline(event["step"], color="grey", linestyle=":", linewidth=1)
            axes.annotate(f"{MARKED_EVENTS[event['event']]}: {event['domain']}", (event["step"], 0.02),
                          rotation=90, fontsize=7, color="dimgrey", va="bottom")
    axes.set_xlabel("batch (stream step)")
    axes.set_ylabel("batch accuracy")
    axes.set_ylim(0, 1.02)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes.set_title("Accuracy along the stream, with patches, new experts, sweeps and restores marked")
    figure.tight_layout()
    figure.savefig(folder / "accuracy.png", dpi=110)
    plt.close(figure)


def evaluate(params: Params) -> dict[str, Any]:
    """Read the stream's outputs and write metrics.json and the plots."""
    run = params.paths.run
    summary = json.loads((run / "stream_summary.json").read_text())
    events = read_events(run / "events.jsonl")
    accuracy = pd.read_csv(run / "stream_accuracy.csv")
    metrics = {
        "stream": {
            "batches": summary["batches"],
            "events": dict(sorted(Counter(e["event"] for e in events).items())),
        },
        "domains": domain_metrics(params, summary, events),
    }
    params.paths.metrics.write_text(json.dumps(metrics, indent=1))
    plot_accuracy(params, accuracy, events)
    return metrics
