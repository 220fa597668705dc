"""Baselines: SA-VAE refinement improves the ELBO and trains the encoder through the refinement; aggressive training
stops its inner loop and its phase as He et al. specify; model selection restores the best epoch; bad input raises."""
import math

import pytest
import torch

from lidvae_mini.models import baselines as B
from lidvae_mini.models.baselines import (SAMixtureVAE, SAVAE, encoder_inner_loop, encoder_mutual_information,
                                          fit_aggressive, fit_baseline, gaussian_elbo, sa_vae_loss, semi_amortized,
                                          svi_refine)
from lidvae_mini.models.mixture import build_mixture_vae, evaluate_mixture
from lidvae_mini.models.train import HISTORY_KEYS, evaluate, fit
from lidvae_mini.models.vae import build_vae

D = 20


def _binary_data(n, seed):
    """Noisy copies (10% flipped bits) of four fixed binary prototypes in 20 dimensions."""
    protos = (torch.rand(4, D, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(4, (n,), generator=g)
    return (protos[idx] != (torch.rand(n, D, generator=g) < 0.1)).float()


@pytest.fixture(scope="module")
def data():
    return _binary_data(300, 1), _binary_data(60, 2)


def _vae(seed=0, **kw):
    return build_vae("vae", D, 2, "bernoulli", encoder_hidden=(16,), hidden1=(4,), hidden2=(16,), seed=seed, **kw)


def _mixture(kind="gmvae", seed=0):
    return build_mixture_vae(kind, D, 2, 3, "bernoulli", 1, encoder="gaussian", encoder_hidden=(16,),
                             cluster_hidden=(16,), icnn_width=8, seed=seed)


@pytest.fixture(scope="module")
def trained_vae(data):
    x, xv = data
    model = _vae()
    fit(model, x, xv, epochs=4, batch_size=50, lr=1e-2, seed=0)
    return model


# ------------------------------------------------------------------------------------------------- SA-VAE
def test_svi_refinement_increases_the_per_datapoint_elbo(trained_vae, data):
    """The purpose of SVI: starting from the encoder's q, 20 steps raise the per-datapoint ELBO (common noise).

    Stochastic steps (one draw each) do not raise every single datapoint's ELBO, but most, and the mean."""
    model, xb = trained_vae, data[1][:10]
    with torch.no_grad():
        mu0, lv0 = model.encoder(xb)
    mu, lv, trace = svi_refine(model, xb, mu0, lv0, svi_steps=20, generator=torch.Generator().manual_seed(0))
    assert len(trace) == 20 and not mu.requires_grad
    elbos = []
    for m, v in ((mu0, lv0), (mu, lv)):
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(0)                     # the same 1000 draws of eps for both posteriors
            elbos.append(gaussian_elbo(model, xb, m, v, n_samples=1000))
    gain = elbos[1] - elbos[0]
    assert (gain > 0).float().mean() >= 0.7, gain
    assert gain.mean() > 0.01, gain


def test_svi_with_zero_steps_is_the_identity(trained_vae, data):
    xb = data[1][:5]
    with torch.no_grad():
        mu0, lv0 = trained_vae.encoder(xb)
    mu, lv, trace = svi_refine(trained_vae, xb, mu0, lv0, svi_steps=0)
    assert trace == [] and torch.equal(mu, mu0) and torch.equal(lv, lv0)


def test_unrolled_derivative_is_exact():
    """create_graph=True differentiates the unrolled SVI exactly: compare with central finite differences."""
    model = _vae(seed=1).double()
    xb = _binary_data(4, 3).double()
    with torch.no_grad():
        mu0, lv0 = model.encoder(xb)

    def final(m0):
        mu, lv, _ = svi_refine(model, xb, m0, lv0, svi_steps=5, clip=None, create_graph=True,
                               generator=torch.Generator().manual_seed(7))
        out = mu.sum() + 0.3 * lv.sum()
        return out if m0.requires_grad else float(out.detach())

    m0 = mu0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(final(m0), m0)
    h = 1e-6
    for i, k in ((0, 0), (2, 1)):
        e = torch.zeros_like(mu0)
        e[i, k] = h
        fd = (final(mu0 + e) - final(mu0 - e)) / (2 * h)
        assert abs(float(grad[i, k]) - float(fd)) < 1e-5 * max(1.0, abs(float(fd)))
    assert not torch.allclose(grad, torch.ones_like(grad))        # the refinement depends on where it starts


@pytest.mark.parametrize("make", [lambda: _vae(), lambda: _mixture()], ids=["vae", "gmvae"])
def test_gradients_reach_the_encoder_only_through_the_refinement(make, data):
    xb = data[0][:20]
    grads = {}
    for n2n in (True, False):
        sa = semi_amortized(make(), svi_steps=3, train_n2n=n2n, train_kl=False)
        torch.manual_seed(0)
        loss, parts = sa.loss(xb)
        loss.backward()
        enc = [p.grad for p in sa.encoder.parameters()]
        grads[n2n] = sum(0.0 if g is None else float(g.abs().sum()) for g in enc)
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in sa.decoder.parameters())
        assert set(parts) >= {"elbo", "rec", "kl", "elbo_init", "kl_init_final"}
        assert all(v.shape == (20,) for v in parts.values())
    assert grads[True] > 0
    assert grads[False] == 0.0


def test_train_kl_pulls_the_encoder_toward_the_refined_posterior(data):
    sa = semi_amortized(_vae(), svi_steps=3, train_n2n=False, train_kl=True)
    loss, parts = sa.loss(data[0][:20])
    loss.backward()
    assert (parts["kl_init_final"] >= 0).all()
    assert sum(float(p.grad.abs().sum()) for p in sa.encoder.parameters()) > 0


def test_sa_vae_trains_with_fit_and_its_refined_view_is_consistent(data):
    x, xv = data
    sa = semi_amortized(_vae(), svi_steps=4)
    assert isinstance(sa, SAVAE)
    hist = fit(sa, x[:100], xv, epochs=2, batch_size=50, lr=1e-2, seed=0)
    assert set(hist) == set(HISTORY_KEYS) and all(math.isfinite(v) for v in hist["valid_neg_elbo"])
    view = sa.refined_view(seed=0, batch_size=50)
    assert view.encoder.base is sa.encoder and view.decoder is sa.decoder
    xv = xv.to(torch.get_default_dtype())
    with torch.no_grad():
        a, b = view.encoder(xv), view.encoder(xv)       # the refinement noise is seeded: same q every call
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ev = evaluate(view, xv, iwae_samples=5, seed=0)
    assert ev["iwae_ll"] >= -ev["neg_elbo"] - 0.5
    assert math.isfinite(encoder_mutual_information(view, xv))


def test_sa_mixture_loss_and_refined_view(data):
    sa = semi_amortized(_mixture(), svi_steps=3)
    assert isinstance(sa, SAMixtureVAE) and sa.num_clusters == 3
    loss, parts = sa.loss(data[0][:10])
    assert torch.isfinite(loss) and torch.allclose(parts["kl"], parts["kl_y"] + parts["kl_w"])
    ev = evaluate_mixture(sa.refined_view(batch_size=10), data[1][:12], torch.arange(12) % 4, iwae_samples=3, seed=0)
    assert math.isfinite(ev["iwae_ll"]) and 0 <= ev["acc_hungarian"] <= 1


def test_sa_vae_bad_inputs_raise(trained_vae, data):
    xb = data[0][:4]
    with torch.no_grad():
        mu0, lv0 = trained_vae.encoder(xb)
    with pytest.raises(ValueError, match="svi_steps"):
        svi_refine(trained_vae, xb, mu0, lv0, svi_steps=-1)
    with pytest.raises(ValueError, match="svi_steps"):
        sa_vae_loss(trained_vae, xb, svi_steps=-2)
    with pytest.raises(ValueError, match="svi_steps"):
        semi_amortized(_vae(), svi_steps=-1)
    with pytest.raises(ValueError, match="momentum"):
        svi_refine(trained_vae, xb, mu0, lv0, momentum=1.0)
    with pytest.raises(ValueError, match="svi_lr"):
        svi_refine(trained_vae, xb, mu0, lv0, svi_lr=0)
    with pytest.raises(ValueError, match="shape"):
        svi_refine(trained_vae, xb, mu0[:2], lv0[:2])
    with pytest.raises(TypeError, match="Gaussian"):
        semi_amortized(build_vae("vae", D, 2, "bernoulli", encoder="realnvp", encoder_hidden=(8,), hidden1=(4,),
                                 hidden2=(8,), seed=0))


# ------------------------------------------------------------------------------------------- aggressive
def _scripted(losses):
    it = iter(losses)
    calls = []

    def step():
        calls.append(1)
        return next(it) * 10, 10              # (loss sum, batch size)
    return step, calls


def test_inner_loop_stops_when_the_15_step_loss_rises():
    step, calls = _scripted([100 - k for k in range(30)] + [200] * 100)
    assert encoder_inner_loop(step, max_inner_steps=100, check_every=15) == 45 == len(calls)


def test_inner_loop_never_exceeds_100_steps():
    step, calls = _scripted([1000 - k for k in range(500)])       # always improving
    assert encoder_inner_loop(step) == 100 == len(calls)
    step, _ = _scripted([5.0] * 500)                             # flat: a tie is not a rise
    assert encoder_inner_loop(step, max_inner_steps=100, check_every=15) == 100


def test_aggressive_phase_ends_when_mi_stops_improving(data):
    x, xv = data
    mis = iter([0.1, 0.2, 0.15, 0.3, 0.4])
    hist = fit_aggressive(_vae(), x[:100], xv, epochs=5, batch_size=50, lr=1e-2, seed=0, max_inner_steps=6,
                          check_every=3, mi_fn=lambda m, v: next(mis))
    assert hist["aggressive"] == [True, True, True, False, False]
    assert hist["epoch"] == [1, 2, 3, 4, 5]
    assert all(1 <= s <= 6 for s in hist["inner_steps_max"][:3]) and hist["inner_steps_max"][3:] == [0, 0]
    assert hist["valid_mi"][:3] == [0.1, 0.2, 0.15] and all(math.isnan(v) for v in hist["valid_mi"][3:])
    assert all(math.isfinite(v) for v in hist["valid_neg_elbo"])
    assert set(hist) >= set(HISTORY_KEYS) | set(B.AGGRESSIVE_KEYS)


def test_aggressive_inner_steps_only_move_the_encoder(data, monkeypatch):
    """During the inner loop the decoder (and mixture prior) stays fixed; only the decoder step moves them."""
    x, xv = data
    model = _mixture()
    dec0 = [p.detach().clone() for n, p in model.named_parameters() if not n.startswith(("encoder", "cluster_net"))]
    seen = []
    real = B.encoder_inner_loop

    def spy(step_fn, max_inner_steps, check_every):
        n = real(step_fn, max_inner_steps, check_every)
        dec = [p for n_, p in model.named_parameters() if not n_.startswith(("encoder", "cluster_net"))]
        seen.append(all(torch.equal(a, b) for a, b in zip(dec0, dec)))
        return n

    monkeypatch.setattr(B, "encoder_inner_loop", spy)
    hist = fit_aggressive(model, x[:50], xv, epochs=1, batch_size=50, lr=1e-2, max_inner_steps=4, check_every=2)
    assert seen == [True] and hist["inner_steps_max"][0] >= 1
    assert math.isfinite(hist["valid_mi"][0])                    # I_q(x; (y, w)), a Monte Carlo estimate


def test_select_best_restores_the_best_validation_epoch(data):
    x, xv = data
    model = _vae(seed=2)
    hist = fit_baseline("elbo", model, x[:100], xv, select_best=True, epochs=4, batch_size=50, lr=0.05, seed=3)
    best = min(range(4), key=lambda i: hist["valid_neg_elbo"][i])
    assert hist["selected"] == [i == best for i in range(4)]
    ref = _vae(seed=2)
    fit(ref, x[:100], xv, epochs=best + 1, batch_size=50, lr=0.05, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))


