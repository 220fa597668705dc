"""lidvae_mini.diagnose: Theorem 1 as a diagnostic, checked where the truth is known.

- PPCA with its exact posterior (chapter 2's data and noise levels): the verdicts follow the exact KL;
- a VAE whose decoder ignores chosen latents (model collapse by construction) and one whose encoder sits at the
  prior on chosen latents while the decoder uses them (inference collapse by construction);
- an LIDVAE has no exactly flat latent at random initialisation (Definition 3);
- bad input fails before any compute.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lidvae_mini.exact import ppca
from lidvae_mini.models.decoders import MLPDecoder
from lidvae_mini.diagnose import (KL_THRESHOLD, VERDICTS, Diagnosis, Thresholds, TorchModel, _verdicts,
                                  cluster_log_likelihoods, diagnose, ppca_model, sensitivity_threshold,
                                  with_ignored_latents, with_prior_posterior)
from lidvae_mini.models.encoders import GaussianEncoder
from lidvae_mini.models.mixture import MixtureVAE, build_mixture_vae
from lidvae_mini.models.train import fit
from lidvae_mini.models.vae import build_vae

USED, MODEL, INFERENCE, BORDERLINE = VERDICTS
SIGMAS = [0.1, 0.2, 0.5, 1.0, 1.5, 2.0]   # chapter 2's sweep


@pytest.fixture(autouse=True)
def _one_thread(single_torch_thread):
    yield


def test_threshold_is_the_second_order_kl_scale():
    assert sensitivity_threshold(0.01) == pytest.approx(np.sqrt(0.02))
    assert sensitivity_threshold() == pytest.approx(np.sqrt(2 * KL_THRESHOLD))


# ------------------------------------------------------------------------------------------------ PPCA, exact
@pytest.mark.parametrize("name", ["oned", "twod"])
def test_ppca_verdicts_follow_the_exact_posterior(name):
    x = ppca.load_data(name)["x"]
    for sigma in SIGMAS:
        fit_ = ppca.ml_estimate(x, 2, sigma=sigma)
        mean, cov = ppca.exact_posterior(x, fit_.w, sigma)
        exact_kl = ppca.kl_to_prior(mean, cov).mean(0)
        d = diagnose(ppca_model(x, sigma), x, n_samples=4, seed=0)
        np.testing.assert_allclose(d.kl, exact_kl, rtol=1e-9, atol=1e-12)
        # Theorem 1 with the exact posterior: identifiable <=> not collapsed; no inference collapse is possible
        assert list(d.identifiable) == list(exact_kl >= KL_THRESHOLD), (name, sigma, d.to_frame())
        assert INFERENCE not in d.verdict
        assert d.verdict == [USED if k >= KL_THRESHOLD else MODEL for k in exact_kl]
        assert d.verdict[0] == USED
        if name == "twod":
            assert d.verdict[1] == USED, sigma
        elif sigma >= 0.2:
            # the surplus latent of the one-dimensional data: zero loading, likelihood exactly flat
            assert d.verdict[1] == MODEL and d.flat[1] and d.sensitivity[1] == 0.0 and d.kl[1] < 1e-12, sigma
        else:
            # sigma = 0.1: the second eigenvalue (0.0119) exceeds sigma^2, so the loading is small but not zero and
            # the exact posterior carries 0.089 nats of KL: the diagnosis agrees that z2 is (weakly) identifiable
            assert d.verdict[1] == USED and 0.05 < exact_kl[1] < 0.15 and d.sensitivity[1] > d.thresholds.sensitivity


# ------------------------------------------------------------------------------------- constructed collapses
@pytest.fixture(scope="module")
def trained_vae():
    rng = np.random.default_rng(0)
    n, d, k = 1200, 12, 4
    a = rng.normal(size=(k, d))
    x = (np.tanh(rng.normal(size=(n, k)) @ a) + 0.1 * rng.normal(size=(n, d))).astype(np.float32)
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(1)
        model = build_vae("vae", d, k, "gaussian", encoder_hidden=(64,), mlp_hidden=(64, 64), seed=0)
        fit(model, x[:1000], None, epochs=20, batch_size=100, lr=3e-3, seed=0, progress=False)
    return model.eval(), torch.as_tensor(x[1000:])


def test_the_trained_reference_uses_every_latent(trained_vae):
    model, xv = trained_vae
    d = diagnose(model, xv, n_samples=4)
    assert d.verdict == [USED] * 4, d.to_frame()


def test_model_collapse_by_construction(trained_vae):
    model, xv = trained_vae
    d = diagnose(with_ignored_latents(model, [1, 3]), xv, n_samples=4)
    assert d.verdict == [USED, MODEL, USED, MODEL], d.to_frame()
    assert list(d.flat) == [False, True, False, True]
    assert d.sensitivity[1] == 0.0 and d.sensitivity[3] == 0.0 and d.rec_drop[1] == 0.0


def test_inference_collapse_by_construction(trained_vae):
    model, xv = trained_vae
    d = diagnose(with_prior_posterior(model, [0, 2]), xv, n_samples=4)
    assert d.verdict == [INFERENCE, USED, INFERENCE, USED], d.to_frame()
    assert d.kl[0] == 0.0 and d.au_variance[0] == 0.0 and not d.flat.any()
    assert d.sensitivity[0] > 10 * d.thresholds.sensitivity
    # q(z_k|x) is the prior: swapping its draw for another prior draw costs nothing on average
    assert abs(d.rec_drop[0]) < 5 * d.sensitivity_se[0] + 0.1 * d.sensitivity[0]


def test_both_collapses_at_once(trained_vae):
    model, xv = trained_vae
    d = diagnose(with_prior_posterior(with_ignored_latents(model, [0]), [0, 1]), xv, n_samples=4)
    assert d.verdict == [MODEL, INFERENCE, USED, USED], d.to_frame()
    assert d.counts() == {USED: 2, MODEL: 1, INFERENCE: 1, BORDERLINE: 0}
    assert d.dims(INFERENCE) == ["z2"]


def test_the_adapter_reproduces_the_vae_exactly(trained_vae):
    model, xv = trained_vae
    plain = TorchModel(lambda z: model.decoder.distribution(z), lambda x: model.encoder(x), latent_dim=4, data_dim=12)
    a, b = diagnose(model, xv, n_samples=3, seed=5), diagnose(plain, xv, n_samples=3, seed=5)
    np.testing.assert_allclose(a.sensitivity, b.sensitivity, rtol=1e-6)
    np.testing.assert_allclose(a.kl, b.kl, rtol=1e-6)
    assert a.verdict == b.verdict


def test_chunking_over_dimensions_changes_nothing(trained_vae):
    model, xv = trained_vae
    a = diagnose(model, xv[:50], n_samples=2, max_rows=10_000)
    b = diagnose(model, xv[:50], n_samples=2, max_rows=1)
    np.testing.assert_allclose(a.sensitivity, b.sensitivity, rtol=1e-5)


def test_frame_and_dict(trained_vae):
    model, xv = trained_vae
    d = diagnose(model, xv[:20], n_samples=2)
    frame = d.to_frame()
    assert list(frame.index) == ["z1", "z2", "z3", "z4"] and "verdict" in frame and "sensitivity_se" in frame
    out = d.to_dict()
    assert out["thresholds"]["sensitivity"] == pytest.approx(np.sqrt(0.02)) and sum(out["counts"].values()) == 4


def test_a_sampler_encoder_without_kl_gets_the_moment_matched_lower_bound(trained_vae):
    model, xv = trained_vae

    class Sampler:
        def sample(self, x, n):
            return model.encoder.sample(x, n)[0]

    plain = TorchModel(lambda z: model.decoder.distribution(z), Sampler(), latent_dim=4)
    d = diagnose(plain, xv[:100], n_samples=2, kl_samples=256)
    exact = model.kl_per_dim(xv[:100]).mean(0).detach().numpy()
    assert d.kl_method == "moment"
    np.testing.assert_allclose(d.kl, exact, rtol=0.1, atol=0.02)


# ------------------------------------------------------------------------------------------------- LIDVAE
@pytest.mark.parametrize("d_x,k,head", [(50, 8, "bernoulli"), (12, 4, "gaussian")])
def test_lidvae_has_no_flat_latent_at_initialisation(d_x, k, head):
    """Definition 3: the injective decoder cannot be flat in any latent, for every parameter value."""
    for seed in range(3):
        model = build_vae("lidvae", d_x, k, head, hidden1=(16,), hidden2=(16,), seed=seed)
        g = torch.Generator().manual_seed(seed)
        x = (torch.rand(100, d_x, generator=g) < 0.3).float() if head == "bernoulli" else torch.randn(100, d_x,
                                                                                                       generator=g)
        d = diagnose(model, x, n_samples=2, seed=seed)
        assert not d.flat.any() and (d.sensitivity > 0).all(), (seed, d.to_frame())


def test_lidvae_with_a_large_monotonicity_constant_is_identifiable_at_initialisation():
    """With alpha = 1 the floor alpha^2 |z - z'| on the decoder's output is far above the noise scale: every latent
    is identifiable by the thresholded verdict too (with the default alpha = 0.1 it is only *nearly* flat)."""
    for seed in range(3):
        model = build_vae("lidvae", 12, 4, "gaussian", hidden1=(16,), hidden2=(16,), alpha=1.0, seed=seed)
        x = torch.randn(100, 12, generator=torch.Generator().manual_seed(seed))
        d = diagnose(model, x, n_samples=2, seed=seed)
        assert d.identifiable.all() and MODEL not in d.verdict, d.to_frame()


# ------------------------------------------------------------------------------------------------ mixtures
def test_mixture_rows_and_a_flat_cluster_latent():
    model = build_mixture_vae("gmvae", 6, 2, 3, "gaussian", depth=1, encoder="gaussian", encoder_hidden=(16,),
                              cluster_hidden=(16,), mlp_hidden=(16,), seed=0)
    x = torch.randn(60, 6, generator=torch.Generator().manual_seed(0))
    d = diagnose(model, x, n_samples=2, iwae_samples=8)
    assert d.names == ["w1", "w2", "y"] and d.kl_method == "analytic"
    with torch.no_grad():
        model.decoder.first_layer.weight[:, 1] = 0.0      # the decoder ignores w2
        model.prior_means.zero_()                          # every cluster has the same prior: p(x|y) flat in y
        model.prior_log_scales.zero_()
    d = diagnose(model, x, n_samples=2, iwae_samples=8)
    assert d.flat[1] and d.verdict[1] == MODEL
    assert d.verdict[2] == MODEL and d.sensitivity[2] < d.thresholds.sensitivity, d.to_frame()


def test_mixture_kl_per_dimension_analytic_matches_moment_matching():
    """For a Gaussian q(w|x, y) the moment-matched KL is exact up to Monte Carlo error: the two estimates agree."""
    model = build_mixture_vae("gmvae", 6, 2, 3, "gaussian", depth=1, encoder="gaussian", encoder_hidden=(16,),
                              cluster_hidden=(16,), mlp_hidden=(16,), seed=0)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(2))
    a = diagnose(model, x, n_samples=2, iwae_samples=4)
    b = diagnose(model, x, n_samples=2, iwae_samples=4, kl="moment", kl_samples=2000)
    assert a.kl_method == "analytic" and b.kl_method == "moment"
    np.testing.assert_allclose(a.kl, b.kl, rtol=0.03, atol=0.005)


def test_lidgmvae_has_no_flat_continuous_latent():
    model = build_mixture_vae("lidgmvae", 6, 2, 3, "gaussian", depth=1, encoder="gaussian", encoder_hidden=(16,),
                              cluster_hidden=(16,), icnn_width=8, seed=0, prior="learned")   # 3 clusters > K = 2
    x = torch.randn(60, 6, generator=torch.Generator().manual_seed(1))
    d = diagnose(model, x, n_samples=2, iwae_samples=4)
    assert not d.flat[:2].any() and (d.sensitivity[:2] > 0).all()


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def bern():
    return build_vae("vae", 10, 3, "bernoulli", encoder_hidden=(8,), mlp_hidden=(8,), seed=0)


def _binary(n=20, d=10):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(0)) < 0.5).float()


@pytest.mark.parametrize("x,err,match", [
    (torch.zeros(20, 9), ValueError, "shape"),
    (torch.zeros(20), ValueError, "shape"),
    (torch.full((20, 10), float("nan")), ValueError, "NaN"),
    (torch.full((20, 10), 0.5), ValueError, "binary"),
    (torch.zeros(20, 10, dtype=torch.float64), TypeError, "dtype"),
    (torch.zeros(1, 10), ValueError, "at least 2"),
    (np.array([["a"] * 10] * 3), TypeError, "numeric"),
])
def test_bad_data_raise(bern, x, err, match):
    with pytest.raises(err, match=match):
        diagnose(bern, x)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(kl="exact"), ValueError, "unknown kl method"),
    (dict(n_samples=0), ValueError, "n_samples"),
    (dict(kl_threshold=-1), ValueError, "kl_threshold"),
    (dict(au_threshold=0), ValueError, "au_threshold"),
    (dict(n_se=float("nan")), ValueError, "n_se"),
    (dict(batch_size=2.5), ValueError, "batch_size"),
])
def test_bad_options_raise(bern, kwargs, err, match):
    with pytest.raises(err, match=match):
        diagnose(bern, _binary(), **kwargs)


def test_analytic_kl_needs_a_factorised_posterior():
    model = build_vae("vae", 10, 2, "bernoulli", encoder="realnvp", encoder_hidden=(8,), mlp_hidden=(8,), seed=0)
    with pytest.raises(TypeError, match="factorised"):
        diagnose(model, _binary(), kl="analytic")
    assert diagnose(model, _binary(), n_samples=2, kl_samples=8).kl_method == "moment"


def test_not_a_model_and_bad_adapters_raise():
    with pytest.raises(TypeError, match="lacks"):
        diagnose(torch.nn.Linear(3, 3), torch.zeros(5, 3))
    with pytest.raises(TypeError, match="callable"):
        TorchModel(None, lambda x: x, latent_dim=2)

    def bern_dec(z):
        return torch.distributions.Independent(torch.distributions.Bernoulli(logits=z.sum(-1, keepdim=True)
                                                                             .expand(-1, 4)), 1)

    plain = TorchModel(bern_dec, lambda x: (x[:, :2] * 0, x[:, :2] * 0), latent_dim=2, data_dim=4)
    with pytest.raises(ValueError, match="support"):
        diagnose(plain, torch.full((5, 4), 0.3))
    with pytest.raises(ValueError, match="shape"):
        diagnose(plain, torch.zeros(5, 3))
    wrong = TorchModel(bern_dec, lambda x: (x[:, :3], x[:, :3]), latent_dim=2, data_dim=4)
    with pytest.raises(ValueError, match="mu, logvar"):
        diagnose(wrong, torch.zeros(5, 4))


def test_validation_comes_before_any_compute(bern):
    calls = []
    model = build_vae("vae", 10, 3, "bernoulli", encoder_hidden=(8,), mlp_hidden=(8,), seed=0)
    model.sample_posterior = lambda *a, **k: calls.append(1)
    with pytest.raises(ValueError):
        diagnose(model, torch.full((20, 10), 0.5))
    with pytest.raises(ValueError):
        diagnose(model, _binary(), kl="nope")
    assert not calls
    assert isinstance(diagnose(bern, _binary(), n_samples=1), Diagnosis)


# --------------------------------------------------- the cluster row: p(x|y) estimated with common draws
class _WorseForLaterClusters(GaussianEncoder):
    """q(w|x, y) shifted by +2 and narrowed for every y but the first: proposals whose biases differ by cluster."""

    def forward(self, ctx):
        mu, logvar = super().forward(ctx)
        later = 1.0 - ctx[:, -self.num_clusters:][:, :1]
        return mu + 2.0 * later, logvar - 2.0 * later


class _Wide(GaussianEncoder):
    """q(w|x, y) = N(0, 2^2 I) for every x and y: a wide proposal, under which importance sampling is accurate."""

    def forward(self, ctx):
        mu, logvar = super().forward(ctx)
        return 0.0 * mu, torch.full_like(logvar, float(np.log(4.0)))


def _linear_gaussian_mixture(prior_means, sigma=0.7, d=6, seed=0, encoder=_WorseForLaterClusters):
    """A MixtureVAE with a linear-Gaussian decoder x = W w + b + N(0, sigma^2 I), so p(x|y) is known exactly."""
    prior_means = torch.as_tensor(prior_means, dtype=torch.float32)
    c, k = prior_means.shape
    torch.manual_seed(seed)
    dec = MLPDecoder(k, d, hidden=(4,), head="gaussian", fixed_scale=sigma)
    dec.net = torch.nn.Sequential(torch.nn.Linear(k, d))
    enc = encoder(d + c, k, hidden=(16,))
    enc.num_clusters = c
    return MixtureVAE(torch.nn.Linear(d, c), enc, dec, c, prior_means=prior_means, learn_prior=False).eval()


def _exact_cluster_log_likelihoods(model, x):
    """log p(x|y) = log N(x; W mu_y + b, W diag(sigma_y^2) W^T + sigma^2 I), (N, C), float64."""
    lin = model.decoder.net[0]
    w, b = lin.weight.double(), lin.bias.double()
    s2 = model.decoder.scale().double() ** 2
    out = []
    for y in range(model.num_clusters):
        cov = w @ torch.diag(torch.exp(2 * model.prior_log_scales[y].double())) @ w.T + torch.diag(s2)
        mvn = torch.distributions.MultivariateNormal(w @ model.prior_means[y].double() + b, cov)
        out.append(mvn.log_prob(x.double()))
    return torch.stack(out, 1)


def _own_proposal_log_likelihoods(model, x, n):
    """The estimator this module used before: log p(x|y) from q(w|x, y)'s own draws, one proposal per y."""
    rows = []
    for y in range(model.num_clusters):
        wy, log_q = model.sample_posterior(x, y, n)
        rows.append(torch.logsumexp(model.log_joint(x, wy, y) - log_q, 0) - np.log(n))
    return torch.stack(rows, 1)


