"""Theorem 1 on exact posteriors: posterior collapse <=> latent variable non-identifiability.

Paper: Wang, Blei & Cunningham (NeurIPS 2021), Sec. 2.1, Definitions 1-2, Theorem 1, Eqs. 2-5.

Two models whose posterior is computed without approximation:

* a **discrete latent** ``z in {0, ..., K-1}`` with prior ``pi``: the posterior is Bayes' rule by
  enumeration, in log space (:func:`enumeration_posterior`);
* the **conjugate Gaussian** ``z ~ N(0, 1)``, ``x | z ~ N(a z, s^2)``: the posterior is Gaussian in closed
  form (:func:`conjugate_gaussian_posterior`).

Collapse is measured by ``KL(p(z | x) || p(z))`` in nats (:func:`kl_categorical`, :func:`kl_gaussian`),
non-identifiability (Definition 2) by the spread of the log-likelihood over the latent values
(:func:`loglik_spread`, :func:`is_latent_non_identifiable`). :func:`kl_upper_bound` turns "nearly
non-identifiable" into "nearly collapsed": ``KL <= spread^2 / 8``.
"""
from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.special import logsumexp, rel_entr

from .._checks import as_float_array, check_int, check_positive

#: Tolerance on ``sum(probabilities) == 1``.
PROB_ATOL = 1e-8


def check_probabilities(p, name: str, axis: int = -1) -> np.ndarray:
    """Return ``p`` as a float array of probability vectors along ``axis``.

    Raises:
        ValueError: negative entries, or a vector not summing to 1 (tolerance ``PROB_ATOL``).
    """
    p = as_float_array(p, name)
    if p.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension, got a scalar")
    if np.any(p < 0):
        raise ValueError(f"{name} has negative entries")
    total = p.sum(axis=axis)
    if not np.allclose(total, 1.0, rtol=0.0, atol=PROB_ATOL):
        raise ValueError(f"{name} must sum to 1 along axis {axis}, got sums {np.unique(np.round(total, 12))[:5]}")
    return p


def _prior_and_loglik(prior, log_lik) -> tuple[np.ndarray, np.ndarray]:
    prior = check_probabilities(prior, "prior")
    if prior.ndim != 1:
        raise ValueError(f"prior must have shape (K,), got {prior.shape}")
    log_lik = as_float_array(log_lik, "log_lik")
    if log_lik.ndim == 0 or log_lik.shape[-1] != prior.shape[0]:
        raise ValueError(f"log_lik must have shape (..., K) with K = {prior.shape[0]} = len(prior), "
                         f"got {log_lik.shape}")
    return prior, log_lik


def enumeration_log_posterior(prior, log_lik) -> np.ndarray:
    """Exact log posterior ``log p(z = k | x)`` of a discrete latent, by enumerating Bayes' rule (Eq. 5).

    ``log p(z=k | x) = log pi_k + log p(x | z=k) - logsumexp_j (log pi_j + log p(x | z=j))``.

    Args:
        prior: ``(K,)`` prior probabilities ``pi`` (summing to 1; zeros allowed).
        log_lik: ``(..., K)`` log-likelihoods ``log p(x | z = k)`` in nats, one row per datapoint.

    Returns:
        ``(..., K)`` log posterior probabilities (``-inf`` where ``pi_k = 0``).

    Raises:
        ValueError: ``prior`` not a probability vector, ``log_lik`` not finite or its last axis not ``K``.
    """
    prior, log_lik = _prior_and_loglik(prior, log_lik)
    with np.errstate(divide="ignore"):
        log_prior = np.log(prior)
    # Subtracting the per-row maximum makes a flat likelihood exactly zero before it meets the prior.
    log_joint = log_prior + (log_lik - log_lik.max(axis=-1, keepdims=True))
    return log_joint - logsumexp(log_joint, axis=-1, keepdims=True)


