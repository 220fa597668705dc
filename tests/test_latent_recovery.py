"""lidvae_mini.evaluation.latent_recovery: recovery of a known latent (linear and k-NN R^2) and the generator's log p(x)."""
import math

import numpy as np
import pytest
import torch

from lidvae_mini.evaluation.latent_recovery import generator_log_likelihood, knn_r2, latent_r2, latent_recovery


def _latents(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64)


def test_linear_and_knn_probes_tell_linear_from_nonlinear_codes():
    z = _latents()
    linear = z @ torch.tensor([[2.0, 0.5], [-1.0, 1.0]], dtype=torch.float64) + 0.01 * _latents(seed=1)
    folded = torch.stack([z[:, 0] ** 2, z[:, 1] ** 2 * torch.sign(z[:, 1])], 1)  # z_0 only up to its sign
    r_lin = latent_recovery(linear[:400], z[:400], linear[400:], z[400:])
    assert r_lin["r2"] > 0.99 and r_lin["r2_knn"] > 0.9 and r_lin["knn_k"] == 20
    r_fold = latent_recovery(folded[:400], z[:400], folded[400:], z[400:])
    # z_1 = cube root-like monotone function of the code: k-NN recovers it, a line does so only partly
    assert r_fold["r2_knn_per_dim"][1] > 0.9 > r_fold["r2_per_dim"][1]
    # z_0 is lost up to its sign: neither probe recovers it
    assert max(r_fold["r2_per_dim"][0], r_fold["r2_knn_per_dim"][0]) < 0.1
    noise = _latents(seed=2)
    assert latent_r2(noise[:400], z[:400], noise[400:], z[400:])["r2"] < 0.05
    assert knn_r2(noise[:400], z[:400], noise[400:], z[400:])["r2_knn"] < 0.05


def test_probes_reject_bad_input():
    z = _latents(50)
    with pytest.raises(ValueError, match="pair up"):
        latent_r2(z[:30], z[:20], z[30:], z[30:])
    with pytest.raises(ValueError, match="exceeds"):
        knn_r2(z[:10], z[:10], z[10:], z[10:], k=11)
    with pytest.raises(ValueError, match="finite"):
        knn_r2(torch.full((10, 2), float("nan")), z[:10], z[10:], z[10:])


A = torch.tensor([3.0, -2.0, 0.5, 0.0], dtype=torch.float64)
B = torch.tensor([0.0, 0.3, -0.2, 0.1], dtype=torch.float64)


def _toy_log_prob(words, z):
    """Categorical over 4 symbols with logits z * A + B (K = 1): L i.i.d. words given z."""
    lp = torch.log_softmax(z[:, :1] * A + B, -1)  # (N, 4)
    return lp.gather(1, words).sum(-1)


def test_generator_log_likelihood_matches_quadrature():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 1, generator=g, dtype=torch.float64)
    words = torch.multinomial(torch.softmax(z * A + B, -1), 8, replacement=True, generator=g)
    grid = torch.linspace(-12, 12, 20001, dtype=torch.float64)
    exact = []
    for w in words:
        lj = _toy_log_prob(w.expand(grid.numel(), -1), grid[:, None]) - 0.5 * (grid ** 2 + math.log(2 * math.pi))
        exact.append(float(torch.logsumexp(lj, 0) + math.log(float(grid[1] - grid[0]))))
    res = generator_log_likelihood(_toy_log_prob, words, 1, z_true=z, n_samples=2000, n_starts=3, seed=0)
    assert res["log_px"].shape == (12,) and ((res["ess_fraction"] > 0) & (res["ess_fraction"] <= 1)).all()
    np.testing.assert_allclose(res["log_px"].numpy(), exact, atol=0.03)
    assert "true z" in res["proposal"]
    # the caller's RNG is untouched and the estimate is seeded
    state = torch.random.get_rng_state()
    again = generator_log_likelihood(_toy_log_prob, words, 1, z_true=z, n_samples=2000, n_starts=3, seed=0)
    assert torch.equal(state, torch.random.get_rng_state()) and torch.equal(again["log_px"], res["log_px"])


def test_generator_log_likelihood_rejects_bad_input():
    with pytest.raises(ValueError, match="integer"):
        generator_log_likelihood(_toy_log_prob, torch.zeros(3, 4), 1)
    with pytest.raises(ValueError, match="z_true"):
        generator_log_likelihood(_toy_log_prob, torch.zeros(3, 4, dtype=torch.long), 1, z_true=torch.zeros(2, 1))
    with pytest.raises(ValueError, match="prior_weight"):
        generator_log_likelihood(_toy_log_prob, torch.zeros(3, 4, dtype=torch.long), 1, prior_weight=1.0)
