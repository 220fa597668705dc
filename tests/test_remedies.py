"""The remedies of the Example-1 LIDGMVAE's cluster collapse: the trace's statistics against hand computations, the
KL_y warm-up's effect on the loss (and not on the ELBO), the epoch hooks of both trainers, the decision rule on
hand-set numbers, and bad input."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from lidvae_mini.experiments import remedies as R
from lidvae_mini.models.baselines import fit_baseline, run_method
from lidvae_mini.models.mixture import build_mixture_vae

D, K, C = 20, 4, 3


def _data(n, seed):
    protos = (torch.rand(C, D, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(C, (n,), generator=g)
    return (protos[idx] != (torch.rand(n, D, generator=g) < 0.1)).float(), idx


def _lid(seed=0, **kw):
    return build_mixture_vae("lidgmvae", D, K, C, "bernoulli", 1, encoder="gaussian", encoder_hidden=(16,),
                             cluster_hidden=(16,), icnn_width=8, seed=seed, **kw)


class _FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[: x.shape[0]]


def test_cluster_usage_by_hand():
    model = _lid()
    q = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], dtype=torch.float64)
    model.cluster_net = _FixedLogits(torch.log(q).float())
    x = _data(4, 1)[0]
    got = R.cluster_usage(model, x)
    q64 = torch.softmax(torch.log(q).float().double(), -1)
    marg = q64.mean(0)
    h = lambda p: float(-(p * p.log()).sum(-1).mean())     # noqa: E731
    assert got["largest_share"] == pytest.approx(float(marg.max()), abs=1e-6)
    assert got["entropy_y"] == pytest.approx(h(q64), abs=1e-6)
    assert got["MI_y"] == pytest.approx(h(marg[None]) - h(q64), abs=1e-6)
    # one cluster for every x: share 1, no information
    model.cluster_net = _FixedLogits(torch.tensor([[9.0, -9.0, -9.0]] * 4))
    one = R.cluster_usage(model, x)
    assert one["largest_share"] > 0.999 and one["MI_y"] < 1e-6
    with pytest.raises(ValueError, match="at least 2 points"):
        R.cluster_usage(model, x[:1])


def test_likelihood_spread_by_hand_and_zero_for_a_decoder_that_ignores_w():
    model = _lid()
    x = _data(30, 1)[0]
    with torch.no_grad():
        ll = torch.stack([model.decoder.log_prob(x, m.expand(30, K)) for m in model.prior_means])
    assert R.likelihood_spread(model, x) == pytest.approx(float(ll.std(0).mean()), rel=1e-6)
    assert R.likelihood_spread(model, x) > 0

    class Blind(nn.Module):                       # log p(x|w) that does not depend on w
        def log_prob(self, x, w):
            return -x.sum(-1) + 0.0 * w.sum(-1)

    model.decoder = Blind()
    assert R.likelihood_spread(model, x) == 0.0


def test_the_decoder_initialisation_for_sparse_inputs_makes_the_clusters_distinguishable():
    """The measured cause (MNIST: 0.027 nats fixed-beta default against 0.16 with g2_active_inputs = K) on a
    synthetic case: D = 200 pixels of which K = 4 carry g_1(w); the sparse-input initialisation multiplies the
    likelihood spread at initialisation (seeds 0-2)."""
    x = (torch.rand(50, 200, generator=torch.Generator().manual_seed(3)) < 0.3).float()
    for seed in range(3):
        kw = dict(encoder="gaussian", encoder_hidden=(8,), cluster_hidden=(8,), icnn_width=16, seed=seed)
        default = build_mixture_vae("lidgmvae", 200, K, C, "bernoulli", 1, **kw)
        sparse = build_mixture_vae("lidgmvae", 200, K, C, "bernoulli", 1, decoder_kwargs={"g2_active_inputs": K}, **kw)
        assert R.likelihood_spread(sparse, x) > 2 * R.likelihood_spread(default, x), seed


def test_the_kl_y_weight_changes_the_loss_by_exactly_its_share_and_never_the_elbo():
    model = _lid()
    x = _data(16, 1)[0]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        loss1, parts = model.loss(x)
    model.set_kl_y_weight(0.25)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        loss2, parts2 = model.loss(x)
    assert torch.equal(parts["elbo"], parts2["elbo"])
    expected = loss1 - 0.75 * model.beta * parts["kl_y"].mean()
    assert float(loss2.detach()) == pytest.approx(float(expected.detach()), rel=1e-6, abs=1e-6)
    assert float(parts["kl_y"].detach().mean()) > 1e-4           # the case discriminates
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="kl_y weight"):
            model.set_kl_y_weight(bad)


def test_kl_y_warmup_weight():
    assert [R.kl_y_warmup_weight(e, 4) for e in range(1, 8)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert R.kl_y_warmup_weight(1, 1) == 0.0 and R.kl_y_warmup_weight(2, 1) == 1.0
    for bad in ((0, 4), (1, 0)):
        with pytest.raises(ValueError):
            R.kl_y_warmup_weight(*bad)


@pytest.mark.parametrize("trainer", ["elbo", "aggressive"])
def test_epoch_hooks_run_around_every_epoch_of_both_trainers(trainer):
    x, xv = _data(60, 1)[0], _data(20, 2)[0]
    calls = []
    extra = dict(max_inner_steps=3, check_every=2) if trainer == "aggressive" else {}
    hist = fit_baseline(trainer, _lid(), x, xv, select_best=True, epochs=3, batch_size=30, lr=1e-2, seed=0,
                        before_epoch=lambda m, e: calls.append(("before", e)),
                        after_epoch=lambda m, e: calls.append(("after", e)), **extra)
    assert calls == [(w, e) for e in (1, 2, 3) for w in ("before", "after")]
    assert list(hist["epoch"]) == [1, 2, 3]
    calls.clear()                       # the one loop calls them without model selection too
    fit_baseline(trainer, _lid(), x, xv, epochs=2, batch_size=30, lr=1e-2, seed=0,
                 after_epoch=lambda m, e: calls.append(("after", e)), **extra)
    assert calls == [("after", 1), ("after", 2)]


def test_a_hook_that_draws_random_numbers_does_not_change_training():
    """The loop runs every hook in an RNG forked from the training stream."""
    x, xv = _data(60, 1)[0], _data(20, 2)[0]
    a, b = _lid(), _lid()
    fit_baseline("elbo", a, x, xv, epochs=2, batch_size=30, lr=1e-2, seed=0)
    fit_baseline("elbo", b, x, xv, epochs=2, batch_size=30, lr=1e-2, seed=0,
                 before_epoch=lambda m, e: torch.randn(100), after_epoch=lambda m, e: torch.rand(7))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_the_hooks_do_not_change_training():
    """Model selection with a trace gives the same parameters as without one (the trace draws no random numbers)."""
    x, xv = _data(60, 1)[0], _data(20, 2)[0]
    a, b = _lid(), _lid()
    trace = R.ClusterTrace(xv)
    fit_baseline("elbo", a, x, xv, select_best=True, epochs=2, batch_size=30, lr=1e-2, seed=0)
    fit_baseline("elbo", b, x, xv, select_best=True, epochs=2, batch_size=30, lr=1e-2, seed=0,
                 before_epoch=trace.start, after_epoch=trace)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert trace.rows["epoch"] == [0, 1, 2]
    assert set(trace.rows) == set(R.ClusterTrace.KEYS) and all(len(v) == 3 for v in trace.rows.values())


def test_remedy_settings():
    assert R.remedy_settings("none", 16) == {"method": "lidgmvae", "decoder_kwargs": None, "trainer": None,
                                             "warmup_epochs": 0}
    assert R.remedy_settings("decoder_init", 16)["decoder_kwargs"] == {"g2_active_inputs": 16}
    assert R.remedy_settings("kl_y_warmup", 16, 3)["warmup_epochs"] == 3
    assert R.remedy_settings("aggressive", 16)["trainer"] == "aggressive"
    assert R.remedy_settings("learned_beta", 16)["method"] == "lidgmvae_lbeta"
    with pytest.raises(ValueError, match="remedy"):
        R.remedy_settings("dropout", 16)


def _runs(mi, share):
    return {"MI_y": list(mi), "largest_share": list(share)}


def test_the_decision_rule_on_hand_set_numbers():
    none = _runs([0.0, 0.01, 0.0], [1.0, 0.99, 1.0])
    cases = {
        "alive": (_runs([0.5, 0.4, 0.3], [0.2, 0.3, 0.25]), True),
        "one_seed_dead": (_runs([0.5, 0.4, 0.05], [0.2, 0.3, 0.25]), False),        # MI_y below 0.1 once
        "one_big_cluster": (_runs([0.5, 0.4, 0.3], [0.2, 0.6, 0.25]), False),      # a share above 1/2 once
        "gain_not_every_seed": (_runs([0.5, 0.005, 0.3], [0.2, 0.3, 0.25]), False),
    }
    v = R.remedy_verdicts({"none": none, **{k: r for k, (r, _) in cases.items()}})
    for k, (_, expected) in cases.items():
        assert v[k]["keeps_y_active"] is expected, k
    assert v["none"]["keeps_y_active"] is False
    assert v["alive"]["mi_gain"] == pytest.approx(np.mean([0.5, 0.39, 0.3]))
    # the gain threshold alone: every seed up, alive, but a mean gain below 0.05 nats
    small = R.remedy_verdicts({"none": _runs([0.2, 0.2], [0.3, 0.3]), "x": _runs([0.22, 0.23], [0.3, 0.3])})
    assert small["x"]["keeps_y_active"] is False and small["none"]["keeps_y_active"] is True
    with pytest.raises(ValueError, match="'none'"):
        R.remedy_verdicts({"x": none})
    with pytest.raises(ValueError, match="seeds"):
        R.remedy_verdicts({"none": none, "x": _runs([0.0, 0.01], [1.0, 1.0])})


def test_findings_and_table_follow_the_numbers():
    per_seed = {"none": {"MI_y": [0.0, 0.0], "largest_share": [1.0, 1.0], "KL_y": [2.3, 2.3],
                         "acc_hungarian": [0.11, 0.11], "iwae_ll": [-200.0, -201.0],
                         "cluster_verdict": ["identifiable but unused (inference collapse)"] * 2},
                "aggressive": {"MI_y": [0.5, 0.6], "largest_share": [0.2, 0.3], "KL_y": [1.0, 1.1],
                               "acc_hungarian": [0.4, 0.5], "iwae_ll": [-190.0, -191.0],
                               "cluster_verdict": ["identifiable and used"] * 2}}
    text = " ".join(R.remedy_findings(per_seed))
    assert "`aggressive` keeps $y$ active" in text and "does not keep" not in text
    table = R.remedies_table(per_seed)
    assert list(table.index) == ["none", "aggressive"] and list(table["alive"]) == ["no", "yes"]
    assert table.loc["none", "collapse of y"] == "inference ×2" and table.loc["aggressive", "collapse of y"] == "none ×2"
    assert table.loc["aggressive", "MI_y"] == "0.55 ± 0.07" and table.loc["none", "IWAE LL"] == "−200.5 ± 0.7"
    from lidvae_mini.diagnose import VERDICTS

    assert set(R.SHORT_VERDICTS) == set(VERDICTS)
    per_seed["aggressive"]["MI_y"] = [0.5, 0.05]
    assert "no remedy keeps $y$ active" in " ".join(R.remedy_findings(per_seed))


def test_run_remedy_traces_from_initialisation_and_rejects_bad_input():
    x, labels = _data(80, 1)
    xv, xt = _data(20, 2)[0], _data(30, 3)
    data = {"train": (x, labels), "valid": xv, "test": xt}
    kw = dict(latent_dim=K, num_clusters=C, depth=1, epochs=3, batch_size=40, lr=1e-2, hidden=(16,), icnn_width=8,
              iwae_samples=2, encoder="gaussian", seed=0)
    metrics, hist = R.run_remedy("kl_y_warmup", data, warmup_epochs=2, diagnose_points=10, **kw)
    assert hist["trace"]["epoch"] == [0, 1, 2, 3]
    assert 1 / C - 1e-9 <= metrics["largest_share"] <= 1 + 1e-9
    assert metrics["cluster_verdict"] in ("used", "identifiable but unused (inference collapse)",
                                          "non-identifiable (model collapse)", "borderline")
    # none and the warm-up share the initialisation, so their traces start at the same point
    _, hist0 = R.run_remedy("none", data, diagnose_points=0, **kw)
    assert hist0["trace"]["MI_y"][0] == hist["trace"]["MI_y"][0]
    assert hist0["trace"]["MI_y"][1:] != hist["trace"]["MI_y"][1:]
    with pytest.raises(ValueError, match="remedy"):
        R.run_remedy("dropout", data, **kw)


def test_run_method_refuses_settings_that_do_not_fit_the_row():
    x, labels = _data(40, 1)
    data = {"train": (x, labels), "valid": _data(10, 2)[0], "test": _data(10, 3)}
    kw = dict(latent_dim=K, num_clusters=C, epochs=1, hidden=(8,), icnn_width=8, iwae_samples=1)
    with pytest.raises(ValueError, match="MLP decoder"):
        run_method("gmvae", data, decoder_kwargs={"g2_active_inputs": 2}, **kw)
    with pytest.raises(ValueError, match="sa_vae"):
        run_method("lidgmvae", data, trainer="sa_vae", **kw)
    with pytest.raises(ValueError, match="trainer"):
        run_method("lidgmvae", data, trainer="adamw", **kw)


def test_the_trace_figure_draws_one_line_per_seed_and_remedy():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace = {"epoch": [0, 1, 2], "largest_share": [0.1, 0.9, 1.0], "MI_y": [0.0, 0.1, 0.0],
             "entropy_y": [2.3, 1.0, 0.0], "likelihood_spread": [0.0, 1.0, 10.0]}
    axes = R.plot_remedy_traces({"none": [{"trace": trace}] * 2, "aggressive": [{"trace": trace}]})
    assert [len(ax.lines) for ax in axes] == [3, 3, 3]
    assert axes[2].get_yscale() == "log" and min(axes[2].lines[0].get_ydata()) == 1e-3   # 0 drawn at the floor
    plt.close("all")


def test_collapse_timing():
    t1 = {"epoch": [0, 1, 2, 3], "largest_share": [0.1, 0.5, 0.95, 1.0], "likelihood_spread": [0.0, 1.0, 2.0, 9.0]}
    t2 = {"epoch": [0, 1, 2, 3], "largest_share": [0.1, 0.2, 0.2, 0.3], "likelihood_spread": [0.0, 1.0, 2.0, 3.0]}
    assert R.collapse_timing([t1, t2]) == {"epoch": [2, None], "spread_then": [2.0, None], "spread_max": [9.0, 3.0]}
