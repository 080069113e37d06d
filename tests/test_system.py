"""The Mycelium runtime driven by a simulated clock, with real data, a real DVC store and real GX checks."""

import copy
import gc
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import DIGITS_PATCH
from mycelium.config import Paths, Params, load_params
from mycelium.data.sources import load_penguins
from mycelium.errors import DataValidationError, EmptyDataError, PatchRejectedError, RoutingError
from mycelium.events import read_events
from mycelium.routing.lifecycle import State
from mycelium.routing.tags import safe_name
from mycelium.subgraph import Subgraph, load_subgraph
from mycelium.system import Mycelium

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOMAIN = "vision/digits"
BATCH_ROWS = 85
START = 1000.0


class SimulatedClock:
    """A clock that moves only when a test sets ``now``."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def dvc_site_cache(tmp_path, monkeypatch):
    # DVC keeps per-repository state under /var/tmp/dvc by default. Tests keep it in tmp_path.
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))


@pytest.fixture
def params(tmp_path) -> Params:
    """The project's params.yaml with every path moved into tmp_path."""
    project = load_params(PROJECT_ROOT / "params.yaml")
    paths = Paths(**{name: tmp_path / name for name in Paths.model_fields})
    return project.model_copy(update={"paths": paths})


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(START)


@pytest.fixture
def system(params, clock, digits_cnn, uci_digits) -> Mycelium:
    """A deployment with the small digits CNN registered as ``vision/digits``."""
    mycelium = Mycelium(params, clock=clock)
    mycelium.register(
        copy.deepcopy(digits_cnn), tags=[DOMAIN], reference=uci_digits.train, reason="trained on UCI digits"
    )
    return mycelium


def test_register_makes_domain_hot(system, params):
    record = system.controller.domain(DOMAIN)

    assert record.state == State.HOT.value
    assert record.version == 1
    assert record.architecture == "cnn"
    assert len(record.columns) == 64
    assert load_subgraph(params.paths.run / record.model_dir).depth == 0
    assert [event["event"] for event in system.events.events] == ["domain_registered"]


def test_tagged_batch_reports_accuracy_and_locality(system, clock, digits_cnn, uci_digits):
    batch = uci_digits.test.iloc[:BATCH_ROWS]
    clock.now = START + 600

    result = system.ingest(batch, tag="vision/digits/uci")

    expected = float((digits_cnn.predict(batch).labels == batch["label"].to_numpy()).mean())
    assert result.domain == DOMAIN
    assert result.state == State.HOT.value
    assert result.rows == BATCH_ROWS
    assert result.accuracy == expected
    assert result.accuracy > 0.85
    assert result.depth_counts == {0: BATCH_ROWS}
    locality = system.controller.reload().domains[DOMAIN].locality
    assert (locality.last_used, locality.uses, locality.activity) == (START + 600, BATCH_ROWS, BATCH_ROWS)
    routed = system.events.of_kind("batch_routed")[-1]
    assert routed["routing"] == {"tag": "vision/digits/uci"}
    assert routed["accuracy"] == expected


def test_untagged_batch_routes_by_ood(system, uci_digits):
    batch = uci_digits.test.iloc[BATCH_ROWS : 2 * BATCH_ROWS]

    result = system.ingest(batch)

    assert result.domain == DOMAIN
    assert result.accuracy > 0.85
    routing = system.events.of_kind("batch_routed")[-1]["routing"]
    assert routing["tag"] is None
    assert routing["accepted_fraction"][DOMAIN] >= 0.5


