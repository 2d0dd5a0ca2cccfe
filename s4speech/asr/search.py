"""Beam search over several utterances at once, with the scorers, weights and rules of an ESPnet
``BatchBeamSearch``.

``search_many(bs, xs)`` returns, for each encoder output in ``xs``, the n-best list that ``bs(x)`` returns
for it alone -- same pre-beam, same top-k over (hypothesis, token), same <eos> at the length limit, same end
detection and minimum length -- but every step scores the running hypotheses of all utterances not finished
yet together:

- a full scorer whose ``batch_score`` takes rows of several utterances in one call (``decoder: ssm``, whose
  states carry their utterance's memory; the length bonus; ESPnet's LMs, which never read the encoder
  output) is called once per step for all of them;
- any other full scorer (ESPnet's Transformer or ``s4`` decoder, which attend to the ``xs`` they are given
  without a mask) is called once per utterance, with that utterance's hypotheses, as ``bs`` would;
- partial scorers (CTC prefix scores) are called once per utterance, with its hypotheses. s4speech's
  CTC scorer keeps the utterance in its states (``multi_utterance``); one that keeps it in itself
  (ESPnet's: ``batch_init_state`` sets ``self.impl``) has that utterance's attributes put back before
  each call for it.

The top-k of each utterance is one ``topk`` over its (hypotheses x vocabulary) scores, all utterances in one
call. Hypotheses are ESPnet's ``Hypothesis``. Differences from ``bs(x)`` alone are float rounding of the
batched scores (and so, rarely, the order of two exactly tied hypotheses).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

import torch
from espnet.nets.beam_search import Hypothesis
from espnet.nets.e2e_asr_common import end_detect


def batches_utterances(scorer) -> bool:
    """Whether ``scorer.batch_score`` scores rows of several utterances in one call (it does not read the
    encoder output ``xs`` of a row whose state exists): ``decoder: ssm`` (``multi_utterance``), the length
    bonus and ESPnet's language models."""
    if getattr(scorer, "multi_utterance", False):
        return True
    from espnet.nets.scorers.length_bonus import LengthBonus

    if isinstance(scorer, LengthBonus):
        return True
    try:
        from espnet2.lm.abs_model import AbsLM
    except ImportError:  # pragma: no cover - espnet2 always has it
        return False
    return isinstance(scorer, AbsLM)


def supports(bs) -> bool:
    """Whether ``search_many`` runs this search (else it calls ``bs`` per utterance): ESPnet's
    ``BatchBeamSearch`` itself (not its streaming subclasses) without decoder hidden states (``return_hs``)."""
    from espnet.nets.batch_beam_search import BatchBeamSearch

    return type(bs) is BatchBeamSearch and not getattr(bs, "return_hs", False)


@dataclass
class _Utterance:
    """One utterance's search: its running hypotheses as rows (n of them, all of the same length L)."""

    x: torch.Tensor  # (T, D) encoder output
    maxlen: int
    minlen: int
    held: Dict[str, dict]  # the attributes of each partial scorer that keeps the utterance in itself
    yseq: torch.Tensor  # (n, L) token ids, <sos> (or the primer) first
    score: torch.Tensor  # (n,) weighted total
    scores: Dict[str, torch.Tensor]  # per scorer (n,) unweighted totals
    states: Dict[str, List[Any]]  # per scorer n states
    ended: List[Hypothesis] = field(default_factory=list)
    done: bool = False

    @property
    def n(self) -> int:
        return self.yseq.shape[0]

    def hypothesis(self, r: int) -> Hypothesis:
        return Hypothesis(yseq=self.yseq[r], score=self.score[r], scores={k: v[r] for k, v in self.scores.items()},
                          states={k: v[r] for k, v in self.states.items()}, hs=[])


def _limits(x: torch.Tensor, maxlenratio: float, minlenratio: float) -> tuple[int, int]:
    """(maxlen, minlen) of an utterance of x.shape[0] frames, as ``BeamSearch.forward`` sets them."""
    T = x.shape[0]
    maxlen = T if maxlenratio == 0 else (-int(maxlenratio) if maxlenratio < 0 else max(1, int(maxlenratio * T)))
    minlen = -int(minlenratio) if minlenratio < 0 else int(minlenratio * T)
    return maxlen, minlen


