"""S4 and S4D convolution kernels in plain PyTorch.

Both kernels describe H independent single-input single-output linear systems
with a real state of size N (``d_state``):

    x_t = dA x_{t-1} + dB u_t          (state  x: (H, N))
    y_t = C x_t                        (output y: (H,))

so the causal convolution kernel is K_l = C dA^l dB, l = 0 .. L-1.

* ``S4DKernel``: A diagonal (N/2 complex conjugate pairs), zero-order hold,
  Vandermonde kernel (S4D-Lin / S4D-Inv initialisation).
* ``S4Kernel``: A = Lambda - P P^*, HiPPO-LegS in diagonal-plus-low-rank form,
  bilinear discretization, kernel from the truncated generating function at
  the roots of unity (Cauchy sums + Woodbury correction) and an inverse FFT.

Memory is bounded: kernels are computed in chunks of L, so no tensor holds
more than ``CHUNK_ELEMENTS`` complex numbers besides the (H, L) output.

Each kernel also exposes ``step(u, state)``, the recurrence, with its
discretized matrices cached and recomputed automatically when a parameter
changes (optimizer step, ``load_state_dict``, ``.to()``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 24  # complex elements per (H, N/2, chunk) intermediate


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


class _Cached:
    """Cache of a function of a module's parameters, keyed on their versions."""

    def __init__(self):
        self.key = None
        self.value = None

    def get(self, module: nn.Module, fn):
        if torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters()):
            return fn()  # training through the recurrence: never cache a graph
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in module.parameters())
        key += tuple((b.data_ptr(), b._version) for b in module.buffers())
        if key != self.key:
            with torch.no_grad():
                self.value = fn()
            self.key = key
        return self.value


