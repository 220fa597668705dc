"""Two baselines against posterior collapse: SA-VAE (Kim et al. 2018) and aggressive training (He et al. 2019).

The paper compares the LIDVAE with both in its Tables 1 and 2; the official code implements neither faithfully
(its "lagging" VAE applies one stale gradient ten times and SA-VAE is missing: the book's appendix *Errata of the
reference implementation*, section "training protocol"). This module implements both from their papers and public code, for any model that follows the VAE protocol
of :mod:`lidvae_mini.models.vae` (``loss(x, n_samples) -> (scalar, parts)``, ``encoder``/``decoder`` submodules).

**SA-VAE** (semi-amortised VAE, Kim, Wiseman, Miller, Sontag & Rush, ICML 2018). The amortised Gaussian encoder
gives ``(mu_0, logvar_0) = enc(x)``; ``svi_steps`` steps of stochastic variational inference (SGD with momentum on
the ELBO, one fresh reparameterised draw per step) refine them to ``(mu_K, logvar_K)``; the model is trained on the
ELBO at the *refined* posterior. Settings of Kim et al.'s code (``train_img.py``, ``optim_n2n.py``: 20 steps, lr 1,
momentum 0.5) and of He et al.'s rerun (``image_sa.py``, which states the objective explicitly): the SVI objective
is the **batch mean** of the per-datapoint negative ELBO (so each datapoint moves by ``lr / B`` times its own
gradient), and at every step the gradient with respect to the batch of means and the one with respect to the
batch of log-variances are each rescaled to a norm of at most ``clip`` = 5. With ``train_n2n=True`` the encoder is
trained end to end *through* the unrolled refinement; here the derivative is exact, by double backpropagation
(``torch.autograd.grad(..., create_graph=True)``: Hessian-vector products by autograd, not the finite differences
of the original). The clipping factors are treated as constants
in that derivative (the original clips its backward quantities separately), and the decoder also receives the
gradient through the refinement path (the original's ``acc_param_grads=1``). With ``train_n2n=False`` the refinement
is detached from the encoder; ``train_kl=True`` then pulls the encoder toward the refined posterior by minimising
``KL(q_0 || stopgrad(q_K))`` (the original's ``train_kl``), and with both off the encoder receives no gradient.

**Aggressive training** ("lagging inference networks", He, Spokoyny, Neubig & Berg-Kirkpatrick, ICLR 2019): while
the *aggressive phase* lasts, before every decoder update the encoder alone is updated on fresh minibatches, up to
``max_inner_steps`` = 100 times, stopping early when the mean loss of the last ``check_every`` = 15 inner steps is
higher than that of the previous 15 (the loss has stopped improving); the decoder step then uses the original
batch. At the end of each epoch the mutual information ``I_q(x; z)`` is measured on the validation set; the phase
ends once it has not increased for ``mi_patience`` epochs (1, as in He et al.'s text code: the first decrease;
their later image code checks the inner loss every 10 steps and waits 5 epochs: ``check_every=10, mi_patience=5``),
and training continues as ordinary ELBO training with :func:`lidvae_mini.models.train.fit`. Two Adam optimisers (encoder,
decoder), as in He et al.'s image code; Adam acts per parameter, so this equals one Adam over all parameters.
He et al.'s KL annealing is not reproduced (the models here train at their own β throughout).

**Mixture models** (:class:`lidvae_mini.models.mixture.MixtureVAE`: GMVAE, β-GMVAE, LIDGMVAE). :func:`fit_aggressive`
works unchanged: the inference network is ``cluster_net`` (``q(y|x)``) plus ``encoder`` (``q(w|x, y)``), the
generative model is the decoder plus the mixture prior, and the MI that ends the aggressive phase is that of the
whole latent, ``I_q(x; (y, w))`` (:func:`mixture_mutual_information`). SA-VAE needs a Gaussian
``q(w|x, y)`` (``encoder="gaussian"``) and refines, for every datapoint and *every* cluster ``y``, the Gaussian
``q(w|x, y)``, each on its own ELBO term ``E_q[log p(x|w) + log p(w|y) - log q(w|x, y)]``; ``q(y|x)`` is **not**
refined (it stays amortised; y is still summed exactly in the loss). Each ``(x, y)`` pair then moves exactly like
a datapoint of the single-latent case (:func:`sa_vae_loss`). This "SA-GMVAE" is our construction: neither Kim et al.
nor the LIDVAE code define one.

Metrics of a trained SA-VAE are those of its *refined* posterior (He et al.'s ``image_sa.py`` computes AU, MI and
the IWAE with the SVI-refined encoder): :meth:`SAVAE.refined_view` (:meth:`SAMixtureVAE.refined_view`) returns a
``VAE`` (``MixtureVAE``) sharing the trained modules whose encoder runs the refinement (noise fixed by a seed, so
every call on the same batch gives the same ``q``); :func:`lidvae_mini.models.train.evaluate`,
:func:`lidvae_mini.models.mixture.evaluate_mixture` and :func:`encoder_mutual_information` apply to it unchanged.

Model selection: :func:`fit_baseline` with ``select_best=True`` restores the parameters of the epoch with the
best validation ELBO, for every trainer.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from .._checks import check_choice, check_int, check_positive
from .encoders import LOG_2PI as LOG_2PI_
from .encoders import LOGVAR_RANGE, ConditionalRealNVP, GaussianEncoder
from ..evaluation.metrics import mean_and_standard_error, mutual_information_report
from .mixture import EXAMPLE1_GAMMA, MixtureVAE, coupling_context_parts, entropy_from_log_probs
from .loop import BestState, Method, train_loop, update
from . import train as T
from .train import HISTORY_KEYS, _validation_row
from .vae import VAE

#: Kim et al.'s SVI settings (``train_img.py`` defaults; He et al.'s rerun uses the same lr, momentum and clip).
SVI_DEFAULTS = {"svi_steps": 20, "svi_lr": 1.0, "momentum": 0.5, "clip": 5.0}
#: Names accepted by :func:`fit_baseline`.
TRAINERS = ("elbo", "sa_vae", "aggressive")
#: Extra per-epoch keys of :func:`fit_aggressive`'s history (besides :data:`lidvae_mini.models.train.HISTORY_KEYS`).
AGGRESSIVE_KEYS = ("aggressive", "inner_steps_mean", "inner_steps_max", "valid_mi")
#: The aggressive phase's checkpoint in ``checkpoint_dir`` (the standard phase writes ``checkpoint.pt`` beside it).
AGGRESSIVE_CHECKPOINT_FILE = "aggressive_checkpoint.pt"


# ------------------------------------------------------------------------------------------------- SA-VAE
def _check_svi(svi_steps, svi_lr, momentum, clip):
    svi_steps = check_int(svi_steps, "svi_steps", minimum=0)
    svi_lr = check_positive(svi_lr, "svi_lr")
    momentum = float(momentum)
    if not math.isfinite(momentum) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if clip is not None:
        clip = check_positive(clip, "clip")
    return svi_steps, svi_lr, momentum, clip


def _svi_settings(svi_steps, svi_lr, momentum, clip) -> dict:
    return dict(zip(("svi_steps", "svi_lr", "momentum", "clip"), _check_svi(svi_steps, svi_lr, momentum, clip)))


def _is_mixture(model) -> bool:
    return isinstance(model, MixtureVAE)


def _gaussian_encoder(model):
    enc = getattr(model, "encoder", None)
    if not isinstance(enc, GaussianEncoder):
        raise TypeError("SA-VAE needs a Gaussian encoder (GaussianEncoder: forward -> (mu, logvar)); got "
                        f"{type(enc).__name__ if enc is not None else 'no encoder'}; build the model with "
                        f"encoder='gaussian'")
    return enc


def gaussian_kl(mu, logvar, prior_mu=0.0, prior_log_scale=0.0) -> torch.Tensor:
    """``KL(N(mu, diag exp(logvar)) || N(prior_mu, diag exp(2 prior_log_scale)))`` summed over the last axis, nats."""
    var_p = torch.exp(2.0 * torch.as_tensor(prior_log_scale, dtype=mu.dtype, device=mu.device))
    return 0.5 * (2.0 * prior_log_scale - logvar + (torch.exp(logvar) + (mu - prior_mu) ** 2) / var_p - 1.0).sum(-1)


def _rows_elbo(loglik, mu, logvar, eps, prior_mu=0.0, prior_log_scale=0.0):
    """Per-row ``(rec, kl)``: ``rec = mean_s loglik(mu + sigma eps_s)``, analytic ``kl``; eps (S, R, K)."""
    logvar = logvar.clamp(*LOGVAR_RANGE)
    z = mu + torch.exp(0.5 * logvar) * eps
    rec = torch.stack([loglik(z_s) for z_s in z]).mean(0)
    return rec, gaussian_kl(mu, logvar, prior_mu, prior_log_scale)


def gaussian_elbo(model, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, n_samples: int = 1) -> torch.Tensor:
    """ELBO per datapoint (nats, shape (B,)) of a single-latent VAE at the posterior ``N(mu, diag exp(logvar))``:
    ``mean_s log p(x | mu + sigma eps_s) - KL(q || N(0, I))`` with ``n_samples`` fresh draws (global RNG).
    ``logvar`` is clamped to :data:`lidvae_mini.models.encoders.LOGVAR_RANGE`."""
    n_samples = check_int(n_samples, "n_samples")
    eps = torch.randn((n_samples,) + tuple(mu.shape), dtype=mu.dtype, device=mu.device)
    rec, kl = _rows_elbo(lambda z: model.decoder.log_prob(x, z), mu, logvar, eps)
    return rec - kl


def _svi(loglik, mu0, lv0, prior_mu, prior_log_scale, n_points, svi_steps, svi_lr, momentum, clip, create_graph,
         generator):
    """SGD with momentum on ``sum_rows(-ELBO_row) / n_points``; the core of :func:`svi_refine`."""
    trace = []
    with torch.enable_grad():
        if create_graph:
            mu, lv = mu0, lv0
            if not (mu.requires_grad and lv.requires_grad):
                mu, lv = mu.clone().requires_grad_(True), lv.clone().requires_grad_(True)
        else:
            mu, lv = mu0.detach().requires_grad_(True), lv0.detach().requires_grad_(True)
        v_mu, v_lv = torch.zeros_like(mu), torch.zeros_like(lv)
        for _ in range(svi_steps):
            eps = torch.randn((1,) + tuple(mu.shape), dtype=mu.dtype, device=mu.device, generator=generator)
            rec, kl = _rows_elbo(loglik, mu, lv, eps, prior_mu, prior_log_scale)
            loss = (kl - rec).sum() / n_points
            trace.append(float(loss.detach()))
            g_mu, g_lv = torch.autograd.grad(loss, (mu, lv), create_graph=create_graph)
            if clip is not None:
                g_mu, g_lv = g_mu * _clip_factor(g_mu, clip), g_lv * _clip_factor(g_lv, clip)
            v_mu, v_lv = momentum * v_mu - g_mu, momentum * v_lv - g_lv
            mu, lv = mu + svi_lr * v_mu, (lv + svi_lr * v_lv).clamp(*LOGVAR_RANGE)
            if not create_graph:
                mu, lv = mu.detach().requires_grad_(True), lv.detach().requires_grad_(True)
                v_mu, v_lv = v_mu.detach(), v_lv.detach()
    if not create_graph:
        mu, lv = mu.detach(), lv.detach()
    return mu, lv, trace


def _clip_factor(g: torch.Tensor, clip: float) -> torch.Tensor:
    """``min(1, clip / (||g|| + 1e-6))`` as a constant (no gradient flows through the clipping factor)."""
    return torch.clamp(clip / (g.detach().norm() + 1e-6), max=1.0)


def svi_refine(model, x: torch.Tensor, mu0: torch.Tensor, logvar0: torch.Tensor, svi_steps: int = 20,
               svi_lr: float = 1.0, momentum: float = 0.5, clip: float | None = 5.0, create_graph: bool = False,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Refine the Gaussian posteriors ``N(mu, diag exp(logvar))`` of a single-latent VAE by SVI (SA-VAE).

    Step k draws ``eps_k ~ N(0, I)`` (from ``generator`` when given), evaluates the batch mean of the negative
    ELBO (reconstruction at ``z = mu + sigma eps_k``, analytic KL to ``N(0, I)``), takes its gradients ``g_mu``,
    ``g_lv``, each rescaled to a norm of at most ``clip`` (the norm over the whole batch), and updates
    ``v <- momentum * v - g``, ``param <- param + svi_lr * v`` (Kim et al. 2018, with momentum as in their code).

    Args:
        model: a VAE (its ``decoder.log_prob``); its parameters are not changed.
        x: (B, D) data batch; mu0, logvar0: (B, K) starting point (e.g. the encoder's output).
        svi_steps: number of SVI steps (0 returns the start).
        svi_lr, momentum, clip: step size, momentum in [0, 1), gradient-norm bound (``None``: no clipping).
        create_graph: keep the graph of every step so that the result can be differentiated with respect to
            ``mu0``, ``logvar0`` and the decoder (exact second derivatives by double backpropagation). Otherwise
            the iterates are detached (cheaper; for evaluation and for ``train_n2n=False``).
        generator: a ``torch.Generator`` for the noise (on x's device), or ``None`` for the global RNG.

    Returns:
        ``(mu_K, logvar_K, trace)``; ``trace`` lists the batch-mean negative ELBO (a float, nats) at each step's
        noise, before its update.

    Raises:
        ValueError: ``svi_steps < 0``, ``svi_lr <= 0``, ``momentum`` outside [0, 1), ``clip <= 0``, shape mismatch.
    """
    settings = _check_svi(svi_steps, svi_lr, momentum, clip)
    if mu0.shape != logvar0.shape or mu0.ndim != 2 or mu0.shape[0] != x.shape[0]:
        raise ValueError(f"mu0 and logvar0 must both have shape (B, K) with B = {x.shape[0]}, got "
                         f"{tuple(mu0.shape)} and {tuple(logvar0.shape)}")
    return _svi(lambda z: model.decoder.log_prob(x, z), mu0, logvar0, 0.0, 0.0, x.shape[0], *settings,
                create_graph, generator)


