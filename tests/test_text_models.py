"""Sequential VAE / LIDSVAE (lidvae_mini.models.text): injectivity (minimal vs naive logits) and the text metrics."""
import math

import pytest
import torch

from lidvae_mini.data.text import length_batches, make_synthetic_text
from lidvae_mini.evaluation.metrics import iwae_log_likelihood
from lidvae_mini.models.text import (LIDSDecoder, LinearBrenierMap, QuadraticBrenierMap, TextVAE, build_text_vae,
                                     evaluate_text, fit_text)
from lidvae_mini.evaluation.latent_recovery import latent_r2

V, K = 40, 3


def _x(B=6, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, V, (B, T), generator=g)
    x[:, 0], x[:, -1] = 1, 2
    return x


@pytest.mark.parametrize("kind", ["vae", "lidsvae"])
def test_token_log_probs_sum_to_log_likelihood(kind):
    torch.manual_seed(0)
    m = build_text_vae(kind, V, latent_dim=K, embed_dim=8, enc_hidden=8, dec_hidden=8, icnn_hidden=((8,), (8,)))
    x, z = _x(), torch.randn(2, 6, K)
    tl = m.decoder.token_log_probs(x, z)
    assert tl.shape == (2, 6, 6) and (tl <= 0).all()
    assert torch.allclose(tl.sum(-1), m.decoder.log_prob(x, z))
    # the teacher-forced log-probs equal a step-by-step evaluation of the same tokens
    with torch.no_grad():
        zz = z[0]
        state, total = m.decoder._init_state(zz), torch.zeros(6)
        for t in range(x.shape[1] - 1):
            logits, state = m.decoder._step(zz, x[:, t], state)
            total += torch.log_softmax(logits, -1).gather(1, x[:, t + 1:t + 2])[:, 0]
    assert torch.allclose(total, tl[0].sum(-1), atol=1e-5)


def test_lids_history_never_sees_z():
    torch.manual_seed(0)
    dec = LIDSDecoder(V, 8, 8, K, (8,), (8,))
    assert "beta2" in dict(dec.named_buffers()) and all(p is not dec.beta2 for p in dec.parameters())
    x = _x()
    f = dec.history(x[:, :-1])
    assert f.shape == (6, 6, 8)
    assert dec.g1.dim == K + 8 and dec.g2.dim == V - 1
    w = torch.randn(5, K + 8)
    assert torch.equal(dec.beta_lift(w), w @ dec.beta2)  # beta_2 applied as zero padding
    from lidvae_mini.models.brenier import BrenierMap
    from lidvae_mini.models.decoders import FullRankLift
    from lidvae_mini.models.text import lifted_brenier
    for hidden in ((8,), (8, 6)):
        g = BrenierMap(V - 1, hidden)
        torch.nn.init.normal_(g.potential_net.A[0].bias)
        assert torch.allclose(lifted_brenier(g, w), g(w @ dec.beta2), atol=1e-5)
        for bias in (False, True):  # a learned full-rank beta_2, folded into the ICNN's layers
            lift = FullRankLift(K + 8, V - 1, bias=bias)
            if bias:
                torch.nn.init.normal_(lift.bias)
            assert torch.allclose(lifted_brenier(g, w, lift), g(lift(w)), atol=1e-5)


@pytest.mark.parametrize("decoder", ["learned", "learned_init"])
def test_learned_beta2_is_injective_with_its_smallest_singular_value(decoder):
    """A learned beta_2 (full column rank by construction): for arbitrary parameter values, log-scales included,
    ||eta(z) - eta(z')|| >= alpha_1 alpha_2 sigma_min(beta_2) ||z - z'|| for every history."""
    torch.manual_seed(3)
    m = build_text_vae("lidsvae", V, latent_dim=K, embed_dim=8, enc_hidden=8, dec_hidden=8,
                       icnn_hidden=((16,), (16,)), alpha=0.3, decoder=decoder, beta_bias=True)
    dec = m.decoder
    assert "beta2" not in dict(dec.named_buffers()) and dec.lift.frame.requires_grad
    assert dec.g2.potential_net.active_inputs == (K + 8 if decoder == "learned_init" else V - 1)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(0.3 * torch.randn_like(p))
        dec.lift.log_scale.copy_(torch.linspace(-2.0, 1.0, K + 8))  # sigma_min = e^-2
        sv = torch.linalg.svdvals(dec.beta2_matrix().double())
        assert math.isclose(float(sv[-1]), dec.sigma_min(), rel_tol=1e-4) and dec.sigma_min() < 0.2
        f = dec.history(_x(B=50, seed=2)[:, :-1]).reshape(-1, 8)
        z1 = torch.randn(f.shape[0], K)
        z2 = z1 + 1e-2 * torch.randn_like(z1)
        lp1, lp2 = (torch.log_softmax(dec.head(z, f), -1) for z in (z1, z2))
        eta1, eta2 = lp1[:, 1:] - lp1[:, :1], lp2[:, 1:] - lp2[:, :1]
        assert torch.allclose(eta1, dec.natural_parameters(z1, f), atol=1e-4)
        bound = dec.g1.alpha * dec.g2.alpha * dec.sigma_min() * (z1 - z2).norm(dim=-1)
        assert ((eta1 - eta2).norm(dim=-1) >= 0.99 * bound).all()


