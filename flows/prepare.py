"""Flow prepare: load the real data sets, validate them with Great Expectations, write Parquet."""

import json
from pathlib import Path

from mycelium.runtime import configure_environment

ROOT = configure_environment(Path.cwd())

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from mycelium.config import load_params  # noqa: E402
from mycelium.data.sources import load_source  # noqa: E402
from mycelium.pipeline import prepare as stage  # noqa: E402


@task(cache_policy=NO_CACHE)
def prepare_table(name: str, params_path: str) -> dict:
    params = load_params(ROOT / params_path)
    split = params.prepare.datasets[name]
    table = stage.prepare_table(name, split, load_source(split.source), params)
    return {"name": table.name, "rows": table.rows, "quarantined": table.quarantined}


@task(cache_policy=NO_CACHE)
def prepare_pairs(name: str, params_path: str) -> dict:
    params = load_params(ROOT / params_path)
    table = stage.prepare_pairs(name, params.prepare.pairs[name], params)
    return {"name": table.name, "rows": table.rows, "quarantined": table.quarantined}


@flow(name="prepare")
def prepare_flow(params_path: str = "params.yaml") -> list[dict]:
    params = load_params(ROOT / params_path)
    tables = [prepare_table(name, params_path) for name in params.prepare.datasets]
    # Pair tables are drawn from the prepared parts, so they come last.
    tables += [prepare_pairs(name, params_path) for name in params.prepare.pairs]
    (params.paths.prepared / "summary.json").write_text(json.dumps(tables, indent=1))
    return tables


if __name__ == "__main__":
    prepare_flow()
