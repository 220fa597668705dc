"""Probabilistic PCA (PPCA): data, maximum likelihood, exact posterior, NumPyro models, figures.

Source: Wang, Blei & Cunningham (NeurIPS 2021), Sec. 4.2 and Figure 2 (noise sweep), supplement A.1
and Figure 3 (one- vs two-dimensional data); Tipping & Bishop (1999) for the closed-form maximum
likelihood estimate. The official code is ``nonid_ppca_gmm/`` of ``yixinwang/lidvae-public`` (R + Stan).

Model (paper, supplement A.1), for datapoints ``n = 1..N``, latent dimension ``M``, data dimension ``D``::

    z_n ~ N(0, I_M),        x_n | z_n ~ N(W z_n, sigma^2 I_D),        so  x_n ~ N(0, W W^T + sigma^2 I_D).

**Zero mean.** The official model has no mean term and its data are generated with mean zero, so
every function here assumes ``E[x] = 0`` and never centres the data (the sample covariance is
``S = X^T X / N``). The official datasets have column means below 0.08 in absolute value (under 4%
of each column's sd); centring changes the small eigenvalues of ``S`` by about 1% (``oned``'s lambda_2) and
less for the others (chapter 02 prints them). Centre ``x``
yourself if you need the model with a free mean.

**Units.** Log densities and KL divergences are in nats. ``log_likelihood`` is summed over
datapoints; ``kl_to_prior`` and ``likelihood_surface`` are per datapoint.

**Two inference settings** (kept apart throughout):

1. *W fixed* (Theorem 1's setting): ``W`` and ``sigma`` are parameters fixed at a value (here the
   maximum likelihood estimate for the assumed ``sigma``); the posterior of ``z_n`` is Gaussian and
   known exactly (:func:`exact_posterior`); NUTS on :func:`z_model` must reproduce it.
2. *W sampled* (the official Stan models ``ppca_knownsig.stan`` and ``ppca_mix.stan``):
   :func:`knownsig_model` and :func:`mix_model`. ``(W, z)`` is identified only up to an orthogonal
   ``R`` (``W R``, ``R^T z_n`` has the same density, the priors being isotropic), so chains wander
   in, or settle on, different rotations/signs: pooled multi-chain summaries of ``z`` do not measure
   concentration. Use per-chain statistics, or align each draw to a reference with
   :func:`align_rotation` first.

**Cost.** Every NUTS run compiles its sampler first (10-20 s on a laptop CPU, whatever the model
size), so :func:`fixed_w_sweep` samples all (dataset, sigma) blocks in one run and :func:`joint_sweep`
batches the datasets of each sigma; ``sigma`` and ``W`` are model arguments, never closure constants.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import as_float_array, check_choice, check_int, check_positive
from ..plotting import TEXT_WIDTH, figsize, legend_below

DATASETS = {"oned": ("oned_ppca", 1), "twod": ("twod_ppca", 2)}
"""``{name: (official dataset, true latent dimension)}``; both are fitted with ``M = 2``."""
SOURCES = ("official", "regenerated")
NOISE_SD = 0.1
"""Noise sd of the data-generating process in the official R scripts (both datasets)."""
M_FIT = 2
"""Latent dimension of the fitted model in the paper (supplement A.1, Sec. 4.2)."""
OFFICIAL_SOURCE = "yixinwang/lidvae-public@8a0a6a5 nonid_ppca_gmm/res/out_files"


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def simulate(n: int = 500, d: int = 5, m_true: int = 1, sigma: float = NOISE_SD, seed: int = 0,
             w_scale: float = 2.0) -> dict:
    """Draw a PPCA dataset by the generating process of the official R scripts.

    ``w ~ N(0, w_scale^2)`` entrywise, ``z ~ N(0, 1)``, ``x = (w z)^T + N(0, sigma^2)`` noise, with
    ``numpy.random.default_rng(seed)`` drawing, in this order, ``w`` (column by column, as R fills a
    matrix, so the same seed gives the one- and two-dimensional data the same first column, as in
    the official scripts), then ``z`` (datapoint by datapoint), then the noise. R's own random
    numbers cannot be reproduced in NumPy: the numbers differ from the official data, the process
    does not.

    Args:
        n: number of datapoints N. d: data dimension D. m_true: latent dimension used to generate.
        sigma: noise sd (> 0). seed: NumPy seed. w_scale: prior sd of the true loadings (> 0).

    Returns:
        A dict like :func:`lidvae_mini.data.load_official`: ``x`` (N, D), ``w`` (D, m_true),
        ``z`` (m_true, N), ``sigma`` (the noise sd actually used; the official files store an unused
        ``sigma = 1`` instead), ``N``, ``D``, ``M`` (= 2, the fitted latent dimension), ``seed``.

    Raises:
        ValueError: non-positive or non-integer sizes, non-positive ``sigma`` or ``w_scale``.
    """
    n, d, m_true = check_int(n, "n"), check_int(d, "d"), check_int(m_true, "m_true")
    sigma, w_scale = check_positive(sigma, "sigma"), check_positive(w_scale, "w_scale")
    seed = check_int(seed, "seed", minimum=0)
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, w_scale, size=(m_true, d)).T          # column-major fill, as R's matrix()
    z = rng.normal(0.0, 1.0, size=(n, m_true)).T              # (m_true, N), as in the official files
    x = (w @ z).T + rng.normal(0.0, sigma, size=(n, d))
    return {"x": x, "w": w, "z": z, "sigma": sigma, "N": n, "D": d, "M": M_FIT, "seed": seed}


def load_data(name: str, source: str = "official", seed: int = 0) -> dict:
    """The paper's one- or two-dimensional PPCA data (N = 500, D = 5, noise sd 0.1).

    Args:
        name: ``"oned"`` (generated with one latent dimension) or ``"twod"`` (two).
        source: ``"official"``: the exact data of the official code (shipped with the package, see
            :mod:`lidvae_mini.data.official`); ``"regenerated"``: :func:`simulate` with ``seed``.
        seed: NumPy seed for ``"regenerated"`` (ignored for ``"official"``).

    Returns:
        ``{"x": (500, 5) array, "w_true": (5, m_true), "z_true": (m_true, 500), "noise_sd": 0.1,
        "m_fit": 2, "name", "source", "label"}``; ``label`` says in words which data were used.

    Raises:
        ValueError: unknown ``name`` or ``source``.
    """
    check_choice(name, "PPCA dataset", sorted(DATASETS))
    check_choice(source, "data source", SOURCES)
    official, m_true = DATASETS[name]
    if source == "official":
        from ..data import load_official

        raw = load_official(official)
        label = f"official {official} ({OFFICIAL_SOURCE}/{official}.data.R), N=500, D=5, noise sd 0.1"
    else:
        raw = simulate(500, 5, m_true, NOISE_SD, seed=seed)
        label = f"regenerated {name}: numpy default_rng({seed}), N=500, D=5, M_true={m_true}, noise sd 0.1"
    return {"x": np.asarray(raw["x"], dtype=float), "w_true": np.asarray(raw["w"], dtype=float),
            "z_true": np.asarray(raw["z"], dtype=float), "noise_sd": NOISE_SD, "m_fit": M_FIT,
            "name": name, "source": source, "label": label}


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------
def _check_x(x) -> np.ndarray:
    x = as_float_array(x, "x", ndim=2)
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must have at least one row and one column, got shape {x.shape}")
    return x


def _check_w(w, d: int, x_shape: tuple | None = None) -> np.ndarray:
    w = as_float_array(w, "w", ndim=2)
    if x_shape is not None and w.shape[0] != d and w.shape[0] == x_shape[0]:
        raise ValueError(f"x must have shape (N, D) = (*, {w.shape[0]}) with D = {w.shape[0]} the rows of w "
                         f"(D, M) = {w.shape}, got {tuple(x_shape)}; it looks transposed: pass x.T (datapoints "
                         "are rows)")
    if w.shape[0] != d:
        raise ValueError(f"w must have shape (D, M) with D = {d} (the data dimension), got {w.shape}")
    if not 1 <= w.shape[1] <= d:
        raise ValueError(f"w must have 1 <= M <= D = {d} columns, got {w.shape[1]}")
    return w


# ----------------------------------------------------------------------------------------------
# Maximum likelihood, marginal likelihood, exact posterior
# ----------------------------------------------------------------------------------------------
class PPCAFit(NamedTuple):
    """Maximum likelihood PPCA: ``w`` (D, M), noise sd ``sigma``, eigenvalues of ``X^T X / N`` (D,), descending."""

    w: np.ndarray
    sigma: float
    eigenvalues: np.ndarray


def ml_estimate(x, m: int, sigma: float | None = None) -> PPCAFit:
    """Closed-form maximum likelihood PPCA (Tipping & Bishop 1999, Eqs. 7-8), zero-mean model.

    With ``S = X^T X / N = U diag(lambda) U^T`` (no centring, see the module docstring):
    ``W = U_M (Lambda_M - sigma^2 I)^{1/2} R`` with ``R = I`` (the principal-axis solution; any
    orthogonal ``R`` gives the same likelihood). ``sigma^2`` is the mean of the ``D - M`` discarded
    eigenvalues when ``sigma`` is None; when ``sigma`` is given (known noise, as in the paper's
    Sec. 4.2), ``Lambda_M - sigma^2`` is clamped at 0, so directions with ``lambda_k <= sigma^2``
    get a zero column of ``W``: the maximiser of the likelihood in ``W`` for that ``sigma``.
    Each eigenvector's sign is fixed so that its largest-magnitude entry is positive.

    Args:
        x: data (N, D), finite, N >= D (datapoints are rows). m: latent dimension, 1 <= m <= D (m < D when
            ``sigma`` is None). sigma: known noise sd (> 0), or None to estimate it.

    Returns:
        :class:`PPCAFit` ``(w (D, m), sigma, eigenvalues (D,))``.

    Raises:
        ValueError: bad shape (fewer datapoints than dimensions, e.g. x given as (D, N)), non-finite data, bad
            ``m``, ``sigma <= 0``.
    """
    x = _check_x(x)
    n, d = x.shape
    if n < d:
        raise ValueError(f"x must have shape (N, D) with at least as many datapoints as dimensions (N >= D), got "
                         f"{x.shape}: is it transposed? Datapoints are rows (pass x.T)")
    m = check_int(m, "m")
    if m > d:
        raise ValueError(f"m must be <= D = {d}, got {m}")
    if sigma is not None:
        sigma = check_positive(sigma, "sigma")
    elif m == d:
        raise ValueError("sigma cannot be estimated when m == D (no discarded eigenvalues); pass sigma")
    lam, u = np.linalg.eigh(x.T @ x / n)
    lam, u = lam[::-1], u[:, ::-1]
    u = u * np.where(u[np.argmax(np.abs(u), axis=0), np.arange(d)] < 0, -1.0, 1.0)
    if sigma is None:
        sigma = float(np.sqrt(np.mean(lam[m:])))
    w = u[:, :m] * np.sqrt(np.clip(lam[:m] - sigma ** 2, 0.0, None))
    return PPCAFit(w=w, sigma=float(sigma), eigenvalues=lam)


def log_likelihood(x, w, sigma: float) -> float:
    """Exact marginal log-likelihood ``sum_n log N(x_n | 0, W W^T + sigma^2 I)`` in nats (summed over datapoints).

    Computed with ``scipy.stats.multivariate_normal``.

    Args:
        x: data (N, D). w: loadings (D, M). sigma: noise sd (> 0).

    Raises:
        ValueError: shape mismatch, non-finite values, ``sigma <= 0``.
    """
    from scipy.stats import multivariate_normal

    x = _check_x(x)
    w = _check_w(w, x.shape[1], x.shape)
    sigma = check_positive(sigma, "sigma")
    cov = w @ w.T + sigma ** 2 * np.eye(x.shape[1])
    return float(np.sum(multivariate_normal(mean=np.zeros(x.shape[1]), cov=cov).logpdf(x)))


def exact_posterior(x, w, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior ``p(z_n | x_n; W, sigma) = N(mean_n, cov)`` of the PPCA latents (W and sigma fixed).

    ``cov = sigma^2 (sigma^2 I + W^T W)^{-1}`` (the same for every datapoint) and
    ``mean_n = cov W^T x_n / sigma^2`` (Tipping & Bishop 1999, Eq. 6).

    Args:
        x: data (N, D). w: loadings (D, M). sigma: noise sd (> 0).

    Returns:
        ``(mean (N, M), cov (M, M))``.

    Raises:
        ValueError: shape mismatch, non-finite values, ``sigma <= 0``.
    """
    x = _check_x(x)
    w = _check_w(w, x.shape[1], x.shape)
    sigma = check_positive(sigma, "sigma")
    m = w.shape[1]
    cov = sigma ** 2 * np.linalg.inv(sigma ** 2 * np.eye(m) + w.T @ w)
    cov = 0.5 * (cov + cov.T)
    mean = x @ w @ cov / sigma ** 2
    return mean, cov


