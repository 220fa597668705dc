"""VAE / β-VAE / LIDVAE: the ELBO is a lower bound, IWAE tightens it, sizes are matched, inputs are checked."""
import math

import pytest
import torch

from lidvae_mini.models.decoders import InjectiveDecoder, MLPDecoder, count_parameters
from lidvae_mini.models.encoders import GaussianEncoder
from lidvae_mini.evaluation.metrics import iwae_log_likelihood
from lidvae_mini.models.vae import LIDVAE, PAPER_BETA, VAE, build_vae


def _grid_log_marginal(model, x, lim=7.0, n=301):
    """log p(x) = log ∫ p(x|z) p(z) dz by a 2-D Riemann sum (exact up to discretisation), shape (B,)."""
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 1, 2).expand(-1, x.shape[0], 2)
    with torch.no_grad():
        lj = model.log_joint(x, grid.contiguous())                 # (G, B)
    return torch.logsumexp(lj, 0) + 2 * math.log(g[1] - g[0])


@pytest.mark.parametrize("kind", ["vae", "lidvae"])
def test_elbo_below_iwae_below_log_marginal(kind):
    """ELBO <= IWAE_K <= log p(x) on average (Burda et al. 2016), with log p(x) by quadrature in 2-D."""
    model = build_vae(kind, 2, 2, "gaussian", encoder_hidden=(8,), hidden1=(8,), hidden2=(8,), seed=0,
                      fixed_scale=0.5).double()
    torch.manual_seed(1)
    x = torch.randn(6, 2, dtype=torch.float64)
    log_px = _grid_log_marginal(model, x)
    with torch.no_grad():
        elbo = model.elbo(x, n_samples=4000)
        iwae = iwae_log_likelihood(model.log_joint, model.sample_posterior, x, num_samples=4000, chunk=1000, seed=0)
    assert elbo.mean() < iwae.mean() - 0.01
    assert (elbo < log_px + 0.02).all()           # the ELBO is a bound for every datapoint
    assert iwae.mean() <= log_px.mean() + 0.02
    assert (log_px - iwae).mean() < (log_px - elbo).mean()


def test_elbo_parts_and_beta():
    model = build_vae("beta_vae", 5, 3, "bernoulli", encoder_hidden=(8,), hidden1=(4,), hidden2=(8,), seed=0)
    assert model.beta == PAPER_BETA
    x = (torch.rand(7, 5) < 0.5).float()
    torch.manual_seed(0)
    parts = model.elbo_parts(x)
    assert set(parts) == {"elbo", "rec", "kl"} and all(v.shape == (7,) for v in parts.values())
    torch.testing.assert_close(parts["elbo"], parts["rec"] - parts["kl"])
    torch.testing.assert_close(parts["kl"], model.kl_per_dim(x).sum(-1))
    torch.manual_seed(0)
    loss, _ = model.loss(x)
    torch.testing.assert_close(loss, -(parts["rec"] - PAPER_BETA * parts["kl"]).mean())
    assert (parts["kl"] >= 0).all() and (parts["rec"] <= 0).all()


def test_sample_from_the_model():
    for head in ("gaussian", "bernoulli"):
        m = build_vae("lidvae", 4, 2, head, encoder_hidden=(8,), hidden1=(4,), hidden2=(8,), seed=0)
        assert m.sample(7).shape == (7, 4) and m.sample(3, mean=False).shape == (3, 4)
    binary = m.sample(50, mean=False)
    assert bool(((binary == 0) | (binary == 1)).all())


def test_log_joint_shapes_and_sample_posterior():
    model = build_vae("lidvae", 4, 2, "gaussian", encoder="realnvp", encoder_hidden=(8,), hidden1=(4,),
                      hidden2=(8,), seed=0)
    x = torch.randn(5, 4)
    z, log_q = model.sample_posterior(x, 3)
    assert z.shape == (3, 5, 2) and log_q.shape == (3, 5)
    lj = model.log_joint(x, z)
    assert lj.shape == (3, 5)
    torch.testing.assert_close(lj[1], model.log_likelihood(x, z[1]) + model.log_prior(z[1]))
    assert model.encode_mean(x).shape == (5, 2)
    parts = model.elbo_parts(x, n_samples=2)   # Monte Carlo KL for the flow
    assert parts["kl"].shape == (5,)
    with pytest.raises(TypeError):
        model.kl_per_dim(x)


