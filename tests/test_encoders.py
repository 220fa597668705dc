"""Encoders q(z|x): exact densities, reparameterised sampling, invertibility of the conditional RealNVP."""
import math

import pytest
import torch

from lidvae_mini.models.encoders import (AffineCoupling, ConditionalRealNVP, GaussianEncoder, gaussian_log_prob,
                                         make_encoder)


def _perturbed_flow(data_dim=3, latent_dim=2, seed=0, n_layers=2, size=0.5):
    """A RealNVP whose couplings are far from the identity (the zero-initialised last layers are perturbed)."""
    torch.manual_seed(seed)
    enc = ConditionalRealNVP(data_dim, latent_dim, hidden=(16,), n_layers=n_layers, coupling_hidden=(16,)).double()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(size * torch.randn_like(p))
    return enc


def test_gaussian_encoder_shapes_and_density():
    torch.manual_seed(0)
    enc = GaussianEncoder(5, 3, hidden=(8,)).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    mu, logvar = enc(x)
    assert mu.shape == logvar.shape == (4, 3)
    z, log_q = enc.sample(x, 6)
    assert z.shape == (6, 4, 3) and log_q.shape == (6, 4)
    torch.testing.assert_close(enc.log_prob(z, x), log_q)
    torch.testing.assert_close(log_q, gaussian_log_prob(z, mu, logvar))
    # torch.distributions agrees
    ref = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_q, ref)
    torch.testing.assert_close(enc.mean(x), mu)
    kl = enc.kl_per_dim(x)
    ref_kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * logvar).exp()),
                                               torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(kl, ref_kl)


def test_gaussian_encoder_sampling_is_reparameterised():
    torch.manual_seed(0)
    enc = GaussianEncoder(3, 2, hidden=(8,))
    x = torch.randn(5, 3)
    z, _ = enc.sample(x, 2)
    z.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_realnvp_is_invertible_and_consistent():
    enc = _perturbed_flow()
    x = torch.randn(7, 3, dtype=torch.float64)
    mu, logvar, h = enc.base_params(x)
    u = mu + torch.randn(4, 7, 2, dtype=torch.float64)
    z, logdet = enc.flow(u, h)
    assert not torch.allclose(z, u)  # the flow does something
    u_back, logdet_back = enc.inverse(z, h)
    torch.testing.assert_close(u_back, u)
    torch.testing.assert_close(logdet_back, logdet)
    z, log_q = enc.sample(x, 5)
    torch.testing.assert_close(enc.log_prob(z, x), log_q)


def test_realnvp_log_q_matches_change_of_variables():
    """log q(z|x) = log N(u; mu, sigma^2) - log|det dz/du|, with the Jacobian computed numerically by autograd."""
    enc = _perturbed_flow(seed=1)
    x = torch.randn(1, 3, dtype=torch.float64)
    mu, logvar, h = enc.base_params(x)
    for trial in range(3):
        u0 = mu[0] + torch.randn(2, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda u: enc.flow(u[None], h)[0][0], u0)
        z = enc.flow(u0[None], h)[0]
        expected = gaussian_log_prob(u0, mu[0], logvar[0]) - torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(enc.log_prob(z, x)[0], expected)


def test_realnvp_density_integrates_to_one_in_2d():
    enc = _perturbed_flow(seed=2, size=0.25)
    x = torch.randn(2, 3, dtype=torch.float64)
    with torch.no_grad():
        assert enc.sample(x, 2000)[0].abs().max() < 10   # the grid holds the mass
    g = torch.linspace(-14, 14, 561, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 1, 2).expand(-1, 2, 2)
    with torch.no_grad():
        dens = enc.log_prob(grid, x).exp()          # (G, 2)
    mass = dens.sum(0) * (g[1] - g[0]) ** 2
    torch.testing.assert_close(mass, torch.ones(2, dtype=torch.float64), atol=2e-3, rtol=0)