def test_dispatch_and_bad_inputs_raise(data):
    x, xv = data
    with pytest.raises(ValueError, match="trainer"):
        fit_baseline("lagging", _vae(), x, xv)
    with pytest.raises(TypeError, match="semi_amortized"):
        fit_baseline("sa_vae", _vae(), x, xv, epochs=1)
    with pytest.raises(ValueError, match="valid_x"):
        fit_aggressive(_vae(), x, None)
    with pytest.raises(ValueError, match="max_inner_steps"):
        fit_aggressive(_vae(), x, xv, max_inner_steps=0)
    with pytest.raises(ValueError, match="binarize"):
        fit_aggressive(_vae(), x, xv, binarize="static")
    with pytest.raises(ValueError, match="check_every"):
        encoder_inner_loop(lambda: (1.0, 1), check_every=0)


# -------------------------------------------------------------------------------------- mixture MI
def test_mixture_mutual_information_matches_a_direct_computation(data):
    model = _mixture(seed=4)
    x = data[1][:7]
    mi = B.mixture_mutual_information(model, x, seed=3)
    # direct: recompute q and the same draws, then the densities by explicit loops
    with torch.no_grad():
        q = model.cluster_probs(x).double()
        mu, lv = (t.double().reshape(3, 7, 2) for t in model.encoder(model._context(x)))
    with torch.random.fork_rng():
        torch.manual_seed(3)
        y = torch.multinomial(q, 1).squeeze(1)
        eps = torch.randn(7, 2, dtype=torch.float64)
    w = torch.stack([mu[y[i], i] + torch.exp(0.5 * lv[y[i], i]) * eps[i] for i in range(7)])
    normal = torch.distributions.Normal

    def comp(i, c, n):      # log q(y=c|x_n) + log N(w_i; mu_nc, sigma_nc)
        return math.log(q[n, c]) + float(normal(mu[c, n], torch.exp(0.5 * lv[c, n])).log_prob(w[i]).sum())

    def lse(values):
        return float(torch.logsumexp(torch.tensor(values, dtype=torch.float64), 0))

    mi_joint = sum(comp(i, y[i], i) - (lse([comp(i, y[i], n) for n in range(7)]) - math.log(7)) for i in range(7)) / 7
    mi_w = sum(lse([comp(i, c, i) for c in range(3)])
               - (lse([comp(i, c, n) for c in range(3) for n in range(7)]) - math.log(7)) for i in range(7)) / 7
    assert mi["MI"] == pytest.approx(float(mi_joint), abs=1e-8)
    assert mi["MI_w"] == pytest.approx(float(mi_w), abs=1e-8)
    marg = q.mean(0)
    assert mi["MI_y"] == pytest.approx(float(-(marg * marg.log()).sum() + (q * q.log()).sum(1).mean()), abs=1e-10)


