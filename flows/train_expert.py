"""Flow train_expert: train an expert for a new domain on the rows in its new-domain queue.

The `train-expert` deployment runs it on the training pool for every mycelium.domain.new
event; `domain` is then the queue's name and `data_path` its folder.

Usage: python flows/train_expert.py QUEUE_FOLDER
"""

import os
import sys
import time
from pathlib import Path

from mycelium.runtime import configure_environment

ROOT = configure_environment(Path.cwd())

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from mycelium.config import load_params  # noqa: E402
from mycelium.orchestration.concurrency import training_slot  # noqa: E402
from mycelium.orchestration.events import flush_events  # noqa: E402
from mycelium.orchestration.runtime import orchestrated_system  # noqa: E402


@task(cache_policy=NO_CACHE, task_run_name="train expert on {data_path}")
def train_on_queue(data_path: str, params_path: str) -> dict:
    system = orchestrated_system(load_params(ROOT / params_path))
    started = time.time()
    record = system.train_new_expert_from_queue(data_path)
    system.events.emit("training_slot", domain=record.name if record else None, action="expert", queue=data_path,
                       worker=os.environ.get("MYCELIUM_WORKER_NAME"), started=started, finished=time.time(),
                       trained=record is not None)
    if record is None:
        return {"queue": data_path, "skipped": "the queue holds too few rows; another run may have used them"}
    return {"queue": data_path, "domain": record.name, "version": record.version,
            "holdout_accuracy": record.metrics.get("holdout_accuracy")}


@flow(name="train-expert")
def train_expert_flow(
    domain: str,
    data_path: str,
    window: int = 0,
    scores: dict[str, float | None] | None = None,
    rows: int = 0,
    version: int = 0,
    bundle_version: str | None = None,
    params_path: str = "params.yaml",
) -> dict:
    get_run_logger().info("New domain %s: %d queued rows in %s at window %d; best acceptance by known domains %s.",
                          domain, rows, data_path, window, scores)
    settings = load_params(ROOT / params_path).orchestration

    # One training per queue: wait for its slot, then train.
    with training_slot(data_path, settings):
        result = train_on_queue(data_path, params_path)
    flush_events()
    return result


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python flows/train_expert.py QUEUE_FOLDER   (runs/stream/new_domain_queue/NAME)")
    train_expert_flow(Path(sys.argv[1]).name, sys.argv[1])
