"""The aggregate VAE (lidvae_mini.models.avae): bandwidth rule, chunked KDE, KL estimator, training loop."""
import math

import numpy as np
import pytest
import torch

from lidvae_mini.models import avae
from lidvae_mini.models.avae import (AVAE, DeterministicEncoder, bandwidth, bandwidth_criterion, build_avae,
                                     evaluate_avae, fit_avae, kde_log_density, kl_to_prior)
from lidvae_mini.models.decoders import InjectiveDecoder, MLPDecoder, count_parameters
from lidvae_mini.models.train import NonFiniteLossError


# ------------------------------------------------------------------------------------------------ bandwidth
def test_bandwidth_matches_the_reference_table():
    # Surojit-Utah/AVAE README table (l = 10, m = 500): h_opt 0.74, corrected 0.60; (l = 20, m = 500): 0.89 / 0.67
    assert bandwidth(10, 500, corrected=False) == pytest.approx(0.74, abs=0.02)
    assert bandwidth(10, 500) == pytest.approx(0.60, abs=0.02)
    assert bandwidth(20, 500, corrected=False) == pytest.approx(0.89, abs=0.03)


def test_bandwidth_decreases_with_kde_size_and_lies_in_unit_interval():
    hs = [bandwidth(6, m) for m in (20, 200, 2000)]
    assert all(0 < h < 1 for h in hs)
    assert hs[0] > hs[1] > hs[2]
    h_opt = bandwidth(6, 200, corrected=False)
    assert bandwidth(6, 200) == pytest.approx(h_opt / math.sqrt(1 + h_opt ** 2), rel=1e-12)


def test_bandwidth_minimises_its_own_criterion():
    h = bandwidth(5, 300, corrected=False, seed=3)
    best = bandwidth_criterion(h, 5, 300, seed=3)
    for f in (0.9, 0.97, 1.03, 1.1):
        assert bandwidth_criterion(h * f, 5, 300, seed=3) > best
    # the criterion is a KL: positive, and large for a far too small bandwidth
    assert best > 0 and bandwidth_criterion(0.05, 5, 300, seed=3) > 10 * best


def test_bandwidth_criterion_against_direct_formula():
    # m = 2 codes in d = 1: q_h is an explicit two-component mixture
    d, m, n_eval, seed = 1, 2, 50, 7
    d2, z2 = avae._bandwidth_draws(d, m, n_eval, seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, d, m, n_eval]))
    codes, z = rng.standard_normal((m, d)), rng.standard_normal((n_eval, d))
    h = 0.8
    q = np.mean([np.exp(-(z[:, 0] - c) ** 2 / (2 * h * h)) / (h * np.sqrt(2 * np.pi)) for c in codes[:, 0]], axis=0)
    p = np.exp(-z[:, 0] ** 2 / 2) / np.sqrt(2 * np.pi)
    assert bandwidth_criterion(h, d, m, n_eval, seed) == pytest.approx(np.mean(np.log(p / q)), rel=1e-10)


@pytest.mark.parametrize("args", [(0, 10), (3, 1), (2.5, 10), (3, -4)])
def test_bandwidth_bad_input(args):
    with pytest.raises(ValueError):
        bandwidth(*args)


def test_bandwidth_criterion_rejects_nonpositive_h():
    for h in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            bandwidth_criterion(h, 3, 10)


# ------------------------------------------------------------------------------------------------ KDE and KL
def _brute_log_q(z, codes, h):
    z, codes = z.double().numpy(), codes.double().numpy()
    d = z.shape[1]
    dens = np.exp(-((z[:, None, :] - codes[None]) ** 2).sum(-1) / (2 * h * h)) / ((2 * np.pi * h * h) ** (d / 2))
    return np.log(dens.mean(1))


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_kde_log_density_against_brute_force(chunk):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(13, 4, generator=g, dtype=torch.float64)
    codes = torch.randn(150, 4, generator=g, dtype=torch.float64) * 0.8
    got = kde_log_density(z, codes, 0.6, chunk=chunk).numpy()
    np.testing.assert_allclose(got, _brute_log_q(z, codes, 0.6), rtol=0, atol=1e-10)


def test_kde_log_density_far_point_stays_finite_with_gradient():
    # the reference's sum of exponentials underflows here (and its epsilon floor kills the gradient)
    codes = torch.zeros(5, 3, dtype=torch.float64)
    z = torch.full((1, 3), 40.0, dtype=torch.float64, requires_grad=True)
    lq = kde_log_density(z, codes, 0.5)
    assert torch.isfinite(lq).all()
    lq.sum().backward()
    assert torch.all(z.grad < 0)          # pulled back towards the codes


def test_kde_gradient_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(1)
    codes = torch.randn(100, 3, generator=g, dtype=torch.float64)
    grads = []
    for chunk in (9, 1000):
        z = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
        kde_log_density(z, codes, 0.7, chunk=chunk).sum().backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)


