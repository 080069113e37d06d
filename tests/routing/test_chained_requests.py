"""Chained requests on real digits: pairs of UCI (and MNIST) images go through the digits CNN, and
a small MLP over the two slots' logits classifies whether the digits are equal."""

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mycelium.config import Paths, Params, load_params
from mycelium.errors import DataValidationError, InputError, RoutingError
from mycelium.experts.fitting import chain_features, train_chained_expert
from mycelium.routing.batch import chain_inputs, route_batch
from mycelium.routing.chains import UpstreamInput, plan_chain
from mycelium.system import Mycelium

from conftest import DIGITS_PATCH, MIN_TAIL_SAMPLES, PAIR_INPUTS, PAIR_MLP, PAIRS_DOMAIN, SEED, TARGET_FPR

DIGITS = "vision/digits"
PAIRS = PAIRS_DOMAIN
BATCH_ROWS = 60
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class SimulatedClock:
    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def dvc_site_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))


@pytest.fixture
def params(tmp_path) -> Params:
    project = load_params(PROJECT_ROOT / "params.yaml")
    return project.model_copy(update={"paths": Paths(**{name: tmp_path / name for name in Paths.model_fields})})


@pytest.fixture
def system(params, digits_cnn, uci_digits, pair_expert, pair_plan, digit_pairs) -> Mycelium:
    """vision/digits and the chained vision/digit-pairs, both hot."""
    mycelium = Mycelium(params, clock=SimulatedClock())
    mycelium.register(copy.deepcopy(digits_cnn), tags=[DIGITS], reference=uci_digits.train, reason="digits")
    reference = chain_features(pair_plan, digit_pairs.train, {DIGITS: digits_cnn}.__getitem__)
    mycelium.register(copy.deepcopy(pair_expert), tags=[PAIRS], reference=reference, reason="pairs",
                      upstream=PAIR_INPUTS)
    return mycelium


def mixed_pairs(mnist: pd.DataFrame, uci: pd.DataFrame, rows: int) -> pd.DataFrame:
    """Pairs whose slot ``a`` is an MNIST digit and slot ``b`` a UCI digit."""
    left = mnist.iloc[:rows].reset_index(drop=True)
    right = uci.iloc[:rows].reset_index(drop=True)
    frame = pd.concat([left.drop(columns="label").add_prefix("a."), right.drop(columns="label").add_prefix("b.")],
                      axis=1)
    frame["label"] = (left["label"] == right["label"]).astype(np.int64)
    return frame


class TestTrainedChain:
    def test_pair_expert_reads_both_slots_logits(self, pair_expert):
        assert list(pair_expert.schema.columns) == [f"{slot}.logit_{i}" for slot in "ab" for i in range(10)]
        assert pair_expert.info["upstream"][0] == {"slot": "a", "domain": DIGITS, "output": "logits"}

    def test_pair_expert_is_accurate(self, system, digit_pairs):
        assert system.evaluate(PAIRS, digit_pairs.test) > 0.85

    def test_embedding_output_is_penultimate_layer(self, digits_cnn, uci_digits):
        outputs, depth = digits_cnn.outputs(uci_digits.test.iloc[:20], ("logits", "embedding"))

        assert outputs["logits"].shape == (20, 10)
        assert outputs["embedding"].shape == (20, digits_cnn.expert.config["hidden"])
        assert (depth == 0).all()


