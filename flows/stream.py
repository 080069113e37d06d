"""Flow stream: replay the batches through the meta controller, with sweeps, and publish the
domain table as a Prefect artifact."""

from pathlib import Path

from mycelium.runtime import configure_environment

ROOT = configure_environment(Path.cwd())

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from mycelium.config import load_params  # noqa: E402
from mycelium.orchestration.dashboard import publish_domains  # noqa: E402
from mycelium.pipeline.stream import ScheduledBatch, StreamRun  # noqa: E402


@task(cache_policy=NO_CACHE)
def register_experts(run: StreamRun) -> None:
    run.start()


@task(cache_policy=NO_CACHE, task_run_name="ingest {item.dataset} #{item.index}")
def ingest_batch(run: StreamRun, item: ScheduledBatch) -> dict:
    return run.process(item)


@task(cache_policy=NO_CACHE)
def sweep(run: StreamRun) -> list[str]:
    return run.sweep()


@task(cache_policy=NO_CACHE)
def publish_domain_table(run: StreamRun) -> None:
    publish_domains(run.system.domain_table(),
                    "Domains after the stream: state, version, patches, size, last use and accuracy.")


@flow(name="stream")
def stream_flow(params_path: str = "params.yaml") -> dict:
    logger = get_run_logger()
    run = StreamRun(load_params(ROOT / params_path))

    # Register the experts of the train_experts stage.
    register_experts(run)

    # Replay every batch; the sweep runs on its schedule.
    for position, item in enumerate(run.schedule, start=1):
        outcome = ingest_batch(run, item)
        if outcome.get("actions"):
            logger.info("Batch %d (%s): %s", position, item.dataset, outcome["actions"])
        if run.sweep_due(position):
            swept = sweep(run)
            if swept:
                logger.info("Swept to cold storage: %s", swept)

    # Publish the domain table and write the summary.
    publish_domain_table(run)
    return run.finish()


if __name__ == "__main__":
    stream_flow()
