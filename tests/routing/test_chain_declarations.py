"""Upstream declarations in the routing table: the chain graph stays acyclic, is saved with the
table, versioned in its history and restored with past versions."""

import json
from pathlib import Path

import pytest

from mycelium.errors import ChainCycleError, RoutingError
from mycelium.routing.chains import UpstreamInput
from mycelium.routing.controller import TABLE_FILE, DomainRecord, MetaController
from mycelium.routing.lifecycle import State

DIGITS = "vision/digits"
PAIRS = "vision/digit-pairs"


class SimulatedClock:
    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def controller(tmp_path: Path) -> MetaController:
    return MetaController(tmp_path / "routing", clock=SimulatedClock())


def register(controller: MetaController, name: str, upstream=()) -> DomainRecord:
    record = DomainRecord(name=name, tags=[name], version=1, upstream=list(upstream))
    controller.register(record, reason=f"register {name}")
    return controller.set_state(name, State.HOT, reason="trained")


def pair_inputs(domain: str = DIGITS, output: str = "logits") -> list[dict]:
    return [{"slot": "a", "domain": domain, "output": output}, {"slot": "b", "domain": domain, "output": output}]


@pytest.fixture
def chained(controller: MetaController) -> MetaController:
    """vision/digits feeds both slots of vision/digit-pairs."""
    register(controller, DIGITS)
    register(controller, PAIRS, pair_inputs())
    return controller


class TestDeclaration:
    def test_record_keeps_declared_inputs(self, chained):
        record = chained.domain(PAIRS)

        assert record.upstream == [UpstreamInput("a", DIGITS, "logits"), UpstreamInput("b", DIGITS, "logits")]
        assert chained.table.upstream == {PAIRS: [DIGITS]}
        assert chained.dependents(DIGITS) == [PAIRS]

    def test_unknown_upstream_is_rejected(self, controller):
        with pytest.raises(RoutingError, match=r"unknown domain 'vision/digits'.*Register 'vision/digits' first"):
            register(controller, PAIRS, pair_inputs())

        assert PAIRS not in controller.table.domains
        assert controller.table.version == 0

    def test_two_domain_cycle_is_named(self, chained):
        with pytest.raises(ChainCycleError) as raised:
            chained.update(DIGITS, reason="loop", upstream=[{"slot": "x", "domain": PAIRS}])

        assert raised.value.cycle == [DIGITS, PAIRS, DIGITS]
        assert "vision/digits -> vision/digit-pairs -> vision/digits" in str(raised.value)
        assert "Drop that input" in str(raised.value)
        assert chained.domain(DIGITS).upstream == []

    def test_self_loop_is_named(self, chained):
        with pytest.raises(ChainCycleError) as raised:
            chained.update(PAIRS, reason="loop", upstream=[*pair_inputs(), {"slot": "c", "domain": PAIRS}])

        assert raised.value.cycle == [PAIRS, PAIRS]

    def test_three_domain_cycle_is_named(self, controller):
        register(controller, "a")
        register(controller, "b", [{"slot": "x", "domain": "a"}])
        register(controller, "c", [{"slot": "x", "domain": "b"}])

        with pytest.raises(ChainCycleError, match=r"cycle a -> b -> c -> a") as raised:
            controller.update("a", reason="loop", upstream=[{"slot": "x", "domain": "c"}])
        assert raised.value.cycle == ["a", "b", "c", "a"]

    def test_diamond_is_not_a_cycle(self, controller):
        register(controller, "a")
        register(controller, "b", [{"slot": "x", "domain": "a"}])
        register(controller, "c", [{"slot": "x", "domain": "a"}])
        register(controller, "d", [{"slot": "left", "domain": "b"}, {"slot": "right", "domain": "c"}])

        plan = controller.chain("d")
        order = [stage.domain for stage in plan.stages]
        assert order[0] == "a"
        assert order[-1] == "d"
        assert set(order[1:3]) == {"b", "c"}
        assert [node.path for node in plan.stages[0].nodes] == [("left", "x"), ("right", "x")]

    @pytest.mark.parametrize("inputs, pattern", [
        ([{"slot": "a.b", "domain": DIGITS}], r"Invalid upstream slot 'a\.b'"),
        ([{"slot": "a", "domain": DIGITS, "output": "probabilities"}], r"output 'probabilities'.*logits"),
        ([{"slot": "a", "domain": DIGITS}, {"slot": "a", "domain": DIGITS}], r"slots \['a'\] are declared twice"),
        ([{"slot": "a", "name": DIGITS}], r"give 'slot', 'domain'"),
    ])
    def test_invalid_declaration_is_rejected(self, controller, inputs, pattern):
        register(controller, DIGITS)

        with pytest.raises(RoutingError, match=pattern):
            register(controller, PAIRS, inputs)

    def test_retired_upstream_is_rejected(self, controller):
        register(controller, DIGITS)
        controller.set_state(DIGITS, State.RETIRED, reason="replaced", successor="vision/digits-v2")

        with pytest.raises(RoutingError, match=r"retired; use its successor 'vision/digits-v2'"):
            register(controller, PAIRS, pair_inputs())

    def test_upstream_of_a_chain_cannot_retire(self, chained):
        with pytest.raises(RoutingError, match=r"feeds the chains of \['vision/digit-pairs'\]"):
            chained.set_state(DIGITS, State.RETIRED, reason="replaced")

        assert chained.domain(DIGITS).state == State.HOT.value