class TestChainedIngest:
    def test_every_stage_is_recorded(self, system, digit_pairs):
        result = system.ingest(digit_pairs.test.iloc[:BATCH_ROWS], PAIRS, name="pairs-1")

        assert result.domain == PAIRS
        assert [(s["slot"], s["domain"]) for s in result.stages] == [("a", DIGITS), ("b", DIGITS), ("(requested)", PAIRS)]
        assert [s["version"] for s in result.stages] == [1, 1, 1]
        assert result.stages[0]["depth_counts"] == {0: BATCH_ROWS}
        assert result.accuracy > 0.8
        event = [e for e in system.events.events if e["event"] == "batch_routed"][-1]
        assert [(s["slot"], s["version"], s["patches"]) for s in event["stages"]] == [
            (s["slot"], s["version"], s["patches"]) for s in result.stages
        ]

    def test_upstream_use_is_counted_per_slot(self, system, digit_pairs):
        before = system.controller.domain(DIGITS).locality.uses

        system.ingest(digit_pairs.test.iloc[:BATCH_ROWS], PAIRS)

        assert system.controller.domain(DIGITS).locality.uses - before == 2 * BATCH_ROWS
        assert system.controller.domain(PAIRS).locality.uses == BATCH_ROWS

    def test_missing_slot_columns_name_the_format(self, system, digit_pairs):
        rows = digit_pairs.test.iloc[:BATCH_ROWS]
        without_b = rows.drop(columns=[column for column in rows.columns if column.startswith("b.")])

        with pytest.raises(InputError, match=r"missing request columns \['b\.px_00'.*b\.COLUMN for 'vision/digits'"):
            system.ingest(without_b, PAIRS)


    def test_untagged_request_is_quarantined_with_tag_hint(self, system, digit_pairs, params):
        rows = digit_pairs.test.iloc[:BATCH_ROWS]

        with pytest.raises(DataValidationError, match=r"chained domain 'vision/digit-pairs'.*tag 'vision/digit-pairs'") as info:
            system.ingest(rows, name="untagged-pairs")

        kept = sorted(Path(info.value.quarantine_path).glob("*.parquet"))
        assert len(kept) == 1
        pd.testing.assert_frame_equal(pd.read_parquet(kept[0]), rows, check_dtype=False)
        assert not (system.root / "new_domain_queue").exists()
        assert [e["event"] for e in system.events.events][-1] == "batch_quarantined"


    def test_invalid_slot_value_names_request_column_and_row(self, system, digit_pairs):
        rows = digit_pairs.test.iloc[:BATCH_ROWS].copy()
        rows.iloc[3, rows.columns.get_loc("b.px_05")] = 99.0

        with pytest.raises(DataValidationError) as info:
            system.ingest(rows, PAIRS, name="bad-pairs")

        message = str(info.value)
        assert "column 'b.px_05'" in message
        assert "(rows with index 3)" in message
        assert f"({BATCH_ROWS} rows)" in message
        assert "'px_05'" not in message
        kept = pd.read_parquet(Path(info.value.quarantine_path) / "batch.parquet")
        pd.testing.assert_frame_equal(kept, rows, check_dtype=False)


class TestChainedRouting:
    def test_untagged_request_rows_are_unrouted_with_tag_hint(self, system, digit_pairs):
        routed = route_batch(system, digit_pairs.test.iloc[:10])

        assert (routed.prediction == -1).all()
        assert "tag the rows 'vision/digit-pairs'" in routed.route[0]
        assert "rows kept in" in routed.route[0]

    def test_mixed_batch_records_stages_per_row(self, system, digit_pairs, uci_digits):
        digits = uci_digits.test.iloc[:10].assign(tag=DIGITS)
        chained = digit_pairs.test.iloc[:10].assign(tag=PAIRS)
        frame = pd.concat([digits, chained], ignore_index=True)

        routed = route_batch(system, frame)

        assert list(routed.domain) == [DIGITS] * 10 + [PAIRS] * 10
        assert all(stages == () for stages in routed.stages[:10])
        assert [s["slot"] for s in routed.stages[10]] == ["a", "b", "(requested)"]
        assert routed.stages[10][0] == {"slot": "a", "domain": DIGITS, "version": 1, "patches": [], "depth": 0}
        table = routed.to_frame()
        assert table["stages"].iloc[10] == (
            "a: vision/digits v1 depth 0; b: vision/digits v1 depth 0; vision/digit-pairs v1 depth 0"
        )
        assert "chain: vision/digits v1 [a, b -> logits] -> vision/digit-pairs v1" in table["route"].iloc[10]
        assert [part.stages[0]["slot"] for part in routed.parts if part.domain == PAIRS] == ["a"]

    def test_patch_serves_drifted_slot_only(self, system, mnist_digits, uci_digits):
        frame = mixed_pairs(mnist_digits.test, uci_digits.test, BATCH_ROWS)
        before = chain_inputs(system, PAIRS, frame, validate=True, name="before")
        system.params = system.params.model_copy(update={"patch": DIGITS_PATCH})

        system.train_patch(DIGITS, data=mnist_digits.train)
        after = chain_inputs(system, PAIRS, frame, validate=True, name="after")
        routed = route_batch(system, frame, PAIRS)

        a_columns = [f"a.logit_{i}" for i in range(10)]
        b_columns = [f"b.logit_{i}" for i in range(10)]
        assert not np.allclose(before.frame[a_columns], after.frame[a_columns])
        np.testing.assert_array_equal(before.frame[b_columns], after.frame[b_columns])
        a_stage, b_stage = after.stages
        assert (a_stage.version, a_stage.patches, set(a_stage.depth)) == (2, ("patch-1",), {1})
        assert (b_stage.version, b_stage.patches, set(b_stage.depth)) == (2, ("patch-1",), {0})
        assert routed.stages[0][0]["depth"] == 1
        assert routed.stages[0][1]["depth"] == 0
        assert "vision/digits v2 +1 patches" in routed.route[0]


