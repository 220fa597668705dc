"""The GMVAE's likelihood maximizers (paper Sec. 2.2): lidvae_mini.exact.gmvae."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from lidvae_mini.exact import gmvae as g

GRID = 40001


@pytest.fixture(scope="module")
def well_specified():
    truth = g.two_cluster_truth(mu=3.0, s=0.1)
    data = truth.sample(400, seed=0)
    merged = g.merged_maximizer(truth)
    return truth, merged, data, truth.evaluate(data["x"], GRID), merged.evaluate(data["x"], GRID)


@pytest.fixture(scope="module")
def misspecified():
    one = g.one_cluster_truth(s=0.1)
    data = one.sample(300, seed=1)
    merged, split = g.merged_maximizer(one), g.split_maximizer(one)
    return data, one.evaluate(data["x"], GRID), merged.evaluate(data["x"], GRID), split.evaluate(data["x"], GRID)


def test_transport_matches_brentq_and_inverts_the_normal_score():
    mix = g.Mixture1D([0.3, 0.7], [-3.0, 2.0], [1.0, 0.5])
    u = np.array([-9.0, -4.0, -1.0, -0.2, 0.0, 0.4, 1.3, 5.0, 9.0])
    w = mix.transport(u)
    np.testing.assert_allclose(w, [mix.transport_brentq(v) for v in u], atol=1e-10)
    np.testing.assert_allclose(mix.normal_score(w), u, atol=1e-11)
    np.testing.assert_allclose(special.log_ndtr(u[:5]), mix.logcdf(w[:5]), rtol=1e-10)  # F(T(u)) = Phi(u)
    assert np.all(np.diff(w) > 0)  # monotone


def test_transport_pushes_standard_normal_onto_the_mixture_ks():
    mix = g.Mixture1D([0.5, 0.5], [-3.0, 3.0], [1.0, 1.0])
    w = mix.transport(np.random.default_rng(3).standard_normal(20_000))
    cdf = lambda t: np.exp(mix.logcdf(np.atleast_1d(t)))  # noqa: E731
    assert stats.kstest(w, cdf).pvalue > 0.01
    wrong = g.Mixture1D([0.5, 0.5], [-2.8, 3.0], [1.0, 1.0])  # the test has power: a small shift is rejected
    assert stats.kstest(w, lambda t: np.exp(wrong.logcdf(np.atleast_1d(t)))).pvalue < 1e-6
    # the inverse direction: the normal score of mixture samples is N(0, 1)
    _, wm = mix.sample(20_000, seed=4)
    assert stats.kstest(mix.normal_score(wm), "norm").pvalue > 0.01


def test_transport_between_identical_distributions_is_the_identity():
    one = g.one_cluster_truth()
    merged = g.merged_maximizer(one)
    v = np.linspace(-6, 6, 25)
    np.testing.assert_allclose(merged.f.latent(v), v, atol=1e-12)


def test_streamed_quadrature_equals_torch_distributions_density():
    truth = g.two_cluster_truth(s=0.3)
    x = truth.sample(7, seed=5)["x"]
    grid = truth.prior.grid(501)
    ll = truth.loglik_on_grid(x, grid)  # torch.distributions.Normal
    ref = special.logsumexp(ll[:, :, None] + truth.prior.component_logpdf(grid)[None], axis=1)
    ref += np.log(grid[1] - grid[0])
    for chunk in (1, 1000, 10**7):
        np.testing.assert_allclose(truth.evaluate(x, 501, chunk_elements=chunk).log_px_given_y, ref, rtol=0, atol=1e-10)


def test_quadrature_converges_to_a_closed_form_for_a_linear_map():
    # f(w) = (w, 0): x_1 ~ mixture convolved with N(0, s^2), x_2 ~ N(0, s^2); exact marginal known
    model = g.GMVAE1D(g.Mixture1D([0.4, 0.6], [-1.0, 2.0], [0.5, 1.5]), lambda w: np.stack([w, 0 * w], 1), 0.2)
    x = model.sample(50, seed=6)["x"]
    sd = np.sqrt(model.prior.sds ** 2 + 0.2 ** 2)
    exact = special.logsumexp(np.log(model.prior.weights) + stats.norm.logpdf(x[:, :1], model.prior.means, sd), axis=1)
    exact += stats.norm.logpdf(x[:, 1], 0, 0.2)
    np.testing.assert_allclose(model.evaluate(x, 4001).log_px, exact, atol=1e-10)


def test_two_maximizers_have_the_same_likelihood(well_specified):
    truth, _, data, r1, r2 = well_specified
    assert np.max(np.abs(r1.log_px - r2.log_px)) < 1e-3  # nats per datapoint, each datapoint
    assert abs(r1.log_px.mean() - r2.log_px.mean()) < 1e-6
    # without the transport, merging the components does lose likelihood: the agreement is not automatic
    naive = g.GMVAE1D(g.Mixture1D.standard(2), truth.f, truth.s)
    assert naive.evaluate(data["x"], 5001).log_px.mean() < r1.log_px.mean() - 1.0


def test_merged_maximizer_collapses_exactly_and_truth_does_not(well_specified):
    truth, merged, data, r1, r2 = well_specified
    assert np.all(r2.p_y == 0.5)
    assert np.all(r2.log_px_given_y[:, 0] == r2.log_px_given_y[:, 1])  # Definition 2, exactly
    np.testing.assert_allclose(r2.entropy_y, np.log(2), rtol=1e-15)
    assert r1.entropy_y.mean() < 0.05
    assert g.summary_metrics(r1)["frac_confident"] > 0.95
    assert np.mean(r1.p_y.argmax(1) == data["y"]) > 0.97
    assert np.max(np.abs(r1.log_px_given_y[:, 0] - r1.log_px_given_y[:, 1])) > 10


def test_posterior_w_integrates_to_the_posterior_of_y(well_specified):
    truth, merged, data, r1, r2 = well_specified
    for model, res in ((truth, r1), (merged, r2)):
        grid, dens = model.posterior_w(data["x"][:5], GRID)
        p_y = dens.sum(axis=1) * (grid[1] - grid[0])
        np.testing.assert_allclose(p_y.sum(1), 1.0, atol=1e-12)
        np.testing.assert_allclose(p_y, res.p_y[:5], atol=1e-9)


def test_misspecified_merged_collapses_split_is_confident_same_likelihood(misspecified):
    _, r_one, r3, r4 = misspecified
    assert np.all(r3.p_y == 0.5)
    np.testing.assert_allclose(r3.log_px, r_one.log_px, atol=1e-10)
    np.testing.assert_allclose(r4.log_px, r3.log_px, atol=1e-6)
    assert g.summary_metrics(r4)["frac_confident"] > 0.8 and g.summary_metrics(r3)["frac_confident"] == 0.0


def test_sampling_is_seeded():
    truth = g.two_cluster_truth()
    a, b, c = truth.sample(10, seed=7), truth.sample(10, seed=7), truth.sample(10, seed=8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["x"], c["x"])


@pytest.mark.parametrize("call, err", [
    (lambda: g.Mixture1D([0.5, 0.5], [0.0, 1.0, 2.0], [1.0, 1.0]), ValueError),  # K mismatch
    (lambda: g.Mixture1D([0.5, 0.6], [0.0, 1.0], [1.0, 1.0]), ValueError),       # weights sum to 1.1
    (lambda: g.Mixture1D([1.5, -0.5], [0.0, 1.0], [1.0, 1.0]), ValueError),      # negative weight
    (lambda: g.Mixture1D([0.5, 0.5], [0.0, 1.0], [1.0, 0.0]), ValueError),       # sd <= 0
    (lambda: g.Mixture1D([[0.5, 0.5]], [0.0, 1.0], [1.0, 1.0]), ValueError),     # not (K,)
    (lambda: g.GMVAE1D(g.Mixture1D.standard(2), g.Curve(), 0.0), ValueError),    # s <= 0
    (lambda: g.GMVAE1D(g.Mixture1D.standard(2), g.Curve(), -0.1), ValueError),
    (lambda: g.GMVAE1D("prior", g.Curve(), 0.1), TypeError),
    (lambda: g.GMVAE1D(g.Mixture1D.standard(2), lambda w: w, 0.1), ValueError),  # f returns (m,), not (m, D)
    (lambda: g.two_cluster_truth().evaluate(np.zeros((3, 3)), 101), ValueError),  # D mismatch
    (lambda: g.two_cluster_truth().evaluate(np.zeros(3), 101), ValueError),       # x not (n, D)
    (lambda: g.two_cluster_truth().evaluate(np.full((2, 2), np.nan), 101), ValueError),
    (lambda: g.two_cluster_truth().evaluate(np.zeros((3, 2)), 2), ValueError),    # grid too small
    (lambda: g.two_cluster_truth().sample(0), ValueError),
    (lambda: g.two_cluster_truth(mu=-1.0), ValueError),
    (lambda: g.merged_maximizer(g.two_cluster_truth(), K=0), ValueError),
    (lambda: g.reparameterize("model", g.Mixture1D.standard(2)), TypeError),
])
def test_bad_inputs_raise(call, err):
    with pytest.raises(err):
        call()
