"""The GPU-efficient training loop (issue 9 §2): the same numbers as the old loop on CPU, no host read per step,
the NaN guard with deferred checks, data resident on the device, bfloat16 mixed precision; and the paper-scale
parameter files of chapters 07 and 08."""
import importlib.util
import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from conftest import BOOK, ROOT
from lidvae_mini.data.pinwheel import make_pinwheel
from lidvae_mini.models.mixture import build_mixture_vae
from lidvae_mini.models.train import CHECKPOINT_FILE, HISTORY_KEYS, NonFiniteLossError, fit, load_checkpoint
from lidvae_mini.models.vae import build_vae

SMALL = dict(encoder_hidden=(16,), hidden1=(8,), hidden2=(8,))


def _benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _legacy():
    return _benchmark_module("legacy_fit")


@pytest.fixture(scope="module")
def pinwheel():
    x, _ = make_pinwheel(50, scale=1.0, seed=0)          # 250 points: 3 batches of 100 with a partial last batch
    xv, _ = make_pinwheel(20, scale=1.0, seed=1)
    return x, xv


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.random((130, 12)).astype(np.float32), (rng.random((40, 12)) > 0.5).astype(np.float32)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b))


def _history(h):
    """The history without wall times, NaN (epochs without validation) as None, so that == compares it."""
    return {k: [None if isinstance(v, float) and math.isnan(v) else v for v in vals]
            for k, vals in h.items() if k != "seconds"}


MODELS = {
    "vae-gaussian": lambda: build_vae("vae", 2, 2, "gaussian", seed=0, **SMALL),
    "lidvae-gaussian": lambda: build_vae("lidvae", 2, 2, "gaussian", seed=0, **SMALL),
    "lidvae-realnvp": lambda: build_vae("lidvae", 2, 2, "gaussian", "realnvp", seed=0, **SMALL),
    "gmvae": lambda: build_mixture_vae("gmvae", 2, 2, 3, "gaussian", 1, encoder_hidden=(16,), cluster_hidden=(16,),
                                       icnn_width=8, seed=0),
}


# ------------------------------------------------------------------------------- same numbers as the old loop
@pytest.mark.parametrize("name", sorted(MODELS))
def test_new_loop_gives_the_old_loops_numbers_on_cpu(pinwheel, name):
    """The loop alone, bitwise: the same draws in the same order, the same float64 epoch sums (the old loop:
    benchmarks/legacy_fit.py, around today's model)."""
    x, xv = pinwheel
    legacy = _legacy()
    old, new = MODELS[name](), MODELS[name]()
    h_old = legacy.legacy_fit(old, x, xv, epochs=3, batch_size=100, lr=1e-2, seed=4, two_pass_kl=False)
    h_new = fit(new, x, xv, epochs=3, batch_size=100, lr=1e-2, seed=4)
    assert _same(_params(old), _params(new))
    assert _history(h_old) == _history(h_new)


@pytest.mark.parametrize("name", ["vae-gaussian", "lidvae-gaussian"])
def test_one_pass_encoder_changes_training_only_by_rounding(pinwheel, name):
    """With a Gaussian encoder the one-pass ELBO sums the two gradient paths into mu and logvar before the
    encoder's backward pass (the two-pass ELBO backpropagated them separately): the same numbers up to float32
    rounding, not bitwise."""
    x, xv = pinwheel
    old, new = MODELS[name](), MODELS[name]()
    h_old = _legacy().legacy_fit(old, x, xv, epochs=3, batch_size=100, lr=1e-2, seed=4)
    h_new = fit(new, x, xv, epochs=3, batch_size=100, lr=1e-2, seed=4)
    for p, q in zip(_params(old), _params(new)):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    for key in HISTORY_KEYS:
        if key != "seconds":
            np.testing.assert_allclose(h_old[key], h_new[key], rtol=1e-5, err_msg=key)


def test_new_loop_matches_the_old_with_dynamic_binarization(images):
    x, xv = images
    legacy = _legacy()
    old = build_vae("lidvae", 12, 3, "bernoulli", seed=0, **SMALL)
    new = build_vae("lidvae", 12, 3, "bernoulli", seed=0, **SMALL)
    h_old = legacy.legacy_fit(old, x, xv, epochs=2, batch_size=32, binarize="dynamic", seed=1, two_pass_kl=False)
    h_new = fit(new, x, xv, epochs=2, batch_size=32, binarize="dynamic", seed=1, finite_check_every=3)
    assert _same(_params(old), _params(new))
    assert _history(h_old) == _history(h_new)


