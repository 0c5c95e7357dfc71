"""benchmarks/lm_table.py on a tiny setting: it runs, writes its JSON and Markdown table,
and its export writes the text the GPU machine reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("lm_table", ROOT / "benchmarks" / "lm_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lm_table_tiny(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"And the {w} said unto {v}, go in peace.\n"
                            for w in ("king", "man", "woman", "child") * 20
                            for v in ("him", "her")))
    out = tmp_path / "out"
    argv = ["--out", str(out), "--dataset", str(text), "--norms", "none,rms",
            "--positions", "pre,post", "--seeds", "0,1", "--layers", "1", "--d-model", "8",
            "--d-hidden", "8", "--heads", "2", "--seq-len", "16", "--vocab-size", "300",
            "--steps", "3", "--device", "cpu", "--sample-tokens", "4"]
    assert _script().main(argv) == 0
    record = json.loads((out / "lm_table.json").read_text())
    assert len(record["runs"]) == 8 and len(record["samples"]) == 3
    assert {"unigram", "bigram"} <= set(record["baselines"])
    md = (out / "lm_table.md").read_text()
    assert "| rms | post |" in md and "bigram baseline" in md and "Best (lowest mean)" in md
    none = [r["val_loss"] for r in record["runs"] if r["norm"] == "none"]
    assert none[:2] == none[2:]            # no norm: pre and post are one network


def test_lm_table_export(tmp_path, monkeypatch):
    module = _script()
    monkeypatch.setattr(module, "kjv_chapters", lambda: ["In the beginning.", "Amen."])
    path = module.export(str(tmp_path / "data"))
    assert path.read_text() == "In the beginning.\n\nAmen."
    monkeypatch.setenv("BILENS_DATA_DIR", str(tmp_path / "data"))
    from bilens.core.lm_data import kjv_chapters
    assert kjv_chapters() == ["In the beginning.", "Amen."]
