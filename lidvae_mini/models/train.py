"""One ELBO training loop for every VAE in the book (VAE, β-VAE, LIDVAE; Gaussian or RealNVP encoders).

:func:`fit` maximises the ELBO (paper §3.2: "we use the classical amortized inference algorithm of VAE")
by minibatch stochastic gradients on the batch-mean negative objective ``rec + β·KL`` (β = 1 except for
the β-VAE), and records per epoch the training and validation negative ELBO, KL and active units (AU).

It fixes the training-protocol defects of the official code (``yixinwang/lidvae-public`` at commit ``8a0a6a5``; the
book's appendix *Errata of the reference implementation*):

* gradient clipping over **all** parameters (``model.parameters()``; nothing is kept in plain lists);
* an explicit ``seed``: the same seed gives the same numbers on CPU (shuffling and dynamic binarisation use
  a dedicated ``torch.Generator``; reparameterisation noise uses the global torch RNG, seeded inside an
  isolated :func:`torch.random.fork_rng` so the caller's RNG is left untouched);
* a NaN/inf guard: a non-finite loss, gradient or parameter stops training with
  :class:`NonFiniteLossError`; no bad update is kept or saved (details below);
* validation on the whole held-out set, without replacement, every ``eval_every`` epochs;
* checkpoints every epoch (model, optimizer, RNG states, epoch, history) written atomically (temporary
  file, then ``os.replace``) and read back with ``torch.load(weights_only=True)``. A run that is
  interrupted and resumed ends with the same parameters, bitwise on CPU, as an uninterrupted one.

Efficiency (issue 9; the same numbers on CPU as the loop before it, bitwise: same draws in the same order, the
epoch sums accumulated in float64 in the same order):

* the training set lives on the model's device when it fits (``data_on_device``): batches are indexed there and
  the shuffles and binarisation bits are drawn there, from a generator on that device seeded by ``seed``. On a
  CPU nothing changes; on a GPU the stream of shuffles differs from a CPU run's (same seed, same numbers on the
  same kind of device), and the generator's device is recorded in the checkpoint;
* no host synchronisation per step: the epoch sums are device tensors read once per epoch, and the loss and
  gradient norm of every step are recorded on the device and read every ``finite_check_every`` steps and at
  the end of the epoch. When the record shows a non-finite value, the model and the optimizer are restored to
  their state at the start of that epoch (the last checkpoint, when there is one) and
  :class:`NonFiniteLossError` names the first bad step. (Before, the check ran before every update and the model
  kept the last good step's parameters; a checkpoint is still never written from a diverged epoch.);
* ``precision="bf16"``: the loss under ``torch.autocast(bfloat16)``, float32 master weights (see :func:`fit`).

The model's own input checks (:mod:`lidvae_mini._checks`, the decoders' data checks) still read the batch on
the host once or more per step; with the data validated once here, they are the remaining synchronisations.

Dynamic binarisation (``binarize="dynamic"``): every training batch is redrawn as ``Bernoulli(x)`` each time
it is visited (images in [0, 1]); validation images that are not already binary are binarised once, with a
generator seeded by ``seed`` (a fixed binarisation, the same for every epoch).
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from pathlib import Path

import torch

from .._checks import as_float_array, check_choice, check_int, check_positive
from .encoders import MEAN_SAMPLES

CHECKPOINT_FILE = "checkpoint.pt"
OPTIMIZERS = ("adam", "rmsprop", "sgd")
BINARIZE = (None, "dynamic")
#: Training precisions of :func:`fit`: float32, or the loss under ``torch.autocast`` in bfloat16.
PRECISIONS = ("fp32", "bf16")
#: Default steps between host reads of :func:`fit`'s device-side finiteness record.
FINITE_CHECK_EVERY = 100
#: Keys of the history returned by :func:`fit` (one entry per epoch; ``nan`` where not evaluated).
HISTORY_KEYS = ("epoch", "train_neg_elbo", "train_kl", "train_loss", "valid_neg_elbo", "valid_rec", "valid_kl",
                "valid_au", "seconds")
# Settings that must match when resuming (anything that changes the sequence of updates).
_RESUME_KEYS = ("batch_size", "lr", "optimizer", "seed", "binarize", "grad_clip", "weight_decay", "n_samples",
                "n_train", "precision")
# values of resume keys added later, for checkpoints written before them
_RESUME_DEFAULTS = {"precision": "fp32"}


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss, gradient or parameter; the last good checkpoint is kept.

    Attributes: ``epoch`` (1-based epoch that failed), ``step`` (global optimisation step), ``checkpoint``
    (path of the last good checkpoint, or ``None``).
    """

    def __init__(self, message: str, epoch: int, step: int, checkpoint: Path | None):
        super().__init__(message)
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint


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


