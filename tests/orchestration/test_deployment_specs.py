"""The deployment declarations: pools, schedules, triggers and the flow signatures they feed."""

import importlib.util
import inspect
from pathlib import Path

import pytest
import yaml

from mycelium.config import Orchestration
from mycelium.errors import ConfigError
from mycelium.orchestration.deployments import EVENT_PARAMETERS, deployment_specs
from mycelium.orchestration.events import PREFECT_EVENT_NAMES
from mycelium.orchestration.names import slug
from mycelium.orchestration.runtime import describe_ingest_outcome, late_by_s

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The type each request event's payload field has, as the library emits it.
PAYLOAD_TYPES = {"domain": str, "window": int, "scores": dict, "rows": int, "data_path": str, "version": int,
                 "bundle_version": str}


def flow_of(entrypoint: str):
    path, name = entrypoint.split(":")
    spec = importlib.util.spec_from_file_location(f"flow_{Path(path).stem}", PROJECT_ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def test_specs_place_work_on_pools():
    settings = Orchestration()
    specs = {spec.name: spec for spec in deployment_specs(settings)}

    assert {name: spec.pool for name, spec in specs.items()} == {
        "sweep": settings.light_pool, "ingest": settings.light_pool, "train-patch": settings.training_pool,
        "train-expert": settings.training_pool, "remember": settings.training_pool}
    assert specs["sweep"].cron == settings.sweep_cron
    assert {name: spec.event for name, spec in specs.items() if spec.event} == {
        "train-patch": PREFECT_EVENT_NAMES["drift_detected"],
        "train-expert": PREFECT_EVENT_NAMES["new_domain_detected"],
        "remember": PREFECT_EVENT_NAMES["cold_domain_requested"]}


@pytest.mark.parametrize("name", ["train-patch", "train-expert", "remember"])
def test_triggered_flow_accepts_payload_types(name):
    spec = next(s for s in deployment_specs(Orchestration()) if s.name == name)
    signature = inspect.signature(flow_of(spec.entrypoint).fn)

    assert set(EVENT_PARAMETERS) == set(PAYLOAD_TYPES)
    for field, kind in PAYLOAD_TYPES.items():
        annotation = str(signature.parameters[field].annotation)
        assert kind.__name__ in annotation, f"{name}.{field} is {annotation}, the payload sends {kind.__name__}"
    assert "params_path" in signature.parameters


@pytest.mark.parametrize("cron", ["* *", "0 0 * * * *", ""])
def test_sweep_cron_needs_five_fields(cron):
    with pytest.raises(ValueError, match="5-field cron"):
        Orchestration(sweep_cron=cron)


def test_slug_keeps_similar_domains_apart():
    assert slug("vision/digits") != slug("vision-digits")
    assert slug("vision/digits").startswith("vision-digits-")


def test_late_by_counts_only_past_schedule():
    from datetime import datetime, timedelta, timezone

    now = datetime(2026, 1, 2, tzinfo=timezone.utc)

    assert late_by_s(now - timedelta(hours=2), now) == 7200
    assert late_by_s(now + timedelta(minutes=1), now) == 0
    assert late_by_s(None, now) == 0


@pytest.mark.parametrize(
    ("outcome", "line"),
    [
        ({"batch": "b-rows-0", "domain": "vision/digits", "version": 3, "state": "hot", "rows": 85,
          "accuracy": 0.9412, "actions": ["drift_event"]},
         "b-rows-0: 85 rows -> vision/digits v3 (hot), accuracy 0.941; actions: drift_event"),
        ({"batch": "b-rows-85", "domain": None, "version": None, "state": None, "rows": 85, "accuracy": None,
          "actions": []},
         "b-rows-85: 85 rows -> no domain accepted it; actions: none"),
        ({"batch": "b-rows-170", "quarantined": "runs/quarantine/b-rows-170", "error": "label out of range"},
         "b-rows-170: quarantined in runs/quarantine/b-rows-170: label out of range"),
    ],
)
def test_ingest_log_line(outcome, line):
    assert describe_ingest_outcome(outcome) == line


def test_unknown_setting_is_rejected(tmp_path):
    from mycelium.config import load_params

    path = tmp_path / "params.yaml"
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["orchestration"]["worker_count"] = 3
    path.write_text(yaml.safe_dump(raw, sort_keys=False))

    with pytest.raises(ConfigError, match="orchestration.worker_count"):
        load_params(path)


def test_cold_store_uses_remote_url(tmp_path, monkeypatch):
    from mycelium.config import Paths, load_params
    from mycelium.system import Mycelium

    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    project = load_params(PROJECT_ROOT / "params.yaml")
    paths = Paths(**{name: tmp_path / name for name in Paths.model_fields})
    storage = project.cold_storage.model_copy(update={"remote_url": "s3://team-bucket/mycelium-cold"})
    params = project.model_copy(update={"paths": paths, "cold_storage": storage})

    store = Mycelium(params).store

    assert "url = s3://team-bucket/mycelium-cold" in (store.root / ".dvc" / "config").read_text()
    assert not paths.remote.exists()


def test_remote_url_must_be_url():
    from mycelium.config import ColdStorage, load_params

    project = load_params(PROJECT_ROOT / "params.yaml").cold_storage.model_dump()

    with pytest.raises(ValueError, match="is not a URL"):
        ColdStorage(**{**project, "remote_url": "storage/shared"})
