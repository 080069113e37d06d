"""route_batch with a real deployment: two digits domains, real GX validation, real files."""

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mycelium.config import Paths, Params, load_params
from mycelium.errors import DataValidationError, EmptyDataError, InputError, RoutingError
from mycelium.routing.batch import UNROUTED, route_batch
from mycelium.routing.controller import TABLE_FILE
from mycelium.system import Mycelium

PROJECT_ROOT = Path(__file__).resolve().parents[2]
UCI = "vision/digits"
MNIST = "vision/mnist"
ROWS = 90


@pytest.fixture
def params(tmp_path) -> Params:
    project = load_params(PROJECT_ROOT / "params.yaml")
    return project.model_copy(update={"paths": Paths(**{name: tmp_path / name for name in Paths.model_fields})})


@pytest.fixture
def system(params, digits_cnn, patched_digits_cnn, uci_digits, mnist_digits) -> Mycelium:
    """The digits CNN as ``vision/digits`` and its MNIST-patched copy as ``vision/mnist``."""
    mycelium = Mycelium(params)
    mycelium.register(copy.deepcopy(digits_cnn), tags=[UCI], reference=uci_digits.train, reason="UCI digits")
    patched = copy.deepcopy(patched_digits_cnn.patched)
    patched.domain = MNIST
    mycelium.register(patched, tags=["vision/digits/mnist"], reference=mnist_digits.train, reason="MNIST digits")
    mycelium.controller.update(MNIST, reason="its subgraph carries one patch", version=2)
    return mycelium


@pytest.fixture
def mixed(uci_digits, mnist_digits) -> tuple[pd.DataFrame, list]:
    """90 rows in a fixed order: UCI rows tagged for vision/digits, MNIST rows tagged for
    vision/mnist, and untagged UCI rows, with their tags."""
    uci = uci_digits.test.iloc[:60]
    mnist = mnist_digits.test.iloc[:30]
    frame = pd.concat([uci, mnist], ignore_index=True)
    kinds = np.random.default_rng(3).permutation(["uci"] * 30 + ["untagged"] * 30 + ["mnist"] * 30)
    order = np.empty(ROWS, dtype=int)
    order[kinds == "uci"] = np.arange(30)
    order[kinds == "untagged"] = np.arange(30, 60)
    order[kinds == "mnist"] = np.arange(60, 90)
    tag_of = {"uci": "vision/digits/uci", "mnist": "vision/digits/mnist/resampled", "untagged": None}
    return frame.iloc[order].reset_index(drop=True), [tag_of[kind] for kind in kinds]


def expected_predictions(system: Mycelium, frame: pd.DataFrame, domains: np.ndarray) -> np.ndarray:
    """Each domain's prediction of its rows, computed directly, put back in input order."""
    expected = np.full(len(frame), UNROUTED)
    for domain in {d for d in domains if d is not None}:
        rows = np.flatnonzero(domains == domain)
        expected[rows] = system.subgraph(domain).predict(frame.iloc[rows]).labels
    return expected


def test_mixed_batch_returns_input_order(system, mixed):
    frame, tags = mixed

    routed = route_batch(system, frame, tags, validate=False)

    tagged = np.array([t is not None for t in tags])
    assert list(routed.domain[[t == "vision/digits/uci" for t in tags]]) == [UCI] * 30
    assert list(routed.domain[[t == "vision/digits/mnist/resampled" for t in tags]]) == [MNIST] * 30
    inferred = set(routed.domain[~tagged])
    assert len(inferred) == 1
    assert inferred <= {UCI, MNIST}
    np.testing.assert_array_equal(routed.prediction, expected_predictions(system, frame, routed.domain))
    assert (routed.prediction == frame["label"].to_numpy()).mean() > 0.8
    assert list(routed.version) == [1 if d == UCI else 2 for d in routed.domain]
    assert all(line.startswith("inferred: ") for line in routed.route[~tagged])
    assert routed.route[tags.index("vision/digits/uci")] == (
        "tag 'vision/digits/uci' -> registered tag 'vision/digits' -> domain 'vision/digits' v1"
    )


def test_parts_follow_first_rows(system, mixed):
    frame, tags = mixed

    routed = route_batch(system, frame, tags, validate=False)

    first_row = {part.domain: int(np.flatnonzero(routed.domain == part.domain)[0]) for part in routed.parts}
    assert [part.domain for part in routed.parts] == sorted(first_row, key=first_row.get)
    assert sum(part.rows for part in routed.parts) == ROWS
    events = system.events.of_kind("batch_predicted")
    assert sorted(event["domain"] for event in events) == sorted(part.domain for part in routed.parts)
    assert all(event["routing"] for event in events)


def test_tag_column_equals_tag_list(system, mixed):
    frame, tags = mixed
    with_column = frame.assign(tag=tags)

    from_list = route_batch(system, frame, tags, validate=False)
    from_column = route_batch(system, with_column, validate=False)

    np.testing.assert_array_equal(from_column.prediction, from_list.prediction)
    np.testing.assert_array_equal(from_column.domain, from_list.domain)


def test_one_tag_routes_whole_batch(system, uci_digits):
    frame = uci_digits.test.iloc[:40]

    routed = route_batch(system, frame, "vision/digits/mnist", validate=False)

    assert [(part.domain, part.rows) for part in routed.parts] == [(MNIST, 40)]
    np.testing.assert_array_equal(routed.prediction, system.subgraph(MNIST).predict(frame).labels)