@pytest.mark.parametrize("flag", [True, False, None])
def test_data_on_device_gives_the_same_numbers_on_cpu(pinwheel, flag):
    x, xv = pinwheel
    ref = MODELS["vae-gaussian"]()
    h_ref = fit(ref, x, xv, epochs=2, batch_size=100, lr=1e-2, seed=2)
    m = MODELS["vae-gaussian"]()
    h = fit(m, x, xv, epochs=2, batch_size=100, lr=1e-2, seed=2, data_on_device=flag)
    assert _same(_params(ref), _params(m)) and _history(h) == _history(h_ref)


# ------------------------------------------------------------------------------------- host synchronisation
class _Tiny(nn.Module):
    """The smallest model with fit's protocol and no input checks of its own: every host read counted while it
    trains is the loop's."""

    data_dim = 3

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def check_x(self, x, name="x"):
        return x

    def loss(self, x, n_samples=1):
        elbo = -((x - self.w) ** 2).sum(-1)
        return -elbo.mean(), {"elbo": elbo, "kl": torch.zeros_like(elbo)}


def _reads(fit_fn, n_points, **kw):
    x = np.random.default_rng(0).normal(size=(n_points, 3)).astype(np.float32)
    with _benchmark_module("_common").count_host_reads(skip_optim=False) as count:
        # SGD: Adam reads its step counter with .item() every step, but keeps that counter in host memory
        # (torch.optim.Adam without capturable/fused), so on a GPU that read is not a synchronisation
        fit_fn(_Tiny(), x, epochs=2, batch_size=10, lr=1e-2, seed=0, progress=False, optimizer="sgd", **kw)
    return count["n"]


def test_no_host_read_per_training_step():
    """The loop reads the device a fixed number of times per epoch, whatever the number of steps
    (the old loop: five reads per step)."""
    few, many = _reads(fit, 50), _reads(fit, 500)          # 5 and 50 steps per epoch
    assert many == few
    per_check = _reads(fit, 500, finite_check_every=10) - many
    assert 0 < per_check <= 2 * 5 * 2                       # 2 epochs x (50 / 10) checks, at most a read or two each
    legacy = _legacy().legacy_fit
    assert _reads(legacy, 500) - _reads(legacy, 50) >= 2 * 45 * 5


# ------------------------------------------------------------------------------------------------ NaN guard
def _nan_at(model, call: int):
    """Make the decoder's output NaN at its ``call``-th forward pass (1-based)."""
    seen = {"n": 0}

    def hook(module, inputs, output):
        seen["n"] += 1
        return output * float("nan") if seen["n"] == call else output

    return model.decoder.register_forward_hook(hook)


@pytest.mark.parametrize("every", [1, 2, 1000])
def test_deferred_nan_check_names_the_step_and_restores_the_epoch_start(pinwheel, tmp_path, every):
    x, _ = pinwheel                                             # 250 points, batch 50: 5 steps per epoch
    ref = MODELS["lidvae-gaussian"]()
    fit(ref, x, epochs=1, batch_size=50, lr=1e-2, seed=0)
    epoch_start = _params(ref)
    model = MODELS["lidvae-gaussian"]()
    handle = _nan_at(model, 5 + 2)                              # the second step of epoch 2 (no validation)
    with pytest.raises(NonFiniteLossError, match="step 7") as info:
        fit(model, x, epochs=3, batch_size=50, lr=1e-2, seed=0, checkpoint_dir=tmp_path, finite_check_every=every)
    handle.remove()
    assert info.value.epoch == 2 and info.value.step == 7 and "loss" in str(info.value)
    assert info.value.checkpoint == tmp_path / CHECKPOINT_FILE and load_checkpoint(tmp_path)["epoch"] == 1
    assert _same(_params(model), epoch_start)                  # no update of the bad epoch is kept
    # the restored model and optimizer continue exactly as the checkpoint does
    again = fit(model, x, epochs=2, batch_size=50, lr=1e-2, seed=0, checkpoint_dir=tmp_path)
    full = MODELS["lidvae-gaussian"]()
    h_full = fit(full, x, epochs=2, batch_size=50, lr=1e-2, seed=0)
    assert _same(_params(model), _params(full)) and _history(again) == _history(h_full)


