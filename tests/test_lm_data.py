"""Token data of the sequence model: the synthetic rules hold where the masks say, files
are read or refused with one clear line, the tokenizer round-trips, the baselines count."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
import torch

from bilens.core.errors import BilensError
from bilens.core.lm_data import kjv_chapters, load_lm_data, load_token_rows
from bilens.core.synthetic_lm import ANSWER, COPY, CUES, QUERY, SUCCESSOR, generate, synthetic_lm
from bilens.core.tokenizer import encode, train_tokenizer
from bilens.training.ngram import ngram_losses


def test_synthetic_rules_hold_where_the_masks_say():
    rows, masks = generate(200, 40, [5])
    assert rows.shape == (200, 41) and int(rows.max()) < 64
    for i in range(len(rows)):
        x = rows[i].tolist()
        for t in masks["bigram"][i].nonzero().flatten().tolist():
            assert x[t + 1] == SUCCESSOR[x[t]]
        (q,) = masks["skip-trigram"][i].nonzero().flatten().tolist()
        cue = [c for c in x[:q] if c in CUES]
        assert x[q] == QUERY and len(cue) == 1 and x[q + 1] == ANSWER[cue[0]]
        ind = masks["induction"][i].nonzero().flatten().tolist()
        assert len(ind) == COPY - 2
        p2 = ind[0] - 1                        # the second copy starts here
        first = [p for p in range(p2 - COPY) if x[p:p + COPY] == x[p2:p2 + COPY]]
        assert first, "the second copy repeats an earlier subsequence"


def test_synthetic_is_seeded_and_its_test_split_fixed():
    a, b, c = (synthetic_lm(32, seed=s, n_train=64, n_test=32) for s in (0, 0, 1))
    assert torch.equal(a.train, b.train) and not torch.equal(a.train, c.train)
    assert torch.equal(a.test, c.test)


def test_tokenizer_round_trips_any_text():
    text = "In the beginning — naïve café, 42 ünïcödé 😀 words.\n"
    tok = train_tokenizer([text * 30], vocab_size=300)
    assert tok.decode(tok.encode(text).ids) == text
    assert 257 <= tok.get_vocab_size() <= 300
    stream = encode(tok, ["a b", "c"])
    assert stream.dtype == torch.int64 and tok.decode(stream.tolist()) == "a b\n\nc"
    with pytest.raises(BilensError, match="vocab_size"):
        train_tokenizer(["x"], vocab_size=10)


def test_text_file_is_tokenized_and_split(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("".join(f"line {i}: the cat sat on the mat.\n" for i in range(200)))
    data = load_lm_data(str(path), seq_len=8, vocab_size=300)
    assert data.tokenizer is not None and data.test.shape[1] == 9
    assert int(data.train.max()) < data.vocab_size
    tok = data.tokenizer
    assert "line 199" in tok.decode(data.test.flatten().tolist())      # the last lines
    assert "line 0:" in tok.decode(data.train[:20].tolist())
    again = load_lm_data(str(path), seq_len=8, tokenizer=tok)          # a checkpoint's
    assert torch.equal(again.train, data.train)


def test_empty_and_non_utf8_files_are_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(BilensError, match="is empty"):
        load_lm_data(str(empty), seq_len=8)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 ".encode("latin-1") * 50)
    with pytest.raises(BilensError, match="is not UTF-8"):
        load_lm_data(str(latin), seq_len=8)
    with pytest.raises(BilensError, match="neither"):
        load_lm_data(str(tmp_path / "missing.txt"), seq_len=8)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_token_rows_files(tmp_path, suffix):
    rows = torch.randint(50, (20, 9))
    path = tmp_path / f"tokens{suffix}"
    if suffix == ".npz":
        np.savez(path, tokens=rows.numpy())
    else:
        from safetensors.torch import save_file
        save_file({"tokens": rows}, str(path))
    assert torch.equal(load_token_rows(path), rows)
    data = load_lm_data(str(path), seq_len=100)
    assert data.train.shape == (18, 9) and data.test.shape == (2, 9)
    np.savez(tmp_path / "floats.npz", tokens=rows.float().numpy())
    with pytest.raises(BilensError, match="int64"):
        load_token_rows(tmp_path / "floats.npz")
    np.savez(tmp_path / "other.npz", ids=rows.numpy())
    with pytest.raises(BilensError, match="no array 'tokens'"):
        load_token_rows(tmp_path / "other.npz")


def test_ngram_baselines_equal_counting_by_hand():
    train = torch.tensor([0, 1, 2, 0, 1, 1, 2, 0])
    test = torch.tensor([[0, 1, 2], [2, 2, 0]])
    V = 3
    uni = [(list(train).count(b) + 1) / (len(train) + V) for b in range(V)]
    pairs = list(zip(train[:-1].tolist(), train[1:].tolist(), strict=True))

    def p_bi(a, b):
        c_a = sum(1 for x, _ in pairs if x == a)
        return (pairs.count((a, b)) + 1.0 * uni[b]) / (c_a + 1.0)

    targets = [(0, 1), (1, 2), (2, 2), (2, 0)]
    want_uni = -sum(math.log(uni[b]) for _, b in targets) / 4
    want_bi = -sum(math.log(p_bi(a, b)) for a, b in targets) / 4
    got = ngram_losses(train, test, V, beta=1.0)
    assert got["unigram"] == pytest.approx(want_uni, abs=1e-12)
    assert got["bigram"] == pytest.approx(want_bi, abs=1e-12)


HAVE_KJV = shutil.which("bible") is not None or bool(os.environ.get("BILENS_DATA_DIR"))


@pytest.mark.skipif(not HAVE_KJV, reason="the King James Bible is absent: apt-get install "
                                          "bible-kjv (setup.sh does)")
def test_text_is_the_king_james_bible():
    chapters = kjv_chapters()
    assert len(chapters) == 1189
    assert chapters[0].startswith("In the beginning God created the heaven and the earth.")
    assert sum(len(c) for c in chapters) > 2_000_000
    assert chapters[-1].endswith("Amen.")
