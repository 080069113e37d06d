"""The deployments, triggers, pools, limits and dashboard against a real Prefect server.

One module-scoped stack: `prefect server start` on a free 127.0.0.1 port with its own
PREFECT_HOME, two workers of the training pool and one of the light pool, all started by
`Stack.up` as `mycelium orchestrate up` does, and stopped by `Stack.down` at the end. The
workers run the flows of this repository against a project folder in tmp.
"""

import copy
import json
import os
import shutil
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest
import yaml

from conftest import DIGITS_PATCH
from mycelium.config import load_params
from mycelium.events import read_events
from mycelium.orchestration.concurrency import ensure_limit, training_limit_name
from mycelium.orchestration.dashboard import DOMAINS_KEY
from mycelium.orchestration.events import DRIFT_DETECTED, emit_mycelium_event, flush_events
from mycelium.orchestration.stack import OrchestrationError, Stack, crash_unfinished_runs, is_alive
from mycelium.system import Mycelium

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PATCHED = "vision/digits"
PAIR = ["vision/digits-b", "vision/digits-c"]
COLD = "vision/cold"
IDLE = "vision/idle"
RUN_TIMEOUT_S = 240
CHROMIUM = "/usr/bin/chromium"


def write_params(folder: Path) -> Path:
    """Write the project's params.yaml with paths in ``folder`` and settings sized for tests."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["paths"] = {name: str(folder / name) for name in raw["paths"]}
    # Trainings here patch one domain several times on the same rows, where a later patch gains
    # nothing, so the accuracy gate is off (tests/test_system.py tests it).
    raw["patch"] = DIGITS_PATCH.model_dump() | {"min_accuracy_gain": -1.0}
    # Only IDLE may be swept, and it is idle after 5 s; the budget never forces a sweep.
    raw["cold_storage"].update(max_idle_s=5, hot_budget_bytes=10**9, pinned=[PATCHED, *PAIR, COLD])
    raw["orchestration"].update(training_workers=2, light_workers=1, runs_per_worker=1, worker_poll_s=1,
                                sweep_cron="* * * * *", late_sweep_after_s=3600, training_lease_s=60,
                                slot_timeout_s=600, slot_retry_max_s=1, retries=2, retry_delay_s=0.5)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory, digits_cnn, uci_digits):
    """The running stack over a project with five digits domains registered."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    folder = tmp_path_factory.mktemp("orchestrated")
    params_path = write_params(folder)
    params = load_params(params_path)
    system = Mycelium(params)
    for domain in [PATCHED, *PAIR, COLD, IDLE]:
        expert = copy.deepcopy(digits_cnn)
        expert.domain = domain
        system.register(expert, tags=[domain], reference=uci_digits.train, reason="test expert")

    env = {"DVC_SITE_CACHE_DIR": str(folder / "dvc-site-cache"),
           # Schedule the cron runs of a new deployment and mark late runs within seconds.
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}
    running = Stack(PROJECT_ROOT, params_path, params.orchestration, prefect_home=folder / "prefect", port=0,
                    extra_env=env)
    with ExitStack() as cleanup:
        cleanup.enter_context(pytest.MonkeyPatch.context()).setenv("DVC_SITE_CACHE_DIR", env["DVC_SITE_CACHE_DIR"])
        state = running.up()
        cleanup.callback(running.down)
        cleanup.enter_context(temporary_settings({PREFECT_API_URL: state.api_url}))
        yield {"state": state, "params": params, "folder": folder, "stack": running}


def client():
    from prefect import get_client

    return get_client(sync_client=True)


def deployment_runs(name: str) -> list:
    """Every flow run of deployment ``name`` (e.g. "train-patch/train-patch"), oldest first."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with client() as api:
        deployment = api.read_deployment_by_name(name)
        return api.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                                  sort=FlowRunSort.EXPECTED_START_TIME_ASC)


def wait_for_runs(name: str, match, count: int, timeout_s: float = RUN_TIMEOUT_S) -> list:
    """Wait until ``count`` runs of ``name`` whose parameters satisfy ``match`` are final; return them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = [r for r in deployment_runs(name) if match(r.parameters)]
        if len(runs) >= count and all(r.state.is_final() for r in runs):
            return runs
        time.sleep(1)
    states = [(r.name, r.state_name) for r in deployment_runs(name) if match(r.parameters)]
    raise AssertionError(f"{count} runs of {name} did not finish within {timeout_s} s: {states}")


