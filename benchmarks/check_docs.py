"""Re-run the commands the docs print, and fail where their output no longer matches.

A checked example in a Markdown file is an HTML comment naming it, right before a fenced
block that holds one or more commands, each with the output it printed:

    <!-- check: digits-worked-example -->
    ```text
    $ bilens train --dataset digits ... --out runs/digits-rms
    test accuracy 0.9889 (98.89%)  train accuracy 1.0000  ...  30 epochs in 4.6 s
    $ bilens attribute runs/digits-rms ...
    input 0: label 5, predicted class 5, target predicted f = 7.577
    ...
    ```

- `$ ` starts a command; a line ending in `\\` continues it on the next line. `bilens`
  runs as `python -m bilens` of this checkout; `python` is this interpreter, and a path
  that exists in the repository (`benchmarks/x.py`) is taken from there.
- The lines after it are its expected output, compared line by line, exactly, except that
  durations (`4.6 s`, `0.002 s`) are not compared. A line `...` stands for any number of
  output lines (zero included); a block that ends in `...` checks only the start.
- The examples of one file run in order in one scratch directory, so a later command can
  use what an earlier one wrote (`runs/digits-rms`).

    python benchmarks/check_docs.py                    # every checked example in docs/, README
    python benchmarks/check_docs.py --only digits-worked-example
    python benchmarks/check_docs.py --list

Exit status 0 when every example matches, 1 otherwise (with a diff of each mismatch).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"^<!--\s*check:\s*([\w.-]+)\s*-->\s*$")
DURATION = re.compile(r"\b\d+(?:\.\d+)?(?= s\b)")


@dataclass
class Command:
    line: str                                   # as printed, without the `$ `
    expected: list[str] = field(default_factory=list)


@dataclass
class Example:
    name: str
    path: Path
    lineno: int
    commands: list[Command]


def parse(path: Path) -> list[Example]:
    """The checked examples of one Markdown file, in order."""
    lines = path.read_text().splitlines()
    examples = []
    i = 0
    while i < len(lines):
        mark = MARK.match(lines[i].strip())
        i += 1
        if not mark:
            continue
        if i >= len(lines) or not lines[i].strip().startswith("```"):
            raise SystemExit(f"{path}:{i}: <!-- check: {mark.group(1)} --> must be followed "
                             f"by a fenced block")
        start = i = i + 1
        commands: list[Command] = []
        while i < len(lines) and not lines[i].strip().startswith("```"):
            text = lines[i]
            if text.startswith("$ "):
                command = text[2:]
                while command.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    command = command[:-1].rstrip() + " " + lines[i].strip()
                commands.append(Command(command))
            elif commands:
                commands[-1].expected.append(text)
            else:
                raise SystemExit(f"{path}:{i + 1}: a checked block starts with a `$ ` command")
            i += 1
        examples.append(Example(mark.group(1), path, start, commands))
    return examples


def argv_for(command: str) -> list[str]:
    """The command as this checkout runs it."""
    words = shlex.split(command)
    if words[0] == "bilens":
        words = [sys.executable, "-m", "bilens", *words[1:]]
    elif words[0] == "python":
        words = [sys.executable, *words[1:]]
    return [str(ROOT / w) if "/" in w and (ROOT / w).is_file() else w for w in words]


def _normalize(line: str) -> str:
    return DURATION.sub("<t>", line.rstrip())


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line-by-line equality, durations aside, with `...` matching any run of lines."""
    exp = [_normalize(e) for e in expected]
    act = [_normalize(a) for a in actual]

    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(exp):
            return j == len(act)
        if exp[i].strip() == "...":
            return any(match(i + 1, k) for k in range(j, len(act) + 1))
        return j < len(act) and exp[i] == act[j] and match(i + 1, j + 1)

    return match(0, 0)


def run(example: Example, workdir: Path) -> list[str]:
    """Run one example in `workdir`; returns the problems (empty when it matches)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    problems = []
    for command in example.commands:
        proc = subprocess.run(argv_for(command.line), cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=1800)
        actual = proc.stdout.splitlines()
        where = f"{example.path.relative_to(ROOT)}:{example.lineno} [{example.name}] $ " \
                f"{command.line}"
        if proc.returncode != 0:
            problems.append(f"{where}\nexit status {proc.returncode}\n{proc.stderr[-2000:]}")
        elif not matches(command.expected, actual):
            diff = difflib.unified_diff(command.expected, actual, "in the docs", "now", lineterm="")
            problems.append(f"{where}\n" + "\n".join(diff))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path,
                        help="Markdown files (default: docs/*.md and README.md)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="check only the example(s) of this name (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the checked examples")
    args = parser.parse_args(argv)
    files = [f.resolve() for f in args.files] or [*sorted((ROOT / "docs").glob("*.md")),
                                                  ROOT / "README.md"]
    by_file = {f: [e for e in parse(f) if not args.only or e.name in args.only] for f in files}
    if args.list:
        for examples in by_file.values():
            for e in examples:
                print(f"{e.name}  ({e.path.relative_to(ROOT)}:{e.lineno}, "
                      f"{len(e.commands)} command(s))")
        return 0
    unknown = set(args.only) - {e.name for examples in by_file.values() for e in examples}
    if unknown:
        print(f"check_docs: no checked example named {', '.join(sorted(unknown))}",
              file=sys.stderr)
        return 2
    problems, n, failed = [], 0, 0
    for examples in by_file.values():
        if not examples:
            continue
        with tempfile.TemporaryDirectory(prefix="bilens-check-docs-") as workdir:
            for example in examples:
                n += 1
                found = run(example, Path(workdir))
                failed += bool(found)
                print(f"{'ok  ' if not found else 'FAIL'} {example.name}", flush=True)
                problems += found
    for problem in problems:
        print("\n" + problem)
    print(f"\n{n - failed} of {n} checked examples match")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