def test_nan_without_checkpoint_restores_the_epoch_start(pinwheel):
    x, _ = pinwheel
    ref = MODELS["gmvae"]()
    fit(ref, x, epochs=1, batch_size=50, lr=1e-2, seed=0)
    model = MODELS["gmvae"]()
    handle = _nan_at(model, 5 + 4)
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written") as info:
        fit(model, x, epochs=2, batch_size=50, lr=1e-2, seed=0)
    handle.remove()
    assert info.value.step == 9 and info.value.checkpoint is None
    assert _same(_params(model), _params(ref))


# ------------------------------------------------------------------------------------- checkpoints and resume
def test_checkpoint_records_where_the_shuffles_were_drawn(pinwheel, tmp_path):
    x, _ = pinwheel
    fit(MODELS["vae-gaussian"](), x, epochs=1, batch_size=100, seed=0, checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path)
    assert state["data_device"] == "cpu" and state["config"]["precision"] == "fp32"
    # a checkpoint from a GPU run (shuffles drawn by a CUDA generator) cannot continue on the CPU stream
    state["data_device"] = "cuda"
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="drew its shuffles on cuda"):
        fit(MODELS["vae-gaussian"](), x, epochs=2, batch_size=100, seed=0, checkpoint_dir=tmp_path)


def test_checkpoint_from_before_the_precision_key_resumes(pinwheel, tmp_path):
    x, _ = pinwheel
    ref = MODELS["vae-gaussian"]()
    fit(ref, x, epochs=2, batch_size=100, seed=0)
    fit(MODELS["vae-gaussian"](), x, epochs=1, batch_size=100, seed=0, checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path)
    del state["config"]["precision"], state["data_device"]       # as written by the old loop
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    resumed = MODELS["vae-gaussian"]()
    fit(resumed, x, epochs=2, batch_size=100, seed=0, checkpoint_dir=tmp_path)
    assert _same(_params(resumed), _params(ref))
    with pytest.raises(ValueError, match="different settings"):
        fit(MODELS["vae-gaussian"](), x, epochs=3, batch_size=100, seed=0, checkpoint_dir=tmp_path, precision="bf16")


@pytest.mark.parametrize("kwargs,exc", [(dict(precision="fp16"), ValueError), (dict(data_on_device="yes"), TypeError),
                                        (dict(finite_check_every=0), ValueError)])
def test_bad_efficiency_settings_raise(pinwheel, kwargs, exc):
    with pytest.raises(exc):
        fit(MODELS["vae-gaussian"](), pinwheel[0], epochs=1, **kwargs)


# ------------------------------------------------------------------------------------------ mixed precision
#: Relative tolerance of the bfloat16 loss against float32 (bfloat16 keeps 8 significant bits, about 0.4%;
#: measured about 1e-5 for the VAE and 7e-4 for the GMVAE on these models).
BF16_RTOL = 1e-2

BF16_MODELS = {
    "vae": lambda: build_vae("vae", 20, 4, "bernoulli", seed=0, encoder_hidden=(32,), hidden1=(16,), hidden2=(16,)),
    "gmvae-gaussian": lambda: build_mixture_vae("gmvae", 20, 4, 3, "bernoulli", encoder="gaussian", seed=0),
    "gmvae-realnvp": lambda: build_mixture_vae("gmvae", 20, 4, 3, "bernoulli", encoder="realnvp", seed=0),
    "lidvae": lambda: build_vae("lidvae", 20, 4, "bernoulli", seed=0, encoder_hidden=(32,), hidden1=(16,),
                                hidden2=(16,)),
}
_ICNN_BF16 = pytest.mark.xfail(raises=TypeError, strict=True,
                               reason="the ICNN's input check (lidvae_mini/models/icnn.py) rejects autocast's bfloat16 "
                                      "input of g_2; remove this mark when it accepts it")


@pytest.fixture(scope="module")
def binary_images():
    torch.manual_seed(0)
    return (torch.rand(200, 20) > 0.5).float()


@pytest.mark.parametrize("name", ["vae", "gmvae-gaussian", "gmvae-realnvp", pytest.param("lidvae", marks=_ICNN_BF16)])
def test_bf16_loss_matches_float32(binary_images, name):
    model = BF16_MODELS[name]()
    x = binary_images
    torch.manual_seed(1)
    l32 = model.loss(x)[0].detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        l16 = model.loss(x)[0].detach()
    assert l16.dtype == torch.float32
    assert abs(float(l16) - float(l32)) <= BF16_RTOL * abs(float(l32))


