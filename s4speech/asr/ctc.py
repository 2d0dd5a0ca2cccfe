"""CTC prefix scores for ESPnet's ``BatchBeamSearch`` without a loop over the encoder frames.

ESPnet's ``CTCPrefixScorer`` (``CTCPrefixScoreTH``) runs the prefix recursion of Watanabe et al. (2017)
frame by frame, for every (hypothesis, pre-beam candidate) pair: for a prefix g extended by c, over the
frames t = start .. T-1 (start = max(len(g), 1)),

    r^n_t(h) = logaddexp(r^n_{t-1}(h), phi_{t-1}) + log p_t(c)
    r^b_t(h) = logaddexp(r^n_{t-1}(h), r^b_{t-1}(h)) + log p_t(blank)
    log psi(h) = logsumexp_t(phi_{t-1} + log p_t(c))

with phi_t = logaddexp(r^n_t(g), r^b_t(g)) (r^b_t(g) alone when c repeats g's last token): ~5 small ops
per frame and search step, about half of the search time with an S4 decoder. Here:

- the scores log psi need only phi and log p: one reduction over the frames for all candidates at once;
- the forward variables r of an extension are needed only if the search keeps it (beam of 1.5 x beam
  candidates per hypothesis: 1 in 12 at beam 8), so they are computed at the next call, for the
  hypotheses kept only;
- both recursions are first-order linear recurrences in the probability domain, with a closed form over
  all frames: with A_t = sum_{k=start..t} log p_k(c),
  r^n_t = A_t + logcumsumexp_s(phi_{s-1} - A_{s-1}) (the initial r^n_{start-1} as the first term), and
  the same for r^b with the blank's cumulative log-probabilities and r^n in the place of phi.

A step is then a few dozen vectorized ops, whatever T. The sums are taken in float64 (A_t grows with T
and the closed form subtracts it again); the scores returned are float32 as ESPnet's. Candidates, <eos>
(the whole prefix' probability), the blank (excluded) and the scores outside the candidates (log 0 minus
the prefix' score) are ESPnet's.

``use_fast_ctc`` swaps this scorer into a built ``Speech2Text`` or beam search. ESPnet's ``margin``
windowing of ``CTCPrefixScoreTH`` needs the decoder's attention weights, which ``BatchBeamSearch`` never
passes, so it does not apply there (and it changes the scores).
"""
from __future__ import annotations

from typing import Any, List, Optional

import torch
from espnet.nets.scorers.ctc import CTCPrefixScorer as _ESPnetCTCPrefixScorer

LOGZERO = -10000000000.0  # ESPnet's log(0) in CTCPrefixScoreTH


class _Posteriors:
    """The CTC log-posteriors of the utterance searched: ``logp`` (T, V) float64 and ``logp_t`` (V, T), one
    row per token. The initial state of its search; every later state refers to it."""

    __slots__ = ("logp", "logp_t")

    def __init__(self, logp: torch.Tensor):
        self.logp, self.logp_t = logp, logp.T.contiguous()


class _Scored:
    """What one ``batch_score_partial`` call leaves for the hypotheses it scored and their extensions.

    ``utt``: their utterance; ``r``: (2, n, T - off) float64 forward variables (non-blank-, blank-ending)
    of the n hypotheses it scored, from frame ``off`` on (earlier frames are not read again); ``out_len``:
    their tokens (without <sos>); ``last``: (n,) their last tokens; ``log_psi``: (n, V) float64 prefix
    scores of their extensions."""

    __slots__ = ("utt", "r", "off", "out_len", "last", "log_psi")

    def __init__(self, utt, r, off, out_len, last, log_psi):
        self.utt, self.r, self.off, self.out_len, self.last, self.log_psi = utt, r, off, out_len, last, log_psi


