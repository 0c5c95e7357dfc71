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


# ---- 10. Ctrl-C during training -----------------------------------------------------------

def test_ctrl_c_in_training_closes_the_bar_before_the_message(tmp_path, capsys, monkeypatch):
    """The bar is finished on its own line first, the message follows on a line of its own,
    and nothing redraws the bar after it (tqdm's own close at garbage collection did)."""
    import gc

    import bilens.training.train as train_module
    from bilens.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "accuracy", interrupted)     # after the first epoch
    status = main(["train", "--dataset", "synthetic", "--d-model", "8", "--d-hidden", "8",
                   "--layers", "1", "--epochs", "2", "--n-train", "256", "--device", "cpu",
                   "--out", str(tmp_path / "run")])
    gc.collect()                             # where an unclosed bar would draw itself again
    err = capsys.readouterr().err
    assert status == 130
    message = "bilens train: interrupted"
    assert err.count(message) == 1
    before, after = err.split(message)
    assert after.strip() == "; no partial output was left", repr(after)
    assert "train:" in before and before.endswith("\n"), repr(before[-200:])
    assert not (tmp_path / "run").exists()


# ---- 11. permissions follow the umask ------------------------------------------------------

def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_written_files_and_directories_follow_the_umask(tmp_path, synthetic_checkpoint):
    """Like any other tool's output: 0644 / 0755 under umask 022, 0640 / 0750 under 027 (a
    `tempfile` temporary renamed into place was 0600 / 0700 whatever the umask)."""
    from bilens.cli import main
    from bilens.core.checkpoint import load, save

    model = load(synthetic_checkpoint)
    for mask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o027, 0o640, 0o750)):
        old = os.umask(mask)
        try:
            ck = tmp_path / f"ck-{mask:o}"
            save(model, ck, model.metadata)
            attr = tmp_path / f"attr-{mask:o}.safetensors"
            assert main(["attribute", synthetic_checkpoint, "--dataset", "synthetic", "--n", "4",
                         "--out", str(attr)]) == 0
        finally:
            os.umask(old)
        assert _mode(ck) == dir_mode, oct(_mode(ck))
        written = [*ck.iterdir(), attr, attr.with_suffix(".json")]
        assert {p.name: oct(_mode(p)) for p in written} == {p.name: oct(file_mode)
                                                            for p in written}


# ---- 6. a degenerate target, and metrics with nothing to measure ----------------------------

def test_degenerate_targets_are_refused_in_one_line(synthetic_checkpoint, tmp_path, capsys):
    import pytest
    import torch

    from bilens.cli import main
    from bilens.core.errors import BilensError
    from bilens.core.targets import resolve_target

    logits = torch.randn(3, 4)
    for spec, fragment in (("diff:1,1", "subtracts class 1 from itself"),
                           (torch.zeros(4), "the direction is all zeros,"),
                           (torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 1.0, 0, 0]]),
                            r"all zeros for input\(s\) 1,")):
        with pytest.raises(BilensError, match=fragment):
            resolve_target(spec, logits)
    assert resolve_target("diff:1,2", logits).direction.abs().sum() == 6
    for command in ("attribute", "verify"):
        out = tmp_path / (command + (".safetensors" if command == "attribute" else ""))
        assert main([command, synthetic_checkpoint, "--dataset", "synthetic", "--n", "4",
                     "--target", "diff:1,1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "diff:1,1" in err, err
        assert not out.exists()


def test_metrics_over_an_all_zero_ground_truth_are_undefined():
    """Nothing to explain: every metric is NaN (undefined), not recall 1.0 or a silent NE."""
    import math

    import torch

    from bilens.analysis.metrics import evaluate, topk_recall

    p, a = torch.randn(4, 2, 5), torch.zeros(4, 2, 5)
    overall = evaluate(p, a, ks=(1, 3))["overall"]
    assert overall["n"] == 40
    undefined = {k: v for k, v in overall.items() if k != "n"}
    assert all(math.isnan(v) for v in undefined.values()), undefined
    # a row that has effects still counts; the all-zero row is left out, not scored 1 or 0
    a[0, 0, 0] = 1.0
    p[0].zero_()
    p[0, 0, 0] = 2.0
    assert topk_recall(p.flatten(1), a.flatten(1), 1) == 1.0


def test_verify_over_an_all_zero_ground_truth_says_undefined(make_model, tmp_path):
    """A head of zeros: no channel changes the target. The table says "undefined", and
    metrics.json holds null, not a perfect recall."""
    import json

    import torch

    from bilens import report
    from bilens.analysis.verify import verify

    model = make_model("rms", "post")
    with torch.no_grad():
        model.head.weight.zero_()
    result = verify(model, torch.randn(3, 5, dtype=torch.float64), target="class:0",
                    modes=("frozen", "live"), circuit_ks=(), progress=False)
    assert "undefined (nan above) for frozen, live: every actual effect" in \
        report.verify_table(result)
    report.save_verify(result, tmp_path / "v", plots=False)
    saved = json.loads((tmp_path / "v" / "metrics.json").read_text())
    overall = saved["modes"]["live"]["overall"]
    assert overall["normalized_error"] is None and overall["recall@1"] is None, overall
    assert "undefined" in (tmp_path / "v" / "summary.md").read_text()


# ---- 4. setup.sh and another apt-get --------------------------------------------------------

def test_setup_waits_for_a_held_dpkg_lock_and_says_so(tmp_path):
    """A process holds the dpkg lock for 3 s: setup.sh names it, waits, and runs apt-get with
    apt's own lock timeout once it is gone (it failed at once before). apt-get, dpkg and the
    venv are stand-ins; the lock is a real POSIX lock on a file of our own."""
    import shutil
    import time

    repo = Path(__file__).resolve().parents[1]
    work = tmp_path / "clone"
    work.mkdir()
    shutil.copy(repo / "setup.sh", work / "setup.sh")
    (work / ".venv" / "bin").mkdir(parents=True)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "apt.log"
    stubs = {".venv/bin/python": "exit 0", "id": "echo 0", "dpkg": "exit 1",
             "apt-get": f'echo "$(date +%s.%N) $*" >> {log}'}
    for name, body in stubs.items():
        path = (work / name) if name.startswith(".") else (bin_ / name)
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    lock = tmp_path / "lock-frontend"
    lock.touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
         "fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(3)", str(lock)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    held_since = time.time()
    env = {**os.environ, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}",
           "BILENS_DPKG_LOCK": str(lock), "BILENS_APT_LISTS_LOCK": str(tmp_path / "none")}
    proc = subprocess.run(["bash", str(work / "setup.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    holder.wait(timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert (f"waiting up to 600 s for the dpkg lock ({lock}), held by process {holder.pid} "
            f"(python") in proc.stderr, proc.stderr
    calls = [line.split(" ", 1) for line in log.read_text().splitlines()]
    assert [c[1].split()[-5:] if "install" in c[1] else c[1].split() for c in calls] == [
        ["-o", "DPkg::Lock::Timeout=600", "update", "-qq"],
        ["install", "-y", "-qq", "dataset-fashion-mnist", "bible-kjv"]]
    assert "-o DPkg::Lock::Timeout=600 install" in calls[1][1]
    assert float(calls[1][0]) >= held_since + 2.5          # install waited for the holder
