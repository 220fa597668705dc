"""The shared ELBO training loop: learning, determinism, checkpoint/resume, NaN guard, input checks."""
import math

import numpy as np
import pytest
import torch

from lidvae_mini.models import loop as loop_mod
from lidvae_mini.models import train as train_mod
from lidvae_mini.data.pinwheel import make_pinwheel
from lidvae_mini.models.train import CHECKPOINT_FILE, HISTORY_KEYS, NonFiniteLossError, evaluate, fit, load_checkpoint
from lidvae_mini.models.vae import build_vae

SMALL = dict(encoder_hidden=(16,), hidden1=(8,), hidden2=(8,))


@pytest.fixture(scope="module")
def pinwheel():
    x, _ = make_pinwheel(60, scale=1.0, seed=0)
    xv, _ = make_pinwheel(20, scale=1.0, seed=1)
    return x, xv


def _model(kind="lidvae", seed=0, **kw):
    return build_vae(kind, 2, 2, "gaussian", seed=seed, **SMALL, **kw)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("kind", ["vae", "lidvae"])
def test_training_decreases_negative_elbo(pinwheel, kind):
    x, xv = pinwheel
    model = _model(kind)
    torch.manual_seed(0)
    before = evaluate(model, torch.as_tensor(xv))["neg_elbo"]
    hist = fit(model, x, xv, epochs=8, batch_size=50, lr=1e-2, seed=0, eval_every=1)
    assert set(hist) == set(HISTORY_KEYS) and len(hist["epoch"]) == 8
    assert hist["valid_neg_elbo"][-1] < before - 0.1
    assert np.mean(hist["train_neg_elbo"][-3:]) < np.mean(hist["train_neg_elbo"][:3])
    assert all(0 <= au <= 2 for au in hist["valid_au"])


