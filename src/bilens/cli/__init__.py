"""The `bilens` command line (docs/spec.md §8). Each command lives in its own module here, with
`add_parser(subparsers)` and `run(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import traceback

COMMANDS = ("train", "info", "attribute", "verify", "compare", "sweep", "demo", "bench",
            "decompose", "sample", "import")
DISTRIBUTED = ("verify", "train")   # the commands that split their work under torchrun
DISTRIBUTED_KINDS = {"train": ("transformer",)}     # ... when their --kind is one of these
_MODULES = {"import": "import_ckpt"}          # a command whose module name differs


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command: `cli._common.Parser` (no prefix matching, one-line usage
    errors, `(default: X)` on every option), which the subcommands' parsers inherit."""
    from bilens.cli._common import Parser

    parser = Parser(
        prog="bilens",
        description="Train bilinear residual networks, attribute every channel, and check each "
                    "attribution against the real ablation.")
    parser.add_argument("--version", action="version", version=f"bilens {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"bilens.cli.{_MODULES.get(name, name)}").add_parser(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`parse_args`, but an unknown option is reported by its command's parser (`bilens
    verify: error: unrecognized arguments: --mode ... (see bilens verify --help)`)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _version() -> str:
    from bilens import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn a `BilensError` into one line and exit status 2.

    A reader that stops early (`bilens attribute ... | head`) ends the command quietly with
    the status of a process killed by SIGPIPE (141), as `cat` or `grep` would, not with a
    traceback. Under `torchrun` (docs/distributed.md) every rank runs the command; a failure
    on any rank ends every rank, and rank 0 prints one line naming the failed ranks.
    """
    from bilens.core import distributed
    from bilens.core.errors import BilensError

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--"]:   # `torchrun ... -m bilens -- verify ... --n N` (docs/distributed.md)
        argv = argv[1:]
    try:
        args = _parse(build_parser(), argv)
    except SystemExit as stop:          # --help (0), or a usage error: one line, status 2
        return stop.code if isinstance(stop.code, int) else 2
    try:
        status = _run(args)
        sys.stdout.flush()                  # a closed pipe shows here, not at interpreter exit
        return status
    except BrokenPipeError:
        return _stdout_closed()
    except distributed.RankFailed as err:
        cause = err.__context__         # this rank's own error, if it was one that failed
        if cause is not None and not isinstance(cause, BilensError):
            traceback.print_exception(cause)
            sys.stderr.flush()
        distributed.barrier()           # every rank saw the same failure: tracebacks first,
        if distributed.world().rank == 0:                               # then the one line
            sys.stderr.write(f"bilens {args.command}: error: {err}; no output was written\n")
            sys.stderr.flush()
        return 2 if err.usage else 1
    except BilensError as err:
        if distributed.world().rank == 0:
            print(f"bilens {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bilens {args.command}: interrupted; no partial output was left", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


def _run(args: argparse.Namespace) -> int:
    """Run the command; under torchrun in a process group, any error reaches every rank."""
    from bilens.core import distributed

    _check_launch(args.command, getattr(args, "kind", None))
    distributed.init_if_launched()
    with distributed.guard():
        return int(args.func(args) or 0)


def _check_launch(command: str, kind: str | None = None) -> None:
    """Refuse to run a command that does not split its work as several processes (each
    would do all of it, and write the same files): only `verify` and `train --kind
    transformer` (DDP) run under torchrun."""
    from bilens.core import distributed
    from bilens.core.errors import BilensError

    if not distributed.launched():
        return
    if command not in DISTRIBUTED:
        raise BilensError(f"{command} runs as one process; under torchrun only verify and "
                          f"train --kind transformer split their work (run `python -m bilens "
                          f"{command} ...` instead)")
    kinds = DISTRIBUTED_KINDS.get(command)
    if kinds is not None and kind not in kinds:
        raise BilensError(f"{command} --kind {kind} runs as one process; under torchrun only "
                          f"--kind {', '.join(kinds)} trains with DDP (run `python -m bilens "
                          f"{command} ...` instead)")


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
