"""The one training loop every model of the book trains through (VAE, β-VAE, LIDVAE, the mixtures, SA-VAE, the
lagging VAE, the AVAE and the text models).

:func:`train_loop` owns what every method must guarantee; a *method* (a :class:`Method`) owns what differs between
them, in four calls: the epoch's batches, one step on a batch, the epoch's history row, and whether to stop early.

What the loop guarantees, for every method:

* **an explicit seed.** The loop runs in :func:`torch.random.fork_rng` (the caller's RNG is untouched) seeded with
  ``seed``; a method draws its shuffles and bits from generators of its own (``method.generators``), seeded by it.
  The same seed gives bitwise the same run on CPU.
* **checkpoint and resume.** After every epoch the model, the method's optimizers, the torch RNG, the method's
  generators, its extra state (``method.state_dict()``), the history and the best state so far are written
  atomically (a temporary file, then ``os.replace``) and read back with ``torch.load(weights_only=True)``. A run
  interrupted and resumed ends bitwise where an uninterrupted one does; a checkpoint written with other settings
  (``method.config``) is refused.
* **a NaN guard.** The loss and gradient norm of every step are recorded on the device (:class:`FiniteGuard`) and
  read every ``finite_check_every`` steps and at the end of the epoch; a non-finite value, a non-finite parameter
  or a non-finite validation entry restores the model and optimizers to the start of the epoch and raises
  :class:`NonFiniteLossError` naming the first bad step. No checkpoint is written from a diverged epoch.
* **clipping over all parameters**, in :func:`update` (the one optimisation step the methods share).
* **progress bars** over epochs only in interactive use (a terminal or a Jupyter kernel; never with
  ``TQDM_DISABLE`` set, as in CI).
* **model selection**: with a :class:`BestState` the parameters of the epoch with the lowest
  ``method.selection_key`` are kept (and checkpointed) for the caller to restore.

Why our own loop and not a library's (Lightning Fabric, Ignite, Accelerate): CONTRIBUTING.md, "The training loop".
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time
from pathlib import Path

import torch

#: Default checkpoint file name in a ``checkpoint_dir``.
CHECKPOINT_FILE = "checkpoint.pt"
#: Default steps between host reads of the device-side finiteness record.
FINITE_CHECK_EVERY = 100


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss, gradient, parameter or validation value; the last good checkpoint is kept.

    Attributes: ``epoch`` (1-based epoch that failed), ``step`` (global optimisation step), ``checkpoint``
    (path of the last good checkpoint, or ``None``).
    """

    def __init__(self, message: str, epoch: int, step: int, checkpoint: Path | None):
        super().__init__(message)
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint


class Method:
    """What one training method hands to :func:`train_loop` (subclass it; the defaults are those of a plain method).

    Attributes:
        keys: the history's keys, ``"epoch"`` and ``"seconds"`` included (the loop fills those two).
        config: settings a resumed run must share with the checkpoint (``{name: value}``).
        optimizers: ``{name: torch.optim.Optimizer}``, checkpointed under their names.
        generators: ``{name: torch.Generator | numpy.random.Generator}``, the method's own random streams,
            checkpointed under their names (a torch generator's device as ``name`` with ``_rng`` → ``_device``).
        selection_key: the history entry a :class:`BestState` minimises.
        progress_keys: the history entries shown beside the progress bar.
        resume_defaults: values of ``config`` keys for checkpoints written before those keys existed.
    """

    keys: tuple = ("epoch", "seconds")
    config: dict = {}
    optimizers: dict = {}
    generators: dict = {}
    selection_key = "valid_neg_elbo"
    progress_keys: tuple = ()
    resume_defaults: dict = {}

    def batches(self, epoch: int, step: int):
        """The epoch's batches (an iterable, drawn lazily from the method's generators); ``step``: steps so far."""
        raise NotImplementedError

    def step(self, batch, guard: "FiniteGuard") -> torch.Tensor:
        """One training step on ``batch``: returns a float64 tensor of the epoch sums it adds to (on the device)."""
        raise NotImplementedError

    def end_epoch(self, epoch: int, sums, guard: "FiniteGuard") -> dict:
        """The epoch's history row (every key but ``epoch`` and ``seconds``) from the summed step outputs; a
        non-finite validation value calls ``guard.diverged(what, value)``."""
        raise NotImplementedError

    def done(self) -> bool:
        """``True`` to stop before the next epoch (e.g. the end of an aggressive phase)."""
        return False

    def state_dict(self) -> dict:
        """Extra state to checkpoint (``{key: value}``, stored beside the loop's own keys)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` from a checkpoint (``state`` is the whole checkpoint)."""


