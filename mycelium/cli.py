"""The `mycelium` command: inspect and operate a deployment from the shell."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mycelium.errors import (
    EmptyDataError,
    InputError,
    IntegrityError,
    MyceliumError,
    PatchRejectedError,
    RoutingError,
    StorageError,
)

if TYPE_CHECKING:
    from mycelium.routing.batched import BatchedRoutes

# Input and output files of `route` and `train-patch`, by suffix.
DATA_SUFFIXES = (".csv", ".parquet", ".pq")
# Default tag column of `route`.
TAG_COLUMN = "tag"
# Exit code of `route` when it wrote predictions but routed no row.
NOTHING_ROUTED = 1
# Exit code of `route` when it wrote predictions but some rows have none: a batch failed, or no domain accepts them.
ROWS_FAILED = 3
# Exit code of `train-patch` when the patch missed patch.min_accuracy_gain and was not registered.
PATCH_REJECTED = 4


def _system(args: argparse.Namespace):
    """Return the deployment of ``--params``; raise InputError for a folder where nothing has run.

    Mycelium(params) creates the run folders, so a mistyped --params would otherwise leave an
    empty deployment behind.
    """
    from mycelium.config import load_params
    from mycelium.system import Mycelium, routing_directory

    params = load_params(args.params)
    if not routing_directory(params).exists():
        raise InputError(
            f"{routing_directory(params)} does not exist, so no domain is registered in the project of "
            f"{args.params}. Run the pipeline there first (make repro), or pass the params.yaml of a project "
            "that has run it: `mycelium --params FILE COMMAND`."
        )
    return Mycelium(params)


def _cell(value: object, column: str = "") -> str:
    if value is None:
        return ""
    if column == "last_used" and isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _print_table(rows: list[dict]) -> None:
    if not rows:
        print("(no domains registered)")
        return
    columns = list(rows[0])
    cells = [[_cell(row[c], c) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def cmd_status(args: argparse.Namespace) -> int:
    from mycelium.config import load_params
    from mycelium.routing.controller import TABLE_FILE
    from mycelium.system import Mycelium, domain_rows, routing_directory

    if args.table_version is not None and args.at is not None:
        raise InputError("Pass --table-version or --at, not both.")
    params = load_params(args.params)
    table_file = routing_directory(params) / TABLE_FILE
    if not table_file.parent.exists():
        # Mycelium(params) would create the run folders, so a folder where nothing has run is only read.
        if args.table_version is not None:
            _table_version(0, args.table_version)
        if args.at is not None:
            _timestamp(args.at)
        rows = []
    else:
        system = Mycelium(params)
        if args.table_version is not None:
            version = _table_version(system.controller.table.version, args.table_version)
            rows = domain_rows(system.controller.table_at(version))
        elif args.at is not None:
            rows = domain_rows(system.controller.table_at_time(_timestamp(args.at)))
        else:
            rows = system.domain_table()
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        _print_table(rows)
    if not table_file.exists():
        print(f"warning: {table_file} does not exist, so no domain is registered. The project folder is the "
              f"folder of --params ({args.params.resolve().parent}); run the pipeline there first (make repro), "
              "or pass the params.yaml of a project that has run it: `mycelium --params FILE status`.",
              file=sys.stderr)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    system = _system(args)
    changes = system.controller.history(args.domain)
    if not changes:
        system.controller.domain(args.domain)
    aliases = [e for e in system.controller.history() if e.get("kind") == "alias" and e.get("target_domain") == args.domain]
    for change in sorted(changes + aliases, key=lambda entry: entry["version"]):
        print(f"v{change['version']:<5} {_format_time(change['time'])}  {_describe_change(change)}  {change['reason']}")
    versions = system.store.versions(args.domain) if args.bundles else []
    for stored in versions:
        print(f"bundle {stored.version}  {stored.path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    system = _system(args)
    evictions = system.sweep()
    for eviction in evictions:
        print(f"swept {eviction.domain}: {eviction.reason}")
    reasons = system.keep_reasons()
    if not evictions:
        print("nothing to sweep" if reasons else "nothing to sweep: no domain is hot")
    for domain, reason in reasons.items():
        print(f"kept {domain} hot: {reason}")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mycelium.routing.batched import route_batches

    if args.tag is not None and not args.tag.strip():
        raise InputError(f"--tag {args.tag!r} is empty; pass a tag such as vision/digits, or omit --tag to route "
                         "untagged rows by their OOD scores.")
    frame = _read_frame(args.file)
    if not _keeps_row_numbers(frame.index):
        frame = frame.reset_index(drop=True)
    if len(frame) == 0:
        raise EmptyDataError(f"{args.file} has no rows; there is nothing to route.")
    if args.tag_column is None:
        args.tag_column = TAG_COLUMN
    elif args.tag_column not in frame.columns:
        raise InputError(
            f"{args.file} has no --tag-column column {args.tag_column!r}; its columns are {_column_list(frame)}."
        )
    if args.tag is not None and args.tag_column in frame.columns:
        raise InputError(
            f"{args.file} has a {args.tag_column!r} column and --tag was given; drop one of them "
            f"(--tag applies one tag to every row)."
        )
    output = args.output or args.file.with_name(f"{args.file.stem}.predictions{args.file.suffix}")
    _check_output(output, args.file)
    system = _system(args)
    with tqdm(total=len(frame), unit="rows", desc=f"routing {args.file.name}", disable=args.no_progress or None) as bar:
        try:
            routes = route_batches(system, frame, args.tag, tag_column=args.tag_column, batch_size=args.batch_size,
                                   validate=not args.no_validate, name=args.file.stem, fail_fast=args.fail_fast,
                                   on_batch=bar.update)
        except RoutingError as exc:
            # Only the check of --tag raises it, before any batch; a failed batch is reported in `routes`.
            from mycelium.routing.resolution import UNTAGGED_ADVICE

            advice = str(exc).removesuffix(UNTAGGED_ADVICE).rstrip()
            raise RoutingError(f"{advice} Pass a registered tag with --tag, or omit --tag to route the rows by "
                               "domain inference.") from exc

    predictions = routes.predictions
    passthrough_columns = [c for c in (args.tag_column, "label") if c in frame.columns]
    result = pd.concat([frame.loc[predictions.index, passthrough_columns], predictions], axis=1)
    result.insert(0, "row", predictions.index)
    if routes.stopped is not None:
        raise _stopped_route(routes, result, output, frame.index)
    _write_output(result, output)
    predicted = result["prediction"].notna()
    counts = result.loc[predicted, "domain"].value_counts()
    summary = [f"{_rows(count)} -> {domain}" for domain, count in counts.items()]
    unrouted = int((~predicted).sum()) - routes.failed_rows
    if unrouted:
        summary.append(f"{_rows(unrouted)} accepted by no domain")
    if routes.failures:
        summary.append(f"{_rows(routes.failed_rows)} failed")
    print(f"wrote {_rows(len(result))} to {output}: {', '.join(summary)}")
    if not predicted.any() and not routes.failures:
        reasons = result["route"].dropna().unique()
        shown = "; ".join(str(reason) for reason in reasons[:3])
        more = f" (and {len(reasons) - 3} more reasons)" if len(reasons) > 3 else ""
        print(f"warning: no row of {args.file} was routed: {shown}{more}. The 'route' column of {output} "
              "gives the reason for each row.", file=sys.stderr)
        return NOTHING_ROUTED
    if routes.failures:
        print(f"error: {_describe_failed_rows(routes, output, args)}", file=sys.stderr)
    if unrouted:
        print(f"warning: {_rows(unrouted)} of {args.file} matched no domain and have no prediction. Their 'error' "
              f"column in {output} gives the reason and the quarantine folder that keeps them; tag them, or "
              "collect enough of them to train a new domain.", file=sys.stderr)
    return ROWS_FAILED if routes.failures or unrouted else 0


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _stopped_route(routes: BatchedRoutes, result: pd.DataFrame, output: Path, rows: pd.Index) -> MyceliumError:
    """Write the rows routed before the run stopped, and return the error that stopped it.

    ``rows`` are the row numbers of the input. The notes added to the error name the folder of
    the failed rows and the rows to route again.
    """
    from mycelium.routing.batched import ERROR_COLUMN

    exc = routes.stopped
    first_left = routes.stopped_row
    left = rows[first_left:]
    # --fail-fast stopped in a batch whose failed rows are the last failures; an InputError has none.
    for failure in routes.failures:
        if failure.first_row in left and failure.quarantine_path not in str(exc):
            exc.add_note(f"Rows {_row_span(failure.row_numbers)} are kept in {failure.quarantine_path}.")
    if first_left == 0 and isinstance(exc, InputError):
        # The file's columns or tags do not fit, as for a bad argument: nothing is written.
        return exc
    written = result.iloc[:first_left]
    # --fail-fast writes the output even without rows, so that no file of an earlier run is left.
    _write_output(written, output)
    if first_left == 0:
        exc.add_note(f"{output} was written without rows, because the run stopped in its first batch. Fix the "
                     "rows above, then route the file again.")
        return exc
    failed = int(written[ERROR_COLUMN].notna().sum())
    without = f", {failed} of them without a prediction (see its 'error' column)" if failed else ""
    exc.add_note(f"Rows {_row_span(rows[:first_left])} were written to {output}{without}; rows {_row_span(left)} "
                 f"were not written. Fix the rows above, then route rows {_row_span(left)} again.")
    return exc


def _keeps_row_numbers(index: pd.Index) -> bool:
    """Return True when a file's stored index numbers its rows.

    A quarantined batch keeps the row numbers of the file it came from this way. A plain
    0-based index numbers rows by position, which route does anyway.
    """
    return (not isinstance(index, pd.RangeIndex) and pd.api.types.is_integer_dtype(index) and index.is_unique
            and bool((index >= 0).all()))


def _describe_failed_rows(routes: BatchedRoutes, output: Path, args: argparse.Namespace) -> str:
    """Return one line on the failed rows: how many, where they are kept, how to route them again."""
    failures = routes.failures
    ranges = ", ".join(_row_ranges(f.row_numbers) for f in failures[:3])
    folders = ", ".join(f.quarantine_path for f in failures[:3])
    if len(failures) > 3:
        ranges += f" and {len(failures) - 3} more groups"
        folders += f" and {len(failures) - 3} more (see the 'quarantine' column)"
    where = "They are kept in" if len(failures) == 1 else "They are kept in the folders"
    rerun = shlex.quote(str(Path(failures[0].quarantine_path) / "batch.parquet")) if len(failures) == 1 else "FOLDER/batch.parquet"
    options = ""
    if args.tag is not None:
        options += f" --tag {shlex.quote(args.tag)}"
    if args.tag_column != TAG_COLUMN:
        options += f" --tag-column {shlex.quote(args.tag_column)}"
    failed = "failed validation or routing" if not args.no_validate else "could not be routed or predicted"
    return (f"{routes.failed_rows} of {_rows(len(routes.predictions))} {failed} (rows {ranges}) "
            f"and have no prediction; the 'error' column of {output} gives the reason. {where} {folders}. "
            f"Fix them and route each again with `mycelium route {rerun} -o OUTPUT{options}`.")


def _row_span(rows: Sequence[int]) -> str:
    """Return consecutive row numbers as ``first to last``, and others as runs such as ``3, 5-9``."""
    if rows[-1] - rows[0] + 1 == len(rows):
        return f"{rows[0]} to {rows[-1]}"
    return _row_ranges(rows)


def _row_ranges(rows: Sequence[int], limit: int = 4) -> str:
    """Return sorted row numbers as runs, e.g. ``3, 5-9, 12``, with at most ``limit`` runs shown."""
    runs: list[list[int]] = []
    for row in rows:
        if runs and row == runs[-1][1] + 1:
            runs[-1][1] = row
        else:
            runs.append([row, row])
    listed = [str(first) if first == last else f"{first}-{last}" for first, last in runs[:limit]]
    more = f" and {len(runs) - limit} more runs" if len(runs) > limit else ""
    return ", ".join(listed) + more


def _column_list(frame: pd.DataFrame) -> str:
    columns = [str(column) for column in frame.columns]
    more = f" and {len(columns) - 8} more" if len(columns) > 8 else ""
    return ", ".join(columns[:8]) + more


def cmd_rollback(args: argparse.Namespace) -> int:
    system = _system(args)
    controller = system.controller
    version = _table_version(controller.table.version, args.to)
    past = controller.table_at(version).domains.get(args.domain)
    if past is not None and past.state in ("training", "remembering"):
        # No process would finish that step, so the domain would stay unservable.
        raise InputError(
            f"At table version {version}, {args.domain!r} was {past.state}, a state that a running process "
            f"leaves again. Roll back to a version where it was hot or cold; `mycelium history {args.domain}` "
            "lists them."
        )
    if past is not None and past.state == "hot" and past.model_dir and not (system.root / past.model_dir).exists():
        bundle = _bundle_of(controller.history(args.domain), past.version)
        fix = (f"Bundle {bundle} holds that subgraph version: restore it with `mycelium remember {args.domain} "
               f"--version {bundle}`." if bundle else
               f"No bundle holds that subgraph version; `mycelium history {args.domain} --bundles` lists the "
               f"stored ones, and `mycelium remember {args.domain} --version VERSION` restores one.")
        raise IntegrityError(
            f"At table version {version}, {args.domain!r} was served from {past.model_dir} (subgraph "
            f"v{past.version}), which no longer exists because freezing the domain (a sweep, or `remember "
            f"--version` on a hot domain) deleted its hot copies. {fix}"
        )
    reason = args.reason or f"rollback of {args.domain} to table version {version} from the command line"
    table = controller.restore(version, reason, domain=args.domain)
    record = table.domains[args.domain]
    print(f"{args.domain}: table version {table.version} restores its record of version {version}: "
          f"state {record.state}, subgraph v{record.version}, patches {record.patches or 'none'}")
    return 0


def _bundle_of(changes: list[dict], subgraph_version: int) -> str | None:
    """Return the newest cold bundle that a freeze of ``subgraph_version`` recorded in ``changes``."""
    bundles = [change["current"]["cold_version"] for change in changes
               if change.get("current") and change["current"].get("state") == "cold"
               and change["current"].get("version") == subgraph_version and change["current"].get("cold_version")]
    return bundles[-1] if bundles else None


def cmd_train_patch(args: argparse.Namespace) -> int:
    frame = _read_frame(args.data)
    if frame.empty:
        raise EmptyDataError(f"{args.data} has no rows; train-patch needs labelled rows of {args.domain!r}.")
    system = _system(args)
    report = system.train_patch(args.domain, data=frame, name=args.data.name)
    version = system.controller.domain(args.domain).version
    print(json.dumps({**asdict(report), "version": version}, indent=1))
    return 0


def cmd_remember(args: argparse.Namespace) -> int:
    result = _system(args).remember(args.domain, version=args.version)
    print(json.dumps(result.summary(), indent=1, default=str))
    return 0 if result.passed else 1


def _stack(args: argparse.Namespace):
    from mycelium.config import load_params
    from mycelium.orchestration.stack import Stack

    settings = load_params(args.params).orchestration
    return Stack(args.params.resolve().parent, args.params, settings, port=getattr(args, "port", None))


def cmd_orchestrate(args: argparse.Namespace) -> int:
    if args.port is not None and not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a TCP port; pass 1 to 65535, or 0 to pick a free port.")
    if args.port is not None and args.action != "up":
        raise InputError(
            f"--port applies to `orchestrate up` only; `{args.action}` uses the port recorded by `up` in "
            ".prefect/orchestration.json. Run it without --port."
        )
    stack = _stack(args)
    if args.action == "up":
        state = stack.up()
        print(f"Prefect server: {state.ui_url} (API {state.api_url}, pid {state.server.pid})")
        for worker in state.workers:
            print(f"worker {worker.role} of pool {worker.pool} (pid {worker.pid}), log {worker.log}")
        for name in state.deployments:
            print(f"deployment {name}")
        print(f"Point flows and the CLI at it with: export PREFECT_API_URL={state.api_url}")
        print(f"State: {stack.state_path}. Stop everything with `mycelium orchestrate down`.")
    elif args.action == "down":
        stopped = stack.down()
        print("stopped " + ", ".join(stopped) if stopped else "nothing was running")
    else:
        print(json.dumps(stack.status(), indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mycelium", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="settings file; its folder is the project root (default: ./params.yaml)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log at INFO level; -vv also logs the INFO records of Great Expectations")
    commands = parser.add_subparsers(dest="command", required=True)

    status = commands.add_parser(
        "status", help="table of domains: tags, state, version, size, last use, accuracy, upstream inputs",
        description="Print one row per domain of the routing table: tags, state (hot, cold, training, retired), "
                    "subgraph version and patches, size, last use and use count, holdout accuracy, and the "
                    "upstream inputs of a chained domain. --table-version and --at show a past table.")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--table-version", type=int, default=None, metavar="N",
                        help="show the table as it was right after change N (see `mycelium history DOMAIN`)")
    status.add_argument("--at", default=None, metavar="TIME",
                        help="show the table as it was at TIME: Unix seconds or ISO 8601 (UTC without an offset)")
    status.set_defaults(handler=cmd_status)

    history = commands.add_parser(
        "history", help="every recorded change of one domain, with table versions",
        description="Print every recorded change of DOMAIN, oldest first: the table version, the time, what "
                    "changed and the reason. Pass a table version to `rollback --to` or `status --table-version`.")
    history.add_argument("domain", help="domain name, e.g. tabular/segments")
    history.add_argument("--bundles", action="store_true", help="also list its cold-storage bundle versions")
    history.set_defaults(handler=cmd_history)

    sweep = commands.add_parser(
        "sweep", help="move idle hot domains to cold storage now",
        description="Run the cold-storage sweep once, as the scheduled flow does: hot domains idle for longer "
                    "than cold_storage.max_idle_s are quantized into a DVC-versioned bundle, then others by "
                    "cold_storage.policy until the hot set fits cold_storage.hot_budget_bytes. Pinned domains "
                    "stay hot. Prints each domain moved and why, and why each other hot domain stays hot.")
    sweep.set_defaults(handler=cmd_sweep)

    remember = commands.add_parser(
        "remember", help="restore a cold domain through the validation gate",
        description="Restore DOMAIN from cold storage: verify the bundle's sha256, dequantize it, fine-tune it "
                    "at a low learning rate if the data moved, and serve it only if it passes the "
                    "validation gate; otherwise it stays cold. Prints the gate's numbers as JSON; the exit code "
                    "is 1 when the gate failed.")
    remember.add_argument("domain", help="domain name, e.g. tabular/segments")
    remember.add_argument("--version", default=None,
                          help="stored bundle version to restore, e.g. v0001 (default: the newest intact one); "
                               "a hot domain is frozen into a new version first")
    remember.set_defaults(handler=cmd_remember)

    route = commands.add_parser(
        "route", help="predict every row of a CSV or Parquet file with the domain its tag routes to",
        description="Predict every row of FILE. Rows carry their tags in a tag column, or --tag applies one tag "
                    "to all rows; untagged rows are routed by domain inference. Writes the predictions with the "
                    "domain and subgraph version of every row. A row for a chained domain (one with upstream "
                    "inputs, see `mycelium status`) must be tagged and carries each slot's input as columns "
                    "prefixed by the slot, e.g. a.px_00 ... b.px_63 for slots a and b; its 'stages' column "
                    "lists the domain, version and chain depth of every stage. Rows that fail validation or "
                    "routing (one domain's rows of a batch of --batch-size rows, or the whole batch when its tags "
                    "cannot be resolved) and rows that no domain accepts are quarantined with every column, and "
                    "are written without a prediction and with the reason and the quarantine folder in the "
                    "'error' and 'quarantine' columns; the other rows are routed. Exit code: 0 when every row "
                    "has a prediction, "
                    f"{NOTHING_ROUTED} when no row was routed (the 'route' column says why), {ROWS_FAILED} when a "
                    "batch failed or no domain accepts some rows (the 'error' column says why), 2 on an error "
                    "(with --fail-fast, after writing the rows routed before it).")
    route.add_argument("file", type=Path, help="input rows, .csv or .parquet")
    route.add_argument("--tag", default=None, help="one tag for every row, e.g. vision/digits (the file must not "
                                                   "have a tag column then)")
    route.add_argument("--tag-column", default=None,
                       help="column with each row's tags (default: tag, if the file has it); a cell contains one tag "
                            "or several separated by commas. A column named here must exist")
    route.add_argument("-o", "--output", type=_output_path, default=None,
                       help="output file, .csv or .parquet (default: FILE.predictions with FILE's suffix)")
    route.add_argument("--batch-size", type=_positive_int, default=1024,
                       help="rows routed and validated together (default: 1024)")
    route.add_argument("--no-validate", action="store_true",
                       help="skip the Great Expectations checks of each domain's rows")
    route.add_argument("--fail-fast", action="store_true",
                       help="stop at the first batch with rows that fail validation or routing or that no domain "
                            "accepts; the rows routed before that batch are still written")
    route.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    route.set_defaults(handler=cmd_route)

    rollback = commands.add_parser(
        "rollback", help="restore a domain's record as it was at a past table version, as a new version",
        description="Restore DOMAIN's routing record (subgraph version, patches, tags, state) as it was right "
                    "after table change VERSION. The restore is a new table version; the history is kept.")
    rollback.add_argument("domain", help="domain name, e.g. vision/digits")
    rollback.add_argument("--to", type=_version_number, required=True, metavar="VERSION",
                          help="table version to restore, as listed by `mycelium history DOMAIN` (15 or v15)")
    rollback.add_argument("--reason", default=None, help="reason recorded in the history")
    rollback.set_defaults(handler=cmd_rollback)

    train_patch = commands.add_parser(
        "train-patch", help="train a patch for a hot domain on a labelled CSV or Parquet file",
        description="Train a low-rank patch beside DOMAIN's frozen expert on DATA, which needs the domain's "
                    "input columns and a label column. For a chained domain (one with upstream inputs, see "
                    "`mycelium status`) DATA has the request columns that `route` takes, e.g. a.px_00 ... b.px_63 "
                    "and label, and the upstream stages compute the domain's input columns from them. DATA must meet "
                    "the domain's data expectations; a file that fails is quarantined with every column and no "
                    "patch is trained. The patched subgraph becomes a new version if its accuracy on the held-out "
                    "part of DATA gains at least patch.min_accuracy_gain (params.yaml) over the current version; "
                    "otherwise nothing is registered and the exit code is "
                    f"{PATCH_REJECTED}. The gain is measured against DATA's own labels, so consistently wrong labels "
                    "pass the gate.")
    train_patch.add_argument("domain", help="domain name, e.g. vision/digits")
    train_patch.add_argument("data", type=Path, help="labelled rows, .csv or .parquet")
    train_patch.set_defaults(handler=cmd_train_patch)

    orchestrate = commands.add_parser(
        "orchestrate", help="start or stop the local Prefect server, workers and deployments",
        description="up: start `prefect server start` on orchestration.host:port, create the training and light "
                    "process work pools, register the deployments (cron sweep, event-triggered training and "
                    "Remembering, ingestion) and start the workers. down: stop the workers and the server. "
                    "status: show what runs. Process ids, ports and logs are in .prefect/.")
    orchestrate.add_argument("action", choices=["up", "down", "status"])
    orchestrate.add_argument("--port", type=int, default=None,
                             help="server port for `up` (default: orchestration.port; 0 picks a free port)")
    orchestrate.set_defaults(handler=cmd_orchestrate)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _output_path(text: str) -> Path:
    # Path("") is Path("."), which would be reported as a file named ".".
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; pass a file such as predictions.parquet, or omit -o to write "
                                         "FILE.predictions beside FILE")
    return Path(text)


def _check_output(output: Path, source: Path) -> None:
    """Raise InputError before any work if ``output`` cannot take the predictions of ``source``."""
    _check_suffix(output, "output file")
    # samefile compares device and inode, so a hard link or symlink to the input is caught too.
    if output.exists() and os.path.samefile(output, source):
        raise InputError(f"The output file {output} is the input file; pass another path with -o, so the input is kept.")
    if output.is_dir():
        raise InputError(f"The output file {output} is a folder; pass a file path such as {output / 'predictions.parquet'}.")
    blocking = next((parent for parent in output.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise InputError(f"The output file {output} cannot be created because {blocking} is a file; pass a path "
                         "inside a folder.")
    # Creating a file in the output folder finds a folder that cannot take files before any row is routed.
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise InputError(f"The output file {output} cannot be written ({exc.strerror or exc}); pass a path in a "
                         "folder you can write to with -o.") from exc


def _check_suffix(path: Path, role: str) -> None:
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise InputError(f"The {role} {path} has suffix {path.suffix!r}; use one of {', '.join(DATA_SUFFIXES)}.")


def _read_frame(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file, raising InputError with the fix when it cannot be read."""
    _check_suffix(path, "data file")
    if path.is_dir():
        raise InputError(f"Data file {path} is a folder; pass a CSV or Parquet file.")
    if not path.is_file():
        raise InputError(f"Data file {path} not found; check the path (relative paths start at {Path.cwd()}).")
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"Cannot read {path}: {first_line.rstrip('.')}. Check that it is a valid {path.suffix} file.") from exc


