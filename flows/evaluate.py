"""Flow evaluate: write metrics.json and the accuracy plot from the stream's outputs."""

from pathlib import Path

from mycelium.runtime import configure_environment

ROOT = configure_environment(Path.cwd())

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from mycelium.config import load_params  # noqa: E402
from mycelium.pipeline import evaluate as stage  # noqa: E402


@task(cache_policy=NO_CACHE)
def write_metrics(params_path: str) -> dict:
    return stage.evaluate(load_params(ROOT / params_path))


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml") -> dict:
    metrics = write_metrics(params_path)
    lines = ["| domain | state | version | metrics |", "|---|---|---|---|"]
    for domain, entry in metrics["domains"].items():
        lines.append(f"| {domain} | {entry['state']} | {entry['version']} | {len(entry)} values |")
    create_markdown_artifact(key="mycelium-metrics", markdown="\n".join(lines))
    return metrics


if __name__ == "__main__":
    evaluate_flow()