def _data(model, n=400, seed=1):
    with torch.no_grad():
        return model.sample(n, mean=False, seed=seed)[0]


def test_a_cluster_variable_the_likelihood_cannot_tell_apart_is_non_identifiable():
    """Every cluster has the same prior, so p(x|y) does not depend on y (the model's p(y|x) is 1/C), while q(w|x, y)
    is worse for y = 1, 2: the y row must be exactly flat, whatever the proposals' biases."""
    model = _linear_gaussian_mixture(torch.zeros(3, 2))
    x = _data(model)
    with torch.no_grad():
        own = _own_proposal_log_likelihoods(model, x, 8)
    # the construction is one on which the per-cluster proposals fail: their spread passes for identifiability
    spread = (own - own.mean(1, keepdim=True)).pow(2).mean(1).mean().sqrt().item()
    assert spread > 3 * sensitivity_threshold(), spread
    d = diagnose(model, x, n_samples=2, iwae_samples=8)
    assert d.sensitivity[-1] == 0.0 and d.flat[-1] and d.verdict[-1] == MODEL, d.to_frame()
    np.testing.assert_allclose(model.model_cluster_posterior(x[:5]).numpy(), 1 / 3, rtol=1e-6)


def test_two_merged_clusters_of_three():
    """Clusters 0 and 1 share their prior, cluster 2 does not: the estimates of log p(x|0) and log p(x|1) agree
    bitwise, and s_y matches the exact spread of log p(x|y) computed in closed form."""
    model = _linear_gaussian_mixture([[0.0, 0.0], [0.0, 0.0], [2.0, -1.0]], encoder=_Wide)
    x = _data(model)
    with torch.no_grad():
        torch.manual_seed(0)
        est = cluster_log_likelihoods(model, x, 256)
    assert torch.equal(est[:, 0], est[:, 1])
    with torch.no_grad():
        exact = _exact_cluster_log_likelihoods(model, x)
    assert abs((est.double() - exact).mean()) < 0.05 and (est.double() - exact).abs().median() < 0.1
    s_exact = exact.var(1, unbiased=False).mean().sqrt().item()
    d = diagnose(model, x, n_samples=2, iwae_samples=64)
    assert abs(d.sensitivity[-1] - s_exact) < 0.02 * s_exact + 2 * d.sensitivity_se[-1], (d.sensitivity, s_exact)
    assert d.identifiable[-1] and not d.flat[-1]