def test_mixture_mutual_information_is_zero_for_an_encoder_that_ignores_x(data):
    model = _mixture(seed=5)
    with torch.no_grad():
        model.cluster_net[0].weight.zero_()
        model.encoder.net[0].weight[:, :D] = 0.0          # q(w|x, y) depends on y only
    mi = B.mixture_mutual_information(model, data[1], seed=0)
    assert abs(mi["MI"]) < 1e-9 and abs(mi["MI_w"]) < 1e-9 and mi["MI_y"] < 1e-12


def test_mixture_mutual_information_with_a_realnvp_q_matches_a_direct_computation(data):
    """The RealNVP q(w|x, y) of the image rows: the same estimator, with exact flow densities (enc.log_prob)."""
    from lidvae_mini.evaluation.metrics import _seeded

    model = build_mixture_vae("gmvae", D, 3, 3, "bernoulli", 1, encoder="realnvp", encoder_hidden=(16,),
                              cluster_hidden=(16,), icnn_width=8, seed=4).double()
    with torch.no_grad():                                   # non-trivial couplings (they start as the identity)
        g = torch.Generator().manual_seed(0)
        for layer in model.encoder.couplings:
            layer.net[-1].weight.copy_(0.3 * torch.randn(layer.net[-1].weight.shape, generator=g))
            layer.net[-1].bias.copy_(0.3 * torch.randn(layer.net[-1].bias.shape, generator=g))
    x = data[1][:7].double()
    mi = B.mixture_mutual_information(model, x, seed=3)
    C, N, K = 3, 7, 3
    with torch.no_grad():
        q = model.cluster_probs(x)
        mu, lv, h = model.encoder.base_params(model._context(x))
        mu, lv, h = mu.reshape(C, N, K), lv.reshape(C, N, K), h.reshape(C, N, -1)
        with _seeded(3, x.device):
            y = torch.multinomial(q, 1).squeeze(1)
            eps = torch.randn(N, K, dtype=torch.float64)
        idx = torch.arange(N)
        w = model.encoder.flow(mu[y, idx] + torch.exp(0.5 * lv[y, idx]) * eps, h[y, idx])[0]

        def comp(i, c, n):      # log q(y=c|x_n) + log q(w_i|x_n, c), by the encoder's own log_prob
            return math.log(q[n, c]) + float(model.encoder.log_prob(w[i:i + 1], model._context(x[n:n + 1], c)))

    def lse(values):
        return float(torch.logsumexp(torch.tensor(values, dtype=torch.float64), 0))

    with torch.no_grad():
        mi_joint = sum(comp(i, int(y[i]), i) - (lse([comp(i, int(y[i]), n) for n in range(N)]) - math.log(N))
                       for i in range(N)) / N
        mi_w = sum(lse([comp(i, c, i) for c in range(C)])
                   - (lse([comp(i, c, n) for c in range(C) for n in range(N)]) - math.log(N)) for i in range(N)) / N
    assert mi["MI"] == pytest.approx(mi_joint, abs=1e-8) and mi["MI_w"] == pytest.approx(mi_w, abs=1e-8)
    assert mi["MI"] != pytest.approx(0.0, abs=1e-3)


