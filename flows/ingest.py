"""Flow ingest: route, validate and check one batch file for drift.

Actions that take long run elsewhere: a drifting domain, a new domain or a request for a cold
domain is saved to a file and announced by an event, and the `train-patch`, `train-expert`
and `remember` deployments start on those events. The file is read in chunks of
`orchestration.ingest_batch_rows` rows, each ingested as one batch.

Usage: python flows/ingest.py FILE [TAG]
"""

import sys
from pathlib import Path

from mycelium.runtime import configure_environment

ROOT = configure_environment(Path.cwd())

import pandas as pd  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Completed, State  # noqa: E402

from mycelium.config import load_params  # noqa: E402
from mycelium.errors import DataValidationError, InputError, one_line  # noqa: E402
from mycelium.orchestration.dashboard import publish_domains, publish_drift  # noqa: E402
from mycelium.orchestration.events import flush_events  # noqa: E402
from mycelium.orchestration.runtime import describe_ingest_outcome, orchestrated_system  # noqa: E402


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(f"Batch file {path} not found; pass the path of a .parquet or .csv file the worker can read.")
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    raise InputError(f"Batch file {path} has suffix {path.suffix!r}; use .parquet or .csv.")


@task(cache_policy=NO_CACHE, task_run_name="ingest {path}")
def ingest_file(path: str, tag: str | None, params_path: str) -> list[dict]:
    params = load_params(ROOT / params_path)
    system = orchestrated_system(params)
    frame = _read(Path(path))
    size = params.orchestration.ingest_batch_rows
    outcomes = []
    for start in range(0, len(frame), size):
        name = f"{Path(path).stem}-rows-{start}"
        try:
            result = system.ingest(frame.iloc[start : start + size].reset_index(drop=True), tag, name=name)
        except DataValidationError as exc:
            outcomes.append({"batch": name, "quarantined": exc.quarantine_path, "error": one_line(exc)})
            continue
        outcomes.append({"batch": name, "domain": result.domain, "version": result.version, "state": result.state,
                         "rows": result.rows, "accuracy": result.accuracy, "actions": result.actions})
    publish_drift(system.events.of_kind("drift_check"), f"Drift checks while ingesting {Path(path).name}.")
    publish_domains(system.domain_table(), f"Domains after ingesting {Path(path).name}.")
    return outcomes


@flow(name="ingest")
def ingest_flow(path: str, tag: str | None = None, params_path: str = "params.yaml") -> list[dict] | State:
    """Ingest the file; a run that quarantined batches ends Completed with a message that counts them."""
    logger = get_run_logger()
    outcomes = ingest_file(path, tag, params_path)
    for outcome in outcomes:
        if "quarantined" in outcome:
            logger.warning("%s", describe_ingest_outcome(outcome))
        else:
            logger.info("%s", describe_ingest_outcome(outcome))
    flush_events()
    quarantined = [outcome["quarantined"] for outcome in outcomes if "quarantined" in outcome]
    if quarantined:
        # The state's type stays COMPLETED, so automations on completed runs still match.
        return Completed(message=f"{len(quarantined)} of {len(outcomes)} batches quarantined: "
                                 f"{', '.join(map(str, quarantined))}", data=outcomes)
    return outcomes


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python flows/ingest.py FILE [TAG]   (.parquet or .csv; no TAG routes by domain inference)")
    ingest_flow(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None)
