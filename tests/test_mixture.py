"""Mixture VAEs (GMVAE, β-GMVAE, LIDGMVAE): exact sum over y, bounds, collapse metrics, Theorem 1, inputs."""
import math

import numpy as np
import pytest
import torch
from torch import distributions as td
from torch import nn

from lidvae_mini.models.decoders import InjectiveDecoder, MLPDecoder, count_parameters
from lidvae_mini.models.encoders import GaussianEncoder
from lidvae_mini.models.mixture import (METRIC_KEYS, PAPER_BETA, MixtureVAE, build_mixture_vae, default_prior_means,
                                        evaluate_mixture)
from lidvae_mini.models.train import evaluate, fit

TINY = dict(encoder_hidden=(8,), cluster_hidden=(8,), icnn_width=8, seed=0)


def _tiny(kind="gmvae", head="gaussian", D=2, K=2, C=3, encoder="gaussian", **kw):
    return build_mixture_vae(kind, D, K, C, head, depth=1, encoder=encoder, **{**TINY, **kw}).double()


def test_elbo_equals_brute_force_enumeration():
    """ELBO with y summed in one batched pass = a loop over y with torch.distributions densities (same noise)."""
    model = _tiny(C=3, encoder="gaussian")
    with torch.no_grad():                               # distinct, non-trivial prior scales
        model.prior_log_scales.copy_(torch.tensor([[0.1, -0.2], [0.3, 0.0], [-0.4, 0.2]]))
    torch.manual_seed(1)
    x = torch.randn(4, 2, dtype=torch.float64)
    S, C, B, K = 5, 3, 4, 2
    torch.manual_seed(7)
    parts = model.elbo_parts(x, n_samples=S)
    torch.manual_seed(7)
    eps = torch.randn(S, C * B, K, dtype=torch.float64).reshape(S, C, B, K)   # the draws elbo_parts used
    q_y = torch.softmax(model.cluster_net(x), -1)
    elbo = torch.zeros(B, dtype=torch.float64)
    for y in range(C):
        ctx = torch.cat([x, torch.nn.functional.one_hot(torch.tensor([y] * B), C).double()], -1)
        mu, logvar = model.encoder(ctx)
        q_w = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)
        w = mu + torch.exp(0.5 * logvar) * eps[:, y]                           # (S, B, K)
        p_w = td.Independent(td.Normal(model.prior_means[y], model.prior_log_scales[y].exp()), 1)
        p_x = [model.decoder.distribution(w[s]).log_prob(x) for s in range(S)]
        inner = torch.stack([p_x[s] + p_w.log_prob(w[s]) - q_w.log_prob(w[s]) for s in range(S)]).mean(0)
        elbo += q_y[:, y] * (inner - math.log(C) - torch.log(q_y[:, y]))
    torch.testing.assert_close(parts["elbo"], elbo)
    kl_y = td.kl_divergence(td.Categorical(probs=q_y), td.Categorical(probs=torch.full((C,), 1.0 / C).double()))
    torch.testing.assert_close(parts["kl_y"], kl_y)
    torch.testing.assert_close(parts["elbo"], parts["rec"] - parts["kl_y"] - parts["kl_w"])
    torch.testing.assert_close(parts["kl"], parts["kl_y"] + parts["kl_w"])


def _grid_log_marginal(model, x, lim=8.0, n=241):
    """log p(x) = log sum_y p(y) ∫ p(x|w) p(w|y) dw by a 2-D Riemann sum, shape (B,)."""
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    w = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        ll = torch.stack([model.decoder.log_prob(xi.expand(len(w), 2), w) for xi in x], 1)   # (G, B)
        lp = model.log_prior_mixture(w)[:, None]
    return torch.logsumexp(ll + lp, 0) + 2 * math.log(g[1] - g[0])


@pytest.mark.parametrize("kind,kw", [("gmvae", {"C": 3}), ("lidgmvae", {"C": 3, "prior": "learned"}),
                                     ("lidgmvae", {"C": 2})], ids=["gmvae", "lidgmvae_learned", "lidgmvae_example1"])