def test_the_cluster_verdicts_of_chapter_7_agree_with_the_models_own_cluster_posterior():
    """Chapter 11's exercise 4, checked: the GMVAE and LIDGMVAE of chapter 7 at its defaults. The GMVAE's q(y|x)
    collapses; its y row must say non-identifiable exactly when the model's own p(y|x) (importance sampling with prior
    draws, MixtureVAE.model_cluster_posterior) is within KL* of uniform, and the LIDGMVAE's y must be identifiable."""
    from lidvae_mini.data import make_pinwheel

    rng = np.random.default_rng(0)
    x_raw, _ = make_pinwheel(200, num_classes=5, seed=rng)
    xt_raw, _ = make_pinwheel(100, num_classes=5, seed=rng)
    shift, scale = x_raw.mean(0), x_raw.std(0)
    x_train, x_test = (x_raw - shift) / scale, torch.as_tensor((xt_raw - shift) / scale, dtype=torch.float32)
    seen = {}
    for kind in ("gmvae", "lidgmvae"):
        m = build_mixture_vae(kind, 2, 2, 5, "gaussian", 2, encoder="realnvp", encoder_hidden=(64, 64),
                              cluster_hidden=(64, 64), icnn_width=32, alpha=1.0, prior="learned", prior_radius=1.5,
                              prior_scale=0.3, seed=0)
        fit(m, x_train, None, epochs=120, batch_size=100, lr=1e-2, seed=0, progress=False)
        d = diagnose(m.eval(), x_test, n_samples=4, iwae_samples=16)
        with torch.no_grad():
            p = m.model_cluster_posterior(x_test, 2000)
        exact_kl = (p * (p.clamp_min(1e-30).log() + np.log(5))).sum(1).mean().item()   # E_x KL(p(y|x) || 1/C)
        seen[kind] = (d.verdict[-1], exact_kl)
        assert (d.verdict[-1] == MODEL) == (exact_kl < KL_THRESHOLD), (kind, exact_kl, d.to_frame())
    assert seen["gmvae"][0] == MODEL and seen["lidgmvae"][0] == USED, seen