def test_kl_estimator_analytic_gaussian_case():
    # codes and evaluation points from N(0, s^2 I); with m large and h small, q_h ~ N(0, (s^2 + h^2) I), and
    # KL(N(0, v I) || N(0, I)) = d/2 (v - 1 - log v) with v = s^2 + h^2 (variance of the KDE itself)
    d, s, h, m = 2, 0.7, 0.15, 20_000
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(m, d, generator=g, dtype=torch.float64) * s
    z = torch.randn(4000, d, generator=g, dtype=torch.float64) * math.sqrt(s * s + h * h)
    v = s * s + h * h
    assert float(kl_to_prior(z, codes, h)) == pytest.approx(d / 2 * (v - 1 - math.log(v)), abs=0.02)


@pytest.mark.parametrize("bad", ["h", "m", "nan", "shape", "dtype"])
def test_kde_bad_inputs_raise(bad):
    z, codes, h = torch.zeros(3, 2), torch.randn(10, 2), 0.5
    if bad == "h":
        h = 0.0
    elif bad == "m":
        codes = codes[:1]
    elif bad == "nan":
        codes[0, 0] = float("nan")
    elif bad == "shape":
        codes = torch.randn(10, 3)
    elif bad == "dtype":
        codes = codes.double()
    with pytest.raises(ValueError):
        kde_log_density(z, codes, h)
    with pytest.raises(TypeError):
        kde_log_density(np.zeros((3, 2)), codes, 0.5)


# ------------------------------------------------------------------------------------------------ model, fit
def _toy(n=240, d_data=12, seed=0):
    g = np.random.default_rng(seed)
    proto = (g.random((4, d_data)) > 0.5).astype(np.float32)
    lab = g.integers(0, 4, n)
    x = np.clip(proto[lab] * 0.9 + 0.05, 0, 1).astype(np.float32)
    return x[: n - 40], x[n - 40:]


def test_build_avae_sizes_match_the_vae_rule():
    from lidvae_mini.models.vae import build_vae
    a = build_avae("avae", 12, 3, h=0.5, hidden1=(8,), hidden2=(16,), seed=0)
    v = build_vae("vae", 12, 3, hidden1=(8,), hidden2=(16,), seed=0)
    assert isinstance(a.decoder, MLPDecoder) and count_parameters(a.decoder) == count_parameters(v.decoder)
    lid = build_avae("lid_avae", 12, 3, h=0.5, hidden1=(8,), hidden2=(16,), seed=0)
    assert isinstance(lid.decoder, InjectiveDecoder) and lid.identifiable and not a.identifiable
    with pytest.raises(ValueError):
        build_avae("avae", 12, 3, h=1.2)
    with pytest.raises(ValueError):
        build_avae("vae", 12, 3, h=0.5)


def test_sample_uses_the_shrunk_prior():
    a = build_avae("avae", 12, 3, h=0.6, hidden1=(8,), hidden2=(16,), seed=0)
    assert a.prior_std == pytest.approx(0.8)
    x1, x2 = a.sample(5, seed=1), a.sample(5, seed=1)
    assert x1.shape == (5, 12) and torch.equal(x1, x2)


def test_fit_reduces_loss_and_is_bitwise_reproducible(tmp_path):
    tr, va = _toy()
    runs = []
    for _ in range(2):
        m = build_avae("avae", 12, 2, h=bandwidth(2, 50), hidden1=(8,), hidden2=(16,), encoder_hidden=(32,), seed=0)
        hist = fit_avae(m, tr, va, epochs=8, batch_size=25, lr=1e-2, kde_size=50, refresh_every=2, seed=0,
                        binarize="dynamic")
        runs.append((m, hist))
    h = runs[0][1]
    assert h["valid_rec"][-1] < 0.8 * h["valid_rec"][0]
    assert all(s > 0 for s in h["scale"]) and h["scale"][1] == pytest.approx(math.sqrt(h["valid_rec"][0]))
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(p, q)
    assert runs[0][1]["train_loss"] == runs[1][1]["train_loss"]


def test_fit_resume_equals_uninterrupted(tmp_path):
    tr, va = _toy()
    kw = dict(batch_size=40, lr=5e-3, kde_size=40, refresh_every=3, seed=1, binarize="dynamic")
    build = lambda: build_avae("lid_avae", 12, 2, h=0.5, hidden1=(4,), hidden2=(8,), encoder_hidden=(16,), seed=1)
    full = build()
    fit_avae(full, tr, va, epochs=3, **kw)
    part = build()
    fit_avae(part, tr, va, epochs=2, checkpoint_dir=tmp_path, **kw)
    resumed = build()
    fit_avae(resumed, tr, va, epochs=3, checkpoint_dir=tmp_path, **kw)
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError):
        fit_avae(build(), tr, va, epochs=4, checkpoint_dir=tmp_path, **{**kw, "lr": 1e-3})


def test_fit_bad_inputs_raise():
    tr, va = _toy()
    m = build_avae("avae", 12, 2, h=0.5, hidden1=(4,), hidden2=(8,), seed=0)
    with pytest.raises(ValueError):
        fit_avae(m, tr, va, kde_size=len(tr))          # no minibatches left
    with pytest.raises(ValueError):
        fit_avae(m, tr, va, kde_size=1)
    with pytest.raises(ValueError):
        fit_avae(m, tr, va, epochs=1)                  # non-binary data for a Bernoulli decoder
    with pytest.raises(ValueError):
        fit_avae(m, tr[:, :5], va, binarize="dynamic")
    bad = tr.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        fit_avae(m, bad, va, binarize="dynamic")


