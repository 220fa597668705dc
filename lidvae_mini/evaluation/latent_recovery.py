"""Measured against a known truth: how much of the true latent a model's posterior means recover, and the true
model's own log-likelihood of the data, the ceiling under which every model's IWAE sits (09_text's synthetic data).

* :func:`latent_recovery`: ``R^2`` of the true ``z`` predicted from the posterior means ``E_q[z | x]`` by a linear map
  (:func:`latent_r2`) and by k-nearest-neighbour regression (:func:`knn_r2`, scikit-learn), both fitted on one split
  and scored on another. AU and MI say whether ``z`` carries information; these say whether it is the *true* ``z``.
* :func:`generator_log_likelihood`: ``log p(x) = log E_{p(z)} p(x | z)`` under the generator, by importance sampling
  with a stated proposal (a Laplace approximation around each sentence's posterior mode, covariance inflated, mixed
  with the prior: defensive importance sampling, Hesterberg 1995), with each sentence's effective sample size.
  Since the data are drawn from the generator, ``E_x log p_true(x) >= E_x log p_model(x)`` for every model (Gibbs'
  inequality): the generator's mean is the ceiling of the models' mean log-likelihoods.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import distributions as td

from .._checks import check_int, check_positive


def _as_float64(a, name: str) -> np.ndarray:
    a = np.asarray(torch.as_tensor(a).detach().cpu(), dtype=np.float64)
    if a.ndim != 2 or not np.isfinite(a).all():
        raise ValueError(f"{name} must be a finite 2-D array (N, dims), got shape {a.shape}")
    return a


def _check_pairs(means_fit, z_fit, means_eval, z_eval):
    mf, zf = _as_float64(means_fit, "means_fit"), _as_float64(z_fit, "z_fit")
    me, ze = _as_float64(means_eval, "means_eval"), _as_float64(z_eval, "z_eval")
    if mf.shape[0] != zf.shape[0] or me.shape[0] != ze.shape[0] or mf.shape[1] != me.shape[1] \
            or zf.shape[1] != ze.shape[1]:
        raise ValueError(f"means and true latents must pair up: fit {mf.shape} / {zf.shape}, eval {me.shape} / "
                         f"{ze.shape}")
    return mf, zf, me, ze


def _r2_per_dim(z_true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``1 - SSE / SST`` per column (can be negative)."""
    return 1 - ((z_true - pred) ** 2).sum(0) / ((z_true - z_true.mean(0)) ** 2).sum(0)


def latent_r2(means_fit, z_fit, means_eval, z_eval) -> dict:
    """How well a linear map (least squares with intercept, fitted on ``(means_fit, z_fit)``) of the posterior means
    recovers the true latents on held-out data: ``{"r2": mean R^2 over the true dimensions, "r2_per_dim": [...]}``
    (1: the true z is a linear function of the posterior means; 0: no better than the mean). ``means_*`` ``(N, K)``,
    ``z_*`` ``(N, K_true)``.

    Raises:
        ValueError: shapes that do not pair up, non-finite values.
    """
    mf, zf, me, ze = _check_pairs(means_fit, z_fit, means_eval, z_eval)
    design = lambda m: np.hstack([m, np.ones((m.shape[0], 1))])  # noqa: E731
    W = np.linalg.lstsq(design(mf), zf, rcond=None)[0]
    r2 = _r2_per_dim(ze, design(me) @ W)
    return {"r2": float(r2.mean()), "r2_per_dim": r2.tolist()}


def knn_r2(means_fit, z_fit, means_eval, z_eval, k: int = 20) -> dict:
    """As :func:`latent_r2` with a nonlinear probe: k-nearest-neighbour regression (scikit-learn's
    ``KNeighborsRegressor``, Euclidean distance between posterior means, uniform weights). It recovers any smooth
    function of the means, so a low value says the means do not determine the true z, not that the map is
    nonlinear. ``{"r2_knn": mean R^2, "r2_knn_per_dim": [...], "knn_k": k}``.

    Raises:
        ValueError: shapes that do not pair up, non-finite values, ``k`` not in ``1..N_fit``.
    """
    from sklearn.neighbors import KNeighborsRegressor

    mf, zf, me, ze = _check_pairs(means_fit, z_fit, means_eval, z_eval)
    k = check_int(k, "k")
    if k > mf.shape[0]:
        raise ValueError(f"k = {k} exceeds the {mf.shape[0]} fitting points")
    pred = KNeighborsRegressor(n_neighbors=k).fit(mf, zf).predict(me)
    r2 = _r2_per_dim(ze, pred)
    return {"r2_knn": float(r2.mean()), "r2_knn_per_dim": r2.tolist(), "knn_k": k}


