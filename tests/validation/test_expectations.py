"""Tests of the data expectations, run by real Great Expectations, and of the quarantine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mycelium.data import DIGIT_BLOCK_RANGE, DIGIT_COLUMNS, load_penguins, load_uci_digits
from mycelium.errors import ConfigError, DataValidationError, EmptyDataError
from mycelium.validation import expectations as expectations_module
from mycelium.validation import (
    build_expectations,
    list_quarantine,
    quarantine_batch,
    require_valid,
    split_valid_rows,
    validate_frame,
)


@pytest.fixture(scope="module")
def digits() -> pd.DataFrame:
    return load_uci_digits()


@pytest.fixture(scope="module")
def digits_spec(digits) -> dict:
    return build_expectations(digits)


@pytest.fixture()
def digits_batch(digits) -> pd.DataFrame:
    return digits.sample(200, random_state=0)


@pytest.fixture(scope="module")
def penguins() -> pd.DataFrame:
    return load_penguins()


@pytest.fixture(scope="module")
def penguins_spec(penguins) -> dict:
    return build_expectations(penguins)


@pytest.fixture()
def clean_penguins(penguins) -> pd.DataFrame:
    return penguins.dropna().reset_index(drop=True)


class TestBuildExpectations:
    def test_spec_round_trips_json(self, digits_spec):
        assert json.loads(json.dumps(digits_spec, allow_nan=False)) == digits_spec

    def test_spec_records_reference(self, digits_spec):
        assert digits_spec["columns"] == [*DIGIT_COLUMNS, "label"]
        assert digits_spec["features"]["px_00"] == {"min": 0.0, "max": 0.0}
        assert digits_spec["features"]["px_20"] == {"min": 0.0, "max": 16.0}
        assert digits_spec["label_values"] == list(range(10))
        assert digits_spec["min_row_count"] == 1

    def test_margin_widens_bounds(self):
        reference = pd.DataFrame({"x": [1.0, 3.0], "label": [0, 1]})

        spec = build_expectations(reference, range_margin=0.25)

        assert spec["features"]["x"] == {"min": 0.5, "max": 3.5}

    def test_bounds_override_reference(self, digits):
        spec = build_expectations(
            digits, bounds={column: DIGIT_BLOCK_RANGE for column in DIGIT_COLUMNS}
        )

        assert spec["features"]["px_00"] == {"min": 0.0, "max": 16.0}

    def test_bounds_reject_unknown_column(self, digits):
        with pytest.raises(ConfigError, match="'px_99'"):
            build_expectations(digits, bounds={"px_99": (0, 16)})

    def test_missing_values_ignored_for_bounds(self, penguins_spec):
        assert penguins_spec["features"]["body_mass_g"] == {"min": 2700.0, "max": 6300.0}

    def test_text_feature_rejected(self):
        reference = pd.DataFrame({"colour": ["red", "blue"], "label": [0, 1]})

        with pytest.raises(ConfigError, match="'colour'.*object"):
            build_expectations(reference)

    def test_missing_label_column_rejected(self):
        with pytest.raises(ConfigError, match="'label'.*label_column=None"):
            build_expectations(pd.DataFrame({"x": [1.0]}))

    def test_unlabelled_spec_has_no_label(self):
        spec = build_expectations(pd.DataFrame({"x": [1.0, 2.0]}), label_column=None)

        assert spec["columns"] == ["x"]
        assert spec["label_values"] is None

    def test_empty_reference_rejected(self, digits):
        with pytest.raises(EmptyDataError):
            build_expectations(digits.iloc[:0])


class TestValidateFrame:
    def test_good_batch_passes(self, digits_batch, digits_spec):
        report = validate_frame(digits_batch, digits_spec, name="good")

        assert report.success
        assert report.failures == []
        assert report.bad_row_indices == []
        assert report.row_count == 200
        assert "'good'" in report.message()

    def test_out_of_range_names_column_value_fix(self, digits_batch, digits_spec):
        batch = digits_batch.copy()
        batch.iloc[7, batch.columns.get_loc("px_20")] = 99.0

        report = validate_frame(batch, digits_spec, name="spiky")

        assert not report.success
        assert [failure.column for failure in report.failures] == ["px_20"]
        assert report.failures[0].expectation == "expect_column_values_to_be_between"
        assert report.bad_row_indices == [7]
        message = report.message()
        assert "'spiky'" in message
        assert "'px_20'" in message
        assert "99.0" in message
        assert "Fix:" in message

    def test_null_value_fails(self, digits_batch, digits_spec):
        batch = digits_batch.copy()
        batch.iloc[3, batch.columns.get_loc("px_10")] = np.nan

        report = validate_frame(batch, digits_spec, name="holes")

        assert not report.success
        assert report.failures[0].column == "px_10"
        assert report.failures[0].expectation == "expect_column_values_to_not_be_null"
        assert report.bad_row_indices == [3]
        assert "null" in report.message()

    def test_unknown_label_fails(self, clean_penguins, penguins_spec):
        batch = clean_penguins.copy()
        batch.loc[5, "label"] = 7

        report = validate_frame(batch, penguins_spec, name="labels")

        assert not report.success
        assert report.failures[0].expectation == "expect_column_values_to_be_in_set"
        assert report.bad_row_indices == [5]
        assert ": 7 " in report.message()

    def test_missing_column_named(self, digits_batch, digits_spec):
        batch = digits_batch.drop(columns=["px_33"])

        report = validate_frame(batch, digits_spec, name="narrow")

        assert not report.success
        assert len(report.failures) == 1
        assert report.failures[0].column is None
        assert "missing columns ['px_33']" in report.failures[0].observed
        assert report.bad_row_indices == []

    def test_extra_column_named(self, clean_penguins, penguins_spec):
        batch = clean_penguins.assign(island_code=1.0)

        report = validate_frame(batch, penguins_spec, name="wide")

        assert not report.success
        assert "unexpected columns ['island_code']" in report.message()

    def test_text_column_fails_type_check(self, clean_penguins, penguins_spec):
        batch = clean_penguins.copy()
        batch["body_mass_g"] = batch["body_mass_g"].astype(str)

        report = validate_frame(batch, penguins_spec, name="text")

        expectations = {failure.expectation for failure in report.failures}
        assert "expect_column_values_to_be_in_type_list" in expectations
        assert all(not failure.row_level for failure in report.failures)
        assert "pd.to_numeric" in report.message()

    @pytest.mark.parametrize(
        ("dtype", "accepted"),
        [("float32", True), ("int64", True), ("Int64", True), ("Float64", True),
         ("bool", False), ("object", False)],
    )  # fmt: skip
    def test_numeric_type_check(self, dtype, accepted):
        reference = pd.DataFrame({"x": [0.0, 1.0, 1.0], "label": [0, 1, 0]})
        spec = build_expectations(reference)
        batch = reference.assign(x=reference["x"].astype(dtype))

        report = validate_frame(batch, spec, name=f"as {dtype}")

        assert report.success is accepted
        if not accepted:
            assert "expect_column_values_to_be_in_type_list" in report.message()

    def test_empty_frame_raises(self, digits_spec, digits):
        with pytest.raises(EmptyDataError, match="'nothing'"):
            validate_frame(digits.iloc[:0], digits_spec, name="nothing")

    def test_rows_by_position_and_label(self, clean_penguins, penguins_spec):
        batch = clean_penguins.copy()
        batch.index = batch.index + 1000
        batch.iloc[2, 0] = -5.0

        report = validate_frame(batch, penguins_spec, name="shifted")

        assert report.bad_row_indices == [2]
        assert "(rows with index 1002)" in report.message()

    def test_malformed_spec_rejected(self, clean_penguins):
        with pytest.raises(ConfigError, match="build_expectations"):
            validate_frame(clean_penguins, {"columns": []}, name="odd")

    def test_gx_writes_no_files(self, tmp_path, monkeypatch, clean_penguins, penguins_spec):
        monkeypatch.chdir(tmp_path)
        fresh_spec = build_expectations(clean_penguins, range_margin=0.1)

        validate_frame(clean_penguins, fresh_spec, name="files")

        assert list(tmp_path.iterdir()) == []
        assert os.environ["GX_ANALYTICS_ENABLED"] == "false"

    def test_evicted_suite_rebuilt(self, monkeypatch, clean_penguins, penguins_spec):
        monkeypatch.setattr(expectations_module, "_MAX_CACHED_SUITES", 1)
        other_spec = build_expectations(clean_penguins, range_margin=0.5)

        first = validate_frame(clean_penguins, penguins_spec, name="first")
        other = validate_frame(clean_penguins, other_spec, name="other")
        again = validate_frame(clean_penguins, penguins_spec, name="again")

        assert first.success
        assert other.success
        assert again.success
        assert len(expectations_module._compiled) == 1


class TestSpecColumns:
    def test_other_columns_are_left_out(self, digits_spec, digits_batch):
        batch = digits_batch.assign(id=np.arange(len(digits_batch)), note="desk 3")

        rows, spec = expectations_module.spec_columns(batch, digits_spec)

        assert list(rows.columns) == digits_spec["columns"]
        assert spec is digits_spec

    def test_unlabelled_rows_drop_label_checks(self, digits_spec, digits_batch):
        rows, spec = expectations_module.spec_columns(digits_batch.drop(columns=["label", "px_05"]), digits_spec)

        assert "label" not in rows.columns
        assert spec["label_column"] is None
        assert "px_05" in spec["columns"]
        assert "px_05" not in rows.columns
        assert not validate_frame(rows, spec, name="missing-px_05").success


class TestGates:
    def test_require_valid_returns_good_batch(self, digits_batch, digits_spec, tmp_path):
        result = require_valid(digits_batch, digits_spec, name="ok", quarantine_dir=tmp_path)

        assert result is digits_batch
        assert list_quarantine(tmp_path) == []

    def test_require_valid_quarantines_whole_batch(self, digits_batch, digits_spec, tmp_path):
        batch = digits_batch.copy()
        batch.iloc[0, 20] = -1.0

        with pytest.raises(DataValidationError) as caught:
            require_valid(batch, digits_spec, name="bad batch", quarantine_dir=tmp_path)

        folder = Path(caught.value.quarantine_path)
        assert folder.parent == tmp_path
        assert str(folder) in str(caught.value)
        assert "'px_20'" in str(caught.value)
        stored = pd.read_parquet(folder / "batch.parquet")
        pd.testing.assert_frame_equal(stored, batch)
        reason = json.loads((folder / "reason.json").read_text())
        assert reason["name"] == "bad batch"
        assert reason["row_count"] == 200
        assert "px_20" in reason["reason"]

    def test_require_valid_empty_raises(self, digits, digits_spec, tmp_path):
        with pytest.raises(EmptyDataError):
            require_valid(digits.iloc[:0], digits_spec, name="none", quarantine_dir=tmp_path)

    def test_split_quarantines_only_null_rows(self, penguins, penguins_spec, tmp_path):
        valid, report = split_valid_rows(
            penguins, penguins_spec, name="penguins", quarantine_dir=tmp_path
        )

        assert report.bad_row_indices == [3, 271]
        assert len(valid) == 342
        assert valid.notna().all(axis=None)
        assert 3 not in valid.index
        entries = list_quarantine(tmp_path)
        assert len(entries) == 1
        stored = pd.read_parquet(Path(entries[0]["path"]) / "batch.parquet")
        assert list(stored.index) == [3, 271]
        assert entries[0]["row_count"] == 2

    def test_split_clean_batch_untouched(self, clean_penguins, penguins_spec, tmp_path):
        valid, report = split_valid_rows(
            clean_penguins, penguins_spec, name="clean", quarantine_dir=tmp_path
        )

        assert report.success
        assert valid is clean_penguins
        assert list_quarantine(tmp_path) == []

    def test_split_missing_column_raises(self, clean_penguins, penguins_spec, tmp_path):
        batch = clean_penguins.drop(columns=["bill_depth_mm"])

        with pytest.raises(DataValidationError, match="bill_depth_mm") as caught:
            split_valid_rows(batch, penguins_spec, name="narrow", quarantine_dir=tmp_path)

        stored = pd.read_parquet(Path(caught.value.quarantine_path) / "batch.parquet")
        assert len(stored) == len(batch)

    def test_split_all_rows_bad_raises(self, clean_penguins, penguins_spec, tmp_path):
        batch = clean_penguins.head(3).assign(bill_length_mm=np.nan)

        with pytest.raises(EmptyDataError) as caught:
            split_valid_rows(batch, penguins_spec, name="all bad", quarantine_dir=tmp_path)

        assert caught.value.quarantine_path is not None


class TestQuarantine:
    def test_same_name_never_overwrites(self, tmp_path):
        frame = pd.DataFrame({"x": [1.0, 2.0]})

        first = quarantine_batch(frame, name="dup", reason="one", quarantine_dir=tmp_path)
        second = quarantine_batch(frame, name="dup", reason="two", quarantine_dir=tmp_path)

        assert first != second
        assert [entry["reason"] for entry in list_quarantine(tmp_path)] == ["one", "two"]

    def test_name_made_safe(self, tmp_path):
        frame = pd.DataFrame({"x": [1.0]})

        folder = quarantine_batch(frame, name="../up/and away", reason="r", quarantine_dir=tmp_path)

        assert folder.parent == tmp_path
        assert folder.name.endswith("-up_and_away")

    def test_malformed_batch_still_kept(self, tmp_path):
        frame = pd.DataFrame([[1.0, "a", 3.0], [2.0, 5.0, None]], columns=[0, "mixed", 0])

        folder = quarantine_batch(frame, name="odd", reason="r", quarantine_dir=tmp_path)

        stored = pd.read_parquet(folder / "batch.parquet")
        assert len(stored) == 2
        reason = json.loads((folder / "reason.json").read_text())
        assert reason["columns"] == ["0", "mixed", "0"]
        assert reason["columns_written_as_text"] == ["mixed"]

    def test_no_staging_folder_left(self, tmp_path):
        quarantine_batch(pd.DataFrame({"x": [1.0]}), name="b", reason="r", quarantine_dir=tmp_path)

        assert [path.name.startswith(".") for path in tmp_path.iterdir()] == [False]

    def test_listing_missing_folder_is_empty(self, tmp_path):
        assert list_quarantine(tmp_path / "absent") == []