def test_cluster_log_likelihoods_needs_a_mixture(trained_vae):
    with pytest.raises(TypeError, match="MixtureVAE"):
        cluster_log_likelihoods(trained_vae[0], trained_vae[1], 4)


# ------------------------------------------------- borderline: an exact posterior near the thresholds
def _linear_exact_model(r, d=10, sigma=0.5, n=3000, seed=0):
    """Linear-Gaussian model with orthogonal loadings |w_k|^2 / sigma^2 = r_k, its exact (factorised) posterior as
    the encoder, and data drawn from it."""
    r = torch.as_tensor(r, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, len(r), generator=g, dtype=torch.float64))
    w = q * (sigma * r.sqrt())                                        # (D, K)
    var = 1.0 / (1.0 + r)                                             # exact posterior variance per latent

    def decoder(z):
        return torch.distributions.Independent(torch.distributions.Normal(z @ w.T, sigma), 1)

    def encoder(x):
        mean = (x @ w) / sigma ** 2 * var
        return mean, torch.log(var).expand_as(mean)

    z = torch.randn(n, len(r), generator=g, dtype=torch.float64)
    x = z @ w.T + sigma * torch.randn(n, d, generator=g, dtype=torch.float64)
    return TorchModel(decoder, encoder, latent_dim=len(r), data_dim=d, dtype=torch.float64), x


