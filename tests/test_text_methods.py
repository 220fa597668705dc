"""lidvae_mini.experiments.text_methods: the text rows of 09_text, the decision rule of its decoder comparison, keep_best."""
import pytest
import torch

from lidvae_mini.data.text import length_batches, load_yelp, make_synthetic_text
from lidvae_mini.models.text import build_text_vae, elbo_eval, fit_text
from lidvae_mini.experiments.text_methods import (LIDSVAE_DECODERS, TEXT_METHODS, build_text_method, decoder_verdicts,
                                                  generator_ceiling, run_corpus, run_text_method, seed_tables,
                                                  seed_verdicts, text_findings)

SMALL = dict(embed_dim=8, enc_hidden=8, dec_hidden=8, icnn_hidden=((8,), (8,)))


@pytest.fixture(scope="module")
def synth():
    return make_synthetic_text(120, 40, 40, seed=0, vocab_size=50)


def test_every_method_builds_with_its_decoder(synth):
    V = len(synth.vocab)
    for m in TEXT_METHODS:
        model = build_text_method(m, V, 3, **SMALL)
        if m in LIDSVAE_DECODERS:
            assert (model.decoder.lift is None) == (LIDSVAE_DECODERS[m] == "fixed")
        assert model.beta == (0.2 if m == "beta_vae" else 1.0)
    with pytest.raises(ValueError, match="method"):
        build_text_method("lidvae", V, 3)


def test_keep_best_restores_the_epoch_of_the_lowest_validation_loss(synth):
    tr = length_batches(synth.train, 16, shuffle=True, seed=0)
    va = length_batches(synth.valid, 100)
    torch.manual_seed(0)
    m = build_text_vae("vae", len(synth.vocab), latent_dim=3, **SMALL)
    h = fit_text(m, tr, va, epochs=4, lr=0.05, seed=0, keep_best=True)  # a large step size: the curve is not monotone
    best = min(range(4), key=lambda i: h["valid_nelbo"][i])
    assert h["best_epoch"] == best + 1
    assert -elbo_eval(m, va, seed=0)["elbo"] == pytest.approx(h["valid_nelbo"][best], rel=1e-6)
    with pytest.raises(ValueError, match="keep_best needs"):
        fit_text(m, tr, None, epochs=1, keep_best=True)


def test_run_text_method_reports_curve_and_recovery(synth):
    model, ev, hist = run_text_method("lidsvae_learned_init", synth, latent_dim=3, epochs=2, lr=3e-3, seed=0,
                                      iwae_samples=5, knn_k=5, **SMALL)
    assert len(ev["valid_nelbo"]) == 2 and 1 <= ev["best_epoch"] <= 2
    assert {"r2", "r2_knn", "iwae", "au"} <= set(ev) and ev["knn_k"] == 5
    again = run_text_method("lidsvae_learned_init", synth, latent_dim=3, epochs=2, lr=3e-3, seed=0, iwae_samples=5,
                            knn_k=5, **SMALL)[1]
    assert again["iwae"] == ev["iwae"] and again["valid_nelbo"] == ev["valid_nelbo"]  # seeded
    ceiling = generator_ceiling({"lidsvae_learned_init": model}, synth, 5, n_samples=50, iwae_samples=5)
    assert ceiling["n_sentences"] == 5 and ceiling["generator"] > ceiling["models"]["lidsvae_learned_init"]
    assert ceiling["generator_given_true_z"] > ceiling["generator"] - 5  # the true z explains the sentence
    with pytest.raises(ValueError, match="n_sentences"):
        generator_ceiling({}, synth, 41)


def test_run_corpus_runs_every_row_on_a_labelled_corpus(tmp_path):
    """A Yelp-format corpus (label<TAB>text, no true latents) through the rows 09_text runs on Yahoo and Yelp."""
    (tmp_path / "yelp").mkdir()
    words = "the food was good bad service never again great place slow staff".split()
    rng = torch.Generator().manual_seed(0)
    for name, n in (("yelp.train.txt", 60), ("yelp.valid.txt", 20), ("yelp.test.txt", 20)):
        lines = (" ".join(words[i] for i in torch.randint(len(words), (6,), generator=rng)) for _ in range(n))
        (tmp_path / "yelp" / name).write_text("".join(f"{j % 5}\t{t}\n" for j, t in enumerate(lines)))
    data = load_yelp(tmp_path, n_train=50)
    assert len(data.train) == 50 and data.test.z is None
    methods = ["vae", "lidsvae"]
    with pytest.raises(ValueError, match="method"):
        run_corpus(methods + ["lidvae"], data, latent_dim=2, epochs=1, lr=3e-3, seed=0)  # refused before training
    models, res, hist = run_corpus(methods, data, latent_dim=2, epochs=1, lr=3e-3, seed=0, iwae_samples=3, **SMALL)
    assert list(models) == list(res) == list(hist) == methods
    assert all({"iwae", "au", "valid_nelbo"} <= set(v) and "r2" not in v for v in res.values())


