"""The `mycelium` command on a real deployment in tmp_path: help, route, rollback, train-patch, errors."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mycelium.cli import NOTHING_ROUTED, ROWS_FAILED, main
from mycelium.config import load_params
from mycelium.experts.fitting import chain_features
from mycelium.routing.tags import safe_name
from mycelium.system import Mycelium

from conftest import PAIR_INPUTS, PAIRS_DOMAIN

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOMAIN = "vision/digits"
# A second domain served by a copy of the digits CNN, so that one file can mix two domains.
COPY_DOMAIN = "vision/digits-copy"
PAIRS = PAIRS_DOMAIN
FIRST_HOT_COPY = f"models/{safe_name(DOMAIN)}/v0001"
SUBCOMMANDS = ["status", "history", "sweep", "remember", "route", "rollback", "train-patch"]


@pytest.fixture
def project(tmp_path, digits_cnn, uci_digits) -> Path:
    """A project folder with params.yaml (3 patch epochs) and the digits CNN registered as vision/digits.

    Three epochs leave a patch's held-out gain near zero, and its sign varies, so the accuracy
    gate is off unless a test sets ``patch.min_accuracy_gain``.
    """
    settings = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    settings["patch"]["epochs"] = 3
    settings["patch"]["min_accuracy_gain"] = -1.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    system = Mycelium(load_params(tmp_path / "params.yaml"))
    system.register(copy.deepcopy(digits_cnn), tags=[DOMAIN], reference=uci_digits.train, reason="trained on UCI digits")
    return tmp_path


@pytest.fixture
def two_domain_project(project, digits_cnn, uci_digits) -> Path:
    """``project`` with a copy of the digits CNN registered as a second domain, COPY_DOMAIN."""
    subgraph = copy.deepcopy(digits_cnn)
    subgraph.domain = COPY_DOMAIN
    system_of(project).register(subgraph, tags=[COPY_DOMAIN], reference=uci_digits.train, reason="second domain")
    return project


@pytest.fixture
def chained_project(project, digits_cnn, pair_expert, pair_plan, digit_pairs) -> Path:
    """``project`` with the chained vision/digit-pairs registered over vision/digits."""
    reference = chain_features(pair_plan, digit_pairs.train, {DOMAIN: digits_cnn}.__getitem__)
    system_of(project).register(copy.deepcopy(pair_expert), tags=[PAIRS], reference=reference, reason="pairs",
                                upstream=PAIR_INPUTS)
    return project


def run(project: Path, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--params", str(project / "params.yaml"), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert re.search(pattern, lines[0]), lines[0]


def system_of(project: Path) -> Mycelium:
    return Mycelium(load_params(project / "params.yaml"))


@pytest.mark.parametrize("command", [[], *([name] for name in SUBCOMMANDS)])
def test_help_exits_zero(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])

    assert exited.value.code == 0
    assert f"usage: mycelium {' '.join(command)}".strip() in capsys.readouterr().out


def test_console_script_runs():
    script = Path(sys.executable).parent / "mycelium"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mycelium.cli"]

    finished = subprocess.run([*command, "route", "--help"], capture_output=True, text=True, timeout=120)

    assert finished.returncode == 0
    assert "--tag-column" in finished.stdout


def test_verbose_hides_great_expectations_info(project, uci_digits):
    rows = uci_digits.test.iloc[:10].copy()
    rows.loc[rows.index[3], "px_20"] = 99.0
    rows.to_csv(project / "batch.csv", index=False)
    script = Path(sys.executable).parent / "mycelium"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mycelium.cli"]

    finished = subprocess.run([*command, "--params", str(project / "params.yaml"), "-v", "route",
                               str(project / "batch.csv"), "--tag", DOMAIN, "--no-progress"],
                              capture_output=True, text=True, timeout=300)

    assert finished.returncode == ROWS_FAILED
    assert "INFO mycelium.validation.quarantine: Quarantined batch" in finished.stderr
    assert "great_expectations" not in finished.stderr


@pytest.mark.parametrize(
    ("pinned", "pattern"),
    [
        ([], r"kept vision/digits hot: last used \d+ s ago, within cold_storage\.max_idle_s=18000 s, and the hot "
             r"set of \d+ bytes fits cold_storage\.hot_budget_bytes=4000000"),
        ([DOMAIN], r"kept vision/digits hot: pinned in the routing table or in cold_storage\.pinned"),
    ],
)
def test_sweep_says_why_domains_stay(project, capsys, pinned, pattern):
    settings = yaml.safe_load((project / "params.yaml").read_text())
    settings["cold_storage"]["pinned"] = pinned
    (project / "params.yaml").write_text(yaml.safe_dump(settings))

    code, out, _ = run(project, capsys, "sweep")

    lines = out.strip().splitlines()
    assert code == 0
    assert lines[0] == "nothing to sweep"
    assert re.fullmatch(pattern, lines[1]), lines[1]


class TestRoute:
    def test_csv_with_tag_column(self, project, capsys, uci_digits):
        rows = uci_digits.test.iloc[:50]
        tags = ["vision/digits/uci" if i % 2 else "" for i in range(len(rows))]
        rows.assign(tag=tags).to_csv(project / "batch.csv", index=False)

        code, out, err = run(project, capsys, "route", str(project / "batch.csv"), "--no-progress")

        assert (code, err) == (0, "")
        result = pd.read_csv(project / "batch.predictions.csv")
        assert list(result.columns) == ["row", "tag", "label", "prediction", "domain", "version", "depth", "stages", "route",
                                        "error", "quarantine"]
        assert result["error"].isna().all()
        assert result["row"].tolist() == list(range(50))
        assert result["label"].tolist() == rows["label"].tolist()
        expected = system_of(project).subgraph(DOMAIN).predict(rows).labels
        assert result["prediction"].tolist() == expected.tolist()
        assert set(result["domain"]) == {DOMAIN}
        assert set(result["version"]) == {1}
        assert result["route"][1].startswith("tag 'vision/digits/uci' -> registered tag 'vision/digits'")
        assert result["route"][0].startswith("inferred: 'vision/digits' accepts")
        assert out.strip() == f"wrote 50 rows to {project / 'batch.predictions.csv'}: 50 rows -> {DOMAIN}"

    def test_parquet_with_tag_option(self, project, capsys, uci_digits):
        rows = uci_digits.test.iloc[:30].drop(columns=["label"])
        rows.to_parquet(project / "batch.parquet", index=False)
        output = project / "out" / "predicted.parquet"

        code, _, err = run(project, capsys, "route", str(project / "batch.parquet"), "--tag", "vision/digits/uci",
                           "-o", str(output), "--batch-size", "7")

        assert (code, err) == (0, "")
        result = pd.read_parquet(output)
        assert list(result.columns) == ["row", "prediction", "domain", "version", "depth", "stages", "route", "error",
                                        "quarantine"]
        expected = system_of(project).subgraph(DOMAIN).predict(rows).labels
        assert result["prediction"].tolist() == expected.tolist()
        uses = system_of(project).controller.domain(DOMAIN).locality.uses
        assert uses == 30

    def test_unaccepted_rows_have_no_prediction(self, project, capsys, uci_digits):
        rows = uci_digits.test.iloc[:20].copy()
        rows.loc[rows.index[10:], rows.columns != "label"] = 16.0
        rows.assign(tag=["vision/digits"] * 10 + [""] * 10).to_csv(project / "batch.csv", index=False)

        code, out, err = run(project, capsys, "route", str(project / "batch.csv"), "--no-validate")

        assert code == ROWS_FAILED
        result = pd.read_csv(project / "batch.predictions.csv")
        assert result["prediction"].isna().tolist() == [False] * 10 + [True] * 10
        assert result["route"][15].startswith("unrouted: ")
        assert result["error"].isna().tolist() == [True] * 10 + [False] * 10
        assert result["error"][15] == result["route"][15]
        assert result["quarantine"][:10].isna().all()
        folder = result["quarantine"][15]
        assert set(result["quarantine"][10:]) == {folder}
        assert folder in result["error"][15]
        assert len(pd.read_parquet(Path(folder) / "batch.parquet")) == 10
        assert "10 rows -> vision/digits, 10 rows accepted by no domain" in out
        assert err.startswith("warning: 10 rows of ")

    @pytest.mark.parametrize(
        ("make_file", "extra", "pattern"),
        [
            (lambda d, rows: d / "missing.csv", [], r"Data file .*missing\.csv not found; check the path"),
            (lambda d, rows: _write(d / "rows.txt", "a,b\n1,2\n"), [], r"suffix '\.txt'; use one of \.csv"),
            (lambda d, rows: _write(d / "rows.parquet", "not parquet"), [], r"Cannot read .*rows\.parquet"),
            (lambda d, rows: _write(d / "empty.csv", "px_00,label\n"), [], r"empty\.csv has no rows"),
            (lambda d, rows: _csv(d, rows.assign(tag="vision/digits")), ["--tag", "vision/digits"],
             r"has a 'tag' column and --tag was given"),
            (lambda d, rows: _csv(d, rows), ["--tag", "audio/speech"],
             r"row 0 and 4 more rows tagged 'audio/speech'.*registered tags: \['vision/digits'\]\. Pass a registered "
             r"tag with --tag, or omit --tag to route the rows by domain inference\.$"),
            (lambda d, rows: _csv(d, rows.assign(tag=7)), [], r"Tag 7 in column 'tag' \(row with index 0\) is int, not text"),
            (lambda d, rows: _csv(d, rows), ["--tag", ""],
             r"--tag '' is empty; pass a tag such as vision/digits, or omit --tag to route untagged rows"),
            (lambda d, rows: _csv(d, rows.drop(columns=["px_00"])), ["--tag", "vision/digits"],
             r"missing columns \['px_00'\] that domain 'vision/digits' needs; add them"),
            (lambda d, rows: _csv(d, rows.rename(columns={"px_00": "pixel_00"})), ["--tag", "vision/digits"],
             r"missing columns \['px_00'\] that domain 'vision/digits' needs, and has columns \['pixel_00'\] that "
             r"are not its inputs"),
            (lambda d, rows: _csv(d, rows.assign(source="vision/digits")), ["--tag-column", "sources"],
             r"has no --tag-column column 'sources'; its columns are px_00, px_01, .* and 58 more\."),
            (lambda d, rows: _csv(d, rows), ["--tag", "vision//digits"], r"Invalid tag 'vision//digits'"),
            (lambda d, rows: _csv(d, rows), ["--tag", "vision/digits", "-o", "out.json"],
             r"output file out\.json has suffix '\.json'"),
            (lambda d, rows: _csv(d, rows), ["--tag", "vision/digits", "-o", "{project}/rows.csv"],
             r"output file .*rows\.csv is the input file; pass another path with -o"),
            (lambda d, rows: _csv(d, rows), ["--tag", "vision/digits", "-o", "{project}"],
             r"output file .* has suffix ''"),
        ],
    )
    def test_bad_input_is_one_line(self, project, capsys, uci_digits, make_file, extra, pattern):
        path = make_file(project, uci_digits.test.iloc[:5])
        before = path.read_bytes() if path.exists() else None
        extra = [argument.format(project=project) for argument in extra]

        code, out, err = run(project, capsys, "route", str(path), "--no-progress", *extra)

        assert_one_line_error(code, err, pattern)
        assert out == ""
        assert (path.read_bytes() if path.exists() else None) == before

    def test_hard_link_to_input_is_rejected(self, project, capsys, uci_digits):
        path = _csv(project, uci_digits.test.iloc[:5])
        before = path.read_bytes()
        os.link(path, project / "linked.csv")

        code, _, err = run(project, capsys, "route", str(path), "--tag", "vision/digits", "-o", str(project / "linked.csv"))

        assert_one_line_error(code, err, r"output file .*linked\.csv is the input file")
        assert path.read_bytes() == before

    def test_output_under_a_file_is_rejected(self, project, capsys, uci_digits):
        path = _csv(project, uci_digits.test.iloc[:5])

        code, _, err = run(project, capsys, "route", str(path), "--tag", "vision/digits", "-o", str(path / "out.csv"))

        assert_one_line_error(code, err, r"cannot be created because .*rows\.csv is a file")
        assert system_of(project).controller.domain(DOMAIN).locality.uses == 0

    def test_output_folder_is_rejected(self, project, capsys, uci_digits):
        path = _csv(project, uci_digits.test.iloc[:5])
        (project / "out.csv").mkdir()

        code, _, err = run(project, capsys, "route", str(path), "--tag", "vision/digits", "-o", str(project / "out.csv"))

        assert_one_line_error(code, err, r"output file .*out\.csv is a folder; pass a file path")

    def test_invalid_values_are_quarantined(self, project, capsys, uci_digits):
        rows = uci_digits.test.iloc[:5].copy()
        rows.loc[rows.index[2], "px_20"] = 99.0
        rows.to_csv(project / "batch.csv", index=False)

        code, _, err = run(project, capsys, "route", str(project / "batch.csv"), "--tag", "vision/digits")

        result = pd.read_csv(project / "batch.predictions.csv")
        assert code == ROWS_FAILED
        assert result["prediction"].isna().all()
        assert result["error"][0].startswith("Batch 'vision/digits:batch-rows-0-4' (5 rows) failed 1 expectation(s)")
        assert "column 'px_20'" in result["error"][0]
        quarantined = pd.read_parquet(Path(result["quarantine"][0]) / "batch.parquet")
        pd.testing.assert_frame_equal(quarantined, rows.reset_index(drop=True))
        assert err.startswith("error: 5 of 5 rows failed validation or routing (rows 0-4)")

    @pytest.mark.parametrize(
        ("column", "row", "value", "expected"),
        [
            ("px_20", 25, "abc", ["1 of 30 rows are not numbers: 'abc' (rows with index 25)",
                                  "Fix: Replace those values of 'px_20' with numbers"]),
            ("label", 7, "x", ["1 of 30 rows not in ", ": 'x' (rows with index 7)", "The column is text (object)"]),
        ],
    )
    def test_text_cell_named_with_row(self, project, capsys, uci_digits, column, row, value, expected):
        rows = uci_digits.test.iloc[:30].astype({column: object})
        rows.loc[rows.index[row], column] = value
        rows.to_csv(project / "batch.csv", index=False)

        code, _, err = run(project, capsys, "route", str(project / "batch.csv"), "--tag", DOMAIN, "--fail-fast",
                           "--no-progress")

        column_lines = [line for line in err.splitlines() if f"column {column!r}" in line]
        assert code == 2
        assert len(column_lines) == 1, err
        for part in expected:
            assert part in column_lines[0]

    def test_column_failures_share_one_line(self, project, capsys, uci_digits):
        rows = uci_digits.test.iloc[:10].copy()
        rows.loc[rows.index[3], "px_10"] = 99.0
        rows.loc[rows.index[4], "px_10"] = np.nan
        rows.to_csv(project / "batch.csv", index=False)

        code, _, err = run(project, capsys, "route", str(project / "batch.csv"), "--tag", DOMAIN, "--fail-fast",
                           "--no-progress")

        column_lines = [line for line in err.splitlines() if "column 'px_10'" in line]
        assert code == 2
        assert len(column_lines) == 1, err
        assert "1 of 10 rows are null (rows with index 4)" in column_lines[0]
        assert "1 of 10 rows outside [0.0, 16.0]: 99.0 (rows with index 3)" in column_lines[0]

    def test_failed_batches_keep_every_row(self, project, capsys, uci_digits):
        rows = uci_digits.test.iloc[:50].assign(tag=DOMAIN, source="scanner-2")
        rows.loc[rows.index[12], "px_20"] = 99.0
        rows.loc[rows.index[30:40], "tag"] = "audio/speech"
        rows.to_csv(project / "batch.csv", index=False)

        code, out, err = run(project, capsys, "route", str(project / "batch.csv"), "--batch-size", "10",
                             "--no-progress")

        result = pd.read_csv(project / "batch.predictions.csv")
        failed = result["prediction"].isna().to_numpy()
        assert code == ROWS_FAILED
        assert result["row"].tolist() == list(range(50))
        assert failed.tolist() == [False] * 10 + [True] * 10 + [False] * 10 + [True] * 10 + [False] * 10
        expected = system_of(project).subgraph(DOMAIN).predict(rows.iloc[~failed]).labels
        assert result["prediction"][~failed].tolist() == expected.tolist()
        assert result["error"][~failed].isna().all()
        assert "(rows with index 12)" in result["error"][10]
        assert "tagged 'audio/speech'" in result["error"][30]
        for first, last in [(10, 19), (30, 39)]:
            folder = Path(result["quarantine"][first])
            assert set(result["quarantine"][first : last + 1]) == {str(folder)}
            quarantined = pd.read_parquet(folder / "batch.parquet")
            pd.testing.assert_frame_equal(quarantined, rows.reset_index(drop=True).iloc[first : last + 1])
        assert len(list(system_of(project).params.paths.quarantine.iterdir())) == 2
        assert out.strip().endswith(f": 30 rows -> {DOMAIN}, 20 rows failed")
        lines = err.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("error: 20 of 50 rows failed validation or routing (rows 10-19, 30-39)")
        assert str(result["quarantine"][30]) in lines[0]
        assert "route each again with `mycelium route FOLDER/batch.parquet -o OUTPUT`" in lines[0]

    def test_invalid_domain_part_fails_alone(self, two_domain_project, capsys, uci_digits):
        tags = ([DOMAIN] * 5 + [COPY_DOMAIN] * 5) * 2
        rows = uci_digits.test.iloc[:20].assign(tag=tags)
        rows.loc[rows.index[7], "px_20"] = 99.0
        rows.to_csv(two_domain_project / "batch.csv", index=False)

        code, out, err = run(two_domain_project, capsys, "route", str(two_domain_project / "batch.csv"),
                             "--no-progress")

        result = pd.read_csv(two_domain_project / "batch.predictions.csv")
        failed = result["prediction"].isna().to_numpy()
        assert code == ROWS_FAILED
        assert failed.tolist() == [tag == COPY_DOMAIN for tag in tags]
        expected = system_of(two_domain_project).subgraph(DOMAIN).predict(rows.iloc[~failed]).labels
        assert result["prediction"][~failed].tolist() == expected.tolist()
        assert result["error"][~failed].isna().all()
        assert result["quarantine"][~failed].isna().all()
        assert result["error"][failed].str.startswith(f"Batch '{COPY_DOMAIN}:batch-rows-0-19' (10 rows)").all()
        assert "(rows with index 7)" in result["error"][5]
        folders = set(result["quarantine"][failed])
        assert len(folders) == 1
        quarantined = pd.read_parquet(Path(folders.pop()) / "batch.parquet")
        pd.testing.assert_frame_equal(quarantined, pd.read_csv(two_domain_project / "batch.csv").iloc[failed])
        assert len(list(system_of(two_domain_project).params.paths.quarantine.iterdir())) == 1
        assert out.strip().endswith(f": 10 rows -> {DOMAIN}, 10 rows failed")
        assert err.startswith("error: 10 of 20 rows failed validation or routing (rows 5-9, 15-19)")

    def test_fail_fast_stops_at_failed_part(self, two_domain_project, capsys, uci_digits):
        tags = [DOMAIN] * 10 + ([DOMAIN] * 5 + [COPY_DOMAIN] * 5) + [DOMAIN] * 10
        rows = uci_digits.test.iloc[:30].assign(tag=tags)
        rows.loc[rows.index[17], "px_20"] = 99.0
        rows.to_csv(two_domain_project / "batch.csv", index=False)

        code, _, err = run(two_domain_project, capsys, "route", str(two_domain_project / "batch.csv"),
                           "--batch-size", "10", "--fail-fast", "--no-progress")

        lines = err.strip().splitlines()
        result = pd.read_csv(two_domain_project / "batch.predictions.csv")
        assert code == 2
        assert lines[0].startswith(f"error: Batch '{COPY_DOMAIN}:batch-rows-10-19' (5 rows) failed")
        assert "(rows with index 17)" in err
        assert lines[-1].endswith("rows 10 to 29 were not written. Fix the rows above, then route rows 10 to 29 again.")
        assert result["row"].tolist() == list(range(10))
        assert result["prediction"].notna().all()
        assert len(list(system_of(two_domain_project).params.paths.quarantine.iterdir())) == 1

    def test_fail_fast_stops_at_unrouted_rows(self, project, capsys, uci_digits):
        rows = uci_digits.test.iloc[:30].copy()
        rows.loc[rows.index[10:20], rows.columns != "label"] = 16.0
        rows.assign(tag=[DOMAIN] * 10 + [""] * 10 + [DOMAIN] * 10).to_csv(project / "batch.csv", index=False)

        code, _, err = run(project, capsys, "route", str(project / "batch.csv"), "--batch-size", "10", "--no-validate",
                           "--fail-fast", "--no-progress")

        lines = err.strip().splitlines()
        result = pd.read_csv(project / "batch.predictions.csv")
        assert code == 2
        assert lines[0].startswith("error: 10 rows of batch 'batch-rows-10-19' are accepted by no domain, first row 10")
        assert lines[1].startswith("Rows 10 to 19 are kept in ")
        assert lines[2].startswith("Rows 0 to 9 were written to ")
        assert result["row"].tolist() == list(range(10))
        assert result["prediction"].notna().all()
        folder = Path(lines[1].removeprefix("Rows 10 to 19 are kept in ").rstrip("."))
        assert len(pd.read_parquet(folder / "batch.parquet")) == 10

    def test_text_cell_fails_only_its_batch(self, project, capsys, uci_digits):
        rows = uci_digits.test.iloc[:30].astype({"px_20": object})
        rows.loc[rows.index[25], "px_20"] = "abc"
        rows.to_csv(project / "batch.csv", index=False)

        code, out, err = run(project, capsys, "route", str(project / "batch.csv"), "--tag", DOMAIN,
                             "--batch-size", "10", "--no-progress")

        result = pd.read_csv(project / "batch.predictions.csv")
        assert code == ROWS_FAILED
        assert result["prediction"].isna().tolist() == [False] * 20 + [True] * 10
        assert "'abc'" in result["error"][20]
        quarantined = pd.read_parquet(Path(result["quarantine"][20]) / "batch.parquet")
        assert quarantined["px_20"].tolist()[5] == "abc"
        assert out.strip().endswith(f": 20 rows -> {DOMAIN}, 10 rows failed")
        assert "(rows 20-29)" in err
        assert f"`mycelium route {result['quarantine'][20]}/batch.parquet -o OUTPUT --tag {DOMAIN}`" in err

    def test_unvalidated_nan_batch_is_quarantined(self, project, capsys, uci_digits):
        rows = uci_digits.test.iloc[:30].copy()
        rows.loc[rows.index[14], "px_07"] = np.nan
        rows.loc[rows.index[20], "px_08"] = np.inf
        rows.to_parquet(project / "batch.parquet")

        code, out, err = run(project, capsys, "route", str(project / "batch.parquet"), "--tag", DOMAIN,
                             "--batch-size", "10", "--no-validate", "--no-progress")

        result = pd.read_parquet(project / "batch.predictions.parquet")
        assert code == ROWS_FAILED
        assert result["prediction"].isna().tolist() == [False] * 10 + [True] * 20
        assert "first nan in column 'px_07' (rows with index 14)" in result["error"][10]
        assert "first inf in column 'px_08' (rows with index 20)" in result["error"][20]
        quarantined = pd.read_parquet(Path(result["quarantine"][10]) / "batch.parquet")
        assert len(quarantined) == 10
        assert np.isnan(quarantined["px_07"].iloc[4])
        assert err.startswith("error: 20 of 30 rows could not be routed or predicted (rows 10-19, 20-29)")

    def test_unwritable_output_fails_first(self, project, capsys, uci_digits):
        uci_digits.test.iloc[:10].to_csv(project / "batch.csv", index=False)

        code, _, err = run(project, capsys, "route", str(project / "batch.csv"), "--tag", DOMAIN,
                           "-o", "/proc/mycelium-test/out.csv", "--no-progress")

        assert code == 2
        assert err.startswith("error: The output file /proc/mycelium-test/out.csv cannot be written")
        assert "pass a path in a folder you can write to" in err
        assert system_of(project).controller.domain(DOMAIN).locality.uses == 0

    def test_quarantined_batch_routes_again(self, project, capsys, uci_digits):
        rows = uci_digits.test.iloc[:10].assign(tag="audio/speech")
        rows.to_csv(project / "batch.csv", index=False)
        run(project, capsys, "route", str(project / "batch.csv"), "--no-progress")
        folder = Path(pd.read_csv(project / "batch.predictions.csv")["quarantine"][0])
        fixed = pd.read_parquet(folder / "batch.parquet").assign(tag=DOMAIN)
        fixed.to_parquet(folder / "batch.parquet")

        code, _, err = run(project, capsys, "route", str(folder / "batch.parquet"), "-o", str(project / "again.csv"),
                           "--no-progress")

        assert (code, err) == (0, "")
        assert pd.read_csv(project / "again.csv")["prediction"].notna().all()

    def test_quarantined_rows_keep_file_row_numbers(self, project, capsys, uci_digits):
        rows = uci_digits.test.iloc[:30].copy()
        rows.loc[rows.index[25], "px_20"] = 99.0
        rows.to_csv(project / "batch.csv", index=False)
        run(project, capsys, "route", str(project / "batch.csv"), "--tag", DOMAIN, "--batch-size", "10",
            "--no-progress")
        folder = Path(pd.read_csv(project / "batch.predictions.csv")["quarantine"][20])

        code, _, err = run(project, capsys, "route", str(folder / "batch.parquet"), "--tag", DOMAIN, "-o",
                           str(project / "again.csv"), "--batch-size", "4", "--no-progress")

        result = pd.read_csv(project / "again.csv")
        assert code == ROWS_FAILED
        assert result["row"].tolist() == list(range(20, 30))
        assert result["prediction"].isna().tolist() == [False] * 4 + [True] * 4 + [False] * 2
        assert result["error"][4].startswith("Batch 'vision/digits:batch-rows-24-27' (4 rows)")
        assert "(rows with index 25)" in result["error"][4]
        assert err.startswith("error: 4 of 10 rows failed validation or routing (rows 24-27)")
        code, _, err = run(project, capsys, "route", str(folder / "batch.parquet"), "--tag", DOMAIN, "-o",
                           str(project / "again.csv"), "--batch-size", "4", "--fail-fast", "--no-progress")
        assert code == 2
        assert err.strip().splitlines()[-1].endswith("rows 24 to 29 were not written. Fix the rows above, then route "
                                                     "rows 24 to 29 again.")
        assert pd.read_csv(project / "again.csv")["row"].tolist() == [20, 21, 22, 23]

    def test_fail_fast_writes_rows_routed_before(self, project, capsys, uci_digits):
        rows = uci_digits.test.iloc[:40].copy()
        rows.loc[rows.index[25], "px_20"] = 99.0
        rows.to_csv(project / "batch.csv", index=False)

        code, _, err = run(project, capsys, "route", str(project / "batch.csv"), "--tag", "vision/digits",
                           "--batch-size", "10", "--fail-fast", "--no-progress")

        result = pd.read_csv(project / "batch.predictions.csv")
        assert code == 2
        assert "(rows with index 25)" in err
        assert result["row"].tolist() == list(range(20))
        assert result["prediction"].notna().all()
        lines = err.strip().splitlines()
        assert lines[-2].startswith("All 10 rows of 'vision/digits:batch-rows-20-29' were quarantined in ")
        assert lines[-1].startswith("Rows 0 to 19 were written to ")
        assert lines[-1].endswith("rows 20 to 39 were not written. Fix the rows above, then route rows 20 to 39 again.")

    def test_fail_fast_first_batch_replaces_output(self, project, capsys, uci_digits):
        rows = uci_digits.test.iloc[:10].copy()
        rows.to_csv(project / "batch.csv", index=False)
        assert run(project, capsys, "route", str(project / "batch.csv"), "--tag", DOMAIN, "--no-progress")[0] == 0
        rows.loc[rows.index[5], "px_20"] = 99.0
        rows.to_csv(project / "batch.csv", index=False)

        code, _, err = run(project, capsys, "route", str(project / "batch.csv"), "--tag", DOMAIN,
                           "--fail-fast", "--no-progress")

        lines = err.strip().splitlines()
        assert code == 2
        assert lines[-2].startswith("All 10 rows of 'vision/digits:batch-rows-0-9' were quarantined in ")
        assert lines[-1].endswith("batch.predictions.csv was written without rows, because the run stopped in its "
                                  "first batch. Fix the rows above, then route the file again.")
        assert len(pd.read_csv(project / "batch.predictions.csv")) == 0

    def test_fail_fast_names_kept_rows(self, project, capsys, uci_digits):
        uci_digits.test.iloc[:10].assign(tag="audio/speech").to_csv(project / "batch.csv", index=False)

        code, _, err = run(project, capsys, "route", str(project / "batch.csv"), "--fail-fast", "--no-progress")

        lines = err.strip().splitlines()
        assert code == 2
        assert lines[0].startswith("error: Cannot route row 0 and 9 more rows tagged 'audio/speech'")
        assert lines[1].startswith("Rows 0 to 9 are kept in ")
        quarantined = pd.read_parquet(Path(lines[1].removeprefix("Rows 0 to 9 are kept in ").rstrip(".")) / "batch.parquet")
        assert quarantined["tag"].tolist() == ["audio/speech"] * 10

    def test_folder_as_input_is_rejected(self, project, capsys):
        (project / "inputs.csv").mkdir()

        code, _, err = run(project, capsys, "route", str(project / "inputs.csv"), "--tag", "vision/digits")

        assert_one_line_error(code, err, r"Data file .*inputs\.csv is a folder; pass a CSV or Parquet file")

    def test_missing_settings_file(self, tmp_path, capsys):
        code = main(["--params", str(tmp_path / "nope.yaml"), "status"])

        assert_one_line_error(code, capsys.readouterr().err, r"Settings file .*nope\.yaml.* not found")

    def test_batch_size_must_be_positive(self, project, capsys):
        with pytest.raises(SystemExit) as exited:
            run(project, capsys, "route", "rows.csv", "--batch-size", "0")

        assert exited.value.code == 2
        assert "must be at least 1, got 0" in capsys.readouterr().err

    def test_empty_output_is_rejected(self, project, capsys):
        with pytest.raises(SystemExit) as exited:
            run(project, capsys, "route", "rows.csv", "-o", "")

        assert exited.value.code == 2
        assert "-o/--output: is empty; pass a file such as predictions.parquet" in capsys.readouterr().err

    def test_batch_size_must_be_number(self, project, capsys):
        with pytest.raises(SystemExit) as exited:
            run(project, capsys, "route", "rows.csv", "--batch-size", "abc")

        assert exited.value.code == 2
        assert "--batch-size: must be a whole number, got 'abc'" in capsys.readouterr().err


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _csv(folder: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(folder / "rows.csv", index=False)
    return folder / "rows.csv"


class TestPatchAndRollback:
    def train_patch(self, project, capsys, mnist_digits) -> dict:
        mnist_digits.train.iloc[:400].to_csv(project / "mnist.csv", index=False)
        code, out, err = run(project, capsys, "train-patch", DOMAIN, str(project / "mnist.csv"))
        assert (code, err) == (0, "")
        return json.loads(out)

    def test_train_patch_makes_new_version(self, project, capsys, mnist_digits):
        report = self.train_patch(project, capsys, mnist_digits)

        assert (report["domain"], report["depth"], report["train_samples"]) == (DOMAIN, 1, 320)
        assert report["expert_sha256_before"] == report["expert_sha256_after"]
        record = system_of(project).controller.domain(DOMAIN)
        assert (record.version, record.patches) == (2, ["patch-1"])
        assert report["version"] == 2

    def test_rollback_restores_earlier_record(self, project, capsys, mnist_digits, uci_digits):
        self.train_patch(project, capsys, mnist_digits)

        code, out, err = run(project, capsys, "rollback", DOMAIN, "--to", "2", "--reason", "patch hurt UCI")

        assert (code, err) == (0, "")
        assert out.strip() == (
            f"{DOMAIN}: table version 4 restores its record of version 2: state hot, subgraph v1, patches none"
        )
        system = system_of(project)
        record = system.controller.domain(DOMAIN)
        assert (record.version, record.patches, record.model_dir) == (1, [], FIRST_HOT_COPY)
        assert system.subgraph(DOMAIN).depth == 0
        assert system.controller.history(DOMAIN)[-1]["reason"] == "patch hurt UCI"
        uci_digits.test.iloc[:10].to_csv(project / "batch.csv", index=False)
        run(project, capsys, "route", str(project / "batch.csv"), "--tag", DOMAIN, "--no-validate")
        assert set(pd.read_csv(project / "batch.predictions.csv")["version"]) == {1}

    def test_history_and_past_status(self, project, capsys, mnist_digits):
        self.train_patch(project, capsys, mnist_digits)
        system_of(project).controller.add_alias("images/digits", DOMAIN, reason="old client tag")
        run(project, capsys, "rollback", DOMAIN, "--to", "v2")

        code, out, _ = run(project, capsys, "history", DOMAIN)

        lines = out.strip().splitlines()
        assert code == 0
        assert [line.split()[0] for line in lines] == ["v1", "v2", "v3", "v4", "v5"]
        assert "state=hot" in lines[2]
        assert "subgraph v2" in lines[2]
        assert "alias images/digits -> vision/digits  old client tag" in lines[3]
        assert "restored v2: state=hot" in lines[4]
        assert "subgraph v1" in lines[4]
        code, out, _ = run(project, capsys, "status", "--json", "--table-version", "3")
        assert code == 0
        assert [(row["version"], row["patches"]) for row in json.loads(out)] == [(2, 1)]
        code, out, _ = run(project, capsys, "status", "--at", "1970-01-01T00:00:00")
        assert (code, out.strip()) == (0, "(no domains registered)")

    def test_status_warns_without_table(self, project, capsys):
        elsewhere = project / "elsewhere"
        elsewhere.mkdir()
        shutil.copy(project / "params.yaml", elsewhere / "params.yaml")

        code, out, err = run(elsewhere, capsys, "status")

        assert code == 0
        assert out.strip() == "(no domains registered)"
        assert err.startswith("warning: ")
        assert "routing_table.json does not exist" in err
        assert f"the folder of --params ({elsewhere})" in err
        assert [path.name for path in elsewhere.iterdir()] == ["params.yaml"]
        assert run(project, capsys, "status")[2] == ""

    @pytest.mark.parametrize("command", [["history", DOMAIN], ["sweep"], ["remember", DOMAIN]])
    def test_commands_without_table_change_nothing(self, project, capsys, command):
        elsewhere = project / "elsewhere"
        elsewhere.mkdir()
        shutil.copy(project / "params.yaml", elsewhere / "params.yaml")

        code, _, err = run(elsewhere, capsys, *command)

        assert_one_line_error(code, err, r"routing does not exist, so no domain is registered .* "
                                         r"`mycelium --params FILE COMMAND`")
        assert [path.name for path in elsewhere.iterdir()] == ["params.yaml"]

    @pytest.mark.parametrize(
        ("args", "pattern"),
        [
            (["rollback", DOMAIN, "--to", "99"], r"Table version 99 does not exist; recorded versions are 0 to 2"),
            (["rollback", "audio/speech", "--to", "2"],
             r"Unknown domain 'audio/speech': it is in no version of the routing table; known domains: \['vision/digits'\]"),
            (["history", "audio/speech"], r"Unknown domain 'audio/speech'; known domains: \['vision/digits'\]"),
            (["status", "--at", "yesterday"], r"Time 'yesterday' is neither Unix seconds nor ISO 8601"),
            (["status", "--at", "0", "--table-version", "1"], r"Pass --table-version or --at, not both"),
            (["orchestrate", "down", "--port", "4300"], r"--port applies to `orchestrate up` only"),
            (["orchestrate", "up", "--port", "70000"], r"--port 70000 is not a TCP port; pass 1 to 65535"),
        ],
    )
    def test_bad_arguments_are_one_line(self, project, capsys, args, pattern):
        code, _, err = run(project, capsys, *args)

        assert_one_line_error(code, err, pattern)

    def test_rollback_to_deleted_hot_copy(self, project, capsys, mnist_digits):
        self.train_patch(project, capsys, mnist_digits)
        shutil.rmtree(project / "runs" / "stream" / FIRST_HOT_COPY)

        code, _, err = run(project, capsys, "rollback", DOMAIN, "--to", "2")

        assert_one_line_error(code, err, rf"served from {re.escape(FIRST_HOT_COPY)} \(subgraph v1\), which no "
                                         r"longer exists.*No bundle holds that subgraph version")
        assert system_of(project).controller.domain(DOMAIN).version == 2

    def test_rollback_to_remembering_state_is_refused(self, project, capsys):
        system = system_of(project)
        system.freeze(DOMAIN, reason="sweep in a test")
        system.remember(DOMAIN)
        remembering_at = next(change["version"] for change in system.controller.history(DOMAIN)
                              if change["current"]["state"] == "remembering")

        code, _, err = run(project, capsys, "rollback", DOMAIN, "--to", str(remembering_at))

        assert_one_line_error(code, err, rf"At table version {remembering_at}, 'vision/digits' was remembering, a "
                                         r"state that a running process leaves again\. Roll back to a version where "
                                         r"it was hot or cold")
        assert system_of(project).controller.domain(DOMAIN).state == "hot"

    def test_rollback_after_sweep_names_the_bundle(self, project, capsys, mnist_digits):
        self.train_patch(project, capsys, mnist_digits)
        system = system_of(project)
        patched_at = system.controller.history(DOMAIN)[-1]["version"]
        system.freeze(DOMAIN, reason="sweep in a test")
        bundle = system.controller.domain(DOMAIN).cold_version

        code, _, err = run(project, capsys, "rollback", DOMAIN, "--to", str(patched_at))

        assert_one_line_error(code, err, rf"\(subgraph v2\), which no longer exists.* Bundle {bundle} holds that "
                                         rf"subgraph version: restore it with `mycelium remember {DOMAIN} "
                                         rf"--version {bundle}`")
        assert system_of(project).controller.domain(DOMAIN).state == "cold"

    @pytest.mark.parametrize(
        ("make_frame", "domain", "pattern"),
        [
            (lambda rows: rows.drop(columns=["label"]), DOMAIN, r"has 20 rows without a 'label' value"),
            (lambda rows: rows.assign(label=np.where(np.arange(20) < 3, np.nan, rows["label"])), DOMAIN,
             r"has 3 rows without a 'label' value"),
            (lambda rows: rows.drop(columns=["px_05", "px_06"]), DOMAIN, r"lacks 2 input columns .*'px_05', 'px_06'\]; a"),
            (lambda rows: rows.rename(columns={"px_05": "pixel_05"}), DOMAIN,
             r"lacks 1 input columns .*\['px_05'\], and has columns \['pixel_05'\] that are not its inputs"),
            (lambda rows: rows.iloc[:0], DOMAIN, r"has no rows; train-patch needs labelled rows"),
            (lambda rows: rows.iloc[:5], DOMAIN, r"got 5 rows; collect at least 400 labelled rows"),
            (lambda rows: rows, DOMAIN, r"got 20 rows, so its held-out part has 4; .* needs \d+ held-out rows\. "
                                        r"Collect at least \d+ labelled rows"),
            (lambda rows: rows, "audio/speech", r"Unknown domain 'audio/speech'"),
        ],
    )
    def test_train_patch_bad_input_is_one_line(self, project, capsys, mnist_digits, make_frame, domain, pattern):
        make_frame(mnist_digits.train.iloc[:20]).to_csv(project / "mnist.csv", index=False)

        code, _, err = run(project, capsys, "train-patch", domain, str(project / "mnist.csv"))

        assert_one_line_error(code, err, pattern)
        assert system_of(project).controller.domain(DOMAIN).version == 1

    def test_train_patch_quarantines_invalid_rows(self, project, capsys, mnist_digits):
        rows = mnist_digits.train.iloc[:400].assign(source="scanner-2")
        rows.loc[rows.index[7], "px_20"] = 500.0
        rows.to_csv(project / "noisy.csv", index=False)

        code, out, err = run(project, capsys, "train-patch", DOMAIN, str(project / "noisy.csv"))

        assert code == 2
        assert out == ""
        assert "column 'px_20'" in err
        assert "(rows with index 7)" in err
        folder = Path(err.splitlines()[-1].split("quarantined in ")[1].rstrip("."))
        quarantined = pd.read_parquet(folder / "batch.parquet")
        pd.testing.assert_frame_equal(quarantined, pd.read_csv(project / "noisy.csv"))
        assert system_of(project).controller.domain(DOMAIN).version == 1

    def test_train_patch_missing_file(self, project, capsys):
        code, _, err = run(project, capsys, "train-patch", DOMAIN, str(project / "nope.parquet"))

        assert_one_line_error(code, err, r"Data file .*nope\.parquet not found")

    def test_patch_below_min_accuracy_gain_is_one_line(self, project, capsys, mnist_digits):
        settings = yaml.safe_load((project / "params.yaml").read_text())
        settings["patch"]["min_accuracy_gain"] = 1.0
        (project / "params.yaml").write_text(yaml.safe_dump(settings))
        mnist_digits.train.iloc[:400].to_csv(project / "mnist.csv", index=False)

        code, out, err = run(project, capsys, "train-patch", DOMAIN, str(project / "mnist.csv"))

        assert out == ""
        assert code == 4
        assert len(err.strip().splitlines()) == 1, err
        assert re.search(r"^error: Patch 1 for 'vision/digits' changed held-out accuracy by [+-]\d\.\d{3} "
                         r"\(\d\.\d{3} -> \d\.\d{3} on \d+ of the 400 rows of mnist\.csv\), "
                         r"below patch\.min_accuracy_gain=1, so it was not registered", err)
        assert system_of(project).controller.domain(DOMAIN).version == 1


class TestChainedDomain:
    def test_status_shows_upstream_column(self, chained_project, capsys):
        code, out, _ = run(chained_project, capsys, "status", "--json")

        rows = {row["domain"]: row for row in json.loads(out)}
        assert code == 0
        assert rows[PAIRS]["upstream"] == "a<-vision/digits:logits, b<-vision/digits:logits"
        assert rows[DOMAIN]["upstream"] == ""
        code, out, _ = run(chained_project, capsys, "status")
        assert out.splitlines()[0].split()[-1] == "upstream"

    def test_history_shows_upstream_changes(self, chained_project, capsys):
        system_of(chained_project).controller.update(PAIRS, reason="slot a only", upstream=PAIR_INPUTS[:1])

        code, out, _ = run(chained_project, capsys, "history", PAIRS)

        lines = out.strip().splitlines()
        assert code == 0
        assert "upstream=[a<-vision/digits:logits, b<-vision/digits:logits]" in lines[0]
        assert "upstream=" not in lines[1]
        assert lines[2].endswith("upstream=[a<-vision/digits:logits]  slot a only")

    def test_route_records_every_stage(self, chained_project, capsys, digit_pairs):
        rows = digit_pairs.test.iloc[:40]
        rows.to_csv(chained_project / "pairs.csv", index=False)

        code, out, err = run(chained_project, capsys, "route", str(chained_project / "pairs.csv"), "--tag", PAIRS,
                             "--no-progress")

        assert (code, err) == (0, "")
        result = pd.read_csv(chained_project / "pairs.predictions.csv")
        assert set(result["domain"]) == {PAIRS}
        assert set(result["stages"]) == {
            "a: vision/digits v1 depth 0; b: vision/digits v1 depth 0; vision/digit-pairs v1 depth 0"
        }
        assert (result["prediction"] == rows["label"].to_numpy()).mean() > 0.8
        assert "40 rows -> vision/digit-pairs" in out

    def test_untagged_requests_exit_nonzero(self, chained_project, capsys, digit_pairs):
        digit_pairs.test.iloc[:20].to_csv(chained_project / "pairs.csv", index=False)

        code, out, err = run(chained_project, capsys, "route", str(chained_project / "pairs.csv"), "--no-progress")

        assert code == NOTHING_ROUTED != 0
        assert err.startswith("warning: no row of ")
        assert len(err.strip().splitlines()) == 1
        assert "--tag vision/digit-pairs" in err
        assert "20 rows accepted by no domain" in out
        result = pd.read_csv(chained_project / "pairs.predictions.csv")
        assert result["prediction"].isna().all()
        assert "tag the rows 'vision/digit-pairs' (e.g. `--tag vision/digit-pairs`)" in result["route"][0]

    def test_train_patch_takes_request_columns(self, chained_project, capsys, digit_pairs):
        digit_pairs.train.iloc[:400].to_csv(chained_project / "pairs.csv", index=False)

        code, out, err = run(chained_project, capsys, "train-patch", PAIRS, str(chained_project / "pairs.csv"))

        assert (code, err) == (0, "")
        report = json.loads(out)
        assert (report["domain"], report["depth"], report["train_samples"]) == (PAIRS, 1, 320)
        record = system_of(chained_project).controller.domain(PAIRS)
        assert (record.version, record.patches) == (2, ["patch-1"])
        assert system_of(chained_project).controller.domain(DOMAIN).patches == []

    def test_train_patch_without_request_columns_says_format(self, chained_project, capsys, uci_digits):
        uci_digits.train.iloc[:40].to_csv(chained_project / "digits.csv", index=False)

        code, _, err = run(chained_project, capsys, "train-patch", PAIRS, str(chained_project / "digits.csv"))

        assert_one_line_error(code, err, r"missing request columns \['a\.px_00'.*a\.COLUMN for 'vision/digits'")
        assert system_of(chained_project).controller.domain(PAIRS).version == 1

    def test_missing_columns_stop_after_failed_batch(self, chained_project, capsys, uci_digits):
        tags = [DOMAIN] * 10 + ["audio/speech"] * 10 + [PAIRS] * 10
        uci_digits.test.iloc[:30].assign(tag=tags).to_csv(chained_project / "mixed.csv", index=False)

        code, _, err = run(chained_project, capsys, "route", str(chained_project / "mixed.csv"), "--batch-size", "10",
                           "--no-progress")

        lines = err.strip().splitlines()
        result = pd.read_csv(chained_project / "mixed.predictions.csv")
        assert code == 2
        assert lines[0].startswith("error: ")
        assert "missing request columns ['a.px_00'" in lines[0]
        assert lines[1].startswith("Rows 0 to 19 were written to ")
        assert ", 10 of them without a prediction (see its 'error' column); rows 20 to 29 were not written." in lines[1]
        assert result["row"].tolist() == list(range(20))
        assert result["prediction"].isna().tolist() == [False] * 10 + [True] * 10
        assert "tagged 'audio/speech'" in result["error"][10]

    def test_route_without_slot_columns_says_format(self, chained_project, capsys, uci_digits):
        uci_digits.test.iloc[:10].to_csv(chained_project / "digits.csv", index=False)

        code, _, err = run(chained_project, capsys, "route", str(chained_project / "digits.csv"), "--tag", PAIRS)

        assert_one_line_error(code, err, r"missing request columns \['a\.px_00'.*a\.COLUMN for 'vision/digits', "
                                         r"b\.COLUMN for 'vision/digits'")