def exact_posterior_sd(x, sigma: float, m: int = M_FIT) -> np.ndarray:
    """Posterior sd of each latent (M,) with ``W`` at the ML estimate for known ``sigma`` (principal axes).

    Equals ``sigma / sqrt(lambda_k)`` where ``lambda_k > sigma^2`` and 1 (the prior) otherwise.

    Raises:
        ValueError: as :func:`ml_estimate`.
    """
    fit = ml_estimate(x, m, sigma=sigma)
    _, cov = exact_posterior(x, fit.w, fit.sigma)
    return np.sqrt(np.diag(cov))


def kl_to_prior(mean, cov) -> np.ndarray:
    """KL divergence of each latent's marginal posterior to its prior N(0, 1), per datapoint and dimension.

    ``KL_nk = (cov_kk + mean_nk^2 - 1 - log cov_kk) / 2`` nats: the KL of the k-th marginal
    ``N(mean_nk, cov_kk)`` to ``N(0, 1)``. It is 0 exactly when that marginal equals the prior
    (posterior collapse of ``z_k``, Theorem 1). With ``W`` at the principal-axis ML estimate the
    posterior covariance is diagonal, so these terms sum to the full KL.

    Args:
        mean: posterior means (N, M). cov: posterior covariance (M, M), positive definite diagonal.

    Returns:
        (N, M) array in nats; average over axis 0 for the per-dimension KL of a dataset.

    Raises:
        ValueError: shape mismatch, non-finite values, non-positive variances.
    """
    mean = as_float_array(mean, "mean", ndim=2)
    cov = as_float_array(cov, "cov", shape=(mean.shape[1], mean.shape[1]))
    var = np.diag(cov)
    if np.any(var <= 0):
        raise ValueError("cov must have positive diagonal entries")
    return 0.5 * (var + mean ** 2 - 1.0 - np.log(var))


