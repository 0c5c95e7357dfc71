"""Every verdict in the README and docs/results.md comes from `claims.py` (issue 12, item 16).

- The digits tables of docs/results.md are recomputed from the committed demo run,
  `docs/data/demo/` (`compare.json`, `sweep-*.json`, `decomposition.json`): every row of the
  claims table (claim, measured, verdict) and every claim's rule.
- The MNIST and Fashion-MNIST claims tables are `claims.py`'s output on the H200 run, whose
  JSON was not kept; claims 3 and 4 are recomputed here from the comparison tables printed
  beside them (accuracy mean ± sd over 3 seeds), and every claims table prints each rule.
- The README's table (MNIST) has the verdicts of docs/results.md's MNIST table, claim 11
  that of the demo.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bilens.experiments.accuracy_claims import claim_no_norm_accuracy, claim_rms_between
from bilens.experiments.summary import build, collect
from bilens.report.tables import claims_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = (ROOT / "docs" / "results.md").read_text()
README = (ROOT / "README.md").read_text()


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    following = re.search(r"^#{2,3} ", text[start + len(heading):], flags=re.M)
    return text[start: start + len(heading) + following.start()] if following else text[start:]


def _table(text: str) -> list[list[str]]:
    """The cells of the first Markdown table in `text` (header and rule lines dropped)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", ln)[1:-1]]
             for ln in lines]
    first = next(i for i, row in enumerate(cells) if set(row[0]) <= set("-: ") and row[0])
    out = []
    for row in cells[first + 1:]:
        if len(row) != len(cells[first - 1]):
            break
        out.append(row)
    return out


def _comparison(section: str) -> dict:
    """The accuracy columns of a comparison table as `claims.py` reads them."""
    rows = []
    for r in _table(section):
        mean, _, sd = r[3].partition("±")
        rows.append({"norm": r[0], "position": r[1], "n_seeds": int(r[2]),
                     "test_accuracy": float(mean) / 100, "test_accuracy_std": float(sd) / 100})
    return {"table": rows}


@pytest.fixture(scope="module")
def demo_claims() -> list[dict]:
    return build(collect(ROOT / "docs" / "data" / "demo"))["claims"]


def test_demo_claims_table_is_what_claims_py_computes(demo_claims):
    section = _section(RESULTS, "## The main job on digits")
    shown = [r for r in _table(section.split("Its claims", 1)[1])]
    _, expected = claims_rows(demo_claims)
    assert len(shown) == len(expected) == 11
    for row, want in zip(shown, expected, strict=True):
        assert row == want, row[0]
    for i, c in enumerate(demo_claims):
        assert f"**{i + 1}. {c['claim']}: {c['verdict']}.**" in section
        assert f"_Rule: {c['rule']}._" in section


@pytest.mark.parametrize("name", ["MNIST", "Fashion-MNIST"])
def test_accuracy_claims_recomputed_from_the_printed_comparison(name):
    cmp = _comparison(_section(RESULTS, f"### {name}: comparison"))
    claims = _section(RESULTS, f"### {name}: the seed's claims")
    rows = {r[0]: r for r in _table(claims)}
    for cid, claim in (("3", claim_no_norm_accuracy(cmp)), ("4", claim_rms_between(cmp))):
        assert rows[cid][3] == claim["measured"]
        assert rows[cid][4] == claim["verdict"].upper()
        assert f"_Rule: {claim['rule']}._" in claims
    assert len(rows) == 11
    for cid in rows:                       # every claim's rule printed after the table
        assert re.search(rf"^\*\*{cid}\. .*_Rule: .+\._$", claims, flags=re.M), cid


def test_readme_verdicts_are_the_docs_verdicts(demo_claims):
    readme = {r[0]: r for r in _table(_section(README, "## What bilens measured"))}
    mnist = {r[0]: r for r in _table(_section(RESULTS, "### MNIST: the seed's claims"))}
    assert set(readme) == set(mnist) == {str(i) for i in range(1, 12)}
    for cid, row in readme.items():
        assert row[-1] == mnist[cid][-1].lower(), cid      # claim 11: the H200 decomposition
