"""The docs' printed outputs are re-run (`benchmarks/check_docs.py`): the cheapest example
here, every one with `python benchmarks/check_docs.py`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_docs", ROOT / "benchmarks" / "check_docs.py")
check_docs = sys.modules["check_docs"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_docs)


def test_matching_rules():
    match = check_docs.matches
    assert match(["a 1.5 s", "b"], ["a 99.0 s", "b"])                  # durations aside
    assert not match(["accuracy 0.9889"], ["accuracy 0.9861"])          # every other digit
    assert match(["a", "...", "z"], ["a", "b", "c", "z"])
    assert match(["a", "...", "z"], ["a", "z"])                         # `...`: zero lines too
    assert not match(["a", "z"], ["a", "b", "z"])
    assert match(["a", "..."], ["a", "b"]) and not match(["a"], ["a", "b"])


def test_parse_reads_commands_continuations_and_outputs(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- check: two -->\n```text\n$ bilens train --a \\\n      --b\n"
                    "out 1\n$ python x.py\n...\n```\n")
    (example,) = check_docs.parse(page)
    assert example.name == "two"
    assert [(c.line, c.expected) for c in example.commands] == [
        ("bilens train --a --b", ["out 1"]), ("python x.py", ["..."])]


def test_the_digits_worked_example_still_prints_what_the_docs_say(capsys):
    """docs/attribution.md's first example (train a digits model, attribute two inputs):
    its numbers, re-run, must be the ones printed (a few seconds)."""
    status = check_docs.main([str(ROOT / "docs" / "attribution.md"), "--only",
                              "digits-worked-example"])
    assert status == 0, capsys.readouterr().out


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    import re

    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_docs_stand_alone_and_every_spec_link_lands():
    """Nothing a user reads cites the sibling SPEC.md or ../shared (they are not in a clone),
    every link into docs/spec.md names a section that exists, and the promised LICENSE is
    there."""
    import os
    import re
    import subprocess

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    anchors = {_slug(line.lstrip("#")) for line in (ROOT / "docs" / "spec.md").read_text()
               .splitlines() if line.startswith("## ")}
    for page in pages:
        text = page.read_text()
        assert "SPEC §" not in text and "SPEC.md" not in text and "../shared" not in text, page
        for anchor in re.findall(r"spec\.md#([\w-]+)", text):
            assert anchor in anchors, (page.name, anchor)
    for command in ("train", "info", "attribute", "verify", "demo", "bench"):
        proc = subprocess.run([sys.executable, "-m", "bilens", command, "--help"],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src"),
                                   "COLUMNS": "200"})
        assert proc.returncode == 0 and "SPEC" not in proc.stdout, (command, proc.stdout)
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "the bilens authors" in license_text