class BestState:
    """The parameters at the lowest finite value seen so far (model selection on the validation split).
    ``offset`` is added to the epochs it records (a second phase of training counted after a first)."""

    def __init__(self):
        self.value, self.epoch, self.state, self.offset = math.inf, None, None, 0

    def update(self, model, value: float, epoch: int) -> None:
        if math.isfinite(value) and value < self.value:
            self.value, self.epoch = value, epoch + self.offset
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self, model) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


def train_loop(model, method: Method, *, epochs: int, seed: int, checkpoint_dir=None,
               checkpoint_file: str = CHECKPOINT_FILE, resume: bool = True, progress: bool | None = None,
               best: BestState | None = None, before_epoch=None, after_epoch=None,
               finite_check_every: int = FINITE_CHECK_EVERY) -> dict:
    """Train ``model`` in place with ``method`` up to epoch ``epochs``; return the history ``{key: [per epoch]}``.

    ``before_epoch(model, epoch)`` and ``after_epoch(model, epoch)`` are called around every epoch (numbered from 1),
    each in an RNG forked from the training stream so that a hook cannot change it. The guarantees are the
    module's. Raises :class:`NonFiniteLossError` (see the module doc) and ``ValueError`` for a checkpoint written
    with other settings.
    """
    device = next(model.parameters()).device
    cuda = [device.index or 0] if device.type == "cuda" else []
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = Path(checkpoint_dir) / checkpoint_file
        ckpt.parent.mkdir(parents=True, exist_ok=True)
    history, start, step = {k: [] for k in method.keys}, 0, 0
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        if ckpt is not None and resume and ckpt.is_file():
            history, start, step = _resume(ckpt, model, method, best, device)
        bar = _epoch_bar(progress, start, epochs, type(model).__name__)
        try:
            for epoch in range(start + 1, epochs + 1):
                if method.done():
                    break
                _hook(before_epoch, model, epoch, cuda)
                t0 = time.perf_counter()
                model.train()
                good = _snapshot(model, method.optimizers)     # what a divergence in this epoch restores
                guard = FiniteGuard(finite_check_every, device, step, (model, method, good, epoch, ckpt, history))
                sums = 0
                for batch in method.batches(epoch, step):
                    step += 1
                    sums = sums + _step(method, batch, guard)
                guard.check()
                if not _all_finite(model):
                    guard.diverged("parameter", math.nan)
                row = {"epoch": epoch, **method.end_epoch(epoch, sums, guard)}
                row["seconds"] = time.perf_counter() - t0
                for k in method.keys:
                    history[k].append(row[k])
                if best is not None:
                    best.update(model, row[method.selection_key], epoch)
                if ckpt is not None:
                    _save(ckpt, model, method, best, epoch, step, history, cuda, device)
                _hook(after_epoch, model, epoch, cuda)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{row[k]:.2f}" for k in method.progress_keys if math.isfinite(row[k])})
        finally:
            if bar is not None:
                bar.close()
    model.eval()
    return history


