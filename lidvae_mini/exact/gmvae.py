"""The GMVAE's likelihood maximizers (paper Sec. 2.2), exactly, with a one-dimensional continuous latent.

Model (a GMVAE with ``K`` clusters, a scalar latent ``w`` and a fixed map ``f: R -> R^D``)::

    y ~ Categorical(pi),   w | y ~ N(mu_y, sigma_y^2),   x | w ~ N(f(w), s^2 I_D).

Two parameter values give **the same distribution of x** when their maps differ by the monotone
transport between their latent priors: with ``F`` the cdf of the old prior of ``w`` and ``G`` that of a new
one, the model with prior ``G`` and map ``f o F^{-1} o G`` generates exactly the same ``x`` (change of
variables ``w = F^{-1}(G(v))``). :func:`reparameterize` builds it; the paper's maximizers are instances:

* ``theta_1`` (:func:`two_cluster_truth`): the data-generating GMVAE, two separated clusters;
* ``theta_2`` (:func:`merged_maximizer` of ``theta_1``): every component ``N(0, 1)``, map ``f o T`` with
  ``T = F_mix^{-1} o Phi``; ``p(x | y = k)`` is the same for every ``k``, so ``p(y | x) = 1/K`` (collapse);
* ``theta_3`` (:func:`merged_maximizer` of the one-cluster truth :func:`one_cluster_truth`): both
  components on the single true cluster, collapse again;
* ``theta_4`` (:func:`reparameterize` of the one-cluster truth onto separated components): the same
  likelihood as ``theta_3``, with a confident but arbitrary ``p(y | x)`` (an addition to the paper's list).

"Maximizer" is meant in the population sense: each of these parameters reproduces the data-generating
distribution exactly, so it maximizes the expected log-likelihood, and all of them give the same
log-likelihood on any sample. The marginal likelihood ``p(x) = int p(x | w) p(w) dw`` and the posteriors
``p(y | x)``, ``p(w | x)`` are computed by quadrature on a uniform latent grid (:meth:`GMVAE1D.evaluate`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize, special, stats

from .._checks import as_float_array, check_int, check_positive
from .collapse import check_probabilities
from ..plotting import figsize, legend_below

#: Half-width of the quadrature grid, in prior standard deviations beyond the outermost component means.
GRID_WIDTH_SD = 10.0


class Mixture1D:
    """A one-dimensional Gaussian mixture ``sum_k pi_k N(mu_k, sigma_k^2)``: the GMVAE's prior on ``w``.

    Args:
        weights: ``(K,)`` mixture weights ``pi`` (positive, summing to 1).
        means: ``(K,)`` component means ``mu``.
        sds: ``(K,)`` component standard deviations ``sigma`` (``> 0``).

    Raises:
        ValueError: different lengths (K mismatch), weights not a probability vector, an sd ``<= 0``.
    """

    def __init__(self, weights, means, sds):
        weights = as_float_array(weights, "weights", ndim=1)
        means = as_float_array(means, "means", ndim=1)
        sds = as_float_array(sds, "sds", ndim=1)
        if not (len(weights) == len(means) == len(sds)) or len(weights) == 0:
            raise ValueError(f"weights, means and sds must have the same length K >= 1, got "
                             f"{len(weights)}, {len(means)}, {len(sds)}")
        check_probabilities(weights, "weights")
        if np.any(weights == 0):
            raise ValueError(f"weights must be positive, got {weights}")
        if np.any(sds <= 0):
            raise ValueError(f"sds must be > 0, got {sds}")
        self.weights, self.means, self.sds = weights, means, sds

    @classmethod
    def standard(cls, K: int = 1) -> "Mixture1D":
        """``K`` identical ``N(0, 1)`` components with weights ``1/K`` (the distribution is ``N(0, 1)``)."""
        K = check_int(K, "K")
        return cls(np.full(K, 1.0 / K), np.zeros(K), np.ones(K))

    @property
    def K(self) -> int:
        return len(self.weights)

    def __repr__(self) -> str:
        return f"Mixture1D(weights={self.weights.tolist()}, means={self.means.tolist()}, sds={self.sds.tolist()})"

    def _w(self, w) -> np.ndarray:
        return as_float_array(w, "w", ndim=1)

    def component_logpdf(self, w) -> np.ndarray:
        """``log N(w_j; mu_k, sigma_k^2)``, shape ``(m, K)`` for ``w`` of shape ``(m,)``."""
        return stats.norm.logpdf(self._w(w)[:, None], self.means, self.sds)

    def logpdf(self, w) -> np.ndarray:
        """``log p(w)``, shape ``(m,)``."""
        return special.logsumexp(np.log(self.weights) + self.component_logpdf(w), axis=1)

    def logcdf(self, w) -> np.ndarray:
        """``log F(w)``, accurate in the far left tail, shape ``(m,)``."""
        return special.logsumexp(np.log(self.weights) + stats.norm.logcdf(self._w(w)[:, None], self.means, self.sds),
                                 axis=1)

    def logsf(self, w) -> np.ndarray:
        """``log (1 - F(w))``, accurate in the far right tail, shape ``(m,)``."""
        return special.logsumexp(np.log(self.weights) + stats.norm.logsf(self._w(w)[:, None], self.means, self.sds),
                                 axis=1)

    def normal_score(self, w) -> np.ndarray:
        """``Phi^{-1}(F(w))``: the monotone transport of this mixture onto ``N(0, 1)``, shape ``(m,)``.

        Computed from ``log F`` left of the median and ``log(1 - F)`` right of it (``scipy.special.ndtri_exp``),
        so it stays accurate where ``F`` rounds to 0 or 1.
        """
        w = self._w(w)
        lo, hi = self.logcdf(w), self.logsf(w)
        left = lo <= hi
        return np.where(left, special.ndtri_exp(np.minimum(lo, 0.0)), -special.ndtri_exp(np.minimum(hi, 0.0)))

    def _bracket(self) -> tuple[float, float]:
        return (float(np.min(self.means - 40 * self.sds)), float(np.max(self.means + 40 * self.sds)))

    def transport(self, u, tol: float = 1e-12, max_iter: int = 50) -> np.ndarray:
        """``T(u) = F^{-1}(Phi(u))``: the monotone transport of ``N(0, 1)`` onto this mixture, shape ``(m,)``.

        Solves ``normal_score(w) = u`` by interpolation on a grid, then Newton steps on the normal-score scale
        (``d/dw Phi^{-1}(F(w)) = p(w) / phi(Phi^{-1}(F(w)))``) until the residual is below ``tol``.

        Raises:
            ValueError: non-finite ``u``; RuntimeError: no convergence (never seen for ``|u| < 35``).
        """
        u = as_float_array(u, "u", ndim=1)
        lo, hi = self._bracket()
        grid = np.linspace(lo, hi, 8001)
        w = np.interp(u, self.normal_score(grid), grid)
        for _ in range(max_iter):
            z = self.normal_score(w)
            resid = z - u
            if np.all(np.abs(resid) <= tol * np.maximum(1.0, np.abs(u))):
                return w
            slope = np.exp(self.logpdf(w) - stats.norm.logpdf(z))
            w = np.clip(w - resid / slope, lo, hi)
        raise RuntimeError(f"transport did not converge: max residual {np.abs(resid).max():.3g}")

    def transport_brentq(self, u: float) -> float:
        """Reference value of :meth:`transport` for one ``u`` by ``scipy.optimize.brentq`` (slow; for tests)."""
        u = float(as_float_array(u, "u", ndim=0))
        lo, hi = self._bracket()
        return optimize.brentq(lambda w: self.normal_score([w])[0] - u, lo, hi, xtol=1e-14, rtol=1e-15)

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(y, w)``: ``n`` component labels ``(n,)`` (ints) and latent values ``(n,)``; explicit ``seed``."""
        n = check_int(n, "n")
        rng = np.random.default_rng(seed)
        y = rng.choice(self.K, size=n, p=self.weights / self.weights.sum())
        return y, self.means[y] + self.sds[y] * rng.standard_normal(n)

    def grid(self, grid_size: int, width: float = GRID_WIDTH_SD) -> np.ndarray:
        """Uniform quadrature grid over ``[min(mu - width sigma), max(mu + width sigma)]``, shape ``(grid_size,)``."""
        grid_size = check_int(grid_size, "grid_size", minimum=3)
        width = check_positive(width, "width")
        return np.linspace(np.min(self.means - width * self.sds), np.max(self.means + width * self.sds), grid_size)