def enumeration_posterior(prior, log_lik) -> np.ndarray:
    """Exact posterior probabilities ``p(z = k | x)``, shape ``(..., K)``: see :func:`enumeration_log_posterior`."""
    return np.exp(enumeration_log_posterior(prior, log_lik))


def kl_categorical(p, q) -> np.ndarray:
    """``KL(p || q) = sum_k p_k log(p_k / q_k)`` in nats, along the last axis (``0 log 0 = 0``).

    Args:
        p, q: ``(..., K)`` probability vectors (broadcastable).

    Returns:
        ``(...)`` KL divergences, ``>= 0`` (``inf`` when ``p`` puts mass where ``q`` has none).

    Raises:
        ValueError: not probability vectors, or last axes of different length.
    """
    p, q = check_probabilities(p, "p"), check_probabilities(q, "q")
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"p and q must have the same number of categories, got {p.shape[-1]} and {q.shape[-1]}")
    return rel_entr(p, q).sum(axis=-1)


def conjugate_gaussian_posterior(x, a, s) -> tuple[np.ndarray, float]:
    """Closed-form posterior of ``z ~ N(0, 1)``, ``x | z ~ N(a z, s^2)``: ``z | x ~ N(m, v)``.

    ``v = s^2 / (s^2 + a^2)`` and ``m = a x / (s^2 + a^2)`` (precision ``1 + a^2/s^2``).

    Args:
        x: ``(n,)`` observations (each with its own latent ``z_i``).
        a: loading, any real number (``a = 0``: the likelihood is flat in ``z``).
        s: observation noise sd, ``> 0``.

    Returns:
        ``(m, v)``: posterior means ``(n,)`` and the common posterior variance (a float).

    Raises:
        ValueError: ``s <= 0``, ``x`` not one-dimensional or not finite, ``a`` not finite.
    """
    x = as_float_array(x, "x", ndim=1)
    a = float(as_float_array(a, "a", ndim=0))
    s = check_positive(s, "s")
    denom = s * s + a * a
    return a * x / denom, s * s / denom


def conjugate_gaussian_loglik(x, z, a, s) -> np.ndarray:
    """``log N(x_i; a z_j, s^2)`` in nats, shape ``(n, m)`` for ``x`` ``(n,)`` and latent values ``z`` ``(m,)``.

    Raises:
        ValueError: ``s <= 0``, ``x`` or ``z`` not one-dimensional or not finite.
    """
    x = as_float_array(x, "x", ndim=1)
    z = as_float_array(z, "z", ndim=1)
    a = float(as_float_array(a, "a", ndim=0))
    s = check_positive(s, "s")
    return stats.norm.logpdf(x[:, None], loc=a * z[None, :], scale=s)


def kl_gaussian(m, v, m0=0.0, v0=1.0) -> np.ndarray:
    """``KL(N(m, v) || N(m0, v0))`` in nats (variances, not sds), elementwise.

    ``= (v/v0 + (m - m0)^2/v0 - 1 - log(v/v0)) / 2``; exactly 0 when ``(m, v) = (m0, v0)``.

    Raises:
        ValueError: a variance ``<= 0`` or non-finite input.
    """
    m, m0 = as_float_array(m, "m"), as_float_array(m0, "m0")
    v, v0 = as_float_array(v, "v"), as_float_array(v0, "v0")
    if np.any(v <= 0) or np.any(v0 <= 0):
        raise ValueError("variances v and v0 must be > 0")
    r = v / v0
    return 0.5 * (r + (m - m0) ** 2 / v0 - 1.0 - np.log(r))


def conjugate_gaussian_kl(x, a, s) -> np.ndarray:
    """``KL(p(z_i | x_i) || p(z_i))`` in nats per datapoint for the conjugate Gaussian model, shape ``(n,)``."""
    m, v = conjugate_gaussian_posterior(x, a, s)
    return kl_gaussian(m, v)


