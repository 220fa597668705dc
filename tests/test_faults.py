"""Faults during training (issue 12): a run killed with SIGKILL, a checkpoint torn by a death inside the save, and a
NaN loss.

- **Kill and resume.** A :func:`lidvae_mini.models.train.fit` run in a subprocess is SIGKILLed by this process in the middle
  of an epoch, after checkpoints exist; a fresh process resumes it from its checkpoint. The finished run's
  checkpoint (parameters, optimizer state, RNG states, step counter and per-epoch metrics) equals that of an
  uninterrupted run **bitwise** on CPU: every process uses one intra-op thread, the shuffles, binarisation bits and
  reparameterisation noise are restored from the checkpoint, and the epoch sums are accumulated in the same order.
  Only the ``seconds`` column of the history (wall time) differs.
- **Death inside the save.** A subprocess writes half of its next checkpoint's temporary file and SIGKILLs itself
  before the atomic replace: the previous checkpoint is intact and loads with ``weights_only=True``, the torn
  temporary file is never read, and the resumed run again ends bitwise equal to the uninterrupted one.
- **NaN guard.** A NaN injected into the training loss at a chosen step stops training with
  :class:`~lidvae_mini.models.train.NonFiniteLossError` naming that epoch and step; the last good checkpoint is byte for
  byte the one written before, and loads with ``weights_only=True``.

The same faults are tested for the aggregate VAE (:func:`lidvae_mini.models.avae.fit_avae`, issue 11: the KDE
subsets, batches and binarisation bits come from its seeded generator, which is saved) and the text models
(:func:`lidvae_mini.models.text.fit_text`: a NumPy generator orders the batches), which train through the same loop
(:mod:`lidvae_mini.models.loop`, issue 20).
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import ROOT
from lidvae_mini.models import loop as loop_mod
from lidvae_mini.models.train import NonFiniteLossError, load_checkpoint

# Two set-ups, both small (a few seconds per process): a Gaussian LIDVAE on the pinwheel with Adam, and a Bernoulli
# LIDVAE with dynamic binarisation (so the data generator's state matters too) and RMSProp (momentum state).
SETUP = textwrap.dedent("""
    import numpy as np
    import torch
    from lidvae_mini.data.pinwheel import make_pinwheel
    from lidvae_mini.models import avae, train
    from lidvae_mini.models.vae import build_vae
    SMALL = dict(encoder_hidden=(16,), hidden1=(8,), hidden2=(8,))

    def setup(name):
        \"\"\"(training function, model, train data, validation data, settings, checkpoint file name)\"\"\"
        if name == "text":                                       # the text loop (issue 20): 4 batches of 20 sentences
            from lidvae_mini.data.text import length_batches, make_synthetic_text
            from lidvae_mini.models.text import build_text_vae, fit_text
            d = make_synthetic_text(n_train=80, n_valid=20, n_test=4, vocab_size=30, seed=0)
            torch.manual_seed(0)
            model = build_text_vae("lidsvae", len(d.vocab), latent_dim=2, embed_dim=8, enc_hidden=8, dec_hidden=8,
                                   icnn_hidden=((8,), (8,)))
            kw = dict(epochs=4, lr=1e-2, seed=1)
            batches = length_batches(d.train, 20, shuffle=True, seed=0)
            return fit_text, model, batches, length_batches(d.valid, 20), kw, "checkpoint.pt"
        if name == "pinwheel":
            x, _ = make_pinwheel(24, scale=1.0, seed=0)          # 120 points: 4 batches of 30
            xv, _ = make_pinwheel(8, scale=1.0, seed=1)
            model = build_vae("lidvae", 2, 2, "gaussian", seed=0, **SMALL)
            kw = dict(epochs=4, batch_size=30, lr=1e-2, seed=1)
            return train.fit, model, x, xv, kw, train.CHECKPOINT_FILE
        rng = np.random.default_rng(0)
        x = rng.random((120, 12)).astype(np.float32)            # grey levels in [0, 1], binarised per batch
        xv = (rng.random((30, 12)) > 0.5).astype(np.float32)
        if name == "binary":
            model = build_vae("lidvae", 12, 3, "bernoulli", seed=0, **SMALL)
            kw = dict(epochs=4, batch_size=30, lr=3e-3, seed=2, optimizer="rmsprop", binarize="dynamic")
            return train.fit, model, x, xv, kw, train.CHECKPOINT_FILE
        # the aggregate VAE's own loop (issue 11): 40 KDE codes, the other 80 items in 4 batches of 20
        model = avae.build_avae("lid_avae", 12, 2, h=0.5, hidden1=(4,), hidden2=(8,), encoder_hidden=(16,), seed=1)
        kw = dict(epochs=4, batch_size=20, lr=5e-3, kde_size=40, refresh_every=3, seed=1, binarize="dynamic")
        return avae.fit_avae, model, x, xv, kw, avae.CHECKPOINT_FILE
    """)
N_BATCHES = 4

# A child training run. argv: setup name, checkpoint folder, mode, marker file.
#   resume: train to the end (resuming from the folder's checkpoint when there is one);
#   hang:   at step HANG_STEP write the marker and wait to be killed (mid-epoch);
#   tear:   at the save of epoch 3 write half of the temporary file, then SIGKILL itself.
CHILD = SETUP + textwrap.dedent("""
    import io, os, signal, sys, time
    from pathlib import Path
    torch.set_num_threads(1)
    name, ckpt, mode, marker = sys.argv[1:5]
    fit, model, x, xv, kw, _ = setup(name)
    if mode == "hang":
        loss, calls = model.loss, [0]

        def hanging_loss(*args, **kwargs):
            calls[0] += 1
            if calls[0] == int(os.environ["HANG_STEP"]):
                Path(marker).write_text(str(os.getpid()))
                time.sleep(600)                                  # killed here by the test
            return loss(*args, **kwargs)
        model.loss = hanging_loss
    elif mode == "tear":
        save = torch.save

        def tearing_save(obj, fh, *args, **kwargs):
            if obj.get("epoch") == 3:
                buf = io.BytesIO()
                save(obj, buf, *args, **kwargs)
                fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                Path(marker).write_text(str(fh.name))
                os.kill(os.getpid(), signal.SIGKILL)
            return save(obj, fh, *args, **kwargs)
        torch.save = tearing_save
    fit(model, x, xv, checkpoint_dir=ckpt, **kw)
    """)


def _env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _child(name, ckpt, mode, marker="", **env):
    return subprocess.Popen([sys.executable, "-c", CHILD, name, str(ckpt), mode, str(marker)], env={**_env(), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def _setup(name):
    namespace: dict = {}
    exec(SETUP, namespace)
    return namespace["setup"](name)


def _reference(name, ckpt):
    """The uninterrupted run, in this process (one thread, as the children); its final checkpoint."""
    fit, model, x, xv, kw, filename = _setup(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(model, x, xv, checkpoint_dir=ckpt, **kw)
    finally:
        torch.set_num_threads(threads)
    return load_checkpoint(ckpt / filename)


def _equal(a, b, path="checkpoint") -> None:
    """Bitwise equality of two checkpoint trees, except the wall-time column of the history."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        keys = set(a) - {"seconds"}
        assert keys == set(b) - {"seconds"}, f"{path}: keys differ"
        for k in keys:
            _equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (u, v) in enumerate(zip(a, b)):
            _equal(u, v, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f"{path}: tensors differ"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _filename(name) -> str:
    return _setup(name)[-1]


@pytest.mark.parametrize("name", ["pinwheel", "avae", "text"])
def test_killed_mid_epoch_then_resumed_equals_uninterrupted(tmp_path, name):
    ref = _reference(name, tmp_path / "ref")
    ckpt, marker, filename = tmp_path / "run", tmp_path / "hanging", _filename(name)
    hang_step = 2 * N_BATCHES + 2                               # epoch 3, second batch: checkpoints 1 and 2 exist
    proc = _child(name, ckpt, "hang", marker, HANG_STEP=str(hang_step))
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the training run never reached the step where it is killed:\n" + _finish(proc)[1]
        os.kill(proc.pid, signal.SIGKILL)
        rc, log = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == -signal.SIGKILL, log
    state = torch.load(ckpt / filename, map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 2 * N_BATCHES
    assert not list(ckpt.glob("*.tmp"))

    rc, log = _finish(_child(name, ckpt, "resume"))           # a fresh process resumes from the checkpoint
    assert rc == 0, log
    resumed = load_checkpoint(ckpt / filename)
    assert resumed["epoch"] == 4 and resumed["history"]["epoch"] == [1, 2, 3, 4]
    _equal(resumed, ref)


@pytest.mark.parametrize("name", ["binary", "avae"])
def test_death_inside_the_save_leaves_the_previous_checkpoint(tmp_path, name):
    ref = _reference(name, tmp_path / "ref")
    ckpt, marker, filename = tmp_path / "run", tmp_path / "torn", _filename(name)
    rc, log = _finish(_child(name, ckpt, "tear", marker))
    assert rc == -signal.SIGKILL, log
    torn = ckpt / (filename + ".tmp")
    assert marker.read_text() == str(torn) and torn.stat().st_size > 0
    with pytest.raises(Exception):                                # it really is half a checkpoint
        torch.load(torn, map_location="cpu", weights_only=True)
    state = torch.load(ckpt / filename, map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["history"]["epoch"] == [1, 2]
    assert all(torch.isfinite(v).all() for v in state["model"].values())

    rc, log = _finish(_child(name, ckpt, "resume"))
    assert rc == 0, log
    assert not torn.exists()                                      # replaced by the next good save
    _equal(load_checkpoint(ckpt / filename), ref)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name, bad_step", [("pinwheel", 2 * N_BATCHES + 3), ("pinwheel", 2),
                                            ("avae", 2 * N_BATCHES + 3), ("text", 2 * N_BATCHES + 3)])
def test_nan_loss_names_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, name, bad_step):
    fit, model, x, xv, kw, filename = _setup(name)
    loss, calls = model.loss, [0]

    def nan_loss(*args, **kwargs):                # the loss of one step becomes NaN (so do its gradients)
        calls[0] += 1
        value, parts = loss(*args, **kwargs)
        return (value * float("nan") if calls[0] == bad_step else value), parts

    model.loss = nan_loss
    saved = []                                     # the hash of every checkpoint written
    save = loop_mod._atomic_save

    def recording_save(obj, path):
        save(obj, path)
        saved.append(_sha(path))

    monkeypatch.setattr(loop_mod, "_atomic_save", recording_save)
    epoch = (bad_step - 1) // N_BATCHES + 1
    step = bad_step                                # the one loop counts steps from 1, for every method
    with pytest.raises(NonFiniteLossError, match=rf"at epoch {epoch}, step {step}\b") as info:
        fit(model, x, xv, checkpoint_dir=tmp_path, **kw)
    assert (info.value.epoch, info.value.step) == (epoch, step)
    assert len(saved) == epoch - 1 and not list(tmp_path.glob("*.tmp"))
    path = tmp_path / filename
    if epoch == 1:
        assert info.value.checkpoint is None and "no checkpoint was written" in str(info.value)
        assert not path.exists()
        return
    assert info.value.checkpoint == path
    assert _sha(path) == saved[-1]                 # byte for byte the last good save
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["epoch"] == epoch - 1 and state["step"] == (epoch - 1) * N_BATCHES
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    # the model in memory is back at that checkpoint (no NaN update kept)
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