def test_unknown_schema_goes_to_new_domain_queue(system, params):
    batch = load_penguins().dropna().iloc[:40]

    result = system.ingest(batch, name="penguins-1")

    assert result.domain is None
    assert result.actions == ["queued"]
    queued = sorted((params.paths.run / "new_domain_queue").rglob("*.parquet"))
    assert [path.name for path in queued] == ["penguins-1.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(queued[0]), batch.reset_index(drop=True))
    event = system.events.of_kind("new_domain_queued")[-1]
    assert (event["rows"], event["queued"]) == (40, 40)
    assert "no hot domain has this schema" in event["routing"]["reason"]
    assert list(system.controller.table.domains) == [DOMAIN]


@pytest.mark.parametrize("pixel", [0.0, 16.0])
def test_same_schema_far_from_domain_goes_to_queue(system, params, uci_digits, pixel):
    # A blank or saturated image has the digits' columns but is no digit.
    images = uci_digits.test.iloc[:BATCH_ROWS].copy()
    images[[column for column in images.columns if column != "label"]] = pixel

    result = system.ingest(images, name="blank-1")

    assert result.domain is None
    assert result.actions == ["queued"]
    assert len(list((params.paths.run / "new_domain_queue").rglob("blank-1.parquet"))) == 1
    routing = system.events.of_kind("new_domain_queued")[-1]["routing"]
    assert routing["accepted_fraction"][DOMAIN] < 0.5
    assert system.events.of_kind("batch_routed") == []


@pytest.mark.parametrize("tag", [DOMAIN, None])
def test_empty_batch_raises(system, params, uci_digits, tag):
    empty = uci_digits.test.iloc[:0]

    with pytest.raises(EmptyDataError, match="has no rows"):
        system.ingest(empty, tag=tag)

    assert system.events.of_kind("batch_routed") == []
    assert not params.paths.quarantine.exists()


@pytest.mark.parametrize(("column", "value"), [("px_05", math.nan), ("px_20", 99.0), ("px_20", -1.0)])
def test_bad_batch_is_quarantined(system, uci_digits, column, value):
    batch = uci_digits.test.iloc[:BATCH_ROWS].copy()
    batch.iloc[3, batch.columns.get_loc(column)] = value

    with pytest.raises(DataValidationError) as raised:
        system.ingest(batch, tag=DOMAIN)

    assert f"'{column}'" in str(raised.value)
    quarantined = pd.read_parquet(Path(raised.value.quarantine_path) / "batch.parquet")
    pd.testing.assert_frame_equal(quarantined, batch)
    assert system.events.of_kind("batch_quarantined")[-1]["path"] == raised.value.quarantine_path
    assert system.controller.reload().domains[DOMAIN].locality.uses == 0


def test_train_patch_quarantines_invalid_data(system, mnist_digits):
    rows = mnist_digits.train.iloc[:400].assign(source="scanner-2")
    rows.iloc[7, rows.columns.get_loc("px_20")] = 500.0

    with pytest.raises(DataValidationError) as raised:
        system.train_patch(DOMAIN, data=rows, name="scans.parquet")

    assert "column 'px_20'" in str(raised.value)
    assert "'vision/digits:scans.parquet'" in str(raised.value)
    quarantined = pd.read_parquet(Path(raised.value.quarantine_path) / "batch.parquet")
    pd.testing.assert_frame_equal(quarantined, rows)
    assert system.controller.domain(DOMAIN).version == 1
    assert system.events.of_kind("patch_trained") == []


def strict_patch_system(params, clock, digits_cnn, uci_digits) -> Mycelium:
    """The ``system`` deployment with the small patch of the shared fixtures, which must gain 1.0
    held-out accuracy to be registered."""
    strict = params.model_copy(update={"patch": DIGITS_PATCH.model_copy(update={"min_accuracy_gain": 1.0})})
    mycelium = Mycelium(strict, clock=clock)
    mycelium.register(copy.deepcopy(digits_cnn), tags=[DOMAIN], reference=uci_digits.train, reason="trained on UCI")
    return mycelium


def test_patch_below_min_accuracy_gain_is_not_registered(params, clock, digits_cnn, uci_digits, mnist_digits):
    system = strict_patch_system(params, clock, digits_cnn, uci_digits)

    with pytest.raises(PatchRejectedError, match=r"min_accuracy_gain=1, so it was not registered") as raised:
        system.train_patch(DOMAIN, data=mnist_digits.train.iloc[:400], name="scans.parquet")

    assert raised.value.data_path == "scans.parquet"
    record = system.controller.reload().domains[DOMAIN]
    assert (record.version, record.patches) == (1, [])
    event = system.events.of_kind("patch_rejected")[-1]
    assert event["accuracy_after"] - event["accuracy_before"] < 1.0
    assert event["holdout_samples"] + event["train_samples"] == 400
    assert system.events.of_kind("patch_trained") == []


def test_rejected_automatic_patch_keeps_its_rows(params, clock, digits_cnn, uci_digits, mnist_digits):
    system = strict_patch_system(params, clock, digits_cnn, uci_digits)
    actions = []
    for start in range(0, len(mnist_digits.train) - 84, 85):
        actions += system.ingest(mnist_digits.train.iloc[start : start + 85], tag=DOMAIN).actions
        if "patch_rejected" in actions:
            break

    assert "patch_rejected" in actions
    assert "patched" not in actions
    event = system.events.of_kind("patch_rejected")[-1]
    saved = pd.read_parquet(event["data_path"])
    assert len(saved) == event["train_samples"] + event["holdout_samples"] >= DIGITS_PATCH.min_samples_for(DOMAIN)
    assert system.controller.reload().domains[DOMAIN].version == 1


def test_restore_after_rollback_takes_an_unused_version(system, mnist_digits):
    system.freeze(DOMAIN, reason="first bundle")
    first_cold = system.controller.table.version
    system.remember(DOMAIN)
    system.train_patch(DOMAIN, data=mnist_digits.train.iloc[:400], name="scans.parquet")
    system.freeze(DOMAIN, reason="second bundle")
    patched_bundle = system.controller.domain(DOMAIN).cold_version
    # Back to the record that points at the first bundle, whose subgraph version is 1.
    system.controller.restore(first_cold, "roll back to the first bundle", domain=DOMAIN)
    used = [change["current"]["version"] for change in system.controller.history(DOMAIN) if change.get("current")]

    system.remember(DOMAIN, version=patched_bundle)

    record = system.controller.domain(DOMAIN)
    assert record.version == max(used) + 1 == 3
    assert record.model_dir.endswith("v0003")
    assert load_subgraph(system.root / record.model_dir).depth == 1


def test_untagged_nan_batch_is_quarantined(system, uci_digits):
    batch = uci_digits.test.iloc[:BATCH_ROWS].astype({"px_09": object})
    batch.iloc[3, batch.columns.get_loc("px_05")] = math.nan
    batch.iloc[4, batch.columns.get_loc("px_07")] = math.inf
    batch.iloc[5, batch.columns.get_loc("px_09")] = "n/a"

    with pytest.raises(DataValidationError) as raised:
        system.ingest(batch)

    message = str(raised.value)
    assert ("column 'px_05' has 1 NaN or infinite values; column 'px_07' has 1 NaN or infinite values; "
            "column 'px_09' is object, not numeric") in message
    assert len(pd.read_parquet(Path(raised.value.quarantine_path) / "batch.parquet")) == BATCH_ROWS


def test_sweep_keeps_new_unused_domain_hot(params, clock, digits_cnn, uci_digits):
    clock.now = 1.8e9
    mycelium = Mycelium(params, clock=clock)
    mycelium.register(copy.deepcopy(digits_cnn), tags=[DOMAIN], reference=uci_digits.train, reason="new")
    clock.now += 60

    assert mycelium.sweep() == []
    assert mycelium.controller.domain(DOMAIN).state == State.HOT.value


def test_sweep_keeps_recent_domain_hot(system, clock, uci_digits):
    system.ingest(uci_digits.test.iloc[:BATCH_ROWS], tag=DOMAIN)
    clock.now = START + 600

    assert system.sweep() == []
    assert system.controller.domain(DOMAIN).state == State.HOT.value
    assert system.events.of_kind("sweep")[-1]["evicted"] == []


def test_idle_domain_goes_cold_and_comes_back(system, params, clock, uci_digits):
    # Step 1: serve a batch, then measure the hot accuracy.
    system.ingest(uci_digits.test.iloc[:BATCH_ROWS], tag=DOMAIN)
    before = system.evaluate(DOMAIN, uci_digits.test)
    hot_folder = params.paths.run / "models" / safe_name("vision/digits")
    assert hot_folder.is_dir()

    # Step 2: one second past max_idle_s, the sweep freezes the domain into the DVC store.
    clock.now = START + params.cold_storage.max_idle_s + 1
    evictions = system.sweep()

    assert [eviction.domain for eviction in evictions] == [DOMAIN]
    assert "more than max_idle_s=18000 s" in evictions[0].reason
    record = system.controller.domain(DOMAIN)
    assert record.state == State.COLD.value
    assert record.cold_version == "v0001"
    assert record.model_dir is None
    assert not hot_folder.exists()
    stored = system.store.versions(DOMAIN)
    assert [version.version for version in stored] == ["v0001"]
    assert stored[0].dvc_file.is_file()
    assert stored[0].path.is_relative_to(params.paths.cold_store)
    assert (params.paths.cold_store / ".dvc").is_dir()
    remote_objects = {path.parent.name + path.name for path in params.paths.remote.rglob("*") if path.is_file()}
    assert stored[0].md5 in remote_objects
    with pytest.raises(RoutingError, match="is cold, not hot"):
        system.subgraph(DOMAIN)

    # Step 3: a tagged batch brings the domain back through Remembering.
    clock.now += 600
    swept_events = len(system.events.events)
    result = system.ingest(uci_digits.test.iloc[BATCH_ROWS : 2 * BATCH_ROWS], tag=DOMAIN)

    assert result.actions == ["remembered"]
    assert result.state == State.HOT.value
    kinds = [event["event"] for event in system.events.events[swept_events:]]
    assert kinds == ["remembering", "bundle_loaded", "gate_passed", "batch_routed"]
    assert system.events.of_kind("gate_passed")[-1]["bundle_version"] == "v0001"
    states = [entry["current"]["state"] for entry in system.controller.history(DOMAIN)]
    assert states == ["training", "hot", "cold", "remembering", "hot"]
    after = system.evaluate(DOMAIN, uci_digits.test)
    assert abs(after - before) <= 0.01, f"accuracy {before:.4f} before, {after:.4f} after"

    # Step 4: the restored hot copy is on disk, and the event log file matches memory.
    restarted = Mycelium(params, clock=clock)
    assert isinstance(restarted.subgraph(DOMAIN), Subgraph)
    assert restarted.evaluate(DOMAIN, uci_digits.test) == after
    assert read_events(params.paths.run / "events.jsonl") == system.events.events


def test_remember_lock_held_after_garbage_collection(system):
    system._acquire_remember_lock(DOMAIN, None)
    gc.collect()
    lock_file = system._domain_lock(DOMAIN).lock_file
    probe = (
        "from filelock import FileLock, Timeout\n"
        f"try:\n    FileLock({lock_file!r}).acquire(timeout=0)\n    print('free')\n"
        "except Timeout:\n    print('held')\n"
    )

    seen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60).stdout.strip()
    system._domain_lock(DOMAIN).release()

    assert seen == "held"


