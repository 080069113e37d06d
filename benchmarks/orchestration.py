"""Benchmark of the orchestration: event-to-run latency, and a screenshot of the dashboard.

Usage, from the project folder::

    python benchmarks/orchestration.py [--repeats 5] [--screenshot docs/dashboard.png]

It starts the stack of `mycelium orchestrate up` (a Prefect server on a free 127.0.0.1 port,
one training and one light process worker, the deployments) over a project in a temporary
folder, with a small digits CNN registered. Each repeat emits one ``mycelium.drift.detected``
event and measures, from the moment it was emitted, when the server created the triggered
``train-patch`` flow run, when the run entered Running and when it finished. Repeats run one
after another, so no run waits for another. It then freezes two domains, requests one of them
through the ``ingest`` deployment (which triggers ``remember``) and takes a screenshot of the
``mycelium-domains`` table in the dashboard with headless Chromium. It writes
``reports/benchmarks/orchestration.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from mycelium.config import ExpertTraining, Patch, load_params
from mycelium.data.sources import load_mnist_resampled, load_uci_digits
from mycelium.experts.fitting import train_expert
from mycelium.orchestration.dashboard import DOMAINS_KEY
from mycelium.orchestration.events import DRIFT_DETECTED, emit_mycelium_event, flush_events
from mycelium.orchestration.stack import Stack
from mycelium.system import Mycelium

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "reports" / "benchmarks" / "orchestration"
COMMAND = "python benchmarks/orchestration.py"
CHROMIUM = "/usr/bin/chromium"
SEED = 7
DIGITS = "vision/digits"
ARCHIVED = "vision/archive"
RECALLED = "vision/recalled"
DIGITS_CNN = ExpertTraining(architecture="cnn", config={"image_shape": [1, 8, 8], "channels": [8, 16], "hidden": 32,
                                                        "dropout": 0.1}, normalization="global", epochs=10, lr=0.003)
SMALL_PATCH = Patch(rank=4, alpha=8.0, epochs=15, lr=0.003, default_min_samples=10)
RUN_TIMEOUT_S = 300


def write_params(folder: Path) -> Path:
    """Write params.yaml with paths in ``folder``, a small patch, a free port, the shortest lease
    Prefect allows (60 s) and a waiting run that requests its slot every second."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"] = {name: str(folder / name) for name in raw["paths"]}
    raw["patch"] = SMALL_PATCH.model_dump()
    raw["cold_storage"]["pinned"] = [DIGITS]
    raw["orchestration"].update(port=0, training_workers=1, light_workers=1, training_lease_s=60, slot_retry_max_s=1)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def register_domains(params_path: Path) -> tuple[Mycelium, Any]:
    """Train the small digits CNN once and register it under three domain names."""
    digits = load_uci_digits().sample(frac=1.0, random_state=SEED).reset_index(drop=True)
    expert = train_expert(DIGITS, digits.iloc[:900], digits.iloc[900:1200], DIGITS_CNN, target_fpr=0.05, seed=SEED,
                          min_tail_samples=4)
    system = Mycelium(load_params(params_path))
    for domain in (DIGITS, ARCHIVED, RECALLED):
        copy_ = copy.deepcopy(expert)
        copy_.domain = domain
        system.register(copy_, tags=[domain], reference=digits.iloc[:900], reason="benchmark expert")
    return system, digits


def client():
    from prefect import get_client

    return get_client(sync_client=True)


def find_run(data_path: str):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with client() as api:
        runs = api.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["train-patch"])))
    return next((r for r in runs if r.parameters.get("data_path") == data_path), None)


