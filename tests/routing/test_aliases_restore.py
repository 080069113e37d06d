"""MetaController on real files: multi-tag rules, aliases, restoring past tables, the table format."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from mycelium.errors import IllegalTransitionError, RoutingError, StorageError
from mycelium.routing.controller import HISTORY_FILE, TABLE_FILE, DomainRecord, MetaController, RoutingTable
from mycelium.routing.lifecycle import State
from mycelium.routing.table import FORMAT_VERSION, DomainIndex

START = 1000.0
# Domain -> its registered tags. "archive/digits" is retired with successor "vision/digits".
REGISTERED = {
    "vision/general": ["vision"],
    "vision/digits": ["vision/digits", "images/digits"],
    "vision/mnist": ["vision/digits/mnist"],
    "weather/rainfall": ["weather/rainfall"],
    "tabular/segments": ["tabular/segments"],
    "archive/digits": ["archive/digits"],
}
ALIASES = {"scans/digits": "vision/digits", "precip": "weather/rainfall"}

# (input tags, expected domain or None, error pattern or None)
RESOLUTION_CASES = [
    (["vision/digits/uci"], "vision/digits", None),
    (["vision/letters"], "vision/general", None),
    (["vision/digits/mnist/rotated"], "vision/mnist", None),
    (["vision", "vision/digits/uci"], "vision/digits", None),
    (["vision/digits/uci", "vision"], "vision/digits", None),
    (["vision/digits/uci", "source/scanner-3"], "vision/digits", None),
    (["vision/digits/uci", "images/digits"], "vision/digits", None),
    (["tabular/segments/x", "vision/digits/mnist"], "vision/mnist", None),
    (["scans/digits/uci"], "vision/digits", None),
    (["precip/daily", "vision"], "weather/rainfall", None),
    (["/Vision/Digits/"], "vision/digits", None),
    (["vision/digits", "weather/rainfall"], None, r"ambiguous.*'vision/digits'.*'weather/rainfall'"),
    (["tabular/segments", "precip"], None, r"ambiguous.*'tabular/segments'.*'weather/rainfall'"),
    (["images/digits", "vision/digits/mnist/x", "vision/digits/mnist"], "vision/mnist", None),
    (["archive/digits/x"], None, r"retired domain 'archive/digits'; use 'vision/digits' instead"),
    (["archive/digits", "vision"], None, r"retired domain 'archive/digits'"),
    (["audio/speech"], None, r"No domain is registered for tag 'audio/speech' or its parents"),
    (["audio", "music"], None, r"tags \['audio', 'music'\] or their parents"),
    (["vision//digits"], None, r"Invalid tag 'vision//digits'"),
    ([], None, r"empty list of tags"),
]


class SimulatedClock:
    def __init__(self, start: float = START):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock()


@pytest.fixture
def controller(tmp_path: Path, clock: SimulatedClock) -> MetaController:
    return MetaController(tmp_path / "routing", clock=clock)


@pytest.fixture
def populated(controller: MetaController) -> MetaController:
    for name, tags in REGISTERED.items():
        controller.register(DomainRecord(name, list(tags)), reason=f"register {name}")
        controller.set_state(name, State.HOT, reason="trained")
    controller.set_state("archive/digits", State.RETIRED, reason="replaced", successor="vision/digits")
    for alias, canonical in ALIASES.items():
        controller.add_alias(alias, canonical, reason=f"alias {alias}")
    return controller


def saved_table(controller: MetaController) -> dict:
    return json.loads((controller.directory / TABLE_FILE).read_text())


def without_version_and_locality(table: dict) -> dict:
    table = {key: value for key, value in table.items() if key != "version"}
    table["domains"] = {
        name: {key: value for key, value in record.items() if key != "locality"}
        for name, record in table["domains"].items()
    }
    return table


def mapping(table: RoutingTable) -> dict:
    """The table's domains, tags and aliases without version and locality, with columns inline."""
    return {
        "domains": {
            name: {key: value for key, value in asdict(record).items() if key != "locality"}
            for name, record in table.domains.items()
        },
        "tags": dict(table.tags),
        "aliases": dict(table.aliases),
    }


