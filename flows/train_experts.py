"""Flow train_experts: train one expert per initial domain, on CUDA when the worker has it."""

from pathlib import Path

from mycelium.runtime import configure_environment

ROOT = configure_environment(Path.cwd())

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from mycelium.config import load_params  # noqa: E402
from mycelium.pipeline import train as stage  # noqa: E402


@task(cache_policy=NO_CACHE)
def train_domain(domain: str, params_path: str) -> dict:
    return stage.train_domain(load_params(ROOT / params_path), domain)


@flow(name="train-experts")
def train_experts_flow(params_path: str = "params.yaml") -> list[dict]:
    params = load_params(ROOT / params_path)
    # Upstream domains first: a chained domain trains on their saved experts' outputs.
    rows = [train_domain(domain, params_path) for domain in params.training_order()]
    stage.write_summary(params, rows)
    return rows


if __name__ == "__main__":
    train_experts_flow()