class CTCPrefixScorer(_ESPnetCTCPrefixScorer):
    """ESPnet's ``CTCPrefixScorer`` with a frame-vectorized batch scorer (``batch_init_state``,
    ``batch_score_partial``, ``select_state``); the non-batch methods (``BeamSearch``) are ESPnet's.

    A hypothesis' state is (``_Scored`` of the call that scored its parent, the parent's row, its token);
    the initial one is the utterance's CTC posteriors (``_Posteriors``). Nothing is computed or indexed per
    hypothesis; the next ``batch_score_partial`` computes the forward variables of the hypotheses it gets,
    together. The scorer itself keeps nothing of an utterance: searches of several utterances share it
    (``multi_utterance``; one ``batch_score_partial`` call per utterance).
    """

    multi_utterance = True  # its states carry their utterance (s4speech.asr.search)

    def __init__(self, ctc: torch.nn.Module, eos: int, blank: int = 0):
        super().__init__(ctc, eos)
        self.blank = blank

    @classmethod
    def like(cls, scorer: _ESPnetCTCPrefixScorer) -> "CTCPrefixScorer":
        """The same CTC module and <eos> as ESPnet's ``scorer``."""
        return cls(scorer.ctc, scorer.eos)

    def batch_init_state(self, x: torch.Tensor) -> _Posteriors:
        """x: (T, D) encoder output of one utterance -> the initial state: its CTC log-posteriors."""
        return _Posteriors(self.ctc.log_softmax(x.unsqueeze(0)).detach()[0].to(torch.float64))

    def select_state(self, state, i: int, new_id: Optional[int] = None):
        if isinstance(state, _Scored):
            return (state, int(i), int(new_id))
        return super().select_state(state, i, new_id)

    @staticmethod
    def _full(like: torch.Tensor, *shape):
        return torch.full(shape, LOGZERO, dtype=torch.float64, device=like.device)

    def _extend(self, par: _Scored, rows: torch.Tensor, toks: torch.Tensor):
        """Forward variables (2, n, T - off) from frame off of the prefixes (parent ``rows`` of ``par``) +
        ``toks``: the recursion from frame start = max(len(parent), 1), in closed form."""
        logp, logp_t = par.utt.logp, par.utt.logp_t
        T = logp.shape[0]
        rp = par.r[:, rows]  # (2, n, T - par.off)
        phi = torch.where((toks == par.last[rows])[:, None], rp[1], torch.logaddexp(rp[0], rp[1]))
        start = max(par.out_len, 1)
        a = logp_t[toks]  # (n, T) log p_t(c)
        n = a.shape[0]
        init_n = a[:, 0] if par.out_len == 0 else self._full(logp, n)  # r^n_{start-1}; r^b_{start-1} is log 0
        rn, rb = a[:, :0], a[:, :0]
        if start < T:
            ph = phi[:, start - 1 - par.off : T - 1 - par.off]  # phi_{t-1}, t = start .. T-1
            A = torch.cumsum(a[:, start:], 1)
            e = ph - torch.cat([A.new_zeros(n, 1), A[:, :-1]], 1)  # phi_{t-1} - A_{t-1}
            e[:, 0] = torch.logaddexp(e[:, 0], init_n)
            rn = A + torch.logcumsumexp(e, 1)
            B = torch.cumsum(logp[start:, self.blank], 0)
            rn_prev = torch.cat([init_n[:, None], rn[:, :-1]], 1)  # r^n_{t-1}
            rb = B + torch.logcumsumexp(rn_prev - torch.cat([B.new_zeros(1), B[:-1]]), 1)
        r = torch.stack([torch.cat([init_n[:, None], rn], 1), torch.cat([self._full(logp, n, 1), rb], 1)])
        return r, start - 1

    def _forward(self, state: List[Any], n: int):
        """The hypotheses' utterance, forward variables (2, n, T - off) from frame off, off, their prefix
        scores (n,)."""
        if isinstance(state[0], _Posteriors):  # the initial hypothesis: nothing emitted, blanks only
            utt = state[0]
            logp = utt.logp
            T = logp.shape[0]
            r = torch.stack([self._full(logp, T), torch.cumsum(logp[:, self.blank], 0)])
            return utt, r[:, None].expand(2, n, T), 0, torch.zeros(n, dtype=torch.float64, device=logp.device)
        utt = state[0][0].utt
        if any(s[0].utt is not utt for s in state):
            raise ValueError("CTCPrefixScorer.batch_score_partial: hypotheses of several utterances in one call")
        dev = utt.logp.device
        groups = {}  # the calls that scored the parents (one in a search of one utterance)
        for i, s in enumerate(state):
            groups.setdefault(id(s[0]), []).append(i)
        parts = []
        for members in groups.values():
            par = state[members[0]][0]
            rows = torch.tensor([state[i][1] for i in members], device=dev)
            toks = torch.tensor([state[i][2] for i in members], device=dev)
            r, off = self._extend(par, rows, toks)
            parts.append((members, r, off, par.log_psi[rows, toks]))
        if len(parts) == 1:
            return utt, parts[0][1], parts[0][2], parts[0][3]
        off = max(p[2] for p in parts)
        order = torch.tensor([i for p in parts for i in p[0]], device=dev).argsort()
        r = torch.cat([p[1][:, :, off - p[2] :] for p in parts], 1)[:, order]
        return utt, r, off, torch.cat([p[3] for p in parts])[order]

    def batch_score_partial(self, y: torch.Tensor, ids: Optional[torch.Tensor], state: List[Any], x: torch.Tensor):
        """y: (n, L) prefixes (<sos> first), ids: (n, S) candidates (None: all tokens), state: n states ->
        scores (n, V) (log 0 minus the prefix' score outside the candidates, as ESPnet's), the new state."""
        utt, r, off, s_prev = self._forward(state, y.shape[0])
        logp = utt.logp
        T, V = logp.shape
        n, out_len = y.shape[0], y.shape[1] - 1
        dev = logp.device
        ids = torch.arange(V, device=dev).expand(n, V) if ids is None else ids.to(dev)
        S = ids.shape[1]
        r_sum = torch.logaddexp(r[0], r[1])  # (n, T - off)
        start = max(out_len, 1)
        last = y[:, -1].to(dev)
        a = utt.logp_t[ids.reshape(-1)].view(n, S, T)  # log p_t(c) of the candidates
        # phi_{t-1} + log p_t(c), t = start .. T-1 (r^b alone where c repeats the last token)
        lo, hi = start - 1 - off, T - 1 - off
        phi = torch.where((ids == last[:, None])[:, :, None], r[1][:, None, lo:hi], r_sum[:, None, lo:hi])
        terms = phi + a[:, :, start:]
        if out_len == 0:  # r^n_0 = log p_0(c)
            terms = torch.cat([a[:, :, :1], terms], 2)
        psi = torch.logsumexp(terms, 2) if terms.shape[2] else self._full(logp, n, S)
        log_psi = self._full(logp, n, V)
        log_psi.scatter_(1, ids, psi)
        log_psi[:, self.eos] = r_sum[:, T - 1 - off] if T - 1 >= off else LOGZERO  # the whole prefix
        if self.eos != self.blank:
            log_psi[:, self.blank] = LOGZERO
        scores = (log_psi - s_prev[:, None]).to(x.dtype)
        return scores, _Scored(utt, r, off, out_len, last, log_psi)

    def extend_prob(self, x: torch.Tensor):
        raise NotImplementedError("s4speech's CTCPrefixScorer scores whole utterances (no streaming extension)")

    def extend_state(self, state):
        raise NotImplementedError("s4speech's CTCPrefixScorer scores whole utterances (no streaming extension)")


def use_fast_ctc(target) -> Any:
    """Swap ESPnet's CTC prefix scorer for ``CTCPrefixScorer`` in a built ``Speech2Text`` (or anything
    with a ``beam_search``) or a ``BeamSearch`` itself; returns ``target``. Only a ``BatchBeamSearch``
    (or a subclass) uses the batch methods; other searches keep their scorer (nothing changes)."""
    from espnet.nets.batch_beam_search import BatchBeamSearch

    bs = getattr(target, "beam_search", target)
    if not isinstance(bs, BatchBeamSearch):
        return target
    for key, scorer in list(bs.scorers.items()):
        if type(scorer) is _ESPnetCTCPrefixScorer:
            fast = CTCPrefixScorer.like(scorer)
            bs.scorers[key] = fast
            if key in bs.part_scorers:
                bs.part_scorers[key] = fast
            if key in bs.full_scorers:
                bs.full_scorers[key] = fast
    return target