def conjugate_gaussian_mutual_information(a, s) -> float:
    """``E_x KL(p(z|x) || p(z)) = I(z; x) = log(1 + a^2/s^2) / 2`` nats: the KL averaged over ``x ~ p(x)``.

    Raises:
        ValueError: ``s <= 0`` or ``a`` not finite.
    """
    a = float(as_float_array(a, "a", ndim=0))
    s = check_positive(s, "s")
    return 0.5 * float(np.log1p(a * a / (s * s)))


def loglik_spread(log_lik) -> np.ndarray:
    """Flatness measure of Definition 2: ``max_k log p(x | z=k) - min_k log p(x | z=k)`` (nats), per row.

    Zero exactly when the likelihood is constant in ``z`` (Eq. 3).

    Args:
        log_lik: ``(..., K)`` log-likelihoods, the latent values along the last axis.

    Returns:
        ``(...)`` spreads, ``>= 0``.
    """
    log_lik = as_float_array(log_lik, "log_lik")
    if log_lik.ndim == 0:
        raise ValueError("log_lik must have at least one dimension (the latent values), got a scalar")
    return log_lik.max(axis=-1) - log_lik.min(axis=-1)


def is_latent_non_identifiable(log_lik, atol: float = 1e-12) -> bool:
    """Definition 2 on a dataset: is ``p(x | z)`` constant in ``z`` (up to ``atol`` nats) for every datapoint?

    With local latents ``z = (z_1, ..., z_n)`` the dataset likelihood ``prod_i p(x_i | z_i)`` is constant in
    ``z`` exactly when each factor is constant in its ``z_i``; ``log_lik[i, k] = log p(x_i | z_i = k)``.

    Args:
        log_lik: ``(n, K)`` or ``(K,)`` log-likelihoods in nats.
        atol: tolerance in nats on :func:`loglik_spread` (``>= 0``).

    Raises:
        ValueError: negative ``atol``, non-finite ``log_lik``.
    """
    atol = float(atol)
    if not np.isfinite(atol) or atol < 0:
        raise ValueError(f"atol must be a finite number >= 0, got {atol!r}")
    return bool(np.all(loglik_spread(log_lik) <= atol))


def kl_upper_bound(spread) -> np.ndarray:
    """Upper bound on ``KL(p(z | x) || p(z))`` (nats) given the log-likelihood spread ``Delta`` (nats).

    ``KL <= min(Delta, Delta^2 / 8)``, for any prior. Proof sketch: with ``l(z) = log p(x | z)`` and the
    cumulant function ``psi(b) = log E_prior exp(b l)``, ``KL = psi'(1) - psi(1) = int_0^1 b psi''(b) db``,
    and ``psi''(b)`` is the variance of ``l`` under a tilted prior, at most ``Delta^2 / 4`` (Popoviciu);
    also ``|log p(z|x)/p(z)| <= Delta`` pointwise. Tight as ``Delta -> 0`` for two equally likely values.

    Raises:
        ValueError: a negative spread.
    """
    spread = as_float_array(spread, "spread")
    if np.any(spread < 0):
        raise ValueError("spread must be >= 0")
    return np.minimum(spread, spread ** 2 / 8.0)


def interpolated_likelihood(informative, t) -> np.ndarray:
    """Likelihood table ``p_t(x | z) = (1 - t) / M + t * informative[z, x]``, between flat (t=0) and informative (t=1).

    Args:
        informative: ``(K, M)`` table, row ``k`` the distribution of ``x in {0..M-1}`` given ``z = k``.
        t: interpolation in ``[0, 1]``; at ``t = 0`` every row is uniform, so ``z`` is non-identifiable.

    Returns:
        ``(K, M)`` table; each row sums to 1.

    Raises:
        ValueError: rows not probability vectors, or ``t`` outside ``[0, 1]``.
    """
    informative = check_probabilities(informative, "informative")
    if informative.ndim != 2:
        raise ValueError(f"informative must have shape (K, M), got {informative.shape}")
    t = float(as_float_array(t, "t", ndim=0))
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must lie in [0, 1], got {t}")
    flat = np.full_like(informative, 1.0 / informative.shape[1])
    return (1.0 - t) * flat + t * informative


