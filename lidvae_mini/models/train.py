"""ELBO training (VAE, β-VAE, LIDVAE, the mixture VAEs, SA-VAE) through the book's one training loop.

:func:`fit` maximises the ELBO (paper §3.2: "we use the classical amortized inference algorithm of VAE")
by minibatch stochastic gradients on the batch-mean negative objective ``rec + β·KL`` (β = 1 except for
the β-VAE), and records per epoch the training and validation negative ELBO, KL and active units (AU). What it
hands to :func:`lidvae_mini.models.loop.train_loop` is :class:`ELBOMethod`; the loop supplies the guarantees
(explicit seed, checkpoint and resume bitwise on CPU, the NaN guard, clipping over all parameters, quiet
progress bars), which fix the training-protocol defects of the official code (``yixinwang/lidvae-public`` at
commit ``8a0a6a5``; the book's appendix *Errata of the reference implementation*).

What :func:`fit` adds (issue 9; the same numbers on CPU as the loop before it, bitwise):

* validation on the whole held-out set, without replacement, every ``eval_every`` epochs, under its own seed;
* the training set lives on the model's device when it fits (``data_on_device``): batches are indexed there and
  the shuffles and binarisation bits are drawn there, from a generator on that device seeded by ``seed``. On a
  CPU nothing changes; on a GPU the stream of shuffles differs from a CPU run's (same seed, same numbers on the
  same kind of device), and the generator's device is recorded in the checkpoint;
* no host synchronisation per step: the epoch sums are device tensors read once per epoch (the loop's guard
  reads its record every ``finite_check_every`` steps);
* ``precision="bf16"``: the loss under ``torch.autocast(bfloat16)``, float32 master weights (see :func:`fit`);
* ``select_best``: the parameters of the epoch with the lowest validation negative ELBO are restored at the end.

The model's own input checks (:mod:`lidvae_mini._checks`, the decoders' data checks) still read the batch on
the host once or more per step; with the data validated once here, they are the remaining synchronisations.

Dynamic binarisation (``binarize="dynamic"``): every training batch is redrawn as ``Bernoulli(x)`` each time
it is visited (images in [0, 1]); validation images that are not already binary are binarised once, with a
generator seeded by ``seed`` (a fixed binarisation, the same for every epoch).
"""
from __future__ import annotations

import contextlib
import math
import os

import torch

from .._checks import as_float_array, check_choice, check_int, check_positive
from .encoders import MEAN_SAMPLES
from .loop import (CHECKPOINT_FILE, FINITE_CHECK_EVERY, BestState, Method, NonFiniteLossError,  # noqa: F401
                   load_checkpoint, train_loop, update)

OPTIMIZERS = ("adam", "rmsprop", "sgd")
BINARIZE = (None, "dynamic")
#: Training precisions of :func:`fit`: float32, or the loss under ``torch.autocast`` in bfloat16.
PRECISIONS = ("fp32", "bf16")
#: Keys of the history returned by :func:`fit` (one entry per epoch; ``nan`` where not evaluated).
HISTORY_KEYS = ("epoch", "train_neg_elbo", "train_kl", "train_loss", "valid_neg_elbo", "valid_rec", "valid_kl",
                "valid_au", "seconds")
# values of resume keys added later, for checkpoints written before them
_RESUME_DEFAULTS = {"precision": "fp32"}


def _as_tensor(x, name: str, dim: int | None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"{name} must be a real numeric tensor, got dtype {x.dtype}")
        x = x.detach().cpu().numpy()
    arr = as_float_array(x, name, ndim=2)
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}) to match the model, got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return torch.as_tensor(arr, dtype=torch.get_default_dtype())


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def _make_optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":  # the official sweep: RMSProp(lr, momentum 0.5, decay 0.9, eps 1e-10)
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, momentum=0.5, eps=1e-10, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


