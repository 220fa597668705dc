"""Two-component Gaussian mixture with a global latent weight (supplement A.2, Figure 4).

Model (supplement Eq. in A.2; official ``gauss_mix.stan``)::

    alpha ~ Beta(5, 5)
    y_i | alpha; theta ~ alpha * N(mu1, sigma1^2) + (1 - alpha) * N(mu2, sigma2^2),   i = 1..N

with ``theta = (mu1, sigma1, mu2, sigma2)``. The weight ``alpha`` is the latent variable whose posterior can
collapse to its prior: when the two components are equal (``mu1 = mu2``, ``sigma1 = sigma2``), the likelihood
does not depend on ``alpha`` at all and ``p(alpha | y; theta) = p(alpha)`` exactly.

What is here:

- data: :func:`simulate` (the official generating process, NumPy seeds) and :func:`load_data` (the
  official 10^4 points or a regenerated sample);
- maximum likelihood by deterministic optimisers: :func:`fit_em` (EM, seeded restarts) and
  :func:`fit_lbfgs` (SciPy L-BFGS-B, exact gradients), both behind :func:`fit_ml`;
- :func:`log_likelihood_alpha`: the per-datapoint log-likelihood as a function of ``alpha`` (Figure 4a);
- NumPyro models :func:`model_fixed` (``alpha`` only) and :func:`model_joint` (``mu``, ``sigma``, ``alpha``),
  sampled by :func:`sample_alpha` with :func:`lidvae_mini.exact.hmc.run_nuts`, with label switching handled by
  :func:`relabel`;
- :func:`distance_to_beta`: KS statistic and Wasserstein-1 distance of ``alpha`` draws to Beta(5, 5);
- :func:`fixed_alpha_posterior`: the exact posterior of ``alpha`` at fixed components (by quadrature), and
  :func:`fixed_posteriors_at_ml`: that posterior at the selected and at the strict ML point;
- figures :func:`plot_loglik_alpha`, :func:`plot_alpha_histograms` (Figure 4a and 4b) and
  :func:`plot_alpha_cdfs` (exact posteriors against the prior).

Units: log-likelihoods are in nats, either total over the data or per datapoint (the mean), as named.

Labelling convention. Components are ordered so that ``mu1 <= mu2`` and ``alpha`` is the weight of the
lower-mean component. The official R code puts weight 0.85 on its first component, which has the lower
mean (``mu = (-10, 10)`` and ``(-0.5, 0.5)``), so under this convention the official data have
``alpha = 0.85``. (The supplement's Eqs. 12-13 write the same mixtures with the weights swapped.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy import optimize, stats
from scipy.special import expit, logit

from .._checks import as_float_array, check_choice, check_int, check_positive
from ..plotting import figsize, legend_below

DATASETS = ("single", "overlap", "nonoverlap")
"""Names of the three datasets of Figure 4."""

OFFICIAL_N = 10_000
"""Size of the official datasets (the supplement states 10^5; the official code used 10^4)."""

OFFICIAL_FILES = {"single": "single_gaussian", "overlap": "overlap_gaussian", "nonoverlap": "nonoverlap_gaussian"}

GENERATING = {
    "single": {"weight": 1.0, "mu": (-1.0, -1.0), "sigma": (1.0, 1.0)},
    "overlap": {"weight": 0.85, "mu": (-0.5, 0.5), "sigma": (1.0, 1.0)},
    "nonoverlap": {"weight": 0.85, "mu": (-10.0, 10.0), "sigma": (1.0, 1.0)},
}
"""Generating processes of the official R scripts (weight of component 1, the lower mean; means; sds)."""

DEFAULT_SEED = 689934
"""Default NumPy seed of :func:`simulate`: the official R scripts' ``set.seed(689934)`` (R's stream differs)."""

PRIOR = (5.0, 5.0)
"""Beta prior on ``alpha`` (supplement A.2)."""

MU_PRIOR_SD = 2.0
"""``mu ~ N(0, 2^2)`` in the joint model (official ``gauss_mix.stan``)."""

SIGMA_PRIOR_SD = 2.0
"""``sigma ~ HalfNormal(2)`` in the joint model (Stan ``normal(0, 2)`` with ``<lower=0>``)."""

DATA_CHOICES = ("auto", "official", "regenerated")
SETTINGS = ("fixed", "joint")
_LOG_2PI = float(np.log(2.0 * np.pi))


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
def simulate(name: str, n: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Draw ``n`` points from the official generating process of dataset ``name``.

    The process is that of the official R scripts (``z <- rbinom(N, 1, 0.15) + 1;
    y <- rnorm(N, mu[z], sigma[z])``): component 2 with probability 0.15, else component 1,

    - ``single``: N(-1, 1);
    - ``overlap``: 0.85 N(-0.5, 1) + 0.15 N(0.5, 1);
    - ``nonoverlap``: 0.85 N(-10, 1) + 0.15 N(10, 1).

    Random numbers come from ``np.random.default_rng([seed, k])`` with ``k`` the dataset's index in
    :data:`DATASETS`, so the three datasets use independent streams for the same ``seed``. R's draws cannot
    be regenerated in NumPy: these are new samples from the same distributions.

    Returns:
        ``y`` of shape ``(n,)``.

    Raises:
        ValueError: unknown ``name``, ``n < 1`` or a negative ``seed``.
    """
    check_choice(name, "GMM dataset", DATASETS)
    n = check_int(n, "n")
    seed = check_int(seed, "seed", minimum=0)
    spec = GENERATING[name]
    rng = np.random.default_rng([seed, DATASETS.index(name)])
    second = rng.random(n) < 1.0 - spec["weight"]
    mu, sigma = np.asarray(spec["mu"]), np.asarray(spec["sigma"])
    return rng.normal(mu[second.astype(int)], sigma[second.astype(int)])