@dataclass(frozen=True)
class Curve:
    """The fixed nonlinear map ``f(w) = (w, amplitude * sin(frequency * w))`` from ``R`` into ``R^2``.

    Injective (its first coordinate is ``w``), so ``w`` itself is identifiable from ``f(w)``.
    """

    amplitude: float = 2.0
    frequency: float = 1.0

    def __call__(self, w) -> np.ndarray:
        w = as_float_array(w, "w", ndim=1)
        return np.stack([w, self.amplitude * np.sin(self.frequency * w)], axis=1)


@dataclass(frozen=True)
class PullbackMap:
    """``v -> f(F_old^{-1}(F_new(v)))``: the map that makes a model with prior ``new`` generate what ``f``
    generates under prior ``old`` (``F_old^{-1} o F_new`` pushes ``new`` onto ``old``, monotonically)."""

    f: object
    new: Mixture1D
    old: Mixture1D

    def latent(self, v) -> np.ndarray:
        """``F_old^{-1}(F_new(v))``, the old model's latent value for the new latent ``v``, shape ``(m,)``."""
        return self.old.transport(self.new.normal_score(v))

    def __call__(self, v) -> np.ndarray:
        return self.f(self.latent(v))


@dataclass
class Quadrature:
    """Per-datapoint results of :meth:`GMVAE1D.evaluate` (nats).

    Attributes:
        log_px_given_y: ``(n, K)`` ``log p(x_i | y_i = k)``.
        log_px: ``(n,)`` marginal log-likelihood ``log p(x_i)``.
        p_y: ``(n, K)`` posterior ``p(y_i = k | x_i)``.
    """

    log_px_given_y: np.ndarray
    log_px: np.ndarray
    p_y: np.ndarray

    @property
    def entropy_y(self) -> np.ndarray:
        """``(n,)`` entropy of ``p(y_i | x_i)`` in nats (``log K`` under collapse)."""
        return special.entr(self.p_y).sum(axis=1)