def test_an_exact_posterior_near_the_thresholds_is_borderline_not_inference_collapse():
    """r = 0.02: the exact KL is log(1.02)/2 = 0.0099 nats, a hair under KL* = 0.01, with s_k near s*. Theorem 1 rules
    out an inference collapse for an exact posterior. Taken at the point estimates, some of these dimensions come out
    identifiable but unused; within a standard error of a threshold the verdict is withheld instead. Far from the
    thresholds (r = 1, r = 0) the verdicts stand."""
    point_inference = 0
    for seed in range(4):
        model, x = _linear_exact_model([0.02, 0.02, 0.02, 1.0, 0.0], seed=seed)
        d = diagnose(model, x, n_samples=4, seed=0)
        assert INFERENCE not in d.verdict, (seed, d.to_frame())
        assert d.verdict[3:] == [USED, MODEL] and not d.borderline[3:].any()
        np.testing.assert_allclose(d.kl[:3], 0.5 * np.log(1.02), rtol=0.1)
        near = ((np.abs(d.kl - KL_THRESHOLD) <= d.kl_se) | (np.abs(d.sensitivity - d.thresholds.sensitivity)
                                                            <= d.sensitivity_se))
        assert list(d.borderline[:3]) == list(near[:3]), (seed, d.to_frame())
        assert all(v in (BORDERLINE, USED, MODEL) for v in d.verdict[:3])
        point_inference += int((d.identifiable & ~d.used).sum())
    assert point_inference > 0     # the construction is one where point estimates alone would mislead


