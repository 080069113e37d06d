"""Pairs of real UCI digits for the chained digit-pairs domain, and the chain settings in params.yaml."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from mycelium.config import load_params
from mycelium.data.pairs import make_pairs
from mycelium.data.sources import load_uci_digits
from mycelium.errors import ConfigError, EmptyDataError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits():
    return load_uci_digits()


class TestMakePairs:
    def test_columns_are_slot_prefixed(self, digits):
        pairs = make_pairs(digits, 10, seed=1)

        assert list(pairs.columns[:2]) == ["a.px_00", "a.px_01"]
        assert "b.px_63" in pairs.columns
        assert pairs.columns[-1] == "label"
        assert len(pairs.columns) == 2 * 64 + 1

    def test_labels_say_whether_digits_match(self, digits):
        pairs = make_pairs(digits, 400, seed=2)
        features = digits.drop(columns="label").to_numpy()
        # Identify each slot's source row by its pixels (rows with identical pixels share a label).
        label_of = {row.tobytes(): label for row, label in zip(features, digits["label"])}

        a = [label_of[row.tobytes()] for row in pairs.filter(like="a.").to_numpy()]
        b = [label_of[row.tobytes()] for row in pairs.filter(like="b.").to_numpy()]

        assert pairs["label"].tolist() == [int(x == y) for x, y in zip(a, b)]

    def test_equal_fraction_is_exact(self, digits):
        pairs = make_pairs(digits, 301, equal_fraction=0.3, seed=3)

        assert int(pairs["label"].sum()) == round(0.3 * 301)

    def test_same_seed_same_pairs(self, digits):
        first = make_pairs(digits, 50, seed=4)
        second = make_pairs(digits, 50, seed=4)

        assert first.equals(second)

    def test_equal_pairs_use_two_rows(self, digits):
        pairs = make_pairs(digits.iloc[:30], 200, equal_fraction=1.0, seed=5)
        a = pairs.filter(like="a.").to_numpy()
        b = pairs.filter(like="b.").to_numpy()

        # Rows 0-29 of the UCI digits are pairwise distinct, so equal pixels mean the same row.
        assert not np.any(np.all(a == b, axis=1))

    @pytest.mark.parametrize(("rows", "kwargs", "error", "pattern"), [
        (1, {}, EmptyDataError, r"at least two rows, got 1"),
        (100, {"equal_fraction": 1.5}, ConfigError, r"equal_fraction must be in \[0, 1\], got 1.5"),
        (100, {"n_pairs": -1}, ConfigError, r"n_pairs must be >= 0, got -1"),
    ])
    def test_bad_arguments_are_rejected(self, digits, rows, kwargs, error, pattern):
        settings = {"n_pairs": 10, **kwargs}

        with pytest.raises(error, match=pattern):
            make_pairs(digits.iloc[:rows], settings.pop("n_pairs"), **settings)

    def test_one_class_has_no_unequal_pairs(self, digits):
        zeros = digits[digits["label"] == 0]

        with pytest.raises(ConfigError, match=r"All rows have label 0.*set equal_fraction to 1"):
            make_pairs(zeros, 10, equal_fraction=0.5)


class TestChainSettings:
    def write(self, tmp_path, change) -> Path:
        settings = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
        change(settings)
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(settings))
        return path

    def test_project_trains_upstream_first(self):
        order = load_params(PROJECT_ROOT / "params.yaml").training_order()

        assert order.index("vision/digits") < order.index("vision/digit-pairs")

    def test_unknown_upstream_domain_is_rejected(self, tmp_path):
        def change(settings):
            settings["experts"]["vision/digit-pairs"]["upstream"][0]["domain"] = "vision/letters"

        with pytest.raises(ConfigError, match=r"name upstream domains that are not under experts"):
            load_params(self.write(tmp_path, change))

    def test_upstream_cycle_is_rejected(self, tmp_path):
        def change(settings):
            settings["experts"]["vision/digits"]["upstream"] = [{"slot": "x", "domain": "vision/digit-pairs"}]

        with pytest.raises(ConfigError, match=r"form the cycle vision/\S+ -> vision/\S+ -> vision/\S+"):
            load_params(self.write(tmp_path, change))

    def test_pairs_of_unknown_table_are_rejected(self, tmp_path):
        def change(settings):
            settings["prepare"]["pairs"]["digit_pairs"]["of"] = "letters"

        with pytest.raises(ConfigError, match=r"drawn from tables not defined under prepare.datasets"):
            load_params(self.write(tmp_path, change))