def latent_recovery(means_fit, z_fit, means_eval, z_eval, k: int = 20) -> dict:
    """:func:`latent_r2` and :func:`knn_r2` in one dict (``r2``, ``r2_per_dim``, ``r2_knn``, ``r2_knn_per_dim``,
    ``knn_k``)."""
    return {**latent_r2(means_fit, z_fit, means_eval, z_eval), **knn_r2(means_fit, z_fit, means_eval, z_eval, k)}


# ------------------------------------------------------------------------------------- the true model's log p(x)
def _log_joint(log_prob, words, z):
    return log_prob(words, z) + td.Normal(0.0, 1.0).log_prob(z).sum(-1)


def _posterior_modes(log_prob, words, starts: torch.Tensor, steps: int, lr: float):
    """Local MAP latents ``(N, K)`` by Adam on the summed log joint from ``starts`` ``(N, K)`` (the sentences are
    independent, so each row follows its own gradient)."""
    z = starts.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (-_log_joint(log_prob, words, z).sum()).backward()
        opt.step()
    return z.detach()


def _neg_hessians(log_prob, words, z, h: float = 1e-4):
    """``-d^2 log p(x, z) / dz^2`` at every row of ``z``, ``(N, K, K)``, by central differences of the gradient
    (symmetrised)."""
    def grad(zz):
        zz = zz.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(_log_joint(log_prob, words, zz).sum(), zz)
        return g
    K = z.shape[1]
    cols = []
    for k in range(K):
        e = torch.zeros(K, dtype=z.dtype)
        e[k] = h
        cols.append((grad(z + e) - grad(z - e)) / (2 * h))
    H = torch.stack(cols, -1)
    return -(H + H.transpose(1, 2)) / 2


def laplace_proposal(log_prob, words, starts: torch.Tensor, inflate: float = 2.0, prior_weight: float = 0.1,
                     steps: int = 300, lr: float = 0.05, min_precision: float = 0.5) -> td.Distribution:
    """The importance proposal of :func:`generator_log_likelihood`, one per sentence (batch shape ``(N,)``): a
    mixture of Laplace approximations at local posterior modes, and the prior. From each of the ``C`` starting
    points ``starts`` ``(C, N, K)`` Adam finds a mode ``m_c``; the component there is ``N(m_c, inflate * Sigma_c)``,
    ``Sigma_c`` the inverse of the negative Hessian of the log joint (precision eigenvalues clamped at
    ``min_precision``), weighted by its Laplace evidence ``p(x, m_c) |2 pi Sigma_c|^{1/2}``; the prior ``N(0, I)``
    gets weight ``prior_weight``, which bounds every importance weight: ``p(x, z) / q(z) <= p(x | z) /
    prior_weight``. The posterior of the synthetic generator is sharp and multimodal, hence several starts.
    """
    C, N, K = starts.shape
    locs, covs, log_ev = [], [], []
    for c in range(C):
        m = _posterior_modes(log_prob, words, starts[c], steps, lr)
        evals, evecs = torch.linalg.eigh(_neg_hessians(log_prob, words, m))
        evals = evals.clamp_min(min_precision)
        covs.append((evecs * (inflate / evals).unsqueeze(-2)) @ evecs.transpose(-1, -2))
        locs.append(m)
        with torch.no_grad():
            log_ev.append(_log_joint(log_prob, words, m) - 0.5 * evals.log().sum(-1))
    log_w = torch.log_softmax(torch.stack(log_ev, 1), 1) + math.log(1 - prior_weight)
    log_w = torch.cat([log_w, torch.full((N, 1), math.log(prior_weight), dtype=log_w.dtype)], 1)
    loc = torch.stack(locs + [torch.zeros(N, K, dtype=starts.dtype)], 1)
    cov = torch.stack(covs + [torch.eye(K, dtype=starts.dtype).expand(N, K, K)], 1)
    return td.MixtureSameFamily(td.Categorical(logits=log_w), td.MultivariateNormal(loc, covariance_matrix=cov))


