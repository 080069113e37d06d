"""The `mycelium` command: inspect and operate a deployment from the shell."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mycelium.errors import MyceliumError


def _system(args: argparse.Namespace):
    from mycelium.config import load_params
    from mycelium.system import Mycelium

    return Mycelium(load_params(args.params))


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _print_table(rows: list[dict]) -> None:
    if not rows:
        print("(no domains registered)")
        return
    columns = list(rows[0])
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def cmd_status(args: argparse.Namespace) -> int:
    rows = _system(args).domain_table()
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        _print_table(rows)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    system = _system(args)
    system.controller.domain(args.domain)
    for change in system.controller.history(args.domain):
        current = change["current"]
        print(f"v{change['version']:<5} state={current['state']:<12} subgraph v{current['version']}  {change['reason']}")
    versions = system.store.versions(args.domain) if args.bundles else []
    for stored in versions:
        print(f"bundle {stored.version}  {stored.path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    evictions = _system(args).sweep()
    for eviction in evictions:
        print(f"swept {eviction.domain}: {eviction.reason}")
    if not evictions:
        print("nothing to sweep")
    return 0


def cmd_remember(args: argparse.Namespace) -> int:
    result = _system(args).remember(args.domain)
    print(json.dumps(result.summary(), indent=1, default=str))
    return 0 if result.passed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mycelium", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="settings file; its folder is the project root (default: ./params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    status = commands.add_parser("status", help="table of domains: tags, state, version, size, last use, accuracy")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(handler=cmd_status)

    history = commands.add_parser("history", help="every recorded change of one domain")
    history.add_argument("domain", help="domain name, e.g. tabular/segments")
    history.add_argument("--bundles", action="store_true", help="also list its cold-storage bundle versions")
    history.set_defaults(handler=cmd_history)

    sweep = commands.add_parser("sweep", help="move idle hot domains to cold storage now")
    sweep.set_defaults(handler=cmd_sweep)

    remember = commands.add_parser("remember", help="restore a cold domain through the validation gate")
    remember.add_argument("domain", help="domain name, e.g. tabular/segments")
    remember.set_defaults(handler=cmd_remember)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except MyceliumError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