def likelihood_surface(x_points, w, sigma: float, grid) -> np.ndarray:
    """``log p(x_n | z; W, sigma)`` on a square grid of two-dimensional ``z``, for each given datapoint.

    ``out[n, a, b] = log N(x_n | W (grid[a], grid[b]), sigma^2 I)`` in nats (first index z1, second
    z2, "ij" indexing). Evaluated on the actual datapoints: the official ``utils.R::ppca_ll``
    instead scored an all-zero vector ``x <- rep(0, N)`` (500 zeros recycled against the
    5-vector ``W z``), i.e. 100 copies of ``log N(0 | W z, sigma^2 I)``, the same for every dataset;
    pass ``np.zeros((100, D))`` and sum over axis 0 to reproduce it.

    Args:
        x_points: datapoints (P, D). w: loadings (D, 2). sigma: noise sd (> 0).
        grid: 1-D increasing array of G coordinates used for both z1 and z2.

    Returns:
        (P, G, G) array.

    Raises:
        ValueError: shape mismatch (W must have two columns), non-finite values, ``sigma <= 0``.
    """
    x = _check_x(x_points)
    w = _check_w(w, x.shape[1], x.shape)
    if w.shape[1] != 2:
        raise ValueError(f"likelihood_surface needs a two-dimensional latent (w of shape (D, 2)), got {w.shape}")
    sigma = check_positive(sigma, "sigma")
    grid = as_float_array(grid, "grid", ndim=1)
    z1, z2 = np.meshgrid(grid, grid, indexing="ij")
    mu = z1[..., None] * w[:, 0] + z2[..., None] * w[:, 1]                     # (G, G, D)
    sq = np.sum((x[:, None, None, :] - mu[None]) ** 2, axis=-1)                # (P, G, G)
    d = x.shape[1]
    return -0.5 * sq / sigma ** 2 - d * np.log(sigma) - 0.5 * d * np.log(2 * np.pi)