# ------------------------------------------------------------------- each formula against a hand case
def test_sensitivity_matches_its_closed_form():
    """K = 1, x ~ N(w z, sigma^2 I): as a function of z, l(z) = a z - b z^2 + const with a = w^T x / sigma^2 and
    b = |w|^2 / (2 sigma^2), so Var_{z ~ N(0,1)} l = a^2 + 2 b^2 and s^2 = mean_x a^2 + 2 b^2 (the 1/2 in V_k)."""
    model, x = _linear_exact_model([1.5], n=4000, seed=3)
    d = diagnose(model, x, n_samples=64, seed=0)
    w = model.decoder(torch.ones(1, 1, dtype=torch.float64)).mean[0]          # the loading column
    a = x @ w / 0.25
    s_exact = np.sqrt((a ** 2).mean().item() + 2 * (w @ w / 0.5).item() ** 2)
    assert abs(d.sensitivity[0] - s_exact) < 3 * d.sensitivity_se[0] + 0.01 * s_exact, (d.sensitivity, s_exact)
    assert d.sensitivity_se[0] < 0.1 * s_exact   # so that a factor sqrt(2) could not hide in the noise


class _FixedPosterior:
    """A Gaussian q(z|x) with given means per point (looked up by the first coordinate of x) and a fixed variance."""

    def __init__(self, means, var):
        self.means, self.var = means, var

    def __call__(self, x):
        m = self.means[x[:, 0].long()]
        return m, torch.full_like(m, float(np.log(self.var)))