def test_seed_tables_and_findings_cover_the_datasets_present():
    def agg(values):
        return {"mean": sum(values) / len(values), "sd": 0.0, "n": len(values), "values": values}

    def rows(iwae_vae, iwae_lid):
        return {k: {"iwae": agg(iw), "au": agg(au), "kl": agg([1.0, 1.0]), "mi": agg([0.1, -0.1]),
                    "ppl": agg([50.0, 50.0]), "best_epoch": agg([3, 3]), "n_tokens": agg([300.0, 300.0]),
                    "n_sentences": agg([10.0, 10.0]), "valid_nelbo": {"values": [[5.0, 4.0, 4.0]] * 2}}
                for k, iw, au in (("vae", iwae_vae, [0, 0]), ("lidsvae", iwae_lid, [2, 3]))}

    synthetic = rows([-45.0, -45.0], [-45.5, -45.5])
    for k in synthetic:
        synthetic[k] |= {"r2": agg([0.1, 0.1]), "r2_knn": agg([0.05, 0.05])}
    old = {"synthetic": synthetic, "yahoo": rows([-140.0, -141.0], [-150.0, -150.0])}   # a result from before Yelp
    latent_use, recovery, fit = seed_tables(old)
    assert {ds for ds, _ in fit.index} == {"synthetic", "yahoo"} and len(recovery) == 2
    with_yelp = old | {"yelp": rows([-200.0, -200.0], [-200.5, -201.5])}
    assert {ds for ds, _ in seed_tables(with_yelp)[0].index} == {"synthetic", "yahoo", "yelp"}
    assert seed_verdicts(with_yelp, "yelp")["lidsvae"]["fits"] and not seed_verdicts(old, "yahoo")["lidsvae"]["fits"]
    lines = text_findings(with_yelp)
    yelp = [line for line in lines if line.startswith("Yelp, LIDSVAE")]
    assert len(yelp) == 1 and "1.00 nats per sentence below" in yelp[0] and "so it fits" in yelp[0]
    assert any(line.startswith("Yahoo, LIDSVAE") and "does not fit" in line for line in lines)


def test_decoder_verdicts_by_hand():
    res = {"vae": {"iwae": [-100.0, -102.0], "au": [0, 0]},
           "lidsvae": {"iwae": [-110.0, -112.0], "au": [3, 4]},               # 10 nats worse: does not fit
           "lidsvae_learned_init": {"iwae": [-101.0, -102.4], "au": [1, 0]},  # fits (0.7 < 1.5), loses z on seed 1
           "beta_vae": {"iwae": [-90.0, -90.0], "au": [5, 5]}}                # not a LIDSVAE row: ignored
    v = decoder_verdicts(res, n_tokens=30)
    assert set(v) == {"lidsvae", "lidsvae_learned_init"}
    assert v["lidsvae"]["gap"] == pytest.approx(10.0) and not v["lidsvae"]["fits"] and v["lidsvae"]["keeps_latent"]
    lv = v["lidsvae_learned_init"]
    assert lv["margin"] == pytest.approx(1.5) and lv["fits"] and not lv["keeps_latent"] and lv["au_min"] == 0
    with pytest.raises(ValueError, match="reference"):
        decoder_verdicts({"lidsvae": res["lidsvae"]}, 30)
    with pytest.raises(ValueError, match="seeds"):
        decoder_verdicts({"vae": res["vae"], "lidsvae": {"iwae": [-1.0], "au": [1]}}, 30)


def test_fit_text_stops_on_a_non_finite_loss_or_gradient(synth):
    from lidvae_mini.models.text import NonFiniteLossError

    tr = length_batches(synth.train, 16, shuffle=True, seed=0)
    va = length_batches(synth.valid, 100)
    torch.manual_seed(0)
    m = build_text_vae("vae", len(synth.vocab), latent_dim=3, **SMALL)
    before = {k: v.clone() for k, v in m.state_dict().items()}

    def nan_loss(mod, x):
        loss, parts = mod.loss(x)
        return loss * float("nan"), parts

    def nan_gradient(mod, x):   # a finite loss whose gradient is not
        loss, parts = mod.loss(x)
        b = mod.encoder.head.bias
        return loss + 0.0 * torch.sqrt(b - b.detach()).sum(), parts   # sqrt at 0: value 0, gradient inf

    with pytest.raises(NonFiniteLossError, match="loss"):
        fit_text(m, tr, va, epochs=1, loss_fn=nan_loss)
    for kw in ({}, {"aggressive": True, "max_inner_steps": 1}):
        with pytest.raises(NonFiniteLossError, match="gradient"):
            fit_text(m, tr, va, epochs=1, loss_fn=nan_gradient, **kw)
    # nothing was updated: the guard runs before the step
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