def _show_progress(progress) -> bool:
    if progress is not None:
        return bool(progress)
    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    return _in_notebook() or _stderr_is_tty()


def _stderr_is_tty() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def _in_notebook() -> bool:
    """True inside a running Jupyter kernel (IPython's ZMQ shell), e.g. a reader's notebook or Colab."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # pragma: no cover - exotic IPython states
        return False
    return shell is not None and type(shell).__name__ in ("ZMQInteractiveShell", "Shell")


def _make_optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":  # the official sweep: RMSProp(lr, momentum 0.5, decay 0.9, eps 1e-10)
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, momentum=0.5, eps=1e-10, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`fit` with ``torch.load(weights_only=True)`` (no arbitrary pickles).

    Returns the dict with keys ``model``, ``optimizer``, ``torch_rng``, ``data_rng``, ``cuda_rng``, ``epoch``,
    ``step``, ``history`` and ``config``. Accepts the checkpoint file or the directory holding it.

    Raises:
        FileNotFoundError: no checkpoint there.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def _all_finite(model) -> bool:
    """Every parameter finite (one host read)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


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
        finite_check_every: int = FINITE_CHECK_EVERY) -> dict:
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

    Returns:
        history: ``{key: list}`` with one entry per epoch for every key of :data:`HISTORY_KEYS`;
        negative ELBO, reconstruction and KL are mean nats per datapoint (``train_loss`` is the β-weighted
        objective); ``valid_*`` are ``nan`` on epochs without validation; ``valid_au`` is a count.

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
    batch_size, eval_every = check_int(batch_size, "batch_size"), check_int(eval_every, "eval_every")
    n_samples = check_int(n_samples, "n_samples")
    finite_check_every = check_int(finite_check_every, "finite_check_every")
    lr = check_positive(lr, "lr")
    grad_clip = check_positive(grad_clip, "grad_clip") if grad_clip is not None else None
    for value, name, options in ((optimizer, "optimizer", OPTIMIZERS), (binarize, "binarize", BINARIZE),
                                 (precision, "precision", PRECISIONS)):
        check_choice(value, name, options)
    if data_on_device is not None and not isinstance(data_on_device, bool):
        raise TypeError(f"data_on_device must be None, True or False, got {data_on_device!r}")
    weight_decay = float(weight_decay)
    if not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    params = list(model.parameters())
    if not params:
        raise ValueError("model has no parameters")
    device = params[0].device
    train, valid, data_rng = _training_data(model, train_x, valid_x, binarize, seed, data_on_device, params[0])

    config = {"batch_size": batch_size, "lr": lr, "optimizer": optimizer, "seed": seed, "binarize": binarize,
              "grad_clip": grad_clip, "weight_decay": weight_decay, "n_samples": n_samples,
              "n_train": int(train.shape[0]), "precision": precision}
    opt = _make_optimizer(optimizer, params, lr, weight_decay)
    history = {k: [] for k in HISTORY_KEYS}
    start_epoch, step = 0, 0
    ckpt_path = None
    if checkpoint_dir is not None:
        ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    autocast = ((lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)) if precision == "bf16"
                else contextlib.nullcontext)

    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        if ckpt_path is not None and resume and ckpt_path.is_file():
            history, start_epoch, step = _resume(ckpt_path, model, opt, data_rng, config, device)

        bar = _epoch_bar(progress, start_epoch, epochs, type(model).__name__)
        n = train.shape[0]
        # per-batch multipliers of (elbo sum, kl sum, batch-mean loss) into the epoch sums, for full and last batches
        signs = {m: torch.tensor([-1.0, 1.0, float(m)], dtype=torch.float64, device=device)
                 for m in {batch_size, n % batch_size or batch_size}}
        try:
            for epoch in range(start_epoch + 1, epochs + 1):
                t0 = time.perf_counter()
                model.train()
                good = _snapshot(model, opt)          # what a divergence in this epoch restores
                guard = _FiniteGuard(finite_check_every, device, step)
                perm = torch.randperm(n, generator=data_rng, device=data_rng.device)
                sums = torch.zeros(3, dtype=torch.float64, device=device)
                for b in range(0, n, batch_size):
                    xb = train[perm[b:b + batch_size]]
                    if binarize == "dynamic":
                        xb = torch.bernoulli(xb, generator=data_rng)
                    step += 1
                    sums += _elbo_step(model, opt, params, xb.to(device, non_blocking=True), n_samples, grad_clip,
                                       autocast, guard, (good, epoch, ckpt_path, history)) * signs[xb.shape[0]]
                guard.check(model, opt, good, epoch, ckpt_path, history)
                if not _all_finite(model):
                    _diverged("parameter", float("nan"), epoch, step, ckpt_path, history, model, opt, good)
                neg_elbo, kl, loss_sum = sums.tolist()
                row = {"epoch": epoch, "train_neg_elbo": neg_elbo / n, "train_kl": kl / n, "train_loss": loss_sum / n}
                evaluated = valid is not None and (epoch % eval_every == 0 or epoch == epochs)
                row.update(_validation_row(model, valid if evaluated else None, seed * 100_003 + epoch,
                                           eval_batch_size, cuda_devices))
                if evaluated and not math.isfinite(row["valid_neg_elbo"]):
                    _diverged("validation negative ELBO", row["valid_neg_elbo"], epoch, step, ckpt_path, history,
                              model, opt, good)
                row["seconds"] = time.perf_counter() - t0
                for k in HISTORY_KEYS:
                    history[k].append(row[k])
                if ckpt_path is not None:
                    _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                  "torch_rng": torch.get_rng_state(),
                                  "cuda_rng": torch.cuda.get_rng_state(device) if cuda_devices else None,
                                  "data_rng": data_rng.get_state(), "data_device": data_rng.device.type,
                                  "epoch": epoch, "step": step, "history": history, "config": config}, ckpt_path)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({"neg_elbo": f"{row['train_neg_elbo']:.2f}"}
                                    | ({"AU": int(row["valid_au"])} if math.isfinite(row["valid_au"]) else {}))
        finally:
            if bar is not None:
                bar.close()
    model.eval()
    return history