def test_decoder_variants_are_for_the_lidsvae_only():
    with pytest.raises(ValueError, match="LIDSVAE only"):
        build_text_vae("vae", V, decoder="learned_init")
    with pytest.raises(ValueError, match="decoder variant"):
        build_text_vae("lidsvae", V, decoder="dense")
    with pytest.raises(ValueError, match="beta_bias needs"):
        LIDSDecoder(V, 8, 8, K, beta_bias=True)


def test_minimal_construction_is_injective_for_any_history():
    torch.manual_seed(1)
    dec = LIDSDecoder(V, 8, 8, K, (16,), (16,), alpha=0.3)
    with torch.no_grad():
        for p in dec.parameters():  # arbitrary parameters, not just the initial ones
            p.add_(0.3 * torch.randn_like(p))
        f = dec.history(_x(B=50, seed=2)[:, :-1]).reshape(-1, 8)  # many histories
        z1 = torch.randn(f.shape[0], K)
        z2 = z1 + 1e-2 * torch.randn_like(z1)
        lp1 = torch.log_softmax(dec.head(z1, f), -1)
        lp2 = torch.log_softmax(dec.head(z2, f), -1)
        # the distribution determines eta: eta_j = log p_j - log p_0
        eta1 = lp1[:, 1:] - lp1[:, :1]
        assert torch.allclose(eta1, dec.natural_parameters(z1, f), atol=1e-4)
        eta2 = lp2[:, 1:] - lp2[:, :1]
        bound = dec.g1.alpha * dec.g2.alpha * (z1 - z2).norm(dim=-1)
        assert ((eta1 - eta2).norm(dim=-1) >= 0.99 * bound).all()
        assert ((lp1 - lp2).abs().amax(-1) > 0).all()


def _counterexample(construction):
    dec = LIDSDecoder(V, 8, 8, K, (8,), (8,), alpha=0.5, construction=construction)
    dec.g1 = LinearBrenierMap(K + 8, 1.0)
    dec.g2 = QuadraticBrenierMap(dec.logit_dim, alpha=0.5)
    return dec


def test_naive_construction_is_not_injective():
    """V free logits: a valid Brenier map g_2 (gradient of a strongly convex quadratic) maps z and z + t e_0 to
    logits that differ by a constant, so two different z give the same token distribution."""
    dec = _counterexample("naive")
    M = dec.g2.M
    assert torch.linalg.eigvalsh(M.double()).min() >= 0.5 - 1e-4  # strongly monotone: a Brenier map
    with torch.no_grad():
        f = dec.history(_x()[:, :-1]).reshape(-1, 8)
        z1 = torch.randn(f.shape[0], K)
        z2 = z1.clone()
        z2[:, 0] += 2.0
        l1, l2 = dec.head(z1, f), dec.head(z2, f)
        assert (l1 - l2).abs().amin() > 1.0  # different logits ...
        assert torch.allclose(torch.log_softmax(l1, -1), torch.log_softmax(l2, -1), atol=1e-5)  # same distribution
        # the minimal construction with the same maps separates them
        dm = _counterexample("minimal")
        dm.load_state_dict({k: v for k, v in dec.state_dict().items() if not k.startswith(("g2.", "beta2"))},
                           strict=False)
        fm = dm.history(_x()[:, :-1]).reshape(-1, 8)
        pm1, pm2 = torch.log_softmax(dm.head(z1, fm), -1), torch.log_softmax(dm.head(z2, fm), -1)
        assert (pm1 - pm2).abs().amax(-1).min() > 0.1