class GMVAE1D:
    """GMVAE with a scalar latent ``w``: ``y ~ Cat(pi)``, ``w | y ~ N(mu_y, sigma_y^2)``, ``x | w ~ N(f(w), s^2 I_D)``.

    Args:
        prior: the mixture prior of ``w`` (:class:`Mixture1D`, carrying ``K``).
        f: callable mapping ``(m,)`` latent values to ``(m, D)`` means, vectorized.
        s: observation noise sd (``> 0``).
        name: label for figures and metrics.

    Raises:
        TypeError: ``prior`` is not a :class:`Mixture1D` or ``f`` not callable.
        ValueError: ``s <= 0``; ``f`` does not return a finite ``(m, D)`` array.
    """

    def __init__(self, prior: Mixture1D, f, s: float, name: str = ""):
        if not isinstance(prior, Mixture1D):
            raise TypeError(f"prior must be a Mixture1D, got {type(prior).__name__}")
        if not callable(f):
            raise TypeError("f must be callable")
        self.prior, self.f, self.s, self.name = prior, f, check_positive(s, "s"), str(name)
        probe = as_float_array(f(np.linspace(-1.0, 1.0, 3)), "f(w)", ndim=2)
        if probe.shape[0] != 3:
            raise ValueError(f"f must map (m,) latent values to (m, D) means, got shape {probe.shape} for m = 3")
        self.D = probe.shape[1]

    @property
    def K(self) -> int:
        return self.prior.K

    def __repr__(self) -> str:
        return f"GMVAE1D({self.name!r}, {self.prior!r}, s={self.s}, D={self.D})"

    def _x(self, x) -> np.ndarray:
        return as_float_array(x, "x", shape=(None, self.D))

    def sample(self, n: int, seed: int = 0) -> dict:
        """``{"x": (n, D), "y": (n,), "w": (n,)}`` drawn from the model with an explicit ``seed``."""
        y, w = self.prior.sample(n, seed)
        noise = np.random.default_rng([seed, 1]).standard_normal((len(w), self.D))
        return {"x": self.f(w) + self.s * noise, "y": y, "w": w}

    def loglik_on_grid(self, x, grid) -> np.ndarray:
        """``log p(x_i | w_j) = log N(x_i; f(w_j), s^2 I_D)`` in nats, shape ``(n, G)``, by ``torch.distributions``.

        Holds an ``(n, G, D)`` array: for a few datapoints (figures, tests); :meth:`evaluate` streams instead.
        """
        x = self._x(x)
        fw = torch.from_numpy(np.ascontiguousarray(self.f(as_float_array(grid, "grid", ndim=1)), dtype=np.float64))
        lik = torch.distributions.Normal(fw, torch.tensor(self.s, dtype=torch.float64))
        return lik.log_prob(torch.from_numpy(x)[:, None, :]).sum(-1).numpy()

    def _logsumexp_over_grid(self, x: np.ndarray, fw: np.ndarray, log_weights: np.ndarray,
                             chunk_elements: int) -> np.ndarray:
        """``log sum_j N(x_i; fw_j, s^2 I) exp(log_weights[j, k])``, shape ``(n, K)``.

        Streams over datapoints in chunks of about ``chunk_elements`` matrix entries (cache-sized), forming
        ``||x_i - f(w_j)||^2`` one coordinate at a time (no cancellation), then a max-shifted matrix product
        with ``exp(log_weights)``. Equal to :meth:`loglik_on_grid` + logsumexp (tested).
        """
        G = fw.shape[0]
        fT = np.ascontiguousarray(fw.T)
        w_max = log_weights.max(axis=0)
        weights = np.exp(log_weights - w_max)  # (G, K)
        const = -self.D * (np.log(self.s) + 0.5 * np.log(2 * np.pi)) + w_max
        step = max(1, int(chunk_elements) // G)
        out = np.empty((len(x), log_weights.shape[1]))
        for i in range(0, len(x), step):
            xc = x[i:i + step]
            ll = np.zeros((len(xc), G))
            for d in range(self.D):
                diff = xc[:, d:d + 1] - fT[d][None, :]
                diff *= diff
                ll -= diff
            ll *= 0.5 / self.s ** 2
            row_max = ll.max(axis=1, keepdims=True)
            ll -= row_max
            np.exp(ll, out=ll)
            with np.errstate(divide="ignore"):
                out[i:i + step] = np.log(ll @ weights) + row_max + const
        return out

    def evaluate(self, x, grid_size: int = 20001, chunk_elements: int = 100_000) -> Quadrature:
        """Marginal likelihood and ``p(y | x)`` by quadrature on a uniform latent grid (:meth:`Mixture1D.grid`).

        ``log p(x | y=k) = log sum_j h N(x; f(w_j), s^2 I) N(w_j; mu_k, sigma_k^2)`` (Riemann sum with spacing
        ``h``; the integrand is smooth and negligible at the ends, so it converges like the trapezoid rule).
        ``p(y | x)`` is a max-shifted softmax, so identical components give exactly ``1/K``.

        Args:
            x: ``(n, D)`` data.
            grid_size: number of quadrature nodes (``>= 3``); the spacing must resolve the width
                ``s / |d f(w) / dw|`` of ``p(w | x)`` in this model's own latent coordinate.
            chunk_elements: datapoints are processed ``chunk_elements // grid_size`` at a time.

        Returns:
            :class:`Quadrature` with per-datapoint values in nats.

        Raises:
            ValueError: ``x`` not ``(n, D)`` or not finite, ``grid_size < 3``.
        """
        x = self._x(x)
        grid = self.prior.grid(grid_size)
        fw = as_float_array(self.f(grid), "f(grid)", shape=(len(grid), self.D))
        log_weights = self.prior.component_logpdf(grid) + np.log(grid[1] - grid[0])  # (G, K)
        comp = self._logsumexp_over_grid(x, fw, log_weights, chunk_elements)
        joint = comp + np.log(self.prior.weights)
        return Quadrature(log_px_given_y=comp, log_px=special.logsumexp(joint, axis=1),
                          p_y=special.softmax(joint, axis=1))

    def posterior_w(self, x, grid_size: int = 20001) -> tuple[np.ndarray, np.ndarray]:
        """Joint posterior density ``p(w, y = k | x)`` on the latent grid, for a few datapoints.

        Returns:
            ``(grid, density)``: ``(G,)`` latent values and ``(n, G, K)`` densities (per unit of ``w``); summing
            over ``k`` gives ``p(w | x)``, integrating over ``w`` gives ``p(y = k | x)``.
        """
        grid = self.prior.grid(grid_size)
        ll = self.loglik_on_grid(x, grid)
        log_joint = ll[:, :, None] + self.prior.component_logpdf(grid)[None] + np.log(self.prior.weights)
        log_norm = special.logsumexp(log_joint, axis=(1, 2), keepdims=True) + np.log(grid[1] - grid[0])
        return grid, np.exp(log_joint - log_norm)


def two_cluster_truth(mu: float = 3.0, s: float = 0.1, f=None) -> GMVAE1D:
    """``theta_1``: ``y ~ Cat(1/2)``, ``w | y ~ N(-mu, 1)`` or ``N(mu, 1)``, ``x | w ~ N(f(w), s^2 I)``.

    ``f`` defaults to :class:`Curve`. Raises ``ValueError`` for ``mu <= 0`` or ``s <= 0``.
    """
    mu = check_positive(mu, "mu")
    return GMVAE1D(Mixture1D([0.5, 0.5], [-mu, mu], [1.0, 1.0]), Curve() if f is None else f, s, "theta_1 (truth)")


def one_cluster_truth(s: float = 0.1, f=None) -> GMVAE1D:
    """One-cluster data-generating model: ``w ~ N(0, 1)``, ``x | w ~ N(f(w), s^2 I)`` (``K = 1``)."""
    return GMVAE1D(Mixture1D.standard(1), Curve() if f is None else f, s, "one-cluster truth")


def reparameterize(model: GMVAE1D, prior: Mixture1D, name: str = "") -> GMVAE1D:
    """The model with latent prior ``prior`` and map ``f o F_old^{-1} o F_new``: same distribution of ``x``.

    Raises:
        TypeError: ``model`` is not a :class:`GMVAE1D` or ``prior`` not a :class:`Mixture1D`.
    """
    if not isinstance(model, GMVAE1D):
        raise TypeError(f"model must be a GMVAE1D, got {type(model).__name__}")
    if not isinstance(prior, Mixture1D):
        raise TypeError(f"prior must be a Mixture1D, got {type(prior).__name__}")
    return GMVAE1D(prior, PullbackMap(model.f, prior, model.prior), model.s, name)


def merged_maximizer(model: GMVAE1D, K: int = 2, name: str = "") -> GMVAE1D:
    """``theta_2`` (or ``theta_3``): ``K`` identical ``N(0, 1)`` components and map ``f o T``, ``T = F_mix^{-1} o Phi``.

    Every ``p(x | y = k)`` equals the marginal ``p(x)``: ``y`` is non-identifiable and ``p(y | x) = 1/K``.
    """
    return reparameterize(model, Mixture1D.standard(K), name or f"merged (K={K})")


def split_maximizer(model: GMVAE1D, mu: float = 3.0, name: str = "") -> GMVAE1D:
    """``theta_4``: two separated components ``N(-mu, 1)``, ``N(mu, 1)`` (weights 1/2) and the pulled-back map."""
    mu = check_positive(mu, "mu")
    return reparameterize(model, Mixture1D([0.5, 0.5], [-mu, mu], [1.0, 1.0]), name or "split")


def summary_metrics(result: Quadrature, threshold: float = 0.9) -> dict:
    """``{"loglik_per_datapoint", "mean_entropy_y", "frac_confident"}`` per datapoint.

    Log-likelihood and entropy in nats; ``frac_confident`` is the fraction with ``max_k p(y=k|x) > threshold``.

    Raises:
        ValueError: ``threshold`` outside ``(0, 1)``.
    """
    threshold = check_positive(threshold, "threshold")
    if threshold >= 1:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    return {"loglik_per_datapoint": float(result.log_px.mean()),
            "mean_entropy_y": float(result.entropy_y.mean()),
            "frac_confident": float(np.mean(result.p_y.max(axis=1) > threshold))}


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def plot_responsibilities(x, p_y, titles, axes=None):
    """Scatter ``x`` (``(n, 2)``) coloured by ``p(y = 2 | x)``, one panel per entry of ``p_y`` (list of ``(n, K)``).

    Returns the axes. A colour bar spans 0 (surely cluster 1) to 1 (surely cluster 2); 1/2 is white.
    """
    import matplotlib.pyplot as plt

    x = as_float_array(x, "x", shape=(None, 2))
    if axes is None:
        _, axes = plt.subplots(1, len(p_y), figsize=figsize(len(p_y), row_height=3.0), squeeze=False,
                                 constrained_layout=True)
        axes = axes[0]
    for ax, p, title in zip(axes, p_y, titles):
        sc = ax.scatter(x[:, 0], x[:, 1], c=np.asarray(p)[:, 1], cmap="coolwarm", vmin=0, vmax=1, s=5,
                        edgecolors="k", linewidths=0.1)
        ax.set(title=title, xlabel="$x_1$", ylabel="$x_2$")
    plt.colorbar(sc, ax=list(axes), label="p(y = 2 | x)")
    return axes


def plot_latent_posteriors(models, x_few, grid_size: int = 20001, labels=None):
    """Rows: models; columns: datapoints. Each panel shows ``p(latent, y = k | x)`` for every ``k``.

    The latent axis is each model's own latent (``w`` for the truth, ``u ~ N(0, 1)`` for a merged
    maximizer), zoomed to six posterior sds around the posterior mean. Returns the figure.
    """
    import matplotlib.pyplot as plt

    x_few = as_float_array(x_few, "x_few", ndim=2)
    fig, axes = plt.subplots(len(models), len(x_few), figsize=figsize(len(x_few), len(models), row_height=2.2),
                             squeeze=False, constrained_layout=True)
    for r, model in enumerate(models):
        grid, dens = model.posterior_w(x_few, grid_size)
        h = grid[1] - grid[0]
        for c in range(len(x_few)):
            ax, p = axes[r, c], dens[c].sum(1)
            mean = np.sum(p * grid) * h
            keep = np.abs(grid - mean) <= 6 * np.sqrt(np.sum(p * (grid - mean) ** 2) * h)
            for k in range(model.K):
                ax.plot(grid[keep], dens[c, keep, k], ls="-" if k == 0 else "--", lw=1.5, label=f"y = {k + 1}")
            ax.set_xlabel("mass " + ", ".join(f"y={k + 1}: {dens[c, :, k].sum() * h:.3f}" for k in range(model.K)),
                          fontsize=7.5)
            ax.locator_params(axis="x", nbins=5)
            if c == 0:
                ax.set_ylabel((labels or [m.name for m in models])[r], fontsize=9)
            if r == 0:
                ax.set_title(f"x = ({x_few[c, 0]:.2f}, {x_few[c, 1]:.2f})", fontsize=9)
    legend_below(fig, axes[0, 0], ncol=model.K)
    return fig
