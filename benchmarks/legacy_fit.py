"""The training loop of :func:`lidvae_mini.models.train.fit` as it was before issue 9, kept for side-by-side benchmarks
(``benchmarks/train_step.py``) and for the test that the new loop gives the same numbers on CPU
(``tests/test_train_efficiency.py``). Not part of the package; do not use it to train.

What the old loop did per step, and the new one does not: a second pass of a Gaussian encoder for the analytic KL
(:func:`legacy_loss`), and five host reads (``bool(isfinite(loss))``, ``bool(isfinite(grad norm))`` and three
``float()`` of the epoch sums); the data stayed in host memory and every batch was copied to the device.
Copied from ``lidvae_mini/models/train.py`` at commit 67e70ce (the docstring dropped, the loss replaced by :func:`legacy_loss`;
``two_pass_kl=False`` uses the model's own, one-pass, loss: the old loop around today's model).
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import torch

from lidvae_mini._checks import check_choice, check_int, check_positive
from lidvae_mini.models.loop import _all_finite, _atomic_save
from lidvae_mini.models.loop import show_progress as _show_progress
from lidvae_mini.models.train import (BINARIZE, CHECKPOINT_FILE, HISTORY_KEYS, NonFiniteLossError, OPTIMIZERS,
                                      _as_tensor, _is_binary, _make_optimizer, evaluate, load_checkpoint)
from lidvae_mini.models.vae import VAE

_RESUME_KEYS = ("batch_size", "lr", "optimizer", "seed", "binarize", "grad_clip", "weight_decay", "n_samples",
                "n_train")


def legacy_loss(model, x: torch.Tensor, n_samples: int = 1):
    """``model.loss`` as before issue 9: for a :class:`~lidvae_mini.models.vae.VAE` with an analytic-KL encoder, the
    encoder runs twice (``sample``, then ``kl_per_dim``); any other model's own ``loss``."""
    if type(model).loss is not VAE.loss or not getattr(model.encoder, "has_analytic_kl", False):
        return model.loss(x, n_samples=n_samples)
    model.check_x(x)
    z, _ = model.encoder.sample(x, n_samples)
    rec = model.log_likelihood(x, z).mean(0)
    kl = model.encoder.kl_per_dim(x).sum(-1)
    parts = {"elbo": rec - kl, "rec": rec, "kl": kl}
    return -(parts["rec"] - model.beta * parts["kl"]).mean(), parts


