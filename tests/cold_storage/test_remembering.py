"""Freezing and Remembering through the Mycelium runtime, with a real DVC store, real GX checks and
a second real process.

The digits CNN of conftest.py is registered as ``vision/digits`` on a simulated clock; each test
freezes it into bundles and brings it back.
"""

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mycelium.cli import main as cli_main
from mycelium.cold_storage.bundle import read_bundle, write_bundle
from mycelium.cold_storage.smote import SINGLE_CLASS_REASON
from mycelium.config import Paths, Params, load_params
from mycelium.errors import RoutingError, StorageError
from mycelium.events import read_events
from mycelium.routing.batch import route_batch
from mycelium.routing.lifecycle import State
from mycelium.routing.tags import safe_name
from mycelium.system import Mycelium

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "vision/digits"
START = 1000.0
# Seconds a test waits for the second process to reach a given point.
CHILD_TIMEOUT_S = 120


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


def project_params(tmp_path: Path, **remembering) -> Params:
    """The project's params.yaml with every path in tmp_path and ``remembering`` settings replaced."""
    params = load_params(PROJECT_ROOT / "params.yaml")
    paths = Paths(**{name: tmp_path / name for name in Paths.model_fields})
    return params.model_copy(update={
        "paths": paths,
        "remembering": params.remembering.model_copy(update=remembering),
        "patch": params.patch.model_copy(update={"epochs": 10}),
    })


def registered(params: Params, digits_cnn, reference: pd.DataFrame) -> Mycelium:
    system = Mycelium(params, clock=SimulatedClock(START))
    system.register(copy.deepcopy(digits_cnn), tags=[DOMAIN], reference=reference, reason="trained on UCI digits")
    return system


@pytest.fixture
def system(tmp_path, digits_cnn, uci_digits) -> Mycelium:
    return registered(project_params(tmp_path), digits_cnn, uci_digits.train)


def event_fields(system: Mycelium, kind: str) -> dict:
    return system.events.of_kind(kind)[-1]


def state(system: Mycelium) -> str:
    return system.controller.reload().domains[DOMAIN].state


def test_freeze_metadata_records_history_and_measured_error(system):
    summary = system.freeze(DOMAIN, reason="test freeze")

    stored = system.store.versions(DOMAIN)[-1]
    metadata = json.loads((stored.path / "metadata.json").read_text())
    assert metadata["bundle_version"] == "v0001"
    assert [entry["state"] for entry in metadata["lifecycle"]] == ["training", "hot"]
    assert metadata["lifecycle"][-1]["reason"] == "trained and saved"
    assert metadata["last_used"] == START
    assert metadata["locality"] == {"last_used": START, "uses": 0, "activity": 0.0}
    assert metadata["torch_version"]
    assert set(metadata["files"]) == {"weights.safetensors", "manifest.json", "buffer.parquet", "smote.json",
                                      "expectations.json", "references.safetensors"}
    assert "mean" not in metadata["subgraph"]["references"][0]
    for name, entry in metadata["files"].items():
        assert entry["bytes"] == (stored.path / name).stat().st_size
        assert len(entry["sha256"]) == 64
    metrics = metadata["metrics"]
    assert metrics["quantization_accuracy_change"] == (
        metrics["buffer_holdout_accuracy_quantized"] - metrics["buffer_holdout_accuracy_fp32"]
    )
    assert abs(metrics["quantization_accuracy_change"]) <= system.params.remembering.gate_tolerance
    assert metadata["quantization"] == "int8"
    assert metadata["quantization_fallback"] is None
    assert summary["buffer_accuracy_change"] == metrics["quantization_accuracy_change"]
    assert event_fields(system, "swept")["buffer_accuracy_quantized"] == metrics["buffer_holdout_accuracy_quantized"]