class TestResolutionRules:
    @pytest.mark.parametrize(("tags", "domain", "error"), RESOLUTION_CASES)
    def test_resolve_case(self, populated, tags, domain, error):
        if error is None:
            assert populated.resolve(tags).name == domain
        else:
            with pytest.raises(RoutingError, match=error):
                populated.resolve(tags)

    def test_single_string_is_one_tag(self, populated):
        assert populated.resolve("vision/digits/uci").name == "vision/digits"

    def test_decision_explains_alias_match(self, populated):
        decision = populated.explain(["scans/digits/uci", "audio"])

        assert decision.domain == "vision/digits"
        assert decision.match.tag == "scans/digits/uci"
        assert decision.match.alias == "scans/digits"
        assert decision.match.registered_tag == "vision/digits"
        assert decision.ignored == ("audio",)
        assert decision.version == 0
        assert decision.describe() == (
            "tag 'scans/digits/uci' via alias 'scans/digits' -> registered tag 'vision/digits' -> domain 'vision/digits' v0"
        )
        assert decision.to_dict()["registered_tag"] == "vision/digits"

    def test_tie_names_tags_of_both_domains(self, populated):
        with pytest.raises(RoutingError) as raised:
            populated.resolve(["vision/digits/a", "weather/rainfall/b"])

        message = str(raised.value)
        assert "'vision/digits/a' -> 'vision/digits'" in message
        assert "'weather/rainfall/b' -> 'weather/rainfall'" in message
        assert "same specificity (2 segments)" in message

    def test_cached_decision_follows_table_changes(self, controller):
        controller.register(DomainRecord("old", ["shared"]), reason="register")
        controller.set_state("old", State.HOT, reason="trained")
        assert controller.resolve("shared/x").name == "old"

        controller.update("old", reason="give up tag", tags=["old"])
        controller.register(DomainRecord("new", ["shared"]), reason="take tag")
        assert controller.resolve("shared/x").name == "new"
        controller.set_state("old", State.RETIRED, reason="replaced", successor="new")

        with pytest.raises(RoutingError, match="retired domain 'old'; use 'new' instead"):
            controller.resolve("old/x")
        assert controller.explain(["shared/x"]) is controller.explain(("shared/x",))

    def test_unknown_tag_message_is_capped(self, controller):
        for index in range(25):
            controller.register(DomainRecord(f"d{index:02d}", [f"t{index:02d}"]), reason="bulk")

        with pytest.raises(RoutingError) as raised:
            controller.resolve("nothing")

        assert "['t00', 't01', 't02', 't03', 't04', 't05', 't06', 't07', 't08', 't09'] and 15 more" in str(raised.value)

    def test_decision_parses_only_the_routed_record(self, tmp_path):
        table = RoutingTable(version=1)
        for index in range(1000):
            table.domains[f"d{index}"] = DomainRecord(f"d{index}", [f"area/d{index}"], state="hot", columns=["x", "y"])
            table.tags[f"area/d{index}"] = f"d{index}"
        MetaController(tmp_path)._write(table)
        reader = MetaController(tmp_path)

        assert reader.resolve("area/d417/sub").name == "d417"

        entries = reader.table.domains._entries
        assert [name for name, entry in entries.items() if isinstance(entry, DomainRecord)] == ["d417"]
        assert reader.table.domains["d417"].columns == ["x", "y"]