def _write_output(frame: pd.DataFrame, path: Path) -> None:
    """Write route's predictions, raising StorageError that names ``path`` when it fails."""
    try:
        _write_frame(frame, path)
    except OSError as exc:
        raise StorageError(f"Writing the predictions to {path} failed ({exc.strerror or exc}); the quarantined "
                           "batches are kept. Free space or pass another path with -o, and route the file again.") from exc


def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def _version_number(text: str) -> int:
    """Parse a table version as ``history`` prints it (``v15``) or as a plain number."""
    digits = text[1:] if text[:1].lower() == "v" else text
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"invalid table version {text!r}; pass a number such as 15 or v15")
    return int(digits)


def _table_version(newest: int, version: int) -> int:
    if not 0 <= version <= newest:
        raise InputError(f"Table version {version} does not exist; recorded versions are 0 to {newest}.")
    return version


def _timestamp(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"Time {text!r} is neither Unix seconds nor ISO 8601, e.g. 2025-01-31T12:00:00Z.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _format_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe_change(change: dict[str, Any]) -> str:
    if change.get("kind") == "alias":
        target = change["current"] or "(removed)"
        return f"alias {change['alias']} -> {target}"
    current = change["current"]
    restored = f"restored v{change['restored_version']}: " if change.get("kind") == "restore" else ""
    if current is None:
        return f"{restored}removed from the table"
    line = f"{restored}state={current['state']:<12} subgraph v{current['version']}"
    upstream = current.get("upstream", [])
    previous = change.get("previous") or {}
    if upstream != previous.get("upstream", []):
        inputs = ", ".join(f"{item['slot']}<-{item['domain']}:{item['output']}" for item in upstream)
        line += f" upstream=[{inputs}]"
    return line


def _quiet_great_expectations(record: logging.LogRecord) -> bool:
    """Return False for a Great Expectations record below WARNING, so the handler drops it."""
    return record.levelno >= logging.WARNING or not record.name.startswith("great_expectations")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Great Expectations sets INFO on its own loggers, some only when first used, and then logs
    # about 220 INFO lines (GX 1.24.1). Below -vv the handlers drop its records below WARNING.
    show_great_expectations = args.verbose >= 2
    logging.getLogger("great_expectations").setLevel(logging.INFO if show_great_expectations else logging.WARNING)
    for handler in logging.getLogger().handlers:
        if show_great_expectations:
            handler.removeFilter(_quiet_great_expectations)
        else:
            handler.addFilter(_quiet_great_expectations)
    try:
        return args.handler(args)
    except MyceliumError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for note in getattr(exc, "__notes__", ()):
            print(note, file=sys.stderr)
        return PATCH_REJECTED if isinstance(exc, PatchRejectedError) else 2


if __name__ == "__main__":
    sys.exit(main())
