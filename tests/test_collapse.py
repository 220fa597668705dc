"""Theorem 1 on exact posteriors (paper Sec. 2.1): lidvae_mini.exact.collapse."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lidvae_mini.exact import collapse as c

PRIOR = np.array([0.1, 0.2, 0.3, 0.4])


def test_enumeration_is_bayes_rule_by_hand():
    prior = np.array([0.2, 0.3, 0.5])
    lik = np.array([0.1, 0.4, 0.2])
    by_hand = prior * lik / np.sum(prior * lik)  # 0.02, 0.12, 0.10 over 0.24
    np.testing.assert_allclose(by_hand, [1 / 12, 1 / 2, 5 / 12])
    np.testing.assert_allclose(c.enumeration_posterior(prior, np.log(lik)), by_hand, rtol=1e-14)
    # several datapoints at once, and a huge common offset (log space, no underflow)
    rows = np.log(np.array([lik, [0.5, 0.25, 0.25]])) - 5000.0
    post = c.enumeration_posterior(prior, rows)
    np.testing.assert_allclose(post[0], by_hand, rtol=1e-12)
    np.testing.assert_allclose(post[1], [1 / 3, 1 / 4, 5 / 12], rtol=1e-12)  # 0.1, 0.075, 0.125 over 0.3


def test_zero_prior_mass_stays_zero():
    post = c.enumeration_posterior([0.5, 0.0, 0.5], np.log([0.2, 0.9, 0.1]))
    assert post[1] == 0.0
    np.testing.assert_allclose(post, [2 / 3, 0, 1 / 3])


def test_flat_likelihood_gives_exact_collapse_and_informative_does_not():
    table = c.noisy_channel(4, 0.9)
    for x in range(4):
        flat = np.log(c.interpolated_likelihood(table, 0.0)[:, x])
        assert c.loglik_spread(flat) == 0.0 and c.is_latent_non_identifiable(flat)
        post = c.enumeration_posterior(PRIOR, flat)
        assert np.max(np.abs(post - PRIOR)) <= 1e-15
        assert abs(c.kl_categorical(post, PRIOR)) <= 1e-15
        for t in (1e-3, 0.5, 1.0):
            informative = np.log(c.interpolated_likelihood(table, t)[:, x])
            assert not c.is_latent_non_identifiable(informative)
            assert c.kl_categorical(c.enumeration_posterior(PRIOR, informative), PRIOR) > 1e-8


def test_definition_2_on_a_dataset_needs_every_datapoint_flat():
    flat_rows = np.zeros((3, 4)) + np.array([[-1.0], [-2.0], [-7.0]])
    assert c.is_latent_non_identifiable(flat_rows)
    one_bumpy = flat_rows.copy()
    one_bumpy[2, 1] += 1e-6
    assert not c.is_latent_non_identifiable(one_bumpy)
    assert c.is_latent_non_identifiable(one_bumpy, atol=1e-5)


def test_discrete_curve_grows_with_t_and_respects_the_bound():
    curve = c.discrete_collapse_curve(PRIOR, c.noisy_channel(4, 0.9), x=2, ts=np.linspace(0, 1, 51))
    assert abs(curve["kl"][0]) <= 1e-15 and curve["spread"][0] == 0.0
    assert np.all(np.diff(curve["kl"]) > 0) and np.all(np.diff(curve["spread"]) > 0)
    assert np.all(curve["kl"] <= curve["bound"] + 1e-15)


def test_kl_bound_holds_for_random_priors_and_likelihoods_and_is_tight_near_zero():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        K = rng.integers(2, 8)
        prior = rng.dirichlet(np.ones(K) * rng.uniform(0.2, 3))
        log_lik = rng.normal(size=K) * rng.choice([1e-3, 0.1, 1.0, 5.0])
        kl = c.kl_categorical(c.enumeration_posterior(prior, log_lik), prior)
        assert -1e-15 <= kl <= c.kl_upper_bound(c.loglik_spread(log_lik)) + 1e-15
    # two equally likely values, likelihood ratio e^delta: KL / (delta^2 / 8) -> 1
    delta = 1e-3
    kl = c.kl_categorical(c.enumeration_posterior([0.5, 0.5], [0.0, delta]), [0.5, 0.5])
    assert kl / (delta ** 2 / 8) == pytest.approx(1.0, abs=1e-5)


def test_conjugate_kl_is_exactly_zero_when_a_is_zero():
    x = np.array([-3.0, 0.0, 0.7, 12.0])
    m, v = c.conjugate_gaussian_posterior(x, 0.0, 0.5)
    assert np.all(m == 0.0) and v == 1.0
    assert np.all(c.conjugate_gaussian_kl(x, 0.0, 0.5) == 0.0)
    assert np.all(c.conjugate_gaussian_kl(x, 1e-3, 0.5) > 0.0)


def test_conjugate_kl_monotone_in_a_for_moderate_x_and_on_average():
    s = 0.5
    a_grid = np.linspace(0, 4, 401)
    for x in np.linspace(-2.4, 2.4, 13) * s:  # |x|/s <= 1 + sqrt(2): monotone (see the chapter)
        kl = np.array([c.conjugate_gaussian_kl([x], a, s)[0] for a in a_grid])
        assert np.all(np.diff(kl) >= 0), x
    # averaged over data drawn from the model (common random numbers), KL = I(z; x) = log(1 + a^2/s^2)/2
    rng = np.random.default_rng(1)
    z, eps = rng.standard_normal(200_000), rng.standard_normal(200_000)
    mean_kl = np.array([c.conjugate_gaussian_kl(a * z + s * eps, a, s).mean() for a in a_grid[::20]])
    assert np.all(np.diff(mean_kl) > 0)
    mi = np.array([c.conjugate_gaussian_mutual_information(a, s) for a in a_grid[::20]])
    np.testing.assert_allclose(mean_kl, mi, atol=0.02)


def test_conjugate_kl_is_not_monotone_for_an_outlying_x():
    s = 0.5
    kl = np.array([c.conjugate_gaussian_kl([4 * s], a, s)[0] for a in np.linspace(0, 4, 401)])
    assert np.any(np.diff(kl) < 0)  # |x|/s = 4 > 1 + sqrt(2)


def test_conjugate_posterior_matches_enumeration_on_a_fine_grid():
    z = np.linspace(-12, 12, 24001)
    prior = stats.norm.pdf(z)
    prior /= prior.sum()
    x, a, s = np.array([-1.3, 0.2, 2.5]), 1.7, 0.6
    post = c.enumeration_posterior(prior, c.conjugate_gaussian_loglik(x, z, a, s))
    m, v = c.conjugate_gaussian_posterior(x, a, s)
    mean = post @ z
    np.testing.assert_allclose(mean, m, atol=1e-10)
    np.testing.assert_allclose(post @ z ** 2 - mean ** 2, v, atol=1e-10)
    np.testing.assert_allclose(c.kl_categorical(post, prior), c.kl_gaussian(m, v), atol=1e-8)


def test_likelihood_ridge_has_constant_likelihood_and_collapses_at_a_zero():
    x = np.random.default_rng(2).normal(scale=1.3, size=500)
    ridge = c.likelihood_ridge(x, np.linspace(0, 1.5, 16))
    assert np.ptp(ridge["loglik"]) < 1e-12
    assert ridge["kl"][0] == 0.0 and np.all(np.diff(ridge["kl"]) > 0)
    # and it is the maximum: a point off the circle is worse
    r = np.sqrt(np.mean(x ** 2))
    assert stats.norm.logpdf(x, scale=1.05 * r).mean() < ridge["loglik"][0]


def test_kl_gaussian_matches_torch():
    torch = pytest.importorskip("torch")
    m, v = np.array([0.3, -2.0]), np.array([0.2, 3.0])
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(torch.tensor(m), torch.tensor(np.sqrt(v))),
                                            torch.distributions.Normal(0.0, 1.0)).numpy()
    np.testing.assert_allclose(c.kl_gaussian(m, v), ref, rtol=1e-12)


@pytest.mark.parametrize("call, err", [
    (lambda: c.enumeration_posterior([0.5, 0.6], [0.0, 0.0]), ValueError),          # prior sums to 1.1
    (lambda: c.enumeration_posterior([1.2, -0.2], [0.0, 0.0]), ValueError),         # negative prior
    (lambda: c.enumeration_posterior([0.5, 0.5], [0.0, 0.0, 0.0]), ValueError),     # K mismatch
    (lambda: c.enumeration_posterior([[0.5, 0.5]], [0.0, 0.0]), ValueError),        # prior not (K,)
    (lambda: c.enumeration_posterior([0.5, 0.5], [0.0, np.nan]), ValueError),       # NaN
    (lambda: c.enumeration_posterior(["a", "b"], [0.0, 0.0]), TypeError),
    (lambda: c.kl_categorical([0.5, 0.5], [0.2, 0.3, 0.5]), ValueError),
    (lambda: c.conjugate_gaussian_posterior([1.0], 1.0, 0.0), ValueError),         # s <= 0
    (lambda: c.conjugate_gaussian_posterior([1.0], 1.0, -1.0), ValueError),
    (lambda: c.conjugate_gaussian_posterior([[1.0]], 1.0, 1.0), ValueError),       # x not (n,)
    (lambda: c.kl_gaussian(0.0, 0.0), ValueError),                                  # variance 0
    (lambda: c.interpolated_likelihood(c.noisy_channel(3), 1.5), ValueError),
    (lambda: c.interpolated_likelihood([[0.5, 0.6]], 0.5), ValueError),
    (lambda: c.noisy_channel(1), ValueError),
    (lambda: c.noisy_channel(3, 1.0), ValueError),
    (lambda: c.is_latent_non_identifiable([0.0, 0.0], atol=-1), ValueError),
    (lambda: c.kl_upper_bound(-0.1), ValueError),
    (lambda: c.likelihood_ridge([1.0, 2.0], [np.pi / 2]), ValueError),
    (lambda: c.discrete_collapse_curve(PRIOR, c.noisy_channel(4), x=4, ts=[0.5]), ValueError),
])
def test_bad_inputs_raise(call, err):
    with pytest.raises(err):
        call()
