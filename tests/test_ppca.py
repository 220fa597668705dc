"""Tests of lidvae_mini.exact.ppca: closed forms against numerics, NUTS against the exact posterior, the paper's claims."""
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import norm

from lidvae_mini.exact import ppca

SIGMAS = [0.1, 0.2, 0.5, 1.0, 1.5, 2.0]
# Reference table (notes on the official implementation, Sec. 6.4): exact posterior sd of each latent with
# W at the PPCA MLE for known sigma, on the official data. Rows: sigma; columns: (dir 1, dir 2).
REFERENCE_SD = {
    "twod": [(0.023, 0.034), (0.047, 0.069), (0.117, 0.172), (0.234, 0.345), (0.351, 0.517), (0.468, 0.689)],
    "oned": [(0.028, 0.915), (0.056, 1.0), (0.141, 1.0), (0.282, 1.0), (0.423, 1.0), (0.565, 1.0)],
}


@pytest.fixture(scope="module")
def data():
    return {name: ppca.load_data(name, "official")["x"] for name in ("oned", "twod")}


# ---------------------------------------------------------------------------------------------- ML estimate
def _neg_ll_and_grad(theta, x, m, sigma):
    """-log p(X; W, sigma) from ppca.log_likelihood, with its analytic gradient (independent of the closed form)."""
    n, d = x.shape
    w = theta[: d * m].reshape(d, m)
    s2 = sigma ** 2 if sigma is not None else np.exp(2 * theta[-1])
    value = -ppca.log_likelihood(x, w, np.sqrt(s2))
    c_inv = np.linalg.inv(w @ w.T + s2 * np.eye(d))
    s = x.T @ x / n
    g_c = 0.5 * n * (c_inv - c_inv @ s @ c_inv)           # d(-LL)/dC
    grad = [(2 * g_c @ w).ravel()]
    if sigma is None:
        grad.append([np.trace(g_c) * 2 * s2])            # d/d log(sigma) = dC/dlog(sigma) = 2 s2 I
    return value, np.concatenate(grad)


@pytest.mark.parametrize("name,sigma", [("twod", None), ("oned", None), ("twod", 1.0), ("oned", 0.5)])
def test_ml_closed_form_equals_numerical_optimum(data, name, sigma):
    x, m = data[name], 2
    fit = ppca.ml_estimate(x, m, sigma=sigma)
    rng = np.random.default_rng(1)
    theta0 = np.concatenate([rng.normal(size=x.shape[1] * m), [0.0] if sigma is None else []])
    opt = minimize(_neg_ll_and_grad, theta0, args=(x, m, sigma), jac=True, method="L-BFGS-B",
                   options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-9})
    w_num = opt.x[: x.shape[1] * m].reshape(-1, m)
    s_num = sigma if sigma is not None else float(np.exp(opt.x[-1]))
    ll_closed = ppca.log_likelihood(x, fit.w, fit.sigma)
    assert ll_closed >= -opt.fun - 1e-6                          # the closed form is the maximum ...
    assert ll_closed == pytest.approx(-opt.fun, abs=1e-4)         # ... and the optimiser reaches it
    np.testing.assert_allclose(fit.w @ fit.w.T, w_num @ w_num.T, atol=2e-4)   # W only up to rotation
    assert fit.sigma == pytest.approx(s_num, rel=1e-4)


def test_ml_estimate_structure(data):
    fit = ppca.ml_estimate(data["twod"], 2)
    lam = fit.eigenvalues
    assert np.all(np.diff(lam) <= 0)
    assert fit.sigma ** 2 == pytest.approx(lam[2:].mean())
    np.testing.assert_allclose(fit.w.T @ fit.w, np.diag(lam[:2] - fit.sigma ** 2), atol=1e-10)
    # known sigma above an eigenvalue: that column is exactly zero (clamped)
    fit = ppca.ml_estimate(data["oned"], 2, sigma=0.5)
    assert np.all(fit.w[:, 1] == 0) and np.linalg.norm(fit.w[:, 0]) > 3


# ---------------------------------------------------------------------------------------------- exact posterior
def test_exact_posterior_equals_gaussian_conditioning(data):
    x = data["twod"][:7]
    rng = np.random.default_rng(0)
    w, sigma = rng.normal(size=(5, 2)), 0.7
    mean, cov = ppca.exact_posterior(x, w, sigma)
    c_inv = np.linalg.inv(w @ w.T + sigma ** 2 * np.eye(5))     # joint Gaussian (z, x) conditioned on x
    np.testing.assert_allclose(cov, np.eye(2) - w.T @ c_inv @ w, atol=1e-12)
    np.testing.assert_allclose(mean, x @ c_inv @ w, atol=1e-12)