def legacy_fit(model, train_x, valid_x=None, *, epochs: int = 10, batch_size: int = 100, lr: float = 1e-3,
               optimizer: str = "adam", seed: int = 0, checkpoint_dir: str | os.PathLike | None = None,
               resume: bool = True, progress: bool | None = None, binarize: str | None = None,
               grad_clip: float | None = 5.0, eval_every: int = 1, weight_decay: float = 0.0, n_samples: int = 1,
               eval_batch_size: int = 1000, two_pass_kl: bool = True) -> dict:
    """The old ``fit`` (same arguments and history), plus ``two_pass_kl``."""
    epochs = check_int(epochs, "epochs", minimum=0)
    batch_size = check_int(batch_size, "batch_size")
    lr = check_positive(lr, "lr")
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    check_choice(binarize, "binarize", BINARIZE)
    seed = check_int(seed, "seed", minimum=0)
    eval_every = check_int(eval_every, "eval_every")
    n_samples = check_int(n_samples, "n_samples")
    if grad_clip is not None:
        grad_clip = check_positive(grad_clip, "grad_clip")
    weight_decay = float(weight_decay)
    if not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    params = list(model.parameters())
    if not params:
        raise ValueError("model has no parameters")
    device = params[0].device
    data_dim = getattr(model, "data_dim", None)

    train = _as_tensor(train_x, "train_x", data_dim).to(params[0].dtype)
    if binarize == "dynamic":
        if bool(((train < 0) | (train > 1)).any()):
            raise ValueError("binarize='dynamic' needs train_x in [0, 1]")
    else:
        model.check_x(train[: min(len(train), 10_000)].to(device), "train_x")
    valid = None
    if valid_x is not None:
        valid = _as_tensor(valid_x, "valid_x", data_dim).to(params[0].dtype)
        if binarize == "dynamic" and not _is_binary(valid):
            if bool(((valid < 0) | (valid > 1)).any()):
                raise ValueError("binarize='dynamic' needs valid_x in [0, 1]")
            valid = torch.bernoulli(valid, generator=torch.Generator().manual_seed(seed))
        model.check_x(valid.to(device), "valid_x")

    config = {"batch_size": batch_size, "lr": lr, "optimizer": optimizer, "seed": seed, "binarize": binarize,
              "grad_clip": grad_clip, "weight_decay": weight_decay, "n_samples": n_samples,
              "n_train": int(train.shape[0])}
    opt = _make_optimizer(optimizer, params, lr, weight_decay)
    data_rng = torch.Generator().manual_seed(seed)
    history = {k: [] for k in HISTORY_KEYS}
    start_epoch, step = 0, 0
    ckpt_path = None
    if checkpoint_dir is not None:
        ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)

    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        if ckpt_path is not None and resume and ckpt_path.is_file():
            state = load_checkpoint(ckpt_path, map_location=device)
            diff = {k: (state["config"].get(k), config[k]) for k in _RESUME_KEYS
                    if state["config"].get(k) != config[k]}
            if diff:
                raise ValueError(f"checkpoint {ckpt_path} was written with different settings "
                                 f"(saved, now): {diff}; pass resume=False or another checkpoint_dir")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"].cpu())
            if cuda_devices and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
            data_rng.set_state(state["data_rng"].cpu())
            history = {k: list(state["history"][k]) for k in HISTORY_KEYS}
            start_epoch, step = int(state["epoch"]), int(state["step"])

        bar = None
        if _show_progress(progress) and start_epoch < epochs:
            from tqdm import tqdm
            bar = tqdm(total=epochs, initial=start_epoch, desc=type(model).__name__, unit="epoch",
                       file=sys.stderr, disable=False)
        n = train.shape[0]
        try:
            for epoch in range(start_epoch + 1, epochs + 1):
                t0 = time.perf_counter()
                model.train()
                perm = torch.randperm(n, generator=data_rng)
                sums = {"neg_elbo": 0.0, "kl": 0.0, "loss": 0.0}
                for b in range(0, n, batch_size):
                    xb = train[perm[b:b + batch_size]]
                    if binarize == "dynamic":
                        xb = torch.bernoulli(xb, generator=data_rng)
                    xb = xb.to(device)
                    step += 1
                    loss, parts = (legacy_loss(model, xb, n_samples) if two_pass_kl
                                   else model.loss(xb, n_samples=n_samples))
                    if not bool(torch.isfinite(loss)):
                        _legacy_diverged("loss", float(loss.detach()), epoch, step, ckpt_path, history)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if grad_clip is not None:
                        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
                    else:
                        norm = torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in params if p.grad is not None))
                    if not bool(torch.isfinite(norm)):
                        _legacy_diverged("gradient norm", float(norm), epoch, step, ckpt_path, history)
                    opt.step()
                    m = xb.shape[0]
                    sums["neg_elbo"] -= float(parts["elbo"].detach().sum())
                    sums["kl"] += float(parts["kl"].detach().sum())
                    sums["loss"] += float(loss.detach()) * m
                if not _all_finite(model):
                    _legacy_diverged("parameter", float("nan"), epoch, step, ckpt_path, history)
                row = {"epoch": epoch, "train_neg_elbo": sums["neg_elbo"] / n, "train_kl": sums["kl"] / n,
                       "train_loss": sums["loss"] / n}
                row.update(valid_neg_elbo=math.nan, valid_rec=math.nan, valid_kl=math.nan, valid_au=math.nan)
                if valid is not None and (epoch % eval_every == 0 or epoch == epochs):
                    # evaluation draws its own noise and leaves the training RNG stream untouched
                    with torch.random.fork_rng(devices=cuda_devices):
                        torch.manual_seed(seed * 100_003 + epoch)
                        ev = evaluate(model, valid, batch_size=eval_batch_size)
                    row.update(valid_neg_elbo=ev["neg_elbo"], valid_rec=ev["rec"], valid_kl=ev["kl"],
                               valid_au=ev["au"])
                    if not math.isfinite(ev["neg_elbo"]):
                        _legacy_diverged("validation negative ELBO", ev["neg_elbo"], epoch, step, ckpt_path, history)
                row["seconds"] = time.perf_counter() - t0
                for k in HISTORY_KEYS:
                    history[k].append(row[k])
                if ckpt_path is not None:
                    _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                  "torch_rng": torch.get_rng_state(),
                                  "cuda_rng": torch.cuda.get_rng_state(device) if cuda_devices else None,
                                  "data_rng": data_rng.get_state(), "epoch": epoch, "step": step,
                                  "history": history, "config": config}, ckpt_path)
                if bar is not None:
                    bar.update(1)
                    post = {"neg_elbo": f"{row['train_neg_elbo']:.2f}"}
                    if math.isfinite(row["valid_au"]):
                        post["AU"] = int(row["valid_au"])
                    bar.set_postfix(post)
        finally:
            if bar is not None:
                bar.close()
    model.eval()
    return history


def _legacy_diverged(what: str, value: float, epoch: int, step: int, ckpt_path: Path | None, history: dict):
    last = history["epoch"][-1] if history["epoch"] else None
    where = (f"the last good checkpoint (epoch {last}) is {ckpt_path}" if ckpt_path is not None and last
             else "no checkpoint was written")
    raise NonFiniteLossError(
        f"training diverged: {what} = {value} at epoch {epoch}, step {step}; the update was not applied and "
        f"{where}. Lower lr, set grad_clip, or check the data.", epoch=epoch, step=step,
        checkpoint=ckpt_path if (ckpt_path is not None and last) else None)