def _step(method: Method, batch, guard: "FiniteGuard") -> torch.Tensor:
    try:
        return method.step(batch, guard)
    except NonFiniteLossError:
        raise
    except Exception:
        # NaN parameters from an unchecked earlier step make a model's own input checks raise: report that step
        # (NonFiniteLossError), else the error itself
        guard.check()
        raise


def update(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list, grad_clip: float | None,
           guard: "FiniteGuard", zero=()) -> None:
    """One optimisation step: gradients of ``loss`` (after zeroing those of ``opt`` and of the optimizers in
    ``zero``), clipped to the global norm ``grad_clip`` over ``params`` (all the model's, unless a method says
    otherwise), the update of ``opt``; the loss and the gradient norm are recorded in ``guard``, no host read."""
    for o in (opt, *zero):
        o.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip is not None else grad_norm(params)
    opt.step()
    guard.record(loss.detach(), norm)


def grad_norm(params) -> torch.Tensor:
    """Global L2 norm of the gradients (a device tensor; no host synchronisation)."""
    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in params if p.grad is not None]
    if not norms:
        return torch.zeros((), device=params[0].device)
    return torch.linalg.vector_norm(torch.stack(norms))


class FiniteGuard:
    """Device-side record of the loss and gradient norm of the last steps, read on the host every ``every`` steps
    (and at the end of the epoch): the NaN guard without a host synchronisation per step. ``where``: ``(model,
    method, state at the start of the epoch, epoch, checkpoint path, history)``."""

    def __init__(self, every: int, device: torch.device, step: int, where: tuple):
        self.buf = torch.zeros(every, 2, dtype=torch.float64, device=device)
        self.every, self.filled, self.first_step, self.where = every, 0, step + 1, where

    def record(self, loss: torch.Tensor, norm: torch.Tensor) -> None:
        self.buf[self.filled, 0].copy_(loss)
        self.buf[self.filled, 1].copy_(norm.detach())
        self.filled += 1
        if self.filled == self.every:
            self.check()

    def check(self) -> None:
        """Raise :class:`NonFiniteLossError` (after restoring the epoch's start) at the first non-finite value."""
        if self.filled:
            for i, (loss, norm) in enumerate(self.buf[:self.filled].tolist()):
                for what, value in (("loss", loss), ("gradient norm", norm)):
                    if not math.isfinite(value):
                        self.diverged(what, value, self.first_step + i)
        self.first_step += self.filled
        self.filled = 0

    def diverged(self, what: str, value: float, step: int | None = None):
        """Restore the model and optimizers to the start of the epoch and raise :class:`NonFiniteLossError` (at
        ``step``, default the last step recorded)."""
        step = self.first_step - 1 + self.filled if step is None else step
        model, method, good, epoch, ckpt, history = self.where
        model.load_state_dict(good[0])
        for name, opt in method.optimizers.items():
            opt.load_state_dict(good[1][name])
        last = history["epoch"][-1] if history["epoch"] else None
        kept = ckpt if ckpt is not None and last else None
        where = f"the last good checkpoint (epoch {last}) is {ckpt}" if kept else "no checkpoint was written"
        raise NonFiniteLossError(
            f"training diverged: {what} = {value} at epoch {epoch}, step {step}; the model and optimizer were "
            f"restored to their state at the start of epoch {epoch} and {where}. Lower lr, set grad_clip, or check "
            "the data.", epoch=epoch, step=step, checkpoint=kept)