def _mixture_rows(model, x: torch.Tensor):
    """Row data of a mixture VAE, cluster-major (row ``y·B + b``): x repeated, the prior of each row's cluster."""
    C, B = model.num_clusters, x.shape[0]
    xs = x.repeat(C, 1)
    pm = model.prior_means.repeat_interleave(B, dim=0)
    pls = model.prior_log_scales.repeat_interleave(B, dim=0)
    return xs, pm, pls


def sa_vae_loss(model, x: torch.Tensor, svi_steps: int = 20, svi_lr: float = 1.0, momentum: float = 0.5,
                clip: float | None = 5.0, train_n2n: bool = True, train_kl: bool = False,
                n_samples: int = 1) -> tuple[torch.Tensor, dict]:
    """The SA-VAE training objective, following the model protocol (``(scalar, parts)``).

    Single-latent VAE (Gaussian encoder): ``q_0 = N(enc(x))`` is refined by :func:`svi_refine` to ``q_K``; the
    loss is the batch mean of ``-(rec - beta * kl)`` at ``q_K`` (``beta = model.beta``; ``n_samples`` draws).

    Mixture VAE (:class:`lidvae_mini.models.mixture.MixtureVAE` with a Gaussian ``q(w|x, y)``): the ``C·B`` Gaussians
    ``q(w|x, y)`` are refined, each on its own term ``E_q[log p(x|w) + log p(w|y) - log q(w|x,y)]`` of the ELBO
    (the ELBO is a ``q(y|x)``-weighted sum of these terms, so each term's maximiser does not depend on the weights);
    the objective of a step is their sum divided by B, so every ``(x, y)`` pair moves as a datapoint of the
    single-latent case. ``q(y|x)`` is not refined (it stays amortised). The loss is the batch mean of
    ``-(rec - beta (KL_y + KL_w))`` with the refined ``q(w|x, y)`` and the encoder's ``q(y|x)``, y summed exactly.

    With ``train_kl`` the batch mean of ``KL(q_0 || stopgrad(q_K))`` (summed over clusters for a mixture) is
    added. With ``train_n2n`` the refinement is differentiated exactly (``create_graph=True``, see
    :func:`svi_refine`) so the encoder learns through it; without it (and without ``train_kl``) the ``q(w|...)``
    encoder's gradient is exactly zero.

    Returns:
        ``(loss, parts)``: a scalar and, each of shape (B,) in nats, ``elbo``, ``rec``, ``kl`` at the refined
        posterior (mixtures add ``kl_y``, ``kl_w``, ``entropy_y``), ``elbo_init`` (the one-draw ELBO at the
        encoder's ``q_0``) and ``kl_init_final`` (``KL(q_0 || q_K)``).

    Raises:
        ValueError: bad SVI settings (``svi_steps < 0`` ...). TypeError: the ``q(w|...)`` encoder is not Gaussian.
    """
    svi = _check_svi(svi_steps, svi_lr, momentum, clip)
    n_samples = check_int(n_samples, "n_samples")
    enc = _gaussian_encoder(model)
    model.check_x(x)
    B = x.shape[0]
    if _is_mixture(model):
        log_probs = model.cluster_log_probs(x)                           # (B, C)
        probs = log_probs.exp()
        xs, pm, pls = _mixture_rows(model, x)
        mu0, lv0 = enc(model._context(x))                                # (C·B, K)
    else:
        xs, pm, pls = x, 0.0, 0.0
        mu0, lv0 = enc(x)

    def loglik(z):
        return model.decoder.log_prob(xs, z)

    start = (mu0, lv0) if train_n2n else (mu0.detach(), lv0.detach())
    mu, lv, _ = _svi(loglik, *start, pm, pls, B, *svi, create_graph=train_n2n, generator=None)
    eps = torch.randn((n_samples,) + tuple(mu.shape), dtype=mu.dtype, device=mu.device)
    rec_r, kl_r = _rows_elbo(loglik, mu, lv, eps, pm, pls)               # (R,)
    with torch.no_grad():
        eps0 = torch.randn((1,) + tuple(mu0.shape), dtype=mu0.dtype, device=mu0.device)
        rec0_r, kl0_r = _rows_elbo(loglik, mu0.detach(), lv0.detach(), eps0, pm, pls)
    mu_f, lv_f = mu.detach(), lv.detach().clamp(*LOGVAR_RANGE)
    kl_if_r = gaussian_kl(mu0, lv0, mu_f, 0.5 * lv_f)
    if _is_mixture(model):
        C = model.num_clusters
        pt = probs.T                                                     # (C, B)
        ent = entropy_from_log_probs(log_probs)
        kl_y = math.log(C) - ent
        rec = (pt * rec_r.reshape(C, B)).sum(0)
        kl_w = (pt * kl_r.reshape(C, B)).sum(0)
        kl = kl_y + kl_w
        init = (pt * (rec0_r - kl0_r).reshape(C, B)).sum(0).detach() - kl_y.detach()
        kl_if = kl_if_r.reshape(C, B).sum(0)
        extra = {"kl_y": kl_y, "kl_w": kl_w, "entropy_y": ent}
    else:
        rec, kl, init, kl_if, extra = rec_r, kl_r, (rec0_r - kl0_r), kl_if_r, {}
    loss = -(rec - model.beta * kl).mean()
    if train_kl:
        loss = loss + kl_if.mean()
    parts = {"elbo": rec - kl, "rec": rec, "kl": kl, **extra, "elbo_init": init,
             "kl_init_final": kl_if.detach()}
    return loss, parts