class TestAliases:
    def test_alias_is_recorded_and_persisted(self, populated, clock, tmp_path):
        clock.now = 5000.0
        populated.add_alias("pictures/digits", "images/digits", reason="old client name")

        entry = populated.history()[-1]
        assert entry["kind"] == "alias"
        assert (entry["alias"], entry["previous"], entry["current"]) == ("pictures/digits", None, "images/digits")
        assert (entry["target_domain"], entry["time"], entry["reason"]) == ("vision/digits", 5000.0, "old client name")
        assert saved_table(populated)["aliases"]["pictures/digits"] == "images/digits"
        assert MetaController(tmp_path / "routing").resolve("pictures/digits/x").name == "vision/digits"

    def test_repointing_alias_records_previous(self, populated):
        populated.add_alias("scans/digits", "vision/digits/mnist", reason="scans are MNIST now")

        entry = populated.history()[-1]
        assert (entry["previous"], entry["current"]) == ("vision/digits", "vision/digits/mnist")
        assert populated.resolve("scans/digits/x").name == "vision/mnist"

    def test_same_alias_twice_records_nothing(self, populated):
        versions = len(populated.history())

        populated.add_alias("precip", "weather/rainfall", reason="again")

        assert len(populated.history()) == versions

    def test_removed_alias_no_longer_routes(self, populated):
        populated.remove_alias("precip", reason="retired name")

        assert populated.history()[-1]["current"] is None
        assert "precip" not in saved_table(populated)["aliases"]
        with pytest.raises(RoutingError, match="No domain is registered for tag 'precip/daily'"):
            populated.resolve("precip/daily")

    @pytest.mark.parametrize(
        ("alias", "canonical", "error"),
        [
            ("vision/digits", "weather/rainfall", "is a registered tag of domain 'vision/digits'"),
            ("cameras", "audio/speech", "must point at a registered tag"),
            ("cameras", "scans/digits", "itself an alias of 'vision/digits'"),
            ("bad alias", "vision", "Invalid tag"),
        ],
    )
    def test_invalid_alias_rejected(self, populated, alias, canonical, error):
        before = saved_table(populated)

        with pytest.raises(RoutingError, match=error):
            populated.add_alias(alias, canonical, reason="test")

        assert saved_table(populated) == before

    def test_removing_unknown_alias_rejected(self, populated):
        with pytest.raises(RoutingError, match="'vision' is not an alias"):
            populated.remove_alias("vision", reason="test")

    def test_tag_that_is_an_alias_cannot_be_registered(self, populated):
        with pytest.raises(RoutingError, match="'precip' is an alias of 'weather/rainfall'"):
            populated.register(DomainRecord("weather/precip", ["precip"]), reason="test")

    def test_update_cannot_drop_alias_target(self, populated):
        with pytest.raises(RoutingError, match="drop tag 'weather/rainfall', which alias 'precip' points to"):
            populated.update("weather/rainfall", reason="retag", tags=["weather/rain"])

        assert populated.resolve("precip").name == "weather/rainfall"