def _indexed_model(means, var, d=3, loading=2.0):
    """Decoder that depends strongly on every latent (loading), encoder with chosen means and variance; x carries
    the point's index in its first coordinate (the decoder's noise is wide enough for any x)."""
    k = means.shape[1]

    def decoder(z):
        signal = loading * z.sum(-1, keepdim=True).expand(-1, d - 1)
        mean = torch.cat([torch.zeros(z.shape[0], 1, dtype=z.dtype), signal], 1)
        return torch.distributions.Independent(torch.distributions.Normal(mean, 1.0), 1)

    x = torch.cat([torch.arange(means.shape[0], dtype=torch.float64)[:, None],
                   torch.zeros(means.shape[0], d - 1, dtype=torch.float64)], 1)
    return TorchModel(decoder, _FixedPosterior(means, var), latent_dim=k, data_dim=d, dtype=torch.float64), x


def test_used_needs_both_au_and_kl():
    """'used' is AU **and** KL: means that vary (AU 0.012 >= 0.01) with a prior-wide posterior have KL 0.006 < 0.01;
    constant means with a narrow posterior have KL 0.097 >= 0.01 and AU 0. Neither is used."""
    n = 2000
    g = torch.Generator().manual_seed(0)
    m = torch.randn(n, 1, generator=g, dtype=torch.float64)
    m = (m - m.mean()) / m.std() * np.sqrt(0.012)
    model, x = _indexed_model(m, 1.0)
    d = diagnose(model, x, n_samples=2)
    assert d.active[0] and d.kl[0] < KL_THRESHOLD and not d.used[0], d.to_frame()
    assert d.verdict == [INFERENCE], d.to_frame()       # the decoder depends on z, and KL is clearly below KL*
    model, x = _indexed_model(torch.zeros(n, 1, dtype=torch.float64), 0.5)
    d = diagnose(model, x, n_samples=2)
    assert not d.active[0] and d.kl[0] > KL_THRESHOLD and not d.used[0], d.to_frame()
    assert d.verdict == [INFERENCE], d.to_frame()