def test_elbo_below_iwae_below_log_marginal(kind, kw):
    model = _tiny(kind, fixed_scale=0.7, **kw)
    torch.manual_seed(2)
    x = torch.randn(5, 2, dtype=torch.float64)
    log_px = _grid_log_marginal(model, x)
    with torch.no_grad():
        torch.manual_seed(0)
        elbo = model.elbo(x, n_samples=2000)
    iwae = model.iwae_log_likelihood(x, num_samples=2000, chunk=1000, seed=0)
    assert iwae.dtype == torch.float64 and iwae.shape == (5,)
    assert elbo.mean() < iwae.mean() - 0.01
    assert (elbo < log_px + 0.02).all()
    assert iwae.mean() <= log_px.mean() + 0.02
    assert (log_px - iwae).mean() < (log_px - elbo).mean()


class _ConstantLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float64))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


class _SignLogits(nn.Module):
    def forward(self, x):
        return torch.stack([20 * x[:, 0], -20 * x[:, 0], torch.full_like(x[:, 0], -50.0)], -1)


def test_q_y_ignoring_x_has_zero_mi_and_au():
    model = _tiny(C=3)
    model.cluster_net = _ConstantLogits([0.3, -1.0, 0.5])          # q(y|x) constant in x, not uniform
    x, labels = torch.randn(300, 2, generator=torch.Generator().manual_seed(0)).double(), np.arange(300) % 3
    ev = evaluate_mixture(model, x, labels, iwae_samples=0, seed=0)
    assert ev["MI_y"] == pytest.approx(0.0, abs=1e-12) and ev["AU_y"] == 0 and ev["AU_y_fraction"] == 0.0
    assert ev["KL_y"] > 0.1                                       # KL_y > 0 although nothing is encoded: KL ≠ MI
    assert ev["clusters_used"] == 1 and ev["acc_hungarian"] == pytest.approx(1 / 3)
    model.cluster_net = _SignLogits()                             # q(y|x) = two clusters by the sign of x_1
    ev = evaluate_mixture(model, x, (x[:, 0] > 0).long().numpy(), iwae_samples=0, seed=0)
    q = torch.softmax(_SignLogits()(x), -1)
    ent = lambda p: -(p * torch.log(p.clamp_min(1e-300))).sum(-1)   # noqa: E731
    assert ev["MI_y"] == pytest.approx(float(ent(q.mean(0)) - ent(q).mean()), abs=1e-9)
    assert 0.6 < ev["MI_y"] <= math.log(2) and ev["MI_y"] <= ev["KL_y"] + 1e-9
    assert ev["AU_y"] == 2 and ev["acc_hungarian"] > 0.99 and ev["acc_soft"] > 0.97


def test_lidgmvae_is_injective_and_identical_priors_give_uniform_posterior():
    lid = _tiny("lidgmvae", C=4, alpha=0.3, prior="learned")
    assert isinstance(lid.decoder, InjectiveDecoder) and lid.identifiable
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(2000, 2, generator=g).double(), torch.randn(2000, 2, generator=g).double()
    with torch.no_grad():
        ratio = (lid.decoder(w1) - lid.decoder(w2)).norm(dim=1) / (w1 - w2).norm(dim=1)
    assert ratio.min() >= 0.3 ** 2 * (1 - 1e-6)
    x = torch.randn(6, 2, generator=g).double()
    # distinct cluster priors + injective decoder: the model's p(y|x) depends on x
    p_lid = lid.model_cluster_posterior(x, num_samples=4000, seed=0)
    assert (p_lid.max(1).values > 0.4).any()
    # Theorem 1 in code: a GMVAE whose clusters share one prior has p(y|x) = 1/C for every x, exactly
    gm = _tiny("gmvae", C=4)
    with torch.no_grad():
        gm.prior_means.copy_(torch.tensor([0.5, -1.0]).expand(4, 2))
        gm.prior_log_scales.fill_(0.2)
    p_gm = gm.model_cluster_posterior(x, num_samples=4000, seed=0)
    torch.testing.assert_close(p_gm, torch.full_like(p_gm, 0.25), rtol=0, atol=1e-12)