def _epoch_bar(progress, start_epoch: int, epochs: int, name: str):
    """A tqdm bar over the epochs still to run, or ``None`` (see :func:`_show_progress`)."""
    if not _show_progress(progress) or start_epoch >= epochs:
        return None
    from tqdm import tqdm
    return tqdm(total=epochs, initial=start_epoch, desc=name, unit="epoch", file=sys.stderr, disable=False)


def _validation_row(model, valid, seed: int, batch_size: int, cuda_devices: list) -> dict:
    """:func:`fit`'s validation entries of one epoch (``nan`` when ``valid`` is None): :func:`evaluate` under its
    own seed, in an RNG forked on the CPU and ``cuda_devices`` (the model's) so that the training stream is
    untouched."""
    if valid is None:
        return {"valid_neg_elbo": math.nan, "valid_rec": math.nan, "valid_kl": math.nan, "valid_au": math.nan}
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        ev = evaluate(model, valid, batch_size=batch_size)
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


def _resume(ckpt_path: Path, model, opt, data_rng: torch.Generator, config: dict, device: torch.device):
    """Restore :func:`fit`'s model, optimizer and random states from ``ckpt_path``; returns ``(history, epoch,
    step)``. Raises ``ValueError`` when the checkpoint was written with other settings or drew its shuffles on
    another kind of device."""
    state = load_checkpoint(ckpt_path, map_location=device)
    diff = {k: (state["config"].get(k, _RESUME_DEFAULTS.get(k)), config[k]) for k in _RESUME_KEYS
            if state["config"].get(k, _RESUME_DEFAULTS.get(k)) != config[k]}
    if diff:
        raise ValueError(f"checkpoint {ckpt_path} was written with different settings "
                         f"(saved, now): {diff}; pass resume=False or another checkpoint_dir")
    saved_on = state.get("data_device", "cpu")
    if saved_on != data_rng.device.type:
        raise ValueError(f"checkpoint {ckpt_path} drew its shuffles on {saved_on}, this run draws them on "
                         f"{data_rng.device.type}: pass data_on_device={saved_on != 'cpu'} (or "
                         "resume=False, or another checkpoint_dir)")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"].cpu())
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    data_rng.set_state(state["data_rng"].cpu())
    return {k: list(state["history"][k]) for k in HISTORY_KEYS}, int(state["epoch"]), int(state["step"])