# ----------------------------------------------------------------------------------------------
# NumPyro models
# ----------------------------------------------------------------------------------------------
def z_model(x, w, sigma):
    """NumPyro model of the latents only, ``W`` and ``sigma`` fixed (Theorem 1's setting).

    ``z[s, p] ~ N(0, I_M)``, ``x[p] ~ N(w[s] z[s, p], sigma[s]^2 I_D)`` for ``S`` settings (e.g. one
    per assumed noise level) and ``P`` datapoints: the blocks are independent, so one NUTS run
    samples every setting's posterior at once (one compilation for a whole sweep; ``sigma`` and
    ``w`` are arguments, not constants).

    Args:
        x: datapoints (P, D) shared by all settings, or (S, P, D).
        w: loadings (S, D, M). sigma: noise sds (S,).

    Sample site: ``z`` of shape (S, P, M).
    """
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    w, sigma = jnp.asarray(w), jnp.asarray(sigma)
    x = jnp.broadcast_to(jnp.asarray(x), (w.shape[0],) + jnp.shape(x)[-2:])
    s, p, m = w.shape[0], x.shape[1], w.shape[2]
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([s, p, m]).to_event(3))
    mu = jnp.einsum("sdm,spm->spd", w, z)
    numpyro.sample("x", dist.Normal(mu, sigma[:, None, None]).to_event(3), obs=x)


def knownsig_model(x, sigma, m: int = M_FIT, w_prior_sd: float = 2.0):
    """NumPyro port of the official ``ppca_knownsig.stan`` (used for the paper's Figure 2 noise sweep).

    ``z ~ N(0, 1)`` (N, M), ``W ~ N(0, w_prior_sd^2)`` entrywise (Stan's ``normal(0, 2)`` is an sd),
    ``x_n ~ N(W z_n, sigma^2 I)`` with ``sigma`` known (data in Stan, an argument here).

    Args:
        x: data (N, D), or (B, N, D) for B independent copies of the model (e.g. two datasets)
            sampled in one NUTS run (one compilation).
        sigma: known noise sd, a scalar or (B,). m: latent dimension. w_prior_sd: prior sd of W.

    Sample sites: ``w`` (D, M) and ``z`` (N, M), with a leading B axis for batched ``x``.
    """
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    x = jnp.asarray(x)
    batch = x.shape[:-2]
    n, d = x.shape[-2:]
    scale = jnp.reshape(jnp.asarray(sigma), jnp.shape(sigma) + (1, 1))
    w = numpyro.sample("w", dist.Normal(0.0, w_prior_sd).expand([*batch, d, m]).to_event(len(batch) + 2))
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([*batch, n, m]).to_event(len(batch) + 2))
    mu = z @ jnp.swapaxes(w, -1, -2)
    numpyro.sample("x", dist.Normal(mu, scale).to_event(len(batch) + 2), obs=x)


def mix_model(x, m: int = M_FIT):
    """NumPyro port of the official ``ppca_mix.stan`` (used for the supplement's Figure 3).

    ``z ~ N(0, 1)`` (N, M); ``alpha_k ~ InvGamma(1, 1)`` (M,); ``W[d, k] ~ N(0, (sigma alpha_k)^2)``;
    ``sigma ~ LogNormal(0, 1)``; ``x_n ~ N(W z_n, sigma^2 I)``: an ARD prior, ``sigma`` sampled.

    Sample sites: ``sigma``, ``alpha`` (M,), ``w`` (D, M), ``z`` (N, M).
    """
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    x = jnp.asarray(x)
    n, d = x.shape
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    alpha = numpyro.sample("alpha", dist.InverseGamma(1.0, 1.0).expand([m]).to_event(1))
    w = numpyro.sample("w", dist.Normal(0.0, sigma * alpha).expand([d, m]).to_event(2))
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([n, m]).to_event(2))
    numpyro.sample("x", dist.Normal(z @ w.T, sigma).to_event(2), obs=x)


# ----------------------------------------------------------------------------------------------
# Running NUTS and summarising
# ----------------------------------------------------------------------------------------------
def summary_array(result, site: str, column: str) -> np.ndarray:
    """One column of a :class:`lidvae_mini.exact.hmc.NutsResult` summary (``"r_hat"``, ``"ess_bulk"``, ...) in the site's shape.

    Raises:
        KeyError: unknown ``site`` or ``column``.
    """
    shape = result.samples[site].shape[2:]
    rows = [i for i in result.summary.index if i == site or i.startswith(site + "[")]
    return result.summary.loc[rows, column].to_numpy(dtype=float).reshape(shape)