def test_training_decreases_the_loss_and_fit_evaluate_accept_a_mixture():
    model = build_mixture_vae("lidgmvae", 2, 2, 2, "gaussian", depth=1, encoder="realnvp", encoder_hidden=(16,),
                              cluster_hidden=(16,), icnn_width=8, seed=0)                  # Example 1: C = K = 2
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 0.3, (100, 2)), rng.normal(2, 0.3, (100, 2))]).astype(np.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        before = float(model.loss(torch.as_tensor(x), n_samples=8)[0])
    hist = fit(model, x, x[:50], epochs=6, batch_size=50, lr=1e-2, seed=0)
    torch.manual_seed(0)
    with torch.no_grad():
        after = float(model.loss(torch.as_tensor(x), n_samples=8)[0])
    assert after < before - 0.3 and hist["train_neg_elbo"][-1] < hist["train_neg_elbo"][0]
    ev = evaluate(model, x[:40], iwae_samples=5, seed=0)          # the shared evaluation protocol
    assert ev["kl_per_dim"] is None and math.isfinite(ev["iwae_ll"]) and ev["au"] in (0, 1, 2)


def test_evaluate_mixture_keys_identities_and_seed():
    model = _tiny("lidgmvae", C=3, encoder="realnvp", prior="learned")
    x = torch.randn(60, 2, generator=torch.Generator().manual_seed(3)).double()
    labels = np.arange(60) % 3
    ev = evaluate_mixture(model, x, labels, iwae_samples=4, mean_samples=4, seed=5)
    assert set(METRIC_KEYS) <= set(ev)
    assert ev["neg_elbo"] == pytest.approx(ev["rec"] + ev["KL_y"] + ev["KL_w"], rel=1e-9)
    assert 0 <= ev["MI_y"] <= ev["KL_y"] + 1e-9 <= math.log(3) + 1e-9
    assert ev["chance"] == pytest.approx(1 / 3) and ev["acc_majority"] >= ev["acc_hungarian"]
    assert len(ev["pred"]) == 60 and sum(ev["cluster_marginal"]) == pytest.approx(1.0)
    again = evaluate_mixture(model, x, labels, iwae_samples=4, mean_samples=4, seed=5)
    assert again["neg_elbo"] == ev["neg_elbo"] and again["iwae_ll"] == ev["iwae_ll"]


def test_builder_kinds_sizes_and_beta():
    kw = dict(encoder_hidden=(16,), cluster_hidden=(16,), icnn_width=32, seed=0)
    models = {k: build_mixture_vae(k, 2, 2, 5, "gaussian", depth=2, prior="learned", **kw)
              for k in ("gmvae", "lidgmvae", "beta_gmvae")}
    n_lid = count_parameters(models["lidgmvae"].decoder)
    for k in ("gmvae", "beta_gmvae"):
        assert isinstance(models[k].decoder, MLPDecoder) and len(models[k].decoder.hidden) == 2
        assert abs(count_parameters(models[k].decoder) - n_lid) <= 0.1 * n_lid and models[k].size_match["within_10pct"]
    assert models["beta_gmvae"].beta == PAPER_BETA and models["gmvae"].beta == 1.0
    # same seed -> same encoder and cluster network for every kind
    for a, b in zip(models["gmvae"].encoder.parameters(), models["lidgmvae"].encoder.parameters()):
        torch.testing.assert_close(a, b)
    # depth is the number of hidden layers of the generator
    deep = build_mixture_vae("lidgmvae", 2, 2, 5, depth=4, prior="learned", **kw)
    assert len(deep.decoder.g1.potential_net.hidden) == 4
    assert default_prior_means(5, 2).shape == (5, 2)
    with pytest.warns(UserWarning, match="within 10%"):
        m = build_mixture_vae("gmvae", 2, 2, 5, depth=6, **{**kw, "icnn_width": 2})   # 124 vs 102 parameters
    assert not m.size_match["within_10pct"]
    fixed = build_mixture_vae("lidgmvae", 2, 2, 5, prior="learned", learn_prior=False, **kw)
    assert "prior_means" not in dict(fixed.named_parameters())


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="num_clusters"):
        build_mixture_vae("gmvae", 2, 2, 1)
    with pytest.raises(ValueError, match="model kind"):
        build_mixture_vae("vae", 2, 2, 5)
    with pytest.raises(ValueError, match="latent_dim"):
        build_mixture_vae("lidgmvae", 2, 3, 5)
    with pytest.raises(ValueError, match="head"):
        build_mixture_vae("gmvae", 2, 2, 5, head="categorical")
    bern = build_mixture_vae("gmvae", 6, 2, 3, "bernoulli", depth=1, **TINY)
    with pytest.raises(ValueError, match="binary"):
        bern.loss(torch.rand(4, 6))
    bern.loss((torch.rand(4, 6) > 0.5).float())
    with pytest.raises(ValueError, match="binary"):
        evaluate_mixture(bern, np.full((4, 6), 0.5))
    g = _tiny()
    with pytest.raises(ValueError, match="shape"):
        g.loss(torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        g.loss(torch.randn(4, 2))                                   # float32 data, float64 model
    with pytest.raises(ValueError, match="NaN"):
        evaluate_mixture(g, np.array([[0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="labels"):
        evaluate_mixture(g, np.zeros((4, 2)), labels=[0, 1])
    with pytest.raises(ValueError, match="D \\+ C"):
        MixtureVAE(nn.Linear(2, 3), GaussianEncoder(2, 2), MLPDecoder(2, 2, (4,), head="gaussian"), 3)
    with pytest.raises(ValueError, match="y must be"):
        g.sample_posterior(torch.zeros(2, 2, dtype=torch.float64), 5)


@pytest.mark.parametrize("trainer", ["elbo", "sa_vae"])
def test_confident_q_y_gives_finite_gradients(trainer):
    """A q(y|x) so confident that softmax underflows to exactly 0 in float32 must not give NaN gradients.

    Regression: the entropy computed as xlogy(p, p) has the gradient 0/0 at p = 0; it stopped the pinwheel
    LIDGMVAE at depth 3 on three seeds of five (``results/07_lidgmvae_pinwheel``)."""
    from lidvae_mini.models.baselines import sa_vae_loss

    torch.manual_seed(0)
    model = build_mixture_vae("lidgmvae", 2, 2, 3, "gaussian", 1, encoder="gaussian", encoder_hidden=[8],
                              cluster_hidden=[8], icnn_width=8, prior="learned", seed=0)
    with torch.no_grad():
        model.cluster_net[-1].bias.copy_(torch.tensor([0.0, 150.0, 0.0]))
    x = torch.randn(16, 2)
    assert (model.cluster_probs(x) == 0).any()                 # the underflow the test is about
    loss = model.loss(x)[0] if trainer == "elbo" else sa_vae_loss(model, x, svi_steps=2)[0]
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert torch.isfinite(loss) and not bad, bad
    kl_y = model.elbo_parts(x)["kl_y"]
    assert torch.allclose(kl_y, torch.full_like(kl_y, math.log(3)), atol=1e-5)   # one cluster: KL_y = log C


def test_flow_mean_matches_the_encoders_mean():
    """The mixture's fast RealNVP posterior mean is ConditionalRealNVP.mean with the context part of each coupling's
    first layer computed once per context."""
    from lidvae_mini.models.mixture import flow_mean

    model = _tiny("gmvae", D=5, K=3, C=4, encoder="realnvp")
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for layer in model.encoder.couplings:
            layer.net[-1].weight.copy_(0.5 * torch.randn(layer.net[-1].weight.shape, generator=g))
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    ctx = model._context(x)
    with torch.no_grad():
        torch.testing.assert_close(flow_mean(model.encoder, ctx, n_samples=300, seed=2),
                                   model.encoder.mean(ctx, n_samples=300, seed=2))
        m = model.encode_mean(x, n_samples=300)
        ref = (model.cluster_probs(x).T[:, :, None] * model.encoder.mean(ctx, n_samples=300).reshape(4, 7, 3)).sum(0)
    torch.testing.assert_close(m, ref)
