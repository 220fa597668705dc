"""Collapse and model-quality metrics: AU, KL, MI, IWAE log-likelihood, cluster accuracy.

Every quantity is in nats and per datapoint unless stated otherwise. Definitions follow the paper
(Wang, Blei & Cunningham 2021, Sec. 4.1) and the estimators of He et al. (ICLR 2019, public code
``jxhe/vae-lagging-encoder``: ``calc_au``, ``calc_mi``, ``nll_iw``), which the official LIDVAE text code
reuses; where we deviate (MI pooled over the whole evaluation set by default, a per-datapoint IWAE for the
mixture model, Hungarian next to majority-vote accuracy) the docstring says so.

All functions accept torch tensors (any device) or array-likes. The KL functions are differentiable and
keep a floating input's dtype (usable inside a training loss); the other metrics detach their inputs and
compute in float64.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------------- helpers
def _tensor(x, name: str, ndim: int | None = None, min_ndim: int | None = None,
            differentiable: bool = False) -> torch.Tensor:
    """``x`` as a float64 tensor (device kept), checking rank and finiteness before any compute.

    With ``differentiable=True`` a floating tensor keeps its dtype and its autograd graph (for losses).
    """
    if isinstance(x, torch.Tensor):
        t = x if differentiable else x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
        t = torch.as_tensor(arr)
    if t.is_complex():
        raise TypeError(f"{name} must be real")
    if not (differentiable and t.is_floating_point()):
        t = t.to(torch.float64)
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if min_ndim is not None and t.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _same_shape(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


@contextmanager
def _seeded(seed, device):
    """Run a block under ``torch.manual_seed(seed)`` without disturbing the caller's RNG state."""
    if seed is None:
        yield
        return
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


# ------------------------------------------------------------------------------------------------------ AU
def active_units(means, threshold: float = 0.01) -> dict:
    """Active units: ``AU = #{d : Cov_x(E_q[z_d | x]) ≥ δ}`` (Burda et al. 2016; He et al. ``calc_au``).

    Example:
        >>> import torch
        >>> means = torch.zeros(100, 3)
        >>> means[:, 0] = torch.linspace(-1, 1, 100)     # only the first dimension varies with x
        >>> active_units(means)["count"]
        1

    Args:
        means: (N, K) posterior means E_q[z|x] of N evaluation points (no sampling). For a discrete latent,
            pass the probabilities q(y=k|x) (AU_y).
        threshold: δ, 0.01 in Burda et al., He et al. and LIDVAE.

    Returns:
        ``{"count": int, "fraction": float (count / K, what LIDVAE reports), "variances": (K,) float64 tensor,
        "threshold": δ}``; the variance over datapoints uses the unbiased (N − 1) denominator, as He et al.

    Raises:
        ValueError: fewer than 2 rows, non-finite values, negative threshold.
    """
    m = _tensor(means, "means", ndim=2)
    if m.shape[0] < 2:
        raise ValueError(f"active_units needs at least 2 datapoints, got {m.shape[0]}")
    threshold = float(threshold)
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    var = m.var(dim=0, unbiased=True)
    count = int((var >= threshold).sum())
    return {"count": count, "fraction": count / m.shape[1], "variances": var, "threshold": threshold}


# ------------------------------------------------------------------------------------------------------ KL
def kl_gaussian_standard_per_dim(mu, logvar) -> torch.Tensor:
    """KL(N(μ, diag exp(logvar)) ‖ N(0, I)) per dimension: ``½(μ² + exp(logvar) − logvar − 1)``, nats, (N, K)."""
    mu_t = _tensor(mu, "mu", min_ndim=1, differentiable=True)
    lv = _tensor(logvar, "logvar", min_ndim=1, differentiable=True)
    _same_shape(mu_t, lv, "mu", "logvar")
    return 0.5 * (mu_t.pow(2) + lv.exp() - lv - 1.0)


def kl_gaussian_standard(mu, logvar) -> torch.Tensor:
    """Analytic KL(q(z|x) ‖ N(0, I)) per datapoint for a diagonal Gaussian q, summed over dimensions.

    ``KL = ½ Σ_d (μ_d² + σ_d² − log σ_d² − 1)`` (Kingma & Welling 2014, App. B; He et al.'s ``KL``).

    Example:
        >>> import torch
        >>> kl_gaussian_standard(torch.zeros(2, 3), torch.zeros(2, 3))    # q = p: no information
        tensor([0., 0.])

    Args:
        mu, logvar: (N, K) mean and log-variance.

    Returns:
        (N,) tensor, nats per datapoint (average it for the reported KL); differentiable, input dtype
        (float64 for non-tensor input).
    """
    return kl_gaussian_standard_per_dim(mu, logvar).sum(-1)


