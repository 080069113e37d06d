"""Flow sweep: move idle hot domains to cold storage (INT8 bundles versioned with DVC).

The `sweep` deployment runs it on the cron schedule `orchestration.sweep_cron`. A run that
starts more than `orchestration.late_sweep_after_s` after its scheduled time (a server or
worker that was down) is skipped with a log line, so no sweep runs days late.
"""

from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from mycelium.runtime import configure_environment

ROOT = configure_environment(Path.cwd())

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from mycelium.config import load_params  # noqa: E402
from mycelium.orchestration.concurrency import cold_store_slot  # noqa: E402
from mycelium.orchestration.dashboard import publish_domains  # noqa: E402
from mycelium.orchestration.events import flush_events  # noqa: E402
from mycelium.orchestration.retries import transient_retries  # noqa: E402
from mycelium.orchestration.runtime import late_by_s, orchestrated_system  # noqa: E402


# No retries here: a failed DVC push leaves the bundle stored locally and the domain cold, and
# push_pending_bundles below retries the push alone.
@task(cache_policy=NO_CACHE)
def sweep_domains(params_path: str) -> list[dict]:
    system = orchestrated_system(load_params(ROOT / params_path))
    evictions = [asdict(e) for e in system.sweep()]
    publish_domains(system.domain_table(), "Domains after the sweep: state, version, size, last use and accuracy.")
    return evictions


@task(cache_policy=NO_CACHE)
def push_pending_bundles(params_path: str) -> bool:
    return orchestrated_system(load_params(ROOT / params_path)).push_pending()


@flow(name="sweep")
def sweep_flow(params_path: str = "params.yaml") -> dict:
    logger = get_run_logger()
    settings = load_params(ROOT / params_path).orchestration

    # Skip a run that starts too long after its scheduled time.
    late = late_by_s(flow_run.scheduled_start_time, datetime.now(timezone.utc))
    if late > settings.late_sweep_after_s:
        logger.warning("Skipped the sweep scheduled for %s: it started %.0f s late, more than "
                       "orchestration.late_sweep_after_s=%g. The next scheduled sweep runs as usual.",
                       flow_run.scheduled_start_time, late, settings.late_sweep_after_s)
        return {"skipped": True, "late_by_s": late, "evictions": []}

    # Sweep, holding the cold store, then push bundles whose push failed, with retries.
    with cold_store_slot(settings):
        evictions = sweep_domains(params_path)
        pushed = push_pending_bundles.with_options(**transient_retries(settings))(params_path)
    for eviction in evictions:
        logger.info("Swept %s: %s", eviction["domain"], eviction["reason"])
    flush_events()
    return {"skipped": False, "late_by_s": late, "evictions": evictions, "pushed_pending": pushed}


if __name__ == "__main__":
    sweep_flow()