class SVIRefinedEncoder(GaussianEncoder):
    """A Gaussian encoder whose ``(mu, logvar)`` are the SVI-refined ones: the base encoder, then SVI.

    Every method of :class:`~lidvae_mini.models.encoders.GaussianEncoder` (``sample``, ``log_prob``, ``mean``,
    ``kl_per_dim``) sees the refined parameters. For a single-latent VAE a row is a datapoint (prior
    ``N(0, I)``); for a mixture VAE the input is the context ``[x, onehot(y)]`` and the prior is ``p(w|y)``
    (as in :func:`sa_vae_loss`). Rows are refined in consecutive chunks of ``batch_size`` datapoints (the
    objective is a batch mean, so its step size depends on the batch size: use the training batch size); the
    noise comes from a generator reseeded with ``seed`` at every call, so the same input gives the same ``q`` in
    every call (the IWAE asks for samples in several calls). The result is detached; the refinement runs under
    ``torch.enable_grad()`` even inside ``torch.no_grad()``.

    Args:
        base: the amortised :class:`~lidvae_mini.models.encoders.GaussianEncoder` (shared, registered).
        model: the VAE or mixture VAE whose ELBO the refinement maximises (held by reference, not registered).
        svi_steps, svi_lr, momentum, clip: as in :func:`svi_refine`.
        batch_size: datapoints per refinement chunk.
        seed: seed of the refinement noise.
    """

    def __init__(self, base: nn.Module, model: nn.Module, svi_steps: int = 20, svi_lr: float = 1.0,
                 momentum: float = 0.5, clip: float | None = 5.0, batch_size: int = 100, seed: int = 0):
        nn.Module.__init__(self)
        if not isinstance(base, GaussianEncoder):
            raise TypeError(f"SVIRefinedEncoder needs a GaussianEncoder, got {type(base).__name__}")
        self.base = base
        self.data_dim, self.latent_dim = base.data_dim, base.latent_dim
        object.__setattr__(self, "_model", model)  # not a submodule: the model owns the decoder
        self.svi = _svi_settings(svi_steps, svi_lr, momentum, clip)
        self.batch_size = check_int(batch_size, "batch_size")
        self.seed = check_int(seed, "seed", minimum=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self._model
        mu0, lv0 = self.base(x)
        if _is_mixture(model):
            D = model.data_dim
            xs, y = x[:, :D], x[:, D:].argmax(-1)
            pm, pls = model.prior_means[y].detach(), model.prior_log_scales[y].detach()
            rows_per_point = model.num_clusters
        else:
            xs, pm, pls, rows_per_point = x, None, None, 1
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        chunk = self.batch_size * rows_per_point
        mus, lvs = [], []
        for start in range(0, x.shape[0], chunk):
            sl = slice(start, start + chunk)
            xc = xs[sl]
            n_points = max(1, round(xc.shape[0] / rows_per_point))
            mu, lv, _ = _svi(lambda z, xc=xc: model.decoder.log_prob(xc, z), mu0[sl], lv0[sl],
                             0.0 if pm is None else pm[sl], 0.0 if pls is None else pls[sl], n_points,
                             *self.svi.values(), create_graph=False, generator=gen)
            mus.append(mu)
            lvs.append(lv)
        return torch.cat(mus), torch.cat(lvs)


def _frozen_prior_kwargs(model) -> dict:
    """``MixtureVAE`` arguments that copy ``model``'s prior, frozen: Example 1 stays Example 1 (same ``gamma``)."""
    kw = dict(prior_log_scales=model.prior_log_scales.detach().cpu())
    if getattr(model, "prior", "learned") == "example1":
        return {**kw, "prior": "example1", "gamma": float(model.prior_gamma)}
    return {**kw, "prior_means": model.prior_means.detach().cpu(), "learn_prior": False}


def _refined_view(model, seed: int, batch_size: int):
    enc = SVIRefinedEncoder(model.encoder, model, **model.svi, batch_size=batch_size, seed=seed)
    if _is_mixture(model):
        view = MixtureVAE(model.cluster_net, enc, model.decoder, model.num_clusters, beta=1.0,
                          **_frozen_prior_kwargs(model))
        for attr in ("kind", "size_match"):
            if hasattr(model, attr):
                setattr(view, attr, getattr(model, attr))
        return view
    return VAE(enc, model.decoder, beta=1.0)


class SAVAE(VAE):
    """A single-latent VAE trained as a semi-amortised VAE: :meth:`loss` is :func:`sa_vae_loss`, so
    :func:`lidvae_mini.models.train.fit` trains it unchanged. ``elbo``/``elbo_parts``/``sample_posterior`` are the plain
    VAE's (amortised ``q``); :meth:`refined_view` gives a model whose posterior is the refined one (for metrics).

    Args:
        encoder: a :class:`~lidvae_mini.models.encoders.GaussianEncoder`; decoder: any decoder of :mod:`lidvae_mini.models.decoders`.
        beta: KL weight of the training objective (1 for SA-VAE).
        svi_steps, svi_lr, momentum, clip: SVI settings (Kim et al.: 20, 1, 0.5, 5).
        train_n2n, train_kl: see :func:`sa_vae_loss`.

    Raises:
        TypeError: the encoder is not Gaussian. ValueError: bad SVI settings.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, beta: float = 1.0, svi_steps: int = 20,
                 svi_lr: float = 1.0, momentum: float = 0.5, clip: float | None = 5.0, train_n2n: bool = True,
                 train_kl: bool = False):
        if not isinstance(encoder, GaussianEncoder):
            raise TypeError(f"SA-VAE needs a GaussianEncoder (a (mu, logvar) per datapoint), got "
                            f"{type(encoder).__name__}")
        super().__init__(encoder, decoder, beta)
        self.svi = _svi_settings(svi_steps, svi_lr, momentum, clip)
        self.train_n2n, self.train_kl = bool(train_n2n), bool(train_kl)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, svi={self.svi}, train_n2n={self.train_n2n}, train_kl={self.train_kl}"

    def loss(self, x: torch.Tensor, n_samples: int = 1) -> tuple[torch.Tensor, dict]:
        """:func:`sa_vae_loss` with this model's settings."""
        return sa_vae_loss(self, x, **self.svi, train_n2n=self.train_n2n, train_kl=self.train_kl, n_samples=n_samples)

    def refined_view(self, seed: int = 0, batch_size: int = 100) -> VAE:
        """A :class:`~lidvae_mini.models.vae.VAE` sharing this model's modules whose encoder is the SVI-refined posterior
        (:class:`SVIRefinedEncoder`, chunks of ``batch_size``, noise seeded by ``seed``)."""
        return _refined_view(self, seed, batch_size)


def semi_amortized(model, svi_steps: int = 20, svi_lr: float = 1.0, momentum: float = 0.5, clip: float | None = 5.0,
                   train_n2n: bool = True, train_kl: bool = False):
    """The SA-VAE version of ``model``, sharing its modules: an :class:`SAVAE` for a :class:`~lidvae_mini.models.vae.VAE`,
    an :class:`SAMixtureVAE` for a :class:`~lidvae_mini.models.mixture.MixtureVAE` (its prior parameters are copied:
    train and evaluate the returned model). Settings as in :func:`sa_vae_loss`.

    Raises:
        TypeError: the model's (``q(w|...)``) encoder is not a :class:`~lidvae_mini.models.encoders.GaussianEncoder`, or the
            model is neither kind. ValueError: bad SVI settings.
    """
    kw = dict(svi_steps=svi_steps, svi_lr=svi_lr, momentum=momentum, clip=clip, train_n2n=train_n2n,
              train_kl=train_kl)
    _gaussian_encoder(model)
    if _is_mixture(model):
        prior_kw = _frozen_prior_kwargs(model)
        if prior_kw.get("prior") != "example1":
            prior_kw["learn_prior"] = getattr(model, "learn_prior", True)
        sa = SAMixtureVAE(model.cluster_net, model.encoder, model.decoder, model.num_clusters, beta=model.beta,
                          **prior_kw, **kw)
        for attr in ("kind", "size_match"):
            if hasattr(model, attr):
                setattr(sa, attr, getattr(model, attr))
        return sa
    if isinstance(model, VAE):
        return SAVAE(model.encoder, model.decoder, beta=model.beta, **kw)
    raise TypeError(f"semi_amortized needs a VAE or a MixtureVAE, got {type(model).__name__}")


class SAMixtureVAE(MixtureVAE):
    """A :class:`~lidvae_mini.models.mixture.MixtureVAE` with a Gaussian ``q(w|x, y)`` trained as a semi-amortised VAE
    (:func:`sa_vae_loss`, mixture case); :meth:`refined_view` gives the refined-posterior model for metrics.
    Arguments: those of ``MixtureVAE`` plus the SVI settings of :class:`SAVAE`.

    Raises:
        TypeError: ``q(w|x, y)`` is not a :class:`~lidvae_mini.models.encoders.GaussianEncoder`. ValueError: bad settings.
    """

    def __init__(self, cluster_net, encoder, decoder, num_clusters, beta=1.0, prior_means=None, prior_log_scales=None,
                 learn_prior=None, svi_steps=20, svi_lr=1.0, momentum=0.5, clip=5.0, train_n2n=True, train_kl=False,
                 prior="learned", gamma=EXAMPLE1_GAMMA):
        if not isinstance(encoder, GaussianEncoder):
            raise TypeError(f"SA-VAE needs a Gaussian q(w|x, y), got {type(encoder).__name__}")
        super().__init__(cluster_net, encoder, decoder, num_clusters, beta=beta, prior_means=prior_means,
                         prior_log_scales=prior_log_scales, learn_prior=learn_prior, prior=prior, gamma=gamma)
        self.svi = _svi_settings(svi_steps, svi_lr, momentum, clip)
        self.train_n2n, self.train_kl = bool(train_n2n), bool(train_kl)

    def loss(self, x, n_samples: int = 1):
        """:func:`sa_vae_loss` with this model's settings."""
        return sa_vae_loss(self, x, **self.svi, train_n2n=self.train_n2n, train_kl=self.train_kl, n_samples=n_samples)

    def refined_view(self, seed: int = 0, batch_size: int = 100) -> MixtureVAE:
        """A ``MixtureVAE`` sharing this model's networks (prior copied, frozen) whose ``q(w|x, y)`` is refined by
        SVI (:class:`SVIRefinedEncoder`); ``q(y|x)`` is the amortised one."""
        return _refined_view(self, seed, batch_size)


# ------------------------------------------------------------------------------------------ mutual information
def _flow_log_density_matrix(enc: ConditionalRealNVP, w: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                             h: torch.Tensor, rows: int) -> torch.Tensor:
    """``log q(w_i | context_m)`` of a :class:`~lidvae_mini.models.encoders.ConditionalRealNVP` for every draw ``w_i``
    (N, K) under every context ``m`` given by its base ``(mu, logvar)`` (M, K) and coupling features ``h`` (M, H):
    (N, M), nats. The same computation as ``enc.log_prob`` (tested against it), with the first linear layer of each
    coupling network split into its ``w`` and context parts, so the context part is computed once per context
    instead of once per (draw, context) pair."""
    pre = coupling_context_parts(enc, h)                                          # [(hidden, K), (M, hidden)]
    out = []
    for r0 in range(0, w.shape[0], rows):
        z = w[r0:r0 + rows, None, :].expand(-1, mu.shape[0], -1)                    # (rows, M, K)
        logdet = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for layer, (w_z, ctx) in reversed(list(zip(enc.couplings, pre))):
            raw_s, t = layer.net[1:]((z * layer.mask) @ w_z.T + ctx[None]).chunk(2, dim=-1)
            free = 1.0 - layer.mask
            s_ = layer.scale * torch.tanh(raw_s) * free
            z = (z - t * free) * torch.exp(-s_)
            logdet = logdet + s_.sum(-1)
        out.append(-0.5 * (LOG_2PI_ + logvar[None] + (z - mu[None]) ** 2 * torch.exp(-logvar[None])).sum(-1) - logdet)
    return torch.cat(out)


@torch.no_grad()
def mixture_mutual_information(model, x, seed: int = 0, batch_size: int = 1000, chunk: int = 512) -> dict:
    """Mutual informations of a mixture VAE's inference network ``q(y|x) q(w|x, y)`` on the points ``x``, nats.

    With the aggregate posterior over the N evaluation points, ``q(y, w) = (1/N) sum_n q(y|x_n) q(w|x_n, y)``:

    - ``MI``: ``I_q(x; (y, w))``, the information in the whole latent (what ``MI <= KL = KL_y + KL_w`` bounds);
    - ``MI_w``: ``I_q(x; w)`` with ``q(w|x) = sum_y q(y|x) q(w|x, y)``, comparable to a single-latent VAE's;
    - ``MI_y``: ``I_q(x; y) = H(mean_x q(y|x)) - mean_x H(q(y|x))``, exact (in ``[0, log C]``).

    ``MI`` and ``MI_w`` are estimated as in :func:`lidvae_mini.evaluation.metrics.mutual_information` with ``pool="all"``
    and ``entropy="sample"``: one draw ``(y_i, w_i) ~ q(.|x_i)`` per point (seeded), ``mean_i [log q(.|x_i) -
    log q(.)]`` at the draws, each aggregate including the point's own component. ``q(w|x, y)`` is a Gaussian
    (:class:`~lidvae_mini.models.encoders.GaussianEncoder`, closed-form densities) or the two-layer RealNVP of the paper's
    supplement (:class:`~lidvae_mini.models.encoders.ConditionalRealNVP`, exact densities by the change of variables, the
    draw ``w_i`` pushed through the flow of every ``(x_n, y)``). Cost O(N^2 C K) (times the coupling width for the
    flow).

    Raises:
        TypeError: ``q(w|x, y)`` is neither a Gaussian nor a RealNVP encoder.
    """
    from ..evaluation.metrics import _seeded, gaussian_log_density_matrix

    flow = isinstance(model.encoder, ConditionalRealNVP)
    if not flow and not isinstance(model.encoder, GaussianEncoder):
        raise TypeError(f"mixture_mutual_information needs a Gaussian or RealNVP q(w|x, y), got "
                        f"{type(model.encoder).__name__}")
    like = next(model.parameters())
    dev = like.device
    x = torch.as_tensor(x, dtype=like.dtype)
    batch_size, chunk = check_int(batch_size, "batch_size"), check_int(chunk, "chunk")
    C, K, N = model.num_clusters, model.latent_dim, x.shape[0]
    was = model.training
    model.eval()
    try:
        probs, mus, lvs, hs = [], [], [], []
        for start in range(0, N, batch_size):
            xb = x[start:start + batch_size].to(dev)
            probs.append(model.cluster_probs(xb).detach().double())
            if flow:
                mu, lv, h = model.encoder.base_params(model._context(xb))
                hs.append(h.reshape(C, -1, h.shape[-1]))
            else:
                mu, lv = model.encoder(model._context(xb))
            mus.append(mu.detach().reshape(C, -1, K))
            lvs.append(lv.detach().reshape(C, -1, K))
        q, mu, lv = torch.cat(probs), torch.cat(mus, 1), torch.cat(lvs, 1)    # (N, C), (C, N, K), (C, N, K)
        log_q = torch.log(q.clamp_min(1e-300))
        idx = torch.arange(N, device=dev)
        with _seeded(seed, dev):
            y = torch.multinomial(q, 1).squeeze(1)
            eps = torch.randn(N, K, dtype=torch.float64, device=dev)
        if flow:
            h = torch.cat(hs, 1)                                                    # (C, N, H)
            u = mu[y, idx].double() + torch.exp(0.5 * lv[y, idx].double()) * eps
            w = model.encoder.flow(u.to(like.dtype), h[y, idx])[0]                  # (N, K), model dtype
            mu_f, lv_f, h_f = mu.reshape(C * N, K), lv.reshape(C * N, K), h.reshape(C * N, -1)
            rows = max(1, 2 ** 22 // (C * N * max(layer.net[0].out_features for layer in model.encoder.couplings)))

            def comp_rows(r):                                                       # (C, rows, N): log q(w_r|x_n, c)
                d = _flow_log_density_matrix(model.encoder, w[r], mu_f, lv_f, h_f, rows).double()
                return d.reshape(-1, C, N).permute(1, 0, 2)

        else:
            mu, lv = mu.double(), lv.double()
            w = mu[y, idx] + torch.exp(0.5 * lv[y, idx]) * eps                      # (N, K)

            def comp_rows(r):
                return torch.stack([gaussian_log_density_matrix(w[r], mu[c], lv[c]) for c in range(C)], 0)

        agg_w = torch.empty(N, dtype=torch.float64, device=dev)
        agg_joint = torch.empty(N, dtype=torch.float64, device=dev)
        own_comp = torch.empty(N, C, dtype=torch.float64, device=dev)
        for r0 in range(0, N, chunk):
            rows_ = slice(r0, min(r0 + chunk, N))
            comp = comp_rows(rows_)                                                 # (C, rows, N)
            local = torch.arange(comp.shape[1], device=dev)
            own_comp[rows_] = comp[:, local, idx[rows_]].T                          # log q(w_i|x_i, c)
            dens = comp + log_q.T[:, None, :]
            agg_w[rows_] = torch.logsumexp(dens, dim=(0, 2))
            agg_joint[rows_] = torch.logsumexp(dens[y[rows_], local], 1)
    finally:
        model.train(was)
    own_joint = log_q[idx, y] + own_comp[idx, y]
    own_w = torch.logsumexp(log_q + own_comp, 1)
    agg_w -= math.log(N)
    agg_joint -= math.log(N)
    marg = q.mean(0)
    mi_y = float(-torch.special.xlogy(marg, marg).sum() + torch.special.xlogy(q, q).sum(-1).mean())
    (mi, mi_se), (mi_w, mi_w_se) = (mean_and_standard_error(t) for t in (own_joint - agg_joint, own_w - agg_w))
    return {"MI": mi, "MI_w": mi_w, "MI_y": max(mi_y, 0.0), "MI_se": mi_se, "MI_w_se": mi_w_se}


@torch.no_grad()
def encoder_mutual_information(model, x, seed: int = 0, batch_size: int = 1000, pool="all", return_se: bool = False):
    """The mutual information ``I_q(x; latent)`` of the inference network on the points ``x``, nats.

    - mixture VAE: ``I_q(x; (y, w))``, the ``"MI"`` of :func:`mixture_mutual_information`;
    - single-latent VAE with a Gaussian encoder: ``I_q(x; z)`` by :func:`lidvae_mini.evaluation.metrics.mutual_information`
      of the encoder's ``(mu, logvar)`` (aggregate posterior pooled over ``pool``; one draw per point, seeded by
      ``seed``). With an :class:`SVIRefinedEncoder` it is the MI of the refined posterior.
    - single-latent VAE with a flow encoder (:class:`ConditionalRealNVP`): the same estimator with the sampled
      entropy, from the exact densities ``log q(z_i|x_j)`` of every draw under every point
      (:func:`lidvae_mini.evaluation.metrics.mutual_information_from_log_density`; ``pool="all"`` only; N² flow passes).

    The raw estimate (it can fall below 0 through Monte Carlo noise; tables use
    :func:`lidvae_mini.evaluation.metrics.mutual_information_report`), or ``(estimate, standard_error)`` with ``return_se``.

    Raises:
        TypeError: no Gaussian (``q(w|x, y)``) or flow encoder.
        ValueError: ``pool`` other than ``"all"`` with a flow encoder.
    """
    from ..evaluation.metrics import mutual_information

    if _is_mixture(model):
        mi = mixture_mutual_information(model, x, seed=seed, batch_size=batch_size)
        return (mi["MI"], mi["MI_se"]) if return_se else mi["MI"]
    if isinstance(getattr(model, "encoder", None), ConditionalRealNVP):
        return _flow_mutual_information(model.encoder, x, seed=seed, batch_size=batch_size, pool=pool,
                                        return_se=return_se)
    enc = _gaussian_encoder(model)
    like = next(model.parameters())
    x = torch.as_tensor(x, dtype=like.dtype)
    batch_size = check_int(batch_size, "batch_size")
    was = model.training
    model.eval()
    try:
        mus, lvs = [], []
        for start in range(0, x.shape[0], batch_size):
            mu, lv = enc(x[start:start + batch_size].to(like.device))
            mus.append(mu.detach().cpu())
            lvs.append(lv.detach().cpu())
    finally:
        model.train(was)
    return mutual_information(torch.cat(mus), torch.cat(lvs), seed=seed, pool=pool, return_se=return_se)


def _flow_mutual_information(enc, x, seed: int, batch_size: int, pool, return_se: bool = False):
    """``I_q(x; z)`` of a flow posterior: one seeded draw per point, scored under every point's q (nats)."""
    from ..evaluation.metrics import mutual_information_from_log_density

    if pool != "all":
        raise ValueError(f"a flow encoder's MI pools the whole set (pool='all'), got pool={pool!r}")
    like = next(enc.parameters())
    x = torch.as_tensor(x, dtype=like.dtype).to(like.device)
    batch_size = check_int(batch_size, "batch_size")
    n = x.shape[0]
    was = enc.training
    enc.eval()
    try:
        with torch.random.fork_rng(devices=[like.device.index or 0] if like.device.type == "cuda" else []):
            torch.manual_seed(check_int(seed, "seed", minimum=0))
            z = torch.cat([enc.sample(x[s:s + batch_size], 1)[0][0] for s in range(0, n, batch_size)])   # (N, K)
        rows = max(1, batch_size * 64 // n)   # about 64 batches' worth of flow passes held at once
        log_q = torch.cat([enc.log_prob(z[r:r + rows, None, :].expand(-1, n, -1), x)
                           for r in range(0, n, rows)])                                           # (N, N)
    finally:
        enc.train(was)
    return mutual_information_from_log_density(log_q.double().cpu(), return_se=return_se)


# ----------------------------------------------------------------------------------------- aggressive training
def encoder_inner_loop(step_fn, max_inner_steps: int = 100, check_every: int = 15) -> int:
    """He et al.'s inner loop: call ``step_fn()`` (one encoder update; returns ``(loss_sum, count)`` of its batch)
    at most ``max_inner_steps`` times, stopping after a block of ``check_every`` steps whose mean loss is higher
    than the previous block's. Returns the number of steps taken (``1 <= steps <= max_inner_steps``).

    Raises:
        ValueError: non-positive sizes.
    """
    max_inner_steps = check_int(max_inner_steps, "max_inner_steps")
    check_every = check_int(check_every, "check_every")
    prev, total, count, steps = math.inf, 0.0, 0, 0
    while steps < max_inner_steps:
        loss_sum, n = step_fn()
        steps += 1
        total += float(loss_sum)
        count += int(n)
        if steps % check_every == 0:
            cur = total / max(count, 1)
            if cur > prev:
                break
            prev, total, count = cur, 0.0, 0
    return steps


def inference_parameters(model) -> list:
    """Parameters of the inference network: ``model.encoder`` (and ``model.cluster_net``, the ``q(y|x)`` network of
    a mixture VAE); everything else (decoder, mixture prior) is the generative model."""
    mods = [getattr(model, name) for name in ("cluster_net", "encoder") if isinstance(getattr(model, name, None),
                                                                                      nn.Module)]
    return [p for m in mods for p in m.parameters()]


def _split_parameters(model, encoder_params=None):
    enc = list(inference_parameters(model) if encoder_params is None else encoder_params)
    ids = {id(p) for p in enc}
    dec = [p for p in model.parameters() if id(p) not in ids]
    if not enc or not dec:
        raise ValueError(f"aggressive training needs encoder and decoder parameters, got {len(enc)} and {len(dec)}")
    return enc, dec


def fit_aggressive(model, train_x, valid_x, *, epochs: int = 10, batch_size: int = 100, lr: float = 1e-3, seed: int = 0,
                   binarize: str | None = None, grad_clip: float | None = 5.0, max_inner_steps: int = 100,
                   check_every: int = 15, mi_patience: int = 1, mi_fn=None, encoder_params=None, n_samples: int = 1,
                   eval_batch_size: int = 1000, select_best: bool = False, progress: bool | None = None,
                   before_epoch=None, after_epoch=None, checkpoint_dir=None, resume: bool = True) -> dict:
    """Aggressive ("lagging encoder") training of He et al. (2019), then ordinary ELBO training.

    Both phases run through :func:`lidvae_mini.models.loop.train_loop` (the aggressive one as
    :class:`AggressiveMethod`), with its guarantees: seeded, checkpointed and resumable bitwise, the NaN guard.
    Aggressive phase, for each minibatch: :func:`encoder_inner_loop` (encoder-only Adam steps: the first on the
    minibatch itself, then on fresh random minibatches, freshly binarised; at most ``max_inner_steps``, stopping
    when the mean loss over ``check_every`` steps rises), then one decoder-only step on the minibatch. Gradients are
    clipped over all parameters (norm ``grad_clip``). After each epoch the validation metrics of
    :func:`lidvae_mini.models.train.evaluate` and ``mi = mi_fn(model, valid)`` are recorded (default
    :func:`encoder_mutual_information`, seeded); the phase ends once the MI has not exceeded its best value for
    ``mi_patience`` consecutive epochs. The remaining epochs run :func:`lidvae_mini.models.train.fit` (seed ``seed + 1``;
    a fresh Adam), whose history is appended with shifted epoch numbers.

    Args:
        model: a VAE or mixture VAE following the model protocol; trained in place.
        train_x, valid_x: (N, D) and (M, D) arrays/tensors (images in [0, 1] when ``binarize="dynamic"``; the
            validation set is then binarised once with ``seed``, as in :func:`~lidvae_mini.models.train.fit`).
        epochs: total epochs (aggressive + standard). batch_size, lr, grad_clip, n_samples, eval_batch_size,
            progress: as in :func:`~lidvae_mini.models.train.fit`.
        max_inner_steps, check_every: the inner-loop limits (He et al.: 100 and 15).
        mi_patience: epochs without a new best MI before the phase ends (He et al.'s text code: 1).
        mi_fn: ``(model, valid_tensor) -> float``, or ``None``.
        encoder_params: parameters of the inference network (default :func:`inference_parameters`); the
            decoder is the rest.
        select_best: at the end, restore the parameters of the epoch with the lowest validation negative ELBO
            (model selection on the validation split).
        before_epoch, after_epoch: ``(model, epoch) -> None`` called around every epoch of both phases (epochs
            numbered from 1), e.g. to record a trace.
        checkpoint_dir, resume: as :func:`~lidvae_mini.models.train.fit`; the aggressive phase writes
            :data:`AGGRESSIVE_CHECKPOINT_FILE`, the standard phase ``checkpoint.pt``, both in ``checkpoint_dir``.

    Returns:
        history: every key of :data:`lidvae_mini.models.train.HISTORY_KEYS` plus :data:`AGGRESSIVE_KEYS` (``aggressive``:
        whether the epoch ran in the aggressive phase; mean and max inner steps per decoder update; validation MI,
        ``nan`` in the standard phase) and, with ``select_best``, ``selected`` (True at the restored epoch).

    Raises:
        TypeError/ValueError: bad data or settings (as :func:`~lidvae_mini.models.train.fit`), no validation data.
        NonFiniteLossError: as :func:`~lidvae_mini.models.train.fit`.
    """
    epochs, batch_size = check_int(epochs, "epochs", minimum=0), check_int(batch_size, "batch_size")
    lr, seed = check_positive(lr, "lr"), check_int(seed, "seed", minimum=0)
    check_choice(binarize, "binarize", T.BINARIZE)
    mi_patience, n_samples = check_int(mi_patience, "mi_patience"), check_int(n_samples, "n_samples")
    check_int(max_inner_steps, "max_inner_steps")
    check_int(check_every, "check_every")
    if grad_clip is not None:
        grad_clip = check_positive(grad_clip, "grad_clip")
    if valid_x is None:
        raise ValueError("fit_aggressive needs valid_x: the aggressive phase ends on the validation MI")
    enc_params, dec_params = _split_parameters(model, encoder_params)
    like = next(model.parameters())
    # fit's checks and placement, the data kept in host memory (batches are copied to the device)
    train, valid, data_rng = T._training_data(model, train_x, valid_x, binarize, seed, False, like)
    if mi_fn is None:
        def mi_fn(m, v):
            return encoder_mutual_information(m, v, seed=seed)
    config = dict(batch_size=batch_size, lr=lr, seed=seed, binarize=binarize, grad_clip=grad_clip,
                  n_samples=n_samples, max_inner_steps=max_inner_steps, check_every=check_every,
                  mi_patience=mi_patience, n_train=int(train.shape[0]))
    method = AggressiveMethod(model, train, valid, data_rng, config, enc_params, dec_params, mi_fn, eval_batch_size)
    best = BestState() if select_best else None
    ckpt = dict(checkpoint_dir=checkpoint_dir, resume=resume)
    history = train_loop(model, method, epochs=epochs, seed=seed, checkpoint_file=AGGRESSIVE_CHECKPOINT_FILE,
                         progress=progress, best=best, before_epoch=before_epoch, after_epoch=after_epoch, **ckpt)
    done = len(history["epoch"])
    if done < epochs:   # the standard phase: fit, a fresh Adam, seed + 1, epochs numbered after the aggressive ones
        if best is not None:
            best.offset = done
        rest = T.fit(model, train, valid, epochs=epochs - done, batch_size=batch_size, lr=lr, seed=seed + 1,
                     binarize=binarize, grad_clip=grad_clip, n_samples=n_samples, eval_batch_size=eval_batch_size,
                     progress=progress, select_best=best or False, before_epoch=_shifted(before_epoch, done),
                     after_epoch=_shifted(after_epoch, done), **ckpt)
        _append_standard_phase(history, rest, done)
    if best is not None:
        best.restore(model)
        history["selected"] = [e == best.epoch for e in history["epoch"]]
    model.eval()
    return history


class AggressiveMethod(Method):
    """The aggressive phase of :func:`fit_aggressive` for :func:`~lidvae_mini.models.loop.train_loop`: for every
    minibatch of a seeded permutation, the encoder's inner loop (:func:`encoder_inner_loop`, encoder-only Adam steps
    on fresh random minibatches) and then one decoder-only step, gradients clipped over all parameters; after the
    epoch the validation metrics and MI, and the phase ends (``done()``) once the MI has not exceeded its best
    value for ``mi_patience`` consecutive epochs."""

    keys = HISTORY_KEYS + AGGRESSIVE_KEYS
    progress_keys = ("train_neg_elbo", "valid_mi")

    def __init__(self, model, train, valid, data_rng, config: dict, enc_params: list, dec_params: list, mi_fn,
                 eval_batch_size: int):
        self.model, self.train, self.valid, self.config, self.mi_fn = model, train, valid, config, mi_fn
        self.params = list(model.parameters())
        self.device = self.params[0].device
        self.optimizers = {"encoder_optimizer": torch.optim.Adam(enc_params, lr=config["lr"]),
                           "decoder_optimizer": torch.optim.Adam(dec_params, lr=config["lr"])}
        self.generators = {"data_rng": data_rng}
        self.eval_batch_size = eval_batch_size
        self.aggressive, self.best_mi, self.bad, self.inner = True, -math.inf, 0, []

    def draw(self, idx) -> torch.Tensor:
        xb = self.train[idx]
        if self.config["binarize"] == "dynamic":
            xb = torch.bernoulli(xb, generator=self.generators["data_rng"])
        return xb.to(self.device)

    def batches(self, epoch: int, step: int):
        n, bs = self.train.shape[0], self.config["batch_size"]
        perm = torch.randperm(n, generator=self.generators["data_rng"])
        self.inner = []
        for b in range(0, n, bs):
            yield self.draw(perm[b:b + bs])

    def _update(self, xb, which: str, guard):
        loss, parts = self.model.loss(xb, n_samples=self.config["n_samples"])
        other = self.optimizers["decoder_optimizer" if which == "encoder_optimizer" else "encoder_optimizer"]
        update(self.optimizers[which], loss, self.params, self.config["grad_clip"], guard, zero=(other,))
        return loss, parts

    def step(self, xb: torch.Tensor, guard) -> torch.Tensor:
        n, bs, current = self.train.shape[0], self.config["batch_size"], [xb]

        def enc_step():
            loss, _ = self._update(current[0], "encoder_optimizer", guard)
            m = current[0].shape[0]
            current[0] = self.draw(torch.randperm(n, generator=self.generators["data_rng"])[:bs])
            return float(loss.detach()) * m, m

        self.inner.append(encoder_inner_loop(enc_step, self.config["max_inner_steps"], self.config["check_every"]))
        loss, parts = self._update(xb, "decoder_optimizer", guard)
        return torch.stack([-parts["elbo"].detach().sum().double(), parts["kl"].detach().sum().double(),
                            loss.detach().double() * xb.shape[0]])

    def end_epoch(self, epoch: int, sums, guard) -> dict:
        n = self.train.shape[0]
        row = _validation_row(self.model, self.valid, self.config["seed"], epoch, self.eval_batch_size, guard)
        mi = float(self.mi_fn(self.model, self.valid.to(self.device)))
        if mi > self.best_mi:
            self.best_mi, self.bad = mi, 0
        else:
            self.bad += 1
            self.aggressive = self.bad < self.config["mi_patience"]
        neg_elbo, kl, loss_sum = sums.tolist()
        return {**row, "train_neg_elbo": neg_elbo / n, "train_kl": kl / n, "train_loss": loss_sum / n,
                "aggressive": True, "inner_steps_mean": sum(self.inner) / len(self.inner),
                "inner_steps_max": max(self.inner), "valid_mi": mi}

    def done(self) -> bool:
        return not self.aggressive

    def state_dict(self) -> dict:
        return {"aggressive": self.aggressive, "best_mi": self.best_mi, "mi_bad_epochs": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.aggressive, self.best_mi, self.bad = state["aggressive"], state["best_mi"], state["mi_bad_epochs"]


def _shifted(hook, offset: int):
    """``hook`` called with epochs counted ``offset`` later (the standard phase after the aggressive one)."""
    if hook is None:
        return None
    return lambda model, epoch: hook(model, epoch + offset)


def _append_standard_phase(history: dict, rest: dict, done: int) -> None:
    """Append the standard phase's history ``rest`` (epochs counted from 1) after the ``done`` aggressive epochs."""
    for i in range(len(rest["epoch"])):
        for k in HISTORY_KEYS:
            history[k].append(rest[k][i] + done if k == "epoch" else rest[k][i])
        history["aggressive"].append(False)
        history["inner_steps_mean"].append(0.0)
        history["inner_steps_max"].append(0)
        history["valid_mi"].append(math.nan)


# ------------------------------------------------------------------------------------------------ dispatch
def fit_baseline(trainer: str, model, train_x, valid_x=None, *, select_best: bool = False, before_epoch=None,
                 after_epoch=None, **kwargs) -> dict:
    """Train ``model`` with one of :data:`TRAINERS`: ``"elbo"`` (:func:`lidvae_mini.models.train.fit`), ``"sa_vae"`` (the
    same loop on a model from :func:`semi_amortized`) or ``"aggressive"`` (:func:`fit_aggressive`).

    With ``select_best`` (needs ``valid_x``) the model is validated every epoch and the parameters of the epoch
    with the lowest validation negative ELBO are restored at the end; the history gets a ``selected`` key (True at
    that epoch). ``kwargs`` go to the trainer (``epochs``, ``batch_size``, ``lr``, ``seed``, ``binarize``, ...).
    ``before_epoch`` and ``after_epoch``, ``(model, epoch) -> None``, are called around every epoch (numbered
    from 1) in an RNG forked from the training stream.

    Raises:
        ValueError: unknown ``trainer``; ``select_best`` without ``valid_x``. TypeError: ``"sa_vae"`` with a model
            whose loss is not the SA-VAE's.
    """
    from .train import fit

    check_choice(trainer, "trainer", TRAINERS)
    hooks = dict(before_epoch=before_epoch, after_epoch=after_epoch)
    if trainer == "aggressive":
        return fit_aggressive(model, train_x, valid_x, select_best=select_best, **hooks, **kwargs)
    if trainer == "sa_vae" and not isinstance(model, (SAVAE, SAMixtureVAE)):
        raise TypeError(f"trainer 'sa_vae' needs a model from semi_amortized(model), got {type(model).__name__}")
    if select_best:
        kwargs["eval_every"] = 1     # every epoch a candidate
    return fit(model, train_x, valid_x, select_best=select_best, **hooks, **kwargs)


# ---------------------------------------------------------------------------------- image experiments (ch. 08)
#: The rows of the images chapter (paper Tables 1-2) and of its ablation, name -> (model kind, trainer, prior
#: ``p(w|y)``, ``beta`` of the injective decoder). The baselines are GMVAE variants with learned cluster priors, as in
#: the official code; the ``"lidgmvae"`` row is the paper's Example 1 (fixed zero-one ``beta_1``, needs
#: ``num_clusters <= latent_dim``) and ``"lidgmvae_learned"`` its learned-prior variant (the ``"lidgmvae"`` of the
#: book's results committed before Example 1 became the default). Both have the paper's fixed zero-one ``beta``;
#: the ``"_lbeta"`` rows have a learned ``beta`` of full column rank instead
#: (:class:`~lidvae_mini.models.decoders.FullRankLift`, the official code's dense layer with its rank guaranteed).
#: ``"gmvae_example1"`` (MLP decoder, Example 1's prior) completes the ablation {learned, Example 1} x {MLP, fixed
#: beta, learned beta}. ``"vae"`` is the single-latent VAE (no prior over clusters).
IMAGE_METHODS = {
    "vae": ("vae", "elbo", None, None),                        # single latent z ~ N(0, I), MLP decoder
    "beta_vae": ("beta_gmvae", "elbo", "learned", None),       # β-GMVAE, β = 0.2 on KL_y + KL_w
    "sa_vae": ("gmvae", "sa_vae", "learned", None),            # SA-GMVAE: q(w|x, y) refined by SVI, q(y|x) amortised
    "lagging_vae": ("gmvae", "aggressive", "learned", None),   # GMVAE with He et al.'s aggressive encoder training
    "gmvae": ("gmvae", "elbo", "learned", None),               # the paper's "VAE" row of Table 2
    "lidgmvae": ("lidgmvae", "elbo", "example1", "fixed"),     # injective decoder (Definition 3), Example 1's prior
    "lidgmvae_learned": ("lidgmvae", "elbo", "learned", "fixed"),  # injective decoder, learned cluster priors
    "lidgmvae_lbeta": ("lidgmvae", "elbo", "example1", "learned"),   # Example 1, learned full-rank beta
    "lidgmvae_learned_lbeta": ("lidgmvae", "elbo", "learned", "learned"),  # learned priors, learned beta
    "gmvae_example1": ("gmvae", "elbo", "example1", None),     # MLP decoder, Example 1's prior (ablation)
}
#: Encoders of ``q(w|x, y)`` (``q(z|x)`` for the VAE row): the supplement's two-layer RealNVP, or a Gaussian.
IMAGE_ENCODERS = ("realnvp", "gaussian")


def method_spec(method: str, encoder: str = "realnvp") -> dict:
    """What one row of :data:`IMAGE_METHODS` is: ``{"kind", "trainer", "prior", "encoder", "decoder", "beta"}``.

    ``encoder`` is the requested family; SA-VAE's SVI refinement needs a Gaussian ``q(w|x, y)``, so ``"sa_vae"``
    always gets ``"gaussian"``. ``decoder`` is ``"injective"`` (Brenier maps) or ``"mlp"``; ``beta`` is the injective
    decoder's ``"fixed"`` or ``"learned"`` lift (:class:`~lidvae_mini.models.decoders.InjectiveDecoder`), None for an MLP.

    Raises:
        ValueError: unknown ``method`` or ``encoder``.
    """
    check_choice(method, "method", tuple(IMAGE_METHODS))
    check_choice(encoder, "encoder", IMAGE_ENCODERS)
    kind, trainer, prior, beta = IMAGE_METHODS[method]
    return {"kind": kind, "trainer": trainer, "prior": prior, "encoder": "gaussian" if trainer == "sa_vae" else encoder,
            "decoder": "injective" if kind == "lidgmvae" else "mlp", "beta": beta}


def build_method(method: str, data_dim: int, latent_dim: int, num_clusters: int, depth: int = 1,
                 head: str = "bernoulli", *, hidden=(128,), icnn_width: int = 32, alpha: float = 0.1,
                 svi_steps: int = 20, encoder: str = "realnvp", seed: int = 0, decoder_kwargs: dict | None = None):
    """The model of one row of :data:`IMAGE_METHODS`, initialised with ``seed``.

    Mixture rows: :func:`lidvae_mini.models.mixture.build_mixture_vae` with the row's prior (:func:`method_spec`) and
    ``q(w|x, y)`` from ``encoder`` (``hidden`` for it and for ``q(y|x)``; the paper's supplement: a two-layer
    RealNVP; ``"sa_vae"`` always Gaussian), ``depth`` generative hidden layers, decoders of matched size
    (``icnn_width``, ``alpha``); ``"sa_vae"`` wraps the GMVAE with :func:`semi_amortized` (``svi_steps``).
    ``"vae"``: a single-latent VAE (:func:`lidvae_mini.models.vae.build_vae`, the same ``encoder`` family) whose MLP
    decoder has the GMVAE decoder's hidden sizes. For the same ``seed`` every row starts from the same ``q(y|x)``
    and ``q(w|x, y)`` weights (same encoder family), and rows with the same decoder from the same decoder weights.
    The MLP decoders are matched to the fixed-``beta`` injective decoder (a learned ``beta`` adds its K x D lift).
    ``decoder_kwargs`` go to the injective decoder (:class:`~lidvae_mini.models.decoders.InjectiveDecoder`, e.g.
    ``g2_active_inputs``) of an injective row, over the row's ``beta``.

    Raises:
        ValueError: unknown ``method`` or ``encoder``; ``num_clusters > latent_dim`` for a row with Example 1's prior;
            ``decoder_kwargs`` for a row with an MLP decoder (and the builders' other errors).
    """
    import warnings

    from .mixture import build_mixture_vae
    from .vae import build_vae

    spec = method_spec(method, encoder)
    kind = spec["kind"]
    if decoder_kwargs and spec["decoder"] != "injective":
        raise ValueError(f"decoder_kwargs are for an injective decoder; row {method!r} has an MLP decoder")
    kw = dict(encoder=spec["encoder"], encoder_hidden=hidden, cluster_hidden=hidden, icnn_width=icnn_width,
              alpha=alpha, seed=seed, prior=spec["prior"] or "learned")
    if spec["decoder"] == "injective":
        kw["decoder_kwargs"] = {"beta": spec["beta"], **dict(decoder_kwargs or {})}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no MLP decoder")   # recorded in model.size_match instead
        gm = build_mixture_vae("gmvae" if kind == "vae" else kind, data_dim, latent_dim, num_clusters, head, depth,
                               **kw)
    if kind == "vae":
        return build_vae("vae", data_dim, latent_dim, head, encoder=spec["encoder"], encoder_hidden=hidden,
                         mlp_hidden=gm.decoder.hidden, seed=seed)
    return semi_amortized(gm, svi_steps=svi_steps) if spec["trainer"] == "sa_vae" else gm


def run_method(method: str, data: dict, *, depth: int = 1, epochs: int = 10, batch_size: int = 100,
               lr: float = 1e-3, latent_dim: int = 8, num_clusters: int = 10, iwae_samples: int = 100,
               seed: int = 0, device="cpu", hidden=(128,), icnn_width: int = 32, alpha: float = 0.1,
               svi_steps: int = 20, max_inner_steps: int = 100, check_every: int = 15,
               encoder: str = "realnvp", decoder_kwargs: dict | None = None, trainer: str | None = None,
               before_epoch=None, after_epoch=None) -> tuple[dict, dict]:
    """Build, train (model selection on the validation split) and evaluate one row of the images chapter.

    Args:
        method: a key of :data:`IMAGE_METHODS`.
        data: ``{"train": (x, y), "valid": x_bin, "test": (x_bin, y)}``: training images in [0, 1] (dynamically
            binarised by the trainer), validation and test images already binarised once (fixed seeds).
        depth, latent_dim, num_clusters, hidden, icnn_width, alpha, svi_steps, encoder: the model
            (:func:`build_method`; ``encoder`` is the family of ``q(w|x, y)``, Gaussian for SA-VAE whatever it says).
        decoder_kwargs: extra arguments of an injective row's decoder (:func:`build_method`).
        epochs, batch_size, lr, seed: training (Adam); ``max_inner_steps``, ``check_every``: aggressive training.
        trainer: a key of :data:`TRAINERS` in place of the row's own (None), e.g. ``"aggressive"`` for a row
            trained by ELBO.
        before_epoch, after_epoch: ``(model, epoch) -> None`` around every training epoch (:func:`fit_baseline`).
        iwae_samples: importance samples per datapoint (per cluster for mixtures) of the test log-likelihood.
        device: torch device.

    Returns:
        ``(metrics, history)``. ``metrics`` (nats per test datapoint): ``AU`` (fraction of active continuous
        dimensions), ``KL`` (the ELBO's total KL), ``MI`` (``I_q(x; (y, w))`` for mixtures, ``I_q(x; z)`` for the
        VAE: :func:`encoder_mutual_information`; never below 0, with ``MI_se`` its Monte Carlo standard error and
        ``MI_estimate`` the raw estimate: :func:`lidvae_mini.evaluation.metrics.mutual_information_report`), ``iwae_ll``,
        ``neg_elbo``, ``acc_hungarian``, ``acc_majority`` (``None`` for the VAE), ``chance``, and for mixtures
        ``AU_y``, ``KL_y``, ``KL_w``, ``MI_w``, ``MI_y``, ``clusters_used``; plus ``seconds`` and ``best_epoch``. SA rows are evaluated with the SVI-refined posterior (:meth:`SAMixtureVAE.refined_view`).

    Raises:
        ValueError: unknown ``method``.
    """
    import numpy as np

    from .mixture import evaluate_mixture
    from .train import evaluate

    spec = method_spec(method, encoder)
    t0 = time.perf_counter()
    x_train = data["train"][0]
    x_valid = data["valid"]
    x_test, y_test = data["test"]
    model = build_method(method, x_train.shape[1], latent_dim, num_clusters, depth, hidden=hidden,
                         icnn_width=icnn_width, alpha=alpha, svi_steps=svi_steps, encoder=encoder,
                         seed=seed, decoder_kwargs=decoder_kwargs).to(device)
    trainer = spec["trainer"] if trainer is None else check_choice(trainer, "trainer", TRAINERS)
    if (trainer == "sa_vae") != (spec["trainer"] == "sa_vae"):
        raise ValueError(f"trainer 'sa_vae' needs the SA-VAE row's model and that row needs it; got {trainer!r} "
                         f"for {method!r}")
    extra = dict(max_inner_steps=max_inner_steps, check_every=check_every) if trainer == "aggressive" else {}
    hist = fit_baseline(trainer, model, x_train, x_valid, select_best=True, epochs=epochs, batch_size=batch_size,
                        lr=lr, seed=seed, binarize="dynamic", before_epoch=before_epoch, after_epoch=after_epoch,
                        **extra)
    ev_model = model.refined_view(seed=seed, batch_size=batch_size) if trainer == "sa_vae" else model
    like = next(model.parameters())
    xt = torch.as_tensor(np.asarray(x_test), dtype=like.dtype)
    labels = np.asarray(y_test)
    chance = float(np.bincount(labels).max() / len(labels))
    if _is_mixture(model):
        ev = evaluate_mixture(ev_model, xt, labels, iwae_samples=iwae_samples, seed=seed)
        mi = mixture_mutual_information(ev_model, xt, seed=seed)
        mi_se = mi["MI_se"]
        out = {"AU": ev["AU_w_fraction"], "KL": ev["KL_y"] + ev["KL_w"], "iwae_ll": ev.get("iwae_ll"),
               "neg_elbo": ev["neg_elbo"], "acc_hungarian": ev["acc_hungarian"], "acc_majority": ev["acc_majority"],
               "chance": ev["chance"], "AU_y": ev["AU_y_fraction"], "KL_y": ev["KL_y"], "KL_w": ev["KL_w"],
               "MI_w": max(mi["MI_w"], 0.0), "MI_y": mi["MI_y"], "clusters_used": ev["clusters_used"]}
        mi = mi["MI"]
    else:
        ev = evaluate(ev_model, xt.to(like.device), iwae_samples=iwae_samples, seed=seed)
        mi, mi_se = encoder_mutual_information(ev_model, xt, seed=seed, return_se=True)
        out = {"AU": ev["au_fraction"], "KL": ev["kl"], "iwae_ll": ev.get("iwae_ll"), "neg_elbo": ev["neg_elbo"],
               "acc_hungarian": None, "acc_majority": None, "chance": chance}
    report = mutual_information_report(mi, mi_se)      # never negative information; the raw estimate beside it
    out.update(MI=report["mi"], MI_se=report["mi_se"], MI_estimate=report["mi_estimate"])
    best = [e for e, s in zip(hist["epoch"], hist["selected"]) if s]
    out.update(seconds=time.perf_counter() - t0, best_epoch=best[0] if best else None)
    return out, hist
