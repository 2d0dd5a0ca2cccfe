"""Word times: a Viterbi CTC alignment of a hypothesis to its segment's CTC output, tokens grouped into words."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from s4speech.transcribe.results import Word


def ctc_align(logp: np.ndarray, tokens: Sequence[int], blank: int = 0) -> list[tuple[int, int]] | None:
    """Viterbi CTC alignment: (start, end) frames of each token, or None if it cannot fit in T frames."""
    T, L = len(logp), len(tokens)
    if L == 0:
        return []
    ext = np.full(2 * L + 1, blank, dtype=np.int64)
    ext[1::2] = tokens
    S = len(ext)
    need = L + sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)
    if T < need:
        return None
    skip = np.zeros(S, bool)
    skip[2:] = (ext[2:] != blank) & (ext[2:] != ext[:-2])
    neg = -1e30
    dp = np.full(S, neg)
    dp[0], dp[1] = logp[0, blank], logp[0, ext[1]]
    back = np.zeros((T, S), np.int8)
    for t in range(1, T):
        c1 = np.concatenate([[neg], dp[:-1]])
        c2 = np.where(skip, np.concatenate([[neg, neg], dp[:-2]]), neg)
        stack = np.stack([dp, c1, c2])
        k = np.argmax(stack, axis=0)
        dp = stack[k, np.arange(S)] + logp[t, ext]
        back[t] = k
    s = S - 1 if dp[S - 1] >= dp[S - 2] else S - 2
    if dp[s] <= neg / 2:
        return None
    states = np.empty(T, np.int64)
    for t in range(T - 1, -1, -1):
        states[t] = s
        s -= int(back[t, s])
    spans = []
    for k in range(L):
        fr = np.flatnonzero(states == 2 * k + 1)
        spans.append((int(fr[0]), int(fr[-1]) + 1))
    return spans


def words_from_tokens(tokens: Sequence[str], spans: Sequence[tuple[int, int]], token_type: str | None,
                      t0: float, shift: float) -> list[Word]:
    """Tokens with their (start, end) frames -> words with times: ``t0`` + frames * ``shift`` seconds.

    Words are split at ``<space>`` (char tokens) and before ``▁`` (BPE); word tokens are words."""
    words: list[Word] = []
    cur: list[tuple[str, int, int]] = []

    def flush():
        text = "".join(t for t, _, _ in cur).replace("\u2581", "")
        if text:
            words.append(Word(text, round(t0 + cur[0][1] * shift, 3), round(t0 + cur[-1][2] * shift, 3)))
        cur.clear()

    for tok, (s, e) in zip(tokens, spans):
        if token_type == "word":
            cur.append((tok, s, e))
            flush()
        elif tok == "<space>":
            flush()
        else:
            if tok.startswith("\u2581"):
                flush()
            cur.append((tok, s, e))
    flush()
    return words