def kl_gaussian(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """Analytic KL(N(μ_q, diag σ_q²) ‖ N(μ_p, diag σ_p²)) summed over the last dimension, nats, shape (...,).

    ``KL = ½ Σ_d [log σ_p² − log σ_q² + (σ_q² + (μ_q − μ_p)²) / σ_p² − 1]``; inputs broadcast (e.g. a
    GMVAE prior N(μ(y), σ²(y))).
    """
    mq = _tensor(mu_q, "mu_q", min_ndim=1, differentiable=True)
    lq = _tensor(logvar_q, "logvar_q", min_ndim=1, differentiable=True)
    mp = _tensor(mu_p, "mu_p", min_ndim=1, differentiable=True)
    lp = _tensor(logvar_p, "logvar_p", min_ndim=1, differentiable=True)
    return 0.5 * (lp - lq + (lq.exp() + (mq - mp).pow(2)) / lp.exp() - 1.0).sum(-1)


def kl_monte_carlo(log_q, log_p, dim: int = 0) -> torch.Tensor:
    """Monte Carlo KL(q ‖ p) ≈ mean_s [log q(z_s) − log p(z_s)] with z_s ~ q, averaged over ``dim``.

    Args:
        log_q, log_p: densities at the same samples, e.g. (S, N) for S draws per datapoint (nats).
        dim: the sample dimension (0).

    Returns:
        The estimate with ``dim`` removed, e.g. (N,). Unbiased; a single draw can be negative.
    """
    lq = _tensor(log_q, "log_q", min_ndim=1, differentiable=True)
    lp = _tensor(log_p, "log_p", min_ndim=1, differentiable=True)
    _same_shape(lq, lp, "log_q", "log_p")
    return (lq - lp).mean(dim=dim)


def kl_categorical_uniform(probs) -> torch.Tensor:
    """KL(q(y|x) ‖ Uniform{1..C}) = Σ_y q log q + log C per datapoint, nats, (N,); in [0, log C].

    Args:
        probs: (N, C) probabilities (rows summing to 1 within 1e-6; 0 log 0 = 0).
    """
    p = _tensor(probs, "probs", ndim=2, differentiable=True)
    if (p < 0).any() or not torch.allclose(p.sum(-1), torch.ones_like(p[:, 0]),
                                           atol=1e-6 if p.dtype == torch.float64 else 1e-5):
        raise ValueError("probs must be non-negative with rows summing to 1")
    return torch.special.xlogy(p, p).sum(-1) + math.log(p.shape[1])


# ------------------------------------------------------------------------------------------------------ MI
def gaussian_log_density_matrix(z, mu, logvar) -> torch.Tensor:
    """``L[i, j] = log N(z_i; μ_j, diag exp(logvar_j))`` for z (M, K), μ and logvar (N, K): an (M, N) matrix.

    Computed through matrix products (O(M·N·K) time, O(M·N) memory) in float64.
    """
    z, mu, logvar = (_tensor(a, n, ndim=2) for a, n in ((z, "z"), (mu, "mu"), (logvar, "logvar")))
    prec = torch.exp(-logvar)                                           # (N, K)
    quad = z.pow(2) @ prec.T - 2.0 * z @ (mu * prec).T + (mu.pow(2) * prec).sum(-1)
    return -0.5 * (quad + logvar.sum(-1) + z.shape[1] * LOG_2PI)


def mutual_information(mu, logvar, z_samples=None, seed=None, pool="all", entropy: str = "analytic",
                       num_samples: int = 1, chunk: int = 1024, return_se: bool = False):
    """Mutual information I_q(x; z) of the encoder's joint q(x, z) = p_data(x) q(z|x), Gaussian q(z|x).

    ``I = E_x E_{q(z|x)}[log q(z|x)] − E_x E_{q(z|x)}[log q(z)]``, with the aggregate posterior
    ``q(z) = (1/N) Σ_j q(z|x_j)`` over the evaluation points (He et al. 2019, ``calc_mi``; paper Sec. 4.1).

    Estimator: first term in closed form, ``−½ K log 2π − ½ Σ_d (1 + logvar_d)`` (``entropy="analytic"``,
    He et al.), or at the samples, ``mean_i log q(z_i|x_i)`` (``"sample"``: exactly 0 for a constant
    encoder); second term ``mean_i log[(1/|P_i|) Σ_{j∈P_i} q(z_i|x_j)]`` with one z_i ~ q(z|x_i) per point
    (or S draws, averaged) and P_i the pool of x_i, z_i's own component included.

    ``pool="all"`` (default) pools the **whole evaluation set**: q(z) is the aggregate posterior of the set.
    ``pool=B`` (an int) reproduces He et al.: the set is cut into consecutive batches of B, q(z) is formed
    within each batch and batch estimates are averaged weighted by batch size. Because
    ``log (1/B) Σ_j q(z_i|x_j) ≥ log q(z_i|x_i) − log B``, that estimate is capped at ≈ log B (3.47 nats for
    B = 32) whatever the true MI (with ``entropy="sample"`` the cap is exact); the pooled estimate is capped
    only at log N. Both can be slightly negative through Monte Carlo noise: the raw estimate is what this function
    returns; for a table use :func:`mutual_information_report`, which never reports negative information.

    Args:
        mu, logvar: (N, K) parameters of q(z|x) for the N evaluation points.
        z_samples: optional draws, (N, K) or (S, N, K), z[s, i] ~ q(z|x_i); else drawn with ``seed``.
        seed: int seed for the draws (the caller's torch RNG state is left untouched).
        pool: ``"all"`` or a batch size B ≥ 1.
        entropy: ``"analytic"`` or ``"sample"`` for the first term.
        num_samples: S draws per point when ``z_samples`` is not given (He et al.: 1).
        chunk: rows of the (rows, N) density matrix held at once (memory only).
        return_se: also return the Monte Carlo standard error, ``std_i(t_i) / sqrt(N)`` of the per-point terms
            ``t_i = neg_entropy_i - mean_s log q(z_is)`` (the spread over points and draws; it treats the aggregate
            posterior as fixed).

    Returns:
        The estimate in nats (a float), or ``(estimate, standard_error)`` with ``return_se``.

    Raises:
        ValueError: shape mismatches, unknown pool/entropy, non-finite input.
    """
    mu_t, lv = _tensor(mu, "mu", ndim=2), _tensor(logvar, "logvar", ndim=2)
    _same_shape(mu_t, lv, "mu", "logvar")
    if entropy not in ("analytic", "sample"):
        raise ValueError(f"unknown entropy {entropy!r}; choose one of: analytic, sample")
    n, k = mu_t.shape
    if pool == "all":
        bsz = n
    elif isinstance(pool, (int, np.integer)) and not isinstance(pool, bool) and pool >= 1:
        bsz = int(pool)
    else:
        raise ValueError(f"pool must be 'all' or a positive int, got {pool!r}")
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if z_samples is None:
        with _seeded(seed, mu_t.device):
            eps = torch.randn((int(num_samples), n, k), dtype=torch.float64, device=mu_t.device)
        z = mu_t + torch.exp(0.5 * lv) * eps
    else:
        z = _tensor(z_samples, "z_samples")
        if z.ndim == 2:
            z = z[None]
        if z.ndim != 3 or z.shape[1:] != mu_t.shape:
            raise ValueError(f"z_samples must have shape (N, K) or (S, N, K) with (N, K) = {tuple(mu_t.shape)}, "
                             f"got {tuple(z.shape)}")
    terms = []     # per point: its (negative) entropy term minus the mean over its draws of log q(z_is)
    for b0 in range(0, n, bsz):
        sl = slice(b0, min(b0 + bsz, n))
        mu_b, lv_b, nb = mu_t[sl], lv[sl], sl.stop - sl.start
        log_agg = []   # log q(z_i) for every z_i of this pool
        own = []       # log q(z_i|x_i)
        zb = z[:, sl].reshape(-1, k)                                  # (S·nb, K), row s·nb + i
        for r0 in range(0, zb.shape[0], chunk):
            dens = gaussian_log_density_matrix(zb[r0:r0 + chunk], mu_b, lv_b)   # (rows, nb)
            log_agg.append(torch.logsumexp(dens, dim=1) - math.log(nb))
            rows = torch.arange(r0, min(r0 + chunk, zb.shape[0]), device=zb.device)
            own.append(dens[torch.arange(len(rows), device=zb.device), rows % nb])
        log_qz = torch.cat(log_agg).reshape(-1, nb).mean(0)                        # (nb,)
        if entropy == "analytic":
            neg_h = -0.5 * k * LOG_2PI - 0.5 * (1.0 + lv_b).sum(-1)
        else:
            neg_h = torch.cat(own).reshape(-1, nb).mean(0)
        terms.append(neg_h - log_qz)
    mi, se = mean_and_standard_error(torch.cat(terms))
    return (mi, se) if return_se else mi


def mean_and_standard_error(values) -> tuple:
    """Mean over axis 0 of ``values`` (N, ...) and its Monte Carlo standard error ``std(ddof=1) / sqrt(N)``, as
    float64 NumPy values (plain floats for a 1-D input). ``values``: a tensor or an array of per-point terms."""
    v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    mean, se = v.mean(0), v.std(0, ddof=1) / math.sqrt(v.shape[0])
    return (float(mean), float(se)) if v.ndim == 1 else (mean, se)


def learning_curve_flat(curve, window: int = 5, tol: float = 1.0) -> bool:
    """Whether a learning curve had flattened: its last value moved by less than ``tol`` from the value ``window``
    epochs before (``curve[-window-1] - curve[-1] < tol``, the per-epoch validation negative ELBO in nats per
    datapoint, lower is better). A curve of ``window`` epochs or fewer cannot show it: False.

    The book's budget rule (issue 18): a comparison is at a budget that can answer when the VAE's curve is flat by
    this test on every seed; otherwise the text says that it had not flattened.

    Raises:
        ValueError: a non-finite value, ``window < 1`` or ``tol <= 0``.
    """
    window = int(window)
    if window < 1 or not tol > 0:
        raise ValueError(f"window must be >= 1 and tol > 0, got window={window}, tol={tol}")
    c = np.asarray(curve, dtype=np.float64)
    if not np.isfinite(c).all():
        raise ValueError("the learning curve has non-finite values")
    return bool(c.size > window and c[-window - 1] - c[-1] < tol)


def mutual_information_report(estimate: float, se: float | None = None) -> dict:
    """A mutual-information estimate as a table reports it: never as negative information.

    Returns ``{"mi": max(estimate, 0), "mi_se": se, "mi_estimate": estimate}`` (nats). Mutual information is
    non-negative; an estimate below zero is Monte Carlo noise around a value near 0, so the table shows 0 and keeps
    the raw estimate and its standard error beside it (``mi_se`` ``None`` when unknown).

    Raises:
        ValueError: a non-finite estimate or a negative standard error.
    """
    estimate = float(estimate)
    if not math.isfinite(estimate):
        raise ValueError(f"the MI estimate must be finite, got {estimate}")
    if se is not None and not (float(se) >= 0.0):
        raise ValueError(f"the standard error must be >= 0, got {se}")
    return {"mi": max(estimate, 0.0), "mi_se": None if se is None else float(se), "mi_estimate": estimate}


def mutual_information_from_log_density(log_q, return_se: bool = False):
    """``I_q(x; z)`` from the matrix ``log_q[i, j] = log q(z_i | x_j)`` with one ``z_i ~ q(z|x_i)`` per point, nats.

    ``I ≈ mean_i [log q(z_i|x_i) − log (1/N) Σ_j q(z_i|x_j)]``: the estimator of :func:`mutual_information` with
    ``pool="all"`` and ``entropy="sample"``, for any q whose density can be evaluated (a flow posterior). It is
    exactly 0 when q(z|x) does not depend on x, and at most log N.

    Args:
        log_q: (N, N) finite log densities, row i the draw of point i, column j the conditioning point.

        return_se: also return the standard error ``std_i(t_i) / sqrt(N)`` of the per-point terms.

    Returns:
        The estimate in nats, or ``(estimate, standard_error)`` with ``return_se``.

    Raises:
        ValueError: not a square matrix with N >= 2, or non-finite entries.
    """
    m = _tensor(log_q, "log_q", ndim=2)
    n = m.shape[0]
    if m.shape[1] != n or n < 2:
        raise ValueError(f"log_q must be a square (N, N) matrix with N >= 2, got {tuple(m.shape)}")
    mi, se = mean_and_standard_error(m.diagonal() - torch.logsumexp(m, dim=1) + math.log(n))
    return (mi, se) if return_se else mi


# --------------------------------------------------------------------------------------------------- IWAE
def iwae_log_likelihood(log_joint_fn, sample_fn, x, num_samples: int = 500, chunk: int = 100, seed=None,
                        return_log_weights: bool = False):
    """Importance-weighted estimate of log p(x) per datapoint (Burda et al. 2016; He et al. ``nll_iw``).

    ``log p̂(x) = log (1/K) Σ_{k=1..K} exp(log p(x, z_k) − log q(z_k|x))``, z_k ~ q(z|x) i.i.d. Its expectation
    is ≤ log p(x) and rises to it as K grows (Burda et al., Thm. 1); K = 1 gives the (1-sample) ELBO. The
    estimate is exact when q(z|x) is the exact posterior. Report ``−mean(log p̂)`` as IW-NLL.

    Args:
        log_joint_fn: ``(x, z) -> (S, N)`` log p(x, z_s) with full normalising constants (nats).
        sample_fn: ``(x, S) -> (z, log_q)``: S draws z (S, N, ...) from q(z|x) and their log q(z|x), (S, N).
        x: the N datapoints (anything the two functions accept; N = ``len(x)``).
        num_samples: K (He et al. 500).
        chunk: draws per call (He et al. 100); memory only, the result does not depend on it beyond RNG order.
        seed: optional int; draws then run under ``torch.manual_seed(seed)`` and the caller's RNG state is
            restored afterwards.
        return_log_weights: also return the (K, N) log-weights (their mean over K is a K-sample ELBO average).

    Gradients are not disabled (a Brenier-map decoder needs autograd inside ``log_joint_fn``); wrap the call
    in ``torch.no_grad()`` when your model allows. Weights are detached and accumulated in float64.

    Returns:
        (N,) float64 tensor of log p̂(x) in nats per datapoint (and the log-weights if asked).
    """
    num_samples = int(num_samples)
    chunk = int(chunk)
    if num_samples < 1 or chunk < 1:
        raise ValueError("num_samples and chunk must be >= 1")
    device = x.device if isinstance(x, torch.Tensor) else "cpu"
    pieces = []
    with _seeded(seed, device):
        done = 0
        while done < num_samples:
            s = min(chunk, num_samples - done)
            z, log_q = sample_fn(x, s)
            log_p = log_joint_fn(x, z)
            lw = torch.as_tensor(log_p).detach().to(torch.float64) - torch.as_tensor(log_q).detach().to(torch.float64)
            if lw.ndim != 2 or lw.shape[0] != s:
                raise ValueError(f"log_joint_fn and sample_fn must give (S, N) = ({s}, N) log densities, "
                                 f"got {tuple(lw.shape)}")
            pieces.append(lw)
            done += s
    log_w = torch.cat(pieces, dim=0)
    if torch.isnan(log_w).any():
        raise ValueError("NaN in the log importance weights")
    est = torch.logsumexp(log_w, dim=0) - math.log(num_samples)
    return (est, log_w) if return_log_weights else est


def iwae_log_likelihood_mixture(log_joint_fn, sample_fn, x, num_classes: int, log_prior_y=None,
                                num_samples: int = 500, chunk: int = 100, seed=None) -> torch.Tensor:
    """Per-datapoint log p(x) of a model with a discrete latent y and a continuous latent w (GMVAE, LIDGMVAE).

    ``log p(x) = log Σ_y p(y) p(x|y)``, with y **summed exactly by enumeration** (q(y|x) is not used, so y adds
    no variance) and each ``p(x|y)`` estimated by importance sampling of the continuous part:
    ``log p̂(x|y) = log (1/K) Σ_k p(x, w_k | y) / q(w_k|x, y)``, w_k ~ q(w|x, y), K = ``num_samples`` per class.
    Then ``log p̂(x) = logsumexp_y [log p(y) + log p̂(x|y)]``: p̂(x) is unbiased for p(x), so E log p̂(x) ≤ log p(x),
    with equality in the limit K → ∞. Cost: C·K decoder passes per datapoint.

    This replaces the official LIDGMVAE "iw_nll", which is a log-mean-exp of a batch-averaged loss that omits
    H(q(y|x)) (not an IWAE and not per datapoint).

    Args:
        log_joint_fn: ``(x, w, y) -> (S, N)`` log p(x, w | y) = log p(x|w) + log p(w|y) (nats); y is an int.
        sample_fn: ``(x, y, S) -> (w, log_q)``: S draws from q(w|x, y) and log q(w|x, y), (S, N).
        x: N datapoints; num_classes: C.
        log_prior_y: (C,) log p(y); default uniform −log C.
        num_samples, chunk, seed: as in :func:`iwae_log_likelihood` (one seed covers all classes).

    Returns:
        (N,) float64 tensor of log p̂(x) in nats per datapoint.
    """
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError("num_classes must be >= 1")
    if log_prior_y is None:
        lpy = torch.full((num_classes,), -math.log(num_classes), dtype=torch.float64)
    else:
        lpy = _tensor(log_prior_y, "log_prior_y", ndim=1)
        if lpy.shape[0] != num_classes:
            raise ValueError(f"log_prior_y must have {num_classes} entries, got {lpy.shape[0]}")
    device = x.device if isinstance(x, torch.Tensor) else "cpu"
    per_class = []
    with _seeded(seed, device):
        for y in range(num_classes):
            per_class.append(iwae_log_likelihood(lambda xx, w, y=y: log_joint_fn(xx, w, y),
                                                 lambda xx, s, y=y: sample_fn(xx, y, s),
                                                 x, num_samples=num_samples, chunk=chunk))
    stacked = torch.stack(per_class, dim=0)                        # (C, N)
    return torch.logsumexp(stacked + lpy.to(stacked.device)[:, None], dim=0)


# ---------------------------------------------------------------------------------------- cluster accuracy
def _labels(a, name):
    arr = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer)):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integer labels")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative integers")
    return arr