def test_gate_pass_promotes_with_numbers(system):
    system.freeze(DOMAIN, reason="test freeze")
    system.clock.now += 600

    result = system.remember(DOMAIN)

    assert result.passed
    assert result.bundle_version == "v0001"
    assert result.restored_accuracy >= result.recorded_accuracy - system.params.remembering.gate_tolerance
    assert result.finetune_note == "no recent inputs given; fine-tune skipped"
    record = system.controller.reload().domains[DOMAIN]
    assert (record.state, record.version, record.cold_version) == (State.HOT.value, 1, "v0001")
    assert record.metrics["restore_seconds"] == result.restore_seconds
    assert record.locality.last_used == START + 600
    passed = event_fields(system, "gate_passed")
    assert passed["recorded_accuracy"] == result.recorded_accuracy
    assert passed["gate_accuracy"] == result.gate_accuracy


def test_gate_fail_on_mislabelled_bundle_stays_cold(system):
    system.freeze(DOMAIN, reason="test freeze")
    # Version 2 is a faithful bundle of the same model whose buffer labels were shifted before it
    # was written, as a broken label feed would do. Its hashes are valid, so only the gate detects it.
    good = read_bundle(system.store.checkout(DOMAIN, "v0001"))
    mislabelled = good.buffer.copy()
    mislabelled["label"] = (mislabelled["label"] + 1) % 10
    path = system.store.next_version_path(DOMAIN)
    metadata = {k: v for k, v in good.metadata.items() if k not in ("files", "quantization_summary")}
    write_bundle(path, state_dict=good.state_dict, mode="int8", metadata=metadata, buffer=mislabelled,
                 smote=good.smote, expectations=good.expectations, references=good.references)
    system.store.add_version(DOMAIN, path)
    hot_copy = system.root / "models" / safe_name(DOMAIN)

    result = system.remember(DOMAIN, version="v0002")

    assert not result.passed
    assert result.restored_accuracy < 0.2
    assert "below the recorded" in result.reason
    record = system.controller.reload().domains[DOMAIN]
    assert (record.state, record.cold_version, record.model_dir) == (State.COLD.value, "v0001", None)
    assert not hot_copy.exists()
    failed = event_fields(system, "gate_failed")
    assert failed["rolled_back_to"] == "v0001"
    assert failed["bundle_version"] == "v0002"
    assert failed["recorded_accuracy"] == result.recorded_accuracy
    assert failed["restored_accuracy"] == result.restored_accuracy
    assert failed["gate_accuracy"] == result.gate_accuracy
    history = [entry["current"]["state"] for entry in system.controller.history(DOMAIN)]
    assert history[-3:] == ["cold", "remembering", "cold"]

    # The next request restores the last good version.
    again = system.remember(DOMAIN)
    assert again.passed
    assert again.bundle_version == "v0001"


def test_bad_recent_batch_fails_gate_and_is_quarantined(system, uci_digits):
    system.freeze(DOMAIN, reason="test freeze")
    batch = uci_digits.test.iloc[:85].copy()
    batch["px_20"] = 99.0

    with pytest.raises(RoutingError) as raised:
        system.ingest(batch, tag=DOMAIN, name="bad-pixels")

    message = str(raised.value)
    assert message.startswith("The 85 rows of batch 'bad-pixels' failed the expectations of cold domain 'vision/digits'")
    assert "column 'px_20'" in message
    assert "99.0" in message
    assert "stored bundle" not in message
    assert "correct those values" in message
    assert state(system) == State.COLD.value
    quarantined = list(system.params.paths.quarantine.rglob("batch.parquet"))
    assert len(quarantined) == 1
    assert f"kept in {quarantined[0].parent}" in message
    assert len(pd.read_parquet(quarantined[0])) == len(batch)
    failed = event_fields(system, "gate_failed")
    assert failed["expectations_passed"] is False
    assert failed["finetune_note"] == "recent inputs break the data expectations; fine-tune skipped"