def test_failed_push_freezes_once_then_retries(system, params, clock):
    remote = params.paths.remote
    remote.parent.mkdir(parents=True, exist_ok=True)
    remote.write_text("a file where the remote folder should be, so every push fails")
    clock.now = START + params.cold_storage.max_idle_s + 1

    evictions = system.sweep()

    assert [eviction.domain for eviction in evictions] == [DOMAIN]
    assert system.controller.domain(DOMAIN).state == State.COLD.value
    assert len(system.events.of_kind("push_pending")) == 1
    assert system.store.version_names(DOMAIN) == ["v0001"]

    remote.unlink()
    system.sweep()

    assert len(system.events.of_kind("push_retried")) == 1
    assert system.store.version_names(DOMAIN) == ["v0001"]
    assert any(path.is_file() for path in remote.rglob("*"))


# Trains one patch for the domain in a separate process and prints the new depth.
PATCH_CHILD = """
import sys
import time
import pandas as pd
from mycelium.config import Params
from mycelium.system import Mycelium

params = Params.model_validate_json(open(sys.argv[1]).read())
report = Mycelium(params).train_patch(sys.argv[2], data=pd.read_parquet(sys.argv[3]), name=sys.argv[4])
print(report.depth, flush=True)
"""
CHILD_TIMEOUT_S = 300