@pytest.mark.parametrize("name", ["vae", "gmvae-realnvp"])
def test_fit_in_bf16_keeps_float32_weights_and_tracks_float32(binary_images, name):
    x = binary_images
    m32, m16 = BF16_MODELS[name](), BF16_MODELS[name]()
    h32 = fit(m32, x, x[:50], epochs=3, batch_size=50, lr=1e-2, seed=0)
    h16 = fit(m16, x, x[:50], epochs=3, batch_size=50, lr=1e-2, seed=0, precision="bf16")
    assert all(p.dtype == torch.float32 for p in m16.parameters())
    for key in ("train_neg_elbo", "valid_neg_elbo"):
        np.testing.assert_allclose(h16[key], h32[key], rtol=BF16_RTOL)
    assert h16["train_neg_elbo"][-1] < h16["train_neg_elbo"][0]


# ------------------------------------------------------------------------------------ paper-scale parameter files
PAPER = {"07_lidgmvae_pinwheel": dict(n_per_class=10_000, epochs=100, batch_size=100, hidden=[512, 512],
                                      icnn_width=512, iwae_samples=500),
         "08_images": dict(n_train=20_000, n_test=10_000, epochs=100, batch_size=100, latent_dim=64, num_clusters=10,
                           hidden=[512, 512], icnn_width=512, encoder="realnvp", svi_steps=20, max_inner_steps=100,
                           check_every=15, iwae_samples=500, seeds=list(range(10)))}
_COST = re.compile(r"#\s+(\w+)\s+CPU (\d+) img/s -> ([\d.]+) h training.*GPU est\. ([\d.]+) ms/step -> ([\d.]+) min")


def _paper_file(chapter):
    return BOOK / "params" / chapter / "paper.yaml"


@pytest.mark.parametrize("chapter", sorted(PAPER))
def test_paper_yaml_is_valid_and_at_the_papers_scale(chapter):
    from lidvae_mini.book.reproduce import chapter_parameters, parse_overrides, resolve_parameters

    defaults = chapter_parameters(BOOK / f"{chapter}.ipynb")
    path = _paper_file(chapter)
    params = resolve_parameters(defaults, [str(path)], {}, chapter)
    for key, value in PAPER[chapter].items():
        assert params[key] == value, key
    # every piece the header tells to run names parameters of the chapter
    pieces = [line for line in path.read_text().splitlines() if line.startswith("#") and re.search(r" -p \w+=", line)]
    assert pieces
    for line in pieces:
        overrides = parse_overrides(re.findall(r"-p (\w+=\S+)", line))
        resolve_parameters(defaults, [str(path)], overrides, chapter)


def _train_results():
    out = {}
    for name in ("train_step_cpu.json", "train_step_sa_vae_cpu.json"):
        out.update(json.loads((ROOT / "benchmarks" / "results" / name).read_text())["results"]["cpu"])
    return out


@pytest.mark.parametrize("chapter,prefix,images", [("07_lidgmvae_pinwheel", "pinwheel-", 50_000 * 100),
                                                   ("08_images", "", 20_000 * 100)])
def test_paper_yaml_costs_are_the_committed_measurements(chapter, prefix, images):
    """The header's CPU rates are the committed benchmark's, its hours follow from them, and its GPU numbers are
    the benchmark's stated estimate (max(operators x 10 us, FLOPs / 15 TFLOP/s) per step)."""
    spec = importlib.util.spec_from_file_location("train_step_estimate", ROOT / "benchmarks" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gpu_estimate_ms = module.gpu_estimate_ms
    results = _train_results()
    rows = _COST.findall(_paper_file(chapter).read_text())
    assert len(rows) >= 2
    for method, rate, hours, ms, minutes in rows:
        key = prefix + ("gmvae" if method == "beta_vae" else method)      # the beta-GMVAE is the GMVAE's model
        r = results[key]
        assert int(rate) == round(r["new"]["images_per_s"]), method
        assert math.isclose(float(hours), images / r["new"]["images_per_s"] / 3600, abs_tol=0.05), method
        est = gpu_estimate_ms(r["profile"])
        assert math.isclose(float(ms), est, abs_tol=0.05), method
        assert math.isclose(float(minutes), images / 100 * est / 60_000, abs_tol=0.05), method