def test_one_class_parameterised_by_decoder():
    enc = GaussianEncoder(6, 2, hidden=(8,))
    lid = LIDVAE(enc, InjectiveDecoder(2, 6, (4,), (8,)))
    assert lid.identifiable and isinstance(lid, VAE)
    assert not VAE(GaussianEncoder(6, 2, hidden=(8,)), MLPDecoder(2, 6, (8,))).identifiable
    with pytest.raises(TypeError, match="InjectiveDecoder"):
        LIDVAE(enc, MLPDecoder(2, 6, (8,)))
    with pytest.raises(ValueError, match="latent_dim"):
        VAE(GaussianEncoder(6, 3, hidden=(8,)), MLPDecoder(2, 6, (8,)))


@pytest.mark.parametrize("D,K,head,hidden1,hidden2", [(784, 16, "bernoulli", (32, 32), (64, 64)),
                                                      (784, 32, "bernoulli", (64, 64), (128, 128)),
                                                      (2, 2, "gaussian", (16, 16), (32, 32)),
                                                      (50, 5, "gaussian", (8,), (16, 16, 16))])
def test_build_vae_matches_decoder_sizes(D, K, head, hidden1, hidden2):
    """The MLP decoders match the paper's injective decoder (fixed beta) to 10%; the book's default LIDVAE decoder
    (a learned beta when K < D) has exactly the lift's D x K frame and K scales more."""
    counts = {}
    for kind in ("vae", "lidvae", "beta_vae"):
        m = build_vae(kind, D, K, head, encoder_hidden=(16,), hidden1=hidden1, hidden2=hidden2, seed=0)
        counts[kind] = count_parameters(m.decoder)
        assert m.identifiable == (kind == "lidvae")
    paper = build_vae("lidvae", D, K, head, encoder_hidden=(16,), hidden1=hidden1, hidden2=hidden2, seed=0,
                      decoder="fixed")
    n_paper = count_parameters(paper.decoder)
    assert abs(counts["vae"] - n_paper) <= 0.1 * n_paper
    assert counts["lidvae"] - n_paper == (0 if K == D else D * K + K)
    assert counts["vae"] == counts["beta_vae"]


def test_the_book_default_decoder_and_the_papers():
    """K < D: the book's learned full-rank beta with g_2 initialised for K inputs; K = D: the paper's identity beta;
    every variant by name, and clear errors."""
    from lidvae_mini.models.decoders import BOOK_DECODER, DECODER_VARIANTS, book_decoder, decoder_variant

    assert book_decoder(16, 784) == BOOK_DECODER == "learned_init" and book_decoder(2, 2) == "fixed"
    m = build_vae("lidvae", 784, 16, seed=0)
    assert m.decoder.beta_kind == "learned" and m.decoder.g2.potential_net.active_inputs == 16
    assert torch.linalg.matrix_rank(m.decoder.beta_matrix().detach()) == 16
    p = build_vae("lidvae", 784, 16, seed=0, decoder="fixed")
    assert p.decoder.beta_kind == "fixed" and p.decoder.g2.potential_net.active_inputs == 784
    assert build_vae("lidvae", 2, 2, "gaussian", seed=0).decoder.beta_kind == "fixed"
    assert {v: decoder_variant(v, 4) for v in DECODER_VARIANTS} == {
        "fixed": {"beta": "fixed"}, "learned": {"beta": "learned"},
        "learned_init": {"beta": "learned", "g2_active_inputs": 4}}
    # the VAE's MLP is matched to the paper's construction, not to the book's larger default
    n_vae, n_paper = count_parameters(build_vae("vae", 784, 16, seed=0).decoder), count_parameters(p.decoder)
    assert abs(n_vae - n_paper) < 100 < abs(n_vae - count_parameters(m.decoder))
    with pytest.raises(ValueError, match="decoder variant"):
        build_vae("lidvae", 784, 16, decoder="dense")
    with pytest.raises(ValueError, match="MLP decoder"):
        build_vae("vae", 784, 16, decoder="fixed")


def test_build_vae_seed_gives_same_encoder_to_every_kind():
    a = build_vae("vae", 10, 3, "bernoulli", encoder_hidden=(8,), hidden1=(4,), hidden2=(8,), seed=3)
    b = build_vae("lidvae", 10, 3, "bernoulli", encoder_hidden=(8,), hidden1=(4,), hidden2=(8,), seed=3)
    for pa, pb in zip(a.encoder.parameters(), b.encoder.parameters()):
        assert torch.equal(pa, pb)
    state = torch.get_rng_state()
    build_vae("vae", 10, 3, "bernoulli", encoder_hidden=(8,), hidden1=(4,), hidden2=(8,), seed=4)
    assert torch.equal(state, torch.get_rng_state())   # caller's RNG untouched