def sample_z_posterior(x_points, ws, sigmas, num_warmup: int = 300, num_samples: int = 300,
                       num_chains: int = 4, seed: int = 0):
    """NUTS on :func:`z_model`: the latents of some datapoints under S fixed ``(W, sigma)`` settings, in one run.

    Args:
        x_points: datapoints (P, D) shared by all settings, or (S, P, D) (e.g. two datasets).
        ws: loadings (S, D, M) (or (D, M) for S = 1). sigmas: noise sds (S,) (or a scalar for S = 1).
        num_warmup, num_samples, num_chains, seed: NUTS schedule and PRNG seed (see
            :func:`lidvae_mini.exact.hmc.run_nuts`).

    Returns:
        :class:`lidvae_mini.exact.hmc.NutsResult`; ``samples["z"]`` has shape (chains, draws, S, P, M).

    Raises:
        ValueError: shape mismatch, non-finite values, a ``sigma <= 0``.
    """
    from .hmc import run_nuts

    x = as_float_array(x_points, "x_points")
    ws = as_float_array(ws, "ws")
    ws = ws[None] if ws.ndim == 2 else ws
    if ws.ndim != 3:
        raise ValueError(f"ws must have shape (S, D, M), got {ws.shape}")
    if x.ndim not in (2, 3) or x.shape[-1] != ws.shape[1] or (x.ndim == 3 and x.shape[0] != ws.shape[0]):
        raise ValueError(f"x_points must have shape (P, D) or (S, P, D) with S, D = {ws.shape[:2]}, got {x.shape}")
    sigmas = np.atleast_1d(as_float_array(sigmas, "sigmas"))
    if sigmas.shape != (ws.shape[0],):
        raise ValueError(f"sigmas must have shape ({ws.shape[0]},) to match ws, got {sigmas.shape}")
    for s in sigmas:
        check_positive(s, "sigma")
    return run_nuts(z_model, x, ws, sigmas, num_warmup=num_warmup, num_samples=num_samples,
                    num_chains=num_chains, seed=seed)


def align_rotation(w_draws, z_draws, w_ref) -> tuple[np.ndarray, np.ndarray]:
    """Remove the rotation/sign non-identifiability of ``(W, z)`` draws by orthogonal Procrustes.

    For each draw, ``R = argmin_{R orthogonal} ||W R - W_ref||_F`` (``R = U V^T`` from the SVD
    ``W^T W_ref = U S V^T``) and the draw is replaced by ``(W R, z R)``, which leaves every
    ``W z_n`` (hence the likelihood and, the priors being isotropic, the density) unchanged.

    Args:
        w_draws: (..., D, M). z_draws: (..., N, M) with the same leading shape.
        w_ref: (D, M), or (..., D, M) broadcastable against ``w_draws``.

    Returns:
        ``(w_aligned, z_aligned)`` with the input shapes.

    Raises:
        ValueError: shape mismatch or non-finite values.
    """
    w_draws = as_float_array(w_draws, "w_draws")
    z_draws = as_float_array(z_draws, "z_draws")
    w_ref = as_float_array(w_ref, "w_ref")
    if w_draws.ndim < 2 or w_ref.ndim < 2 or w_draws.shape[-2:] != w_ref.shape[-2:] \
            or z_draws.shape[:-2] != w_draws.shape[:-2] or z_draws.shape[-1] != w_ref.shape[-1]:
        raise ValueError(f"incompatible shapes: w_draws {w_draws.shape}, z_draws {z_draws.shape}, w_ref {w_ref.shape}")
    u, _, vt = np.linalg.svd(np.swapaxes(w_draws, -1, -2) @ w_ref)
    r = u @ vt
    return w_draws @ r, z_draws @ r


def sample_joint_posterior(xs, sigma: float, datapoints, num_warmup: int = 300, num_samples: int = 300,
                           num_chains: int = 4, seed: int = 0, w_prior_sd: float = 2.0,
                           m: int = M_FIT) -> dict:
    """NUTS on :func:`knownsig_model` (``W`` sampled, ``sigma`` known), with per-chain summaries of chosen latents.

    Several datasets of the same shape are sampled in one run (independent blocks of one target:
    one compilation). The draws of ``z`` for ``datapoints`` are reported raw and aligned
    (:func:`align_rotation` to the ML estimate of each dataset for this ``sigma``). Raw R-hat is
    expected to be large when chains settle on different rotations or signs; aligned R-hat measures
    agreement modulo that symmetry; ``W W^T`` is rotation-invariant.

    Args:
        xs: data (N, D) or (B, N, D). sigma: known noise sd (> 0), the same for every block.
        datapoints: indices into the N rows. num_warmup, num_samples, num_chains, seed: NUTS schedule
            and PRNG seed. w_prior_sd: prior sd of the entries of ``W`` (2 in the official model).
        m: latent dimension.

    Returns:
        dict of arrays with a leading B axis (dropped for 2-D ``xs``): ``z_raw``, ``z_aligned``
        (B, chains, draws, P, M); ``sd_raw_per_chain``, ``sd_aligned_per_chain`` (B, chains, P, M);
        ``sd_aligned`` (B, P, M) over pooled aligned draws; ``rhat_raw``, ``rhat_aligned``,
        ``ess_aligned`` (B, P, M); ``max_rhat_ww`` (B,) (largest R-hat of the entries of ``W W^T``);
        plus ``num_divergences`` (all blocks) and ``result`` (the NutsResult).

    Raises:
        ValueError: bad data, ``sigma <= 0``, datapoint indices out of range.
    """
    from .hmc import import_arviz, run_nuts

    az = import_arviz()

    xs = as_float_array(xs, "xs")
    single = xs.ndim == 2
    xs = xs[None] if single else xs
    if xs.ndim != 3:
        raise ValueError(f"xs must have shape (N, D) or (B, N, D), got {xs.shape}")
    sigma = check_positive(sigma, "sigma")
    idx = np.asarray(datapoints, dtype=int).reshape(-1)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= xs.shape[1]:
        raise ValueError(f"datapoints must be indices in [0, {xs.shape[1]}), got {datapoints!r}")
    res = run_nuts(knownsig_model, xs, sigma, m=m, w_prior_sd=w_prior_sd, num_warmup=num_warmup,
                   num_samples=num_samples, num_chains=num_chains, seed=seed)
    w_draws = np.moveaxis(res.samples["w"].astype(float), 2, 0)        # (B, chains, draws, D, M)
    z_draws = np.moveaxis(res.samples["z"].astype(float), 2, 0)[:, :, :, idx]
    w_ref = np.stack([ml_estimate(x, m, sigma=sigma).w for x in xs])    # (B, D, M)
    _, z_al = align_rotation(w_draws, z_draws, w_ref[:, None, None])

    def diag(arr, column):  # ArviZ diagnostics of an array (chains, draws, ...) in its own shape
        tab = az.summary(az.from_dict(posterior={"q": arr}), kind="diagnostics", round_to="none")
        return tab[column].to_numpy(dtype=float).reshape(arr.shape[2:])

    out = {"z_raw": z_draws, "z_aligned": z_al,
           "sd_raw_per_chain": z_draws.std(axis=2, ddof=1), "sd_aligned_per_chain": z_al.std(axis=2, ddof=1),
           "sd_aligned": z_al.reshape(z_al.shape[:1] + (-1,) + z_al.shape[3:]).std(axis=1, ddof=1),
           "rhat_raw": np.stack([diag(zb, "r_hat") for zb in z_draws]),
           "rhat_aligned": np.stack([diag(zb, "r_hat") for zb in z_al]),
           "ess_aligned": np.stack([diag(zb, "ess_bulk") for zb in z_al]),
           "max_rhat_ww": np.array([np.nanmax(diag(np.einsum("ctdm,ctem->ctde", wb, wb), "r_hat"))
                                    for wb in w_draws])}
    if single:
        out = {k: v[0] for k, v in out.items()}
    out.update(num_divergences=res.num_divergences, result=res)
    return out


