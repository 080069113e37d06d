"""Ingestion with defer_actions: drift, new domains and cold requests become events with file
paths, and the methods the flows call carry the actions out. Real data, DVC and GX; no server."""

import copy
from pathlib import Path

import pandas as pd
import pytest

from conftest import DIGITS_PATCH
from mycelium.config import Paths, load_params
from mycelium.data.sources import load_penguins
from mycelium.errors import InputError
from mycelium.events import EventLog, read_events
from mycelium.routing.lifecycle import State
from mycelium.system import Mycelium

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "vision/digits"
BATCH_ROWS = 85


@pytest.fixture(autouse=True)
def dvc_site_cache(tmp_path, monkeypatch):
    # DVC keeps per-repository state under /var/tmp/dvc by default. Tests keep it in tmp_path.
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))


@pytest.fixture
def params(tmp_path):
    """The project's settings with paths in tmp_path and the small patch of the shared fixtures."""
    project = load_params(PROJECT_ROOT / "params.yaml")
    paths = Paths(**{name: tmp_path / name for name in Paths.model_fields})
    return project.model_copy(update={"paths": paths, "patch": DIGITS_PATCH})


@pytest.fixture
def deferred(params, digits_cnn, uci_digits) -> Mycelium:
    system = Mycelium(params, defer_actions=True)
    system.register(copy.deepcopy(digits_cnn), tags=[DOMAIN], reference=uci_digits.train, reason="trained on UCI")
    return system


def feed_until(system: Mycelium, frame: pd.DataFrame, action: str) -> list[str]:
    """Ingest ``frame`` in batches until one reports ``action``; return every batch's actions."""
    seen = []
    for start in range(0, len(frame) - BATCH_ROWS + 1, BATCH_ROWS):
        result = system.ingest(frame.iloc[start : start + BATCH_ROWS], tag=DOMAIN)
        seen.extend(result.actions)
        if action in result.actions:
            return seen
    raise AssertionError(f"no batch reported {action!r}; actions: {seen}")


def test_drift_saves_rows_and_emits_event(deferred, params, mnist_digits):
    feed_until(deferred, mnist_digits.train, "patch_requested")

    event = deferred.events.of_kind("drift_detected")[-1]
    rows = pd.read_parquet(event["data_path"])
    assert event["domain"] == DOMAIN
    assert event["rows"] == len(rows) >= DIGITS_PATCH.default_min_samples
    assert event["version"] == 1
    assert event["bundle_version"] is None
    assert isinstance(event["window"], int)
    assert event["scores"]["score"] > event["scores"]["threshold"]
    assert deferred.events.of_kind("patch_trained") == []
    assert deferred.controller.reload().domains[DOMAIN].patches == []
    on_disk = [e["event"] for e in read_events(params.paths.run / "events.jsonl")]
    assert "drift_detected" in on_disk


def test_patch_from_file_registers_patch_once(deferred, mnist_digits, tmp_path):
    path = tmp_path / "drifted.parquet"
    mnist_digits.train.iloc[:400].to_parquet(path, index=False)

    report = deferred.train_patch_from_file(DOMAIN, path)
    again = deferred.train_patch_from_file(DOMAIN, path)

    assert report.depth == 1
    assert report.expert_sha256_before == report.expert_sha256_after
    assert again is None
    assert (tmp_path / "consumed" / "drifted.parquet").is_file()
    record = deferred.controller.reload().domains[DOMAIN]
    assert (record.version, record.patches) == (2, ["patch-1"])


def test_patch_from_missing_file_raises(deferred, tmp_path):
    with pytest.raises(InputError, match="not found"):
        deferred.train_patch_from_file(DOMAIN, tmp_path / "absent.parquet")


def test_cold_request_keeps_batch_until_restored(deferred, uci_digits):
    deferred.freeze(DOMAIN, reason="test")
    batch = uci_digits.test.iloc[:BATCH_ROWS]

    result = deferred.ingest(batch, tag=DOMAIN, name="waiting-1")

    assert result.actions == ["remember_requested"]
    assert result.state == State.COLD.value
    event = deferred.events.of_kind("cold_domain_requested")[-1]
    assert (event["domain"], event["bundle_version"], event["rows"]) == (DOMAIN, "v0001", BATCH_ROWS)
    pd.testing.assert_frame_equal(pd.read_parquet(event["data_path"]), batch.reset_index(drop=True))
    assert deferred.events.of_kind("remembering") == []

    second = deferred.ingest(uci_digits.test.iloc[BATCH_ROWS : 2 * BATCH_ROWS], tag=DOMAIN, name="waiting-2")

    assert second.actions == ["remember_requested"]
    assert len(deferred.events.of_kind("cold_domain_requested")) == 1
    assert deferred.events.of_kind("batch_pending")[-1]["data_path"].endswith("waiting-2.parquet")

    assert deferred.remember(DOMAIN).passed
    served = deferred.replay_pending(DOMAIN)

    assert [s["batch"] for s in served] == ["waiting-1", "waiting-2"]
    assert [s["state"] for s in served] == [State.HOT.value] * 2
    assert served[0]["accuracy"] > 0.85
    assert deferred.replay_pending(DOMAIN) == []


def test_new_domain_event_then_expert_from_queue(deferred, params):
    penguins = load_penguins().dropna().reset_index(drop=True)
    size = 45
    for start in range(0, params.new_expert.min_samples + size, size):
        result = deferred.ingest(penguins.iloc[start : start + size], name=f"penguins-{start}")
        if "expert_requested" in result.actions:
            break
    event = deferred.events.of_kind("new_domain_detected")[-1]
    assert event["rows"] >= params.new_expert.min_samples
    assert list(deferred.controller.table.domains) == [DOMAIN]

    record = deferred.train_new_expert_from_queue(event["data_path"])

    assert record.name == "discovered/domain-1"
    assert record.state == State.HOT.value
    assert deferred.train_new_expert_from_queue(event["data_path"]) is None


def test_failing_sink_keeps_event(tmp_path, caplog):
    received = []

    def broken(event):
        raise RuntimeError("sink down")

    log = EventLog(tmp_path / "events.jsonl", sinks=[broken, received.append])
    log.emit("drift_detected", domain=DOMAIN)

    assert [e["event"] for e in read_events(tmp_path / "events.jsonl")] == ["drift_detected"]
    assert received == [{"event": "drift_detected", "domain": DOMAIN}]
    assert "sink down" in caplog.text