# ---------------------------------------------------------------------------------- image rows (ch. 08)
def test_image_rows_use_realnvp_except_sa_vae_and_name_their_prior():
    """The supplement's two-layer RealNVP q(w|x, y) for every row that allows it; SA-VAE's SVI needs a Gaussian."""
    from lidvae_mini.models.baselines import IMAGE_METHODS, build_method, method_spec
    from lidvae_mini.models.encoders import ConditionalRealNVP, GaussianEncoder

    for m in IMAGE_METHODS:
        spec = method_spec(m)
        model = build_method(m, D, 4, 3, seed=0, hidden=(8,), icnn_width=8)
        enc = model.encoder
        assert isinstance(enc, GaussianEncoder if m == "sa_vae" else ConditionalRealNVP), m
        assert spec["encoder"] == ("gaussian" if m == "sa_vae" else "realnvp")
        if m != "vae":
            assert model.prior == spec["prior"], m
    assert method_spec("lidgmvae")["prior"] == "example1" and method_spec("lidgmvae_learned")["prior"] == "learned"
    assert method_spec("gmvae_example1") == {"kind": "gmvae", "trainer": "elbo", "prior": "example1",
                                             "encoder": "realnvp", "decoder": "mlp", "beta": None}
    assert method_spec("lidgmvae")["beta"] == "fixed" and method_spec("lidgmvae_learned_lbeta")["beta"] == "learned"
    assert all(method_spec(m, "gaussian")["encoder"] == "gaussian" for m in IMAGE_METHODS)
    with pytest.raises(ValueError, match="num_clusters = 10 > latent_dim = 8"):
        build_method("lidgmvae", D, 8, 10)
    with pytest.raises(ValueError, match="encoder"):
        method_spec("gmvae", "flow")