def test_iwae_at_least_elbo_and_nondecreasing_in_k():
    torch.manual_seed(0)
    m = build_text_vae("lidsvae", V, latent_dim=K, embed_dim=8, enc_hidden=8, dec_hidden=8, icnn_hidden=((8,), (8,)))
    x = _x(B=8)
    with torch.no_grad():
        z, log_q, _, _ = m.sample_posterior(x, 2000)
        elbo = (m.log_joint(x, z) - log_q).mean(0)  # the ELBO, by many draws
        _, lw = iwae_log_likelihood(m.log_joint, lambda xx, s: m.sample_posterior(xx, s)[:2], x, 2000, seed=3,
                                    return_log_weights=True)
    # E[IWAE_K] estimated from disjoint groups of K of the 2,000 log-weights (Burda et al. Thm. 1: non-decreasing)
    iw = {k: (torch.logsumexp(lw.view(2000 // k, k, -1), 1) - math.log(k)).mean(0) for k in (1, 10, 100, 1000)}
    assert torch.allclose(iw[1], elbo.double(), atol=0.5)
    for a, b in ((1, 10), (10, 100), (100, 1000)):
        assert (iw[b] >= iw[a] - 1e-3).all(), (a, b)
    assert (m.iwae_log_likelihood(x, 500, seed=4) >= elbo - 0.05).all()


class _IgnoringDecoder(torch.nn.Module):
    """A decoder whose token distribution does not depend on z (a learned unigram model)."""

    def __init__(self):
        super().__init__()
        self.latent_dim = K
        self.logits = torch.nn.Parameter(torch.zeros(V))

    def log_prob(self, x, z):
        S = 1 if z.dim() == 2 else z.shape[0]
        lp = torch.log_softmax(self.logits, -1)[x[:, 1:]].sum(-1)
        return lp.unsqueeze(0).expand(S, -1)


def test_decoder_ignoring_z_gives_au_zero_and_kl_to_zero():
    from lidvae_mini.models.text import LSTMEncoder
    torch.manual_seed(0)
    d = make_synthetic_text(200, 50, 50, latent_dim=K, vocab_size=30)
    m = TextVAE(LSTMEncoder(len(d.vocab), 8, 8, K), _IgnoringDecoder())
    tr = length_batches(d.train, 20, shuffle=True, seed=0)
    h = fit_text(m, tr, epochs=15, lr=1e-2, seed=0)
    assert h["train_kl"][-1] < 0.05 * h["train_kl"][0] + 1e-3
    mu = torch.cat([m.encode_mean(x) for _, x in length_batches(d.test, 50)])
    from lidvae_mini.evaluation.metrics import active_units
    assert active_units(mu.detach())["count"] == 0


def test_fit_and_evaluate_seeded_and_consistent():
    d = make_synthetic_text(120, 40, 40, latent_dim=K, vocab_size=30)
    Vd = len(d.vocab)
    res = []
    for _ in range(2):
        torch.manual_seed(0)
        m = build_text_vae("lidsvae", Vd, latent_dim=K, embed_dim=8, enc_hidden=8, dec_hidden=8,
                           icnn_hidden=((8,), (8,)))
        h = fit_text(m, length_batches(d.train, 20, shuffle=True, seed=0), length_batches(d.valid, 40), epochs=2,
                     lr=3e-3, seed=5)
        ev = evaluate_text(m, length_batches(d.test, 40), iwae_samples=10, seed=0)
        res.append((h["train_loss"], ev["iwae"]))
    assert res[0] == res[1]
    assert ev["n_tokens"] == 40 * 11 and math.isclose(ev["ppl"], math.exp(-ev["iwae"] * 40 / ev["n_tokens"]))
    assert ev["iwae"] >= ev["elbo"] - 1.0 and 0 <= ev["au"] <= K and len(ev["kl_per_dim"]) == K


def test_latent_r2():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 2, generator=g)
    A = torch.tensor([[2.0, 1.0, 0.0], [0.0, -1.0, 3.0]])
    means = z @ A + 0.5
    r = latent_r2(means[:100], z[:100], means[100:], z[100:])
    assert r["r2"] > 0.999
    noise = torch.randn(200, 3, generator=g)
    assert latent_r2(noise[:100], z[:100], noise[100:], z[100:])["r2"] < 0.1


def test_sa_vae_refinement_and_gradients():
    from lidvae_mini.models.baselines import svi_refine
    from lidvae_mini.models.text import sa_text_loss
    torch.manual_seed(0)
    m = build_text_vae("vae", V, latent_dim=K, embed_dim=8, enc_hidden=8, dec_hidden=8)
    x = _x(B=8)
    mu0, lv0 = m.encoder(x)
    _, _, trace = svi_refine(m, x, mu0.detach(), lv0.detach(), svi_steps=30, svi_lr=1.0)
    assert sum(trace[-5:]) / 5 < sum(trace[:5]) / 5  # SVI through the LSTM decoder improves the ELBO
    loss, parts = sa_text_loss(m, x, svi_steps=3)
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"rec", "kl", "elbo"}
    assert m.encoder.head.weight.grad.abs().sum() > 0 and m.decoder.out.weight.grad.abs().sum() > 0


def test_aggressive_training_runs_and_ends_its_phase():
    d = make_synthetic_text(100, 40, 40, latent_dim=K, vocab_size=30)
    torch.manual_seed(0)
    m = build_text_vae("vae", len(d.vocab), latent_dim=K, embed_dim=8, enc_hidden=8, dec_hidden=8)
    h = fit_text(m, length_batches(d.train, 20, shuffle=True, seed=0), length_batches(d.valid, 40), epochs=3,
                 lr=3e-3, seed=0, aggressive=True, max_inner_steps=6, check_every=3)
    assert 1 <= h["aggressive_epochs"] <= 3 and len(h["train_loss"]) == 3
    assert all(math.isfinite(v) for v in h["train_loss"] + h["valid_nelbo"])


# ------------------------------------------------- every density the objectives use, against torch.distributions
@pytest.mark.parametrize("kind", ["vae", "lidsvae"])
def test_densities_and_kl_against_torch_distributions(kind):
    """log q(z|x) (the IWAE's proposal density), log p(z) + log p(x|z) (its joint) and the ELBO's KL (a sum over the
    latent dimensions, nats per sentence), each against an independent computation."""
    torch.manual_seed(1)
    m = build_text_vae(kind, V, latent_dim=K, embed_dim=8, enc_hidden=8, dec_hidden=8, icnn_hidden=((8,), (8,)))
    x = _x(B=5)
    with torch.no_grad():
        with torch.random.fork_rng():
            z, log_q, mu, logvar = m.sample_posterior(x, 4)
        q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
        assert torch.allclose(log_q, q.log_prob(z).sum(-1), atol=1e-5)
        prior = torch.distributions.Normal(torch.zeros(K), torch.ones(K))
        assert torch.allclose(m.log_joint(x, z), prior.log_prob(z).sum(-1) + m.decoder.log_prob(x, z), atol=1e-5)
        with torch.random.fork_rng():
            parts = m.elbo_parts(x, 1)
        kl = torch.distributions.kl_divergence(q, prior).sum(-1)
        assert torch.allclose(parts["kl"], kl, atol=1e-6)
        assert torch.allclose(parts["elbo"], -(parts["rec"] + kl), atol=1e-5)
    # the training loss carries the same KL, weighted by beta
    with torch.random.fork_rng():
        loss, _ = m.loss(x, 1)
    with torch.random.fork_rng():
        p = m.elbo_parts(x, 1)
    assert torch.allclose(loss, (p["rec"] + m.beta * kl).mean(), atol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"aggressive": True, "max_inner_steps": 3, "check_every": 2, "keep_best": True}])
