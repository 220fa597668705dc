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

from lidvae_mini import ppca
from lidvae_mini.diagnose import (KL_THRESHOLD, VERDICTS, Diagnosis, TorchModel, diagnose, ppca_model,
                                  sensitivity_threshold, with_ignored_latents, with_prior_posterior)
from lidvae_mini.mixture import build_mixture_vae
from lidvae_mini.train import fit
from lidvae_mini.vae import build_vae

USED, MODEL, INFERENCE = VERDICTS
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
    assert d.counts() == {USED: 2, MODEL: 1, INFERENCE: 1}
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