def test_same_seed_same_numbers(pinwheel):
    x, xv = pinwheel
    runs = []
    for _ in range(2):
        model = _model("vae", seed=3)
        hist = fit(model, x, xv, epochs=2, batch_size=40, lr=1e-2, seed=5)
        runs.append((_params(model), {k: v for k, v in hist.items() if k != "seconds"}))
    assert _same(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    other = _model("vae", seed=3)
    fit(other, x, xv, epochs=2, batch_size=40, lr=1e-2, seed=6)
    assert not _same(runs[0][0], _params(other))


def test_fit_leaves_the_callers_rng_alone(pinwheel):
    x, _ = pinwheel
    state = torch.get_rng_state()
    fit(_model("vae"), x, epochs=1, batch_size=60, seed=0)
    assert torch.equal(state, torch.get_rng_state())


def test_interrupted_and_resumed_run_equals_uninterrupted(pinwheel, tmp_path):
    x, xv = pinwheel
    ref = _model()
    ref_hist = fit(ref, x, xv, epochs=4, batch_size=40, lr=1e-2, seed=1)

    # interrupt the first attempt in the middle of epoch 3 (as a kill would): the decoder runs once per
    # training batch and once per validation pass
    model = _model()
    n_batches = math.ceil(len(x) / 40)
    calls = {"n": 0}

    def interrupt(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 2 * (n_batches + 1) + 2:
            raise KeyboardInterrupt

    handle = model.decoder.register_forward_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        fit(model, x, xv, epochs=4, batch_size=40, lr=1e-2, seed=1, checkpoint_dir=tmp_path)
    handle.remove()
    assert load_checkpoint(tmp_path)["epoch"] == 2
    assert not list(tmp_path.glob("*.tmp"))

    resumed = _model()                       # a fresh process: new model, same construction
    hist = fit(resumed, x, xv, epochs=4, batch_size=40, lr=1e-2, seed=1, checkpoint_dir=tmp_path)
    assert _same(_params(resumed), _params(ref))
    for key in HISTORY_KEYS:
        if key != "seconds":
            assert hist[key] == ref_hist[key], key
    # a finished run resumes to the same state without training
    again = _model()
    fit(again, x, xv, epochs=4, batch_size=40, lr=1e-2, seed=1, checkpoint_dir=tmp_path)
    assert _same(_params(again), _params(ref))


def test_resume_with_other_settings_raises(pinwheel, tmp_path):
    x, _ = pinwheel
    fit(_model(), x, epochs=1, batch_size=60, lr=1e-2, seed=0, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different settings"):
        fit(_model(), x, epochs=2, batch_size=60, lr=1e-3, seed=0, checkpoint_dir=tmp_path)
    fit(_model(), x, epochs=1, batch_size=60, lr=1e-3, seed=0, checkpoint_dir=tmp_path, resume=False)


def test_checkpoint_is_loaded_with_weights_only(pinwheel, tmp_path, monkeypatch):
    x, _ = pinwheel
    fit(_model(), x, epochs=1, batch_size=60, seed=0, checkpoint_dir=tmp_path)
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    fit(_model(), x, epochs=2, batch_size=60, seed=0, checkpoint_dir=tmp_path)
    assert seen == [True]
    state = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert state["epoch"] == 2 and set(state) >= {"model", "optimizer", "torch_rng", "data_rng", "history"}


def test_nan_guard_raises_and_keeps_last_good_checkpoint(pinwheel, tmp_path):
    x, _ = pinwheel
    model = _model()
    fit(model, x, epochs=1, batch_size=60, lr=1e-2, seed=0, checkpoint_dir=tmp_path)
    good = load_checkpoint(tmp_path)
    handle = model.decoder.register_forward_hook(lambda m, i, o: o * float("nan"))
    with pytest.raises(NonFiniteLossError, match="epoch 2") as info:
        fit(model, x, epochs=3, batch_size=60, lr=1e-2, seed=0, checkpoint_dir=tmp_path)
    handle.remove()
    assert info.value.epoch == 2 and info.value.checkpoint == tmp_path / CHECKPOINT_FILE
    kept = load_checkpoint(tmp_path)
    assert kept["epoch"] == 1
    for k, v in good["model"].items():
        assert torch.equal(kept["model"][k], v) and torch.isfinite(v).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())   # the bad update was not applied
    # the checks run on the device and are read every finite_check_every steps: on a divergence the model and the
    # optimizer are restored to the start of the failing epoch, here the last checkpoint
    assert all(torch.equal(v, good["model"][k]) for k, v in model.state_dict().items())


def test_huge_learning_rate_is_caught(pinwheel):
    x, _ = pinwheel
    model = _model("vae")
    with pytest.raises(NonFiniteLossError):
        fit(model, x * 1e3, epochs=20, batch_size=30, lr=1e12, grad_clip=None, optimizer="sgd", seed=0)


def test_dynamic_binarization_for_bernoulli():
    rng = np.random.default_rng(0)
    x = rng.random((64, 12)).astype(np.float32)
    model = build_vae("lidvae", 12, 3, "bernoulli", seed=0, **SMALL)
    with pytest.raises(ValueError, match="binary"):
        fit(model, x, epochs=1, batch_size=32)
    hist = fit(model, x, x[:16], epochs=2, batch_size=32, binarize="dynamic", seed=0)
    assert all(math.isfinite(v) for v in hist["valid_neg_elbo"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit(model, x + 1.0, epochs=1, batch_size=32, binarize="dynamic")


@pytest.mark.parametrize("kwargs,exc", [(dict(optimizer="adagrad"), ValueError), (dict(binarize="static"), ValueError),
                                        (dict(batch_size=0), ValueError), (dict(lr=-1.0), ValueError),
                                        (dict(epochs=1.5), ValueError), (dict(grad_clip=0.0), ValueError)])
def test_bad_settings_raise(pinwheel, kwargs, exc):
    x, _ = pinwheel
    args = dict(epochs=1, batch_size=60)
    args.update(kwargs)
    with pytest.raises(exc):
        fit(_model("vae"), x, **args)


def test_bad_data_raise(pinwheel):
    x, _ = pinwheel
    with pytest.raises(ValueError, match="shape"):
        fit(_model("vae"), x[:, :1], epochs=1)
    with pytest.raises(ValueError):
        fit(_model("vae"), x[0], epochs=1)
    with pytest.raises(TypeError):
        fit(_model("vae"), np.array([["a", "b"]]), epochs=1)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit(_model("vae"), bad, epochs=1)
    with pytest.raises(ValueError, match="valid_x"):
        fit(_model("vae"), x, x[:, :1], epochs=1)


def test_progress_is_silent_when_disabled(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert loop_mod.show_progress(None) is False
    assert loop_mod.show_progress(True) is True
    monkeypatch.delenv("TQDM_DISABLE")
    assert loop_mod.show_progress(False) is False