def noisy_channel(K: int, accuracy: float = 0.9) -> np.ndarray:
    """``(K, K)`` informative table: ``x = z`` with probability ``accuracy``, else uniform over the others.

    Raises:
        ValueError: ``K < 2`` or ``accuracy`` outside ``(0, 1)``.
    """
    K = check_int(K, "K", minimum=2)
    accuracy = check_positive(accuracy, "accuracy")
    if accuracy >= 1.0:
        raise ValueError(f"accuracy must lie in (0, 1), got {accuracy}")
    table = np.full((K, K), (1.0 - accuracy) / (K - 1))
    np.fill_diagonal(table, accuracy)
    return table


def discrete_collapse_curve(prior, informative, x: int, ts) -> dict:
    """Exact posterior, KL to the prior and log-likelihood spread along ``t`` for one observation ``x``.

    Args:
        prior: ``(K,)`` prior of ``z``.
        informative: ``(K, M)`` informative likelihood table (see :func:`interpolated_likelihood`).
        x: the observed value, an integer in ``[0, M)``.
        ts: ``(T,)`` interpolation values in ``[0, 1]``.

    Returns:
        ``{"t": (T,), "posterior": (T, K), "kl": (T,) nats, "spread": (T,) nats, "bound": (T,) nats}``.
    """
    ts = as_float_array(ts, "ts", ndim=1)
    informative = check_probabilities(informative, "informative")
    x = check_int(x, "x", minimum=0)
    if informative.ndim != 2 or x >= informative.shape[1]:
        raise ValueError(f"x = {x} is not a column of the (K, M) table of shape {informative.shape}")
    log_lik = np.stack([np.log(interpolated_likelihood(informative, t)[:, x]) for t in ts])
    post = enumeration_posterior(prior, log_lik)
    spread = loglik_spread(log_lik)
    return {"t": ts, "posterior": post, "kl": kl_categorical(post, np.asarray(prior, float)),
            "spread": spread, "bound": kl_upper_bound(spread)}


def likelihood_ridge(x, angles) -> dict:
    """The conjugate Gaussian model's maximum-likelihood set and the KL along it.

    With ``a`` and ``s`` both fitted, ``x_i ~ N(0, a^2 + s^2)`` marginally: the log-likelihood depends on
    ``(a, s)`` only through ``a^2 + s^2``, and every point of the circle ``a^2 + s^2 = mean(x^2)`` is a global
    maximizer. Parametrize it as ``a = r sin(angle)``, ``s = r cos(angle)`` (``angle in [0, pi/2)``).

    Args:
        x: ``(n,)`` data.
        angles: ``(A,)`` angles in ``[0, pi/2)``; ``angle = 0`` is ``a = 0`` (flat likelihood, collapse).

    Returns:
        ``{"angle", "a", "s": (A,), "loglik": (A,) nats per datapoint, "kl": (A,) mean KL per datapoint (nats)}``.

    Raises:
        ValueError: an angle outside ``[0, pi/2)``, all-zero data.
    """
    x = as_float_array(x, "x", ndim=1)
    angles = as_float_array(angles, "angles", ndim=1)
    if np.any(angles < 0) or np.any(angles >= np.pi / 2):
        raise ValueError("angles must lie in [0, pi/2)")
    r = np.sqrt(np.mean(x ** 2))
    if r == 0:
        raise ValueError("x must not be all zeros")
    a, s = r * np.sin(angles), r * np.cos(angles)
    loglik = np.array([stats.norm.logpdf(x, scale=np.hypot(ai, si)).mean() for ai, si in zip(a, s)])
    kl = np.array([conjugate_gaussian_kl(x, ai, si).mean() for ai, si in zip(a, s)])
    return {"angle": angles, "a": a, "s": s, "loglik": loglik, "kl": kl}