def test_recent_batch_with_extra_columns_restores_domain(system, uci_digits):
    # An id, a text note and another domain's column (NaN here, as in a mixed-tag file) are not
    # inputs of the domain, so the gate ignores them as serving does.
    system.freeze(DOMAIN, reason="test freeze")
    batch = uci_digits.test.iloc[:85].reset_index(drop=True)
    batch.insert(0, "id", np.arange(len(batch)))
    batch["note"] = "scanned at desk 3"
    batch["rainfall_mm"] = np.nan

    routed = route_batch(system, batch, DOMAIN, name="extra-columns")

    assert state(system) == State.HOT.value
    passed = event_fields(system, "gate_passed")
    assert passed["expectations_passed"] is True
    assert passed["expectations_failures"] == []
    assert list(routed.domain) == [DOMAIN] * len(batch)


def test_bad_routed_rows_blame_the_batch(system, uci_digits):
    system.freeze(DOMAIN, reason="test freeze")
    batch = uci_digits.test.iloc[:85].reset_index(drop=True)
    batch["id"] = np.arange(len(batch))
    batch.loc[3, "px_20"] = 99.0

    with pytest.raises(RoutingError) as raised:
        route_batch(system, batch, DOMAIN, name="bad-pixel")

    message = str(raised.value)
    assert message.startswith("The 85 rows of batch 'bad-pixel' failed the expectations of cold domain 'vision/digits'")
    assert "could not be restored" not in message
    assert "column 'px_20'" in message
    assert "99.0" in message
    assert "rows with index 3" in message
    assert "stored bundle" not in message
    assert state(system) == State.COLD.value
    assert event_fields(system, "gate_failed")["expectations_failures"][0].startswith("column 'px_20'")


def test_unlabelled_recent_rows_pass_feature_checks(system, uci_digits):
    system.freeze(DOMAIN, reason="test freeze")
    unlabelled = uci_digits.test.iloc[:85].drop(columns=["label"])

    result = system.remember(DOMAIN, recent=unlabelled)

    assert result.passed
    assert result.expectations_passed is True
    assert state(system) == State.HOT.value


def test_worse_finetune_falls_back_to_restored(tmp_path, digits_cnn, uci_digits, mnist_digits):
    # A learning rate of 0.5 wrecks the CNN, so the fine-tuned copy must lose to the restored one.
    system = registered(project_params(tmp_path, finetune_lr=0.5), digits_cnn, uci_digits.train)
    system.freeze(DOMAIN, reason="test freeze")

    result = system.remember(DOMAIN, recent=mnist_digits.test.iloc[:100])

    assert result.passed
    assert not result.finetuned
    assert result.finetuned_accuracy < result.restored_accuracy - 0.1
    assert result.gate_accuracy == result.restored_accuracy
    assert "fine-tuned model rejected" in result.finetune_note
    assert result.finetune_note.endswith("serving the restored model")
    record = system.controller.reload().domains[DOMAIN]
    assert (record.state, record.version) == (State.HOT.value, 1)


def test_single_class_buffer_skips_finetune(tmp_path, digits_cnn, uci_digits, mnist_digits):
    threes = pd.concat([uci_digits.train, uci_digits.test])
    threes = threes[threes["label"] == 3]
    system = registered(project_params(tmp_path), digits_cnn, threes)
    system.freeze(DOMAIN, reason="test freeze")
    recent = mnist_digits.test[mnist_digits.test["label"] == 3].iloc[:30]

    result = system.remember(DOMAIN, recent=recent)

    assert result.passed
    assert not result.finetuned
    assert result.finetuned_accuracy is None
    assert "drift" in result.finetune_note
    assert result.finetune_note.endswith(SINGLE_CLASS_REASON)