@pytest.mark.parametrize(
    ("cell", "domain"),
    [
        ("vision,vision/digits/mnist", MNIST),
        (["vision/digits/uci", "other/source"], UCI),
        (("vision/digits", "vision/digits/uci"), UCI),
        (np.array(["vision/digits/mnist/x", "vision/digits/uci"]), MNIST),
    ],
)
def test_several_tags_per_row(system, uci_digits, cell, domain):
    frame = uci_digits.test.iloc[:2]

    routed = route_batch(system, frame, [cell, cell], validate=False)

    assert list(routed.domain) == [domain, domain]


def test_unaccepted_rows_are_unrouted(system, uci_digits):
    # Saturated images have the digits' columns, but neither domain's OOD check accepts them.
    frame = uci_digits.test.iloc[:40].copy()
    frame.loc[frame.index[20:], frame.columns != "label"] = 16.0
    tags = ["vision/digits"] * 20 + [None] * 20

    routed = route_batch(system, frame, tags, validate=False)
    table = routed.to_frame()

    assert list(routed.domain[:20]) == [UCI] * 20
    assert list(routed.domain[20:]) == [None] * 20
    assert (routed.prediction[20:] == UNROUTED).all()
    assert table["prediction"].isna().tolist() == [False] * 20 + [True] * 20
    assert str(table["version"].dtype) == "Int64"
    assert table["route"].iloc[25].startswith("unrouted: best domain")
    assert system.events.of_kind("rows_unrouted")[-1]["rows"] == 20
    kept = list(system.params.paths.quarantine.glob("*unrouted-rows*/batch.parquet"))
    assert len(kept) == 1
    assert len(pd.read_parquet(kept[0])) == 20


def test_unknown_tag_names_row_and_tag(system, uci_digits):
    frame = uci_digits.test.iloc[:5]
    tags = ["vision/digits"] * 3 + ["audio/speech"] * 2

    with pytest.raises(RoutingError, match=r"row 3 and 1 more rows tagged 'audio/speech'.*registered tags"):
        route_batch(system, frame, tags, validate=False)


def test_validation_quarantines_bad_part(system, uci_digits, params):
    frame = uci_digits.test.iloc[:10].copy()
    frame.loc[frame.index[4], "px_20"] = 99.0

    with pytest.raises(DataValidationError, match="px_20") as raised:
        route_batch(system, frame, "vision/digits", name="bad-batch")

    assert Path(raised.value.quarantine_path).is_relative_to(params.paths.quarantine)
    assert system.events.of_kind("batch_quarantined")[-1]["domain"] == UCI
    assert system.events.of_kind("batch_predicted") == []


def test_isolated_failure_keeps_other_parts(system, mixed, params):
    frame, tags = mixed
    mnist_rows = np.flatnonzero([tag == "vision/digits/mnist/resampled" for tag in tags])
    frame.loc[mnist_rows[2], "px_20"] = 99.0

    routed = route_batch(system, frame, tags, name="mixed", isolate_failures=True)

    failed = next(part for part in routed.parts if part.error is not None)
    assert failed.domain == MNIST
    assert isinstance(failed.error, DataValidationError)
    assert failed.positions.tolist() == mnist_rows.tolist()
    assert (routed.prediction[mnist_rows] == UNROUTED).all()
    assert set(routed.quarantine[mnist_rows]) == {failed.quarantine}
    assert (routed.prediction[np.setdiff1d(np.arange(ROWS), mnist_rows)] != UNROUTED).all()
    assert list(params.paths.quarantine.iterdir()) == [Path(failed.quarantine)]
    quarantined = pd.read_parquet(Path(failed.quarantine) / "batch.parquet")
    pd.testing.assert_frame_equal(quarantined, frame.iloc[mnist_rows])


def test_validation_passes_unlabelled_rows(system, uci_digits):
    frame = uci_digits.test.iloc[:10].drop(columns=["label"])

    routed = route_batch(system, frame, "vision/digits")

    assert list(routed.domain) == [UCI] * 10


def test_use_counts_wait_for_flush(system, mixed):
    frame, tags = mixed
    path = system.controller.directory / TABLE_FILE
    before = path.read_bytes()

    routed = route_batch(system, frame, tags, validate=False)

    assert path.read_bytes() == before
    system.controller.flush_locality()
    table = system.controller.reload()
    for part in routed.parts:
        assert table.domains[part.domain].locality.uses == part.rows


@pytest.mark.parametrize(
    ("make_frame", "tags", "error", "pattern"),
    [
        (lambda f: f.iloc[:0], None, EmptyDataError, "has no rows"),
        (lambda f: f, ["vision/digits"] * 3, InputError, "Got 3 tags for 5 rows"),
        (lambda f: f.assign(tag="vision/digits"), "vision/digits", InputError, "both as the argument"),
        (lambda f: f.assign(tag="vision/digits"), ["vision/digits"] * 5, InputError, "both as a list"),
        (lambda f: f, [1, 2, 3, 4, 5], InputError, "Tag 1 is int, not text"),
        (lambda f: f.assign(tag=[2, 1, 2, 2, 2]), None, InputError,
         r"Tag 2 in column 'tag' \(row with index 1200\) is int, not text; .* rename it, or pass the column"),
        (lambda f: f, " ", InputError, "The tag ' ' for every row is empty"),
        (lambda f: f.drop(columns=["px_00", "px_01"]), "vision/digits", InputError,
         r"missing columns \['px_00', 'px_01'\] that domain 'vision/digits' needs"),
    ],
)
def test_bad_input_raises(system, uci_digits, make_frame, tags, error, pattern):
    frame = make_frame(uci_digits.test.iloc[:5])

    with pytest.raises(error, match=pattern):
        route_batch(system, frame, tags, validate=False)