def emit_drift(domain: str, path: Path, window: int) -> None:
    emitted = emit_mycelium_event(DRIFT_DETECTED, domain, {
        "domain": domain, "window": window, "scores": {"score": 2.5, "threshold": 1.0, "performance_drift": 0.0},
        "rows": len(pd.read_parquet(path)), "data_path": str(path), "version": 1, "bundle_version": None,
    })
    assert emitted


def drifted_rows(stack, mnist_digits, name: str, start: int, rows: int = 400) -> Path:
    """Write ``rows`` MNIST rows from ``start`` on. Patch training keeps 20 % out, and the OOD
    calibration needs 80 of them."""
    path = stack["folder"] / "drifted" / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    mnist_digits.train.iloc[start : start + rows].to_parquet(path, index=False)
    return path


def events(stack, kind: str, **fields) -> list[dict]:
    path = stack["params"].paths.run / "events.jsonl"
    return [e for e in read_events(path) if e["event"] == kind and all(e.get(k) == v for k, v in fields.items())]


def table(stack) -> dict:
    return Mycelium(stack["params"]).controller.reload().domains


def failed_logs(run) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with client() as api:
        logs = api.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    return "\n".join(log.message for log in logs)


def logs_containing(run, text: str, timeout_s: float = 30.0) -> str:
    """Return the run's logs once they contain ``text``, or as they are after ``timeout_s``.

    The flow-run process sends its logs in the background, so they can reach the server a
    moment after the run is marked completed.
    """
    deadline = time.monotonic() + timeout_s
    logs = failed_logs(run)
    while text not in logs and time.monotonic() < deadline:
        time.sleep(0.5)
        logs = failed_logs(run)
    return logs


def test_up_starts_server_and_workers(stack):
    state = stack["state"]

    assert is_alive(state.server.pid)
    assert sorted(w.pool for w in state.workers) == ["mycelium-light", "mycelium-training", "mycelium-training"]
    assert all(is_alive(w.pid) for w in state.workers)
    assert sorted(state.deployments) == ["ingest/ingest", "remember/remember", "sweep/sweep",
                                         "train-expert/train-expert", "train-patch/train-patch"]
    with client() as api:
        pools = {name: api.read_work_pool(name).type for name in ("mycelium-training", "mycelium-light")}
    assert pools == {"mycelium-training": "process", "mycelium-light": "process"}


def test_drift_event_starts_one_patch_run(stack, mnist_digits):
    path = drifted_rows(stack, mnist_digits, "first", 0)

    emit_drift(PATCHED, path, window=7)
    flush_events()
    runs = wait_for_runs("train-patch/train-patch", lambda p: p.get("data_path") == str(path), 1)
    time.sleep(3)
    runs = [r for r in deployment_runs("train-patch/train-patch") if r.parameters.get("data_path") == str(path)]

    assert len(runs) == 1
    assert runs[0].state.is_completed(), failed_logs(runs[0])
    assert runs[0].parameters["window"] == 7
    assert runs[0].parameters["scores"] == {"score": 2.5, "threshold": 1.0, "performance_drift": 0.0}
    assert runs[0].work_pool_name == "mycelium-training"
    record = table(stack)[PATCHED]
    assert (record.version, record.patches) == (2, ["patch-1"])
    assert len(events(stack, "patch_trained", domain=PATCHED)) == 1


def wait_until_running(name: str, match, count: int, timeout_s: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len([r for r in deployment_runs(name) if match(r.parameters) and r.state.is_running()]) >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"{count} runs of {name} were not running together within {timeout_s} s")


def test_two_events_for_one_domain_train_in_turn(stack, mnist_digits):
    from prefect.concurrency.sync import concurrency

    paths = [drifted_rows(stack, mnist_digits, f"turn-{i}", 200 * (i + 1)) for i in range(2)]
    is_turn = lambda p: p.get("data_path") in map(str, paths)  # noqa: E731

    # Hold the domain's slot until both runs run, one on each training worker, so that both
    # reach the limit before either can train.
    with concurrency(training_limit_name(PATCHED), occupy=1, lease_duration=60, strict=True):
        for window, path in enumerate(paths, start=20):
            emit_drift(PATCHED, path, window)
        flush_events()
        wait_until_running("train-patch/train-patch", is_turn, 2)
        time.sleep(2)
        released = time.time()
    runs = wait_for_runs("train-patch/train-patch", is_turn, 2)

    assert all(r.state.is_completed() for r in runs), [failed_logs(r) for r in runs]
    slots = sorted((e["started"], e["finished"]) for e in events(stack, "training_slot", domain=PATCHED)
                   if e["data_path"] in map(str, paths))
    assert len(slots) == 2
    assert slots[0][0] >= released
    assert slots[0][1] <= slots[1][0], f"trainings of {PATCHED} overlapped: {slots}"
    assert table(stack)[PATCHED].patches == ["patch-1", "patch-2", "patch-3"]