def _elbo_step(model, opt, params: list, xb: torch.Tensor, n_samples: int, grad_clip, autocast, guard,
               where) -> torch.Tensor:
    """One optimisation step of :func:`fit` on the batch ``xb``: the loss under ``autocast``, backward, clipping
    over all parameters, the update. Returns the device tensor ``(sum of the ELBO, sum of the KL, batch-mean
    loss)`` in float64 (no host synchronisation) and records the loss and gradient norm in ``guard``, which is read
    when full; ``params``: the model's parameters (clipped together); ``where``: ``(state restored on divergence,
    epoch, checkpoint path, history)``."""
    try:
        with autocast():
            loss, parts = model.loss(xb, n_samples=n_samples)
    except Exception:
        # NaN parameters from an unchecked earlier step make the model's own input checks raise: report that
        # step (NonFiniteLossError), else the error itself
        guard.check(model, opt, *where)
        raise
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip is not None else _grad_norm(params)
    opt.step()
    loss = loss.detach()
    guard.record(loss, norm)
    if guard.full():
        guard.check(model, opt, *where)
    return torch.stack([_f64(parts["elbo"].detach().sum()), _f64(parts["kl"].detach().sum()), _f64(loss)])


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64)


def _grad_norm(params) -> torch.Tensor:
    """Global L2 norm of the gradients (a device tensor; no host synchronisation)."""
    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in params if p.grad is not None]
    if not norms:
        return torch.zeros((), device=params[0].device)
    return torch.linalg.vector_norm(torch.stack(norms))


def _fits_on(device: torch.device, *tensors) -> bool:
    """Whether the data may live on ``device``: always on a CPU; on a GPU when it takes at most a quarter of the
    free memory (the rest is for the model, its activations and the evaluation)."""
    if device.type != "cuda":
        return True
    need = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    free, _ = torch.cuda.mem_get_info(device)
    return need <= free // 4


def _snapshot(model, opt) -> tuple[dict, dict]:
    """Copies of the model's and the optimizer's state (restored when the epoch diverges)."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, copy.deepcopy(opt.state_dict()))


class _FiniteGuard:
    """Device-side record of the loss and gradient norm of the last steps, read on the host every ``every``
    steps (and at the end of the epoch): the check of :func:`fit` without a host synchronisation per step."""

    def __init__(self, every: int, device: torch.device, step: int):
        self.buf = torch.zeros(every, 2, dtype=torch.float64, device=device)
        self.every, self.filled, self.first_step = every, 0, step + 1

    def record(self, loss: torch.Tensor, norm: torch.Tensor) -> None:
        self.buf[self.filled, 0].copy_(loss)
        self.buf[self.filled, 1].copy_(norm.detach())
        self.filled += 1

    def full(self) -> bool:
        return self.filled == self.every

    def check(self, model, opt, good, epoch: int, ckpt_path, history) -> None:
        """Raise :class:`NonFiniteLossError` (after restoring ``good``) at the first recorded non-finite value."""
        if self.filled:
            for i, (loss, norm) in enumerate(self.buf[:self.filled].tolist()):
                if not math.isfinite(loss):
                    _diverged("loss", loss, epoch, self.first_step + i, ckpt_path, history, model, opt, good)
                if not math.isfinite(norm):
                    _diverged("gradient norm", norm, epoch, self.first_step + i, ckpt_path, history, model, opt, good)
        self.first_step += self.filled
        self.filled = 0


def _diverged(what: str, value: float, epoch: int, step: int, ckpt_path: Path | None, history: dict,
              model=None, opt=None, good=None):
    if good is not None:
        model.load_state_dict(good[0])
        opt.load_state_dict(good[1])
    last = history["epoch"][-1] if history["epoch"] else None
    where = (f"the last good checkpoint (epoch {last}) is {ckpt_path}" if ckpt_path is not None and last
             else "no checkpoint was written")
    raise NonFiniteLossError(
        f"training diverged: {what} = {value} at epoch {epoch}, step {step}; the model and optimizer were restored "
        f"to their state at the start of epoch {epoch} and {where}. Lower lr, set grad_clip, or check the data.",
        epoch=epoch, step=step, checkpoint=ckpt_path if (ckpt_path is not None and last) else None)