def test_bad_inputs_raise():
    model = build_vae("vae", 5, 2, "bernoulli", encoder_hidden=(8,), hidden1=(4,), hidden2=(8,), seed=0)
    good = (torch.rand(4, 5) < 0.5).float()
    model.elbo(good)
    with pytest.raises(ValueError, match="binary"):
        model.elbo(torch.rand(4, 5))
    with pytest.raises(ValueError):
        model.elbo(good[:, :4])
    with pytest.raises(ValueError):
        model.elbo(good[0])
    with pytest.raises(TypeError):
        model.elbo(good.long())
    with pytest.raises(TypeError):
        model.elbo(good.double())
    with pytest.raises(TypeError):
        model.elbo(good.numpy())
    with pytest.raises(ValueError):
        model.elbo(torch.full((4, 5), math.nan))
    with pytest.raises(ValueError):
        model.elbo(good, n_samples=0)
    with pytest.raises(ValueError):
        model.log_likelihood(good, torch.zeros(3, 2, 2))


@pytest.mark.parametrize("kwargs,match", [(dict(kind="gmvae"), "vae"), (dict(encoder="lstm"), "realnvp"),
                                          (dict(head="poisson"), "gaussian"), (dict(latent_dim=7), "exceed"),
                                          (dict(beta=0.0), "beta")])
def test_build_vae_rejects_bad_settings(kwargs, match):
    args = dict(kind="lidvae", data_dim=5, latent_dim=2, head="bernoulli", encoder="gaussian")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_vae(args.pop("kind"), args.pop("data_dim"), args.pop("latent_dim"), **args,
                  encoder_hidden=(8,), hidden1=(4,), hidden2=(8,))


def test_injective_decoder_separates_latents_mlp_can_ignore_one():
    """Proposition 2 in numbers: distinct z give distinct likelihood parameters in the LIDVAE; an MLP decoder
    whose first layer ignores z_2 maps z and z + (0, t) to the same distribution."""
    torch.manual_seed(0)
    lid = build_vae("lidvae", 6, 2, "gaussian", encoder_hidden=(8,), hidden1=(8,), hidden2=(16,), seed=0)
    z = torch.randn(200, 2)
    z2 = z + torch.randn(200, 2)
    with torch.no_grad():
        gap = (lid.decoder(z) - lid.decoder(z2)).norm(dim=-1)
    bound = lid.decoder.alpha ** 2 * (z - z2).norm(dim=-1)
    assert (gap >= bound * (1 - 1e-4)).all() and (gap > 0).all()
    vae = build_vae("vae", 6, 2, "gaussian", encoder_hidden=(8,), hidden1=(8,), hidden2=(16,), seed=0)
    with torch.no_grad():
        vae.decoder.first_layer.weight[:, 1] = 0.0
        shifted = z + torch.tensor([0.0, 3.0])
        torch.testing.assert_close(vae.decoder(z), vae.decoder(shifted))


def test_latent_sensitivity_zero_for_ignored_latent_and_bounded_for_lidvae():
    """Definition 2 measured: S_k = E KL(p(x|z) || p(x|z + h e_k)) is 0 for a latent the decoder ignores, and at
    least alpha^4 h^2 / (2 sigma_max^2) for every latent of an LIDVAE with a Gaussian head."""
    vae = build_vae("vae", 6, 3, "gaussian", encoder_hidden=(8,), hidden1=(8,), hidden2=(16,), seed=0)
    with torch.no_grad():
        vae.decoder.first_layer.weight[:, 2] = 0.0
    s = vae.latent_sensitivity(step=0.5, n_samples=200)
    assert s.shape == (3,) and s[2] == 0.0 and (s[:2] > 0).all()
    lid = build_vae("lidvae", 6, 3, "gaussian", encoder_hidden=(8,), hidden1=(8,), hidden2=(16,), seed=0, alpha=0.3)
    with torch.no_grad():
        lid.decoder.log_scale.fill_(0.7)
    s = lid.latent_sensitivity(step=0.5, n_samples=200)
    bound = 0.3 ** 4 * 0.25 / (2 * math.exp(0.7) ** 2)
    assert (s >= bound * (1 - 1e-4)).all()
    torch.testing.assert_close(lid.latent_sensitivity(n_samples=50, seed=1), lid.latent_sensitivity(n_samples=50, seed=1))
    bern = build_vae("lidvae", 6, 2, "bernoulli", encoder_hidden=(8,), hidden1=(8,), hidden2=(16,), seed=0)
    assert (bern.latent_sensitivity(n_samples=100) > 0).all()


def _two_pass_elbo_parts(model, x, n_samples):
    """The ELBO as computed before issue 9: the encoder runs in ``sample`` and again in ``kl_per_dim``."""
    z, _ = model.encoder.sample(x, n_samples)
    rec = model.log_likelihood(x, z).mean(0)
    kl = model.encoder.kl_per_dim(x).sum(-1)
    return {"elbo": rec - kl, "rec": rec, "kl": kl}


