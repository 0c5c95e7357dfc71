"""Atomic writes: every file or directory bilens produces appears whole or not at all,
with the permissions the user's umask gives any other tool's output (`tempfile` makes its
temporaries private, 0600 and 0700; they are opened up to `0o666 & ~umask` and
`0o777 & ~umask` before they take the final name)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block succeeds.

    The temporary directory sits beside `path` (same filesystem, so the final rename
    is atomic). On any exception, KeyboardInterrupt included, it is removed. What the
    block wrote there gets the umask's permissions (safetensors, for one, writes 0600).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    try:
        yield tmp
        _open_up(tmp)
        if final.exists():
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        if old.exists() and not final.exists():     # stopped between the two renames
            old.rename(final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _open_up(root: Path) -> None:
    """`0o777 & ~umask` on `root` and the directories below, `0o666 & ~umask` on the files."""
    mask = umask()
    for here, _, files in os.walk(root):
        os.chmod(here, 0o777 & ~mask)
        for name in files:
            file = os.path.join(here, name)
            if not os.path.islink(file):
                os.chmod(file, 0o666 & ~mask)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `path`; rename it over `path` when the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), 0o666 & ~umask())
            yield f
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process's file-creation mask (read without changing it where Linux allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)                  # elsewhere: the only portable way is to set it
    os.umask(mask)
    return mask


def dump_json(obj: Any, f: Any) -> None:
    """Write `obj` to an open text file as indented JSON (bilens' one JSON layout)."""
    json.dump(obj, f, indent=2, sort_keys=False, allow_nan=True)
    f.write("\n")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(path) as f:
        dump_json(obj, f)
