"""The state space core: kernels against explicit references, convolution vs recurrence."""
import resource

import pytest
import torch

from s4speech.ssm.kernels import S4DKernel, S4Kernel, hippo_legs_dplr
from s4speech.ssm.layer import SSMLayer, fft_conv


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def explicit_kernel(dA, dB, c, L):
    """K_l = c dA^l dB by repeated multiplication. dA: (H,N,N), dB, c: (H,N)."""
    out, x = [], dB
    for _ in range(L):
        out.append((c * x).sum(-1))
        x = torch.einsum("hmn,hn->hm", dA, x)
    return torch.stack(out, -1)


@pytest.mark.parametrize("L", [1, 7, 256, 1000])
def test_s4_kernel_matches_explicit_powers_float64(L):
    torch.manual_seed(0)
    k = S4Kernel(4, 16).double()
    with torch.no_grad():
        k.log_dt.uniform_(-4, -1)  # a spread of step sizes
        ref = explicit_kernel(*k.discrete_system(torch.float64), L)
        K = k(L, dtype=torch.float64)
    assert K.shape == (4, L)
    assert rel(K, ref) < 1e-5


def test_s4_kernel_float32_close_to_float64_reference():
    torch.manual_seed(1)
    k = S4Kernel(8, 64)
    with torch.no_grad():
        ref = explicit_kernel(*k.double().discrete_system(torch.float64), 2048)
        K = k.float()(2048)
    assert rel(K.double(), ref) < 1e-4


def test_s4_init_is_hippo_legs():
    """The real system built from the DPLR half-parameters is HiPPO-LegS at init."""
    N = 8
    k = S4Kernel(1, N).double()
    Lam, P, B = hippo_legs_dplr(N)  # float64 values (the module stores float32)
    with torch.no_grad():
        k.log_L_real.copy_(torch.log(-Lam.real)[None])
        k.L_imag.copy_(Lam.imag[None])
        k.P.copy_(torch.view_as_real(P)[None])
        k.B.copy_(torch.view_as_real(B)[None])
    _, A, b, _ = k.real_system(torch.float64)
    q = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * q + 1)
    legs = -torch.tril(r[:, None] * r[None, :], -1) - torch.diag(q + 1)
    # A and b are expressed in another real basis: compare invariants (spectrum, transfer function)
    ev = torch.sort(torch.linalg.eigvals(A[0]).real).values
    ev_ref = torch.sort(torch.linalg.eigvals(legs).real).values
    assert torch.allclose(ev, ev_ref, atol=1e-8)
    # transfer function with B as input and read-out: r^T x_orig = 2 b^T x in our real coordinates
    s = 0.7
    I = torch.eye(N, dtype=torch.float64)
    tf = 2 * b[0] @ torch.linalg.solve(s * I - A[0], b[0])
    tf_ref = r @ torch.linalg.solve(s * I - legs, r)
    assert torch.allclose(tf, tf_ref, rtol=1e-8)


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_s4d_kernel_matches_explicit_recurrence(init):
    torch.manual_seed(0)
    k = S4DKernel(4, 16, init=init).double()
    L = 300
    with torch.no_grad():
        K = k(L)
        x = torch.zeros(1, 4, 16, dtype=torch.float64)
        u = torch.zeros(1, 4, L, dtype=torch.float64)
        u[..., 0] = 1.0  # impulse response = kernel
        ys = []
        for t in range(L):
            y, x = k.step(u[:, :, t], x)
            ys.append(y)
    assert rel(torch.stack(ys, -1)[0].double(), K.double()) < 1e-5


@pytest.mark.parametrize("kind", ["s4", "s4d"])
def test_convolution_equals_recurrence_L2048(kind):
    torch.manual_seed(0)
    layer = SSMLayer(16, d_state=32, kernel=kind).eval()
    u = torch.randn(2, 2048, 16)
    with torch.no_grad():
        y_conv = layer(u)
        state = layer.default_state(2)
        ys = []
        for t in range(u.shape[1]):
            y, state = layer.step(u[:, t], state)
            ys.append(y)
    y_rec = torch.stack(ys, 1)
    assert rel(y_rec, y_conv) < 1e-4


def test_step_cache_refreshes_when_parameters_change():
    torch.manual_seed(0)
    layer = SSMLayer(8, d_state=16, kernel="s4").eval()
    u = torch.randn(1, 8)
    with torch.no_grad():
        y1, _ = layer.step(u, layer.default_state(1))
        layer.kernel.log_dt.add_(0.5)  # as an optimizer step would
        y2, _ = layer.step(u, layer.default_state(1))
        fresh = SSMLayer(8, d_state=16, kernel="s4").eval()
        fresh.load_state_dict(layer.state_dict())
        y3, _ = fresh.step(u, fresh.default_state(1))
    assert not torch.allclose(y1, y2)
    assert torch.allclose(y2, y3, atol=1e-6)