@torch.no_grad()
def evaluate(model, x, batch_size: int = 1000, n_samples: int = 1, mean_samples: int = MEAN_SAMPLES, iwae_samples: int = 0,
             seed: int | None = None) -> dict:
    """Held-out metrics of ``model`` on the whole of ``x`` (no replacement), in nats per datapoint.

    Returns a dict with

    - ``neg_elbo``: mean negative ELBO (β = 1, ``n_samples`` draws per point); ``rec``: mean
      ``-E_q log p(x|z)``; ``kl``: mean ``KL(q(z|x) || p(z))`` (analytic for a Gaussian encoder);
    - ``kl_per_dim``: (K,) list, mean analytic KL per latent dimension (Gaussian encoder; else ``None``);
    - ``au``, ``au_fraction``, ``au_variances``: active units of the posterior means (paper §4.1, threshold
      0.01, :func:`lidvae_mini.evaluation.metrics.active_units`; means by ``mean_samples`` draws, common to all datapoints, for a flow encoder);
    - ``iwae_ll`` (only when ``iwae_samples > 0``): mean importance-weighted log-likelihood with that many
      samples (:func:`lidvae_mini.evaluation.metrics.iwae_log_likelihood`), ``>= -neg_elbo`` on average.

    ``model`` is a :class:`lidvae_mini.models.vae.VAE` or any model with the same protocol (``data_dim``, ``check_x``,
    ``elbo_parts``, ``encode_mean``; ``kl_per_dim`` optional; a model with an ``iwae_log_likelihood(x, num_samples,
    chunk)`` method, e.g. :class:`lidvae_mini.models.mixture.MixtureVAE`, supplies its own IWAE).
    ``x`` is an array or tensor ``(N, D)`` (binary for a Bernoulli model). With ``seed`` the draws run under
    ``torch.manual_seed(seed)`` and the caller's RNG is restored; otherwise they use the global torch RNG.

    Example:
        >>> import torch
        >>> from lidvae_mini.models.vae import build_vae
        >>> model = build_vae("lidvae", 6, 2, head="gaussian", seed=0)
        >>> x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
        >>> ev = evaluate(model, x, iwae_samples=10, seed=0)
        >>> sorted(k for k in ("au", "kl", "iwae_ll", "neg_elbo") if k in ev), ev["au"] <= 2
        (['au', 'iwae_ll', 'kl', 'neg_elbo'], True)
    """
    from ..evaluation.metrics import active_units, iwae_log_likelihood

    batch_size = check_int(batch_size, "batch_size")
    iwae_samples = check_int(iwae_samples, "iwae_samples", minimum=0)
    like = next(model.parameters())
    device = like.device
    if not isinstance(x, torch.Tensor):
        x = _as_tensor(x, "x", getattr(model, "data_dim", None))
    x = x.to(dtype=like.dtype)
    # a factorised (Gaussian) encoder gives a per-dimension KL; models without ``kl_per_dim`` (the mixture VAEs of
    # :mod:`lidvae_mini.models.mixture`) skip it
    factorised = getattr(getattr(model, "encoder", None), "has_analytic_kl", False) and hasattr(model, "kl_per_dim")
    was_training = model.training
    model.eval()
    tot = {"neg_elbo": 0.0, "rec": 0.0, "kl": 0.0, "iwae_ll": 0.0}
    means, kl_dims = [], []
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(check_int(seed, "seed", minimum=0))
            for start in range(0, x.shape[0], batch_size):
                xb = x[start:start + batch_size].to(device)
                parts = model.elbo_parts(xb, n_samples=n_samples)
                tot["neg_elbo"] -= float(parts["elbo"].sum())
                tot["rec"] -= float(parts["rec"].sum())
                tot["kl"] += float(parts["kl"].sum())
                means.append(model.encode_mean(xb, n_samples=mean_samples).cpu())
                if factorised:
                    kl_dims.append(model.kl_per_dim(xb).sum(0).cpu())
                if iwae_samples and hasattr(model, "iwae_log_likelihood"):   # a model with its own IWAE (mixtures)
                    ll = model.iwae_log_likelihood(xb, num_samples=iwae_samples, chunk=min(iwae_samples, 100))
                    tot["iwae_ll"] += float(ll.sum())
                elif iwae_samples:
                    ll = iwae_log_likelihood(model.log_joint, model.sample_posterior, xb, num_samples=iwae_samples,
                                             chunk=min(iwae_samples, 100))
                    tot["iwae_ll"] += float(ll.sum())
    finally:
        model.train(was_training)
    n = x.shape[0]
    out = {k: v / n for k, v in tot.items()}
    if not iwae_samples:
        del out["iwae_ll"]
    out["kl_per_dim"] = [float(v) / n for v in torch.stack(kl_dims).sum(0)] if factorised else None
    au = active_units(torch.cat(means).double())
    out["au"] = int(au["count"])
    out["au_fraction"] = float(au["fraction"])
    out["au_variances"] = [float(v) for v in au["variances"]]
    return out


