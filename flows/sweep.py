"""Flow sweep: move idle hot domains to cold storage (INT8 bundles versioned with DVC).

Schedule it with a cron deployment; each eviction is logged with its reason.
"""

from dataclasses import asdict
from pathlib import Path

from mycelium.runtime import configure_environment

ROOT = configure_environment(Path.cwd())

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from mycelium.config import load_params  # noqa: E402
from mycelium.system import Mycelium  # noqa: E402


# No task retries: a failed DVC push leaves the bundle stored locally and the domain cold, and
# the next sweep pushes it, so a retry here would only repeat work.
@task(cache_policy=NO_CACHE)
def sweep_domains(params_path: str) -> list[dict]:
    system = Mycelium(load_params(ROOT / params_path))
    evictions = [asdict(e) for e in system.sweep()]
    create_table_artifact(key="mycelium-domains", table=system.domain_table(),
                          description="Domains after the sweep: state, version, size, last use and accuracy.")
    return evictions


@flow(name="sweep")
def sweep_flow(params_path: str = "params.yaml") -> list[dict]:
    evictions = sweep_domains(params_path)
    for eviction in evictions:
        get_run_logger().info("Swept %s: %s", eviction["domain"], eviction["reason"])
    return evictions


if __name__ == "__main__":
    sweep_flow()