@pytest.mark.parametrize("name", ["twod", "oned"])
def test_exact_posterior_sd_matches_reference_table(data, name):
    got = np.array([ppca.exact_posterior_sd(data[name], s) for s in SIGMAS])
    np.testing.assert_allclose(got, np.array(REFERENCE_SD[name]), atol=5e-3)


def test_oned_data_have_one_collapsed_latent_and_twod_none(data):
    for s in [0.2, 0.5, 1.0, 1.5, 2.0]:
        sd1 = ppca.exact_posterior_sd(data["oned"], s)
        sd2 = ppca.exact_posterior_sd(data["twod"], s)
        assert sd1[1] == pytest.approx(1.0, abs=1e-12) and sd1[0] < 0.6     # z2 collapsed, z1 not
        assert np.all(sd2 < 0.7)                                            # neither collapsed
        for x, collapsed in [(data["oned"], [False, True]), (data["twod"], [False, False])]:
            fit = ppca.ml_estimate(x, 2, sigma=s)
            kl = ppca.kl_to_prior(*ppca.exact_posterior(x, fit.w, s)).mean(axis=0)
            for k in range(2):
                assert (kl[k] < 1e-12) if collapsed[k] else (kl[k] > 0.1)
    # twod collapses only once sigma^2 reaches an eigenvalue of X^T X / N (18.29, 8.42)
    lam = ppca.ml_estimate(data["twod"], 2).eigenvalues
    assert ppca.exact_posterior_sd(data["twod"], 1.001 * np.sqrt(lam[1]))[1] == 1.0
    assert ppca.exact_posterior_sd(data["twod"], 0.999 * np.sqrt(lam[1]))[1] < 1.0


@pytest.mark.parametrize("name", ["twod", "oned"])
def test_average_kl_is_half_log_eigenvalue_over_noise(data, name):
    x = data[name]
    lam = ppca.ml_estimate(x, 2).eigenvalues[:2]
    for s in SIGMAS:
        fit = ppca.ml_estimate(x, 2, sigma=s)
        kl = ppca.kl_to_prior(*ppca.exact_posterior(x, fit.w, s)).mean(axis=0)
        np.testing.assert_allclose(kl, 0.5 * np.log(np.maximum(lam / s ** 2, 1.0)), atol=1e-10)


def test_kl_to_prior_closed_form():
    kl = ppca.kl_to_prior(np.array([[0.0, 1.0], [0.0, 0.0]]), np.diag([1.0, 0.25]))
    expect_var = 0.5 * (0.25 - 1 - np.log(0.25))
    np.testing.assert_allclose(kl, [[0.0, 0.5 + expect_var], [0.0, expect_var]], atol=1e-12)


# ---------------------------------------------------------------------------------------------- surfaces
def test_likelihood_surface_pointwise(data):
    x, grid = data["twod"][[3, 9]], np.linspace(-2, 2, 5)
    w, sigma = ppca.ml_estimate(data["twod"], 2, sigma=0.5).w, 0.5
    surf = ppca.likelihood_surface(x, w, sigma, grid)
    assert surf.shape == (2, 5, 5)
    z = np.array([grid[1], grid[4]])
    assert surf[1, 1, 4] == pytest.approx(norm(w @ z, sigma).logpdf(x[1]).sum())


def test_official_surfaces_scored_an_all_zero_observation(data):
    """The official utils.R::ppca_ll used x = 0 (500 zeros against the 5-vector W z: 100 copies)."""
    grid = np.linspace(-2, 2, 50)
    zeros = np.zeros((100, 5))
    w_twod = ppca.load_data("twod")["w_true"]
    # sd over the grid of the committed twod surfaces (notes, Sec. 6.1): 1,419 at sigma = 1, 354.8 at sigma = 2
    assert ppca.likelihood_surface(zeros, w_twod, 1.0, grid).sum(0).std(ddof=1) == pytest.approx(1419.31, abs=0.01)
    assert ppca.likelihood_surface(zeros, w_twod, 2.0, grid).sum(0).std(ddof=1) == pytest.approx(354.83, abs=0.01)
    # committed oned_ppca_ll_zs_true.csv: entry 1 (z = (-2, -2)) is -12103.8568 and entry 50 (z = (2, -2)) is
    # -459.4693; both follow from W = [w, w] (the surface depends on z1 + z2), not the script's cbind(w, 0).
    w1 = ppca.load_data("oned")["w_true"][:, 0]
    surf = ppca.likelihood_surface(zeros, np.c_[w1, w1], 1.0, grid).sum(0)
    assert surf[0, 0] == pytest.approx(-12103.8568, abs=1e-3)
    assert surf[49, 0] == pytest.approx(-459.4693, abs=1e-3)
    surf_script = ppca.likelihood_surface(zeros, np.c_[w1, 0 * w1], 1.0, grid).sum(0)
    assert surf_script[0, 0] == pytest.approx(-3370.566, abs=1e-2)