# ----------------------------------------------------------------------------------------------
# Noise sweeps (the chapter's experiments)
# ----------------------------------------------------------------------------------------------
def _sigma_key(sigma: float) -> str:
    return str(float(sigma))


def _check_sweep(data: dict, sigmas, datapoints):
    if not data:
        raise ValueError("data must map at least one dataset name to an (N, D) array")
    xs = {name: _check_x(x) for name, x in data.items()}
    if len({x.shape for x in xs.values()}) != 1:
        raise ValueError(f"all datasets must have the same shape, got {[x.shape for x in xs.values()]}")
    sigmas = [check_positive(s, "sigma") for s in np.atleast_1d(sigmas)]
    if not sigmas:
        raise ValueError("sigmas must not be empty")
    idx = np.asarray(datapoints, dtype=int).reshape(-1)
    n = next(iter(xs.values())).shape[0]
    if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"datapoints must be indices in [0, {n}), got {datapoints!r}")
    return xs, sigmas, idx


def fixed_w_sweep(data: dict, sigmas, datapoints, num_warmup: int = 300, num_samples: int = 300,
                  num_chains: int = 4, seed: int = 0, m: int = M_FIT) -> dict:
    """Theorem 1's setting over a noise sweep: W at the ML estimate for each assumed ``sigma``, z by NUTS and exactly.

    Every (dataset, sigma) pair is one block of a single :func:`sample_z_posterior` run.

    Args:
        data: ``{name: x (N, D)}`` (same shape for all). sigmas: assumed noise sds.
        datapoints: row indices whose latents are sampled. NUTS schedule and seed as :func:`lidvae_mini.exact.hmc.run_nuts`.

    Returns:
        ``{"table": {name: {str(sigma): row}}, "draws": {name: (S, chains, draws, P, M)}, "result": NutsResult}``.
        Each row holds, per latent (lists of length M): ``nuts_sd`` (pooled over chains, mean over the
        datapoints), ``exact_sd``; ``kl`` (exact KL to the prior, mean over all N datapoints, nats);
        ``kl_points_exact`` and ``kl_points_nuts`` (mean over ``datapoints``; NUTS via a Gaussian fit to
        the draws); and ``r_hat_max``, ``ess_bulk_min`` over the block's scalars.

    Raises:
        ValueError: datasets of different shapes, a ``sigma <= 0``, indices out of range.
    """
    xs, sigmas, idx = _check_sweep(data, sigmas, datapoints)
    settings = [(name, s) for name in xs for s in sigmas]
    fits = [ml_estimate(xs[name], m, sigma=s) for name, s in settings]
    res = sample_z_posterior(np.stack([xs[name][idx] for name, _ in settings]), np.stack([f.w for f in fits]),
                             np.array(sigmas * len(xs)), num_warmup=num_warmup, num_samples=num_samples,
                             num_chains=num_chains, seed=seed)
    z = res.samples["z"].astype(float)                                         # (chains, draws, S, P, M)
    rhat, ess = summary_array(res, "z", "r_hat"), summary_array(res, "z", "ess_bulk")
    table, draws = {name: {} for name in xs}, {}
    for i, ((name, s), fit) in enumerate(zip(settings, fits)):
        mean, cov = exact_posterior(xs[name], fit.w, s)
        zi = z[:, :, i].reshape((-1,) + z.shape[3:])                          # pooled (chains*draws, P, M)
        mu_n, sd_n = zi.mean(axis=0), zi.std(axis=0, ddof=1)
        table[name][_sigma_key(s)] = {
            "nuts_sd": sd_n.mean(axis=0), "exact_sd": np.sqrt(np.diag(cov)),
            "kl": kl_to_prior(mean, cov).mean(axis=0),
            "kl_points_exact": kl_to_prior(mean[idx], cov).mean(axis=0),
            "kl_points_nuts": (0.5 * (sd_n ** 2 + mu_n ** 2 - 1.0 - np.log(sd_n ** 2))).mean(axis=0),
            "r_hat_max": float(rhat[i].max()), "ess_bulk_min": float(ess[i].min())}
    for j, name in enumerate(xs):
        draws[name] = np.moveaxis(z[:, :, j * len(sigmas):(j + 1) * len(sigmas)], 2, 0)
    return {"table": table, "draws": draws, "result": res}