def test_the_verdict_table_by_hand():
    """Every branch of the verdict with hand-set statistics (thresholds s* = 0.1414, KL* = AU* = 0.01)."""
    th = Thresholds()
    rows = [  # s,   se,   KL,    KL se, AU,    AU se, significant -> verdict
        (0.50, 0.01, 0.50, 0.001, 0.50, 0.001, True, USED),
        (0.50, 0.01, 0.001, 0.001, 0.50, 0.001, True, INFERENCE),          # KL clearly below
        (0.50, 0.01, 0.50, 0.001, 0.001, 0.001, True, INFERENCE),          # AU clearly below
        (0.01, 0.01, 0.50, 0.001, 0.50, 0.001, True, MODEL),               # s clearly below s*
        (0.50, 0.30, 0.50, 0.001, 0.50, 0.001, False, MODEL),              # s not n_se SEs above 0
        (0.145, 0.01, 0.50, 0.001, 0.50, 0.001, True, BORDERLINE),         # s within an SE of s*
        (0.50, 0.01, 0.0105, 0.001, 0.50, 0.001, True, BORDERLINE),        # KL within an SE above KL*
        (0.50, 0.01, 0.0095, 0.001, 0.50, 0.001, True, BORDERLINE),        # KL within an SE below KL*
        (0.50, 0.01, 0.50, 0.001, 0.0105, 0.001, True, BORDERLINE),        # AU within an SE above AU*
        (0.50, 0.01, 0.0095, 0.001, 0.001, 0.001, True, INFERENCE),        # AU clearly below decides it
    ]
    cols = [np.array(c) for c in zip(*rows)]
    verdict, borderline = _verdicts(*cols[:6], cols[6].astype(bool), th)
    assert verdict == list(cols[7])
    assert list(borderline) == [v == BORDERLINE for v in cols[7]]


def test_a_few_outlying_points_do_not_make_a_latent_identifiable():
    """The likelihood depends on z for one point in 400 only: s clears s* but not n_se standard errors of zero."""
    n = 400

    def encoder(x):
        return torch.zeros(x.shape[0], 1, dtype=x.dtype), torch.zeros(x.shape[0], 1, dtype=x.dtype)

    x = torch.zeros(n, 2, dtype=torch.float64)
    x[0, 1] = 1.0

    class Steep:
        def __call__(self, z):
            b = z.shape[0]
            steep = torch.zeros(b, 2, dtype=z.dtype)
            steep[:, 1] = 20.0 * z[:, 0]
            return torch.distributions.Independent(torch.distributions.Normal(steep, 1.0), 1)

    steep_model = TorchModel(Steep(), encoder, latent_dim=1, data_dim=2, dtype=torch.float64)
    # a likelihood steep for every point is identifiable; one whose steepness only one point sees is not
    x_all = torch.zeros(n, 2, dtype=torch.float64)
    d_all = diagnose(steep_model, x_all, n_samples=8)
    assert d_all.identifiable[0]

    class OnlyFirst:
        def __call__(self, z):
            b = z.shape[0]
            mean = torch.zeros(b, 2, dtype=z.dtype)
            # rows are (sample, point) flattened point-fastest: point 0 recurs every n rows
            first = torch.arange(b) % n == 0
            mean[first, 1] = 20.0 * z[first, 0]
            return torch.distributions.Independent(torch.distributions.Normal(mean, 1.0), 1)

    model = TorchModel(OnlyFirst(), encoder, latent_dim=1, data_dim=2, dtype=torch.float64)
    d = diagnose(model, x, n_samples=8, batch_size=n, n_se=3.0)
    assert d.sensitivity[0] > d.thresholds.sensitivity, d.to_frame()
    assert d.sensitivity[0] < 3.0 * d.sensitivity_se[0] and not d.identifiable[0] and d.verdict[0] == MODEL