def test_two_domains_train_at_once_on_two_workers(stack, mnist_digits):
    from prefect.concurrency.sync import concurrency

    paths = {domain: drifted_rows(stack, mnist_digits, f"pair-{i}", 400 * i) for i, domain in enumerate(PAIR)}
    in_pair = lambda p: p.get("domain") in PAIR  # noqa: E731

    # Hold both domains' slots until both runs run, so that a slow process start on one worker
    # cannot let the other training finish first. Released together, the two must overlap.
    with ExitStack() as held:
        for domain in PAIR:
            ensure_limit(training_limit_name(domain))
            held.enter_context(concurrency(training_limit_name(domain), occupy=1, lease_duration=60, strict=True))
        for domain, path in paths.items():
            emit_drift(domain, path, window=3)
        flush_events()
        wait_until_running("train-patch/train-patch", in_pair, 2)
        time.sleep(2)
    runs = wait_for_runs("train-patch/train-patch", in_pair, 2)

    assert all(r.state.is_completed() for r in runs), [failed_logs(r) for r in runs]
    slots = {e["domain"]: e for e in events(stack, "training_slot") if e["domain"] in PAIR}
    assert {slots[d]["worker"] for d in PAIR} == {"mycelium-training-1", "mycelium-training-2"}
    first, second = sorted(PAIR, key=lambda d: slots[d]["started"])
    assert slots[second]["started"] < slots[first]["finished"], f"trainings did not overlap: {slots}"
    assert all(table(stack)[d].patches == ["patch-1"] for d in PAIR)


def test_cold_request_remembers_and_dashboard_follows(stack, uci_digits):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.deployments import run_deployment

    Mycelium(stack["params"]).freeze(COLD, reason="test")
    batch = stack["folder"] / "requests" / "cold-batch.parquet"
    batch.parent.mkdir(parents=True, exist_ok=True)
    uci_digits.test.iloc[:85].to_parquet(batch, index=False)

    ingest = run_deployment("ingest/ingest", parameters={"path": str(batch), "tag": COLD}, timeout=RUN_TIMEOUT_S)
    remembered = wait_for_runs("remember/remember", lambda p: p.get("domain") == COLD, 1)

    assert ingest.state.is_completed(), failed_logs(ingest)
    assert remembered[0].state.is_completed(), failed_logs(remembered[0])
    assert remembered[0].parameters["bundle_version"] == "v0001"
    assert table(stack)[COLD].state == "hot"
    served = events(stack, "batch_routed", domain=COLD)
    assert [e["batch"] for e in served] == ["cold-batch-rows-0"]
    with client() as api:
        versions = api.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[DOMAINS_KEY])),
                                      sort=ArtifactSort.CREATED_DESC)
    # A table artifact's data is its rows as a JSON string.
    tables = [json.loads(v.data) for v in reversed(versions)]
    states = [next(row["state"] for row in rows if row["domain"] == COLD) for rows in tables]
    assert "remembering" in states
    assert states[-1] == "hot"
    assert states.index("remembering") < len(states) - 1


def test_ingest_run_with_quarantined_batch_says_so(stack, uci_digits):
    from prefect.deployments import run_deployment

    rows = uci_digits.test.iloc[:85].copy()
    rows.loc[rows.index[3], "px_10"] = 500.0
    batch = stack["folder"] / "requests" / "bad-batch.parquet"
    batch.parent.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(batch, index=False)

    ingest = run_deployment("ingest/ingest", parameters={"path": str(batch), "tag": PATCHED}, timeout=RUN_TIMEOUT_S)

    assert ingest.state.is_completed(), failed_logs(ingest)
    assert ingest.state.message.startswith("1 of 1 batches quarantined: "), ingest.state.message
    folder = Path(ingest.state.message.split(": ", 1)[1])
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "batch.parquet"), rows.reset_index(drop=True))


