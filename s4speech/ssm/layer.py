"""The S4 layer: SSM convolution + D skip, GELU, GLU output projection.

    u (B, L, H) -> y = GLU(W GELU(K * u + D u)) (B, L, H)

Causal layers also run as a recurrence, one frame at a time, with a plain
(B, H, N) state tensor (re-order beams with ``state.index_select(0, idx)``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from s4speech.nn import rows_linear
from s4speech.ssm.kernels import build_kernel


def fft_conv(u: torch.Tensor, k: torch.Tensor, n: int) -> torch.Tensor:
    """u: (B, H, L), k: (H, Lk) -> (B, H, L) linear convolution via an FFT of size n >= L + Lk - 1."""
    L = u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., :L]


class SSMLayer(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        kernel: str = "s4",
        bidirectional: bool = False,
        dropout: float = 0.0,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float | None = None,
        s4d_init: str = "lin",
        n_ssm: int | None = None,
    ):
        super().__init__()
        self.H, self.N, self.bidirectional = d_model, d_state, bidirectional
        channels = 2 if bidirectional else 1  # forward and backward kernels
        kw = dict(dt_min=dt_min, dt_max=dt_max, lr=ssm_lr)
        if kernel == "s4d":
            kw["init"] = s4d_init
        if n_ssm is not None:  # A, B shared by groups of channels (s4 kernel only)
            kw["n_ssm"] = n_ssm
        self.kernel = build_kernel(kernel, channels * d_model, d_state, **kw)
        self.D = nn.Parameter(torch.randn(d_model))
        self.dropout = nn.Dropout(dropout)
        self.output_linear = nn.Linear(d_model, 2 * d_model)  # GLU halves

    def forward(self, u: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """u: (B, L, H); mask: (B, L) True on valid frames (padding is zeroed first)."""
        if mask is not None:
            u = u.masked_fill(~mask[..., None], 0.0)
        L = u.shape[1]
        x = u.transpose(1, 2).float()  # (B, H, L); the SSM itself always runs in float32
        with torch.autocast(device_type=u.device.type, enabled=False):
            k = self.kernel(L)  # (C*H, L)
            if self.bidirectional:
                kf, kb = k[: self.H], k[self.H :]
                # backward kernel placed at the end of a 2L circle: y_t += sum_{s>t} kb_{s-t-1} u_s
                k = F.pad(kf, (0, L)) + F.pad(kb.flip(-1), (L, 0))
                y = fft_conv(x, k, 2 * L)
            else:
                y = fft_conv(x, k, 2 * L)
            y = y + x * self.D.float()[:, None]
        return self._output(y.transpose(1, 2).to(u.dtype))

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        y = self.dropout(F.gelu(y))
        return F.glu(self.output_linear(y), dim=-1)

    def default_state(self, batch: int, device=None, dtype=torch.float) -> torch.Tensor:
        """The zero state (batch, H, N) a recurrence starts from. The step re-reads the parameters
        then (``refresh_step``), so edits through ``p.data`` since the last recurrence are seen."""
        self.kernel.refresh_step()
        return torch.zeros(batch, self.H, self.N, device=device, dtype=dtype)

    def step(self, u: torch.Tensor, state: torch.Tensor, inplace: bool = False):
        """u: (B, H), state: (B, H, N) -> y: (B, H), new state. Causal layers only.

        ``inplace``: the new state overwrites ``state`` (a tensor the caller owns, e.g. freshly gathered
        beam rows), saving the allocations of the (B, H, N) intermediates; out of place where an autograd
        graph is built."""
        if self.bidirectional:
            raise RuntimeError("a bidirectional SSM layer has no recurrent step")
        y, state = self.kernel.step(u, state, inplace=inplace)
        y = torch.addcmul(y, u, self.D.to(u.dtype))
        if self.training:
            return self._output(y), state
        return F.glu(rows_linear(self.output_linear, F.gelu(y)), dim=-1), state