def joint_sweep(data: dict, sigmas, datapoints, num_warmup: int = 300, num_samples: int = 300,
                num_chains: int = 4, seed: int = 0, m: int = M_FIT, w_prior_sd: float = 2.0) -> dict:
    """The official Stan setting over a noise sweep: ``W`` sampled with ``z`` (:func:`knownsig_model`), sigma known.

    One NUTS run per ``sigma`` (all datasets batched in it), summarised per chain and after
    rotation alignment (:func:`sample_joint_posterior`).

    Returns:
        ``{"table": {name: {str(sigma): row}}, "runs": {str(sigma): {name: output of sample_joint_posterior}}}``.
        Each row (lists of length M, means over ``datapoints``): ``sd_raw_per_chain`` (chains, M),
        ``sd_aligned_per_chain`` (chains, M), ``sd_aligned``, ``exact_sd`` (W fixed at the ML estimate, for
        comparison); scalars ``r_hat_raw_max``, ``r_hat_aligned_max``, ``ess_aligned_min``,
        ``r_hat_ww_max`` (rotation-invariant ``W W^T``) and ``divergences`` (of the whole run).

    Raises:
        ValueError: datasets of different shapes, a ``sigma <= 0``, indices out of range.
    """
    xs, sigmas, idx = _check_sweep(data, sigmas, datapoints)
    names = list(xs)
    table, runs = {name: {} for name in names}, {}
    for j, s in enumerate(sigmas):
        out = sample_joint_posterior(np.stack([xs[name] for name in names]), s, idx, num_warmup=num_warmup,
                                     num_samples=num_samples, num_chains=num_chains, seed=seed + j,
                                     w_prior_sd=w_prior_sd, m=m)
        runs[_sigma_key(s)] = {name: {k: (v[b] if isinstance(v, np.ndarray) else v) for k, v in out.items()
                                      if k != "result"} for b, name in enumerate(names)}
        for b, name in enumerate(names):
            table[name][_sigma_key(s)] = {
                "sd_raw_per_chain": out["sd_raw_per_chain"][b].mean(axis=1),
                "sd_aligned_per_chain": out["sd_aligned_per_chain"][b].mean(axis=1),
                "sd_aligned": out["sd_aligned"][b].mean(axis=0),
                "exact_sd": exact_posterior_sd(xs[name], s, m),
                "r_hat_raw_max": float(out["rhat_raw"][b].max()),
                "r_hat_aligned_max": float(out["rhat_aligned"][b].max()),
                "ess_aligned_min": float(out["ess_aligned"][b].min()),
                "r_hat_ww_max": float(out["max_rhat_ww"][b]), "divergences": out["num_divergences"]}
    return {"table": table, "runs": runs}


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def plot_likelihood_surfaces(surfaces, grid, titles, floor: float = -30.0, ncols: int | None = None):
    """Filled contours of log-likelihood surfaces over ``(z1, z2)``, each relative to its own maximum.

    All panels share one colour scale from ``floor`` to 0 nats (values below ``floor`` are clipped),
    so a flat surface (a nearly non-identifiable latent) shows as one colour.

    Args:
        surfaces: sequence of (G, G) arrays in "ij" indexing (as :func:`likelihood_surface`).
        grid: the (G,) grid. titles: one title per panel. floor: lowest level shown (nats, < 0).
        ncols: panels per row (default: all in one row).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    surfaces = [np.asarray(s, dtype=float) for s in surfaces]
    ncols = ncols or len(surfaces)
    nrows = int(np.ceil(len(surfaces) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize(ncols, nrows, row_height=min(TEXT_WIDTH / ncols, 3.0)),
                             squeeze=False,                             constrained_layout=True)
    levels = np.linspace(floor, 0.0, 16)
    for ax, surf, title in zip(axes.flat, surfaces, titles):
        cs = ax.contourf(grid, grid, np.clip(surf - surf.max(), floor, 0.0).T, levels=levels, cmap="viridis")
        ax.set(title=title, xlabel="$z_1$", ylabel="$z_2$", aspect="equal")
    for ax in list(axes.flat)[len(surfaces):]:
        ax.axis("off")
    fig.colorbar(cs, ax=axes, shrink=0.85, label="log-lik. minus max (nats)")
    return fig


def plot_z_histograms(draws, exact_means, exact_sds, sigmas, dim_labels=("$z_1$", "$z_2$"), row_labels=None,
                      bins: int = 40):
    """Histograms of NUTS draws of one datapoint's latents, the exact Gaussian posterior and the prior N(0, 1).

    Args:
        draws: (R, S, T, M) draws for R rows (e.g. datasets), S noise levels, T draws, M latents.
        exact_means, exact_sds: (R, S, M) exact posterior moments.
        sigmas: the S noise levels (panel titles). dim_labels: names of the M latents.
        row_labels: R row names (prefixes of the y labels).

    Returns:
        The matplotlib figure: rows = (row, latent), columns = noise levels.
    """
    import matplotlib.pyplot as plt

    draws = np.asarray(draws, dtype=float)
    r_n, s_n, _, m_n = draws.shape
    row_labels = row_labels or [""] * r_n
    fig, axes = plt.subplots(r_n * m_n, s_n, figsize=figsize(s_n, r_n * m_n, row_height=1.5), squeeze=False,
                             constrained_layout=True)
    t = np.linspace(-3.5, 3.5, 400)
    prior = np.exp(-0.5 * t ** 2) / np.sqrt(2 * np.pi)
    for r in range(r_n):
        for k in range(m_n):
            for s in range(s_n):
                ax = axes[r * m_n + k, s]
                mu, sd = exact_means[r][s][k], exact_sds[r][s][k]
                ax.hist(draws[r, s, :, k], bins=bins, range=(-3.5, 3.5), density=True, color="C0", alpha=0.6,
                        label="NUTS")
                ax.plot(t, np.exp(-0.5 * ((t - mu) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)), "C3", lw=1.2,
                        label="exact")
                ax.plot(t, prior, "k--", lw=1, label="prior")
                ax.set_yticks([])
                if r == 0 and k == 0:
                    ax.set_title(f"$\\sigma$ = {sigmas[s]:g}")
                if s == 0:
                    ax.set_ylabel(f"{row_labels[r]} {dim_labels[k]}".strip())
    legend_below(fig, axes[0, -1])
    return fig


def plot_sd_vs_sigma(sigmas, curves, sigma_fine=None, exact_fn=None):
    """Posterior sd of each latent against the noise sd, NUTS (markers) against exact (lines).

    Args:
        sigmas: the (S,) noise levels that were sampled.
        curves: ``{label: {"nuts": (S, M), "exact": (S, M)}}``; optional ``"sqrt_lambda"`` (M,) marks
            the noise sds ``sqrt(lambda_k)`` at which each latent collapses.
        sigma_fine: optional dense grid for the exact curves, drawn with ``exact_fn(label, sigma)`` -> (M,).

    Returns:
        The matplotlib figure (one panel per label, log-log axes, prior sd 1 dashed).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=figsize(len(curves), row_height=3.3), squeeze=False,
                             constrained_layout=True, sharey=True)
    for ax, (label, c) in zip(axes.flat, curves.items()):
        nuts, exact = np.asarray(c["nuts"]), np.asarray(c["exact"])
        for k in range(exact.shape[1]):
            if sigma_fine is not None and exact_fn is not None:
                ax.plot(sigma_fine, [exact_fn(label, s)[k] for s in sigma_fine], f"C{k}-", lw=1,
                        label=f"exact $z_{k + 1}$")
            else:
                ax.plot(sigmas, exact[:, k], f"C{k}-", lw=1, label=f"exact $z_{k + 1}$")
            ax.plot(sigmas, nuts[:, k], f"C{k}o", ms=5, mfc="none", label=f"NUTS $z_{k + 1}$")
            if "sqrt_lambda" in c:
                ax.axvline(c["sqrt_lambda"][k], color=f"C{k}", ls=":", lw=1)
        ax.axhline(1.0, color="k", ls="--", lw=1, label="prior sd")
        ax.set(xscale="log", yscale="log", xlabel="assumed noise sd $\\sigma$", title=label)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("posterior sd of $z_k$")
    return fig