def test_new_domain_from_library_trains_expert(stack):
    from mycelium.data.sources import load_penguins
    from mycelium.orchestration.runtime import orchestrated_system

    system = orchestrated_system(stack["params"])
    penguins = load_penguins().dropna().reset_index(drop=True)
    size = 45
    for start in range(0, len(penguins) - size, size):
        if "expert_requested" in system.ingest(penguins.iloc[start : start + size], name=f"p-{start}").actions:
            break
    flush_events()
    queue = system.events.of_kind("new_domain_detected")[-1]["data_path"]
    runs = wait_for_runs("train-expert/train-expert", lambda p: p.get("data_path") == queue, 1)

    assert runs[0].state.is_completed(), failed_logs(runs[0])
    assert runs[0].parameters["rows"] >= stack["params"].new_expert.min_samples
    assert table(stack)["discovered/domain-1"].state == "hot"


def test_late_sweep_is_skipped_with_log(stack):
    from prefect.deployments import run_deployment

    scheduled = datetime.now(timezone.utc) - timedelta(hours=2)

    run = run_deployment("sweep/sweep", scheduled_time=scheduled, timeout=RUN_TIMEOUT_S)

    assert run.state.is_completed(), failed_logs(run)
    logs = logs_containing(run, "Skipped the sweep")
    assert "Skipped the sweep" in logs
    assert "late_sweep_after_s=3600" in logs


def test_scheduled_sweep_moves_idle_domain_cold(stack):
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and table(stack)[IDLE].state != "cold":
        time.sleep(2)

    assert table(stack)[IDLE].state == "cold"
    swept = [r for r in deployment_runs("sweep/sweep") if r.state.is_completed() and "Skipped" not in failed_logs(r)]
    assert swept, "no scheduled sweep completed"
    assert all(table(stack)[d].state == "hot" for d in [PATCHED, *PAIR])


def test_dashboard_shows_domain_table(stack, tmp_path):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing; `make test` installs Debian's chromium package when run as root.")
        pytest.skip(f"{CHROMIUM} is missing; install Debian's chromium package to run this test.")
    from playwright.sync_api import sync_playwright
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with client() as api:
        latest = api.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[DOMAINS_KEY])),
                                    sort=ArtifactSort.CREATED_DESC, limit=1)[0]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile", executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            # The key's page lists its versions; the newest one opens as a table.
            page = browser.new_page()
            page.goto(f"{stack['state'].ui_url}/artifacts/key/{DOMAINS_KEY}")
            page.get_by_text(str(latest.id)[:8], exact=True).first.click()
            page.get_by_text(COLD, exact=True).first.wait_for(timeout=60_000)
            headers = page.locator("th").all_inner_texts()
            text = page.inner_text("body")
        finally:
            browser.close()

    assert [h.strip() for h in headers] == ["domain", "state", "version", "patches", "size_bytes", "cold_version",
                                            "last_used", "uses", "accuracy"]
    assert DOMAINS_KEY in text
    for domain in [PATCHED, *PAIR, COLD, IDLE]:
        assert domain in text


def test_unfinished_runs_marked_crashed(stack):
    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import Running

    deployment_id = next(i for name, i in stack["state"].deployments.items() if name.endswith("/sweep"))
    with get_client(sync_client=True) as client:
        # A run that is already Running is never picked up by a worker, as if its worker had been stopped.
        run = client.create_flow_run_from_deployment(UUID(deployment_id), state=Running())

        crashed = crash_unfinished_runs(stack["state"].api_url, list(stack["state"].deployments.values()))

        assert crashed >= 1
        assert client.read_flow_run(run.id).state.type == StateType.CRASHED


def test_second_up_is_rejected(stack):
    with pytest.raises(OrchestrationError, match="already runs"):
        stack["stack"].up()

    assert is_alive(stack["state"].server.pid)


def test_down_stops_every_process(stack):
    state = stack["state"]

    stopped = stack["stack"].down()

    assert len(stopped) == 1 + len(state.workers)
    assert not any(is_alive(p.pid) for p in [state.server, *state.workers])
    assert not stack["stack"].state_path.exists()
    assert stack["stack"].down() == []
