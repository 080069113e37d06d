"""The whole pipeline through `dvc repro`, on the real data sets with fewer batches and epochs.

It runs every stage's Prefect flow in a temporary copy of the project and checks the events
and metrics that the main job must show, so the main job cannot silently break.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
COPIED = ["dvc.yaml", "flows", "mycelium", "benchmarks", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore",
          "data/.gitignore"]

# Fewer batches and epochs than params.yaml; the data sets and every stage are the same. The
# continual-learning benchmark runs on a few hundred rows, one seed and one epoch per method.
REDUCED = {
    "experts": {
        "vision/digits": {"epochs": 15},
        "weather/rainfall": {"epochs": 8},
        "tabular/segments": {"epochs": 30},
        "vision/digit-pairs": {"epochs": 20},
    },
    "patch": {"epochs": 20, "min_samples": {"vision/digits": 400, "weather/rainfall": 750}},
    "drift": {"persistence": 2},
    "cold_storage": {"max_idle_s": 6000, "sweep_every": 4},
    "continual": {
        "seeds": [7],
        "fisher_samples": 50,
        "calibration_fraction": 0.5,
        "digits_shift": {"expert": {"epochs": 1}, "patch": {"epochs": 1}, "autoencoder": {"epochs": 1},
                         "old": {"train": 200, "test": 50}, "new": {"train": 200, "test": 50}},
        "rainfall": {"expert": {"epochs": 1}, "patch": {"epochs": 1},
                     "old": {"train": 400, "test": 100}, "new": {"train": 400, "test": 100}},
        "split_mnist": {"train_per_task": 200, "test_per_task": 40, "expert": {"epochs": 1}, "network": {"epochs": 1},
                        "autoencoder": {"hidden": [16], "bottleneck": 4, "epochs": 1}},
    },
    "stream": {
        "phases": [
            {"name": "baseline", "feeds": [
                {"dataset": "uci_digits", "tag": "vision/digits", "batches": 1},
                {"dataset": "uci_digits", "tag": None, "batches": 1},
                {"dataset": "rainfall_before", "tag": "weather/rainfall", "batches": 3},
                {"dataset": "segments", "tag": "tabular/segments", "batches": 2},
                {"dataset": "digit_pairs", "tag": "vision/digit-pairs", "batches": 1},
            ]},
            {"name": "drift", "feeds": [
                {"dataset": "mnist_digits", "tag": "vision/digits", "batches": 10},
                {"dataset": "rainfall_after", "tag": "weather/rainfall", "batches": 6},
                {"dataset": "mnist_pairs", "tag": "vision/digit-pairs", "batches": 3},
            ]},
            {"name": "new_domain", "feeds": [{"dataset": "penguins", "tag": None, "batches": 5}]},
            {"name": "recall", "feeds": [{"dataset": "segments", "tag": "tabular/segments", "batches": 1}]},
        ]
    },
}


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    for name in COPIED:
        source, target = PROJECT / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(_merge(params, REDUCED), sort_keys=False))

    # The copy keeps its own Prefect database: an earlier test of the session may have set
    # PREFECT_HOME or PREFECT_API_URL in this process, and the stages would inherit them.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_SITE_CACHE_DIR": str(root / ".dvc-site"), "PREFECT_HOME": str(root / ".prefect")}
    env.pop("PREFECT_API_URL", None)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    completed = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env,
                               capture_output=True, text=True, timeout=1500)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return root


@pytest.fixture(scope="module")
def events(pipeline_run: Path) -> list[dict]:
    lines = (pipeline_run / "runs/stream/events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def metrics(pipeline_run: Path) -> dict:
    return json.loads((pipeline_run / "metrics.json").read_text())


def _of(events: list[dict], kind: str, domain: str | None = None) -> list[dict]:
    return [e for e in events if e["event"] == kind and (domain is None or e.get("domain") == domain)]


@pytest.mark.slow
class TestPipeline:
    @pytest.mark.parametrize("domain", ["vision/digits", "weather/rainfall"])
    def test_drift_leads_to_patch(self, events, domain):
        persistent = [e for e in _of(events, "drift_check", domain) if e["persistent"] or e["performance_drift"]]
        patches = _of(events, "patch_trained", domain)
        assert persistent, f"no persistent drift on {domain}"
        assert len(patches) >= 1
        assert patches[0]["step"] >= persistent[0]["step"]

    @pytest.mark.parametrize("domain", ["vision/digits", "weather/rainfall"])
    def test_patch_keeps_expert_bit_identical(self, events, domain):
        for event in _of(events, "patch_trained", domain):
            assert event["expert_sha256_before"] == event["expert_sha256_after"]

    @pytest.mark.parametrize("domain, old, new", [
        ("vision/digits", "uci_digits", "mnist_digits"),
        ("weather/rainfall", "rainfall_before", "rainfall_after"),
    ])
    def test_patch_gains_new_keeps_old(self, metrics, domain, old, new):
        entry = metrics["domains"][domain]
        assert entry["accuracy_after_patch"][new] > entry["accuracy_start"][new] + 0.05
        assert abs(entry["forgetting_old_data"]) <= 0.01

    def test_penguins_become_new_domain(self, events, metrics):
        queued = _of(events, "new_domain_queued")
        registered = [e for e in _of(events, "domain_registered") if e["step"] > 0]
        assert queued
        assert len(registered) == 1
        domain = registered[0]["domain"]
        assert domain.startswith("discovered/")
        routed_later = [e for e in _of(events, "batch_routed", domain) if e["routing"]["tag"] is None]
        assert routed_later, "later penguin batches were not routed to the new expert"
        assert metrics["domains"][domain]["accuracy_after_registration"]["penguins"] > 0.9

    def test_untagged_digits_routed_by_ood(self, events):
        untagged = [e for e in _of(events, "batch_routed", "vision/digits") if e["routing"]["tag"] is None]
        assert untagged

    def test_segments_cold_then_remembered(self, pipeline_run, events, metrics):
        swept = _of(events, "swept", "tabular/segments")
        remembering = _of(events, "remembering", "tabular/segments")
        passed = _of(events, "gate_passed", "tabular/segments")
        assert swept
        assert remembering
        assert passed
        assert swept[0]["step"] < remembering[0]["step"] <= passed[0]["step"]
        assert swept[0]["quantization"] == "int8"
        assert 500 <= swept[0]["buffer_rows"] <= 1000
        dvc_file = Path(swept[0]["dvc_file"])
        assert dvc_file.exists()
        remote = pipeline_run / "storage/cold-remote"
        assert any(p.is_file() for p in remote.rglob("*")), "nothing was pushed to the DVC remote"
        change = metrics["domains"]["tabular/segments"]["restore_accuracy_change"]["segments"]
        assert abs(change) <= 0.01

    def test_bundle_holds_required_files(self, events):
        bundle = Path(_of(events, "swept", "tabular/segments")[0]["dvc_file"]).with_suffix("")
        names = {p.name for p in bundle.iterdir()}
        assert {"weights.safetensors", "metadata.json", "buffer.parquet", "smote.json", "expectations.json"} <= names

    def test_metrics_and_plots_written(self, pipeline_run, metrics):
        assert metrics["stream"]["events"]["batch_routed"] > 0
        assert (pipeline_run / "plots/accuracy.png").stat().st_size > 10_000
        assert (pipeline_run / "plots/accuracy.csv").read_text().startswith("step,")
        segments = metrics["domains"]["tabular/segments"]
        assert segments["fp32_bytes"] > segments["weights_bytes"]
        assert segments["restore_seconds"] > 0

    def test_digit_pairs_chain_through_digits(self, events, metrics):
        routed = _of(events, "batch_routed", "vision/digit-pairs")
        patched_at = _of(events, "patch_trained", "vision/digits")[0]["step"]
        assert routed
        for event in routed:
            assert [(s["slot"], s["domain"]) for s in event["stages"]] == [
                ("a", "vision/digits"), ("b", "vision/digits"), ("(requested)", "vision/digit-pairs")]
        after_patch = [e for e in routed if e["step"] > patched_at]
        assert after_patch, "no pair batch came after the digits patch"
        assert all(e["stages"][0]["version"] >= 2 and e["stages"][0]["patches"] for e in after_patch)
        entry = metrics["domains"]["vision/digit-pairs"]
        assert entry["accuracy_start"]["digit_pairs"] > 0.85
        assert entry["accuracy_end"]["digit_pairs"] > 0.85
        assert entry["upstream"].startswith("a<-vision/digits")
        assert set(entry["rows_served_by_stage"]) == {"a", "b", "(requested)"}

    def test_continual_benchmark_stage_wrote_report(self, pipeline_run):
        folder = pipeline_run / "reports/benchmarks"
        report = json.loads((folder / "continual.json").read_text())

        assert set(report["scenarios"]) == {"digits_shift", "rainfall", "split_mnist_tags", "split_mnist_no_tags"}
        assert len(report["targets"]) == 10
        assert report["seeds"] == [7]
        assert (folder / "continual.md").read_text().startswith("# Continual-learning benchmark")
        for name in report["plots"].values():
            assert (folder / name).stat().st_size > 10_000

    def test_prefect_recorded_stream_artifact(self, pipeline_run):
        script = (
            "import asyncio\n"
            "from prefect.client.orchestration import get_client\n"
            "async def main():\n"
            "    async with get_client() as client:\n"
            "        runs = await client.read_flow_runs()\n"
            "        artifacts = await client.read_artifacts()\n"
            "        print(sorted({r.state_name for r in runs}), sorted({a.key for a in artifacts if a.key}))\n"
            "asyncio.run(main())\n"
        )
        env = {**os.environ, "PREFECT_HOME": str(pipeline_run / ".prefect"),
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
        out = subprocess.run([sys.executable, "-c", script], cwd=pipeline_run, env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "Completed" in out.stdout
        assert "mycelium-domains" in out.stdout