def fit(model, train_x, valid_x=None, *, epochs: int = 10, batch_size: int = 100, lr: float = 1e-3,
        optimizer: str = "adam", seed: int = 0, checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = True, progress: bool | None = None, binarize: str | None = None, grad_clip: float | None = 5.0,
        eval_every: int = 1, weight_decay: float = 0.0, n_samples: int = 1, eval_batch_size: int = 1000,
        precision: str = "fp32", data_on_device: bool | None = None,
        finite_check_every: int = FINITE_CHECK_EVERY, select_best: bool | BestState = False, before_epoch=None,
        after_epoch=None) -> dict:
    """Fit ``model`` (a :class:`lidvae_mini.models.vae.VAE`) by maximising the ELBO; return the per-epoch history.

    Args:
        model: a VAE (any encoder/decoder), or any model with its protocol (``data_dim``, ``check_x``,
            ``loss(x, n_samples) -> (scalar, parts)`` with ``parts["elbo"]``, ``parts["kl"]`` of shape (B,), and
            what :func:`evaluate` needs), e.g. :class:`lidvae_mini.models.mixture.MixtureVAE`; trained in place on the
            device of its parameters.
        train_x: training data, array or tensor of shape ``(N, D)`` (images in [0, 1] when ``binarize``).
        valid_x: held-out data ``(M, D)`` evaluated every ``eval_every`` epochs (and at the last), or ``None``.
        epochs: total number of epochs (a resumed run continues up to this number).
        batch_size: minibatch size; the loss is the batch *mean*, so ``grad_clip`` does not depend on it.
        lr, optimizer, weight_decay: ``"adam"`` (default), ``"rmsprop"`` (the official sweep's
            RMSProp(momentum 0.5, decay 0.9, eps 1e-10)) or ``"sgd"``; weight decay is an explicit L2 penalty.
        seed: seeds the shuffling, the binarisation and the reparameterisation noise (the model's
            initialisation is the caller's: see :func:`lidvae_mini.models.vae.build_vae`).
        checkpoint_dir: folder for ``checkpoint.pt`` (written atomically every epoch), or ``None``.
        resume: continue from ``checkpoint_dir/checkpoint.pt`` when it exists (its settings must match).
        progress: a tqdm bar over epochs; ``None`` = only in interactive use (a TTY or a Jupyter kernel)
            and never when ``$TQDM_DISABLE`` is set.
        binarize: ``None`` or ``"dynamic"`` (fresh Bernoulli bits for every training batch; see module doc).
        grad_clip: maximal global gradient norm over all parameters, or ``None``.
        eval_every: validation frequency in epochs.
        n_samples: Monte Carlo samples of z per datapoint in the training ELBO.
        eval_batch_size: batch size for validation.
        precision: ``"fp32"`` (default) or ``"bf16"``: the training loss runs under
            ``torch.autocast(dtype=torch.bfloat16)`` on the model's device (CPU or CUDA); parameters, gradients and
            optimizer state stay float32, validation runs in float32. Only for models whose every module accepts
            bfloat16 activations: those with an MLP decoder (VAE, GMVAE); the ICNN of an injective decoder
            rejects them (``TypeError``) for now. The loss matches float32 to 1% (tested).
        data_on_device: keep the whole training (and validation) set on the model's device and draw batches and
            shuffles there (``True``), keep it in host memory and copy each batch (``False``), or decide (``None``,
            default: on the device when it takes at most a quarter of the free GPU memory; always on a CPU).
        finite_check_every: steps between host reads of the device-side finiteness record (see module doc); the
            record is also read at the end of every epoch. 1 checks every step.
        select_best: at the end, restore the parameters of the epoch with the lowest validation negative ELBO
            (needs ``valid_x``; epochs without validation do not count); the history then has ``selected``. A
            :class:`~lidvae_mini.models.loop.BestState` continues its record (a second phase of training).
        before_epoch, after_epoch: ``(model, epoch) -> None`` called around every epoch (numbered from 1), in an RNG
            forked from the training stream (a hook cannot change the run).

    Returns:
        history: ``{key: list}`` with one entry per epoch for every key of :data:`HISTORY_KEYS`;
        negative ELBO, reconstruction and KL are mean nats per datapoint (``train_loss`` is the β-weighted
        objective); ``valid_*`` are ``nan`` on epochs without validation; ``valid_au`` is a count; with
        ``select_best``, ``selected`` (True at the restored epoch).

    Example:
        >>> import torch
        >>> from lidvae_mini.models.vae import build_vae
        >>> x = torch.rand(200, 6, generator=torch.Generator().manual_seed(0))
        >>> model = build_vae("vae", 6, 2, head="gaussian", seed=0)
        >>> history = fit(model, x[:150], x[150:], epochs=2, batch_size=50, seed=0)
        >>> history["epoch"], len(history["valid_neg_elbo"])
        ([1, 2], 2)

    Raises:
        TypeError/ValueError: bad data (shape, dtype, non-finite, non-binary data for a Bernoulli model
            without ``binarize``), bad settings (unknown optimizer, binarize mode or precision, non-positive
            sizes), or a checkpoint written with different settings or with its shuffling generator on another
            kind of device.
        NonFiniteLossError: the loss, the gradient norm or a parameter became NaN/inf; the model and optimizer
            are restored to their state at the start of that epoch and the last good checkpoint stays in
            ``checkpoint_dir``.
    """
    epochs, seed = check_int(epochs, "epochs", minimum=0), check_int(seed, "seed", minimum=0)
    eval_every, finite_check_every = check_int(eval_every, "eval_every"), check_int(finite_check_every,
                                                                                    "finite_check_every")
    config = _settings(batch_size, lr, optimizer, seed, binarize, grad_clip, weight_decay, n_samples, precision)
    if data_on_device is not None and not isinstance(data_on_device, bool):
        raise TypeError(f"data_on_device must be None, True or False, got {data_on_device!r}")
    best = select_best if isinstance(select_best, BestState) else BestState() if select_best else None
    if best is not None and valid_x is None:
        raise ValueError("select_best needs valid_x (it keeps the epoch with the lowest validation negative ELBO)")
    params = list(model.parameters())
    if not params:
        raise ValueError("model has no parameters")
    train, valid, data_rng = _training_data(model, train_x, valid_x, binarize, seed, data_on_device, params[0])
    config["n_train"] = int(train.shape[0])
    method = ELBOMethod(model, train, valid, data_rng, config, epochs=epochs, eval_every=eval_every,
                        eval_batch_size=eval_batch_size)
    history = train_loop(model, method, epochs=epochs, seed=seed, checkpoint_dir=checkpoint_dir, resume=resume,
                         progress=progress, best=best, before_epoch=before_epoch, after_epoch=after_epoch,
                         finite_check_every=finite_check_every)
    if best is not None:
        best.restore(model)
        history["selected"] = [e + best.offset == best.epoch for e in history["epoch"]]
    return history