def measure_once(folder: Path, rows, index: int) -> dict[str, Any]:
    """Emit one drift event and time the triggered run: created, running, finished."""
    path = folder / "drifted" / f"window-{index}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(path, index=False)
    payload = {"domain": DIGITS, "window": index, "scores": {"score": 2.0, "threshold": 1.0}, "rows": len(rows),
               "data_path": str(path), "version": 1, "bundle_version": None}

    emitted = time.time()
    emit_mycelium_event(DRIFT_DETECTED, DIGITS, payload)
    flush_events()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    run = None
    while time.monotonic() < deadline:
        run = find_run(str(path))
        if run is not None and run.state.is_final():
            break
        time.sleep(0.2)
    if run is None or not run.state.is_final():
        raise RuntimeError(f"The train-patch run for {path} did not finish within {RUN_TIMEOUT_S} s.")
    if not run.state.is_completed():
        raise RuntimeError(f"The train-patch run {run.name} ended {run.state_name}: {run.state.message}")
    return {
        "repeat": index,
        "created_s": run.created.timestamp() - emitted,
        "running_s": run.start_time.timestamp() - emitted,
        "finished_s": run.end_time.timestamp() - emitted,
        "run_seconds": run.total_run_time.total_seconds(),
    }


def recall_through_ingest(system: Mycelium, folder: Path, digits) -> str:
    """Freeze two domains and request one through the ingest deployment; return the remember run's state."""
    from prefect.deployments import run_deployment

    for domain in (ARCHIVED, RECALLED):
        system.freeze(domain, reason="benchmark: shown cold in the dashboard")
    batch = folder / "requests" / "recall.parquet"
    batch.parent.mkdir(parents=True, exist_ok=True)
    digits.iloc[1200:1285].to_parquet(batch, index=False)
    run_deployment("ingest/ingest", parameters={"path": str(batch), "tag": RECALLED}, timeout=RUN_TIMEOUT_S)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        with client() as api:
            runs = [r for r in api.read_flow_runs() if r.parameters.get("domain") == RECALLED]
        if runs and runs[0].state.is_final():
            return runs[0].state_name
        time.sleep(1)
    return "not finished"


# A process that takes a domain's training slot, reports it and then sleeps until it is killed.
HOLDER = """
import sys, time
from mycelium.config import Orchestration
from mycelium.orchestration.concurrency import training_slot
with training_slot(sys.argv[1], Orchestration(training_lease_s=float(sys.argv[2]))):
    print("acquired", flush=True)
    time.sleep(3600)
"""


def measure_killed_holder(api_url: str, settings) -> dict[str, float]:
    """Kill a process that holds a training slot and time how long until the slot is free again."""
    from mycelium.orchestration.concurrency import training_slot

    domain = "vision/killed"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, domain, str(settings.training_lease_s)],
                              env={**os.environ, "PREFECT_API_URL": api_url}, stdout=subprocess.PIPE, text=True)
    if holder.stdout.readline().strip() != "acquired":
        raise RuntimeError("The slot holder exited before it took the slot.")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    killed = time.time()
    with training_slot(domain, settings):
        freed = time.time() - killed
    return {"lease_s": settings.training_lease_s, "freed_after_s": freed}


def screenshot(ui_url: str, path: Path, profile: Path) -> None:
    """Open the newest version of the domain table in the dashboard and save a PNG of the page."""
    from playwright.sync_api import sync_playwright
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with client() as api:
        latest = api.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[DOMAINS_KEY])),
                                    sort=ArtifactSort.CREATED_DESC, limit=1)[0]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, viewport={"width": 1600, "height": 560},
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(f"{ui_url}/artifacts/key/{DOMAINS_KEY}")
            page.get_by_text(str(latest.id)[:8], exact=True).first.click()
            page.get_by_text(RECALLED, exact=True).first.wait_for(timeout=60_000)
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path))
        finally:
            browser.close()


def machine() -> dict[str, Any]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    load = Path("/proc/loadavg")
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "load_average_1min": float(load.read_text().split()[0]) if load.exists()
            else None}


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {key: {"median": statistics.median(r[key] for r in rows), "max": max(r[key] for r in rows),
                  "min": min(r[key] for r in rows)}
            for key in ("created_s", "running_s", "finished_s", "run_seconds")}