def load_data(name: str, n: int = OFFICIAL_N, data: str = "auto", seed: int = DEFAULT_SEED) -> tuple[np.ndarray, str]:
    """Data for dataset ``name``: the official points or a regenerated sample.

    Args:
        name: one of :data:`DATASETS`.
        n: number of points.
        data: ``"official"``: the **first** ``n`` of the 10^4 official points (they are i.i.d. draws, so the
            first ``n`` are a sample of size ``n``; no seed is involved); ``"regenerated"``: :func:`simulate`
            with ``seed``; ``"auto"``: official when ``n <= 10^4``, regenerated otherwise (the supplement's
            N = 10^5 needs regenerated data).
        seed: NumPy seed for regenerated data (ignored for official data).

    Returns:
        ``(y, source)``: ``y`` of shape ``(n,)`` and ``source`` = ``"official"`` or ``"regenerated"``.

    Raises:
        ValueError: unknown ``name`` or ``data``; ``n < 1``; ``n > 10^4`` with ``data="official"``.
    """
    check_choice(name, "GMM dataset", DATASETS)
    check_choice(data, "data", DATA_CHOICES)
    n = check_int(n, "n")
    if data == "official" and n > OFFICIAL_N:
        raise ValueError(f"the official {name} data have {OFFICIAL_N} points, n={n} requested; "
                         "use data='regenerated' (or 'auto') for larger n")
    if data == "official" or (data == "auto" and n <= OFFICIAL_N):
        from ..data import load_official

        return np.asarray(load_official(OFFICIAL_FILES[name])["y"][:n], dtype=np.float64), "official"
    return simulate(name, n, seed), "regenerated"


# --------------------------------------------------------------------------------------------------
# Likelihood
# --------------------------------------------------------------------------------------------------
class GMMParams(NamedTuple):
    """Parameters of the two-component mixture: weight of component 1, then (mean, sd) of each component."""

    alpha: float
    mu1: float
    sigma1: float
    mu2: float
    sigma2: float


def _check_params(params) -> GMMParams:
    vals = as_float_array(params, "params", shape=(5,))
    alpha, mu1, s1, mu2, s2 = (float(v) for v in vals)
    _check_alpha(np.asarray(alpha), "alpha")
    check_positive(s1, "sigma1")
    check_positive(s2, "sigma2")
    return GMMParams(alpha, mu1, s1, mu2, s2)


def _check_alpha(alpha: np.ndarray, name: str) -> None:
    if np.any((alpha < 0) | (alpha > 1)):
        raise ValueError(f"{name} must lie in [0, 1], got values in [{alpha.min()}, {alpha.max()}]")


