"""Metrics against closed-form cases: AU, KL, MI, IWAE (plain and mixture), cluster accuracy."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lidvae_mini.evaluation.metrics import (active_units, cluster_accuracy, gaussian_log_density_matrix,
                                            iwae_log_likelihood, iwae_log_likelihood_mixture, kl_categorical_uniform,
                                            kl_gaussian, kl_gaussian_standard, kl_gaussian_standard_per_dim,
                                            kl_monte_carlo, mutual_information)

D = torch.distributions


# ------------------------------------------------------------------------------------------------------ AU
def test_constant_encoder_has_no_active_units_and_no_mi():
    mu = torch.full((400, 6), 0.7)
    logvar = torch.full((400, 6), -0.3)
    au = active_units(mu)
    assert au["count"] == 0 and au["fraction"] == 0.0
    assert mutual_information(mu, logvar, seed=0, entropy="sample") == pytest.approx(0.0, abs=1e-12)
    # He et al.'s analytic first term: zero up to the Monte Carlo error of the entropy (sd ≈ sqrt(K/2/N))
    assert abs(mutual_information(mu, logvar, seed=0)) < 4 * math.sqrt(6 / 2 / 400)
    assert abs(mutual_information(mu, logvar, seed=0, pool=32)) < 4 * math.sqrt(6 / 2 / 400)


def test_active_units_threshold_and_unbiased_variance():
    v = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = (v - v.mean()) / v.std(unbiased=True)                  # unbiased variance exactly 1
    means = torch.stack([v * math.sqrt(0.0101), v * math.sqrt(0.0099), v * 2.0, torch.zeros(50)], dim=1)
    au = active_units(means, threshold=0.01)
    assert au["count"] == 2 and au["fraction"] == 0.5
    np.testing.assert_allclose(au["variances"].numpy(), [0.0101, 0.0099, 4.0, 0.0], rtol=1e-10, atol=1e-15)
    # with the biased (n) denominator the first column would fall below 0.01: check the n-1 convention
    assert float((means[:, 0] ** 2).mean() - means[:, 0].mean() ** 2) < 0.01
    v1 = float(au["variances"][1])
    assert active_units(means.numpy(), threshold=v1)["count"] == 3      # ≥, not >
    with pytest.raises(ValueError):
        active_units(torch.zeros(1, 3))
    with pytest.raises(ValueError):
        active_units(torch.zeros(5))


# ------------------------------------------------------------------------------------------------------ KL
def test_kl_closed_forms_agree_with_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(20, 4, generator=g, dtype=torch.float64)
    lv = torch.randn(20, 4, generator=g, dtype=torch.float64)
    q = D.Normal(mu, (0.5 * lv).exp())
    ref = D.kl_divergence(q, D.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_gaussian_standard(mu, lv), ref)
    torch.testing.assert_close(kl_gaussian_standard_per_dim(mu, lv).sum(-1), ref)
    mp, lp = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    ref2 = D.kl_divergence(q, D.Normal(mp, (0.5 * lp).exp())).sum(-1)
    torch.testing.assert_close(kl_gaussian(mu, lv, mp, lp), ref2)
    torch.testing.assert_close(kl_gaussian(mu, lv, torch.zeros(4, dtype=torch.float64), torch.zeros(4)), ref)


def test_kl_is_differentiable_and_keeps_dtype():
    mu = torch.zeros(3, 2, requires_grad=True)
    lv = torch.zeros(3, 2, requires_grad=True)
    kl = kl_gaussian_standard(mu + 1.0, lv)
    assert kl.dtype == torch.float32
    kl.sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones(3, 2))      # d/dμ ½μ² at μ = 1
    probs = torch.softmax(torch.randn(4, 3, requires_grad=True), -1)
    kl_categorical_uniform(probs).sum().backward()


def test_kl_monte_carlo_converges():
    mu, lv = torch.tensor([[0.5, -1.0]], dtype=torch.float64), torch.tensor([[-0.5, 0.3]], dtype=torch.float64)
    q = D.Normal(mu, (0.5 * lv).exp())
    z = q.sample((20000,))
    est = kl_monte_carlo(q.log_prob(z).sum(-1), D.Normal(0.0, 1.0).log_prob(z).sum(-1))
    assert est.shape == (1,)
    assert abs(float(est[0] - kl_gaussian_standard(mu, lv)[0])) < 0.05


def test_kl_categorical_uniform():
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(kl_categorical_uniform(probs),
                               torch.tensor([0.0, math.log(4), math.log(2)], dtype=torch.float64))
    with pytest.raises(ValueError):
        kl_categorical_uniform(torch.tensor([[0.5, 0.6]]))


# ------------------------------------------------------------------------------------------------------ MI
def test_log_density_matrix_matches_torch():
    g = torch.Generator().manual_seed(2)
    z, mu, lv = torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    ref = D.Normal(mu.double()[None], (0.5 * lv.double()).exp()[None]).log_prob(z.double()[:, None]).sum(-1)
    torch.testing.assert_close(gaussian_log_density_matrix(z, mu, lv), ref)


def test_mi_of_a_linear_gaussian_encoder():
    """x ~ N(0, I), q(z|x) = N(a x, s² I): I(x; z) = K/2 · log(1 + a²/s²) exactly."""
    g = torch.Generator().manual_seed(3)
    n, k, a, s = 1000, 2, 1.0, 0.5
    x = torch.randn(n, k, generator=g, dtype=torch.float64)
    mu, lv = a * x, torch.full((n, k), 2 * math.log(s), dtype=torch.float64)
    exact = k / 2 * math.log(1 + a * a / (s * s))             # 1.609 nats
    est = mutual_information(mu, lv, seed=10)                 # (seed ≠ data seed: same stream would align z with x)
    assert est == pytest.approx(exact, abs=0.07)
    # the batch estimator of He et al. is capped near log B
    for b in (4, 16):
        batch = mutual_information(mu, lv, seed=10, pool=b)
        assert batch < math.log(b) + 0.1 and batch < est
    assert mutual_information(mu, lv, seed=10, pool=4, entropy="sample") <= math.log(4) + 1e-12
    # the estimate does not depend on chunking, and the same seed gives the same number
    small_mu, small_lv = mu[:300], lv[:300]
    assert mutual_information(small_mu, small_lv, seed=1, chunk=97) == pytest.approx(
        mutual_information(small_mu, small_lv, seed=1), rel=1e-10)
    z = small_mu + 0.5 * torch.randn(2, 300, k, generator=g, dtype=torch.float64)
    two = mutual_information(small_mu, small_lv, z_samples=z, entropy="sample")
    halves = [mutual_information(small_mu, small_lv, z_samples=z[i], entropy="sample") for i in range(2)]
    assert two == pytest.approx(sum(halves) / 2, rel=1e-10)   # S draws: the average of S one-draw estimates


def test_mi_at_most_average_kl():
    """E_x KL(q(z|x) ‖ p(z)) = I_q(x; z) + KL(q(z) ‖ p(z)) ≥ I_q(x; z)."""
    g = torch.Generator().manual_seed(4)
    n = 2000
    mu = 0.8 * torch.randn(n, 4, generator=g) + torch.tensor([0.5, 0.0, -0.3, 0.0])
    lv = -1.0 + 0.3 * torch.randn(n, 4, generator=g)
    mi = mutual_information(mu, lv, seed=1)
    kl = float(kl_gaussian_standard(mu, lv).mean())
    assert 0.5 < mi < kl


def test_mi_accepts_given_samples_and_validates():
    mu, lv = torch.zeros(10, 2), torch.zeros(10, 2)
    z = torch.randn(3, 10, 2)
    assert math.isfinite(mutual_information(mu, lv, z_samples=z))
    with pytest.raises(ValueError):
        mutual_information(mu, lv, z_samples=torch.randn(10, 3))
    with pytest.raises(ValueError):
        mutual_information(mu, lv, pool=0)
    with pytest.raises(ValueError):
        mutual_information(mu, torch.zeros(10, 3))


# --------------------------------------------------------------------------------------------------- IWAE
class LinearGaussian:
    """z ~ N(0, I_k), x | z ~ N(W z + b, σ² I_d): log p(x) and p(z|x) in closed form."""

    def __init__(self, d=5, k=2, sigma=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(d, k, generator=g, dtype=torch.float64)
        self.b = torch.randn(d, generator=g, dtype=torch.float64)
        self.sigma, self.k = sigma, k
        prec = torch.eye(k, dtype=torch.float64) + self.W.T @ self.W / sigma ** 2
        self.post_cov = torch.linalg.inv(prec)

    def sample_x(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.k, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.sigma * torch.randn(n, len(self.b), generator=g, dtype=torch.float64)

    def log_px(self, x):
        cov = self.W @ self.W.T + self.sigma ** 2 * torch.eye(len(self.b), dtype=torch.float64)
        return D.MultivariateNormal(self.b, cov).log_prob(x)

    def log_joint(self, x, z):                                   # z (S, N, k) -> (S, N)
        lik = D.Normal(z @ self.W.T + self.b, self.sigma).log_prob(x).sum(-1)
        return lik + D.Normal(0.0, 1.0).log_prob(z).sum(-1)

    def q(self, x, shift=0.0, inflate=1.0):
        mean = (x - self.b) @ self.W @ self.post_cov.T / self.sigma ** 2 + shift
        return D.MultivariateNormal(mean, inflate * self.post_cov)

    def sampler(self, **kw):
        def sample_fn(x, s):
            q = self.q(x, **kw)
            z = q.sample((s,))
            return z, q.log_prob(z)
        return sample_fn


def test_iwae_exact_with_the_exact_posterior():
    m = LinearGaussian()
    x = m.sample_x(50, seed=1)
    est = iwae_log_likelihood(m.log_joint, m.sampler(), x, num_samples=20, chunk=7, seed=0)
    assert est.shape == (50,) and est.dtype == torch.float64
    torch.testing.assert_close(est, m.log_px(x), atol=1e-4, rtol=0)


def test_iwae_approximate_posterior_bounds_and_monotone_in_k():
    m = LinearGaussian()
    x = m.sample_x(200, seed=2)
    exact = m.log_px(x)
    est, log_w = iwae_log_likelihood(m.log_joint, m.sampler(shift=0.1, inflate=1.5), x, num_samples=1000,
                                     chunk=250, seed=0, return_log_weights=True)
    assert log_w.shape == (1000, 200)
    err = est - exact
    # within Monte Carlo error of the truth: delta-method standard error of log p̂ per datapoint
    w = torch.exp(log_w - log_w.max(0).values)
    se = w.std(0) / w.mean(0) / math.sqrt(1000)
    assert torch.all(err.abs() < 5 * se)
    assert abs(float(err.mean())) < 3 * float(se.mean()) / math.sqrt(200) + 0.005
    elbo = log_w.mean(0)
    assert torch.all(est >= elbo)                                # Jensen, per datapoint
    assert float(elbo.mean()) < float(exact.mean()) - 0.05        # this q is visibly imperfect
    # E[log p̂_K] rises with K: average the K-sample estimator over disjoint groups of weights
    means = []
    for k in (1, 5, 20, 100, 1000):
        groups = log_w.reshape(1000 // k, k, -1)
        means.append(float((torch.logsumexp(groups, 1) - math.log(k)).mean()))
    assert all(b > a for a, b in zip(means, means[1:]))
    assert means[-1] <= float(exact.mean()) + 0.01


def test_iwae_seed_restores_rng_and_is_reproducible():
    m = LinearGaussian()
    x = m.sample_x(10, seed=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = iwae_log_likelihood(m.log_joint, m.sampler(shift=0.2), x, num_samples=30, seed=5)
    after = torch.rand(1)
    assert torch.equal(before, after)                            # caller's RNG stream untouched
    b = iwae_log_likelihood(m.log_joint, m.sampler(shift=0.2), x, num_samples=30, seed=5)
    torch.testing.assert_close(a, b)


def test_mixture_iwae_exact_for_a_gaussian_mixture():
    """y ~ Cat(π), w | y ~ N(m_y, I), x | w ~ N(w, σ² I): p(x|y) = N(m_y, (1+σ²) I); exact q(w|x,y) ⇒ exact."""
    g = torch.Generator().manual_seed(5)
    c, d, sigma = 3, 2, 0.7
    centres = 3 * torch.randn(c, d, generator=g, dtype=torch.float64)
    log_pi = torch.log(torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64))
    y = torch.multinomial(log_pi.exp(), 40, replacement=True, generator=g)
    x = centres[y] + math.sqrt(1 + sigma ** 2) * torch.randn(40, d, generator=g, dtype=torch.float64)

    def log_joint(x, w, y):
        return (D.Normal(w, sigma).log_prob(x).sum(-1) + D.Normal(centres[y], 1.0).log_prob(w).sum(-1))

    post_var = 1.0 / (1.0 + 1.0 / sigma ** 2)

    def sample_fn(x, y, s, shift=0.0):
        q = D.Normal(post_var * (centres[y] + x / sigma ** 2) + shift, math.sqrt(post_var))
        w = q.sample((s,))
        return w, q.log_prob(w).sum(-1)

    comp = torch.stack([D.Normal(centres[k], math.sqrt(1 + sigma ** 2)).log_prob(x).sum(-1) for k in range(c)])
    exact = torch.logsumexp(comp + log_pi[:, None], 0)
    est = iwae_log_likelihood_mixture(log_joint, sample_fn, x, c, log_prior_y=log_pi, num_samples=5, seed=0)
    torch.testing.assert_close(est, exact, atol=1e-6, rtol=0)
    approx = iwae_log_likelihood_mixture(log_joint, lambda x, y, s: sample_fn(x, y, s, shift=0.3), x, c,
                                         log_prior_y=log_pi, num_samples=500, seed=0)
    assert abs(float((approx - exact).mean())) < 0.01


# ---------------------------------------------------------------------------------------- cluster accuracy
@settings(max_examples=50, deadline=None)
@given(labels=st.lists(st.integers(0, 5), min_size=1, max_size=60), perm_seed=st.integers(0, 10_000))
def test_perfect_clustering_scores_one_under_any_permutation(labels, perm_seed):
    labels = np.array(labels)
    perm = np.random.default_rng(perm_seed).permutation(8)      # 8 clusters ≥ 6 classes
    res = cluster_accuracy(perm[labels], labels, num_clusters=8)
    assert res["hungarian"] == 1.0 and res["majority"] == 1.0
    assert res["chance"] == np.bincount(labels).max() / len(labels)


def test_chance_level_and_collapsed_clustering():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    collapsed = cluster_accuracy(np.zeros(100, dtype=int), labels, num_clusters=10)
    assert collapsed["chance"] == 0.5
    assert collapsed["majority"] == 0.5 and collapsed["hungarian"] == 0.5
    assert collapsed["clusters_used"] == 1


def test_majority_versus_hungarian():
    # two clusters both dominated by class 0: majority maps both to 0, Hungarian must use a class once
    labels = np.array([0, 0, 0, 1, 0, 0, 0, 1])
    pred = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    res = cluster_accuracy(pred, labels)
    assert res["majority"] == 0.75
    assert res["hungarian"] == 0.5        # best one-to-one: cluster 0→0 (3) + cluster 1→1 (1), or vice versa
    assert res["majority_map"].tolist() == [0, 0]
    assert sorted(res["hungarian_map"].tolist()) == [0, 1]
    with pytest.raises(ValueError):
        cluster_accuracy([0, 1], [0])
    with pytest.raises(ValueError):
        cluster_accuracy([0, 5], [0, 1], num_clusters=3)


# ----------------------------------------------------------------- MI: standard error, never negative in a table
def test_mi_standard_error_and_report():
    """The per-point terms of the MI estimator average to the estimate; their standard error shrinks as 1/sqrt(N);
    an encoder that ignores x gives an estimate near 0 that can be negative, which the report shows as 0."""
    from lidvae_mini.evaluation.metrics import mutual_information, mutual_information_report

    g = torch.Generator().manual_seed(0)
    mu = torch.randn(400, 2, generator=g, dtype=torch.float64)
    lv = torch.full_like(mu, math.log(0.25))
    est, se = mutual_information(mu, lv, seed=0, return_se=True)
    assert est == mutual_information(mu, lv, seed=0)
    assert 0 < se < 0.2
    _, se4 = mutual_information(torch.cat([mu] * 4), torch.cat([lv] * 4), seed=0, return_se=True)
    assert 0.3 * se < se4 < 0.7 * se                 # four times the points: about half the standard error
    # no information: q(z|x) = N(0, I) for every x; the estimate scatters around 0 with its standard error
    zero = torch.zeros(300, 2, dtype=torch.float64)
    ests = [mutual_information(zero, zero, seed=s, return_se=True) for s in range(20)]
    assert min(e for e, _ in ests) < 0 < max(e for e, _ in ests)
    assert all(abs(e) < 5 * s for e, s in ests)
    for e, s in ests:
        rep = mutual_information_report(e, s)
        assert rep["mi"] == max(e, 0.0) and rep["mi"] >= 0 and rep["mi_estimate"] == e and rep["mi_se"] == s
    with pytest.raises(ValueError, match="finite"):
        mutual_information_report(float("nan"))
    with pytest.raises(ValueError, match=">= 0"):
        mutual_information_report(0.1, -1.0)


def test_learning_curve_flat():
    from lidvae_mini.evaluation.metrics import learning_curve_flat

    assert learning_curve_flat([200, 150, 110, 109.6, 109.5, 109.2, 109.1, 109.05], window=5, tol=1.0)
    assert not learning_curve_flat([200, 150, 120, 110, 108, 106, 104, 103], window=5, tol=1.0)
    assert not learning_curve_flat([110, 109.9, 109.8], window=5, tol=1.0)       # too short to show it
    assert learning_curve_flat([100, 100.4, 99.5], window=2, tol=1.0)             # 100 - 99.5 < 1
    assert not learning_curve_flat([100, 100.4, 99.0], window=2, tol=1.0)         # exactly 1: not flat
    with pytest.raises(ValueError, match="non-finite"):
        learning_curve_flat([1.0, float("nan"), 2.0, 3.0])
    with pytest.raises(ValueError, match="window"):
        learning_curve_flat([1.0, 2.0], window=0)


def test_budget_sentence_follows_the_rule():
    from lidvae_mini.book.prose import budget_sentence

    flat = [200, 150, 110, 109.6, 109.5, 109.2, 109.1, 109.05]
    moving = [200, 150, 120, 110, 108, 106, 104, 103]
    assert "had flattened on every seed" in budget_sentence("The VAE", [flat, flat])
    text = budget_sentence("The VAE", [flat, moving])
    assert "had **not** flattened on one of two seeds" in text and "0.95 to 17.00 nats" in text
    assert "too short" in budget_sentence("The VAE", [[3.0, 2.0]])
    assert "overfits" not in budget_sentence("The VAE", [flat, moving])
    rising = [200, 150, 110, 109, 109.5, 110, 110.5, 111]      # lowest at epoch 4, then worse: flat by the rule
    text = budget_sentence("The VAE", [flat, rising])
    assert "had flattened on every seed" in text and "−1.00 to 0.95 nats" in text and "overfits" in text