def markdown(result: dict[str, Any]) -> str:
    info, summary, settings = result["machine"], result["summary"], result["settings"]
    lines = [
        "# Orchestration benchmark",
        "",
        f"Command: `{result['command']}`, run {result['started']} in {result['seconds']:.0f} s.",
        f"Machine: {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, torch {info['torch']}, "
        f"{info['platform']}. Load average (1 min) {info['load_average_1min']} at the start.",
        f"Settings: worker poll every {settings['worker_poll_s']:g} s (`orchestration.worker_poll_s`), one training "
        "worker, Prefect 3.9.1 server on 127.0.0.1 with SQLite.",
        "",
        "## Event to run latency",
        "",
        "Seconds from `emit_event` of a `mycelium.drift.detected` event to the triggered `train-patch` run being "
        "created by the server's trigger service, entering Running on the worker (which polls, starts a Python "
        f"process and loads the flow), and finishing (patch trained and registered). {len(result['repeats'])} repeats, "
        "one after another.",
        "",
        "| measure | median | min | max |",
        "|---|---|---|---|",
    ]
    names = {"created_s": "event -> run created", "running_s": "event -> run running",
             "finished_s": "event -> run finished", "run_seconds": "run time (Running to end)"}
    for key, name in names.items():
        lines.append(f"| {name} | {summary[key]['median']:.2f} | {summary[key]['min']:.2f} | {summary[key]['max']:.2f} |")
    lines += ["", "| repeat | created | running | finished |", "|---|---|---|---|"]
    for row in result["repeats"]:
        lines.append(f"| {row['repeat']} | {row['created_s']:.2f} | {row['running_s']:.2f} | {row['finished_s']:.2f} |")
    killed = result["killed_holder"]
    lines += [
        "",
        "## A killed run frees its slot",
        "",
        f"A process took the training slot of a domain on a {killed['lease_s']:g} s lease "
        f"(`orchestration.training_lease_s`) and was killed with SIGKILL. The slot was free again "
        f"{killed['freed_after_s']:.1f} s later: the lease expired and the server's lease service "
        "released it. A run that ends normally releases its slot at once.",
        "",
        "## Dashboard",
        "",
        f"Remembering of `{RECALLED}` requested through the `ingest` deployment: the `remember` run ended "
        f"{result['remember_state']}. Screenshot: `{result['screenshot']}`." if result["screenshot"] else
        "Screenshot skipped.",
        "",
        "## Limits",
        "",
        "- One run on one shared machine; the time to Running is dominated by the worker's poll interval and the "
        "start of a Python process that imports torch and Prefect, so it varies with the machine's load.",
        "- The server's event trigger is evaluated as events arrive; the `created` column includes the client's "
        "event delivery over a websocket.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="drift events to time, one after another (default 5)")
    parser.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "dashboard.png",
                        help="PNG of the dashboard's domain table (default docs/dashboard.png)")
    parser.add_argument("--no-screenshot", action="store_true", help="skip the Remembering request and screenshot")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started, clock = datetime.now(UTC), time.perf_counter()

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with tempfile.TemporaryDirectory(prefix="mycelium-orchestration-") as temporary:
        folder = Path(temporary)
        params_path = write_params(folder)
        params = load_params(params_path)
        system, digits = register_domains(params_path)
        mnist = load_mnist_resampled().sample(n=400, random_state=SEED).reset_index(drop=True)
        os.environ["DVC_SITE_CACHE_DIR"] = str(folder / "dvc-site-cache")
        stack = Stack(ROOT, params_path, params.orchestration, prefect_home=folder / "prefect", port=0)
        state = stack.up()
        try:
            with temporary_settings({PREFECT_API_URL: state.api_url}):
                repeats = [measure_once(folder, mnist, index) for index in range(1, args.repeats + 1)]
                killed = measure_killed_holder(state.api_url, params.orchestration)
                remember_state, shot = None, None
                if not args.no_screenshot:
                    remember_state = recall_through_ingest(system, folder, digits)
                    screenshot(state.ui_url, args.screenshot, folder / "chromium-profile")
                    shot = str(args.screenshot.resolve().relative_to(ROOT))
        finally:
            stack.down()

    result = {"command": COMMAND, "started": started.isoformat(timespec="seconds"),
              "seconds": time.perf_counter() - clock, "machine": machine(),
              "settings": {"worker_poll_s": params.orchestration.worker_poll_s},
              "repeats": repeats, "summary": summarize(repeats), "killed_holder": killed,
              "remember_state": remember_state,
              "screenshot": shot}
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.with_suffix(".json").write_text(json.dumps(result, indent=1))
    REPORT.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