class TestRestore:
    def build_history(self, controller: MetaController, clock: SimulatedClock) -> dict[float, dict]:
        """Make a series of changes, one per 100 s, and return the saved table after each, by time."""
        changes = [
            lambda: controller.register(DomainRecord("vision/digits", ["vision/digits"], columns=["a", "b"]),
                                        reason="register"),
            lambda: controller.set_state("vision/digits", State.HOT, reason="trained", version=1,
                                         model_dir="models/digits/v0001"),
            lambda: controller.add_alias("scans", "vision/digits", reason="alias"),
            lambda: controller.update("vision/digits", reason="patch 1", version=2, patches=["patch-1"],
                                      model_dir="models/digits/v0002"),
            lambda: controller.register(DomainRecord("weather/rainfall", ["weather/rainfall"], columns=["t"]),
                                        reason="register"),
            lambda: controller.update("vision/digits", reason="retag", tags=["vision/digits", "digits"]),
            lambda: controller.remove_alias("scans", reason="drop alias"),
        ]
        saved = {}
        for change in changes:
            clock.now += 100.0
            change()
            saved[clock.now] = saved_table(controller)
        return saved

    def test_restored_table_equals_table_saved_then(self, controller, clock):
        saved = self.build_history(controller, clock)
        history_before = (controller.directory / HISTORY_FILE).read_bytes()
        moment = START + 400.0 + 50.0  # after the patch, before the second domain

        restored = controller.restore(controller.version_at_time(moment), "roll back the retag")

        assert restored.version == 8
        assert without_version_and_locality(saved_table(controller)) == without_version_and_locality(saved[START + 400.0])
        assert mapping(controller.reload()) == mapping(controller.table_at(4))
        assert (controller.directory / HISTORY_FILE).read_bytes().startswith(history_before)
        entry = controller.history()[-1]
        assert (entry["kind"], entry["restored_version"], entry["scope"]) == ("restore", 4, "table")
        assert [change["domain"] for change in entry["changes"]] == ["vision/digits", "weather/rainfall"]
        assert entry["aliases"] == {"previous": {}, "current": {"scans": "vision/digits"}}

    def test_table_at_time_equals_table_saved_then(self, controller, clock):
        saved = self.build_history(controller, clock)

        for moment, table in saved.items():
            for offset in (0.0, 99.0):
                rebuilt = controller.table_at_time(moment + offset).to_dict()
                assert rebuilt == table, f"time {moment + offset}"
        assert controller.table_at_time(START).to_dict() == RoutingTable().to_dict()
        assert controller.version_at_time(START + 250.0) == 2

    def test_restore_removes_later_domains(self, controller, clock):
        self.build_history(controller, clock)

        controller.restore(4, "before rainfall")
        assert "weather/rainfall" not in controller.table.domains
        with pytest.raises(RoutingError, match="No domain is registered"):
            controller.resolve("weather/rainfall")
        controller.restore(7, "undo the restore")

        assert controller.resolve("weather/rainfall").name == "weather/rainfall"
        assert mapping(controller.table) == mapping(controller.table_at(7))
        removal = controller.history("weather/rainfall")[-2]
        assert (removal["kind"], removal["current"]) == ("restore", None)

    def test_restore_keeps_current_locality(self, controller, clock):
        self.build_history(controller, clock)
        controller.record_use("vision/digits", 12, now=9000.0)
        controller.flush_locality()

        controller.restore(2, "before patch")

        locality = controller.reload().domains["vision/digits"].locality
        assert (locality.uses, locality.last_used) == (12, 9000.0)
        assert controller.table.domains["vision/digits"].patches == []

    def test_restore_to_illegal_state_changes_nothing(self, controller, clock):
        self.build_history(controller, clock)
        controller.set_state("vision/digits", State.COLD, reason="swept", model_dir=None, cold_version="v0001")
        before = saved_table(controller)
        versions = len(controller.history())

        with pytest.raises(IllegalTransitionError, match="Cannot restore table version 4.*from 'cold' to 'hot'"):
            controller.restore(4, "back to hot")

        assert saved_table(controller) == before
        assert len(controller.history()) == versions

    def test_domain_restore_changes_only_that_domain(self, controller, clock):
        self.build_history(controller, clock)
        controller.update("weather/rainfall", reason="metrics", metrics={"accuracy": 0.8})
        rainfall = saved_table(controller)["domains"]["weather/rainfall"]

        controller.restore(2, "undo patch and retag", domain="vision/digits")

        table = saved_table(controller)
        assert table["domains"]["weather/rainfall"] == rainfall
        digits = controller.table.domains["vision/digits"]
        assert (digits.version, digits.patches, digits.tags) == (1, [], ["vision/digits"])
        assert digits.model_dir == "models/digits/v0001"
        narrowed = controller.history("vision/digits")[-1]
        assert (narrowed["kind"], narrowed["restored_version"]) == ("restore", 2)
        assert narrowed["previous"]["version"] == 2
        assert narrowed["current"]["version"] == 1

    def test_domain_restore_rejects_taken_tag(self, controller, clock):
        self.build_history(controller, clock)
        controller.update("vision/digits", reason="give up tag", tags=["digits"])
        controller.register(DomainRecord("vision/new", ["vision/digits"]), reason="take tag")

        with pytest.raises(RoutingError, match="'vision/digits' already belongs to domain 'vision/new'"):
            controller.restore(4, "back", domain="vision/digits")

    @pytest.mark.parametrize("version", [-1, 99, "3"])
    def test_restore_rejects_unknown_version(self, controller, clock, version):
        self.build_history(controller, clock)

        with pytest.raises(RoutingError, match="does not exist; recorded versions are 0 to 7"):
            controller.restore(version, "test")

    def test_domain_restore_before_registration_rejected(self, controller, clock):
        self.build_history(controller, clock)

        with pytest.raises(RoutingError, match="'weather/rainfall' did not exist at table version 3"):
            controller.restore(3, "test", domain="weather/rainfall")