def plot_chain_histograms(z_raw, z_aligned, exact_mean, exact_sd, title: str = "", bins: int = 30):
    """Per-chain histograms of one datapoint's latents, raw and rotation-aligned, against the exact posterior (W fixed).

    Args:
        z_raw, z_aligned: (chains, draws, M) draws of one datapoint. exact_mean, exact_sd: (M,).
        title: figure title.

    Returns:
        The matplotlib figure: rows raw / aligned, columns latents; one colour per chain.
    """
    import matplotlib.pyplot as plt

    z_raw, z_aligned = np.asarray(z_raw, dtype=float), np.asarray(z_aligned, dtype=float)
    m_n = z_raw.shape[-1]
    fig, axes = plt.subplots(2, m_n, figsize=figsize(m_n, 2, row_height=2.1), squeeze=False, constrained_layout=True)
    lo = min(z_raw.min(), z_aligned.min(), -3.0)
    hi = max(z_raw.max(), z_aligned.max(), 3.0)
    t = np.linspace(lo, hi, 400)
    for row, (label, zz) in enumerate([("raw", z_raw), ("aligned", z_aligned)]):
        for k in range(m_n):
            ax = axes[row, k]
            for c in range(zz.shape[0]):
                ax.hist(zz[c, :, k], bins=bins, range=(lo, hi), density=True, histtype="step", color=f"C{c}",
                        label=f"chain {c + 1}")
            ax.plot(t, np.exp(-0.5 * ((t - exact_mean[k]) / exact_sd[k]) ** 2) / (exact_sd[k] * np.sqrt(2 * np.pi)),
                    "k-", lw=1, label="exact (W fixed)")
            ax.plot(t, np.exp(-0.5 * t ** 2) / np.sqrt(2 * np.pi), "k--", lw=1, label="prior")
            ax.set(title=f"{label} $z_{k + 1}$", yticks=[])
    if title:
        fig.suptitle(title)
    legend_below(fig, axes[0, -1])
    return fig
