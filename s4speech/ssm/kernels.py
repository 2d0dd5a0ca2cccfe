"""S4 and S4D convolution kernels in plain PyTorch.

Both kernels describe H independent single-input single-output linear systems
with a real state of size N (``d_state``):

    x_t = dA x_{t-1} + dB u_t          (state  x: (H, N))
    y_t = C x_t                        (output y: (H,))

so the causal convolution kernel is K_l = C dA^l dB, l = 0 .. L-1.

* ``S4DKernel``: A diagonal (N/2 complex conjugate pairs), zero-order hold,
  Vandermonde kernel (S4D-Lin / S4D-Inv initialisation), computed blockwise:
  O(H N sqrt(L)) complex exponentials and one real matrix product.
* ``S4Kernel``: A = Lambda - P P^*, HiPPO-LegS in diagonal-plus-low-rank form,
  bilinear discretization, kernel from the truncated generating function at
  the roots of unity (Cauchy sums + Woodbury correction) and an inverse FFT.
  The two halves of each conjugate pair share one denominator, so the Cauchy
  sums are one reciprocal per pair and a real matrix product (``_PairCauchy``,
  which recomputes instead of storing its intermediates for the backward).
  Optionally ``n_ssm`` copies of (A, B) are shared by the H channels.

Memory is bounded: the S4 kernel is computed in chunks of frequencies, so no
tensor holds more than ``CHUNK_ELEMENTS`` complex numbers besides the (H, L)
output (the S4D blocks hold O(H N sqrt(L))).

Each kernel also exposes ``step(u, state)``, the recurrence. The S4 step is O(N)
per channel: the bilinear step of a diagonal-plus-rank-one A is diagonal plus
rank one (``S4Kernel.step_system``); its state holds the complex half-state as
interleaved (re, im) pairs, like the S4D state. With ``inplace`` the new state
overwrites the old one, but only where no autograd graph is built (grad mode
off, or nothing involved requires grad); otherwise the step is out of place, so
``backward()`` through a recurrence works.

The step's discretized parameters (dA, dB, C) are cached between steps, when no
graph is built. The cache is recomputed when a parameter's (data_ptr, version,
dtype, device) changes: an optimizer step, any in-place edit through the
parameter, ``load_state_dict``, ``.to()``. An in-place edit through ``p.data``
(EMA and weight-averaging helpers) changes none of these, so the cache is also
dropped (``refresh_step``) at ``train()`` / ``eval()``, at ``load_state_dict`` and
when a recurrence starts (``SSMLayer.default_state``: the decoder's ``init_state``,
the TTS inference), at the cost of one recomputation per utterance. (A
fingerprint of the values checked at every step would cost O(H N) reads per
step and layer, about the size of the step itself.) So a ``.data`` edit made
between two steps of one recurrence is seen from the next recurrence on.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_ELEMENTS = 1 << 19  # complex elements per (H, N/2, chunk) intermediate (small: stays in cache)
BLOCK_EXPONENT = 0.6  # S4 kernel blocks of 2^ceil(BLOCK_EXPONENT log2 L) samples (measured best on CPU)


def _chunks(n_total: int, per_item: int):
    """Yield (start, stop) ranges so that per_item * (stop - start) <= CHUNK_ELEMENTS."""
    step = max(1, CHUNK_ELEMENTS // max(per_item, 1))
    for s in range(0, n_total, step):
        yield s, min(s + step, n_total)


def _register(module: nn.Module, name: str, value: torch.Tensor, lr: float | None, trainable=True):
    """A parameter of the SSM itself (dt, A, B): no weight decay, own learning rate.

    ESPnet's optimizer builder (espnet2.optimizers.optim_groups) reads ``_optim``.
    """
    if not trainable:
        module.register_buffer(name, value)
        return
    p = nn.Parameter(value)
    optim = {"weight_decay": 0.0}
    if lr is not None:
        optim["lr"] = lr
    p._optim = optim
    module.register_parameter(name, p)


def _log_dt(H: int, dt_min: float, dt_max: float) -> torch.Tensor:
    # dt log-uniform in [dt_min, dt_max]
    return torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)


def _trains(module: nn.Module, *tensors: torch.Tensor) -> bool:
    """Would a computation from this module's parameters (and ``tensors``) build an autograd graph now?"""
    return torch.is_grad_enabled() and (
        any(p.requires_grad for p in module.parameters()) or any(t.requires_grad for t in tensors)
    )


