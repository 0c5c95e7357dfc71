"""`synthetic-lm`: token sequences with known structure, for the sequence model (docs/spec.md §9).

Vocabulary (64 ids, fixed rules drawn once from `RULE_SEED`):

| ids    | role                                                                     |
| ------ | ------------------------------------------------------------------------ |
| 0..47  | filler, uniform at random                                                |
| 48..55 | bigram triggers: trigger `a` is always followed by its successor `B[a]`   |
| 56..59 | skip-trigram cues: one per sequence, in its first half                    |
| 60     | the query: followed by the answer `A[c]` of the cue `c` earlier in context |

Each sequence also holds **induction**: 8 random filler tokens, then later the same 8
again, so the second copy is predictable only by looking back. Planted items never overlap.

Predictable positions (the `rules` masks; position `t` predicts token `t+1`):
`bigram` where token `t` is a trigger; `skip-trigram` where token `t` is the query;
`induction` at the 3rd..8th tokens of the second copy (positions `p2+1 .. p2+6`: two
matching tokens make the earlier copy unambiguous).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from bilens.core.errors import BilensError
from bilens.core.token_data import TokenData

VOCAB = 64
N_FILLER, TRIGGERS, CUES, QUERY = 48, range(48, 56), range(56, 60), 60
COPY, N_BIGRAMS = 8, 4
RULE_SEED, TEST_SEED = 1234, 99
N_TRAIN, N_TEST = 32768, 1024

_rules = np.random.default_rng(RULE_SEED)
_succ = _rules.integers(0, N_FILLER, len(TRIGGERS))
_answers = _rules.choice(N_FILLER, len(CUES), replace=False)
SUCCESSOR = {a: int(b) for a, b in zip(TRIGGERS, _succ, strict=True)}    # trigger -> next
ANSWER = {c: int(b) for c, b in zip(CUES, _answers, strict=True)}        # cue -> answer


class _NoRoom(Exception):
    """The draw left no free place for an item; the sequence is drawn again."""


def _free(rng: np.random.Generator, used: np.ndarray, low: int, high: int, width: int) -> int:
    """A random position `t` in `[low, high)` with `t .. t+width-1` all unused."""
    ok = ~used[low:high]
    for j in range(1, width):
        ok &= ~used[low + j:high + j]
    places = np.flatnonzero(ok)
    if len(places) == 0:
        raise _NoRoom
    return low + int(rng.choice(places))


def _sequence(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One row of `n` tokens and its masks (drawn again until every item fits)."""
    while True:
        try:
            return _try_sequence(rng, n)
        except _NoRoom:
            continue


def _try_sequence(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    x = rng.integers(0, N_FILLER, n)
    used = np.zeros(n + 1, dtype=bool)           # one spare slot: pairs may test t+1 == n
    used[n] = True
    masks = {k: np.zeros(n - 1, dtype=bool) for k in ("bigram", "skip-trigram", "induction")}
    copy = rng.integers(0, N_FILLER, COPY)
    p1 = int(rng.integers(0, n // 2 - COPY + 1))
    p2 = int(rng.integers(p1 + COPY + 1, n - COPY + 1))
    for p in (p1, p2):
        x[p:p + COPY], used[p:p + COPY] = copy, True
    masks["induction"][p2 + 1:p2 + COPY - 1] = True
    cue = int(rng.choice(CUES))
    c = _free(rng, used, 0, n // 2, 1)
    x[c], used[c] = cue, True
    q = _free(rng, used, c + 1, n - 1, 2)
    x[q], x[q + 1], used[q:q + 2] = QUERY, ANSWER[cue], True
    masks["skip-trigram"][q] = True
    for _ in range(N_BIGRAMS):
        t = _free(rng, used, 0, n - 1, 2)
        a = int(rng.choice(TRIGGERS))
        x[t], x[t + 1], used[t:t + 2] = a, SUCCESSOR[a], True
        masks["bigram"][t] = True
    return x, masks


def generate(n_seq: int, seq_len: int, seed: int | list[int]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`n_seq` rows of `seq_len + 1` tokens and their rule masks `[n_seq, seq_len]`."""
    if seq_len < 4 * COPY:
        raise BilensError(f"seq_len: synthetic-lm needs at least {4 * COPY} positions (two "
                          f"copies of {COPY} tokens, cue, query, bigrams), got {seq_len}")
    rng = np.random.default_rng(seed)
    rows, masks = zip(*(_sequence(rng, seq_len + 1) for _ in range(n_seq)), strict=True)
    return (torch.from_numpy(np.stack(rows)).long(),
            {k: torch.from_numpy(np.stack([m[k] for m in masks])) for k in masks[0]})


@functools.lru_cache(maxsize=4)
def _drawn(seq_len: int, seed: int, n_train: int, n_test: int) -> tuple:
    """The draws of `synthetic_lm`, made once per process (the Python loop over rows takes
    seconds; every caller gets its own copy)."""
    train, _ = generate(n_train, seq_len, [seed, 0])
    test, rules = generate(n_test, seq_len, [TEST_SEED])
    return train, test, rules


def synthetic_lm(seq_len: int, seed: int = 0, n_train: int = N_TRAIN,
                 n_test: int = N_TEST) -> TokenData:
    """The `synthetic-lm` `TokenData`: `n_train` rows drawn with `seed`, and `n_test`
    held-out rows from a fixed stream (the same for every seed)."""
    train, test, rules = _drawn(seq_len, seed, n_train, n_test)
    train, test, rules = train.clone(), test.clone(), {k: v.clone() for k, v in rules.items()}
    return TokenData(name="synthetic-lm", train=train, test=test, vocab_size=VOCAB,
                     rules=rules, preprocessing="generated: bigram rules, skip-trigrams, "
                     f"induction (copies of {COPY}); see bilens.core.synthetic_lm")