# ---------------------------------------------------------------------------------------------- NUTS
def test_nuts_z_posterior_matches_exact(data):
    """Theorem 1's setting (W, sigma fixed): NUTS must reproduce the exact Gaussian posterior of z."""
    settings = [("twod", 0.1), ("twod", 2.0), ("oned", 1.0)]
    points = [12, 250]
    xs = np.stack([data[name][points] for name, _ in settings])
    ws = np.stack([ppca.ml_estimate(data[name], 2, sigma=s).w for name, s in settings])
    sigmas = np.array([s for _, s in settings])
    res = ppca.sample_z_posterior(xs, ws, sigmas, num_warmup=300, num_samples=400, num_chains=4, seed=3)
    z = res.samples["z"]                                              # (chains, draws, S, P, M)
    assert z.shape == (4, 400, 3, 2, 2)
    assert res.num_divergences == 0 and res.max_rhat < 1.02
    ess = ppca.summary_array(res, "z", "ess_bulk")
    for i, (name, s) in enumerate(settings):
        mean, cov = ppca.exact_posterior(xs[i], ws[i], s)
        sd = np.sqrt(np.diag(cov))
        nuts_mean, nuts_sd = z[:, :, i].mean(axis=(0, 1)), z[:, :, i].std(axis=(0, 1))
        assert np.all(np.abs(nuts_mean - mean) < 4 * sd / np.sqrt(ess[i])), (name, s)
        np.testing.assert_allclose(nuts_sd, np.broadcast_to(sd, nuts_sd.shape), rtol=0.15)


def test_numpyro_models_log_density_match_numpy(data):
    from numpyro.infer.util import log_density

    x = data["twod"][:20]
    rng = np.random.default_rng(0)
    w, z = rng.normal(size=(5, 2)), rng.normal(size=(20, 2))
    expect = (norm(0, 2).logpdf(w).sum() + norm.logpdf(z).sum() + norm(z @ w.T, 0.7).logpdf(x).sum())
    got, _ = log_density(ppca.knownsig_model, (x, 0.7), {}, {"w": w, "z": z})
    assert float(got) == pytest.approx(expect, rel=1e-5)
    xb = np.stack([x, 2 * x])                                         # batched copies = sum of the blocks
    wb, zb = np.stack([w, w + 1]), np.stack([z, -z])
    got_b, _ = log_density(ppca.knownsig_model, (xb, np.array([0.7, 1.3])), {}, {"w": wb, "z": zb})
    expect_b = sum(norm(0, 2).logpdf(wb[b]).sum() + norm.logpdf(zb[b]).sum()
                   + norm(zb[b] @ wb[b].T, s).logpdf(xb[b]).sum() for b, s in enumerate([0.7, 1.3]))
    assert float(got_b) == pytest.approx(expect_b, rel=1e-5)
    # ppca_mix.stan: sigma ~ lognormal(0,1), alpha ~ inv_gamma(1,1), w[d] ~ normal(0, sigma * alpha)
    from scipy.stats import invgamma, lognorm

    sigma, alpha = 0.8, np.array([1.5, 0.3])
    expect = (lognorm(1.0).logpdf(sigma) + invgamma(1.0).logpdf(alpha).sum() + norm(0, sigma * alpha).logpdf(w).sum()
              + norm.logpdf(z).sum() + norm(z @ w.T, sigma).logpdf(x).sum())
    got, _ = log_density(ppca.mix_model, (x,), {}, {"sigma": sigma, "alpha": alpha, "w": w, "z": z})
    assert float(got) == pytest.approx(expect, rel=1e-5)


