"""Two-component GMM (supplement A.2, Figure 4): data, ML, likelihood in alpha, NUTS posteriors, distances."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, optimize, stats
from scipy.special import logsumexp

from lidvae_mini.exact import gmm
from lidvae_mini.data import load_official

BETA55_SD = float(stats.beta(5, 5).std())  # 0.1508


def _mixture(n, alpha, mu1, s1, mu2, s2, seed):
    rng = np.random.default_rng(seed)
    first = rng.random(n) < alpha
    return np.where(first, rng.normal(mu1, s1, n), rng.normal(mu2, s2, n))


# ---------------------------------------------------------------------------------------------- data
def test_load_data_official_is_first_n_and_auto_switches_to_regenerated():
    y, src = gmm.load_data("overlap", 500)
    assert src == "official" and y.shape == (500,)
    np.testing.assert_array_equal(y, load_official("overlap_gaussian")["y"][:500])
    y_big, src_big = gmm.load_data("overlap", 12_000)
    assert src_big == "regenerated" and y_big.shape == (12_000,)
    y_reg, src_reg = gmm.load_data("overlap", 500, data="regenerated", seed=3)
    assert src_reg == "regenerated"
    np.testing.assert_array_equal(y_reg, gmm.simulate("overlap", 500, seed=3))


def test_simulate_follows_the_official_generating_process():
    y = gmm.simulate("nonoverlap", 20_000, seed=1)
    np.testing.assert_array_equal(y, gmm.simulate("nonoverlap", 20_000, seed=1))  # seeded
    frac_second = np.mean(y > 0)  # component 2 (mean +10) has weight 0.15
    assert abs(frac_second - 0.15) < 4 * np.sqrt(0.15 * 0.85 / len(y))
    assert abs(y[y < 0].mean() + 10) < 0.05 and abs(y[y > 0].std() - 1) < 0.05
    single = gmm.simulate("single", 20_000, seed=1)
    assert abs(single.mean() + 1) < 0.03 and abs(single.std() - 1) < 0.03
    # the official data follow the same convention: 0.85 on the lower-mean component
    assert abs(np.mean(load_official("nonoverlap_gaussian")["y"] > 0) - 0.146) < 1e-3


# ---------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("call, match", [
    (lambda: gmm.load_data("two_gaussians", 100), "unknown GMM dataset"),
    (lambda: gmm.simulate("Single", 100), "unknown GMM dataset"),
    (lambda: gmm.load_data("single", 10_001, data="official"), "official single data have 10000 points"),
    (lambda: gmm.load_data("single", 100, data="real"), "unknown data"),
    (lambda: gmm.load_data("single", 0), "n must be an integer >= 1"),
    (lambda: gmm.log_likelihood_alpha(np.zeros((3, 2)), [0.5], (0, 0), (1, 1)), "y must have 1 dimension"),
    (lambda: gmm.log_likelihood_alpha(np.zeros(3), [0.5], (0, 0, 0), (1, 1)), r"mu must have shape \(2,\)"),
    (lambda: gmm.log_likelihood_alpha(np.zeros(3), [0.5], (0, 0), (1, 0)), "sigma2 must be > 0"),
    (lambda: gmm.log_likelihood_alpha(np.zeros(3), [0.5], (0, 0), (-1, 1)), "sigma1 must be > 0"),
    (lambda: gmm.log_likelihood_alpha(np.zeros(3), [0.5, 1.2], (0, 0), (1, 1)), r"alpha_grid must lie in \[0, 1\]"),
    (lambda: gmm.log_likelihood_alpha([0.0, np.nan], [0.5], (0, 0), (1, 1)), "NaN or infinite"),
    (lambda: gmm.log_likelihood(np.zeros(3), (-0.1, 0, 1, 0, 1)), r"alpha must lie in \[0, 1\]"),
    (lambda: gmm.log_likelihood(np.zeros(3), (0.5, 0, 1, 0)), r"params must have shape \(5,\)"),
    (lambda: gmm.fit_ml(np.zeros(100)), "standard deviation of y must be > 0"),
    (lambda: gmm.fit_ml(np.arange(10.0), method="newton"), "unknown method"),
    (lambda: gmm.sample_alpha(np.arange(10.0), "fixed"), "needs params"),
    (lambda: gmm.sample_alpha(np.arange(10.0), "both"), "unknown setting"),
    (lambda: gmm.distance_to_beta([0.2, 1.5]), r"draws must lie in \[0, 1\]"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------ likelihood
def test_log_likelihood_alpha_matches_logsumexp():
    y = gmm.simulate("overlap", 300, seed=2)
    grid = np.linspace(0.0, 1.0, 11)
    mu, sigma = (-0.7, 0.4), (0.9, 1.3)
    got = gmm.log_likelihood_alpha(y, grid, mu, sigma, chunk=1000)  # chunked over the grid
    lp = np.stack([stats.norm.logpdf(y, mu[0], sigma[0]), stats.norm.logpdf(y, mu[1], sigma[1])])
    with np.errstate(divide="ignore"):
        want = [logsumexp(lp + np.log([[a], [1 - a]]), axis=0).mean() for a in grid]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert gmm.log_likelihood(y, (0.3, *mu[:1], sigma[0], mu[1], sigma[1])) == pytest.approx(
        len(y) * gmm.log_likelihood_alpha(y, [0.3], mu, sigma)[0], rel=1e-12)


def test_log_likelihood_alpha_is_exactly_flat_for_equal_components():
    y, _ = gmm.load_data("single", 10_000)
    m, s = y.mean(), y.std()
    curve = gmm.log_likelihood_alpha(y, np.linspace(0, 1, 201), (m, m), (s, s))
    assert np.ptp(curve) == 0.0  # exactly, not approximately
    assert curve[0] == pytest.approx(stats.norm.logpdf(y, m, s).mean(), rel=1e-13)


def test_scores_and_lbfgs_gradient_are_exact():
    y = _mixture(400, 0.3, -1.0, 0.8, 1.5, 1.2, seed=4)
    p = np.array([0.35, -0.9, 0.7, 1.2, 1.1])
    num = optimize.approx_fprime(p, lambda q: gmm.log_likelihood(y, q), 1e-7)
    np.testing.assert_allclose(gmm.scores(y, p).sum(axis=0), num, rtol=1e-5, atol=1e-4)
    theta = np.array([0.3, -0.9, np.log(0.7), 1.2, np.log(1.1)])
    f = lambda t: gmm._negloglik_and_grad(t, y)[0]  # noqa: E731
    np.testing.assert_allclose(gmm._negloglik_and_grad(theta, y)[1], optimize.approx_fprime(theta, f, 1e-7),
                               rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------- maximum likelihood
def test_em_and_lbfgs_reach_the_known_optimum_on_well_separated_data():
    truth = np.array([0.3, -2.0, 1.0, 3.0, 0.5])
    y = _mixture(4000, *truth, seed=5)
    em = gmm.fit_em(y, n_restarts=4, seed=0)
    lb = gmm.fit_lbfgs(y, n_restarts=4, seed=0)
    assert em.converged and lb.converged
    assert em.loglik == pytest.approx(lb.loglik, abs=1e-5)          # same optimum, total nats
    np.testing.assert_allclose(em.params, lb.params, atol=1e-4)
    assert lb.loglik_per_datapoint == pytest.approx(lb.loglik / len(y))
    se = np.asarray(gmm.standard_errors(y, lb.params))
    z = (np.asarray(lb.params) - truth) / se
    assert np.all(np.abs(z) < 4), z                                  # within a few standard errors
    assert np.all(se < [0.02, 0.05, 0.05, 0.02, 0.02])               # and the errors are small at N = 4000
    ml = gmm.fit_ml(y, n_restarts=4)
    assert not ml.degenerate and ml.gain > 100


def test_single_gaussian_ml_is_degenerate_and_ridge_is_within_a_nat():
    y, _ = gmm.load_data("single", 2000)
    ml = gmm.fit_ml(y, n_restarts=4)
    assert ml.degenerate and ml.params.mu1 == ml.params.mu2 and ml.params.sigma1 == ml.params.sigma2
    assert ml.params.mu1 == pytest.approx(y.mean()) and ml.params.sigma1 == pytest.approx(y.std())
    raw = gmm.fit_ml(y, n_restarts=4, select=None)
    assert raw.loglik >= ml.loglik - 1e-9
    assert 0 <= ml.gain < 1.5 * np.log(len(y))                       # the BIC rule that selected the ridge
    assert ml.gain / len(y) < 2e-3                                   # nats per datapoint


# --------------------------------------------------------------------------------------- distances
def test_distance_to_beta():
    rng = np.random.default_rng(0)
    prior_draws = rng.beta(5, 5, 20_000)
    d = gmm.distance_to_beta(prior_draws)
    assert d["ks"] < gmm.ks_threshold(len(prior_draws)) and d["w1"] < 0.005
    point = gmm.distance_to_beta(np.full(100, 0.85))
    w1_exact = integrate.quad(lambda a: abs(a - 0.85) * stats.beta(5, 5).pdf(a), 0, 1, points=[0.85])[0]
    assert point["w1"] == pytest.approx(w1_exact, abs=1e-4)
    assert point["ks"] == pytest.approx(stats.beta(5, 5).cdf(0.85), abs=1e-12)
    assert gmm.ks_threshold(10_000) == pytest.approx(1.6276 / 100, rel=1e-3)


def test_relabel_orders_means_and_maps_alpha():
    samples = {"alpha": np.array([[0.2, 0.7]]), "mu": np.array([[[1.0, -1.0], [-2.0, 3.0]]]),
               "sigma": np.array([[[0.5, 2.0], [1.0, 1.5]]])}
    out, swapped = gmm.relabel(samples)
    np.testing.assert_array_equal(swapped, [[True, False]])
    np.testing.assert_allclose(out["alpha"], [[0.8, 0.7]])
    np.testing.assert_array_equal(out["mu"], [[[-1.0, 1.0], [-2.0, 3.0]]])
    np.testing.assert_array_equal(out["sigma"], [[[2.0, 0.5], [1.0, 1.5]]])


# ------------------------------------------------------------------------------------ NUTS posteriors
def test_fixed_single_posterior_is_the_prior():
    """Equal components: the likelihood is constant in alpha, so the posterior is Beta(5, 5) exactly.

    With m = ESS effective draws, the KS statistic of prior draws stays below 1.63 / sqrt(m) with
    probability 0.99; the mean and sd are checked against the prior to a few Monte Carlo errors.
    """
    y, _ = gmm.load_data("single", 2000)
    ml = gmm.fit_ml(y, n_restarts=2)
    post = gmm.sample_alpha(y, "fixed", ml.params, num_warmup=300, num_samples=1000, num_chains=2, seed=1)
    s = post.summary()
    assert s["ess_bulk"] > 400 and s["r_hat"] < 1.02 and s["divergences"] == 0
    assert s["ks"] < s["ks_threshold"], s
    assert abs(s["alpha_mean"] - 0.5) < 4 * BETA55_SD / np.sqrt(s["ess_bulk"])
    assert abs(s["alpha_sd"] - BETA55_SD) < 0.15 * BETA55_SD
    assert s["w1"] < 0.02


def test_fixed_nonoverlap_posterior_is_peaked_and_matches_the_grid_posterior():
    y, _ = gmm.load_data("nonoverlap", 2000)
    ml = gmm.fit_ml(y, n_restarts=2)
    assert not ml.degenerate
    post = gmm.sample_alpha(y, "fixed", ml.params, num_warmup=300, num_samples=500, num_chains=2, seed=2)
    s = post.summary()
    assert abs(s["alpha_mean"] - 0.85) < 0.02 and s["alpha_sd"] < 0.02 and s["ks"] > 0.9
    # exact posterior on a grid: log Beta(5,5) + N * mean log-likelihood
    grid = np.linspace(0.75, 0.97, 4001)
    logpost = stats.beta(5, 5).logpdf(grid) + len(y) * gmm.log_likelihood_alpha(
        y, grid, (ml.params.mu1, ml.params.mu2), (ml.params.sigma1, ml.params.sigma2))
    w = np.exp(logpost - logpost.max())
    w /= w.sum()
    mean = float(w @ grid)
    sd = float(np.sqrt(w @ (grid - mean) ** 2))
    assert abs(s["alpha_mean"] - mean) < 4 * sd / np.sqrt(s["ess_bulk"])
    assert s["alpha_sd"] == pytest.approx(sd, rel=0.15)


def test_joint_nonoverlap_relabelled_alpha_is_the_lower_component_weight():
    y, _ = gmm.load_data("nonoverlap", 1000)
    post = gmm.sample_alpha(y, "joint", num_warmup=200, num_samples=200, num_chains=2, seed=3)
    frac_lower = float(np.mean(y < 0))
    assert post.alpha.shape == (2, 200)
    s = post.summary()
    assert abs(s["alpha_mean"] - frac_lower) < 0.03 and s["alpha_sd"] < 0.03
    mu = gmm.relabel(post.nuts.samples)[0]["mu"]
    assert np.all(mu[..., 0] <= mu[..., 1])
    assert np.allclose(np.median(mu, axis=(0, 1)), [-10, 10], atol=0.3)


# ------------------------------------------------------------------------- exact fixed-theta posterior
def test_exact_fixed_posterior_with_equal_components_is_the_prior():
    y, _ = gmm.load_data("single", 2000)
    m, s = y.mean(), y.std()
    post = gmm.fixed_alpha_posterior(y, (0.3, m, s, m, s))
    r = post.summary()
    assert post.loglik_spread == 0.0 and r["ks"] < 1e-5 and r["w1"] < 1e-5
    assert r["log_marginal_nats"] == pytest.approx(gmm.log_likelihood(y, (0.5, m, s, m, s)), abs=1e-9)
    assert r["alpha_mean"] == pytest.approx(0.5, abs=1e-9) and r["alpha_sd"] == pytest.approx(BETA55_SD, rel=1e-5)


def test_exact_fixed_posterior_matches_a_dense_grid():
    """Against brute force: a uniform grid of 200,001 nodes, on a broad and on a spiked posterior."""
    for n, params in [(40, (0.5, -0.5, 1.0, 0.5, 1.0)), (3000, (0.85, -10.0, 1.0, 10.0, 1.0))]:
        y = gmm.simulate("overlap" if n == 40 else "nonoverlap", n, seed=7)
        post = gmm.fixed_alpha_posterior(y, params)
        grid = np.linspace(1e-9, 1 - 1e-9, 200_001)
        logpost = stats.beta(5, 5).logpdf(grid) + len(y) * gmm.log_likelihood_alpha(y, grid, params[1::2], params[2::2])
        w = np.exp(logpost - logpost.max())
        w /= w.sum()
        mean = float(w @ grid)
        sd = float(np.sqrt(w @ (grid - mean) ** 2))
        ks = float(np.max(np.abs(np.cumsum(w) - stats.beta(5, 5).cdf(grid))))
        r = post.summary()
        assert r["alpha_mean"] == pytest.approx(mean, abs=1e-5 * max(sd, 1e-2))
        assert r["alpha_sd"] == pytest.approx(sd, rel=1e-3)
        assert r["ks"] == pytest.approx(ks, abs=2e-3)
        assert post.loglik_spread > 0 and grid[np.argmax(w)] == pytest.approx(r["mode"], abs=1e-4)
        if n == 40:  # log p(y; theta) = log int Beta(alpha) prod_i p(y_i | alpha) d alpha, by scipy's quad
            lik = lambda a: np.exp(stats.beta(5, 5).logpdf(a) + gmm.log_likelihood(y, (a, *params[1:])))  # noqa: E731
            assert r["log_marginal_nats"] == pytest.approx(np.log(integrate.quad(lik, 0, 1)[0]), abs=1e-6)
    # the spike: sd of a binomial proportion with known components, sqrt(a (1 - a) / N)
    frac = float(np.mean(y < 0))
    assert r["alpha_mean"] == pytest.approx(frac, abs=2e-3)
    assert r["alpha_sd"] == pytest.approx(np.sqrt(frac * (1 - frac) / len(y)), rel=0.05)


def test_selected_point_gives_the_prior_and_the_strict_optimum_does_not():
    """Single-Gaussian data: BIC selects the merged point (flat likelihood, posterior = prior, Theorem 1); the
    optimiser's best point, a nat or two higher, has distinct components and a posterior far from the prior."""
    y, _ = gmm.load_data("single", 2000)
    fit = gmm.fit_ml(y, n_restarts=4)
    assert fit.degenerate
    np.testing.assert_array_equal(fit.params_strict, gmm.fit_ml(y, n_restarts=4, select=None).params)
    posts = gmm.fixed_posteriors_at_ml(y, fit)
    sel, strict = posts["selected"].summary(), posts["strict ML"].summary()
    assert sel["ks"] < 1e-5 and sel["loglik_spread_nats"] == 0.0
    assert strict["ks"] > 0.5 and strict["loglik_spread_nats"] > 100
    both = gmm.fixed_posteriors_at_ml(*gmm.load_data("nonoverlap", 500)[:1], gmm.fit_ml(gmm.load_data("nonoverlap", 500)[0]))
    assert both["selected"] is both["strict ML"]


def test_exact_fixed_posterior_rejects_unbounded_priors():
    with pytest.raises(ValueError, match="prior parameters must be >= 1"):
        gmm.fixed_alpha_posterior(np.arange(10.0), (0.5, 0, 1, 1, 1), prior=(0.5, 0.5))


# -------------------------------------------------------------------------------------------- figures
def test_figures_have_one_panel_per_dataset():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, 1, 11)
    fig = gmm.plot_loglik_alpha({k: (grid, -grid ** 2) for k in gmm.DATASETS},
                                references={"overlap": [(grid, -grid, "generating")]})
    assert len(fig.axes) == 3
    fig2 = gmm.plot_alpha_histograms({k: np.random.default_rng(0).beta(5, 5, 100) for k in gmm.DATASETS},
                                     title="fixed")
    assert len(fig2.axes) == 3
    y = gmm.simulate("overlap", 50, seed=0)
    post = gmm.fixed_alpha_posterior(y, (0.5, -0.5, 1.0, 0.5, 1.0))
    fig3 = gmm.plot_alpha_cdfs({k: {"a": post, "b": post} for k in gmm.DATASETS}, title="exact")
    assert len(fig3.axes) == 3
    plt.close("all")