class TestExplain:
    def test_explain_lists_stages_with_versions(self, chained):
        chained.update(DIGITS, reason="patched", version=3, patches=["patch-1"])

        decision = chained.explain(PAIRS)

        assert [stage.domain for stage in decision.chain.stages] == [DIGITS, PAIRS]
        digits, pairs = decision.chain.stages
        assert digits.version == 3
        assert digits.patches == ("patch-1",)
        assert [node.label for node in digits.nodes] == ["a", "b"]
        assert digits.outputs == ("logits",)
        assert pairs.version == 1
        assert "chain: vision/digits v3 +1 patches [a, b -> logits] -> vision/digit-pairs v1" in decision.describe()
        assert decision.to_dict()["chain"]["stages"][0]["slots"] == ["a", "b"]

    def test_unchained_domain_has_no_chain(self, chained):
        assert chained.explain(DIGITS).chain is None
        assert len(chained.chain(DIGITS).stages) == 1


class TestPersistence:
    def test_dependencies_survive_save_and_load(self, chained, tmp_path):
        stored = json.loads((tmp_path / "routing" / TABLE_FILE).read_bytes())
        reloaded = MetaController(tmp_path / "routing")

        assert stored["format_version"] == 3
        assert stored["upstream"] == {PAIRS: [DIGITS]}
        assert reloaded.table.upstream == {PAIRS: [DIGITS]}
        assert reloaded.domain(PAIRS).upstream == chained.domain(PAIRS).upstream
        assert [s.domain for s in reloaded.chain(PAIRS).stages] == [DIGITS, PAIRS]

    def test_history_records_dependency_changes(self, chained):
        before = chained.table.version
        chained.update(PAIRS, reason="embeddings instead of logits", upstream=pair_inputs(output="embedding"))

        change = chained.history(PAIRS)[-1]
        assert change["version"] == before + 1
        assert [item["output"] for item in change["previous"]["upstream"]] == ["logits", "logits"]
        assert [item["output"] for item in change["current"]["upstream"]] == ["embedding", "embedding"]

    def test_restoring_past_version_restores_dependencies(self, chained):
        with_logits = chained.table.version
        chained.update(PAIRS, reason="embeddings", upstream=pair_inputs(output="embedding"))
        chained.update(PAIRS, reason="unchained", upstream=[])
        assert chained.table.upstream == {}

        past = chained.table_at(with_logits)
        assert past.upstream == {PAIRS: [DIGITS]}
        restored = chained.restore(with_logits, "back to logits")

        assert restored.upstream == {PAIRS: [DIGITS]}
        assert [item.output for item in restored.domains[PAIRS].upstream] == ["logits", "logits"]
        assert MetaController(chained.directory).table.upstream == {PAIRS: [DIGITS]}

    def test_restoring_table_before_registration_drops_dependencies(self, chained, controller):
        before_pairs = chained.history(PAIRS)[0]["version"] - 1

        restored = chained.restore(before_pairs, "before the pairs domain")

        assert PAIRS not in restored.domains
        assert restored.upstream == {}
        assert chained.dependents(DIGITS) == []

    def test_restoring_one_domain_cannot_close_a_cycle(self, controller):
        register(controller, "a")
        register(controller, "b", [{"slot": "x", "domain": "a"}])
        b_feeds_nothing_yet = controller.table.version
        controller.update("b", reason="unchained", upstream=[])
        controller.update("a", reason="a now reads b", upstream=[{"slot": "x", "domain": "b"}])

        with pytest.raises(ChainCycleError, match=r"cycle b -> a -> b"):
            controller.restore(b_feeds_nothing_yet, "old b", domain="b")
        assert controller.domain("b").upstream == []