def _settings(batch_size, lr, optimizer, seed, binarize, grad_clip, weight_decay, n_samples, precision) -> dict:
    """:func:`fit`'s settings that a resumed run must share, checked (the ``config`` of :class:`ELBOMethod`)."""
    for value, name, options in ((optimizer, "optimizer", OPTIMIZERS), (binarize, "binarize", BINARIZE),
                                 (precision, "precision", PRECISIONS)):
        check_choice(value, name, options)
    weight_decay = float(weight_decay)
    if not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    return {"batch_size": check_int(batch_size, "batch_size"), "lr": check_positive(lr, "lr"), "optimizer": optimizer,
            "seed": check_int(seed, "seed", minimum=0), "binarize": binarize,
            "grad_clip": check_positive(grad_clip, "grad_clip") if grad_clip is not None else None,
            "weight_decay": weight_decay, "n_samples": check_int(n_samples, "n_samples"), "precision": precision}


class ELBOMethod(Method):
    """:func:`fit`'s method for :func:`~lidvae_mini.models.loop.train_loop`: every epoch a seeded permutation of
    ``train`` in minibatches (fresh Bernoulli bits with ``binarize="dynamic"``), one step on the batch-mean
    ``model.loss`` each (under ``torch.autocast(bfloat16)`` with ``precision="bf16"``), validation by
    :func:`evaluate` every ``eval_every`` epochs and at the last. ``config``: :func:`fit`'s settings."""

    keys = HISTORY_KEYS
    progress_keys = ("train_neg_elbo", "valid_au")
    resume_defaults = _RESUME_DEFAULTS

    def __init__(self, model, train: torch.Tensor, valid, data_rng: torch.Generator, config: dict, *, epochs: int,
                 eval_every: int, eval_batch_size: int):
        self.model, self.train, self.valid, self.config = model, train, valid, config
        self.params = list(model.parameters())
        self.device = self.params[0].device
        self.optimizers = {"optimizer": _make_optimizer(config["optimizer"], self.params, config["lr"],
                                                        config["weight_decay"])}
        self.generators = {"data_rng": data_rng}
        self.epochs, self.eval_every, self.eval_batch_size = epochs, eval_every, eval_batch_size
        self.autocast = ((lambda: torch.autocast(device_type=self.device.type, dtype=torch.bfloat16))
                         if config["precision"] == "bf16" else contextlib.nullcontext)
        n, bs = train.shape[0], config["batch_size"]
        # per-batch multipliers of (ELBO sum, KL sum, batch-mean loss) into the epoch sums, full and last batches
        self.signs = {m: torch.tensor([-1.0, 1.0, float(m)], dtype=torch.float64, device=self.device)
                      for m in {bs, n % bs or bs}}

    def batches(self, epoch: int, step: int):
        rng, bs = self.generators["data_rng"], self.config["batch_size"]
        perm = torch.randperm(self.train.shape[0], generator=rng, device=rng.device)
        for b in range(0, self.train.shape[0], bs):
            xb = self.train[perm[b:b + bs]]
            if self.config["binarize"] == "dynamic":
                xb = torch.bernoulli(xb, generator=rng)
            yield xb.to(self.device, non_blocking=True)

    def step(self, xb: torch.Tensor, guard) -> torch.Tensor:
        with self.autocast():
            loss, parts = self.model.loss(xb, n_samples=self.config["n_samples"])
        update(self.optimizers["optimizer"], loss, self.params, self.config["grad_clip"], guard)
        sums = [parts["elbo"].detach().sum(), parts["kl"].detach().sum(), loss.detach()]
        return torch.stack([t.to(torch.float64) for t in sums]) * self.signs[xb.shape[0]]

    def end_epoch(self, epoch: int, sums, guard) -> dict:
        n = self.train.shape[0]
        neg_elbo, kl, loss_sum = sums.tolist()
        row = {"train_neg_elbo": neg_elbo / n, "train_kl": kl / n, "train_loss": loss_sum / n}
        evaluated = self.valid is not None and (epoch % self.eval_every == 0 or epoch == self.epochs)
        row.update(_validation_row(self.model, self.valid if evaluated else None, self.config["seed"], epoch,
                                   self.eval_batch_size, guard))
        return row

