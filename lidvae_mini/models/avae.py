"""The aggregate VAE (AVAE): a deterministic encoder whose aggregate posterior is matched to the prior by a KDE.

Source: S. Saha, S. Joshi and R. Whitaker, *Matching aggregate posteriors in the variational autoencoder*,
ICPR 2024 (arXiv:2311.07693), and its public code, repository ``Surojit-Utah/AVAE`` at commit ``0fcc979``
(TensorFlow 2 model and trainer; a PyTorch bandwidth estimator). Paths below are relative to that repository.

Model (paper §3; ``models/ae_model_MNIST.py``, ``train/trainer.py``):

* a **deterministic** encoder ``z = E_phi(x)`` (:class:`DeterministicEncoder`; no variance head), a Gaussian or
  Bernoulli decoder ``p_theta(x | z)`` (the book's :class:`~lidvae_mini.models.decoders.MLPDecoder`, or the LIDVAE's
  injective :class:`~lidvae_mini.models.decoders.InjectiveDecoder` for the "LID-AVAE" of chapter 10, which neither
  paper has), and the prior ``p(z) = N(0, I_d)``;
* the aggregate posterior ``q(z)`` is a Gaussian **kernel density estimate** over the codes
  ``z'_i = E_phi(x'_i)`` of a KDE subset of the training data (size ``m``; re-drawn every epoch and held out of
  that epoch's minibatches; its codes computed without gradient and refreshed every few iterations):
  ``q_h(z) = (1/m) sum_i N(z; z'_i, h^2 I)`` (:func:`kde_log_density`);
* the loss of a minibatch ``x_1..x_B`` with codes ``z_b`` is

  .. math::

      L = \\frac{1}{B}\\sum_b \\frac{-\\log p_\\theta(x_b \\mid z_b)}{s}
          + \\frac{1}{B}\\sum_b \\big[\\log q_h(z_b) - \\log p(z_b)\\big],

  the reconstruction scaled by a data-driven ``1/s`` plus a Monte Carlo estimate of
  ``KL(q(z) || p(z))`` at the minibatch codes (:func:`kl_to_prior`). ``s`` is fixed within an epoch and set at
  its end to the square root of the mean validation reconstruction error (``train/trainer.py``,
  ``Train.run_an_epoch``, validation branch: ``sigma_init_val = sqrt(avg_ae_loss_wo_const)``): the paper's
  data-driven β schedule. The reference's reconstruction error is the per-image squared error (Gaussian) or
  the per-image binary cross-entropy (``loss/avae_loss.py``, ``autoencoder_loss`` / ``autoencoder_ce_loss``).
  The loss's reconstruction term here is ``-log p_theta(x | z)`` in nats per image, which is the binary
  cross-entropy for the Bernoulli head and the squared error over ``2 sigma^2`` plus a constant for the Gaussian
  head. The **scale** ``s`` is set, as in the reference, from an error that is positive for every head
  (:meth:`AVAE.scale_error`): the binary cross-entropy (Bernoulli), the squared error ``|x - mean|^2`` (Gaussian).
  A Gaussian ``-log p`` can be negative (a learned noise scale below ``(2 pi e)^{-1/2}``), and ``s`` taken from
  it would collapse to its floor and weight the reconstruction by ~``10^6``, silencing the KL.

**What changes against the reference code** (``loss/avae_loss.py``, ``compute_kde_expectation``): the reference
evaluates ``log10(q(z) + eps) - log10(p(z) + 1e-30)`` from sums of exponentials, with a floor ``eps`` equal to
the kernel value at a chi-square quantile (``train/trainer.py``, ``get_epsilon``). Here everything is in
**nats** and ``log q`` is a ``logsumexp``. Two consequences: (1) the KL term is ``ln 10 = 2.303`` times the
reference's for the same ``s``: the reference weights its KL by ``1/ln 10`` relative to ours (set
``kl_weight = 1/ln(10)`` in :func:`fit_avae` to reproduce its balance); (2) a code far from every KDE code,
where the reference's sum underflows to 0 and the floor makes the KL gradient exactly zero, still receives a
gradient towards its nearest KDE codes. Both densities carry their full normalisation (the ``(2 pi)^{-d/2}``
the reference drops from both cancels in the difference).

**Bandwidth** (``KDE_Bandwidth/KDE_bw_estimation.py``, ``KDE_Bandwidth/optim/MLE_optim.py``): the reference
chooses ``h`` by minimising ``KL(p || q_h)`` when the ``m`` KDE codes are themselves draws from ``N(0, I_d)``
(Adam on fresh prior samples), then applies the bias correction ``h <- h / sqrt(1 + h^2)``: a KDE of codes
distributed as ``N(0, (1 - h^2) I)`` has the prior ``N(0, I)`` as its mean, so the trained aggregate posterior
is ``N(0, (1 - h^2) I)`` and generation draws ``z`` from it (:meth:`AVAE.sample`). :func:`bandwidth` computes
the same argmin with SciPy's bounded scalar minimiser on a seeded Monte Carlo estimate
(:func:`bandwidth_criterion`, common random numbers for every ``h``).

The only differences from the reference's training protocol are stated in :func:`fit_avae` (no BatchNorm, no
learning-rate schedule, a seeded generator, dynamic binarisation for the Bernoulli head).
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp as np_logsumexp
from torch import nn
from torch.utils.checkpoint import checkpoint

from .._checks import check_choice, check_int, check_positive, hidden_sizes
from .decoders import (InjectiveDecoder, MLPDecoder, bernoulli_kl_from_logits, book_decoder, count_parameters,
                       decoder_variant, matched_mlp_hidden)
from .encoders import mlp, standard_normal_log_prob
from ..evaluation.metrics import active_units
from .loop import Method, NonFiniteLossError, train_loop, update  # noqa: F401  (NonFiniteLossError: raised here)
from .train import _as_tensor
from .vae import SUPPORTED_HEADS, DecoderFacts, EncoderFacts, check_encoder_decoder

LOG_2PI = math.log(2.0 * math.pi)
KINDS = ("avae", "lid_avae")
CHECKPOINT_FILE = "avae_checkpoint.pt"
#: Default number of KDE codes per chunk of :func:`kde_log_density`.
KDE_CHUNK = 512
#: Keys of the history returned by :func:`fit_avae` (one entry per epoch).
HISTORY_KEYS = ("epoch", "train_loss", "train_rec", "train_kl", "valid_rec", "valid_kl", "valid_au", "scale",
                "seconds")


# ----------------------------------------------------------------------------------------------- bandwidth
def _check_dims(d, m) -> tuple[int, int]:
    d = check_int(d, "d (latent dimension)")
    m = check_int(m, "m (KDE size)", minimum=2)
    return d, m


@functools.lru_cache(maxsize=64)
def _bandwidth_draws(d: int, m: int, n_eval: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances (n_eval, m) between prior draws and KDE codes drawn from N(0, I_d), and |z|^2 (n_eval,)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, d, m, n_eval]))
    codes = rng.standard_normal((m, d))
    z = rng.standard_normal((n_eval, d))
    d2 = (z ** 2).sum(1)[:, None] + (codes ** 2).sum(1)[None, :] - 2.0 * z @ codes.T
    return np.maximum(d2, 0.0), (z ** 2).sum(1)


def bandwidth_criterion(h, d: int, m: int, n_eval: int = 1000, seed: int = 0) -> float:
    """Monte Carlo estimate of ``KL(p || q_h)`` in nats, the quantity :func:`bandwidth` minimises.

    ``p = N(0, I_d)``; ``q_h`` is the Gaussian KDE of bandwidth ``h`` over ``m`` codes drawn from ``p``;
    the expectation is over ``n_eval`` further draws from ``p`` (all draws float64, fixed by ``seed``, the same
    for every ``h``: common random numbers, so the estimate is a smooth function of ``h``). Cost
    ``O(n_eval * m * d)`` once per ``(d, m, n_eval, seed)`` (cached), then ``O(n_eval * m)`` per ``h``.

    Raises:
        ValueError: ``h <= 0``, ``d < 1``, ``m < 2``, ``n_eval < 1``.
    """
    h = check_positive(h, "bandwidth h")
    d, m = _check_dims(d, m)
    n_eval = check_int(n_eval, "n_eval")
    seed = check_int(seed, "seed", minimum=0)
    d2, z2 = _bandwidth_draws(d, m, n_eval, seed)
    log_q = np_logsumexp(-d2 / (2.0 * h * h), axis=1) - math.log(m) - d * math.log(h) - 0.5 * d * LOG_2PI
    log_p = -0.5 * z2 - 0.5 * d * LOG_2PI
    return float(np.mean(log_p - log_q))


def bandwidth(d: int, m: int, *, corrected: bool = True, n_eval: int = 1000, seed: int = 0,
              bounds: tuple[float, float] = (1e-2, 10.0)) -> float:
    """The AVAE's KDE bandwidth ``h`` for latent dimension ``d`` and KDE size ``m``.

    ``h_opt = argmin_h KL(N(0, I_d) || q_h)`` with ``q_h`` the KDE of ``m`` codes drawn from ``N(0, I_d)``
    (:func:`bandwidth_criterion`, minimised over ``log h`` in ``bounds`` by SciPy's bounded Brent method), then,
    with ``corrected=True``, the bias correction ``h = h_opt / sqrt(1 + h_opt^2)`` in ``(0, 1)``: the
    bandwidth to train with; generate from ``N(0, (1 - h^2) I)``. Reference: ``Surojit-Utah/AVAE`` at
    ``0fcc979``, ``KDE_Bandwidth/KDE_bw_estimation.py`` (its Adam search, best of 3 starts; the argmin is the
    same). Its tabulated values, e.g. ``d = 10``: ``h_opt = 0.74`` at ``m = 500`` and ``0.60`` at
    ``m = 10,000``, are checked in ``tests/test_avae.py``. ``h`` decreases with ``m`` (a larger KDE needs
    less smoothing). Deterministic for a given ``seed``; cost about one second for ``m = 10,000``, ``d = 16``.

    Raises:
        ValueError: ``d < 1``, ``m < 2``, bad ``bounds``, or the minimum lies on a bound.
    """
    d, m = _check_dims(d, m)
    lo, hi = (check_positive(b, "bounds") for b in bounds)
    if not lo < hi:
        raise ValueError(f"bounds must be increasing, got {bounds!r}")
    res = minimize_scalar(lambda t: bandwidth_criterion(math.exp(t), d, m, n_eval, seed),
                          bounds=(math.log(lo), math.log(hi)), method="bounded", options={"xatol": 1e-4})
    h_opt = math.exp(res.x)
    if min(abs(res.x - math.log(lo)), abs(res.x - math.log(hi))) < 1e-3:
        raise ValueError(f"bandwidth minimum at the bound {h_opt:.4g} of {bounds}; widen the bounds")
    return h_opt / math.sqrt(1.0 + h_opt ** 2) if corrected else h_opt


# ------------------------------------------------------------------------------------------------ KDE, KL
def _check_kde_inputs(z, codes, h) -> float:
    if not isinstance(z, torch.Tensor) or not isinstance(codes, torch.Tensor):
        raise TypeError("z and codes must be torch.Tensors")
    if z.ndim != 2 or codes.ndim != 2 or z.shape[1] != codes.shape[1]:
        raise ValueError(f"z (B, d) and codes (m, d) must share d, got {tuple(z.shape)} and {tuple(codes.shape)}")
    if codes.shape[0] < 2:
        raise ValueError(f"the KDE needs m >= 2 codes, got {codes.shape[0]}")
    if not (torch.is_floating_point(z) and torch.is_floating_point(codes)):
        raise TypeError("z and codes must be floating point")
    if z.dtype != codes.dtype or z.device != codes.device:
        raise ValueError(f"z and codes differ in dtype/device: {z.dtype}/{z.device} vs {codes.dtype}/{codes.device}")
    if not bool(torch.isfinite(codes).all()) or not bool(torch.isfinite(z.detach()).all()):
        raise ValueError("z and codes must be finite")
    return check_positive(h, "bandwidth h")


def _chunk_logsumexp(z: torch.Tensor, c: torch.Tensor, inv2h2: float) -> torch.Tensor:
    d2 = (z.unsqueeze(1) - c.unsqueeze(0)).pow(2).sum(-1)          # (B, chunk), exact (no cancellation)
    return torch.logsumexp(-d2 * inv2h2, dim=1)


def kde_log_density(z: torch.Tensor, codes: torch.Tensor, h: float, chunk: int = KDE_CHUNK) -> torch.Tensor:
    """``log q_h(z)`` of the Gaussian KDE ``q_h(z) = (1/m) sum_i N(z; codes_i, h^2 I_d)``, nats, shape (B,).

    Args:
        z: (B, d) points (gradients flow through them); codes: (m, d) KDE centres, ``m >= 2`` (treated as
            constants in the AVAE: pass them detached); h: bandwidth > 0; chunk: KDE codes per chunk.

    The sum over the ``m`` codes runs in chunks with a ``logsumexp`` per chunk, combined by a final
    ``logsumexp`` (exact in any chunking, up to rounding). When ``z`` needs gradients each chunk is recomputed in
    the backward pass (``torch.utils.checkpoint``) instead of storing its (B, chunk) distance matrix, so memory
    is bounded by a few (B, chunk) tensors in both passes. Peak memory for B = 100, m = 10,000, d = 16, float32,
    forward and backward (measured with the PyTorch profiler's CPU allocations, and
    ``benchmarks/_memory.py``'s ``saved_storage_mib`` for what autograd keeps): about 6.4 MiB at the default
    chunk of 512 (25 MiB at 2048), of which 0.6 MiB is kept for backward (the codes themselves); without chunking
    and recomputation it is 126 MiB, 65 MiB of it kept for backward. ``tests/test_avae.py`` checks the result
    against a brute-force sum and bounds what is kept for backward.

    Raises:
        TypeError: not floating-point tensors.
        ValueError: shapes disagree, ``m < 2``, non-finite entries, ``h <= 0``, ``chunk < 1``.
    """
    h = _check_kde_inputs(z, codes, h)
    chunk = check_int(chunk, "chunk")
    m, d = codes.shape
    inv2h2 = 1.0 / (2.0 * h * h)
    parts = []
    for start in range(0, m, chunk):
        c = codes[start:start + chunk]
        if z.requires_grad and torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_logsumexp, z, c, inv2h2, use_reentrant=False))
        else:
            parts.append(_chunk_logsumexp(z, c, inv2h2))
    lse = torch.logsumexp(torch.stack(parts, dim=1), dim=1)
    return lse - math.log(m) - d * math.log(h) - 0.5 * d * LOG_2PI


def kl_to_prior(z: torch.Tensor, codes: torch.Tensor, h: float, chunk: int = KDE_CHUNK,
                reduce: bool = True) -> torch.Tensor:
    """Monte Carlo ``KL(q_h || N(0, I))`` at the codes ``z``: ``mean_b [log q_h(z_b) - log p(z_b)]``, nats.

    ``q_h`` is the KDE over ``codes`` (:func:`kde_log_density`). When ``z ~ q`` this estimates the KL of the
    aggregate posterior to the prior (AVAE paper Eq. 6; ``loss/avae_loss.py``, ``compute_kde_expectation``,
    there in log base 10 with an epsilon floor). ``reduce=False`` returns the per-point terms, shape (B,).

    Raises:
        as :func:`kde_log_density`.
    """
    terms = kde_log_density(z, codes, h, chunk) - standard_normal_log_prob(z)
    return terms.mean() if reduce else terms


# ------------------------------------------------------------------------------- decoder sensitivity (Def. 2)
@torch.no_grad()
def decoder_sensitivity(decoder: nn.Module, step: float = 0.5, n_samples: int = 1000, seed: int = 0) -> torch.Tensor:
    """``S_k = E_{z ~ N(0, I)} KL(p(x | z) || p(x | z + step e_k))`` per latent axis, shape (K,), nats.

    The quantity of :meth:`lidvae_mini.models.vae.VAE.latent_sensitivity` (Definition 2 of Wang, Blei & Cunningham,
    measured: ``S_k = 0`` iff the likelihood ignores axis k), computed in float64 from the decoder's parameters
    (Bernoulli: :func:`bernoulli_kl_from_logits`; Gaussian: ``(mu - mu')^2 / (2 sigma^2)`` summed), so that confident
    pixels cannot turn it into ``inf``. Works for any decoder of :mod:`lidvae_mini.models.decoders` (an AVAE's or a VAE's).
    The draws of z use ``seed`` and leave the caller's RNG untouched.

    Raises:
        ValueError: ``step <= 0``, ``n_samples < 1``, a head other than Bernoulli or Gaussian.
    """
    check_choice(getattr(decoder, "head", None), "decoder head", SUPPORTED_HEADS)
    return decoder.latent_sensitivity(step, n_samples, seed)


# ---------------------------------------------------------------------------------------------- the model
class DeterministicEncoder(nn.Module):
    """``z = E_phi(x)``: an MLP ``D -> hidden -> K`` (no variance head). ``forward``: (B, D) -> (B, K).

    The reference uses convolutions with BatchNorm (``models/ae_model_MNIST.py``); here an MLP of the book's
    encoder sizes, without BatchNorm, so that the AVAE and the VAEs it is compared with share an encoder trunk.
    ``mean(x)`` returns the codes (what :func:`lidvae_mini.evaluation.metrics.active_units` reads).
    """

    def __init__(self, data_dim: int, latent_dim: int, hidden=(256,), activation: str = "relu"):
        super().__init__()
        self.data_dim = check_int(data_dim, "data_dim")
        self.latent_dim = check_int(latent_dim, "latent_dim")
        self.net = mlp(self.data_dim, hidden_sizes(hidden), self.latent_dim, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def mean(self, x: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        return self.net(x)


class AVAE(EncoderFacts, DecoderFacts, nn.Module):
    """Aggregate VAE: deterministic encoder, decoder ``p(x|z)``, prior ``N(0, I)``, KDE bandwidth ``h``.

    Args:
        encoder: a :class:`DeterministicEncoder` (anything mapping (B, D) to (B, K) with ``latent_dim``,
            ``data_dim``).
        decoder: :class:`~lidvae_mini.models.decoders.MLPDecoder` (the AVAE) or
            :class:`~lidvae_mini.models.decoders.InjectiveDecoder` (the LID-AVAE), head ``"bernoulli"`` or ``"gaussian"``.
        h: the KDE bandwidth in (0, 1) (the corrected :func:`bandwidth`).

    Raises:
        ValueError: encoder and decoder disagree on sizes, unsupported head, ``h`` not in (0, 1).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, h: float):
        super().__init__()
        check_encoder_decoder(encoder, decoder)
        h = check_positive(h, "bandwidth h")
        if h >= 1:
            raise ValueError(f"the corrected bandwidth must lie in (0, 1), got {h}")
        self.encoder, self.decoder, self.h = encoder, decoder, h

    @property
    def prior_std(self) -> float:
        """Standard deviation ``sqrt(1 - h^2)`` of the generation distribution ``N(0, (1 - h^2) I)``."""
        return math.sqrt(1.0 - self.h ** 2)

    def extra_repr(self) -> str:
        return f"h={self.h:.4f}, identifiable={self.identifiable}"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes ``E_phi(x)``, (B, D) -> (B, K). Raises as :meth:`~lidvae_mini.models.vae.DecoderFacts.check_x`."""
        self.check_x(x)
        return self.encoder(x)

    def encode_mean(self, x: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        """The codes (a deterministic encoder's "posterior mean"), for active-unit counts."""
        return self.encode(x)

    def reconstruction_error(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``-log p(x | z)``, nats per datapoint, shape (B,)."""
        return -self.decoder.log_prob(x, z)

    def scale_error(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The reconstruction error that sets the scale ``s`` (reference ``avg_ae_loss_wo_const``), shape (B,),
        never negative: the binary cross-entropy ``-log p(x|z)`` (nats) for the Bernoulli head, the squared error
        ``sum_d (x_d - E[x_d|z])^2`` (squared data units, without the noise scale or the Gaussian's constant) for
        the Gaussian head."""
        if self.head == "gaussian":
            return (x - self.decoder(z)).pow(2).sum(-1)
        return self.reconstruction_error(x, z)

    def loss(self, x: torch.Tensor, codes: torch.Tensor, scale: float, kl_weight: float = 1.0,
             chunk: int = KDE_CHUNK) -> tuple[torch.Tensor, dict]:
        """The AVAE objective of a minibatch: ``mean(rec) / scale + kl_weight * KL(q_h || p)`` (module doc).

        Args:
            x: (B, D) batch (binary for the Bernoulli head); codes: (m, d) detached KDE codes;
            scale: the data-driven ``s`` > 0; kl_weight: 1 (nats) or ``1/ln 10`` (the reference's balance).

        Returns:
            ``(scalar loss, {"rec": (B,), "kl": scalar})``, nats.

        Raises:
            TypeError/ValueError: a bad batch (:meth:`~lidvae_mini.models.vae.DecoderFacts.check_x`), bad codes
                (:func:`kde_log_density`), ``scale <= 0``.
        """
        scale = check_positive(scale, "scale")
        z = self.encode(x)
        rec = self.reconstruction_error(x, z)
        kl = kl_to_prior(z, codes.detach(), self.h, chunk)
        return rec.mean() / scale + kl_weight * kl, {"rec": rec, "kl": kl}

    def latent_sensitivity(self, step: float = 0.5, n_samples: int = 1000, seed: int = 0) -> torch.Tensor:
        """The decoder's dependence on each latent axis, shape (K,), nats: :func:`decoder_sensitivity`."""
        return decoder_sensitivity(self.decoder, step, n_samples, seed)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, seed: int | None = None) -> torch.Tensor:
        """``n`` draws: ``z ~ N(0, (1 - h^2) I)``, then the likelihood mean (``mean=True``) or a draw; (n, D).

        ``seed`` (optional) makes the draws reproducible and leaves the global RNG untouched.
        """
        n = check_int(n, "n")
        like = self._like()
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(check_int(seed, "seed", minimum=0))
            z = torch.randn(n, self.latent_dim, dtype=like.dtype) * self.prior_std
            dist = self.decoder.distribution(z.to(like.device))
            return dist.mean if mean else dist.sample()


def build_avae(kind: str, data_dim: int, latent_dim: int, h: float, head: str = "bernoulli", *,
               encoder_hidden=(256,), hidden1=(64, 64), hidden2=(128, 128), alpha: float = 0.1,
               mlp_layers: int = 2, mlp_hidden=None, seed: int | None = None, decoder: str | None = None) -> AVAE:
    """An AVAE (``kind="avae"``, size-matched :class:`~lidvae_mini.models.decoders.MLPDecoder`) or a LID-AVAE
    (``kind="lid_avae"``, the LIDVAE's :class:`~lidvae_mini.models.decoders.InjectiveDecoder` in the construction
    ``decoder``, default :func:`~lidvae_mini.models.decoders.book_decoder`), with the same sizes and the same matching rule
    as :func:`lidvae_mini.models.vae.build_vae` (so an AVAE and a VAE built with the same arguments have decoders of the
    same size). ``seed`` initialises the parameters under a forked RNG (encoder first).

    Raises:
        ValueError: unknown kind, head or ``decoder``, ``decoder`` for ``"avae"``, bad sizes, ``h`` not in (0, 1).
    """
    check_choice(kind, "AVAE kind", KINDS)
    check_choice(head, "head", SUPPORTED_HEADS)
    if decoder is not None and kind != "lid_avae":
        raise ValueError(f"decoder={decoder!r} chooses the LID-AVAE's construction; kind {kind!r} has an MLP decoder")
    name = book_decoder(latent_dim, data_dim) if decoder is None else decoder
    variant = decoder_variant(name, latent_dim) if kind == "lid_avae" else {}
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(check_int(seed, "seed", minimum=0))
        enc = DeterministicEncoder(data_dim, latent_dim, encoder_hidden)
        injective = InjectiveDecoder(latent_dim, data_dim, hidden1, hidden2, head=head, alpha=alpha, **variant)
        if kind == "lid_avae":
            return AVAE(enc, injective, h)
        if mlp_hidden is None:
            mlp_hidden = matched_mlp_hidden(count_parameters(injective), latent_dim, data_dim, n_layers=mlp_layers,
                                            head=head, learn_scale=head == "gaussian")
        return AVAE(enc, MLPDecoder(latent_dim, data_dim, mlp_hidden, head=head), h)


# ------------------------------------------------------------------------------------------------ training
@torch.no_grad()
def _encode_all(model: AVAE, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model.encode(x[i:i + batch]) for i in range(0, len(x), batch)])
    model.train(was)
    return out


@torch.no_grad()
def _mean_scale_error(model: AVAE, x: torch.Tensor, batch: int = 1000) -> float:
    was = model.training
    model.eval()
    err = torch.cat([model.scale_error(x[i:i + batch], model.encode(x[i:i + batch]))
                     for i in range(0, len(x), batch)])
    model.train(was)
    return float(err.double().mean())


@torch.no_grad()
def evaluate_avae(model: AVAE, x: torch.Tensor, codes: torch.Tensor, batch: int = 1000) -> dict:
    """Mean reconstruction error ``rec = -log p(x|E(x))`` (nats per datapoint), the mean :meth:`AVAE.scale_error`
    ``scale_error`` (never negative; sets ``s``), KDE ``KL(q_h || p)`` at the codes of ``x`` against the KDE
    ``codes`` (nats), and the active units ``au`` of ``E(x)`` (:func:`lidvae_mini.evaluation.metrics.active_units`,
    variance >= 0.01)."""
    was = model.training
    model.eval()
    z = torch.cat([model.encode(x[i:i + batch]) for i in range(0, len(x), batch)])
    rec = torch.cat([model.reconstruction_error(x[i:i + batch], z[i:i + batch]) for i in range(0, len(x), batch)])
    err = rec if model.head != "gaussian" else torch.cat(     # the cross-entropy is rec itself: not computed twice
        [model.scale_error(x[i:i + batch], z[i:i + batch]) for i in range(0, len(x), batch)])
    kl = kl_to_prior(z, codes, model.h)
    model.train(was)
    au = active_units(z)["count"] if len(z) > 1 else 0
    return {"rec": float(rec.double().mean()), "scale_error": float(err.double().mean()), "kl": float(kl), "au": au}


def fit_avae(model: AVAE, train_x, valid_x, *, epochs: int = 10, batch_size: int = 100, lr: float = 1e-3,
             kde_size: int = 1000, refresh_every: int = 10, seed: int = 0, binarize: str | None = None,
             grad_clip: float | None = 5.0, kl_weight: float = 1.0, initial_scale: float | None = None,
             checkpoint_dir: str | os.PathLike | None = None, resume: bool = True, progress: bool | None = None) -> dict:
    """Train an :class:`AVAE` (or LID-AVAE) with the AVAE objective; return the per-epoch history.

    Every epoch: a seeded permutation of the training set; its first ``kde_size`` items are that epoch's KDE
    subset (binarised once for the epoch when ``binarize="dynamic"``), the rest are the minibatches (so no
    minibatch item is ever one of the KDE codes). Every ``refresh_every`` steps the KDE codes are recomputed
    under ``no_grad`` in eval mode (``update_q_iter_count = 10`` in the reference's configuration). A step
    minimises ``mean(rec)/s + kl_weight * KL`` (:meth:`AVAE.loss`); after the epoch, ``s`` becomes the square
    root of the mean validation :meth:`AVAE.scale_error` (binary cross-entropy in nats for the Bernoulli head,
    squared error for the Gaussian head; reference: ``train/trainer.py``, ``Train.run_an_epoch``).
    The first ``s`` is ``initial_scale``, else the square root of the validation error at initialisation (the
    reference takes it from its configuration, e.g. ``sqrt(200)`` for CIFAR-10).

    It trains through :func:`lidvae_mini.models.loop.train_loop` (as :class:`AVAEMethod`: the KDE subset and codes
    are drawn with the epoch's batches, ``s`` is set at the epoch's end), with its guarantees: explicit seeds,
    atomic checkpoints read with ``weights_only=True`` and resumed bitwise, the NaN guard, quiet progress bars.

    Differences from the reference protocol, stated: Adam at a constant ``lr`` (the reference: 5e-4 with
    ReduceLROnPlateau), an MLP encoder without BatchNorm, a global gradient-norm clip ``grad_clip``, dynamic
    binarisation for the Bernoulli head, the KL in nats (``kl_weight = 1``; see the module doc).

    Args:
        model: the AVAE, trained in place (CPU or GPU: its parameters' device).
        train_x: (N, D) training data (in [0, 1] with ``binarize="dynamic"``), ``N > kde_size``.
        valid_x: (M, D) validation data (binarised once with ``seed`` if not binary and ``binarize`` is set).
        epochs, batch_size, lr: as :func:`lidvae_mini.models.train.fit`.
        kde_size: ``m``, KDE codes per epoch (>= 2; the paper: 10,000 on MNIST).
        refresh_every: steps between refreshes of the KDE codes.
        seed: seeds the permutations, the binarisation bits and the KDE subsets (parameters: see
            :func:`build_avae`). The same seed gives bitwise the same run on CPU.
        binarize: ``None`` (data already binary for a Bernoulli decoder) or ``"dynamic"`` (fresh Bernoulli bits for
            every minibatch, and once per epoch for the KDE subset).
        grad_clip: maximal global gradient norm, or ``None``.
        kl_weight: weight of the KL term: 1 (nats, default) or ``1 / ln 10`` (the reference's log-10 balance).
        initial_scale: the ``s`` of the first epoch (default: from the validation error at initialisation).
        checkpoint_dir: where ``avae_checkpoint.pt`` is written atomically every epoch (model, optimizer, RNG,
            ``s``, history), read back with ``torch.load(weights_only=True)``; ``resume`` continues from it.
        progress: a bar over epochs, as :func:`lidvae_mini.models.train.fit`.

    Returns:
        ``{key: list}`` for every key of :data:`HISTORY_KEYS`; ``*_rec`` and ``*_kl`` in nats per datapoint,
        ``train_loss`` the scaled objective, ``valid_au`` a count, ``scale`` the ``s`` used in that epoch.

    Raises:
        TypeError/ValueError: bad data or settings (``kde_size < 2`` or ``>= N``, non-binary data for a
            Bernoulli decoder without ``binarize``, mismatched checkpoint).
        NonFiniteLossError: a non-finite loss or gradient; the model and optimizer are restored to the start of
            that epoch (the last checkpoint stays).
    """
    epochs = check_int(epochs, "epochs", minimum=0)
    batch_size = check_int(batch_size, "batch_size")
    lr = check_positive(lr, "lr")
    kde_size = check_int(kde_size, "kde_size", minimum=2)
    refresh_every = check_int(refresh_every, "refresh_every")
    seed = check_int(seed, "seed", minimum=0)
    check_choice(binarize, "binarize", (None, "dynamic"))
    kl_weight = check_positive(kl_weight, "kl_weight")
    grad_clip = check_positive(grad_clip, "grad_clip") if grad_clip is not None else None
    if initial_scale is not None:
        initial_scale = check_positive(initial_scale, "initial_scale")
    train, valid = _avae_data(model, train_x, valid_x, kde_size, binarize, seed)
    config = dict(batch_size=batch_size, lr=lr, kde_size=kde_size, refresh_every=refresh_every, seed=seed,
                  binarize=str(binarize), grad_clip=grad_clip, kl_weight=kl_weight, n_train=len(train))
    method = AVAEMethod(model, train, valid, config, initial_scale)
    return train_loop(model, method, epochs=epochs, seed=seed, checkpoint_dir=checkpoint_dir,
                      checkpoint_file=CHECKPOINT_FILE, resume=resume, progress=progress)


class AVAEMethod(Method):
    """:func:`fit_avae`'s method for :func:`~lidvae_mini.models.loop.train_loop`: every epoch a seeded permutation
    whose first ``kde_size`` items are the epoch's KDE subset and the rest the minibatches; the KDE codes refreshed
    every ``refresh_every`` steps (the hook before a step), the scale ``s`` set from the validation error after the
    epoch (the hook after it, checkpointed as ``scale``). ``config``: :func:`fit_avae`'s settings."""

    keys = HISTORY_KEYS
    progress_keys = ("train_rec", "valid_au")

    def __init__(self, model: AVAE, train: torch.Tensor, valid: torch.Tensor, config: dict, initial_scale):
        self.model, self.train, self.valid, self.config = model, train, valid, config
        self.optimizers = {"optimizer": torch.optim.Adam(model.parameters(), lr=config["lr"])}
        self.generators = {"data_rng": torch.Generator().manual_seed(config["seed"])}
        self.params = list(model.parameters())
        self.scale, self.x_kde = initial_scale, None

    def batches(self, epoch: int, step: int):
        if self.scale is None:   # the first s: from the validation error at initialisation
            self.scale = math.sqrt(max(_mean_scale_error(self.model, self.valid), 1e-12))
        gen, kde, bs = self.generators["data_rng"], self.config["kde_size"], self.config["batch_size"]
        perm = torch.randperm(len(self.train), generator=gen).to(self.train.device)
        self.x_kde = self.train[perm[:kde]]
        if self.config["binarize"] == "dynamic":
            self.x_kde = torch.bernoulli(self.x_kde, generator=gen)
        codes = None
        for i, start in enumerate(range(kde, len(self.train), bs)):   # the minibatches: the rest of the permutation
            if (step + i) % self.config["refresh_every"] == 0 or codes is None:
                codes = _encode_all(self.model, self.x_kde)
            xb = self.train[perm[start:start + bs]]
            if self.config["binarize"] == "dynamic":
                xb = torch.bernoulli(xb, generator=gen)
            yield xb, codes

    def step(self, batch, guard) -> torch.Tensor:
        xb, codes = batch
        loss, parts = self.model.loss(xb, codes, self.scale, self.config["kl_weight"])
        update(self.optimizers["optimizer"], loss, self.params, self.config["grad_clip"], guard)
        b = len(xb)
        return torch.stack([loss.detach().double() * b, parts["rec"].detach().double().sum(),
                            parts["kl"].detach().double() * b,
                            torch.full((), float(b), dtype=torch.float64, device=loss.device)])

    def end_epoch(self, epoch: int, sums, guard) -> dict:
        ev = evaluate_avae(self.model, self.valid, _encode_all(self.model, self.x_kde))
        if not (math.isfinite(ev["rec"]) and math.isfinite(ev["scale_error"])):
            guard.diverged("validation error", ev["rec"])
        loss, rec, kl, count = sums.tolist()
        row = {"train_loss": loss / max(count, 1), "train_rec": rec / max(count, 1), "train_kl": kl / max(count, 1),
               "valid_rec": ev["rec"], "valid_kl": ev["kl"], "valid_au": ev["au"], "scale": self.scale}
        self.scale = math.sqrt(max(ev["scale_error"], 1e-12))     # the s of the next epoch
        return row

    def state_dict(self) -> dict:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.scale = state["scale"]


def _avae_data(model: AVAE, train_x, valid_x, kde_size: int, binarize, seed: int):
    """:func:`fit_avae`'s data, checked and on the model's device: ``(train, valid)``, the validation images
    binarised once (seeded) for ``binarize="dynamic"`` when they are not binary."""
    like = model._like()
    train = _as_tensor(train_x, "train_x", model.data_dim).to(like.dtype)
    valid = _as_tensor(valid_x, "valid_x", model.data_dim).to(like.dtype)
    if kde_size >= len(train):
        raise ValueError(f"kde_size = {kde_size} must be smaller than the training set ({len(train)} items)")
    if binarize == "dynamic":
        if bool(((train < 0) | (train > 1)).any()) or bool(((valid < 0) | (valid > 1)).any()):
            raise ValueError("binarize='dynamic' needs data in [0, 1]")
        if not bool(((valid == 0) | (valid == 1)).all()):
            valid = torch.bernoulli(valid, generator=torch.Generator().manual_seed(10_000 + seed))
    else:
        model.check_x(train[:10_000].to(like.device), "train_x")
    model.check_x(valid.to(like.device), "valid_x")
    return train.to(like.device), valid.to(like.device)


@torch.no_grad()
def final_codes(model: AVAE, train_x, kde_size: int, seed: int = 0, binarize: str | None = "dynamic") -> torch.Tensor:
    """KDE codes of a seeded subset of ``kde_size`` training items after training, (kde_size, K): the ``q_h``
    to evaluate a trained model's KL and KDE densities against (binarised with ``seed`` when ``binarize``)."""
    kde_size = check_int(kde_size, "kde_size", minimum=2)
    like = model._like()
    train = _as_tensor(train_x, "train_x", model.data_dim).to(like.dtype)
    if kde_size > len(train):
        raise ValueError(f"kde_size = {kde_size} exceeds the {len(train)} training items")
    g = torch.Generator().manual_seed(check_int(seed, "seed", minimum=0))
    x = train[torch.randperm(len(train), generator=g)[:kde_size]]
    if binarize == "dynamic":
        x = torch.bernoulli(x, generator=g)
    return _encode_all(model, x.to(like.device))
