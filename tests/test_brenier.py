"""Brenier maps: strong monotonicity (hence injectivity), Jacobian, inverse, grad modes, no_grad use."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lidvae_mini.models.brenier import (BrenierMap, InverseError, fit_brenier_flow, flow_log_prob, make_banana,
                                        monotonicity_ratio)

ACTS = ["leaky_relu", "softplus"]


pytestmark = pytest.mark.usefixtures("single_torch_thread")

def _map(dim=3, hidden=(16, 16), seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    return BrenierMap(dim, hidden, **kw).to(dtype)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 20.0), act=st.sampled_from(ACTS),
       alpha=st.sampled_from([0.01, 0.1, 1.0]))
def test_strong_monotonicity(seed, scale, act, alpha):
    """<g(u) - g(v), u - v> >= alpha |u - v|^2 and hence |g(u) - g(v)| >= alpha |u - v| > 0."""
    g = _map(seed=seed, activation=act, alpha=alpha)
    gen = torch.Generator().manual_seed(seed)
    u = scale * torch.randn(128, 3, generator=gen, dtype=torch.float64)
    v = u + scale * 10 ** torch.empty(128, 1, dtype=torch.float64).uniform_(-6, 0, generator=gen) \
        * torch.randn(128, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        gu, gv = g(u), g(v)
    d2 = (u - v).square().sum(-1)
    assert bool((((gu - gv) * (u - v)).sum(-1) >= alpha * d2 * (1 - 1e-9)).all())
    assert bool(((gu - gv).norm(dim=-1) >= alpha * d2.sqrt() * (1 - 1e-9)).all())


def test_map_is_the_gradient_of_the_potential_finite_differences():
    g = _map(dim=4, activation="softplus")
    u = torch.randn(5, 4, dtype=torch.float64)
    eps = 1e-6
    fd = torch.stack([(g.potential(u + eps * e) - g.potential(u - eps * e)) / (2 * eps)
                      for e in torch.eye(4, dtype=u.dtype)], -1)
    assert torch.allclose(g(u), fd, atol=1e-6)


@pytest.mark.parametrize("act", ACTS)
def test_explicit_and_autograd_modes_agree_values_and_parameter_gradients(act):
    g = _map(dim=6, hidden=(20, 12, 9), activation=act)
    u = torch.randn(30, 6, dtype=torch.float64, requires_grad=True)
    out = {}
    for mode in ("explicit", "autograd"):
        g.grad_mode = mode
        y = g(u)
        loss = (y.square() * torch.linspace(0, 1, 6, dtype=y.dtype)).sum()
        out[mode] = (y.detach(), torch.autograd.grad(loss, [u, *g.parameters()]))
    assert torch.allclose(out["explicit"][0], out["autograd"][0], atol=1e-12)
    for a, b in zip(out["explicit"][1], out["autograd"][1]):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("mode", ["explicit", "autograd"])
def test_works_under_no_grad_and_in_training(mode):
    g = _map(dtype=torch.float32, grad_mode=mode)
    u = torch.randn(8, 3)
    with torch.no_grad():
        y = g(u)
    assert not y.requires_grad and y.shape == (8, 3)
    z = torch.randn(8, 3, requires_grad=True)  # e.g. a reparameterised sample from an encoder
    g(z).square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    for name, p in g.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert torch.allclose(y, g(u))


@pytest.mark.parametrize("act", ACTS)
def test_jacobian_is_symmetric_psd_and_matches_autograd(act):
    g = _map(dim=3, activation=act, alpha=0.2)
    u = torch.randn(7, 3, dtype=torch.float64)
    J = g.jacobian(u)
    ref = torch.stack([torch.autograd.functional.jacobian(lambda x: g(x[None])[0], ui) for ui in u])
    assert torch.allclose(J, ref, atol=1e-10)
    assert torch.allclose(J, J.transpose(1, 2), atol=1e-10)
    assert torch.linalg.eigvalsh(J).min() >= 0.2 - 1e-9
    assert torch.allclose(g.log_abs_det_jacobian(u), torch.linalg.slogdet(ref)[1])


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dim", [2, 16])
def test_inverse_round_trip(act, dim):
    g = _map(dim=dim, hidden=(32, 32), activation=act, dtype=torch.float32, seed=dim)
    u0 = 2 * torch.randn(200, dim)
    y = g(u0).detach()
    u, residual = g.inverse(y, tol=1e-6)
    assert residual <= 1e-6
    assert u.dtype == y.dtype and u.shape == y.shape
    assert (g(u) - y).abs().max() < 1e-4          # float32 re-evaluation
    assert (u - u0).abs().max() < 1e-3 / g.alpha  # g^{-1} is (1/alpha)-Lipschitz


def test_inverse_lbfgs_method_on_smooth_potential():
    g = _map(dim=4, activation="softplus")
    y = g(torch.randn(20, 4, dtype=torch.float64))
    u, residual = g.inverse(y, method="lbfgs", tol=1e-7)
    assert residual <= 1e-7 and torch.allclose(g(u), y, atol=1e-6)


def test_inverse_raises_when_max_iter_too_small():
    g = _map(dim=3)
    y = g(3 * torch.randn(50, 3, dtype=torch.float64))
    with pytest.raises(InverseError, match="residual"):
        g.inverse(y, tol=1e-10, max_iter=1)
    u, residual = g.inverse(y, tol=1e-10, max_iter=1, raise_on_failure=False)
    assert residual > 1e-10 and u.shape == y.shape
    assert issubclass(InverseError, RuntimeError)


@pytest.mark.parametrize("bad, err", [(torch.randn(4), ValueError), (torch.randn(4, 2), ValueError),
                                      (torch.ones(4, 3, dtype=torch.int64), TypeError),
                                      (torch.full((1, 3), float("inf")), ValueError)])
def test_bad_inputs(bad, err):
    g = _map(dtype=torch.float32)
    with pytest.raises(err):
        g(bad)
    with pytest.raises(err):
        g.inverse(bad)
    with pytest.raises(ValueError):
        BrenierMap(3, 8, grad_mode="numeric")


def test_banana_target_is_seeded():
    a, b = make_banana(100, seed=3), make_banana(100, seed=3)
    assert a.shape == (100, 2) and (a == b).all() and not (a == make_banana(100, seed=4)).all()


def test_flow_density_integrates_to_one_only_for_a_continuous_map():
    """Change of variables with an exact log-det: exp(log p) of a smooth Brenier flow integrates to 1;
    with the paper's leaky-ReLU layers the map jumps, the formula misses the jumps, and mass is lost."""
    h = 0.1
    ax = torch.arange(-12, 12, h, dtype=torch.float64) + h / 2
    X = torch.stack(torch.meshgrid(ax, ax, indexing="xy"), -1).reshape(-1, 2)
    mass = {}
    for act in ACTS:
        g = _map(dim=2, hidden=(16, 16), activation=act, alpha=0.5)
        with torch.no_grad():
            mass[act] = float(flow_log_prob(g, X).exp().sum()) * h * h
    assert abs(mass["softplus"] - 1) < 1e-3
    assert abs(mass["leaky_relu"] - 1) > 0.05


def test_fit_brenier_flow_learns_and_is_seeded():
    x = make_banana(600, seed=0)
    g, losses = fit_brenier_flow(x, hidden=(16, 16), steps=60, batch=200, seed=1)
    assert losses[-10:].mean() < losses[:5].mean() - 0.5
    _, again = fit_brenier_flow(x, hidden=(16, 16), steps=60, batch=200, seed=1)
    assert (losses == again).all()
    u, v = torch.randn(500, 2), torch.randn(500, 2)
    assert float(monotonicity_ratio(g, u, v).min()) >= g.alpha * (1 - 1e-5)