def test_align_rotation_undoes_rotations_and_reflections():
    rng = np.random.default_rng(0)
    w_ref, z = rng.normal(size=(5, 2)), rng.normal(size=(30, 2))
    rots = []
    for angle, flip in [(0.3, 1), (2.0, -1), (-1.2, 1)]:
        c, s = np.cos(angle), np.sin(angle)
        rots.append(np.array([[c, -s], [s, c]]) @ np.diag([1, flip]))
    rots = np.stack(rots)
    w_draws, z_draws = w_ref @ rots, z @ rots                          # same W z for every draw
    w_al, z_al = ppca.align_rotation(w_draws, z_draws, w_ref)
    np.testing.assert_allclose(w_al, np.broadcast_to(w_ref, w_al.shape), atol=1e-12)
    np.testing.assert_allclose(z_al, np.broadcast_to(z, z_al.shape), atol=1e-12)


# ---------------------------------------------------------------------------------------------- data
def test_simulate_follows_the_official_process():
    a, b = ppca.simulate(500, 5, 1, 0.1, seed=7), ppca.simulate(500, 5, 2, 0.1, seed=7)
    assert a["x"].shape == (500, 5) and a["w"].shape == (5, 1) and a["z"].shape == (1, 500) and a["M"] == 2
    np.testing.assert_array_equal(a["w"][:, 0], b["w"][:, 0])         # R fills matrices by column
    np.testing.assert_array_equal(ppca.simulate(500, 5, 1, 0.1, seed=7)["x"], a["x"])
    resid = a["x"] - (a["w"] @ a["z"]).T
    assert resid.std() == pytest.approx(0.1, rel=0.05)
    big = ppca.simulate(20000, 3, 1, 0.1, seed=1, w_scale=2.0)
    assert big["w"].std() < 10 and np.cov(big["z"]) == pytest.approx(1.0, rel=0.05)


def test_load_data_sources():
    off, reg = ppca.load_data("oned", "official"), ppca.load_data("oned", "regenerated", seed=3)
    assert off["x"].shape == reg["x"].shape == (500, 5)
    assert "official" in off["label"] and "regenerated" in reg["label"] and "3" in reg["label"]
    np.testing.assert_allclose(off["w_true"][:, 0], [-1.871, 1.051, -1.903, -2.156, -1.298], atol=1e-3)
    assert ppca.ml_estimate(reg["x"], 2, sigma=0.5).w[:, 1].tolist() == [0.0] * 5   # regenerated oned: one latent


# ---------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise(data):
    x = data["twod"]
    w = ppca.ml_estimate(x, 2).w
    with pytest.raises(ValueError):
        ppca.load_data("threed")
    with pytest.raises(ValueError):
        ppca.load_data("oned", source="downloaded")
    for bad_sigma in [0.0, -1.0, np.inf]:
        with pytest.raises(ValueError):
            ppca.ml_estimate(x, 2, sigma=bad_sigma)
        with pytest.raises(ValueError):
            ppca.log_likelihood(x, w, bad_sigma)
        with pytest.raises(ValueError):
            ppca.exact_posterior(x, w, bad_sigma)
    with pytest.raises(ValueError):
        ppca.ml_estimate(x[:, 0], 1)                                   # 1-D data
    with pytest.raises(ValueError):
        ppca.ml_estimate(x, 6)                                         # m > D
    with pytest.raises(ValueError):
        ppca.ml_estimate(x, 5)                                         # sigma not estimable with m = D
    with pytest.raises(ValueError):
        ppca.log_likelihood(x, w[:4], 1.0)                             # W rows != D
    with pytest.raises(ValueError):
        ppca.likelihood_surface(x[:2], w[:, :1], 1.0, np.linspace(-1, 1, 3))   # surface needs M = 2
    x_bad = x.copy()
    x_bad[3, 2] = np.nan
    for fn in (lambda: ppca.ml_estimate(x_bad, 2), lambda: ppca.log_likelihood(x_bad, w, 1.0),
               lambda: ppca.exact_posterior(x_bad, w, 1.0)):
        with pytest.raises(ValueError):
            fn()
    with pytest.raises(ValueError):
        ppca.simulate(500, 5, 1, sigma=0.0)
    with pytest.raises(ValueError):
        ppca.sample_z_posterior(x[:2], np.stack([w, w]), np.array([1.0, -1.0]))
    with pytest.raises(ValueError):
        ppca.sample_joint_posterior(x, 1.0, datapoints=[500])
    with pytest.raises(ValueError):
        ppca.kl_to_prior(np.zeros((3, 2)), np.diag([1.0, 0.0]))