def test_named_versions_roll_back_and_forward(system, tmp_path, mnist_digits, capsys):
    # v0001: the bare expert. v0002: the expert with a patch trained on MNIST digits.
    system.freeze(DOMAIN, reason="test freeze")
    system.remember(DOMAIN)
    system.train_patch(DOMAIN, mnist_digits.train)
    system.freeze(DOMAIN, reason="test freeze")
    references = system.root / "references" / safe_name(DOMAIN)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(system.params.model_dump(mode="json")))

    # Roll back to the bare expert from the command line, as an operator would.
    code = cli_main(["--params", str(params_file), "remember", DOMAIN, "--version", "v0001"])

    assert code == 0
    assert json.loads(capsys.readouterr().out)["bundle_version"] == "v0001"
    record = system.controller.reload().domains[DOMAIN]
    assert (record.state, record.version, record.patches, record.cold_version) == ("hot", 3, [], "v0002")
    assert system.subgraph(DOMAIN).depth == 0
    assert sorted(path.name for path in references.glob("depth-*.parquet")) == ["depth-000.parquet"]

    # Forward again to the patched version: the hot model is frozen first, so nothing is lost.
    result = system.remember(DOMAIN, version="v0002")

    assert result.passed
    assert result.bundle_version == "v0002"
    stored = system.store.versions(DOMAIN)
    assert [version.version for version in stored] == ["v0001", "v0002", "v0003"]
    remote_objects = {path.parent.name + path.name for path in system.params.paths.remote.rglob("*") if path.is_file()}
    assert {version.md5 for version in stored} <= remote_objects
    record = system.controller.reload().domains[DOMAIN]
    assert (record.state, record.version, record.patches, record.cold_version) == ("hot", 4, ["patch-1"], "v0003")
    assert system.subgraph(DOMAIN).depth == 1
    assert sorted(path.name for path in references.glob("depth-*.parquet")) == ["depth-000.parquet",
                                                                                 "depth-001.parquet"]


def test_unknown_version_is_rejected_before_any_change(system):
    system.freeze(DOMAIN, reason="test freeze")

    with pytest.raises(StorageError, match=r"no stored bundle version 'v0009'.*\['v0001'\]"):
        system.remember(DOMAIN, version="v0009")

    assert state(system) == State.COLD.value


def test_version_of_unfrozen_domain_says_none_exist(system):
    with pytest.raises(StorageError, match=r"stored versions: none\. A domain gets its first bundle when a sweep"):
        system.remember(DOMAIN, version="v0001")

    assert state(system) == State.HOT.value


def test_corrupted_newest_bundle_falls_back_to_previous(system):
    system.freeze(DOMAIN, reason="test freeze")
    system.remember(DOMAIN)
    system.freeze(DOMAIN, reason="test freeze")
    # Damage every copy of version 2's weights: workspace, local DVC cache and DVC remote.
    weights = system.store.versions(DOMAIN)[-1].path / "weights.safetensors"
    original = weights.read_bytes()
    copies = [weights] + [
        path for folder in (system.store.root / ".dvc" / "cache", system.params.paths.remote)
        for path in folder.rglob("*") if path.is_file() and path.read_bytes() == original
    ]
    assert len(copies) == 3
    for path in copies:
        path.chmod(0o644)
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))

    result = system.remember(DOMAIN)

    assert result.passed
    assert result.bundle_version == "v0001"
    assert result.skipped_versions == ["v0002"]
    assert event_fields(system, "bundle_rejected")["version"] == "v0002"
    record = system.controller.reload().domains[DOMAIN]
    assert (record.state, record.version) == (State.HOT.value, 2)


# A second process requests the domain twice while this test holds the domain's lock: first with
# a 1 s timeout, then with a long one. It prints one JSON line per request.
CHILD = """
import json, sys
import pandas as pd
from mycelium.config import Params
from mycelium.errors import RememberTimeoutError
from mycelium.system import Mycelium

params = Params.model_validate_json(open(sys.argv[1]).read())
batch = pd.read_parquet(sys.argv[2])
for timeout in (1.0, 120.0):
    settings = params.model_copy(update={"remembering": params.remembering.model_copy(update={"wait_timeout_s": timeout})})
    try:
        result = Mycelium(settings).remember(sys.argv[3], recent=batch)
        answer = {"passed": result.passed, "reason": result.reason, "waited_seconds": result.waited_seconds}
    except RememberTimeoutError as exc:
        answer = {"error": type(exc).__name__, "message": str(exc), "quarantine_path": exc.quarantine_path}
    print(json.dumps(answer), flush=True)
"""


