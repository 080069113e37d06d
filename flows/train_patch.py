"""Flow train_patch: train a patch for a drifting domain on the rows its drift event names.

The `train-patch` deployment runs it on the training pool for every mycelium.drift.detected
event. One training per domain runs at a time; the code uses CUDA when the worker has it.

Usage: python flows/train_patch.py DOMAIN DATA_PATH
"""

import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from mycelium.runtime import configure_environment

ROOT = configure_environment(Path.cwd())

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from mycelium.config import load_params  # noqa: E402
from mycelium.orchestration.concurrency import training_slot  # noqa: E402
from mycelium.orchestration.events import flush_events  # noqa: E402
from mycelium.orchestration.runtime import orchestrated_system  # noqa: E402


@task(cache_policy=NO_CACHE, task_run_name="train patch for {domain}")
def train_on_rows(domain: str, data_path: str, params_path: str) -> dict:
    system = orchestrated_system(load_params(ROOT / params_path))
    started = time.time()
    report = system.train_patch_from_file(domain, data_path)
    # The slot's holder and times, so a run's place among concurrent trainings can be checked.
    system.events.emit("training_slot", domain=domain, action="patch", data_path=data_path, worker=os.environ.get("MYCELIUM_WORKER_NAME"),
                       started=started, finished=time.time(), trained=report is not None)
    if report is None:
        return {"domain": domain, "skipped": f"{data_path} was already used by another run"}
    return {**asdict(report), "version": system.controller.domain(domain).version}


@flow(name="train-patch")
def train_patch_flow(
    domain: str,
    data_path: str,
    window: int = 0,
    scores: dict[str, float | None] | None = None,
    rows: int = 0,
    version: int = 0,
    bundle_version: str | None = None,
    params_path: str = "params.yaml",
) -> dict:
    logger = get_run_logger()
    logger.info("Drift in %s closed at window %d (version %d, %d rows, scores %s).",
                domain, window, version, rows, scores)
    settings = load_params(ROOT / params_path).orchestration

    # One training per domain: wait for its slot, then train.
    with training_slot(domain, settings):
        result = train_on_rows(domain, data_path, params_path)
    flush_events()
    return result


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python flows/train_patch.py DOMAIN DATA_PATH   (labelled rows, Parquet)")
    train_patch_flow(sys.argv[1], sys.argv[2])