def test_semi_amortized_keeps_an_example1_prior(data):
    model = build_mixture_vae("gmvae", D, 3, 3, "bernoulli", 1, encoder="gaussian", encoder_hidden=(16,),
                              cluster_hidden=(16,), icnn_width=8, prior="example1", seed=0)
    sa = semi_amortized(model, svi_steps=2)
    view = sa.refined_view(batch_size=10)
    for m in (sa, view):
        assert m.prior == "example1" and not m.learn_prior
        torch.testing.assert_close(m.prior_means, model.prior_means)
    assert math.isfinite(float(sa.loss(data[1][:8])[0].detach()))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_run(a: dict, b: dict, ha: dict, hb: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert set(ha) == set(hb)
    for k in ha:
        if k != "seconds":
            assert [repr(v) for v in ha[k]] == [repr(v) for v in hb[k]], k


@pytest.mark.parametrize("stop_after", [1, 3])       # in the aggressive phase; in the standard phase after it
@pytest.mark.parametrize("select_best", [False, True])
def test_aggressive_training_interrupted_and_resumed_equals_uninterrupted(data, tmp_path, stop_after, select_best):
    """Both phases checkpoint through the one loop: a run stopped after ``stop_after`` epochs and resumed from its
    checkpoints ends bitwise where an uninterrupted one does (the phase ends after epoch 2: a constant MI)."""
    x, xv = data
    kw = dict(batch_size=50, lr=1e-2, seed=0, max_inner_steps=4, check_every=2, mi_fn=lambda m, v: 0.0,
              select_best=select_best)
    ref = _vae()
    h_ref = fit_aggressive(ref, x[:100], xv, epochs=5, **kw)
    assert h_ref["aggressive"] == [True, True, False, False, False]
    fit_aggressive(_vae(), x[:100], xv, epochs=stop_after, checkpoint_dir=tmp_path, **kw)
    resumed = _vae(seed=5)                                  # another initialisation: the checkpoint must replace it
    h = fit_aggressive(resumed, x[:100], xv, epochs=5, checkpoint_dir=tmp_path, **kw)
    _same_run(_state(ref), _state(resumed), h_ref, h)