@pytest.mark.parametrize("kind,head", [("vae", "bernoulli"), ("lidvae", "bernoulli"), ("lidvae", "gaussian")])
@pytest.mark.parametrize("n_samples", [1, 3])
def test_elbo_parts_equals_the_two_pass_computation(kind, head, n_samples):
    model = build_vae(kind, 6, 3, head, encoder_hidden=(8,), hidden1=(4,), hidden2=(8,), seed=0)
    torch.manual_seed(5)
    x = (torch.rand(7, 6) > 0.5).float() if head == "bernoulli" else torch.randn(7, 6)
    torch.manual_seed(11)
    new = model.elbo_parts(x, n_samples)
    torch.manual_seed(11)
    old = _two_pass_elbo_parts(model, x, n_samples)
    for key in ("elbo", "rec", "kl"):
        torch.testing.assert_close(new[key], old[key], rtol=1e-6, atol=1e-6)
    # the same gradients too
    model.zero_grad()
    torch.manual_seed(11)
    model.elbo_parts(x, n_samples)["elbo"].sum().backward()
    g_new = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    torch.manual_seed(11)
    _two_pass_elbo_parts(model, x, n_samples)["elbo"].sum().backward()
    g_old = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(g_new) == len(g_old)
    for a, b in zip(g_new, g_old):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoder", ["gaussian", "realnvp"])
def test_encoder_runs_once_per_elbo_parts(encoder):
    """One pass of the encoder network per ELBO (issue 9: it used to run in ``sample`` and in ``kl_per_dim``)."""
    model = build_vae("vae", 6, 3, "bernoulli", encoder, encoder_hidden=(8,), hidden1=(4,), hidden2=(8,), seed=0)
    calls = {"n": 0}
    net = model.encoder.net if encoder == "gaussian" else model.encoder.trunk

    def count(module, inputs, output):
        calls["n"] += 1

    handle = net.register_forward_hook(count)
    x = (torch.rand(5, 6) > 0.5).float()
    model.elbo_parts(x)
    assert calls["n"] == 1
    model.loss(x, n_samples=4)
    assert calls["n"] == 2
    handle.remove()


def test_analytic_kl_encoder_without_one_pass_method_still_works():
    """An encoder with ``has_analytic_kl`` but no ``sample_with_kl`` (e.g. a wrapper) gets the two-pass KL."""
    model = build_vae("vae", 6, 3, "bernoulli", encoder_hidden=(8,), hidden1=(4,), hidden2=(8,), seed=0)

    class Wrapped(torch.nn.Module):
        has_analytic_kl = True

        def __init__(self, inner):
            super().__init__()
            self.inner, self.latent_dim, self.data_dim = inner, inner.latent_dim, inner.data_dim

        def sample(self, x, n_samples=1):
            return self.inner.sample(x, n_samples)

        def kl_per_dim(self, x):
            return self.inner.kl_per_dim(x)

    wrapped = VAE(Wrapped(model.encoder), model.decoder)
    x = (torch.rand(5, 6) > 0.5).float()
    torch.manual_seed(3)
    a = model.elbo_parts(x)
    torch.manual_seed(3)
    b = wrapped.elbo_parts(x)
    for key in a:
        torch.testing.assert_close(a[key], b[key])



def test_latent_sensitivity_stays_finite_for_confident_pixels():
    """Large logits round float32 probabilities to 1, where torch.distributions' Bernoulli KL is inf (checked
    here); the sensitivity is computed from the logits in float64: finite, and equal to the KL written with log-sigmoids."""
    vae = build_vae("vae", 5, 2, "bernoulli", encoder_hidden=(8,), hidden1=(8,), hidden2=(16,), seed=0)
    with torch.no_grad():
        for p in vae.decoder.parameters():
            p.mul_(30.0)
    s = vae.latent_sensitivity(step=0.5, n_samples=64)
    assert torch.isfinite(s).all() and (s > 0).all()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        z = torch.randn(64, 2)
    dz = torch.zeros_like(z)
    dz[:, 0] = 0.5
    kl32 = torch.distributions.kl_divergence(vae.decoder.distribution(z), vae.decoder.distribution(z + dz)).mean()
    assert not torch.isfinite(kl32)  # the failure the float64 computation avoids
    a, b = vae.decoder(z).double(), vae.decoder(z + dz).double()  # logits
    ls = torch.nn.functional.logsigmoid
    ref = (a.sigmoid() * (ls(a) - ls(b)) + (-a).sigmoid() * (ls(-a) - ls(-b))).sum(-1).mean()
    torch.testing.assert_close(s[0], ref, rtol=1e-9, atol=1e-9)
