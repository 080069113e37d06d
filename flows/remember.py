"""Flow remember: bring a cold domain back through verification and the validation gate, then
serve the batches that waited for it.

The `remember` deployment runs it on the training pool for every mycelium.domain.requested
event. The dashboard shows the domain as `remembering`, the progress, the gate's numbers and
then the domain as `hot` (or `cold` after a failed gate).

Usage: python flows/remember.py DOMAIN
"""

import sys
from pathlib import Path

from mycelium.runtime import configure_environment

ROOT = configure_environment(Path.cwd())

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from mycelium.config import load_params  # noqa: E402
from mycelium.orchestration.concurrency import cold_store_slot  # noqa: E402
from mycelium.orchestration.events import flush_events  # noqa: E402
from mycelium.orchestration.retries import transient_retries  # noqa: E402
from mycelium.orchestration.runtime import orchestrated_system  # noqa: E402


@task(cache_policy=NO_CACHE, task_run_name="remember {domain}")
def restore_domain(domain: str, params_path: str) -> dict:
    system = orchestrated_system(load_params(ROOT / params_path))
    result = system.remember(domain)
    served = system.replay_pending(domain) if result.passed else []
    return {"domain": domain, **result.summary(), "served_batches": [s["batch"] for s in served]}


@flow(name="remember")
def remember_flow(
    domain: str,
    window: int = 0,
    scores: dict[str, float | None] | None = None,
    rows: int = 0,
    data_path: str | None = None,
    version: int = 0,
    bundle_version: str | None = None,
    params_path: str = "params.yaml",
) -> dict:
    logger = get_run_logger()
    logger.info("Request for %s (bundle %s) at window %d; waiting batch: %s.", domain, bundle_version, window, data_path)
    settings = load_params(ROOT / params_path).orchestration

    # Restore while holding the cold store; a lock held by another restore is retried with backoff.
    with cold_store_slot(settings):
        result = restore_domain.with_options(**transient_retries(settings))(domain, params_path)
    logger.info("Remembering %s: %s (%s)", domain, "passed" if result["passed"] else "failed", result["reason"])
    flush_events()
    return result


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python flows/remember.py DOMAIN   (for example tabular/segments)")
    remember_flow(sys.argv[1])
