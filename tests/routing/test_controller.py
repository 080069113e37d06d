"""MetaController against real files in tmp_path: resolution, history, versions, locking, locality."""

import json
import multiprocessing
from pathlib import Path

import pytest

from mycelium.errors import IllegalTransitionError, RoutingError
from mycelium.routing.controller import HISTORY_FILE, TABLE_FILE, DomainRecord, MetaController, RoutingTable
from mycelium.routing.lifecycle import State

HALF_LIFE_S = 3600.0
WRITERS = 4
UPDATES_PER_WRITER = 10
# Each writer owns one field of the shared domain, so no two writers set the same field.
SHARED_FIELDS = ("version", "n_params", "fp32_bytes", "metrics")


class SimulatedClock:
    """A clock that moves only when a test advances it."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


class CountingController(MetaController):
    """A real controller that counts how many times it replaces the table file."""

    writes = 0

    def _write(self, table: RoutingTable) -> None:
        self.writes += 1
        super()._write(table)


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock()


@pytest.fixture
def controller(tmp_path: Path, clock: SimulatedClock) -> MetaController:
    return MetaController(tmp_path / "routing", clock=clock, activity_half_life_s=HALF_LIFE_S)


def saved_table(controller: MetaController) -> dict:
    return json.loads((controller.directory / TABLE_FILE).read_text())


def register(controller: MetaController, name: str, *tags: str) -> DomainRecord:
    return controller.register(DomainRecord(name, list(tags)), reason=f"register {name}")


class TestResolve:
    def test_child_tag_falls_back_to_parent(self, controller):
        register(controller, "vision/digits", "vision/digits")

        assert controller.resolve("vision/digits/uci").name == "vision/digits"
        assert controller.resolve("vision/digits/uci/test-split").name == "vision/digits"

    def test_most_specific_tag_wins(self, controller):
        register(controller, "vision/general", "vision")
        register(controller, "vision/digits", "vision/digits")
        register(controller, "vision/digits/mnist", "vision/digits/mnist")

        assert controller.resolve("vision/digits/mnist/rotated").name == "vision/digits/mnist"
        assert controller.resolve("vision/digits/uci").name == "vision/digits"
        assert controller.resolve("vision/letters").name == "vision/general"
        assert controller.resolve("vision").name == "vision/general"

    def test_resolve_normalizes_the_tag(self, controller):
        register(controller, "vision/digits", "vision/digits")

        assert controller.resolve("/Vision/Digits/UCI/").name == "vision/digits"

    def test_unknown_tag_lists_registered_tags(self, controller):
        register(controller, "vision/digits", "vision/digits", "images/digits")
        register(controller, "weather/rainfall", "weather/rainfall")

        with pytest.raises(RoutingError) as raised:
            controller.resolve("audio/speech")

        message = str(raised.value)
        assert "'audio/speech'" in message
        assert "['images/digits', 'vision/digits', 'weather/rainfall']" in message
        assert "untagged" in message

    def test_unknown_tag_on_empty_table_says_none(self, controller):
        with pytest.raises(RoutingError, match="registered tags: none"):
            controller.resolve("vision/digits")

    def test_retired_domain_names_successor(self, controller):
        register(controller, "vision/digits", "vision/digits")
        controller.set_state("vision/digits", State.HOT, reason="trained")
        controller.set_state("vision/digits", State.RETIRED, reason="replaced", successor="vision/digits-v2")

        with pytest.raises(RoutingError) as raised:
            controller.resolve("vision/digits/uci")

        message = str(raised.value)
        assert "retired domain 'vision/digits'" in message
        assert "use 'vision/digits-v2' instead" in message

    def test_retired_domain_without_successor_asks_for_new_domain(self, controller):
        register(controller, "vision/digits", "vision/digits")
        controller.set_state("vision/digits", State.HOT, reason="trained")
        controller.set_state("vision/digits", State.RETIRED, reason="obsolete")

        with pytest.raises(RoutingError, match="register a new domain"):
            controller.resolve("vision/digits")

    def test_unknown_domain_lists_known_domains(self, controller):
        register(controller, "vision/digits", "vision/digits")

        with pytest.raises(RoutingError, match=r"'audio'.*\['vision/digits'\]"):
            controller.domain("audio")


class TestRegister:
    def test_tags_are_normalized(self, controller):
        record = register(controller, "vision/digits", "/Vision/Digits/")

        assert record.tags == ["vision/digits"]
        assert controller.table.tags == {"vision/digits": "vision/digits"}

    def test_duplicate_tag_rejected(self, controller):
        register(controller, "vision/digits", "vision/digits")
        before = saved_table(controller)

        with pytest.raises(RoutingError, match="'vision/digits' already belongs to domain 'vision/digits'"):
            register(controller, "vision/mnist", "vision/mnist", "Vision/Digits")

        assert saved_table(controller) == before
        assert len(controller.history()) == 1
        assert "vision/mnist" not in controller.reload().domains

    def test_duplicate_domain_rejected(self, controller):
        register(controller, "vision/digits", "vision/digits")

        with pytest.raises(RoutingError, match="'vision/digits' already exists"):
            register(controller, "vision/digits", "vision/other")

        assert len(controller.history()) == 1

    def test_invalid_tag_rejected(self, controller):
        with pytest.raises(RoutingError, match="Invalid tag"):
            register(controller, "vision/digits", "vision//digits")

        assert controller.history() == []

    def test_update_rejects_tag_of_other_domain(self, controller):
        register(controller, "vision/digits", "vision/digits")
        register(controller, "vision/mnist", "vision/mnist")

        with pytest.raises(RoutingError):
            controller.update("vision/mnist", reason="take a tag", tags=["vision/digits"])

        assert controller.resolve("vision/digits").name == "vision/digits"


class TestHistory:
    def test_every_change_has_reason_and_previous(self, controller, clock):
        register(controller, "vision/digits", "vision/digits")
        clock.now = 2000.0
        controller.set_state("vision/digits", State.HOT, reason="trained and saved")
        clock.now = 3000.0
        controller.update("vision/digits", reason="patch 1 trained", version=2, patches=["patch-1"])

        history = controller.history()

        assert [entry["version"] for entry in history] == [1, 2, 3]
        assert [entry["time"] for entry in history] == [1000.0, 2000.0, 3000.0]
        assert [entry["reason"] for entry in history] == [
            "register vision/digits",
            "trained and saved",
            "patch 1 trained",
        ]
        assert history[0]["previous"] is None
        assert history[1]["previous"] == history[0]["current"]
        assert history[2]["previous"] == history[1]["current"]
        assert history[1]["previous"]["state"] == "training"
        assert history[1]["current"]["state"] == "hot"
        assert history[2]["previous"]["patches"] == []
        assert history[2]["current"]["patches"] == ["patch-1"]
        assert history[2]["current"]["version"] == 2

    def test_history_filters_by_domain(self, controller):
        register(controller, "vision/digits", "vision/digits")
        register(controller, "weather/rainfall", "weather/rainfall")
        controller.set_state("weather/rainfall", State.HOT, reason="trained")

        assert [entry["version"] for entry in controller.history("weather/rainfall")] == [2, 3]
        assert [entry["version"] for entry in controller.history("vision/digits")] == [1]

    def test_illegal_state_change_leaves_no_trace(self, controller):
        register(controller, "vision/digits", "vision/digits")
        before = saved_table(controller)

        with pytest.raises(IllegalTransitionError, match="from 'training' to 'cold'"):
            controller.set_state("vision/digits", State.COLD, reason="swept")

        assert saved_table(controller) == before
        assert len(controller.history()) == 1

    def test_table_at_equals_table_saved_at_that_version(self, controller):
        changes = [
            lambda: register(controller, "vision/digits", "vision/digits"),
            lambda: register(controller, "weather/rainfall", "weather/rainfall", "weather/rain"),
            lambda: controller.set_state("vision/digits", State.HOT, reason="trained"),
            lambda: controller.update("weather/rainfall", reason="retag", tags=["weather/rainfall", "weather/precip"]),
            lambda: controller.update("vision/digits", reason="patch", version=2, patches=["patch-1"]),
            lambda: controller.set_state("vision/digits", State.COLD, reason="idle", cold_version="v0001"),
            lambda: controller.set_state("weather/rainfall", State.HOT, reason="trained"),
            lambda: controller.set_state("weather/rainfall", State.RETIRED, reason="replaced", successor="vision/digits"),
        ]
        saved = {}
        for change in changes:
            change()
            table = saved_table(controller)
            saved[table["version"]] = table

        assert sorted(saved) == list(range(1, len(changes) + 1))
        assert controller.table_at(0).to_dict() == RoutingTable().to_dict()
        for version, table in saved.items():
            assert controller.table_at(version).to_dict() == table, f"version {version}"

    def test_table_at_restores_mapping_after_locality_flushes(self, controller, clock):
        register(controller, "vision/digits", "vision/digits")
        register(controller, "weather/rainfall", "weather/rainfall")
        controller.record_use("vision/digits", 5)
        controller.flush_locality()
        controller.set_state("weather/rainfall", State.HOT, reason="trained")
        saved = saved_table(controller)

        rebuilt = controller.table_at(saved["version"]).to_dict()

        # NOTE: locality is written without a history entry, so table_at cannot restore it.
        for table in (rebuilt, saved):
            for record in table["domains"].values():
                record.pop("locality")
        assert rebuilt == saved

    def test_table_file_is_valid_json_after_every_write(self, controller):
        writes = [
            lambda: register(controller, "vision/digits", "vision/digits"),
            lambda: controller.set_state("vision/digits", State.HOT, reason="trained"),
            lambda: controller.record_use("vision/digits", 3),
            lambda: controller.flush_locality(),
            lambda: controller.update("vision/digits", reason="metrics", metrics={"accuracy": 0.97}),
        ]
        for write in writes:
            write()
            table = RoutingTable.from_dict(saved_table(controller))
            assert table.to_dict() == controller.table.to_dict()

        leftovers = [path.name for path in controller.directory.iterdir() if path.name.startswith(".table-")]
        assert leftovers == []

    def test_new_controller_reads_saved_table(self, controller, tmp_path):
        register(controller, "vision/digits", "vision/digits")
        controller.set_state("vision/digits", State.HOT, reason="trained")

        reopened = MetaController(tmp_path / "routing")

        assert reopened.table.to_dict() == controller.table.to_dict()
        assert reopened.resolve("vision/digits/uci").state == "hot"


def _write_updates(directory: str, writer: int) -> None:
    # Runs in a child process: its own controller, so its own file lock handle.
    controller = MetaController(directory)
    field = SHARED_FIELDS[writer]
    for step in range(1, UPDATES_PER_WRITER + 1):
        controller.update(f"team/{writer}", reason=f"writer {writer} step {step}", metrics={"step": step})
        value = {"step": step} if field == "metrics" else step
        controller.update("shared", reason=f"writer {writer} sets {field}={step}", **{field: value})


def _start_writers(controller: MetaController) -> list[multiprocessing.Process]:
    for writer in range(WRITERS):
        register(controller, f"team/{writer}", f"team/{writer}")
    register(controller, "shared", "shared")
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_write_updates, args=(str(controller.directory), writer))
        for writer in range(WRITERS)
    ]
    for process in processes:
        process.start()
    return processes


class TestConcurrentWriters:
    def test_no_update_is_lost(self, controller):
        processes = _start_writers(controller)
        reads = 0
        while any(process.is_alive() for process in processes):
            # A reader must never see a half-written table.
            json.loads((controller.directory / TABLE_FILE).read_text())
            reads += 1
        for process in processes:
            process.join(timeout=60)

        assert [process.exitcode for process in processes] == [0] * WRITERS
        history = controller.history()
        expected_changes = WRITERS + 1 + 2 * WRITERS * UPDATES_PER_WRITER
        assert len(history) == expected_changes
        assert [entry["version"] for entry in history] == list(range(1, expected_changes + 1))
        table = controller.reload()
        assert table.version == expected_changes
        for writer in range(WRITERS):
            assert table.domains[f"team/{writer}"].metrics == {"step": UPDATES_PER_WRITER}
        shared = table.domains["shared"]
        assert shared.version == UPDATES_PER_WRITER
        assert shared.n_params == UPDATES_PER_WRITER
        assert shared.fp32_bytes == UPDATES_PER_WRITER
        assert shared.metrics == {"step": UPDATES_PER_WRITER}
        assert reads > 0

    def test_each_change_builds_on_the_previous_one(self, controller):
        processes = _start_writers(controller)
        for process in processes:
            process.join(timeout=60)

        assert [process.exitcode for process in processes] == [0] * WRITERS
        for domain in ["shared", *(f"team/{writer}" for writer in range(WRITERS))]:
            entries = controller.history(domain)
            assert len(entries) == 1 + UPDATES_PER_WRITER * (WRITERS if domain == "shared" else 1)
            for earlier, later in zip(entries, entries[1:]):
                assert later["previous"] == earlier["current"], f"{domain} v{later['version']}"


class TestLocality:
    def test_record_use_writes_nothing_until_flush(self, controller):
        register(controller, "vision/digits", "vision/digits")
        before = (controller.directory / TABLE_FILE).read_bytes()

        controller.record_use("vision/digits", 10)

        assert (controller.directory / TABLE_FILE).read_bytes() == before

    def test_flush_writes_every_domain_once(self, tmp_path, clock):
        controller = CountingController(tmp_path / "routing", clock=clock, activity_half_life_s=HALF_LIFE_S)
        register(controller, "vision/digits", "vision/digits")
        register(controller, "weather/rainfall", "weather/rainfall")
        writes_before = controller.writes

        controller.record_use("vision/digits", 10)
        clock.now = 1500.0
        controller.record_use("weather/rainfall", 4)
        controller.record_use("vision/digits", 6)
        controller.flush_locality()
        controller.flush_locality()

        assert controller.writes == writes_before + 1
        table = RoutingTable.from_dict(saved_table(controller))
        assert table.version == 2
        assert len(controller.history()) == 2
        digits = table.domains["vision/digits"].locality
        assert (digits.last_used, digits.uses) == (1500.0, 16)
        rainfall = table.domains["weather/rainfall"].locality
        assert (rainfall.last_used, rainfall.uses) == (1500.0, 4)

    def test_activity_decays_with_half_life(self, controller):
        register(controller, "vision/digits", "vision/digits")

        controller.record_use("vision/digits", 10, now=1000.0)
        controller.flush_locality()
        first = controller.domain("vision/digits").locality
        # One half-life later: 10 * 0.5 + 4.
        controller.record_use("vision/digits", 4, now=1000.0 + HALF_LIFE_S)
        controller.flush_locality()
        second = controller.domain("vision/digits").locality
        # Two half-lives later: 9 * 0.25 + 1.
        controller.record_use("vision/digits", 1, now=1000.0 + 3 * HALF_LIFE_S)
        controller.flush_locality()
        third = controller.reload().domains["vision/digits"].locality

        assert (first.activity, first.uses, first.last_used) == (10.0, 10, 1000.0)
        assert (second.activity, second.uses, second.last_used) == (9.0, 14, 1000.0 + HALF_LIFE_S)
        assert (third.activity, third.uses, third.last_used) == (3.25, 15, 1000.0 + 3 * HALF_LIFE_S)

    def test_record_use_defaults_to_clock(self, controller, clock):
        register(controller, "vision/digits", "vision/digits")
        clock.now = 4242.0

        controller.record_use("vision/digits")
        controller.flush_locality()

        locality = controller.domain("vision/digits").locality
        assert (locality.last_used, locality.uses, locality.activity) == (4242.0, 1, 1.0)

    def test_older_use_does_not_move_last_used_back(self, controller):
        register(controller, "vision/digits", "vision/digits")

        controller.record_use("vision/digits", 2, now=5000.0)
        controller.record_use("vision/digits", 3, now=4000.0)
        controller.flush_locality()

        locality = controller.domain("vision/digits").locality
        assert (locality.last_used, locality.uses, locality.activity) == (5000.0, 5, 5.0)

    def test_update_flushes_pending_uses(self, controller):
        register(controller, "vision/digits", "vision/digits")
        controller.record_use("vision/digits", 7, now=1200.0)

        controller.set_state("vision/digits", State.HOT, reason="trained")

        saved = RoutingTable.from_dict(saved_table(controller)).domains["vision/digits"]
        assert saved.locality.uses == 7
        assert controller.history()[-1]["current"]["locality"]["uses"] == 7