class _Cached:
    """Cache of a function of a module's parameters, keyed on their versions (see the module docstring)."""

    def __init__(self):
        self.key = None
        self.value = None

    def clear(self):
        self.key = self.value = None

    def get(self, module: nn.Module, fn):
        if _trains(module):
            return fn()  # training through the recurrence: never cache a graph
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in module.parameters())
        key += tuple((b.data_ptr(), b._version) for b in module.buffers())
        if key != self.key:
            with torch.no_grad():
                self.value = fn()
            self.key = key
        return self.value


class _StepCached(nn.Module):
    """A kernel whose step parameters are cached in ``self._step``, dropped by ``refresh_step``."""

    def __init__(self):
        super().__init__()
        self._step = _Cached()

    def refresh_step(self):
        """Recompute the step parameters at the next step (after an edit through ``p.data``)."""
        self._step.clear()

    def _keep_init(self, *names: str) -> None:
        """Remember the state-space initialization of these parameters (for ``espnet_initialization_fn``)."""
        self._ssm_init = {n: getattr(self, n).detach().clone() for n in names}

    def espnet_initialization_fn(self):
        """Called by ESPnet's ``initialize`` after its ``init:`` (e.g. xavier_uniform, which rewrites every
        matrix): the state-space parameters (A, P, B) get their HiPPO / S4D initialization back."""
        with torch.no_grad():
            for name, value in self._ssm_init.items():
                getattr(self, name).copy_(value)
        self.refresh_step()

    def train(self, mode: bool = True):
        self.refresh_step()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self.refresh_step()
        super()._load_from_state_dict(*args, **kwargs)