def test_state_reorders_with_index_select():
    torch.manual_seed(0)
    layer = SSMLayer(8, d_state=16, kernel="s4d").eval()
    u = torch.randn(3, 5, 8)
    with torch.no_grad():
        s = layer.default_state(3)
        for t in range(5):
            _, s = layer.step(u[:, t], s)
        idx = torch.tensor([2, 0, 0])
        y_re, _ = layer.step(u[idx, 0], s.index_select(0, idx))
        y, _ = layer.step(u[:, 0], s)
    assert s.shape == (3, 8, 16)
    assert torch.allclose(y_re, y[idx])


@pytest.mark.parametrize("kind", ["s4", "s4d"])
def test_bidirectional_is_anticausal_too(kind):
    torch.manual_seed(0)
    layer = SSMLayer(8, d_state=16, kernel=kind, bidirectional=True).eval()
    u = torch.randn(1, 64, 8)
    with torch.no_grad():
        y = layer(u)
        u2 = u.clone()
        u2[:, 40] += 1.0  # a change at t=40 ...
        y2 = layer(u2)
        # ... reaches earlier outputs (a causal layer's would not) and later ones
        assert (y2[:, :40] - y[:, :40]).abs().max() > 1e-4
        assert (y2[:, 41:] - y[:, 41:]).abs().max() > 1e-4
        # and equals a causal forward kernel plus a reversed backward kernel
        L = 64
        K = layer.kernel(L)
        x = u.transpose(1, 2)
        fwd = fft_conv(x, K[:8], 2 * L)
        # backward: y_t += sum_{s>t} kb_{s-t-1} u_s, i.e. a causal conv of the reversed input, shifted by one
        kb_shifted = torch.nn.functional.pad(K[8:], (1, 0))[:, :L]
        bwd = fft_conv(x.flip(-1), kb_shifted, 2 * L).flip(-1)
        ref = layer._output((fwd + bwd + x * layer.D[:, None]).transpose(1, 2))
    assert rel(y, ref) < 1e-5


def test_causal_layer_does_not_see_the_future():
    layer = SSMLayer(8, d_state=16).eval()
    u = torch.randn(1, 50, 8)
    with torch.no_grad():
        y = layer(u)
        u[:, 30:] = 0
        y2 = layer(u)
    assert torch.allclose(y[:, :30], y2[:, :30], atol=1e-6)


@pytest.mark.parametrize("kind", ["s4", "s4d"])
def test_gradients_are_finite(kind):
    torch.manual_seed(0)
    layer = SSMLayer(16, d_state=32, kernel=kind, bidirectional=(kind == "s4d"))
    y = layer(torch.randn(2, 300, 16))
    y.pow(2).mean().backward()
    grads = {n: p.grad for n, p in layer.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), grads.keys()
    assert grads["kernel.log_dt"].abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_is_finite_L16384(dtype):
    torch.manual_seed(0)
    layer = SSMLayer(16, d_state=32, kernel="s4")
    with torch.autocast("cpu", dtype=dtype):
        y = layer(torch.randn(1, 16384, 16))
    assert torch.isfinite(y).all()


def test_ssm_parameters_have_own_optimizer_group():
    from espnet2.optimizers.optim_groups import configure_optimizer

    layer = SSMLayer(8, d_state=16, kernel="s4", ssm_lr=1e-3)
    opt = configure_optimizer(layer, torch.optim.AdamW, {"lr": 5e-3, "weight_decay": 0.01}, {})
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    for name in ["log_dt", "log_L_real", "L_imag", "P", "B"]:
        g = groups[id(getattr(layer.kernel, name))]
        assert g["weight_decay"] == 0.0 and g["lr"] == 1e-3, name
    assert groups[id(layer.kernel.C)]["weight_decay"] == 0.01
    assert groups[id(layer.output_linear.weight)]["lr"] == 5e-3


def test_long_kernel_memory_is_bounded():
    """L = 65,536, H = 256, N = 64 on CPU within 2 GB of peak process memory."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    with torch.no_grad():
        K = S4Kernel(256, 64)(65536)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # GB (ru_maxrss is kB)
    assert K.shape == (256, 65536) and torch.isfinite(K).all()
    assert peak < 2.0 or peak - before < 1.0, f"peak RSS {peak:.2f} GB"
