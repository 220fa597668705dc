"""Active units and MI with the RealNVP posterior (issue: a collapsed flow unit used to count as active).

The AU criterion is ``Var_x E_q[z_d|x] >= 0.01``. A flow's posterior mean is a Monte Carlo average; with fresh
draws per datapoint a unit whose q equals the prior showed variance ~1/n_samples across x (0.016 at 64 draws).
"""
import math

import pytest
import torch

from lidvae_mini.models.baselines import encoder_mutual_information
from lidvae_mini.models.encoders import MEAN_SAMPLES, ConditionalRealNVP
from lidvae_mini.evaluation.metrics import active_units, mutual_information_from_log_density
from lidvae_mini.models.mixture import build_mixture_vae, evaluate_mixture
from lidvae_mini.models.train import evaluate
from lidvae_mini.models.vae import build_vae


def _zero_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def _flow_at_prior(data_dim=5, latent_dim=4, seed=0):
    """A RealNVP whose q(z|x) is N(0, I) for every x: base mu = 0, logvar = 0, identity couplings."""
    torch.manual_seed(seed)
    enc = ConditionalRealNVP(data_dim, latent_dim, hidden=(16,), coupling_hidden=(16,)).double()
    _zero_(enc.base)
    for c in enc.couplings:               # the trunk still depends on x, so the couplings see x: zero them
        _zero_(c)
    return enc


def _flow_copying_x(active, latent_dim=4, scale=1e-2, seed=0):
    """A RealNVP with base mean z_d = x_d (d < latent_dim), sd ``scale``, random (x-dependent) couplings."""
    torch.manual_seed(seed)
    data_dim = latent_dim
    enc = ConditionalRealNVP(data_dim, latent_dim, hidden=(data_dim,), coupling_hidden=(8,), activation="relu").double()
    with torch.no_grad():
        enc.trunk[0].weight.copy_(torch.eye(data_dim))
        enc.trunk[0].bias.fill_(10.0)                           # relu(x + 10) = x + 10 for |x| < 10
        enc.base.weight.zero_()
        enc.base.bias.zero_()
        enc.base.weight[:latent_dim, :].copy_(torch.eye(latent_dim))
        enc.base.bias[:latent_dim].fill_(-10.0)                 # mu = x
        enc.base.bias[latent_dim:].fill_(2 * math.log(scale))   # logvar
        for c in enc.couplings:
            _zero_(c)
    return enc


def _data(n=500, data_dim=3, seed=0, active=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, data_dim, generator=g, dtype=torch.float64)
    if active is not None:
        x[:, active:] = 0.3                                     # constant coordinates: nothing to encode
    return x


def test_flow_at_the_prior_has_no_active_unit_and_zero_mi():
    enc = _flow_at_prior()
    x = _data(data_dim=5)
    means = enc.mean(x)
    assert means.shape == (500, 4)
    au = active_units(means)
    assert au["count"] == 0
    assert float(au["variances"].max()) < 1e-20                 # common random numbers: the same number for every x
    # the old estimator (fresh draws per datapoint) was above the threshold at 64 draws: the bug this guards
    fresh = enc.sample(x, 64)[0].mean(0)
    assert active_units(fresh)["count"] == 4
    model = build_vae("vae", 5, 4, head="gaussian", encoder="realnvp", seed=0).double()
    model.encoder = enc
    assert encoder_mutual_information(model, x, seed=0) == pytest.approx(0.0, abs=1e-9)


def test_flow_that_copies_x_counts_exactly_its_informative_units():
    enc = _flow_copying_x(active=2)
    x = _data(data_dim=4, active=2)
    au = active_units(enc.mean(x))
    assert au["count"] == 2
    assert au["variances"][:2].min() > 0.5 and au["variances"][2:].max() < 1e-12
    torch.testing.assert_close(enc.mean(x), x, atol=5e-3, rtol=0)          # E_q[z|x] = x up to MC error
    model = build_vae("vae", 4, 4, head="gaussian", encoder="realnvp", seed=0).double()
    model.encoder = enc
    mi = encoder_mutual_information(model, x, seed=0)
    assert 3.0 < mi <= math.log(500) + 1e-9                       # two well-separated informative coordinates


def test_flow_mean_is_the_same_across_batches_and_leaves_the_global_rng_alone():
    torch.manual_seed(1)
    enc = ConditionalRealNVP(3, 2, hidden=(8,), coupling_hidden=(8,)).double()
    x = _data(n=40)
    state = torch.get_rng_state()
    whole = enc.mean(x)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(torch.cat([enc.mean(x[:13]), enc.mean(x[13:])]), whole)
    assert not torch.equal(enc.mean(x, seed=1), whole)
    assert MEAN_SAMPLES >= 512 and 1.0 / MEAN_SAMPLES <= 0.01 / 5      # the docstring's noise bound


def test_flow_mean_matches_a_long_monte_carlo_average():
    torch.manual_seed(2)
    enc = ConditionalRealNVP(3, 2, hidden=(8,), coupling_hidden=(8,)).double()
    with torch.no_grad():
        for c in enc.couplings:
            for p in c.parameters():
                p.add_(0.3 * torch.randn_like(p))
    x = _data(n=5)
    torch.manual_seed(3)
    ref = enc.sample(x, 200_000)[0].mean(0)
    torch.testing.assert_close(enc.mean(x, n_samples=20_000), ref, atol=0.03, rtol=0)


def test_evaluators_report_no_active_unit_for_a_collapsed_flow():
    x = _data(n=300, data_dim=5)
    model = build_vae("vae", 5, 4, head="gaussian", encoder="realnvp", seed=0).double()
    model.encoder = _flow_at_prior()
    ev = evaluate(model, x, seed=0)
    assert ev["au"] == 0
    mix = build_mixture_vae("gmvae", 5, 4, 2, head="gaussian", depth=1, encoder="realnvp", seed=0).double()
    _zero_(mix.encoder.base)
    for c in mix.encoder.couplings:
        _zero_(c)
    assert evaluate_mixture(mix, x, iwae_samples=0, seed=0)["AU_w"] == 0


def test_mi_from_log_density_bad_input():
    with pytest.raises(ValueError):
        mutual_information_from_log_density(torch.zeros(3, 2))
    with pytest.raises(ValueError):
        mutual_information_from_log_density(torch.zeros(1, 1))
    with pytest.raises(ValueError):
        mutual_information_from_log_density(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    assert mutual_information_from_log_density(torch.zeros(4, 4)) == pytest.approx(0.0)
    # a perfectly informative code: each z_i is impossible under every other x_j -> log N
    m = torch.full((4, 4), -1e4).fill_diagonal_(0.0)
    assert mutual_information_from_log_density(m) == pytest.approx(math.log(4))