def load_checkpoint(path: str | os.PathLike, map_location="cpu", file: str = CHECKPOINT_FILE) -> dict:
    """Read a checkpoint of :func:`train_loop` with ``torch.load(weights_only=True)`` (no arbitrary pickles).

    Returns the dict with keys ``model``, ``torch_rng``, ``cuda_rng``, ``epoch``, ``step``, ``history``,
    ``config``, ``best`` and, under their own names, the method's optimizers (``optimizer`` for a single one), its
    generators (``data_rng``) and its extra state. Accepts the checkpoint file or the directory holding ``file``.

    Raises:
        FileNotFoundError: no checkpoint there.
    """
    path = Path(path)
    if path.is_dir():
        path = path / file
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def _save(path: Path, model, method: Method, best, epoch: int, step: int, history: dict, cuda, device) -> None:
    state = {"model": model.state_dict(), "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state(device) if cuda else None, "epoch": epoch, "step": step,
             "history": history, "config": method.config,
             "best": None if best is None or best.state is None else {"value": best.value, "epoch": best.epoch,
                                                                      "state": best.state}}
    state.update({name: opt.state_dict() for name, opt in method.optimizers.items()})
    for name, gen in method.generators.items():
        state[name] = _rng_state(gen)
        if isinstance(gen, torch.Generator):
            state[name.removesuffix("_rng") + "_device"] = gen.device.type
    state.update(method.state_dict())
    _atomic_save(state, path)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _resume(path: Path, model, method: Method, best, device) -> tuple[dict, int, int]:
    """Restore the model, optimizers, RNG states, method state and best state from ``path``; returns
    ``(history, epoch, step)``. Raises ``ValueError`` for other settings or shuffles drawn on another device."""
    state = load_checkpoint(path, map_location=device)
    saved = {k: state["config"].get(k, method.resume_defaults.get(k)) for k in method.config}
    diff = {k: (saved[k], v) for k, v in method.config.items() if saved[k] != v}
    if diff:
        raise ValueError(f"checkpoint {path} was written with different settings (saved, now): {diff}; pass "
                         "resume=False or another checkpoint_dir")
    for name, gen in method.generators.items():
        if isinstance(gen, torch.Generator):
            saved_on = state.get(name.removesuffix("_rng") + "_device", "cpu")
            if saved_on != gen.device.type:
                raise ValueError(f"checkpoint {path} drew its shuffles on {saved_on}, this run draws them on "
                                 f"{gen.device.type}: pass data_on_device={saved_on != 'cpu'} (or resume=False, or "
                                 "another checkpoint_dir)")
    model.load_state_dict(state["model"])
    for name, opt in method.optimizers.items():
        opt.load_state_dict(state[name])
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"].cpu())
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    for name, gen in method.generators.items():
        _set_rng_state(gen, state[name])
    method.load_state_dict(state)
    if best is not None and state.get("best"):
        best.value, best.epoch, best.state = state["best"]["value"], state["best"]["epoch"], state["best"]["state"]
    return {k: list(state["history"][k]) for k in method.keys}, int(state["epoch"]), int(state["step"])


def _rng_state(gen):
    return gen.get_state() if isinstance(gen, torch.Generator) else gen.bit_generator.state


def _set_rng_state(gen, state) -> None:
    if isinstance(gen, torch.Generator):
        gen.set_state(state.cpu())
    else:
        gen.bit_generator.state = state


def _hook(hook, model, epoch: int, cuda: list) -> None:
    if hook is not None:
        with torch.random.fork_rng(devices=cuda):
            hook(model, epoch)


def _snapshot(model, optimizers: dict) -> tuple[dict, dict]:
    """Copies of the model's and the optimizers' state (restored when the epoch diverges)."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {name: copy.deepcopy(opt.state_dict()) for name, opt in optimizers.items()})


def _all_finite(model) -> bool:
    """Every parameter finite (one host read)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def show_progress(progress) -> bool:
    """Whether to show a progress bar: ``progress`` when given, else only in interactive use (a terminal or a
    Jupyter kernel) and never with ``TQDM_DISABLE`` set."""
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


def _epoch_bar(progress, start_epoch: int, epochs: int, name: str):
    """A tqdm bar over the epochs still to run, or ``None`` (see :func:`show_progress`)."""
    if not show_progress(progress) or start_epoch >= epochs:
        return None
    from tqdm import tqdm
    return tqdm(total=epochs, initial=start_epoch, desc=name, unit="epoch", file=sys.stderr, disable=False)

