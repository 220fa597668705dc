"""The one training loop (issue 20): its protocol on a toy method, and that every trainer goes through it."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from conftest import ROOT
from lidvae_mini.models.loop import BestState, Method, NonFiniteLossError, train_loop, update


class LeastSquares(Method):
    """A linear regression by minibatch SGD: the smallest method (a NumPy generator orders the batches)."""

    keys = ("epoch", "train_loss", "valid_loss", "seconds")
    selection_key = "valid_loss"

    def __init__(self, model, x, y, stop_after=None, poison_step=None):
        self.model, self.x, self.y, self.stop_after, self.poison_step = model, x, y, stop_after, poison_step
        self.optimizers = {"optimizer": torch.optim.SGD(model.parameters(), lr=0.05)}
        self.generators = {"data_rng": np.random.default_rng(0)}
        self.config = {"lr": 0.05}
        self.epochs_run, self.steps = 0, 0

    def batches(self, epoch, step):
        for idx in np.array_split(self.generators["data_rng"].permutation(len(self.x)), 4):
            yield self.x[idx], self.y[idx]

    def step(self, batch, guard):
        x, y = batch
        self.steps += 1
        noise = torch.randn(()) * 1e-3                       # the loop's seeded torch stream
        loss = ((self.model(x).squeeze(-1) - y) ** 2).mean() + noise
        if self.steps == self.poison_step:
            loss = loss * math.nan
        update(self.optimizers["optimizer"], loss, list(self.model.parameters()), 1.0, guard)
        return torch.stack([loss.detach().double() * len(x), torch.tensor(float(len(x)), dtype=torch.float64)])

    def end_epoch(self, epoch, sums, guard):
        total, n = sums.tolist()
        self.epochs_run += 1
        with torch.no_grad():
            valid = float(((self.model(self.x).squeeze(-1) - self.y) ** 2).mean())
        return {"train_loss": total / n, "valid_loss": valid}

    def done(self):
        return self.stop_after is not None and self.epochs_run >= self.stop_after

    def state_dict(self):
        return {"epochs_run": self.epochs_run}

    def load_state_dict(self, state):
        self.epochs_run = state["epochs_run"]


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(40, generator=g)


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 1)


def test_a_method_trains_seeded_resumes_bitwise_and_leaves_the_callers_rng(tmp_path):
    x, y = _data()
    ref = _model()
    caller = torch.get_rng_state()
    h_ref = train_loop(ref, LeastSquares(ref, x, y), epochs=5, seed=3)
    assert torch.equal(torch.get_rng_state(), caller)            # the caller's stream is untouched
    assert h_ref["epoch"] == [1, 2, 3, 4, 5] and h_ref["valid_loss"][-1] < h_ref["valid_loss"][0]
    again = _model()
    assert train_loop(again, LeastSquares(again, x, y), epochs=5, seed=3)["train_loss"] == h_ref["train_loss"]
    first = _model()
    train_loop(first, LeastSquares(first, x, y), epochs=2, seed=3, checkpoint_dir=tmp_path)
    resumed = _model(seed=9)
    method = LeastSquares(resumed, x, y)
    h = train_loop(resumed, method, epochs=5, seed=3, checkpoint_dir=tmp_path)
    assert method.epochs_run == 5                                # its extra state came back from the checkpoint
    assert h["train_loss"] == h_ref["train_loss"] and torch.equal(resumed.weight, ref.weight)
    with pytest.raises(ValueError, match="different settings"):
        other = LeastSquares(_model(), x, y)
        other.config = {"lr": 0.1}
        train_loop(other.model, other, epochs=6, seed=3, checkpoint_dir=tmp_path)


def test_done_stops_early_and_hooks_and_best_state_run_in_order():
    x, y = _data()
    model, calls, best = _model(), [], BestState()
    h = train_loop(model, LeastSquares(model, x, y, stop_after=3), epochs=10, seed=0, best=best,
                   before_epoch=lambda m, e: calls.append(("before", e, torch.rand(()).item())),
                   after_epoch=lambda m, e: calls.append(("after", e)))
    assert h["epoch"] == [1, 2, 3]
    assert [c[:2] for c in calls] == [(w, e) for e in (1, 2, 3) for w in ("before", "after")]
    assert best.epoch == int(np.argmin(h["valid_loss"])) + 1 and best.value == min(h["valid_loss"])


def test_a_nan_restores_the_start_of_the_epoch_and_names_the_step(tmp_path):
    x, y = _data()
    model = _model()
    with pytest.raises(NonFiniteLossError, match=r"loss = nan at epoch 2, step 6\b") as info:
        train_loop(model, LeastSquares(model, x, y, poison_step=6), epochs=3, seed=0, checkpoint_dir=tmp_path,
                   finite_check_every=100)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert info.value.checkpoint == tmp_path / "checkpoint.pt" and state["epoch"] == 1
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())


TRAINERS = {"train.py": "fit", "baselines.py": "fit_aggressive", "avae.py": "fit_avae", "text.py": "fit_text"}


@pytest.mark.parametrize("module", sorted(TRAINERS))
def test_every_trainer_goes_through_the_one_loop(module):
    """No training module writes its own epochs: none calls ``backward`` or an optimizer's ``step`` itself (the
    loop's :func:`update` does), and each trainer hands a method to ``train_loop`` (``fit_aggressive`` also calls
    ``fit`` for its standard phase)."""
    src = (ROOT / "lidvae_mini" / "models" / module).read_text()
    assert not re.search(r"\.backward\(|\bopt\w*\.step\(", src), module
    body = src[src.index(f"def {TRAINERS[module]}("):]
    body = body[:body.index("\ndef ", 1) if "\ndef " in body[1:] else len(body)]
    assert "train_loop(" in body, f"{TRAINERS[module]} does not call train_loop"