def generator_log_likelihood(log_prob, words: torch.Tensor, latent_dim: int, z_true: torch.Tensor | None = None,
                             n_samples: int = 500, n_starts: int = 8, seed: int = 0, chunk: int = 100,
                             inflate: float = 2.0, prior_weight: float = 0.1, max_sequences: int = 4096) -> dict:
    """``log p(x)`` of each sentence under a latent-variable model with a ``N(0, I_K)`` prior and likelihood
    ``log_prob(words, z)`` (``(N, L), (N, K) -> (N,)`` nats, float64 ``z``; e.g. the float64 copy of
    :meth:`lidvae_mini.data.text.SyntheticTextGenerator.log_prob`), by importance sampling with ``n_samples`` draws
    per sentence from :func:`laplace_proposal`, started from the prior mean, ``n_starts - 1`` prior draws and, when
    given, the latent ``z_true`` ``(N, K)`` that generated each sentence. Any proposal keeps the estimate of
    ``p(x)`` unbiased, so using ``z_true`` to build it is allowed; its logarithm is biased low (Jensen), more so
    when the effective sample size is small. ``chunk`` sentences at a time; at most ``max_sequences``
    (sentence, draw) pairs go through ``log_prob`` at once (memory).

    Returns ``{"log_px": (N,) float64 nats per sentence, "mean": its mean, "se": the standard error of the mean over
    sentences, "ess_fraction": (N,) the effective sample size (sum w)^2 / sum w^2 over n_samples, "proposal":
    a sentence naming the proposal}``. Seeded; the caller's RNG is left untouched.

    Raises:
        ValueError: ``words`` not ``(N, L)`` integer; ``z_true`` not ``(N, K)``; bad sizes.
    """
    if words.dim() != 2 or words.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"words must be an (N, L) integer tensor, got {tuple(words.shape)} {words.dtype}")
    K, N = check_int(latent_dim, "latent_dim"), words.shape[0]
    if z_true is not None and tuple(z_true.shape) != (N, K):
        raise ValueError(f"z_true must be ({N}, {K}), got {tuple(z_true.shape)}")
    n_samples, chunk = check_int(n_samples, "n_samples"), check_int(chunk, "chunk")
    n_starts = check_int(n_starts, "n_starts")
    check_positive(inflate, "inflate")
    if not 0.0 < prior_weight < 1.0:
        raise ValueError(f"prior_weight must be in (0, 1), got {prior_weight!r}")
    log_px, ess = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_int(seed, "seed", minimum=0))
        for i in range(0, N, chunk):
            w = words[i:i + chunk]
            n = w.shape[0]
            starts = torch.cat([torch.zeros(1, n, K, dtype=torch.float64),
                                torch.randn(n_starts - 1, n, K, dtype=torch.float64)])
            if z_true is not None:
                starts = torch.cat([starts, z_true[i:i + chunk].double().unsqueeze(0)])
            q = laplace_proposal(log_prob, w, starts, inflate, prior_weight)
            with torch.no_grad():
                z = q.sample((n_samples,))  # (S, n, K) float64
                per = max(1, max_sequences // n)  # draws evaluated at once
                lj = torch.cat([_log_joint(log_prob, w.repeat(zs.shape[0], 1), zs.reshape(-1, K)).view(-1, n)
                                for zs in z.split(per)])
                lw = lj - q.log_prob(z)
                log_px.append(torch.logsumexp(lw, 0) - math.log(n_samples))
                ess.append(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)) / n_samples)
    lp = torch.cat(log_px)
    return {"log_px": lp, "mean": float(lp.mean()), "se": float(lp.std() / math.sqrt(N)),
            "ess_fraction": torch.cat(ess),
            "proposal": (f"importance sampling, {n_samples} draws per sentence from a mixture of Laplace "
                         f"approximations (covariance x {inflate:g}) at the modes found from {n_starts} starts"
                         + (" and the true z" if z_true is not None else "") + f", and the prior (weight "
                         f"{prior_weight:g})")}