def wait_for_events(path: Path, kinds: list[str], child: subprocess.Popen) -> list[dict]:
    """Wait until the events file contains events of ``kinds`` in this order, and return them."""
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while time.monotonic() < deadline:
        found, events = [], iter(read_events(path))
        for kind in kinds:
            found.append(next((event for event in events if event["event"] == kind), None))
        if None not in found:
            return found
        assert child.poll() is None, f"child exited early: {child.communicate()}"
        time.sleep(0.1)
    raise AssertionError(f"no {kinds} events within {CHILD_TIMEOUT_S} s")


def test_second_process_times_out_or_waits(system, tmp_path, uci_digits):
    system.freeze(DOMAIN, reason="test freeze")
    events_file = system.root / "events.jsonl"
    params_file = tmp_path / "child-params.json"
    params_file.write_text(system.params.model_dump_json())
    batch = uci_digits.test.iloc[:85]
    batch.to_parquet(tmp_path / "child-batch.parquet")

    with system._domain_lock(DOMAIN):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(params_file), str(tmp_path / "child-batch.parquet"), DOMAIN],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
        )
        first_wait, timed_out, second_wait = wait_for_events(
            events_file, ["remember_waiting", "remember_timeout", "remember_waiting"], child)
        assert first_wait["state"] == second_wait["state"] == State.COLD.value
        assert state(system) == State.COLD.value
        assert system.remember(DOMAIN).passed

    out, err = child.communicate(timeout=CHILD_TIMEOUT_S)
    assert child.returncode == 0, err
    timeout_answer, wait_answer = (json.loads(line) for line in out.strip().splitlines()[-2:])

    # The first request timed out with a clear error, and its batch is kept in quarantine.
    assert timeout_answer["error"] == "RememberTimeoutError"
    assert "timed out after" in timeout_answer["message"]
    assert "wait_timeout_s=1)" in timeout_answer["message"]
    assert timed_out["quarantine_path"] == timeout_answer["quarantine_path"]
    quarantined = pd.read_parquet(Path(timeout_answer["quarantine_path"]) / "batch.parquet")
    np.testing.assert_array_equal(quarantined.to_numpy(), batch.to_numpy())

    # The second request waited for this process and found the domain hot.
    assert wait_answer["passed"] is True
    assert "already hot" in wait_answer["reason"]
    assert wait_answer["waited_seconds"] > 0
    kinds = [event["event"] for event in read_events(events_file)]
    assert kinds.count("gate_passed") == 1
    assert kinds[-1] == "remember_skipped"
    assert state(system) == State.HOT.value


def test_pinned_domain_stays_hot_past_max_idle(tmp_path, digits_cnn, uci_digits):
    params = project_params(tmp_path)
    params = params.model_copy(update={"cold_storage": params.cold_storage.model_copy(
        update={"pinned": [DOMAIN], "policy": "activity"})})
    system = registered(params, digits_cnn, uci_digits.train)
    system.clock.now = START + 10 * params.cold_storage.max_idle_s

    assert system.sweep() == []

    sweep = event_fields(system, "sweep")
    assert (sweep["policy"], sweep["pinned"], sweep["evicted"]) == ("activity", [DOMAIN], [])
    assert state(system) == State.HOT.value


def test_activity_policy_sweeps_idle_domain(tmp_path, digits_cnn, uci_digits):
    params = project_params(tmp_path)
    params = params.model_copy(update={"cold_storage": params.cold_storage.model_copy(update={"policy": "activity"})})
    system = registered(params, digits_cnn, uci_digits.train)
    system.clock.now = START + params.cold_storage.max_idle_s + 1

    evictions = system.sweep()

    assert [eviction.domain for eviction in evictions] == [DOMAIN]
    assert event_fields(system, "swept")["reason"] == evictions[0].reason
    assert "more than max_idle_s" in evictions[0].reason
    assert state(system) == State.COLD.value