class TestChainLifecycle:
    def test_cold_upstream_is_remembered(self, system, digit_pairs):
        system.freeze(DIGITS, reason="idle")
        assert system.controller.domain(DIGITS).state == "cold"

        result = system.ingest(digit_pairs.test.iloc[:BATCH_ROWS], PAIRS, name="after-freeze")

        digits = system.controller.domain(DIGITS)
        assert digits.state == "hot"
        assert [e["domain"] for e in system.events.events if e["event"] == "gate_passed"] == [DIGITS]
        assert result.stages[0]["version"] == digits.version
        assert result.accuracy > 0.8

    def test_cold_upstream_counts_request_rows(self, system, digit_pairs):
        system.freeze(DIGITS, reason="idle")
        rows = digit_pairs.test.iloc[:BATCH_ROWS].copy()
        rows.iloc[3, rows.columns.get_loc("b.px_05")] = 99.0

        with pytest.raises(RoutingError) as info:
            route_batch(system, rows, PAIRS, validate=False, name="bad-pairs")

        message = str(info.value)
        assert message.startswith(f"The {BATCH_ROWS} rows of batch 'bad-pairs' failed the expectations of cold "
                                  f"domain '{DIGITS}'")
        assert "column 'px_05'" in message
        assert "(rows with index 3)" in message
        assert system.controller.domain(DIGITS).state == "cold"

    def test_embedding_chain_trains_and_serves(self, system, digits_cnn, digit_pairs):
        name = "vision/digit-pairs-embedding"
        inputs = [UpstreamInput("a", DIGITS, "embedding"), UpstreamInput("b", DIGITS, "embedding")]
        plan = plan_chain(name, lambda domain: inputs if domain == name else [])
        expert = train_chained_expert(plan, digit_pairs.train, digit_pairs.holdout, PAIR_MLP,
                                      {DIGITS: digits_cnn}.__getitem__, target_fpr=TARGET_FPR, seed=SEED,
                                      min_tail_samples=MIN_TAIL_SAMPLES)
        reference = chain_features(plan, digit_pairs.train, {DIGITS: digits_cnn}.__getitem__)
        system.register(expert, tags=[name], reference=reference, reason="embedding pairs", upstream=inputs)

        result = system.ingest(digit_pairs.test.iloc[:BATCH_ROWS], name)

        hidden = digits_cnn.expert.config["hidden"]
        assert list(expert.schema.columns[:2]) == ["a.embedding_0", "a.embedding_1"]
        assert len(expert.schema.columns) == 2 * hidden
        assert [s["domain"] for s in result.stages] == [DIGITS, DIGITS, name]
        assert result.accuracy > 0.75
