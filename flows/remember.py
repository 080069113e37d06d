"""Flow remember: bring a cold domain back through verification and the validation gate.

Usage: python flows/remember.py DOMAIN
"""

import sys
from pathlib import Path

from mycelium.runtime import configure_environment

ROOT = configure_environment(Path.cwd())

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from mycelium.config import load_params  # noqa: E402
from mycelium.system import Mycelium  # noqa: E402


@task(cache_policy=NO_CACHE)
def restore_domain(domain: str, params_path: str) -> dict:
    system = Mycelium(load_params(ROOT / params_path))
    progress = create_progress_artifact(
        progress=0.0, key="mycelium-remembering", description=f"Remembering {domain}: restore, gate, serve."
    )
    result = system.remember(domain)
    update_progress_artifact(progress, progress=100.0)
    create_table_artifact(key="mycelium-domains", table=system.domain_table(),
                          description=f"Domains after remembering {domain}.")
    return {"domain": domain, **result.summary()}


@flow(name="remember")
def remember_flow(domain: str, params_path: str = "params.yaml") -> dict:
    return restore_domain(domain, params_path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python flows/remember.py DOMAIN   (for example tabular/segments)")
    remember_flow(sys.argv[1])