def cluster_accuracy(pred, labels, num_clusters: int | None = None) -> dict:
    """Unsupervised cluster accuracy of predicted clusters (e.g. argmax q(y|x)) against true labels.

    - ``hungarian``: best one-to-one map cluster → class (``scipy.optimize.linear_sum_assignment`` on the
      contingency table); clusters left unmatched (more clusters than classes) count as errors.
    - ``majority``: each cluster → its most frequent true label (ties → smallest label), many-to-one; this is
      the accuracy of RuiShu/vae-clustering and the official LIDVAE (``≥ hungarian``; reaches 1 with one
      cluster per point, so always report the number of clusters).
    - ``chance``: the largest class frequency, what a single-cluster (fully collapsed) model scores under the
      majority map.

    Example:
        >>> import torch
        >>> acc = cluster_accuracy(torch.tensor([1, 1, 0, 0, 2]), torch.tensor([0, 0, 1, 1, 1]))
        >>> acc["hungarian"], acc["majority"]
        (0.8, 1.0)

    Args:
        pred: (N,) integer cluster ids in ``0..num_clusters-1``.
        labels: (N,) integer true classes ≥ 0.
        num_clusters: number of clusters (default ``max(pred) + 1``).

    Returns:
        ``{"hungarian": float, "majority": float, "chance": float, "num_clusters": int,
        "clusters_used": int, "hungarian_map": (num_clusters,) int64 array (−1 = unmatched),
        "majority_map": (num_clusters,) int64 array (−1 = empty cluster)}``.
    """
    from scipy.optimize import linear_sum_assignment

    p, y = _labels(pred, "pred"), _labels(labels, "labels")
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"pred and labels must be non-empty and of equal length, got {p.shape} and {y.shape}")
    k = int(p.max()) + 1 if num_clusters is None else int(num_clusters)
    if k < 1 or p.max() >= k:
        raise ValueError(f"pred has cluster ids up to {p.max()}, beyond num_clusters={k}")
    c = int(y.max()) + 1
    table = np.zeros((k, c), dtype=np.int64)
    np.add.at(table, (p, y), 1)
    n = p.size
    rows, cols = linear_sum_assignment(table, maximize=True)
    hmap = np.full(k, -1, dtype=np.int64)
    hmap[rows] = cols
    maj = table.max(axis=1)
    mmap = np.where(table.sum(axis=1) > 0, table.argmax(axis=1), -1).astype(np.int64)
    return {
        "hungarian": float(table[rows, cols].sum() / n),
        "majority": float(maj.sum() / n),
        "chance": float(np.bincount(y).max() / n),
        "num_clusters": k,
        "clusters_used": int((table.sum(axis=1) > 0).sum()),
        "hungarian_map": hmap,
        "majority_map": mmap,
    }
