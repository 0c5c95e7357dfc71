"""The docs stand on their own: links land, nothing cites files outside the clone."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