def _validation_row(model, valid, seed: int, epoch: int, batch_size: int, guard) -> dict:
    """The validation entries of epoch ``epoch`` (``nan`` when ``valid`` is None): :func:`evaluate` under the seed
    ``seed * 100_003 + epoch``, in an RNG forked on the CPU and the model's GPU so that the training stream is
    untouched. A non-finite negative ELBO is a divergence (``guard.diverged``)."""
    if valid is None:
        return {"valid_neg_elbo": math.nan, "valid_rec": math.nan, "valid_kl": math.nan, "valid_au": math.nan}
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed * 100_003 + epoch)
        ev = evaluate(model, valid, batch_size=batch_size)
    if not math.isfinite(ev["neg_elbo"]):
        guard.diverged("validation negative ELBO", ev["neg_elbo"])
    return {"valid_neg_elbo": ev["neg_elbo"], "valid_rec": ev["rec"], "valid_kl": ev["kl"], "valid_au": ev["au"]}


def _training_data(model, train_x, valid_x, binarize, seed: int, data_on_device, like: torch.Tensor):
    """:func:`fit`'s data: ``(train, valid or None, the generator of the shuffles and bits)``, checked by the
    model, in the parameters' dtype, the validation images binarised once (seeded) for ``binarize="dynamic"``, and
    placed on the model's device when they fit there (``data_on_device``; the generator then lives there too)."""
    device, data_dim = like.device, getattr(model, "data_dim", None)
    train = _as_tensor(train_x, "train_x", data_dim).to(like.dtype)
    if binarize == "dynamic":
        if bool(((train < 0) | (train > 1)).any()):
            raise ValueError("binarize='dynamic' needs train_x in [0, 1]")
    else:
        model.check_x(train[: min(len(train), 10_000)].to(device), "train_x")
    valid = None
    if valid_x is not None:
        valid = _as_tensor(valid_x, "valid_x", data_dim).to(like.dtype)
        if binarize == "dynamic" and not _is_binary(valid):
            if bool(((valid < 0) | (valid > 1)).any()):
                raise ValueError("binarize='dynamic' needs valid_x in [0, 1]")
            valid = torch.bernoulli(valid, generator=torch.Generator().manual_seed(seed))
        model.check_x(valid.to(device), "valid_x")
    # resident on the model's device (batches, shuffles and bits drawn there) or copied per batch
    resident = data_on_device if data_on_device is not None else _fits_on(device, train, valid)
    if resident:
        train = train.to(device)
        valid = valid.to(device) if valid is not None else None
        return train, valid, torch.Generator(device=device).manual_seed(seed)
    if device.type == "cuda":
        train = train.pin_memory()
    return train, valid, torch.Generator().manual_seed(seed)


def _fits_on(device: torch.device, *tensors) -> bool:
    """Whether the data may live on ``device``: always on a CPU; on a GPU when it takes at most a quarter of the
    free memory (the rest is for the model, its activations and the evaluation)."""
    if device.type != "cuda":
        return True
    need = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    free, _ = torch.cuda.mem_get_info(device)
    return need <= free // 4
