"""The `bilens` command line (docs/spec.md §8). Each command lives in its own module here, with
`add_parser(subparsers)` and `run(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

COMMANDS = ("train", "info", "attribute", "verify", "compare", "sweep", "demo", "bench",
            "decompose")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bilens",
        description="Train bilinear residual networks, attribute every channel, and check each "
                    "attribution against the real ablation.")
    parser.add_argument("--version", action="version", version=f"bilens {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"bilens.cli.{name}").add_parser(sub)
    return parser


def _version() -> str:
    from bilens import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn a `BilensError` into one line and exit status 2.

    A reader that stops early (`bilens attribute ... | head`) ends the command quietly with
    the status of a process killed by SIGPIPE (141), as `cat` or `grep` would, not with a
    traceback.
    """
    from bilens.core.errors import BilensError

    args = build_parser().parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()                  # a closed pipe shows here, not at interpreter exit
        return status
    except BrokenPipeError:
        return _stdout_closed()
    except BilensError as err:
        print(f"bilens {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bilens {args.command}: interrupted; no partial output was left", file=sys.stderr)
        return 130


def _stdout_closed() -> int:
    """The reader of stdout went away: send what is still buffered nowhere (so Python's own
    flush at exit does not fail again) and exit as a process killed by SIGPIPE does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):           # stdout is not a real file (captured in tests)
        pass
    return 128 + int(getattr(signal, "SIGPIPE", 13))


if __name__ == "__main__":
    sys.exit(main())