def test_realnvp_depends_on_x_in_the_couplings():
    """Unlike the official code, the coupling layers see x: same base point, different x, different z."""
    enc = _perturbed_flow(seed=3)
    x = torch.randn(2, 3, dtype=torch.float64)
    _, _, h = enc.base_params(x)
    u = torch.zeros(2, 2, dtype=torch.float64)
    z, _ = enc.flow(u, h)
    assert not torch.allclose(z[0], z[1])


def test_new_coupling_is_identity_and_masks_alternate():
    enc = ConditionalRealNVP(4, 3, hidden=(8,), n_layers=2)
    x = torch.randn(5, 4)
    _, _, h = enc.base_params(x)
    u = torch.randn(5, 3)
    z, logdet = enc.flow(u, h)
    torch.testing.assert_close(z, u)
    torch.testing.assert_close(logdet, torch.zeros(5))
    m0, m1 = (layer.mask for layer in enc.couplings)
    torch.testing.assert_close(m0 + m1, torch.ones(3))   # every coordinate is transformed by one layer


def test_realnvp_with_one_latent_dimension():
    enc = _perturbed_flow(latent_dim=1, seed=4)
    x = torch.randn(3, 3, dtype=torch.float64)
    z, log_q = enc.sample(x, 4)
    torch.testing.assert_close(enc.log_prob(z, x), log_q)
    g = torch.linspace(-15, 15, 6001, dtype=torch.float64).reshape(-1, 1, 1).expand(-1, 3, 1)
    with torch.no_grad():
        mass = enc.log_prob(g, x).exp().sum(0) * 30 / 6000
    torch.testing.assert_close(mass, torch.ones(3, dtype=torch.float64), atol=2e-3, rtol=0)


def test_coupling_logdet():
    torch.manual_seed(0)
    layer = AffineCoupling(3, 2, (8,), torch.tensor([1.0, 0.0, 1.0])).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p))
    c = torch.randn(1, 2, dtype=torch.float64)
    z0 = torch.randn(3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda z: layer(z[None], c)[0][0], z0)
    torch.testing.assert_close(layer(z0[None], c)[1][0], torch.linalg.slogdet(jac)[1])


@pytest.mark.parametrize("kind", ["gaussian", "realnvp"])
def test_bad_inputs_raise(kind):
    enc = make_encoder(kind, 4, 2, hidden=(8,))
    with pytest.raises(TypeError):
        enc.sample(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError):
        enc.sample([[0.0] * 4])
    with pytest.raises(ValueError):
        enc.sample(torch.ones(3, 5))
    with pytest.raises(ValueError):
        enc.sample(torch.full((3, 4), math.nan))
    with pytest.raises(ValueError):
        enc.sample(torch.ones(3, 4), 0)
    with pytest.raises(ValueError):
        enc.log_prob(torch.zeros(2, 2), torch.ones(3, 4))


def test_unknown_encoder_raises():
    with pytest.raises(ValueError, match="realnvp"):
        make_encoder("flowy", 4, 2)


def test_gaussian_sample_with_kl_is_sample_and_kl_per_dim():
    enc = GaussianEncoder(5, 3, hidden=(8,))
    x = torch.randn(4, 5)
    torch.manual_seed(2)
    z, log_q, kl = enc.sample_with_kl(x, 6)
    torch.manual_seed(2)
    z2, log_q2 = enc.sample(x, 6)
    assert torch.equal(z, z2) and torch.equal(log_q, log_q2)
    assert torch.equal(kl, enc.kl_per_dim(x)) and kl.shape == (4, 3)


@pytest.mark.parametrize("kind", ["gaussian", "realnvp"])
def test_draws_are_in_the_data_dtype_under_autocast(kind):
    """Mixed precision: the networks run in bfloat16, the draws and log-densities stay in x's dtype."""
    enc = make_encoder(kind, 5, 4, hidden=(8,))
    x = torch.randn(3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, log_q = enc.sample(x, 2)
    assert z.dtype == torch.float32 and log_q.dtype == torch.float32