class TestTableFile:
    def test_columns_are_stored_once_per_schema(self, controller):
        for name in ("a", "b", "c"):
            controller.register(DomainRecord(name, [name], columns=["x", "y"]), reason="register")
        controller.register(DomainRecord("d", ["d"], columns=["z"]), reason="register")

        table = saved_table(controller)

        assert table["format_version"] == FORMAT_VERSION
        assert table["schemas"] == [["x", "y"], ["z"]]
        assert [table["domains"][name]["schema"] for name in "abcd"] == [0, 0, 0, 1]
        assert MetaController(controller.directory).table.domains["d"].columns == ["z"]

    def test_unused_schema_is_dropped(self, controller):
        controller.register(DomainRecord("a", ["a"], columns=["old"]), reason="register")
        controller.update("a", reason="new schema", columns=["new"])

        assert saved_table(controller)["schemas"] == [["new"]]

    def test_format_1_file_is_read_and_upgraded(self, tmp_path):
        folder = tmp_path / "routing"
        folder.mkdir()
        record = {
            "name": "vision/digits", "tags": ["vision/digits"], "state": "hot", "version": 1, "architecture": "cnn",
            "n_params": 10, "fp32_bytes": 40, "model_dir": "models/x", "cold_version": None, "patches": [],
            "columns": ["px_00", "px_01"], "pinned": False, "successor": None,
            "locality": {"last_used": 5.0, "uses": 2, "activity": 1.5}, "metrics": {},
        }
        old = {"version": 2, "domains": {"vision/digits": record}, "tags": {"vision/digits": "vision/digits"}}
        (folder / TABLE_FILE).write_text(json.dumps(old, indent=1))
        controller = MetaController(folder)

        assert controller.resolve("vision/digits/uci").columns == ["px_00", "px_01"]
        controller.record_use("vision/digits", 1, now=6.0)
        controller.flush_locality()

        upgraded = saved_table(controller)
        assert (upgraded["format_version"], upgraded["schemas"], upgraded["aliases"]) == (FORMAT_VERSION, [["px_00", "px_01"]], {})
        assert upgraded["domains"]["vision/digits"]["locality"]["uses"] == 3

    def test_newer_format_rejected(self, controller):
        (controller.directory / TABLE_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION + 1, "version": 1}))

        with pytest.raises(StorageError, match=f"format_version {FORMAT_VERSION + 1}.*upgrade Mycelium"):
            controller.table

    @pytest.mark.parametrize("content", ['{"version": 1, "domains": {', '{"tables": []}', "[]"])
    def test_corrupt_file_is_repaired_from_history(self, populated, content):
        expected = populated.table.to_dict()
        (populated.directory / TABLE_FILE).write_text(content)
        reader = MetaController(populated.directory)

        with pytest.raises(StorageError, match=r"not a valid table file.*repair_from_history\(\)"):
            reader.table
        repaired = reader.repair_from_history()

        assert repaired.to_dict() == expected
        assert saved_table(reader) == expected
        assert reader.resolve("precip").name == "weather/rainfall"

    def test_missing_file_with_history_is_an_error(self, populated):
        (populated.directory / TABLE_FILE).unlink()

        with pytest.raises(StorageError, match="is missing, but its history is not empty"):
            MetaController(populated.directory).table

    def test_two_controllers_see_each_others_changes(self, tmp_path, clock):
        first = MetaController(tmp_path, clock=clock)
        second = MetaController(tmp_path, clock=clock)
        first.register(DomainRecord("a", ["a"]), reason="register")
        second.register(DomainRecord("b", ["b"]), reason="register")
        first.update("a", reason="metrics", metrics={"n": 1})
        second.record_use("a", 4, now=10.0)
        second.flush_locality()
        first.update("b", reason="metrics", metrics={"n": 2})

        final = MetaController(tmp_path).table
        assert sorted(final.domains) == ["a", "b"]
        assert final.domains["a"].metrics == {"n": 1}
        assert final.domains["a"].locality.uses == 4
        assert final.domains["b"].metrics == {"n": 2}
        assert final.version == 4

    def test_index_accepts_plain_dict(self):
        table = RoutingTable(domains={"a": DomainRecord("a", ["a"])}, tags={"a": "a"})

        assert isinstance(table.domains, DomainIndex)
        assert RoutingTable.from_dict(table.to_dict()).domains["a"] == table.domains["a"]
