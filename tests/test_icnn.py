"""ICNN (paper Eq. 6 + (alpha/2)|u|^2): convexity, W >= 0, live gradients, registration, bad inputs."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lidvae_mini.models.icnn import ICNN

ACTS = ["leaky_relu", "softplus"]


pytestmark = pytest.mark.usefixtures("single_torch_thread")

def _net(dim=3, hidden=(16, 16, 8), seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    return ICNN(dim, hidden, **kw).to(dtype)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), lam=st.floats(0.05, 0.95), scale=st.floats(0.1, 10.0),
       act=st.sampled_from(ACTS))
def test_convex_midpoint_and_chord_inequality(seed, lam, scale, act):
    """psi(lam u + (1-lam) v) <= lam psi(u) + (1-lam) psi(v) - (alpha/2) lam (1-lam) |u - v|^2."""
    net = _net(seed=seed, activation=act)
    gen = torch.Generator().manual_seed(seed)
    u = scale * torch.randn(64, 3, generator=gen, dtype=torch.float64)
    v = scale * torch.randn(64, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        lhs = net(lam * u + (1 - lam) * v)
        rhs = lam * net(u) + (1 - lam) * net(v) - 0.5 * net.alpha * lam * (1 - lam) * (u - v).square().sum(-1)
    assert bool((lhs <= rhs + 1e-9 * (1 + rhs.abs())).all())


@pytest.mark.parametrize("act", ACTS)
def test_hessian_is_psd_with_alpha_floor(act):
    net = _net(dim=3, activation=act, alpha=0.3)
    torch.manual_seed(1)
    for u in 2 * torch.randn(10, 3, dtype=torch.float64):
        H = torch.autograd.functional.hessian(lambda x: net(x[None])[0], u)
        assert torch.allclose(H, H.T, atol=1e-10)
        assert torch.linalg.eigvalsh(H).min() >= 0.3 - 1e-8


def test_weights_nonnegative_even_after_adversarial_training():
    net = _net(dtype=torch.float32)
    opt = torch.optim.SGD(net.parameters(), lr=10.0)
    for _ in range(5):  # push psi down hard: raw W parameters go very negative, W stays >= 0
        opt.zero_grad()
        net(torch.randn(32, 3)).sum().backward()
        opt.step()
    for W in net.positive_weights():
        assert bool((W >= 0).all())
    u = torch.randn(16, 3)
    assert torch.isfinite(net(u)).all()


def test_every_parameter_gets_a_nonzero_gradient_and_clamp_would_not():
    net = _net(dtype=torch.float32)
    net(torch.randn(64, 3)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Contrast: the official clamp(W, min=0.01) with entries initialised below 0.01 has zero gradient.
    W = torch.nn.init.xavier_uniform_(torch.empty(8, 8), gain=0.01).requires_grad_(True)
    (torch.clamp(W, min=0.01) @ torch.ones(8)).sum().backward()
    assert float(W.grad.abs().sum()) == 0.0


def test_layers_are_registered():
    net = ICNN(4, (8, 8, 8))
    params = dict(net.named_parameters())
    state = net.state_dict()
    assert len(params) == 3 * 2 + 3 + 1 + 1  # A_l (weight, bias) x3, W_raw x3, a_out, b_out
    assert set(params) <= set(state)
    assert isinstance(net.A, torch.nn.ModuleList) and isinstance(net.W_raw, torch.nn.ParameterList)


@pytest.mark.parametrize("act", ACTS)
def test_explicit_gradient_matches_autograd_including_parameter_gradients(act):
    net = _net(dim=5, hidden=(12, 10, 7), activation=act)
    u = 1.5 * torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    (g_auto,) = torch.autograd.grad(net(u).sum(), u, create_graph=True)
    g_expl = net.gradient(u)
    assert torch.allclose(g_expl, g_auto, atol=1e-12)
    w = torch.randn_like(g_auto)
    grads_auto = torch.autograd.grad((g_auto * w).sum(), [u, *net.parameters()], allow_unused=True)
    grads_expl = torch.autograd.grad((g_expl * w).sum(), [u, *net.parameters()], allow_unused=True)
    for (name, _), a, e in zip([("u", None), *net.named_parameters()], grads_auto, grads_expl):
        a = torch.zeros(()) if a is None else a
        e = torch.zeros(()) if e is None else e
        assert torch.allclose(a.double(), e.double(), atol=1e-10), name


def test_gradient_matches_finite_differences():
    net = _net(dim=4, hidden=(10, 10), activation="softplus")
    u = torch.randn(6, 4, dtype=torch.float64)
    g = net.gradient(u)
    eps = 1e-6
    fd = torch.stack([(net(u + eps * e) - net(u - eps * e)) / (2 * eps) for e in torch.eye(4, dtype=u.dtype)], -1)
    assert torch.allclose(g, fd, atol=1e-6)


def test_shapes_dtypes_and_devices():
    net = ICNN(3, 8)
    assert net(torch.randn(5, 3)).shape == (5,)
    assert net.gradient(torch.randn(5, 3)).shape == (5, 3)
    assert net.double()(torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("bad, err", [
    (torch.randn(5), ValueError), (torch.randn(5, 4), ValueError), (torch.ones(5, 3, dtype=torch.long), TypeError),
    (torch.randn(5, 3, dtype=torch.float64), TypeError), (torch.tensor([[0.0, float("nan"), 1.0]]), ValueError),
    ([[0.0, 1.0, 2.0]], TypeError),
])
def test_bad_inputs_raise(bad, err):
    net = ICNN(3, 8)
    with pytest.raises(err):
        net(bad)
    with pytest.raises(err):
        net.gradient(bad)


@pytest.mark.parametrize("kw", [dict(dim=0), dict(hidden=()), dict(hidden=(4, 0)), dict(alpha=0.0),
                                dict(alpha=-1), dict(negative_slope=1.0), dict(activation="relu")])
def test_bad_constructor_arguments(kw):
    args = dict(dim=3, hidden=(4,))
    args.update(kw)
    with pytest.raises((ValueError, TypeError)):
        ICNN(**args)
