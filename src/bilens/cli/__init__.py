"""The `bilens` command line (SPEC §8). Each command lives in its own module here, with
`add_parser(subparsers)` and `run(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("train", "info", "attribute", "verify", "compare", "sweep", "demo", "bench", "sample",
            "import")
_MODULES = {"import": "import_ckpt"}          # a command whose module name differs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bilens",
        description="Train bilinear residual networks, attribute every channel, and check each "
                    "attribution against the real ablation.")
    parser.add_argument("--version", action="version", version=f"bilens {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"bilens.cli.{_MODULES.get(name, name)}").add_parser(sub)
    return parser


def _version() -> str:
    from bilens import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn a `BilensError` into one line and exit status 2."""
    from bilens.core.errors import BilensError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BilensError as err:
        print(f"bilens {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bilens {args.command}: interrupted; no partial output was left", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