def test_fit_text_interrupted_and_resumed_equals_uninterrupted(tmp_path, kw):
    """The text models train through the one loop: checkpoints every epoch, resumed bitwise (issue 20)."""
    d = make_synthetic_text(n_train=60, n_valid=20, n_test=4, vocab_size=30, seed=0)
    tr, va = length_batches(d.train, 20, shuffle=True, seed=0), length_batches(d.valid, 20)

    def model(seed):
        torch.manual_seed(seed)
        return build_text_vae("lidsvae", len(d.vocab), latent_dim=2, embed_dim=8, enc_hidden=8, dec_hidden=8,
                              icnn_hidden=((8,), (8,)))
    ref = model(0)
    h_ref = fit_text(ref, tr, va, epochs=3, lr=1e-2, seed=1, **kw)
    fit_text(model(0), tr, va, epochs=1, lr=1e-2, seed=1, checkpoint_dir=tmp_path, **kw)
    resumed = model(7)
    h = fit_text(resumed, tr, va, epochs=3, lr=1e-2, seed=1, checkpoint_dir=tmp_path, **kw)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in ref.state_dict().items())
    assert {k: v for k, v in h.items() if k != "seconds"} == {k: v for k, v in h_ref.items() if k != "seconds"}
    with pytest.raises(ValueError, match="different settings"):
        fit_text(model(0), tr, va, epochs=4, lr=2e-2, seed=1, checkpoint_dir=tmp_path, **kw)