def test_concurrent_patch_trainings_keep_both(system, params, tmp_path, mnist_digits):
    # One epoch leaves a patch's held-out gain near zero, so the accuracy gate is off.
    settings = params.model_copy(update={"patch": params.patch.model_copy(update={"epochs": 1,
                                                                                 "min_accuracy_gain": -1.0})})
    settings_file = tmp_path / "child-params.json"
    settings_file.write_text(settings.model_dump_json())
    events_file = system.root / "events.jsonl"
    children = []

    # Both processes start while this one holds the domain's lock, so without the lock in
    # train_patch both would read the unpatched version and the second commit would drop a patch.
    with system._domain_lock(DOMAIN):
        for name, rows in (("a", mnist_digits.train.iloc[:400]), ("b", mnist_digits.train.iloc[400:800])):
            rows.to_parquet(tmp_path / f"{name}.parquet")
            children.append(subprocess.Popen(
                [sys.executable, "-c", PATCH_CHILD, str(settings_file), DOMAIN, str(tmp_path / f"{name}.parquet"),
                 f"{name}.parquet"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while sum(e["event"] == "patch_waiting" for e in read_events(events_file)) < 2:
            assert time.monotonic() < deadline, "the two trainings did not both wait for the domain's lock"
            assert all(child.poll() is None for child in children), [c.communicate() for c in children]
            time.sleep(0.2)

    outputs = [child.communicate(timeout=CHILD_TIMEOUT_S) for child in children]
    assert [child.returncode for child in children] == [0, 0], [err for _, err in outputs]
    assert sorted(int(out.strip()) for out, _ in outputs) == [1, 2]
    record = system.controller.reload().domains[DOMAIN]
    assert record.patches == ["patch-1", "patch-2"]
    assert load_subgraph(system.root / record.model_dir).depth == 2
    reasons = [change["reason"] for change in system.controller.history(DOMAIN)]
    assert sum(reason.startswith("patch 1 trained on 400") for reason in reasons) == 1
    assert sum(reason.startswith("patch 2 trained on 400") for reason in reasons) == 1


def test_patch_training_times_out_on_busy_domain(system, params, tmp_path, mnist_digits):
    settings = params.model_copy(update={"remembering": params.remembering.model_copy(update={"wait_timeout_s": 1})})
    settings_file = tmp_path / "child-params.json"
    settings_file.write_text(settings.model_dump_json())
    mnist_digits.train.iloc[:400].to_parquet(tmp_path / "a.parquet")

    with system._domain_lock(DOMAIN):
        child = subprocess.run(
            [sys.executable, "-c", PATCH_CHILD, str(settings_file), DOMAIN, str(tmp_path / "a.parquet"), "a.parquet"],
            capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
        )

    assert child.returncode == 1
    assert "DomainBusyError: Patch training for 'vision/digits' timed out after" in child.stderr
    assert "remembering.wait_timeout_s=1)" in child.stderr
    assert system.controller.reload().domains[DOMAIN].patches == []