def _start(bs, x: torch.Tensor, maxlenratio: float, minlenratio: float) -> _Utterance:
    maxlen, minlen = _limits(x, maxlenratio, minlenratio)
    states = {k: [d.batch_init_state(x)] for k, d in bs.full_scorers.items()}
    held = {}
    for k, d in bs.part_scorers.items():
        states[k] = [d.batch_init_state(x)]
        if not getattr(d, "multi_utterance", False):
            held[k] = dict(vars(d))  # what it keeps of this utterance (ESPnet's CTC scorer: self.impl)
    primer = [bs.sos] if getattr(bs, "hyp_primer", None) is None else bs.hyp_primer
    return _Utterance(x=x, maxlen=maxlen, minlen=minlen, held=held,
                      yseq=torch.tensor([primer], device=x.device), score=torch.zeros(1, device=x.device),
                      scores={k: torch.zeros(1, device=x.device) for k in states}, states=states)


def _score_full(bs, live: List[_Utterance]) -> tuple[Dict[str, torch.Tensor], Dict[str, List[Any]]]:
    """Every full scorer's (N, V) scores and N new states for the rows of all ``live`` utterances."""
    scores, states = {}, {}
    for k, d in bs.full_scorers.items():
        if batches_utterances(d) or len(live) == 1:
            ys = torch.cat([u.yseq for u in live])
            x = live[0].x  # rows of other utterances do not read it (their states carry what they need)
            scores[k], states[k] = d.batch_score(ys, [s for u in live for s in u.states[k]],
                                                 x.expand(ys.shape[0], *x.shape))
            continue
        parts = [d.batch_score(u.yseq, u.states[k], u.x.expand(u.n, *u.x.shape)) for u in live]
        scores[k] = torch.cat([p[0] for p in parts])
        states[k] = [s for p in parts for s in p[1]]
    return scores, states


def _step(bs, live: List[_Utterance], i: int, maxlenratio: float) -> None:
    """One token more for every running hypothesis of the ``live`` utterances (``BatchBeamSearch.search``
    and ``post_process`` for all of them)."""
    x0 = live[0].x
    offsets = [0]
    for u in live:
        offsets.append(offsets[-1] + u.n)
    full, full_states = _score_full(bs, live)
    weighted = torch.zeros(offsets[-1], bs.n_vocab, dtype=x0.dtype, device=x0.device)
    for k in bs.full_scorers:
        weighted += bs.weights[k] * full[k]
    part_ids = None
    if bs.do_pre_beam:
        pre = weighted if bs.pre_beam_score_key == "full" else full[bs.pre_beam_score_key]
        part_ids = torch.topk(pre, bs.pre_beam_size, dim=-1)[1]
    part, part_states = {}, {}
    for k, d in bs.part_scorers.items():
        outs = [_as_of(d, u, k, lambda: d.batch_score_partial(u.yseq, None if part_ids is None else part_ids[a:b],
                                                              u.states[k], u.x))
                for u, a, b in zip(live, offsets, offsets[1:])]
        part[k] = torch.cat([o[0] for o in outs])
        part_states[k] = [o[1] for o in outs]
        weighted += bs.weights[k] * part[k]
    weighted += torch.cat([u.score for u in live]).to(dtype=weighted.dtype, device=weighted.device)[:, None]
    # top-k of each utterance over its (hypotheses x vocabulary), all utterances in one call
    V, nmax = bs.n_vocab, max(u.n for u in live)
    grid = weighted.new_full((len(live), nmax, V), float("-inf"))
    for j, (u, a) in enumerate(zip(live, offsets)):
        grid[j, : u.n] = weighted[a : a + u.n]
    k_best = min(bs.beam_size, nmax * V)
    top = grid.view(len(live), -1).topk(k_best, dim=1)[1]  # (U, beam) flat (row, token) indices
    prev_all, tok_all = torch.div(top, V, rounding_mode="trunc"), top % V
    for j, (u, a) in enumerate(zip(live, offsets)):
        keep = prev_all[j] < u.n  # (only a beam wider than n x V reaches padding)
        prev, tok = prev_all[j][keep], tok_all[j][keep]
        rows = prev + a
        u.yseq = torch.cat([u.yseq[prev], tok[:, None].to(u.yseq.dtype)], 1)
        u.score = weighted[rows, tok]
        new_scores = {k: u.scores[k][prev] + full[k][rows, tok] for k in full}
        new_scores.update({k: u.scores[k][prev] + part[k][rows, tok] for k in part})
        u.scores = new_scores
        prev_l, rows_l, tok_l = prev.tolist(), rows.tolist(), tok.tolist()
        new_states = {k: [bs.full_scorers[k].select_state(full_states[k], r) for r in rows_l] for k in full}
        for k, d in bs.part_scorers.items():
            new_states[k] = _as_of(d, u, k, lambda: [d.select_state(part_states[k][j], p, t)
                                                     for p, t in zip(prev_l, tok_l)])
        u.states = new_states
        _finish_step(bs, u, i, maxlenratio)