def _normal_logpdf(y, mu, sigma):
    return -0.5 * ((y - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * _LOG_2PI


def _mix_terms(d: np.ndarray, alpha) -> np.ndarray:
    """``log(alpha e^d + 1 - alpha)`` elementwise, exactly 0 where ``d == 0`` (equal components)."""
    with np.errstate(divide="ignore"):
        val = np.logaddexp(np.log(alpha) + d, np.log1p(-alpha))
    return np.where(d == 0.0, 0.0, val)


def pointwise_log_likelihood(y, params) -> np.ndarray:
    """Log-likelihood of each datapoint, ``log[alpha N(y_i|mu1,s1^2) + (1-alpha) N(y_i|mu2,s2^2)]``.

    Args:
        y: data, shape ``(N,)``.
        params: :class:`GMMParams` or a length-5 sequence ``(alpha, mu1, sigma1, mu2, sigma2)``.

    Returns:
        Array of shape ``(N,)``, nats.

    Raises:
        ValueError: ``y`` not 1-D or non-finite; ``sigma <= 0``; ``alpha`` outside [0, 1].
    """
    y = as_float_array(y, "y", ndim=1)
    p = _check_params(params)
    lp1, lp2 = _normal_logpdf(y, p.mu1, p.sigma1), _normal_logpdf(y, p.mu2, p.sigma2)
    return lp2 + _mix_terms(lp1 - lp2, p.alpha)


def log_likelihood(y, params) -> float:
    """Total log-likelihood of the data (nats); divide by ``len(y)`` for nats per datapoint.

    Raises:
        ValueError: as :func:`pointwise_log_likelihood`.
    """
    return float(pointwise_log_likelihood(y, params).sum())


def log_likelihood_alpha(y, alpha_grid, mu, sigma, chunk: int = 2 ** 22) -> np.ndarray:
    """Mean per-datapoint log-likelihood as a function of ``alpha`` at fixed components (Figure 4a).

    ``l(alpha) = (1/N) sum_i log[alpha N(y_i|mu1,s1^2) + (1-alpha) N(y_i|mu2,s2^2)]``, computed as
    ``lp2_i + log(alpha e^{d_i} + 1 - alpha)`` with ``d_i = lp1_i - lp2_i`` (a two-term logsumexp). When the
    components are equal, ``d_i = 0`` and the curve is **exactly** flat: every value equals the
    one-Gaussian log-likelihood.

    Args:
        y: data, shape ``(N,)``.
        alpha_grid: weights in [0, 1], shape ``(G,)``.
        mu: ``(mu1, mu2)``; sigma: ``(sigma1, sigma2)``, both > 0.
        chunk: largest number of (alpha, datapoint) pairs held in memory at once.

    Returns:
        Array of shape ``(G,)``, nats per datapoint (``-inf`` where a component with zero weight is needed).

    Raises:
        ValueError: wrong shapes, non-finite values, ``sigma <= 0`` or ``alpha`` outside [0, 1].
    """
    y = as_float_array(y, "y", ndim=1)
    grid = as_float_array(alpha_grid, "alpha_grid", ndim=1)
    mu = as_float_array(mu, "mu", shape=(2,))
    sigma = as_float_array(sigma, "sigma", shape=(2,))
    for k in range(2):
        check_positive(sigma[k], f"sigma{k + 1}")
    _check_alpha(grid, "alpha_grid")
    lp1, lp2 = _normal_logpdf(y, mu[0], sigma[0]), _normal_logpdf(y, mu[1], sigma[1])
    d, base = lp1 - lp2, lp2.mean()
    step = max(1, chunk // max(len(y), 1))
    out = np.empty(len(grid))
    for start in range(0, len(grid), step):
        a = grid[start:start + step, None]
        out[start:start + step] = base + _mix_terms(d[None, :], a).mean(axis=1)
    return out


def scores(y, params) -> np.ndarray:
    """Per-datapoint gradient of the log-likelihood w.r.t. ``(alpha, mu1, sigma1, mu2, sigma2)``.

    Returns:
        Array of shape ``(N, 5)``; the column sums are the exact gradient of :func:`log_likelihood`.

    Raises:
        ValueError: as :func:`pointwise_log_likelihood`; also ``alpha`` equal to 0 or 1.
    """
    y = as_float_array(y, "y", ndim=1)
    p = _check_params(params)
    if not 0.0 < p.alpha < 1.0:
        raise ValueError(f"scores need 0 < alpha < 1, got {p.alpha}")
    r = _responsibilities(y, p)
    z1, z2 = (y - p.mu1) / p.sigma1, (y - p.mu2) / p.sigma2
    return np.stack([r / p.alpha - (1 - r) / (1 - p.alpha),
                     r * z1 / p.sigma1, r * (z1 ** 2 - 1) / p.sigma1,
                     (1 - r) * z2 / p.sigma2, (1 - r) * (z2 ** 2 - 1) / p.sigma2], axis=1)


def standard_errors(y, params) -> GMMParams:
    """Asymptotic standard errors of the ML estimate from the outer product of the scores.

    ``se = sqrt(diag(inv(sum_i s_i s_i^T)))`` (the OPG estimate of the inverse Fisher information). Only
    meaningful at an interior, identified maximum (well-separated components); near the one-Gaussian ridge
    the information matrix is singular and the errors blow up.

    Raises:
        ValueError: as :func:`scores`.
    """
    s = scores(y, params)
    cov = np.linalg.pinv(s.T @ s)
    return GMMParams(*np.sqrt(np.clip(np.diag(cov), 0, None)))


def _responsibilities(y, p: GMMParams) -> np.ndarray:
    lp1, lp2 = _normal_logpdf(y, p.mu1, p.sigma1), _normal_logpdf(y, p.mu2, p.sigma2)
    return expit(np.log(p.alpha) - np.log1p(-p.alpha) + lp1 - lp2)


# --------------------------------------------------------------------------------------------------
# Maximum likelihood
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MLResult:
    """A maximum-likelihood fit of the two-component mixture.

    Attributes:
        params: the estimate, ordered so that ``mu1 <= mu2``.
        loglik: total log-likelihood at ``params`` (nats).
        loglik_per_datapoint: ``loglik / n`` (nats per datapoint).
        n: number of datapoints.
        method: ``"em"``, ``"lbfgs"`` or ``"one-gaussian"`` (the degenerate point, see :func:`fit_ml`).
        converged: every accepted restart met its tolerance.
        n_iter: iterations (EM) or function evaluations (L-BFGS) of the best restart.
        degenerate: ``True`` when ``params`` lies on the one-Gaussian ridge ``mu1 = mu2``, ``sigma1 = sigma2``,
            where every ``alpha`` is a maximiser (``alpha`` is then reported as 0.5, the prior mean).
        loglik_two_components: best total log-likelihood found with two distinct components.
        loglik_one_gaussian: total log-likelihood of the one-Gaussian ML fit (the ridge).
        restarts: total log-likelihood reached by every restart (NaN for a rejected spurious one).
        params_two_components: the best two-component optimum found (equal to ``params`` unless the
            one-Gaussian point was selected).
    """

    params: GMMParams
    loglik: float
    loglik_per_datapoint: float
    n: int
    method: str
    converged: bool
    n_iter: int
    degenerate: bool = False
    loglik_two_components: float = float("nan")
    loglik_one_gaussian: float = float("nan")
    restarts: tuple = field(default_factory=tuple)
    params_two_components: GMMParams | None = None

    @property
    def gain(self) -> float:
        """Total log-likelihood gain of two distinct components over one Gaussian (nats)."""
        return self.loglik_two_components - self.loglik_one_gaussian

    @property
    def params_strict(self) -> GMMParams:
        """The optimiser's best point with no selection (what ``fit_ml(select=None)`` returns): the highest
        likelihood found. It differs from ``params`` only when :func:`fit_ml` selected the one-Gaussian point."""
        return self.params_two_components if self.params_two_components is not None else self.params


def _canonical(p) -> GMMParams:
    alpha, mu1, s1, mu2, s2 = (float(v) for v in p)
    if mu1 > mu2:
        alpha, mu1, s1, mu2, s2 = 1.0 - alpha, mu2, s2, mu1, s1
    return GMMParams(alpha, mu1, s1, mu2, s2)


def fit_one_gaussian(y) -> MLResult:
    """The one-Gaussian ML fit seen as a two-component point: ``mu1 = mu2 = mean``, ``sigma1 = sigma2 = sd``.

    Every ``alpha`` gives the same likelihood here (the components are equal), so this is a whole segment
    ``{(alpha, m, s, m, s): alpha in [0, 1]}`` of stationary points of the two-component likelihood; ``alpha``
    is reported as 0.5. ``sd`` is the ML (``ddof=0``) standard deviation.

    Raises:
        ValueError: ``y`` not 1-D, non-finite, or constant.
    """
    y = as_float_array(y, "y", ndim=1)
    m, s = float(y.mean()), float(y.std())
    check_positive(s, "standard deviation of y")
    p = GMMParams(0.5, m, s, m, s)
    ll = log_likelihood(y, p)
    return MLResult(p, ll, ll / len(y), len(y), "one-gaussian", True, 0, degenerate=True,
                    loglik_one_gaussian=ll)


def _initial_points(y: np.ndarray, n_restarts: int, seed: int) -> np.ndarray:
    """Seeded starting points, shape ``(R, 5)``: quartile means first, then random data pairs."""
    rng = np.random.default_rng(seed)
    sd = float(y.std())
    q1, q3 = np.quantile(y, [0.25, 0.75])
    inits = [(0.5, q1, sd, q3, sd)]
    for _ in range(n_restarts - 1):
        a, b = rng.choice(y, size=2, replace=False)
        inits.append((rng.uniform(0.2, 0.8), a, sd * rng.uniform(0.5, 1.0), b, sd * rng.uniform(0.5, 1.0)))
    return np.array(inits, dtype=np.float64)


def _check_fit_inputs(y, n_restarts, seed):
    y = as_float_array(y, "y", ndim=1)
    if len(y) < 5:
        raise ValueError(f"y must hold at least 5 points to fit 5 parameters, got {len(y)}")
    check_positive(float(y.std()), "standard deviation of y")
    return y, check_int(n_restarts, "n_restarts"), check_int(seed, "seed", minimum=0)


def _pick_best(y, finals, lls, iters, conv, min_sigma_frac, method) -> MLResult:
    finals, lls = np.asarray(finals, dtype=float), np.asarray(lls, dtype=float)
    spurious = np.minimum(finals[:, 2], finals[:, 4]) < min_sigma_frac * y.std()
    lls = np.where(spurious | ~np.isfinite(lls), np.nan, lls)
    if np.all(np.isnan(lls)):
        raise RuntimeError(f"every {method} restart collapsed onto a spurious singularity (sigma -> 0)")
    best = int(np.nanargmax(lls))
    p = _canonical(finals[best])
    ll = log_likelihood(y, p)
    return MLResult(p, ll, ll / len(y), len(y), method, bool(np.all(np.asarray(conv)[~np.isnan(lls)])),
                    int(iters[best]), loglik_two_components=ll, restarts=tuple(float(v) for v in lls),
                    params_two_components=p)


def fit_em(y, n_restarts: int = 8, seed: int = 0, max_iter: int = 5000, tol: float = 1e-10,
           min_sigma_frac: float = 1e-3) -> MLResult:
    """Maximum likelihood by EM with seeded restarts (run side by side, vectorised); the best one is returned.

    Each restart iterates the closed-form EM updates until the per-datapoint log-likelihood rises by less
    than ``tol`` nats in one step, or ``max_iter`` steps. EM never decreases the likelihood, but it is
    slow (linear convergence) when the components overlap: compare with :func:`fit_lbfgs`.

    The likelihood is unbounded (a component with ``mu = y_i`` and ``sigma -> 0``); restarts ending with
    ``sigma < min_sigma_frac * sd(y)`` are rejected as spurious.

    Args:
        y: data, shape ``(N,)``, N >= 5.
        n_restarts: number of starting points (the first at the quartiles, the others seeded random pairs
            of datapoints as means).
        seed: NumPy seed of the starting points.

    Returns:
        :class:`MLResult` with ``method="em"``.

    Raises:
        ValueError: bad ``y`` (not 1-D, non-finite, constant, fewer than 5 points) or bad settings.
        RuntimeError: every restart was spurious.
    """
    y, n_restarts, seed = _check_fit_inputs(y, n_restarts, seed)
    max_iter = check_int(max_iter, "max_iter")
    check_positive(tol, "tol")
    th = _initial_points(y, n_restarts, seed)
    a, m1, s1, m2, s2 = (th[:, k:k + 1] for k in range(5))
    prev = np.full((n_restarts, 1), -np.inf)
    done = np.zeros((n_restarts, 1), dtype=bool)
    iters = np.zeros(n_restarts, dtype=int)
    n = len(y)
    for it in range(1, max_iter + 1):
        lp1 = np.log(a) + _normal_logpdf(y, m1, s1)
        lp2 = np.log1p(-a) + _normal_logpdf(y, m2, s2)
        lse = np.logaddexp(lp1, lp2)
        ll = lse.mean(axis=1, keepdims=True)
        done |= (ll - prev) < tol
        if done.all():
            break
        prev = ll
        iters[~done[:, 0]] = it
        r = np.exp(lp1 - lse)
        n1 = np.clip(r.sum(axis=1, keepdims=True), 1e-12, n - 1e-12)
        n2 = n - n1
        new_m1, new_m2 = (r @ y)[:, None] / n1, ((1 - r) @ y)[:, None] / n2
        new_s1 = np.sqrt((r * (y - new_m1) ** 2).sum(axis=1, keepdims=True) / n1)
        new_s2 = np.sqrt(((1 - r) * (y - new_m2) ** 2).sum(axis=1, keepdims=True) / n2)
        keep = done  # frozen restarts keep their values
        a = np.where(keep, a, n1 / n)
        m1, m2 = np.where(keep, m1, new_m1), np.where(keep, m2, new_m2)
        s1 = np.where(keep, s1, np.maximum(new_s1, 1e-300))
        s2 = np.where(keep, s2, np.maximum(new_s2, 1e-300))
    finals = np.concatenate([a, m1, s1, m2, s2], axis=1)
    lls = [np.logaddexp(np.log(f[0]) + _normal_logpdf(y, f[1], f[2]),
                        np.log1p(-f[0]) + _normal_logpdf(y, f[3], f[4])).sum() for f in finals]
    return _pick_best(y, finals, lls, iters, done[:, 0], min_sigma_frac, "em")


def _negloglik_and_grad(theta: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood and its exact gradient in ``(logit alpha, mu1, log s1, mu2, log s2)``."""
    la, m1, ls1, m2, ls2 = theta
    alpha, s1, s2 = expit(la), np.exp(ls1), np.exp(ls2)
    z1, z2 = (y - m1) / s1, (y - m2) / s2
    lp1 = -np.logaddexp(0.0, -la) - 0.5 * z1 ** 2 - ls1  # log(alpha), stable for large |la|
    lp2 = -np.logaddexp(0.0, la) - 0.5 * z2 ** 2 - ls2   # log(1 - alpha)
    lse = np.logaddexp(lp1, lp2)
    r = np.exp(lp1 - lse)
    q = 1.0 - r
    grad = np.array([np.mean(r - alpha), np.mean(r * z1) / s1, np.mean(r * (z1 ** 2 - 1)),
                     np.mean(q * z2) / s2, np.mean(q * (z2 ** 2 - 1))])
    return -(lse.mean() - 0.5 * _LOG_2PI), -grad


def fit_lbfgs(y, n_restarts: int = 8, seed: int = 0, max_iter: int = 2000, gtol: float = 1e-10,
              min_sigma_frac: float = 1e-3) -> MLResult:
    """Maximum likelihood by L-BFGS-B (SciPy) with exact gradients, from the same seeded starts as :func:`fit_em`.

    The optimiser works on the unconstrained ``(logit alpha, mu1, log sigma1, mu2, log sigma2)`` and minimises
    the mean negative log-likelihood (nats per datapoint) with its analytic gradient; it is deterministic for
    a given ``y`` and ``seed``. Restarts with ``sigma < min_sigma_frac * sd(y)`` are rejected as spurious.

    Returns:
        :class:`MLResult` with ``method="lbfgs"``; ``n_iter`` counts function evaluations.

    Raises:
        ValueError: bad ``y`` or settings. RuntimeError: every restart was spurious.
    """
    y, n_restarts, seed = _check_fit_inputs(y, n_restarts, seed)
    max_iter = check_int(max_iter, "max_iter")
    finals, lls, iters, conv = [], [], [], []
    for th in _initial_points(y, n_restarts, seed):
        x0 = np.array([logit(th[0]), th[1], np.log(th[2]), th[3], np.log(th[4])])
        res = optimize.minimize(_negloglik_and_grad, x0, args=(y,), jac=True, method="L-BFGS-B",
                                options={"maxiter": max_iter, "gtol": gtol, "ftol": 1e-15, "maxcor": 20})
        la, m1, ls1, m2, ls2 = res.x
        finals.append((float(np.clip(expit(la), 1e-300, 1 - 1e-16)), m1, np.exp(ls1), m2, np.exp(ls2)))
        lls.append(-res.fun * len(y))
        iters.append(res.nfev)
        conv.append(bool(res.success) or np.max(np.abs(res.jac)) < 1e-6)
    return _pick_best(y, finals, lls, np.array(iters), conv, min_sigma_frac, "lbfgs")


def fit_ml(y, method: str = "lbfgs", n_restarts: int = 8, seed: int = 0, select: str | None = "bic",
           **kwargs) -> MLResult:
    """Maximum-likelihood parameters of the two-component mixture by a deterministic optimiser.

    **The degenerate case.** On one-Gaussian data the two-component likelihood has (in the population limit)
    a continuum of maximisers: ``mu1 = mu2``, ``sigma1 = sigma2`` at the data's mean and sd with **any**
    ``alpha``, and also ``alpha in {0, 1}`` with the unused component anywhere. On a finite sample the
    optimiser usually finds two slightly different components that fit sampling noise, a fraction of a nat
    better than one Gaussian in total (0.86 nats on the official 10^4 single-Gaussian points, i.e. 9e-5 nats
    per datapoint), and at such a point ``alpha`` is pinned down by the noise (see :func:`fixed_posteriors_at_ml`). With ``select="bic"`` (the
    default) the second component is kept only if it pays for its three extra parameters,
    ``2 * gain > 3 * log(N)`` (BIC); otherwise the one-Gaussian point of the ridge is returned
    (``degenerate=True``, ``alpha`` reported as 0.5), the simplest maximiser the data support. With
    ``select=None`` the best two-component optimum is returned as found.

    Args:
        y: data, shape ``(N,)``.
        method: ``"lbfgs"`` (:func:`fit_lbfgs`) or ``"em"`` (:func:`fit_em`).
        n_restarts, seed: seeded restarts of the optimiser.
        select: ``"bic"`` or ``None`` (see above).
        **kwargs: passed to the optimiser.

    Returns:
        :class:`MLResult`; ``loglik_two_components`` and ``loglik_one_gaussian`` give both candidates.

    Raises:
        ValueError: unknown ``method`` or ``select``; bad ``y``.
    """
    check_choice(method, "method", ("lbfgs", "em"))
    check_choice(select, "select", ("bic", None))
    fit = (fit_lbfgs if method == "lbfgs" else fit_em)(y, n_restarts=n_restarts, seed=seed, **kwargs)
    one = fit_one_gaussian(y)
    two_ll = max(fit.loglik, one.loglik)
    common = dict(loglik_two_components=two_ll, loglik_one_gaussian=one.loglik, restarts=fit.restarts,
                  params_two_components=fit.params)
    if select == "bic" and 2.0 * (fit.loglik - one.loglik) <= 3.0 * np.log(fit.n):
        return MLResult(one.params, one.loglik, one.loglik_per_datapoint, one.n, f"{method}+one-gaussian",
                        fit.converged, fit.n_iter, degenerate=True, **common)
    return MLResult(fit.params, fit.loglik, fit.loglik_per_datapoint, fit.n, fit.method, fit.converged,
                    fit.n_iter, degenerate=False, **common)


# --------------------------------------------------------------------------------------------------
# NumPyro models and sampling
# --------------------------------------------------------------------------------------------------
def model_fixed(y, mu, sigma, prior=PRIOR):
    """NumPyro model (a): ``alpha ~ Beta(prior)``, components fixed at ``mu = (mu1, mu2)``, ``sigma``.

    The likelihood enters as ``sum_i log(alpha e^{d_i} + 1 - alpha)`` with ``d_i = lp1_i - lp2_i``; the dropped
    term ``sum_i lp2_i`` does not depend on ``alpha``. Terms with ``d_i = 0`` contribute exactly 0, so equal
    components give a posterior equal to the prior up to sampling error only.
    """
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    y = jnp.asarray(y)
    alpha = numpyro.sample("alpha", dist.Beta(prior[0], prior[1]))
    lp1 = dist.Normal(mu[0], sigma[0]).log_prob(y)
    lp2 = dist.Normal(mu[1], sigma[1]).log_prob(y)
    d = lp1 - lp2
    terms = jnp.logaddexp(jnp.log(alpha) + d, jnp.log1p(-alpha))
    numpyro.factor("loglik", jnp.sum(jnp.where(d == 0, 0.0, terms)))


def model_joint(y, prior=PRIOR, mu_sd: float = MU_PRIOR_SD, sigma_sd: float = SIGMA_PRIOR_SD):
    """NumPyro model (b), the official ``gauss_mix.stan``: ``mu_k ~ N(0, 2^2)``, ``sigma_k ~ HalfNormal(2)``,
    ``alpha ~ Beta(5, 5)``, ``y_i ~ alpha N(mu1, sigma1^2) + (1 - alpha) N(mu2, sigma2^2)``."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    y = jnp.asarray(y)
    mu = numpyro.sample("mu", dist.Normal(0.0, mu_sd).expand([2]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(sigma_sd).expand([2]).to_event(1))
    alpha = numpyro.sample("alpha", dist.Beta(prior[0], prior[1]))
    lp = dist.Normal(mu, sigma).log_prob(y[:, None])
    numpyro.factor("loglik", jnp.sum(jnp.logaddexp(jnp.log(alpha) + lp[:, 0], jnp.log1p(-alpha) + lp[:, 1])))


def relabel(samples: dict) -> tuple[dict, np.ndarray]:
    """Undo label switching: reorder each draw so that ``mu1 < mu2``, mapping ``alpha -> 1 - alpha`` when swapped.

    The joint model is invariant under swapping the components together with ``alpha <-> 1 - alpha`` (the
    priors on ``mu`` and ``sigma`` are i.i.d. and Beta(5, 5) is symmetric), so its posterior has two mirror
    modes and chains settle in either. The relabelled draws are draws from the posterior of the ordered model
    (``mu1 < mu2``), under which ``alpha`` is the weight of the lower-mean component and its prior is still
    Beta(5, 5); they can be pooled across chains and compared with the prior.

    Args:
        samples: ``{"alpha": (...), "mu": (..., 2), "sigma": (..., 2)}``.

    Returns:
        ``(relabelled samples, swapped)`` where ``swapped`` is a boolean array of ``alpha``'s shape.
    """
    alpha = np.asarray(samples["alpha"])
    mu, sigma = np.asarray(samples["mu"]), np.asarray(samples["sigma"])
    swap = mu[..., 0] > mu[..., 1]
    out = dict(samples)
    out["alpha"] = np.where(swap, 1.0 - alpha, alpha)
    out["mu"] = np.where(swap[..., None], mu[..., ::-1], mu)
    out["sigma"] = np.where(swap[..., None], sigma[..., ::-1], sigma)
    return out, swap


@dataclass
class AlphaPosterior:
    """NUTS draws of ``alpha`` in one setting.

    Attributes:
        setting: ``"fixed"`` (components at ``params``) or ``"joint"``.
        alpha: draws, shape ``(num_chains, num_samples)``; relabelled (``mu1 < mu2``) in the joint setting.
        nuts: the :class:`lidvae_mini.exact.hmc.NutsResult` (raw, not relabelled).
        swapped: fraction of joint draws relabelled (0 for ``fixed``).
        params: fixed components used (``fixed`` only).
    """

    setting: str
    alpha: np.ndarray
    nuts: object
    swapped: float = 0.0
    params: GMMParams | None = None

    def summary(self, prior=PRIOR) -> dict:
        """``alpha_mean``, ``alpha_sd``, ``ks``, ``w1`` (see :func:`distance_to_beta`), bulk ESS and R-hat of
        the (relabelled) ``alpha``, the KS threshold implied by that ESS, divergences and per-chain means."""
        from .hmc import import_arviz

        az = import_arviz()
        ess, rhat = az.ess, az.rhat

        a = self.alpha
        dist_ = distance_to_beta(a.ravel(), prior)
        e = float(ess(a, method="bulk")) if a.shape[1] > 3 else float("nan")
        r = float(rhat(a)) if a.shape[0] > 1 and a.shape[1] > 3 else float("nan")
        return {"alpha_mean": float(a.mean()), "alpha_sd": float(a.std()), "ks": dist_["ks"], "w1": dist_["w1"],
                "ess_bulk": e, "r_hat": r, "ks_threshold": ks_threshold(e) if np.isfinite(e) else float("nan"),
                "divergences": int(self.nuts.num_divergences), "swapped": float(self.swapped),
                "chain_means": [float(v) for v in a.mean(axis=1)]}


def sample_alpha(y, setting: str, params=None, num_warmup: int = 500, num_samples: int = 500,
                 num_chains: int = 4, seed: int = 0, prior=PRIOR, **nuts_kwargs) -> AlphaPosterior:
    """Sample the posterior of ``alpha`` with NUTS in one of the two settings of Figure 4b.

    Args:
        y: data, shape ``(N,)``.
        setting: ``"fixed"``: model (a), ``alpha`` only with the components fixed at ``params`` (e.g. the ML
            estimate of :func:`fit_ml`); ``"joint"``: model (b), ``mu``, ``sigma``, ``alpha`` together (``params``
            ignored); the draws are relabelled by :func:`relabel`.
        params: :class:`GMMParams` (``alpha`` ignored), required for ``"fixed"``.
        num_warmup, num_samples, num_chains, seed: NUTS schedule (per chain) and PRNG seed.
        prior: Beta parameters of the prior on ``alpha``.
        **nuts_kwargs: passed to :func:`lidvae_mini.exact.hmc.run_nuts` (``chain_method``, ``target_accept_prob``).

    Returns:
        :class:`AlphaPosterior`.

    Raises:
        ValueError: unknown ``setting``; ``params`` missing or invalid for ``"fixed"``; bad ``y`` or schedule.
    """
    from .hmc import run_nuts

    check_choice(setting, "setting", SETTINGS)
    y = as_float_array(y, "y", ndim=1)
    prior = tuple(check_positive(v, "prior parameter") for v in as_float_array(prior, "prior", shape=(2,)))
    if setting == "fixed":
        if params is None:
            raise ValueError("setting='fixed' needs params (the fixed component means and sds)")
        p = _check_params(params)
        res = run_nuts(model_fixed, y, (p.mu1, p.mu2), (p.sigma1, p.sigma2), prior, num_warmup=num_warmup,
                       num_samples=num_samples, num_chains=num_chains, seed=seed, **nuts_kwargs)
        return AlphaPosterior("fixed", res.samples["alpha"], res, 0.0, p)
    res = run_nuts(model_joint, y, prior, num_warmup=num_warmup, num_samples=num_samples,
                   num_chains=num_chains, seed=seed, **nuts_kwargs)
    relabelled, swap = relabel(res.samples)
    return AlphaPosterior("joint", relabelled["alpha"], res, float(swap.mean()), None)


# --------------------------------------------------------------------------------------------------
# Distance to the prior
# --------------------------------------------------------------------------------------------------
def distance_to_beta(draws, prior=PRIOR, n_quantiles: int = 100_000) -> dict:
    """KS statistic and Wasserstein-1 distance between ``alpha`` draws and Beta(``prior``).

    - ``ks``: ``scipy.stats.kstest(draws, Beta.cdf).statistic``, the largest CDF gap;
    - ``w1``: ``scipy.stats.wasserstein_distance`` between the draws and ``n_quantiles`` Beta quantiles at
      the mid-points ``(j + 1/2) / n_quantiles`` (deterministic; discretisation error below ``1 / n_quantiles``).

    Both are 0 for a perfect match; with ``m`` independent draws from the prior, ``ks ~ 0.87 / sqrt(m)`` and
    ``w1 ~ 0.1 / sqrt(m)``. MCMC draws are correlated: judge ``ks`` with the ESS (:func:`ks_threshold`), not
    with ``kstest``'s p-value.

    Args:
        draws: samples of ``alpha``, shape ``(M,)`` (flatten chains first), values in [0, 1].

    Returns:
        ``{"ks": float, "w1": float}``.

    Raises:
        ValueError: ``draws`` not 1-D, empty, non-finite or outside [0, 1]; non-positive prior parameters.
    """
    draws = as_float_array(draws, "draws", ndim=1)
    if draws.size == 0:
        raise ValueError("draws must not be empty")
    _check_alpha(draws, "draws")
    a, b = (check_positive(v, "prior parameter") for v in prior)
    n_quantiles = check_int(n_quantiles, "n_quantiles")
    beta = stats.beta(a, b)
    ks = float(stats.kstest(draws, beta.cdf).statistic)
    q = beta.ppf((np.arange(n_quantiles) + 0.5) / n_quantiles)
    return {"ks": ks, "w1": float(stats.wasserstein_distance(draws, q))}


def ks_threshold(ess: float, level: float = 0.01) -> float:
    """KS statistic that ``ess`` independent prior draws exceed with probability ``level`` (asymptotic).

    ``kstwobign.isf(level) / sqrt(ess)``, e.g. ``1.63 / sqrt(ess)`` at ``level = 0.01``: a posterior whose
    ``ks`` is below it cannot be told from the prior with that many effective draws.
    """
    ess = check_positive(ess, "ess")
    return float(stats.kstwobign.isf(level) / np.sqrt(ess))


# --------------------------------------------------------------------------------------------------
# Exact posterior of alpha at fixed components
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExactAlphaPosterior:
    """The posterior ``p(alpha | y; theta)`` at fixed components, by quadrature (no sampling).

    Attributes:
        params: the fixed point (its ``alpha`` is the ML weight there, reported only; ``theta`` is the rest).
        grid: quadrature nodes in [0, 1], shape ``(G,)``, sorted.
        density: posterior density at ``grid``, shape ``(G,)``; integrates to 1 by the trapezoid rule.
        cdf: posterior CDF at ``grid``, shape ``(G,)``.
        prior_cdf: Beta CDF at ``grid``, shape ``(G,)``.
        loglik_spread: ``max - min`` of the total log-likelihood ``sum_i log p(y_i | alpha; theta)`` over the
            uniform nodes in (0, 1) (nats); exactly 0 when the components are equal (Definition 2 for ``alpha``).
        prior: Beta parameters of the prior.
        mode: the posterior mode (maximised to 1e-12).
        log_marginal: the marginal likelihood ``log p(y; theta) = log int Beta(alpha) prod_i p(y_i | alpha; theta)
            d alpha`` (total nats), the quantity whose maximiser is the paper's ``theta-hat`` (§2.2); equal to the
            one-Gaussian log-likelihood when the components are equal.
    """

    params: GMMParams
    grid: np.ndarray
    density: np.ndarray
    cdf: np.ndarray
    prior_cdf: np.ndarray
    loglik_spread: float
    prior: tuple
    mode: float
    log_marginal: float

    def summary(self) -> dict:
        """``alpha_mean``, ``alpha_sd``, ``mode``, ``ks`` (largest CDF gap to the prior), ``w1`` (area between
        the CDFs, the Wasserstein-1 distance) and ``loglik_spread_nats``; integrals by the trapezoid rule."""
        g, d = self.grid, self.density
        mean = float(np.trapezoid(g * d, g))
        sd = float(np.sqrt(max(np.trapezoid((g - mean) ** 2 * d, g), 0.0)))
        gap = np.abs(self.cdf - self.prior_cdf)
        return {"alpha_mean": mean, "alpha_sd": sd, "mode": self.mode, "ks": float(gap.max()),
                "w1": float(np.trapezoid(gap, g)), "loglik_spread_nats": self.loglik_spread,
                "log_marginal_nats": self.log_marginal}


def fixed_alpha_posterior(y, params, prior=PRIOR, n_grid: int = 501, n_window: int = 501) -> ExactAlphaPosterior:
    """Exact posterior of ``alpha`` with the components fixed at ``params`` (setting (a) of Figure 4b).

    ``log p(alpha | y; theta) = log Beta(alpha | prior) + sum_i log[alpha f1(y_i) + (1 - alpha) f2(y_i)] + const``
    is concave in ``alpha`` (for prior parameters >= 1), so the posterior is unimodal. It is evaluated on the
    union of ``n_grid`` uniform nodes on [0, 1] and ``n_window`` nodes on the mode +- 20 Laplace standard
    deviations (so a spike of width ``1/sqrt(N)`` is resolved), and normalised by the trapezoid rule. With
    equal components the likelihood term is exactly 0 and the result is the prior, up to quadrature error
    (below 1e-5 in ``ks`` at the defaults). Theorem 1 at this ``theta``: the posterior equals the prior if and
    only if ``loglik_spread`` is 0.

    Args:
        y: data, shape ``(N,)``.
        params: :class:`GMMParams` or ``(alpha, mu1, sigma1, mu2, sigma2)``; ``alpha`` is not used.
        prior: Beta parameters, both >= 1 (a bounded prior density).
        n_grid, n_window: numbers of uniform and window nodes (each >= 101).

    Returns:
        :class:`ExactAlphaPosterior`.

    Raises:
        ValueError: bad ``y`` or ``params``; a prior parameter below 1; too few nodes.
    """
    y = as_float_array(y, "y", ndim=1)
    p = _check_params(params)
    a, b = (float(v) for v in as_float_array(prior, "prior", shape=(2,)))
    if a < 1 or b < 1:
        raise ValueError(f"prior parameters must be >= 1 (a bounded, log-concave density), got ({a}, {b})")
    n_grid, n_window = check_int(n_grid, "n_grid", minimum=101), check_int(n_window, "n_window", minimum=101)
    beta = stats.beta(a, b)
    lp1, lp2 = _normal_logpdf(y, p.mu1, p.sigma1), _normal_logpdf(y, p.mu2, p.sigma2)
    equal = bool(np.all(lp1 == lp2))

    def total_loglik(alpha: np.ndarray) -> np.ndarray:   # sum_i log p(y_i | alpha) - sum_i lp2_i, shape (G,)
        if equal:
            return np.zeros(len(alpha))
        return len(y) * (log_likelihood_alpha(y, alpha, (p.mu1, p.mu2), (p.sigma1, p.sigma2)) - lp2.mean())

    def log_prior(alpha: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return beta.logpdf(alpha)

    uniform = np.linspace(0.0, 1.0, n_grid)
    ll_u = total_loglik(uniform)
    k = int(np.argmax(log_prior(uniform) + ll_u))
    lo, hi = uniform[max(k - 1, 0)], uniform[min(k + 1, n_grid - 1)]
    res = optimize.minimize_scalar(lambda t: -float((log_prior(np.array([t])) + total_loglik(np.array([t])))[0]),
                                   bounds=(lo, hi), method="bounded", options={"xatol": 1e-12})
    mode = float(np.clip(res.x, 1e-12, 1 - 1e-12))
    # curvature of the log posterior at the mode: prior terms plus -sum_i (f1 - f2)^2 / f^2
    curv = -(a - 1) / mode ** 2 - (b - 1) / (1 - mode) ** 2
    if not equal:
        lmix = np.logaddexp(np.log(mode) + lp1, np.log1p(-mode) + lp2)
        curv -= float(np.sum((np.exp(lp1 - lmix) - np.exp(lp2 - lmix)) ** 2))
    width = 20.0 / np.sqrt(max(-curv, 1e-12))
    window = np.setdiff1d(np.linspace(max(mode - width, 0.0), min(mode + width, 1.0), n_window), uniform)
    grid = np.concatenate([uniform, window])
    order = np.argsort(grid, kind="stable")
    grid, ll = grid[order], np.concatenate([ll_u, total_loglik(window)])[order]
    lp = log_prior(grid) + ll
    dens = np.exp(lp - lp.max())
    z = float(np.trapezoid(dens, grid))
    dens /= z
    log_marginal = float(lp.max() + np.log(z) + lp2.sum())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    spread = float(np.ptp(ll_u[1:-1]))
    return ExactAlphaPosterior(p, grid, dens, np.minimum(cdf, 1.0), beta.cdf(grid), spread, (a, b), mode,
                                log_marginal)


def fixed_posteriors_at_ml(y, fit: MLResult, prior=PRIOR, **kwargs) -> dict[str, ExactAlphaPosterior]:
    """:func:`fixed_alpha_posterior` at the two candidate ML points of :func:`fit_ml`.

    Returns:
        ``{"selected": at fit.params, "strict ML": at fit.params_strict}``; when the two points coincide (BIC
        kept two components) the same object is returned twice.

    Raises:
        ValueError: as :func:`fixed_alpha_posterior`.
    """
    selected = fixed_alpha_posterior(y, fit.params, prior, **kwargs)
    same = np.array_equal(np.asarray(fit.params), np.asarray(fit.params_strict))
    return {"selected": selected,
            "strict ML": selected if same else fixed_alpha_posterior(y, fit.params_strict, prior, **kwargs)}


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------
def _panel_row(n: int, height: float, axes=None):
    """``(figure, axes)``: the given axes, or a new row of ``n`` panels filling the text column, ``height`` tall."""
    if axes is None:
        import matplotlib.pyplot as plt

        axes = plt.subplots(1, n, figsize=figsize(n, row_height=height), squeeze=False)[1][0]
    return axes[0].figure, axes


def plot_loglik_alpha(curves: dict, references: dict | None = None, axes=None):
    """Figure 4a: mean per-datapoint log-likelihood against ``alpha``, one panel per dataset.

    Args:
        curves: ``{dataset: (alpha_grid, loglik)}`` at the ML components (solid).
        references: optional ``{dataset: [(alpha_grid, loglik, label), ...]}`` drawn dashed (e.g. at the
            generating components).
        axes: optional sequence of matplotlib axes, one per dataset.

    Returns:
        The matplotlib figure.
    """
    names = list(curves)
    fig, axes = _panel_row(len(names), 3.3, axes)
    references = references or {}
    for ax, name in zip(axes, names):
        grid, ll = curves[name]
        ax.plot(grid, ll, color="C0", lw=2, label="at the ML components")
        shown = [np.asarray(ll)]
        for k, (rg, rl, label) in enumerate(references.get(name, [])):
            ax.plot(rg, rl, color=f"C{k + 1}", ls="--", lw=1.5, label=label)
            shown.append(np.asarray(rl))
        finite = np.concatenate([v[np.isfinite(v)] for v in shown])
        lo, hi = np.quantile(finite, 0.02), finite.max()  # the 2% lowest values (alpha -> 0 or 1) may plunge
        pad = max(0.05 * (hi - lo), 1e-3)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(name)
        ax.set_xlabel(r"$\alpha$")
    axes[0].set_ylabel("log-likelihood\n(nats / datapoint)")
    labels = {}                                              # one legend below the row: the panels stay wide
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(lab, h)
    fig.legend(list(labels.values()), list(labels), loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_alpha_histograms(draws: dict, prior=PRIOR, title: str | None = None, axes=None, bins: int = 30):
    """Figure 4b: histogram (density) of ``alpha`` draws against the Beta prior density, one panel per dataset.

    Args:
        draws: ``{dataset: alpha draws}`` (any shape; flattened).
        prior: Beta parameters of the prior.
        title: optional figure title (e.g. the setting).
        axes: optional sequence of matplotlib axes.

    Returns:
        The matplotlib figure.
    """
    names = list(draws)
    own = axes is None                  # a figure of its own gets its legend; given axes, the caller lays out
    fig, axes = _panel_row(len(names), 3.1, axes)
    grid = np.linspace(0, 1, 401)
    pdf = stats.beta(*prior).pdf(grid)
    for ax, name in zip(axes, names):
        a = np.asarray(draws[name]).ravel()
        ax.hist(a, bins=np.linspace(0, 1, bins + 1) if a.std() > 0.05 else bins, density=True, color="C0",
                alpha=0.6, label="posterior draws")
        ax.plot(grid, pdf, color="k", lw=1.5, label=f"prior Beta({prior[0]:g}, {prior[1]:g})")
        ax.set_xlim(0, 1)
        ax.set_title(name)
        ax.set_xlabel(r"$\alpha$")
    axes[0].set_ylabel("density")
    if title:
        fig.suptitle(title)
    if own:
        legend_below(fig, axes[:1], ncol=2)
    return fig


def plot_alpha_cdfs(posteriors: dict, title: str | None = None, axes=None):
    """Exact posterior CDFs of ``alpha`` against the prior CDF, one panel per dataset.

    The KS statistic is the largest vertical gap between a posterior CDF and the prior's, the Wasserstein-1
    distance the area between them; a spike is a step.

    Args:
        posteriors: ``{dataset: {label: ExactAlphaPosterior}}`` (e.g. from :func:`fixed_posteriors_at_ml`).
        title: optional figure title.
        axes: optional sequence of matplotlib axes.

    Returns:
        The matplotlib figure.
    """
    names = list(posteriors)
    own = axes is None                  # a figure of its own gets its legend; given axes, the caller lays out
    fig, axes = _panel_row(len(names), 3.3, axes)
    for ax, name in zip(axes, names):
        first = next(iter(posteriors[name].values()))
        ax.plot(first.grid, first.prior_cdf, color="k", lw=1.2, ls=":", zorder=5,   # on top: visible under a match
                label=f"prior Beta({first.prior[0]:g}, {first.prior[1]:g})")
        ks = []
        for k, (label, post) in enumerate(posteriors[name].items()):
            ks.append(f"{ {'selected': 'sel.', 'strict ML': 'ML'}.get(label, label)} {post.summary()['ks']:.2f}")
            ax.plot(post.grid, post.cdf, color=f"C{k}", lw=2.5 - k, ls=("-", "--", ":")[k % 3], label=label)
        ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel=r"$\alpha$")
        ax.set_title(f"{name}\nKS: " + ", ".join(ks), fontsize=9)
    axes[0].set_ylabel("CDF")
    if title:
        fig.suptitle(title)
    if own:
        legend_below(fig, axes)
    return fig