def test_fit_nan_guard_restores_the_model():
    tr, va = _toy()
    m = build_avae("avae", 12, 2, h=0.5, hidden1=(4,), hidden2=(8,), seed=0)
    before = [p.detach().clone() for p in m.parameters()]
    # rec / 1e-300 overflows float32: the first loss is inf
    with pytest.raises(NonFiniteLossError):
        fit_avae(m, tr, va, epochs=1, kde_size=40, binarize="dynamic", initial_scale=1e-300, grad_clip=None)
    for p, q in zip(before, m.parameters()):
        assert torch.equal(p, q)


def test_deterministic_encoder_has_no_posterior_noise():
    enc = DeterministicEncoder(12, 3, (8,))
    x = torch.rand(4, 12)
    assert torch.equal(enc(x), enc(x)) and torch.equal(enc.mean(x), enc(x))


def test_kde_memory_kept_for_backward_is_bounded():
    # B = 100, m = 10,000, d = 16 (the docstring's case): only the inputs are kept, not a (B, m) matrix
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    codes = torch.randn(10_000, 16)
    z = torch.randn(100, 16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        kde_log_density(z, codes, 0.58)
    assert sum(seen.values()) < 1.2 * codes.untyped_storage().nbytes()


def test_bernoulli_kl_from_logits_matches_torch_and_stays_finite():
    from torch import distributions as td
    from lidvae_mini.models.avae import bernoulli_kl_from_logits
    a = torch.tensor([-3.0, 0.0, 2.5, 8.0], dtype=torch.float64)
    b = torch.tensor([1.0, -0.5, 2.0, 6.0], dtype=torch.float64)
    ref = td.kl_divergence(td.Bernoulli(logits=a), td.Bernoulli(logits=b))
    torch.testing.assert_close(bernoulli_kl_from_logits(a, b), ref)
    # float32 logits 16.5 and 17.5: torch rounds one probability to 1 and returns inf; the true KL is about 4e-8
    a32, b32 = torch.tensor([16.5]), torch.tensor([17.5])
    assert torch.isinf(td.kl_divergence(td.Bernoulli(logits=a32), td.Bernoulli(logits=b32))).item()
    got = float(bernoulli_kl_from_logits(a32.double(), b32.double()))
    assert 0 < got < 1e-6


def test_decoder_sensitivity_zero_exactly_for_an_ignored_axis():
    from lidvae_mini.models.avae import decoder_sensitivity
    m = build_avae("avae", 12, 3, h=0.5, hidden1=(4,), hidden2=(8,), seed=0)
    with torch.no_grad():
        m.decoder.first_layer.weight[:, 1] = 0.0
        m.decoder.net[-1].bias += 30.0         # confident pixels: torch's Bernoulli KL would give inf here
    s = decoder_sensitivity(m.decoder, step=0.5, n_samples=200, seed=0)
    assert s.shape == (3,) and torch.isfinite(s).all()
    assert s[1] == 0 and s[0] > 0 and s[2] > 0
    torch.testing.assert_close(m.latent_sensitivity(n_samples=200), s)


# ------------------------------------------------------------- the scale s with a Gaussian likelihood
def test_the_scale_comes_from_a_positive_error_for_a_gaussian_head():
    """Low-noise Gaussian data: the learned noise scale shrinks, -log p(x|z) turns negative, yet s stays the square
    root of the validation squared error (the reference's), which cannot be negative; the KL keeps its weight."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(700, 2, generator=g)
    x = torch.tanh(z @ torch.randn(2, 8, generator=g)) + 0.01 * torch.randn(700, 8, generator=g)
    model = build_avae("avae", 8, 2, h=0.5, head="gaussian", encoder_hidden=(32,), mlp_hidden=(32, 32), seed=0)
    hist = fit_avae(model, x[:600], x[600:], epochs=15, batch_size=50, lr=2e-2, kde_size=100, refresh_every=2,
                    seed=0)
    assert min(hist["valid_rec"]) < 0, hist["valid_rec"]          # the nats error does go negative
    ev = evaluate_avae(model, x[600:], model.encode(x[:100]).detach())
    with torch.no_grad():
        sq = (x[600:] - model.decoder(model.encode(x[600:]))).pow(2).sum(-1).double().mean().item()
    assert ev["scale_error"] == pytest.approx(sq, rel=1e-6) and ev["scale_error"] > 0
    # every epoch's s is the square root of the previous epoch's validation squared error: never at the floor
    assert all(s > 1e-3 for s in hist["scale"]), hist["scale"]


def test_the_scale_error_of_a_bernoulli_head_is_the_cross_entropy():
    model = build_avae("avae", 12, 3, h=0.5, hidden1=(8,), hidden2=(16,), seed=0)
    x = (torch.rand(20, 12, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    with torch.no_grad():
        z = model.encode(x)
        torch.testing.assert_close(model.scale_error(x, z), model.reconstruction_error(x, z))