def _as_of(scorer, u: _Utterance, key: str, call):
    """``call()`` with ``scorer`` holding utterance u's attributes (a scorer that keeps its utterance in
    itself); what the call leaves in them is u's again."""
    if key not in u.held:
        return call()
    vars(scorer).update(u.held[key])
    try:
        return call()
    finally:
        u.held[key] = dict(vars(scorer))


def _finish_step(bs, u: _Utterance, i: int, maxlenratio: float) -> None:
    """``post_process`` and end detection of one utterance after step i."""
    if i == u.maxlen - 1:  # <eos> appended at the last position, so that some hypothesis ends
        u.yseq = torch.cat([u.yseq, torch.full_like(u.yseq[:, :1], bs.eos)], 1)
    is_eos = (u.yseq[:, -1] == bs.eos).tolist()
    if i >= u.minlen:
        u.ended += [u.hypothesis(r) for r, e in enumerate(is_eos) if e]
    if any(is_eos):
        rest = [r for r, e in enumerate(is_eos) if not e]
        idx = torch.tensor(rest, dtype=torch.long, device=u.yseq.device)
        u.yseq, u.score = u.yseq[idx], u.score[idx]
        u.scores = {k: v[idx] for k, v in u.scores.items()}
        u.states = {k: [v[r] for r in rest] for k, v in u.states.items()}
    if u.n == 0 or i >= u.maxlen - 1 or (maxlenratio == 0.0 and end_detect([h.asdict() for h in u.ended], i)):
        u.done = True


def search_many(bs, xs: Sequence[torch.Tensor], maxlenratio: float = 0.0,
                minlenratio: float = 0.0) -> List[List[Hypothesis]]:
    """xs: encoder outputs (T_u, D) of U utterances -> for each the n-best list ``bs(x=x, maxlenratio=...,
    minlenratio=...)`` gives it, best first. A search ``supports`` does not run is called per utterance."""
    if not supports(bs) or len(xs) < 2:
        return [bs(x=x, maxlenratio=maxlenratio, minlenratio=minlenratio) for x in xs]
    utts = [_start(bs, x, maxlenratio, minlenratio) for x in xs]
    i = 0
    while True:
        live = [u for u in utts if not u.done]
        if not live:
            break
        _step(bs, live, i, maxlenratio)
        i += 1
    out = []
    for u in utts:
        if bs.normalize_length:
            nbest = sorted(u.ended, key=lambda h: h.score / (len(h.yseq) - 1), reverse=True)
        else:
            nbest = sorted(u.ended, key=lambda h: h.score, reverse=True)
        if not nbest and minlenratio >= 0.1:  # as BeamSearch.forward: once more with a smaller minimum length
            nbest = bs(x=u.x, maxlenratio=maxlenratio, minlenratio=max(0.0, minlenratio - 0.1))
        out.append(nbest)
    return out


class _Searched:
    """Stands in for a Speech2Text's beam search whose result is known: returns that n-best."""

    def __init__(self, bs, nbest: List[Hypothesis]):
        self.nn_dict, self._nbest = bs.nn_dict, nbest

    def __call__(self, x, maxlenratio=0.0, minlenratio=0.0):
        return self._nbest


def recognize_many(s2t, encs: Sequence[torch.Tensor]) -> List[list]:
    """``s2t._decode_single_sample(enc)`` for each encoder output (T_u, D), their beam searches run together
    (``search_many``): per utterance [(text, tokens, token ids, hypothesis)] as ESPnet's Speech2Text gives
    it. ``s2t``: ESPnet's ``Speech2Text`` (or s4speech's ``Recognizer``); one with a transducer or a Hugging
    Face decoder, or a search ``search_many`` does not run, decodes one utterance after the other."""
    bs = getattr(s2t, "beam_search", None)
    if (len(encs) < 2 or bs is None or not supports(bs) or getattr(s2t, "beam_search_transducer", None)
            or getattr(s2t, "hugging_face_model", None)):
        return [s2t._decode_single_sample(e) for e in encs]
    decoder = getattr(bs.nn_dict, "decoder", None)
    if type(decoder).__name__ == "S4Decoder":  # ESPnet's decoder: s4 needs its step matrices first
        for m in decoder.modules():
            if hasattr(m, "setup_step"):
                m.setup_step()
    nbests = search_many(bs, encs, getattr(s2t, "maxlenratio", 0.0), getattr(s2t, "minlenratio", 0.0))
    out = []
    try:
        for e, nbest in zip(encs, nbests):
            s2t.beam_search = _Searched(bs, nbest)  # ESPnet's own conversion of the n-best to text
            out.append(s2t._decode_single_sample(e))
    finally:
        s2t.beam_search = bs
    return out
