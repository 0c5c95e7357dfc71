"""Issue 12's hardening: each test reproduces what a careful user hit, and fails without
the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _bilens(*argv: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "bilens", *argv], env=env, **kwargs)


# ---- 3. `bilens attribute ... | head` ---------------------------------------------------

def test_attribute_into_a_closed_pipe_exits_quietly(synthetic_checkpoint, tmp_path):
    """`| head -1`: no BrokenPipeError traceback, and the exit status of a process killed by
    SIGPIPE (141), as `cat` and `grep` give."""
    proc = _bilens("attribute", synthetic_checkpoint, "--dataset", "synthetic", "--n", "64",
                   "--top", "60", "--out", str(tmp_path / "a.safetensors"),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()           # what `head -1` reads, then it goes away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert first.startswith(b"input 0:")
    assert err == "", err                    # ~200 kB of table: the pipe did break