class S4DKernel(nn.Module):
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
        self._step = _Cached()

    def _discrete(self):
        """dtA, dB*C-free pieces: (H, N/2) complex each."""
        dt = self.log_dt.float().exp()[:, None]  # (H, 1)
        A = -self.log_A_real.float().exp() + 1j * self.A_imag.float()  # (H, N/2)
        dtA = dt * A
        dB = (torch.exp(dtA) - 1.0) / A * torch.view_as_complex(self.B.float())  # (H, N/2)
        return dtA, dB

    def forward(self, L: int) -> torch.Tensor:
        """K: (H, L), K_l = 2 Re sum_n C_n dB_n exp(dtA_n l)."""
        dtA, dB = self._discrete()
        CB = torch.view_as_complex(self.C.float()) * dB  # (H, N/2)
        out = []
        for s, e in _chunks(L, self.H * self.N // 2):
            ell = torch.arange(s, e, device=dtA.device, dtype=torch.float)
            V = torch.exp(dtA[:, :, None] * ell)  # (H, N/2, l) Vandermonde
            out.append(2 * torch.einsum("hn,hnl->hl", CB, V).real)
        return torch.cat(out, dim=-1)

    def _step_params(self):
        dtA, dB = self._discrete()
        return torch.exp(dtA), dB, torch.view_as_complex(self.C.float())

    def step(self, u: torch.Tensor, state: torch.Tensor):
        """u: (B, H), state: (B, H, N) real -> y: (B, H), new state (B, H, N)."""
        dA, dB, C = self._step.get(self, self._step_params)
        x = torch.view_as_complex(state.float().reshape(*state.shape[:-1], -1, 2).contiguous())
        x = dA * x + dB * u.float()[..., None]  # (B, H, N/2)
        y = 2 * torch.einsum("hn,bhn->bh", C, x).real
        return y.to(u.dtype), torch.view_as_real(x).flatten(-2).to(state.dtype)


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


class S4Kernel(nn.Module):
    """S4: DPLR A = Lambda - P P^* (HiPPO-LegS), bilinear discretization.

    Parameters are the N/2 conjugate-pair halves; the system they describe is
    the real N-dimensional one. C is the true output matrix (not C~), so the
    kernel of any length and the recurrence describe the same system.
    """

    def __init__(self, H: int, N: int = 64, dt_min=1e-3, dt_max=1e-1, lr=None):
        super().__init__()
        assert N % 2 == 0, "d_state must be even (conjugate pairs)"
        self.H, self.N = H, N
        Lambda, P, B = hippo_legs_dplr(N)
        rep = lambda z: torch.view_as_real(z.to(torch.cfloat)).repeat(H, 1, 1)  # (H, N/2, 2)
        _register(self, "log_dt", _log_dt(H, dt_min, dt_max), lr)
        _register(self, "log_L_real", torch.log(-Lambda.real.float()).repeat(H, 1), lr)
        _register(self, "L_imag", Lambda.imag.float().repeat(H, 1), lr)
        _register(self, "P", rep(P), lr)
        _register(self, "B", rep(B), lr)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N // 2, dtype=torch.cfloat)))
        self._step = _Cached()

    def _params(self, dtype=torch.float):
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        c = lambda p: torch.view_as_complex(p.to(dtype).contiguous())
        Lambda = (-self.log_L_real.to(dtype).exp() + 1j * self.L_imag.to(dtype)).to(cdtype)
        return self.log_dt.to(dtype).exp(), Lambda, c(self.P), c(self.B), c(self.C)

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

    def forward(self, L: int, dtype=torch.float) -> torch.Tensor:
        """K: (H, L) through the generating function at the L-th roots of unity."""
        dt, Lam, P, B, C = self._params(dtype)
        # C~ = C (I - dA^L): the truncated generating function sum_{l<L} C dA^l dB z^l at z^L = 1
        dA, _, c = self.discrete_system(dtype)
        c_t = c - torch.einsum("hn,hnm->hm", c, torch.linalg.matrix_power(dA, L))
        n = self.N // 2
        Ct = (c_t[:, :n] - 1j * c_t[:, n:]) / 2  # back to the complex half (H, N/2)
        # numerators of the four Cauchy sums: C~B, C~P, P^*B, P^*P   (4, H, N/2)
        num = torch.stack([Ct * B, Ct * P, P.conj() * B, P.conj() * P])
        cdtype = Lam.dtype
        k = torch.arange(L // 2 + 1, device=Lam.device, dtype=dtype)
        Khat = []
        for s, e in _chunks(L // 2 + 1, 2 * self.H * n):
            z = torch.exp(-2j * math.pi * k[s:e].to(cdtype) / L)  # rfft frequencies (l,)
            a, bz = 1 - z, (1 + z) * dt[:, None].to(cdtype) / 2  # (l,), (H, l)
            # r(v) = sum over the conjugate pairs of v_n / ((1 - z) - (1 + z) dt/2 lambda_n)
            den = a - bz[:, None, :] * Lam[:, :, None]  # (H, N/2, l)
            den_c = a - bz[:, None, :] * Lam.conj()[:, :, None]
            r = torch.einsum("vhn,hnl->vhl", num, 1 / den) + torch.einsum("vhn,hnl->vhl", num.conj(), 1 / den_c)
            # Woodbury: (D + u P^*)^-1 = R - R u (1 + P^* R u)^-1 P^* R,  u = (1+z) dt/2 P
            Khat.append(dt[:, None] * (r[0] - bz * r[1] * r[2] / (1 + bz * r[3])))
        return torch.fft.irfft(torch.cat(Khat, -1), n=L)

    def step(self, u: torch.Tensor, state: torch.Tensor):
        """u: (B, H), state: (B, H, N) real -> y: (B, H), new state."""
        dA, dB, c = self._step.get(self, self.discrete_system)
        x = torch.einsum("hmn,bhn->bhm", dA, state.float()) + dB * u.float()[..., None]
        y = torch.einsum("hn,bhn->bh", c, x)
        return y.to(u.dtype), x.to(state.dtype)


def build_kernel(kind: str, H: int, N: int, **kw) -> nn.Module:
    if kind == "s4":
        kw.pop("init", None)
        return S4Kernel(H, N, **kw)
    if kind == "s4d":
        return S4DKernel(H, N, **kw)
    raise ValueError(f"unknown SSM kernel {kind!r} (expected 's4' or 's4d')")