class S4DKernel(_StepCached):
    """Diagonal SSM: A = -exp(log_A_real) + i A_imag, ZOH discretization."""

    def __init__(self, H: int, N: int = 64, init: str = "lin", dt_min=1e-3, dt_max=1e-1, lr=None):
        super().__init__()
        assert N % 2 == 0, "d_state must be even (conjugate pairs)"
        self.H, self.N = H, N
        n = torch.arange(N // 2, dtype=torch.float)
        if init == "lin":  # S4D-Lin
            imag = math.pi * n
        elif init == "inv":  # S4D-Inv
            imag = (N / math.pi) * (N / (2 * n + 1) - 1)
        else:
            raise ValueError(f"unknown S4D init {init!r} (expected 'lin' or 'inv')")
        _register(self, "log_dt", _log_dt(H, dt_min, dt_max), lr)
        _register(self, "log_A_real", torch.log(0.5 * torch.ones(H, N // 2)), lr)
        _register(self, "A_imag", imag.repeat(H, 1), lr)
        _register(self, "B", torch.view_as_real(torch.ones(H, N // 2, dtype=torch.cfloat)).clone(), lr)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N // 2, dtype=torch.cfloat)))
        self._keep_init("log_A_real", "A_imag", "B")

    def _discrete(self):
        """dtA, dB*C-free pieces: (H, N/2) complex each."""
        dt = self.log_dt.float().exp()[:, None]  # (H, 1)
        A = -self.log_A_real.float().exp() + 1j * self.A_imag.float()  # (H, N/2)
        dtA = dt * A
        dB = (torch.exp(dtA) - 1.0) / A * torch.view_as_complex(self.B.float())  # (H, N/2)
        return dtA, dB

    def forward(self, L: int) -> torch.Tensor:
        """K: (H, L), K_l = 2 Re sum_n C_n dB_n exp(dtA_n l).

        Blocked Vandermonde: with l = c S + j (block c of length S ~ sqrt(L), offset j),
        K_{cS+j} = 2 Re sum_n [C_n dB_n exp(dtA_n c S)] exp(dtA_n j), one real matrix product
        (H: (L/S, N) @ (N, S)) over [Re, Im] parts, so only O(H N sqrt(L)) complex exponentials.
        """
        dtA, dB = self._discrete()
        CB = torch.view_as_complex(self.C.float()) * dB  # (H, N/2)
        S = 1 << max(0, math.ceil(math.log2(max(L, 1)) / 2))  # block length, >= sqrt(L)
        nc = -(-L // S)
        j = torch.arange(S, device=dtA.device, dtype=torch.float)
        c = torch.arange(nc, device=dtA.device, dtype=torch.float) * S
        V = torch.exp(dtA[:, :, None] * j)  # (H, N/2, S)
        W = CB[:, None, :] * torch.exp(dtA[:, None, :] * c[:, None])  # (H, nc, N/2)
        # 2 Re(W V) = 2 (Re W Re V - Im W Im V)
        K = 2 * torch.cat([W.real, -W.imag], -1) @ torch.cat([V.real, V.imag], -2)  # (H, nc, S)
        return K.reshape(self.H, nc * S)[:, :L]

    def _step_params(self):
        dtA, dB = self._discrete()
        return torch.exp(dtA), dB, torch.view_as_complex(self.C.float())

    def step(self, u: torch.Tensor, state: torch.Tensor, inplace: bool = False):
        """u: (B, H), state: (B, H, N) real -> y: (B, H), new state (B, H, N).

        ``inplace``: written into ``state``, unless an autograd graph is being built."""
        dA, dB, C = self._step.get(self, self._step_params)
        x = torch.view_as_complex(state.float().reshape(*state.shape[:-1], -1, 2).contiguous())
        x = dA * x + dB * u.float()[..., None]  # (B, H, N/2)
        y = 2 * torch.einsum("hn,bhn->bh", C, x).real
        new = torch.view_as_real(x).flatten(-2).to(state.dtype)
        return y.to(u.dtype), (state.copy_(new) if inplace and not _trains(self, u, state) else new)


class _PairCauchy(torch.autograd.Function):
    """R = coef @ Q with Q = [Re d, Im d] / |d|^2, d = basis @ poly (the conjugate-pair Cauchy sums).

    coef: (H, V, n), basis: (H, n, 3), poly: (H, 3, 2l) real -> R: (H, V, 2l). Only the (small) inputs
    are saved: the backward recomputes the (H, n, 2l) denominators instead of keeping them, so the
    memory of a kernel with gradients stays O(H (n + V) l) per chunk rather than growing with L.
    """

    @staticmethod
    def _q(basis, poly):
        den = basis @ poly  # (H, n, 2l): [Re d | Im d]
        H, n, l2 = den.shape
        d = den.view(H, n, 2, l2 // 2)
        return d * (1 / d.square().sum(2, keepdim=True))  # [Re d, Im d] / |d|^2

    @staticmethod
    def forward(ctx, coef, basis, poly):
        ctx.save_for_backward(coef, basis, poly)
        Q = _PairCauchy._q(basis, poly)
        return coef @ Q.flatten(2)

    @staticmethod
    def backward(ctx, gR):
        coef, basis, poly = ctx.saved_tensors
        Q = _PairCauchy._q(basis, poly)  # (H, n, 2, l)
        Qf = Q.flatten(2)
        g_coef = gR @ Qf.transpose(1, 2)
        gQ = (coef.transpose(1, 2) @ gR).view_as(Q)
        A, B = Q[:, :, 0], Q[:, :, 1]
        gA, gB = gQ[:, :, 0], gQ[:, :, 1]
        # Q = (dr, di) / (dr^2 + di^2):  dA/ddr = B^2 - A^2, dA/ddi = dB/ddr = -2AB, dB/ddi = A^2 - B^2
        diff, prod2 = B * B - A * A, 2 * A * B
        g_den = torch.stack([gA * diff - gB * prod2, -gA * prod2 - gB * diff], 2).flatten(2)
        return g_coef, g_den @ poly.transpose(1, 2), basis.transpose(1, 2) @ g_den


def hippo_legs_dplr(N: int):
    """HiPPO-LegS as A = V (Lambda - P~ P~^*) V^* ; returns half (conjugate-pair) Lambda, P~, B~.

    A_nk = -sqrt(2n+1) sqrt(2k+1) (n > k), -(n+1) (n = k), 0 (n < k);  B_n = sqrt(2n+1).
    With P_n = sqrt(n + 1/2), A + P P^T = -I/2 + S (S skew-symmetric), diagonalised unitarily.
    """
    q = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * q + 1)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(q + 1)
    P = torch.sqrt(q + 0.5)
    S = A + P[:, None] * P[None, :]  # = -I/2 + skew
    skew = S + 0.5 * torch.eye(N, dtype=torch.float64)
    w, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # skew = V diag(i w) V^*
    keep = w > 0  # one of each conjugate pair
    Lambda = (-0.5 + 1j * w[keep])
    Vh = V[:, keep].conj().T  # (N/2, N)
    P_t = Vh @ P.to(torch.complex128)
    B_t = Vh @ r.to(torch.complex128)
    return Lambda, P_t, B_t


class S4Kernel(_StepCached):
    """S4: DPLR A = Lambda - P P^* (HiPPO-LegS), bilinear discretization.

    Parameters are the N/2 conjugate-pair halves; the system they describe is
    the real N-dimensional one. C is the true output matrix (not C~), so the
    kernel of any length and the recurrence describe the same system.
    """

    def __init__(self, H: int, N: int = 64, dt_min=1e-3, dt_max=1e-1, lr=None, n_ssm: int | None = None):
        super().__init__()
        assert N % 2 == 0, "d_state must be even (conjugate pairs)"
        n_ssm = H if n_ssm is None else n_ssm
        if n_ssm < 1 or H % n_ssm:
            raise ValueError(f"n_ssm={n_ssm} must divide the number of channels {H}")
        self.H, self.N, self.n_ssm = H, N, n_ssm
        Lambda, P, B = hippo_legs_dplr(N)
        rep = lambda z: torch.view_as_real(z.to(torch.cfloat)).repeat(n_ssm, 1, 1)  # (n_ssm, N/2, 2)
        _register(self, "log_dt", _log_dt(H, dt_min, dt_max), lr)
        _register(self, "log_L_real", torch.log(-Lambda.real.float()).repeat(n_ssm, 1), lr)
        _register(self, "L_imag", Lambda.imag.float().repeat(n_ssm, 1), lr)
        _register(self, "P", rep(P), lr)
        _register(self, "B", rep(B), lr)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N // 2, dtype=torch.cfloat)))
        self._keep_init("log_L_real", "L_imag", "P", "B")

    def _params(self, dtype=torch.float):
        """dt (H,), Lambda, P, B, C (H, N/2) complex; A, P, B shared by channels h = h' mod n_ssm."""
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        c = lambda p: torch.view_as_complex(p.to(dtype).contiguous())
        Lambda = (-self.log_L_real.to(dtype).exp() + 1j * self.L_imag.to(dtype)).to(cdtype)
        Lambda, P, B = Lambda, c(self.P), c(self.B)
        if self.n_ssm != self.H:  # tied (A, B): broadcast the n_ssm copies to the H channels
            r = self.H // self.n_ssm
            Lambda, P, B = Lambda.repeat(r, 1), P.repeat(r, 1), B.repeat(r, 1)
        return self.log_dt.to(dtype).exp(), Lambda, P, B, c(self.C)

    def real_system(self, dtype=torch.float):
        """Continuous (A, b, c) in real coordinates r = [Re x, Im x]: (H,N,N), (H,N), (H,N).

        (A x)_n = Lambda_n x_n - P_n * 2 Re(P^* x)   (the conjugate half folded in)
        """
        dt, Lam, P, B, C = self._params(dtype)
        H, n = Lam.shape
        eye = torch.eye(n, dtype=dtype, device=Lam.device)
        Ar = torch.cat([torch.cat([Lam.real[:, :, None] * eye, -Lam.imag[:, :, None] * eye], -1),
                        torch.cat([Lam.imag[:, :, None] * eye, Lam.real[:, :, None] * eye], -1)], -2)
        p = torch.cat([P.real, P.imag], -1)  # (H, N)
        Ar = Ar - 2 * p[:, :, None] * p[:, None, :]
        b = torch.cat([B.real, B.imag], -1)
        c = 2 * torch.cat([C.real, -C.imag], -1)
        return dt, Ar, b, c

    def discrete_system(self, dtype=torch.float):
        """Bilinear: dA = (I - dt/2 A)^-1 (I + dt/2 A), dB = dt (I - dt/2 A)^-1 b."""
        dt, A, b, c = self.real_system(dtype)
        I = torch.eye(self.N, dtype=dtype, device=A.device)
        half = dt[:, None, None] / 2 * A
        lhs = I - half
        dA = torch.linalg.solve(lhs, I + half)
        dB = torch.linalg.solve(lhs, dt[:, None] * b)
        return dA, dB, c

    def _structured_dA(self, dtype):
        """dA of ``discrete_system`` (real coordinates [Re x, Im x]) built in O(N^2) from the
        diagonal-plus-rank-one form of ``step_system`` instead of two dense solves; and c."""
        a, f, q, _, C = self.step_system(dtype)
        n = self.N // 2
        eye = torch.eye(n, dtype=dtype, device=a.device)
        ar, ai = a.real[:, :, None] * eye, a.imag[:, :, None] * eye
        dA = torch.cat([torch.cat([ar, -ai], -1), torch.cat([ai, ar], -1)], -2)
        # - f Re(q . x) = - [Re f; Im f] [Re q, -Im q] r
        dA = dA - torch.cat([f.real, f.imag], -1)[:, :, None] * torch.cat([q.real, -q.imag], -1)[:, None, :]
        return dA, 2 * torch.cat([C.real, -C.imag], -1)

    def forward(self, L: int, dtype=torch.float) -> torch.Tensor:
        """K: (H, L) through truncated generating functions at roots of unity, in blocks.

        Blocks of S ~ L^0.6 samples: with c_j = c dA^{jS} (c_{j+1} = c_j dA^S, one vector-matrix
        product per block), block j of the kernel, K_{jS+l} = c_j dA^l dB (l < S), has the truncated
        generating function c~_j (I - z dA)^-1 dB at the S-th roots of unity, c~_j = c_j (I - dA^S)
        = c_j - c_{j+1}. The resolvent is evaluated by Cauchy sums with the Woodbury correction; the
        denominators depend on the frequency only, so the S/2+1 of them serve every block, and the
        O(H N L) part is one real matrix product over all blocks' numerators. Then an inverse FFT
        of size S per block. (S = L is the plain S4 kernel: c~ = c (I - dA^L).)
        """
        dt, Lam, P, B, C = self._params(dtype)
        n = self.N // 2
        S = 1 << max(0, math.ceil(math.log2(max(L, 1)) * BLOCK_EXPONENT))  # block length ~ L^0.6
        m = -(-L // S)  # blocks
        if _trains(self):
            # the (H, N, N) matrices of the repeated squaring are cheap to recompute; kept, they cost memory per layer
            c_t = checkpoint(self._block_outputs, S, m, dtype, use_reentrant=False)
        else:
            c_t = self._block_outputs(S, m, dtype)
        Ct = (c_t[..., :n] - 1j * c_t[..., n:]) / 2  # back to the complex half (m, H, N/2)
        # numerators of the Cauchy sums: C~_j B, C~_j P (every block), P^*B, P^*P   (2m + 2, H, N/2)
        num = torch.cat([Ct * B, Ct * P, (P.conj() * B)[None], (P.conj() * P)[None]])
        nv = num.shape[0]
        # Each conjugate pair shares one denominator:
        #   v / (a - b lam) + conj(v) / (a - b conj(lam)) = (2 a Re v - 2 b Re(v conj(lam))) / den,
        #   den = (a - b lam)(a - b conj(lam)) = a^2 - 2 a b Re(lam) + b^2 |lam|^2,
        # so the sums are one real matrix product with Q = 1/den (one reciprocal per pair,
        # real arithmetic throughout): r_v = a (2 Re v . Q) - b (2 Re(v conj(lam)) . Q).
        coef = 2 * torch.cat([num.real, (num * Lam.conj()).real]).transpose(0, 1)  # (H, 2 nv, N/2)
        basis = torch.stack([torch.ones_like(Lam.real), Lam.real, Lam.abs().square()], -1)  # (H, N/2, 3)
        cdtype = Lam.dtype
        k = torch.arange(S // 2 + 1, device=Lam.device, dtype=dtype)
        Khat = []
        # frequencies per chunk: the sums R (H, 2 nv, 2 l) stay ~4M floats (bounded memory; a matrix
        # product with a short output dimension is also the fast case of CPU BLAS here)
        for s, e in _chunks(S // 2 + 1, 4 * self.H * max(n, nv) * CHUNK_ELEMENTS // (1 << 22)):
            z = torch.exp(-2j * math.pi * k[s:e].to(cdtype) / S)  # rfft frequencies of a block (l,)
            a, bz = 1 - z, (1 + z) * dt[:, None].to(cdtype) / 2  # (l,), (H, l)
            poly = torch.stack([(a * a).expand_as(bz), -2 * a * bz, bz * bz], 1)  # (H, 3, l): den = poly(lam)
            R = _PairCauchy.apply(coef, basis, torch.cat([poly.real, poly.imag], -1)).view(self.H, 2 * nv, 2, e - s)
            R = torch.complex(R[:, :, 0], -R[:, :, 1])  # (H, 2 nv, l)
            r = a * R[:, :nv] - bz[:, None] * R[:, nv:]  # (H, nv, l)
            r0, r1, r2, r3 = r[:, :m], r[:, m : 2 * m], r[:, 2 * m : 2 * m + 1], r[:, 2 * m + 1 :]
            # Woodbury: (D + u P^*)^-1 = R - R u (1 + P^* R u)^-1 P^* R,  u = (1+z) dt/2 P
            b = bz[:, None]
            Khat.append(dt[:, None, None] * (r0 - b * r1 * r2 / (1 + b * r3)))  # (H, m, l)
        K = torch.fft.irfft(torch.cat(Khat, -1), n=S)  # (H, m, S)
        return K.reshape(self.H, m * S)[:, :L]

    def _block_outputs(self, S: int, m: int, dtype) -> torch.Tensor:
        """c~_j = c dA^{jS} (I - dA^S), j < m, in real coordinates: (m, H, N)."""
        dA, c = self._structured_dA(dtype)  # (H, N, N), (H, N) in real coordinates [Re x, Im x]
        dA_S = torch.linalg.matrix_power(dA, S)
        cs = [c]
        for _ in range(m):
            cs.append(torch.bmm(cs[-1][:, None, :], dA_S)[:, 0])
        cs = torch.stack(cs)  # (m + 1, H, N): c dA^{jS}
        return cs[:-1] - cs[1:]

    def step_system(self, dtype=torch.float64):
        """The bilinear recurrence in O(N) diagonal-plus-rank-one form on the complex half state x.

        With A x = Lambda x - P s(x), s(v) = 2 Re(P^* v) (the conjugate half folded in),
        D0 = (1 - dt/2 Lambda)^-1 and the Woodbury identity for (I - dt/2 A)^-1:

            x' = a x - f Re(q . x) + g u,     y = 2 Re(C . x')

        a = D0 (1 + dt/2 Lambda), q = conj(P) (1 + a), kappa = (dt/2) / (1 + (dt/2) s(D0 P)),
        f = 2 kappa D0 P, g = dt D0 B - kappa dt s(D0 B) D0 P.
        Returns a, f, q, g, C: (H, N/2) complex each (the same system as ``discrete_system``).
        """
        dt, Lam, P, B, C = self._params(dtype)
        hdt = (dt / 2)[:, None]
        D0 = 1 / (1 - hdt * Lam)
        a = D0 * (1 + hdt * Lam)
        D0P, D0B = D0 * P, D0 * B
        s = lambda v: 2 * (P.conj() * v).sum(-1, keepdim=True).real
        kappa = hdt / (1 + hdt * s(D0P))  # (H, 1)
        f = 2 * kappa * D0P
        g = dt[:, None] * (D0B - kappa * s(D0B) * D0P)
        return a, f, P.conj() * (1 + a), g, C

    def _step_params(self):
        a, f, q, g, C = self.step_system(torch.float64)
        inter = lambda z: torch.view_as_real(z.resolve_conj()).flatten(-2).float().contiguous()  # (re, im) pairs
        # Re(q . x) and 2 Re(C . x) are real dot products with the interleaved state; so are f and g terms
        return a.to(torch.complex64), inter(f), inter(q.conj()), inter(g), inter(2 * C.conj())

    def step(self, u: torch.Tensor, state: torch.Tensor, inplace: bool = False):
        """u: (B, H), state: (B, H, N) real -> y: (B, H), new state.

        The state holds the N/2 complex half-state as interleaved (re, im) pairs; one step costs O(N)
        per channel (diagonal plus rank one), not the O(N^2) of the dense discretized matrix.
        ``inplace`` (a contiguous float32 state the caller owns): the new state is written into
        ``state``, with no (B, H, N) temporaries (each costs page faults on CPU), unless an autograd
        graph is being built (the backward needs the old state).
        """
        a, f, q, g, c = self._step.get(self, self._step_params)
        own = inplace and state.dtype == torch.float and state.is_contiguous() and not _trains(self, u, state)
        s = state if own else state.float().contiguous()
        w = torch.linalg.vecdot(s, q).unsqueeze(-1)  # Re(q . x): (B, H, 1), from the old state
        z = torch.view_as_complex(s.view(*s.shape[:-1], -1, 2))
        if own:
            z.mul_(a)  # x <- a x in place
            x = s
        else:
            x = torch.view_as_real(a * z).flatten(-2)
        x.addcmul_(g, u.float().unsqueeze(-1)).addcmul_(f, w, value=-1)  # + g u - f w
        y = torch.linalg.vecdot(x, c)
        return y.to(u.dtype), (x if own else x.to(state.dtype))


def build_kernel(kind: str, H: int, N: int, **kw) -> nn.Module:
    if kind == "s4":
        kw.pop("init", None)
        return S4Kernel(H, N, **kw)
    if kind == "s4d":
        if kw.pop("n_ssm", None) is not None:
            raise ValueError("n_ssm (tied A, B) is an option of the s4 kernel only")
        return S4DKernel(H, N, **kw)
    raise ValueError(f"unknown SSM kernel {kind!r} (expected 's4' or 's4d')")
