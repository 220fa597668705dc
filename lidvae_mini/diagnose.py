"""Theorem 1 as a tool: which latent dimensions of a fitted model are non-identifiable, and is a collapse the
model's or the inference's?

Theorem 1 (Wang, Blei & Cunningham 2021, §2.1): the *exact* posterior of a latent collapses to its prior if and
only if the likelihood does not depend on it (Definition 2, non-identifiability) at the fitted parameters. A
variational posterior can also sit at the prior while the likelihood *does* depend on the latent: then the cause is
the inference (lagging encoders, KL annealing and SA-VAE address this), not the model. :func:`diagnose` separates
the two causes per latent dimension ``k`` by measuring both sides:

* **likelihood sensitivity** ``s_k`` (the model side, Definition 2 measured directly): with the other coordinates
  at posterior draws ``z ~ q(z|x)``, move ``z_k`` *alone* over its prior and record how much ``l(z) = log p(x|z)``
  moves. With two independent prior draws ``a, b`` of ``z_k``,

  .. math::

      V_k &= \\mathbb E_x\\, \\mathbb E_{z \\sim q(z|x)}\\, \\mathbb E_{a, b \\sim p(z_k)}
             \\tfrac12 \\big(l(z_{-k}, a) - l(z_{-k}, b)\\big)^2 \\\\
          &= \\mathbb E_x\\, \\mathbb E_{z_{-k}}\\, \\mathrm{Var}_{z_k \\sim p(z_k)}\\, l(z_{-k}, z_k), \\\\
      s_k &= \\sqrt{V_k}\\ \\text{nats}.

  ``s_k = 0`` exactly when the likelihood is flat in ``z_k`` (on the data, at the posterior values of the other
  coordinates): Definition 2.
* **variational facts** (the inference side, paper §4.1): the per-dimension ``KL_k = E_x KL(q(z_k|x) || p(z_k))``
  and the active-unit statistic ``Var_x E_q[z_k|x]`` (AU, threshold 0.01).

**Verdicts and thresholds** (all stated in :class:`Thresholds`):

* ``identifiable`` iff ``s_k >= s*`` **and** ``s_k >= n_se * SE(s_k)``, with ``s* = sqrt(2 KL*)``.
  Why ``sqrt(2 KL*)``: for a likelihood that is nearly flat in ``z_k``, the exact conditional posterior satisfies
  ``KL(p(z_k | x, z_{-k}) || p(z_k)) = int_0^1 b Var_b(l) db = Var_{p(z_k)}(l) / 2 + o(Var)`` (``Var_b`` is the
  variance under the prior tilted by ``exp(b l)``; the identity behind the book's "nearly non-identifiable ⇒ nearly
  collapsed" bound, chapter 1). So a dimension with ``s_k^2 / 2 < KL*`` has an exact posterior that departs from
  its prior by less than ``KL*`` nats, to second order: the same amount below which ``KL_k`` calls ``q``
  collapsed. The standard-error condition keeps a few outlying points from passing a flat dimension off as
  identifiable. A dimension below ``s*`` is *non-identifiable to within* ``s*``; the column ``flat`` says whether it
  is flat to floating-point precision (Definition 2 exactly).
* ``used`` iff ``Var_x E_q[z_k|x] >= 0.01`` (AU, Burda et al. 2016; the paper's §4.1) **and** ``KL_k >= KL*``
  (default 0.01 nats). AU alone misses how far ``q`` is from the prior; ``KL_k`` alone counts a ``q(z_k|x)`` that
  differs from the prior but not with ``x`` (no information). A unit whose means vary with variance 0.01 and whose
  posterior variance is 1 has ``KL_k = 0.005`` nats: the two thresholds are of the same order.

The verdict of each dimension (:data:`VERDICTS`): ``"identifiable and used"``; ``"non-identifiable (model
collapse)"`` (the exact posterior is (nearly) the prior by Theorem 1, whatever ``q`` does: no inference method can
make the latent informative; if ``q`` nevertheless moves it, that KL is wasted); ``"identifiable but unused
(inference collapse)"`` (the likelihood depends on ``z_k``, so the exact posterior does not collapse, but ``q``
ignores it). Under the exact posterior the third verdict cannot occur (Theorem 1), up to the thresholds; and
``"borderline"`` where the estimates cannot decide: the statistic that sets the verdict (``s_k`` against ``s*``;
for an identifiable dimension ``KL_k`` against ``KL*`` or the AU statistic against its threshold) lies within one
standard error of its threshold. An exact-posterior model whose latent sits near the thresholds (PPCA with
``|w_k|^2 / sigma^2 ~ 0.02``: ``KL_k = log(1 + r) / 2 ~ KL*``) is reported borderline, not as an inference
collapse that Theorem 1 rules out.

Also reported: ``rec_drop_k = E [l(z) - (l(z_{-k}, a) + l(z_{-k}, b)) / 2]``, the nats of ``log p(x|z)`` lost when
the posterior value of ``z_k`` is replaced by a prior draw (0 in expectation when the likelihood is flat in ``z_k``
*or* when ``q(z_k|x)`` is the prior).

**Models.** Anything with the VAE protocol of :mod:`lidvae_mini.models.vae` (``latent_dim``, ``check_x``,
``log_likelihood(x, z (S, B, K)) -> (S, B)``, ``sample_posterior``, ``encode_mean``, optional ``kl_per_dim``): the
VAE, β-VAE, LIDVAE and SA-VAE's refined view; :class:`lidvae_mini.models.mixture.MixtureVAE` (rows ``w1..wK`` for the
continuous latent, moved over its mixture prior, and ``y`` for the cluster, whose sensitivity uses the marginal
likelihood ``log p(x|y)`` by importance sampling with draws common to every ``y``,
:func:`cluster_log_likelihoods`); and a plain torch decoder plus encoder through
:class:`TorchModel`. The prior of a VAE's ``z`` is ``N(0, I)``.

**Cost**: ``N S (2K + 1)`` likelihood evaluations for ``N`` points, ``S = n_samples`` posterior draws and ``K``
dimensions (mixtures add two importance-sampling runs of ``C * iwae_samples`` draws per point), batched over points
and, in chunks of at most ``max_rows`` rows, over dimensions. Units: nats, per datapoint.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ._checks import check_batch, check_choice, check_int, check_positive
from .models.encoders import GaussianEncoder
from .evaluation.metrics import mean_and_standard_error

#: Verdicts, in the order of the chapter's legend.
VERDICTS = ("identifiable and used", "non-identifiable (model collapse)",
            "identifiable but unused (inference collapse)", "borderline")
#: KL_k below which q(z_k|x) counts as collapsed (nats per datapoint).
KL_THRESHOLD = 0.01
#: Threshold of the active-unit statistic Var_x E_q[z_k|x] (Burda et al. 2016; the paper's §4.1).
AU_THRESHOLD = 0.01
#: Standard errors by which the sensitivity must exceed zero to count as identifiable.
N_SE = 2.0
KL_METHODS = ("auto", "analytic", "moment")


def sensitivity_threshold(kl_threshold: float = KL_THRESHOLD) -> float:
    """``s* = sqrt(2 KL*)`` nats: the likelihood sensitivity whose exact conditional posterior has ``KL* `` nats of
    KL to the prior, to second order (``KL ~ Var(l) / 2``; see the module docstring). 0.141 nats for 0.01.

    Raises:
        ValueError/TypeError: ``kl_threshold`` not a positive number.
    """
    return math.sqrt(2.0 * check_positive(kl_threshold, "kl_threshold"))


@dataclass(frozen=True)
class Thresholds:
    """The thresholds of a :class:`Diagnosis`: ``kl`` (nats), ``au`` (variance of posterior means, z units),
    ``sensitivity`` (``s* = sqrt(2 kl)``, nats) and ``n_se`` (standard errors)."""

    kl: float = KL_THRESHOLD
    au: float = AU_THRESHOLD
    n_se: float = N_SE

    @property
    def sensitivity(self) -> float:
        return sensitivity_threshold(self.kl)


@dataclass
class Diagnosis:
    """Per-dimension result of :func:`diagnose` (arrays of length ``K``, or ``K + 1`` for a mixture's ``y``).

    Fields: ``names``; ``sensitivity`` ``s_k`` and its Monte Carlo standard error ``sensitivity_se`` (nats per
    datapoint); ``rec_drop`` (nats); ``kl`` (``KL_k``, nats per datapoint); ``au_variance`` (``Var_x E_q[z_k|x]``);
    booleans ``flat`` (sensitivity zero to floating-point precision: ``sqrt(mean_i |V_i|) <= 10 eps max(mean
    |log p(x|z)|, 1)`` over the points' ``V_i``, ``eps`` the machine epsilon of the model's dtype; Definition 2
    exactly; the absolute value because the cluster row's per-point estimates can fall below 0), ``identifiable``,
    ``active``, ``used``;
    ``verdict`` (strings of :data:`VERDICTS`); ``kl_se`` and ``au_variance_se`` (standard errors over the points);
    ``borderline`` (the verdict is withheld: a deciding statistic lies within its standard error of its
    threshold); ``thresholds``; ``kl_method`` (``"analytic"``, or ``"moment"``: the
    KL of the moment-matched Gaussian of each marginal, a lower bound); ``n_points``, ``n_samples``, ``model``.
    """

    names: list
    sensitivity: np.ndarray
    sensitivity_se: np.ndarray
    rec_drop: np.ndarray
    kl: np.ndarray
    au_variance: np.ndarray
    flat: np.ndarray
    identifiable: np.ndarray
    active: np.ndarray
    used: np.ndarray
    verdict: list
    thresholds: Thresholds = field(default_factory=Thresholds)
    kl_method: str = "analytic"
    n_points: int = 0
    n_samples: int = 0
    model: str = ""
    kl_se: np.ndarray = field(default_factory=lambda: np.zeros(0))
    au_variance_se: np.ndarray = field(default_factory=lambda: np.zeros(0))
    borderline: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def to_frame(self):
        """A :class:`pandas.DataFrame`, one row per latent dimension (index ``names``)."""
        import pandas as pd

        return pd.DataFrame({"sensitivity": self.sensitivity, "sensitivity_se": self.sensitivity_se,
                             "rec_drop": self.rec_drop, "KL": self.kl, "KL_se": self.kl_se,
                             "au_variance": self.au_variance, "au_variance_se": self.au_variance_se,
                             "flat": self.flat, "identifiable": self.identifiable, "active": self.active,
                             "used": self.used, "verdict": self.verdict},
                            index=pd.Index(self.names, name="latent"))

    def counts(self) -> dict:
        """``{verdict: number of dimensions}`` for every verdict of :data:`VERDICTS` (zeros included)."""
        return {v: sum(1 for w in self.verdict if w == v) for v in VERDICTS}

    def dims(self, verdict: str) -> list:
        """Names of the dimensions with ``verdict``.

        Raises:
            ValueError: ``verdict`` is not one of :data:`VERDICTS`.
        """
        check_choice(verdict, "verdict", VERDICTS)
        return [n for n, w in zip(self.names, self.verdict) if w == verdict]

    def to_dict(self) -> dict:
        """Plain lists and numbers (for ``metrics.json``)."""
        return {"names": list(self.names), "sensitivity": self.sensitivity.tolist(),
                "sensitivity_se": self.sensitivity_se.tolist(), "rec_drop": self.rec_drop.tolist(),
                "kl": self.kl.tolist(), "kl_se": self.kl_se.tolist(), "au_variance": self.au_variance.tolist(),
                "au_variance_se": self.au_variance_se.tolist(), "borderline": self.borderline.tolist(),
                "flat": self.flat.tolist(),
                "identifiable": self.identifiable.tolist(), "active": self.active.tolist(),
                "used": self.used.tolist(), "verdict": list(self.verdict), "counts": self.counts(),
                "thresholds": {"kl": self.thresholds.kl, "au": self.thresholds.au, "n_se": self.thresholds.n_se,
                               "sensitivity": self.thresholds.sensitivity},
                "kl_method": self.kl_method, "n_points": self.n_points, "n_samples": self.n_samples,
                "model": self.model}


# ------------------------------------------------------------------------------------------------ the adapter
class TorchModel:
    """Adapter: a plain torch decoder and encoder, diagnosable by :func:`diagnose` (prior ``z ~ N(0, I_K)``).

    Args:
        decoder: callable ``z (n, K) -> torch.distributions.Distribution`` over one datapoint per row, whose
            ``log_prob(x)`` for ``x`` of shape ``(n, D)`` is ``log p(x|z)`` per row, shape ``(n,)`` (an
            ``Independent`` distribution), or ``(n, D)``, which is summed over the trailing axes. Nats.
        encoder: either a callable ``x (B, D) -> (mu, logvar)`` of a diagonal Gaussian ``q(z|x)``, each ``(B, K)``
            (per-dimension KL analytic, means exact); or an object with ``sample(x, n)`` returning ``z`` of shape
            ``(n, B, K)`` (or a tuple whose first element is ``z``), and optionally ``mean(x)`` and
            ``kl_per_dim(x)``. Without ``mean`` the means for AU average ``mean_samples`` draws (noise variance
            ``Var q / mean_samples``, at most 0.002 for ``q`` no wider than the prior at 512 draws); without
            ``kl_per_dim`` the KL is that of moment-matched Gaussians (``kl="moment"`` in :func:`diagnose`).
        latent_dim: K.
        data_dim: D (checked when given).
        dtype, device: of the data the decoder expects (default: of the first parameter of ``decoder``/``encoder``
            when they are modules, else ``torch.get_default_dtype()`` on CPU).
        mean_samples: draws per datapoint for the means of a sampler without ``mean``.

    Raises:
        TypeError: ``decoder`` or ``encoder`` is not callable.
        ValueError: bad ``latent_dim``/``data_dim``/``mean_samples``.
    """

    def __init__(self, decoder, encoder, latent_dim: int, data_dim: int | None = None, dtype=None, device=None,
                 mean_samples: int = 512):
        if not callable(decoder):
            raise TypeError("decoder must be callable: z (n, K) -> torch.distributions.Distribution")
        if not (callable(encoder) or hasattr(encoder, "sample")):
            raise TypeError("encoder must be callable x -> (mu, logvar), or have sample(x, n)")
        self.decoder, self.encoder = decoder, encoder
        self.latent_dim = check_int(latent_dim, "latent_dim")
        self.data_dim = None if data_dim is None else check_int(data_dim, "data_dim")
        self.mean_samples = check_int(mean_samples, "mean_samples")
        self.kind = "sampler" if hasattr(encoder, "sample") else "gaussian"
        ref = None
        for mod in (decoder, encoder):
            if isinstance(mod, nn.Module):
                ref = next(iter(mod.parameters()), None)
                if ref is not None:
                    break
        self.dtype = dtype or (ref.dtype if ref is not None else torch.get_default_dtype())
        self.device = torch.device(device) if device is not None else (ref.device if ref is not None
                                                                         else torch.device("cpu"))
        self.has_analytic_kl = self.kind == "gaussian" or hasattr(encoder, "kl_per_dim")

    def __repr__(self) -> str:
        return f"TorchModel(latent_dim={self.latent_dim}, encoder={self.kind})"

    def _like(self) -> torch.Tensor:
        return torch.empty(0, dtype=self.dtype, device=self.device)

    def _dist(self, z: torch.Tensor):
        dist = self.decoder(z)
        if not isinstance(dist, torch.distributions.Distribution):
            raise TypeError(f"decoder must return a torch.distributions.Distribution, got {type(dist).__name__}")
        return dist

    def check_x(self, x, name: str = "x") -> torch.Tensor:
        """``x`` must be a finite floating tensor ``(B, D)`` of the adapter's dtype and device, inside the support
        of ``p(x|z)`` (e.g. binary for a Bernoulli decoder). Returns ``x``.

        Raises:
            TypeError: not a floating tensor of the right dtype; the decoder returns no Distribution.
            ValueError: wrong shape, NaN/inf, other device, or values outside the decoder's support.
        """
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            raise ValueError(f"{name} must be a 2-D tensor (B, D), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        check_batch(x, self.data_dim or x.shape[1], name, like=self._like())
        with torch.no_grad():
            dist = self._dist(torch.zeros(x.shape[0], self.latent_dim, dtype=self.dtype, device=self.device))
        try:
            ok = dist.support.check(x)
        except NotImplementedError:
            return x
        if not bool(torch.as_tensor(ok).all()):
            raise ValueError(f"{name} has values outside the support of the decoder's {type(dist).__name__} "
                             f"({dist.support}); e.g. a Bernoulli likelihood needs binary 0/1 data")
        return x

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x|z)`` in nats per datapoint: ``z`` (B, K) -> (B,), (S, B, K) -> (S, B)."""
        lead = z.shape[:-2]
        s = int(np.prod(lead)) if lead else 1
        b = x.shape[0]
        xs = x.expand(*lead, *x.shape).reshape(s * b, x.shape[1])
        lp = self._dist(z.reshape(s * b, self.latent_dim)).log_prob(xs)
        if lp.ndim > 1:
            lp = lp.reshape(s * b, -1).sum(-1)
        return lp.reshape(*lead, b)

    def _gaussian(self, x):
        out = self.encoder(x)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError("a Gaussian encoder must return (mu, logvar), each of shape (B, K)")
        mu, logvar = out
        if tuple(mu.shape) != (x.shape[0], self.latent_dim) or mu.shape != logvar.shape:
            raise ValueError(f"encoder output must be (mu, logvar) of shape ({x.shape[0]}, {self.latent_dim}), got "
                             f"{tuple(mu.shape)} and {tuple(logvar.shape)}")
        return mu, logvar

    def sample_posterior(self, x: torch.Tensor, n_samples: int = 1):
        """``z ~ q(z|x)``, shape (S, B, K), and ``None`` (no density needed here)."""
        n = check_int(n_samples, "n_samples")
        if self.kind == "gaussian":
            mu, logvar = self._gaussian(x)
            eps = torch.randn((n,) + tuple(mu.shape), dtype=mu.dtype, device=mu.device)
            return mu + torch.exp(0.5 * logvar) * eps, None
        out = self.encoder.sample(x, n)
        z = out[0] if isinstance(out, (tuple, list)) else out
        if tuple(z.shape) != (n, x.shape[0], self.latent_dim):
            raise ValueError(f"encoder.sample(x, {n}) must give z of shape ({n}, {x.shape[0]}, {self.latent_dim}), "
                             f"got {tuple(z.shape)}")
        return z, None

    def encode_mean(self, x: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        """``E_q[z|x]``, shape (B, K): exact for a Gaussian or a sampler with ``mean``; else a Monte Carlo mean."""
        if self.kind == "gaussian":
            return self._gaussian(x)[0]
        if hasattr(self.encoder, "mean"):
            return self.encoder.mean(x)
        return self.sample_posterior(x, self.mean_samples)[0].mean(0)

    def kl_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """``KL(q(z_k|x) || N(0, 1))`` per datapoint and dimension, (B, K), nats.

        Raises:
            TypeError: the encoder is a sampler without ``kl_per_dim``.
        """
        if self.kind == "gaussian":
            mu, logvar = self._gaussian(x)
            return 0.5 * (mu ** 2 + logvar.exp() - logvar - 1.0)
        if not hasattr(self.encoder, "kl_per_dim"):
            raise TypeError("this encoder has no kl_per_dim: use kl='moment'")
        return self.encoder.kl_per_dim(x)


def ppca_model(x, sigma: float, m: int = 2) -> TorchModel:
    """PPCA at its maximum likelihood loadings for a known noise sd, with its **exact** posterior, as a
    :class:`TorchModel` (float64): the truth against which :func:`diagnose` is checked (book chapter 2).

    ``W`` is :func:`lidvae_mini.exact.ppca.ml_estimate` ``(x, m, sigma)`` (principal axes, so ``W^T W`` is diagonal and the
    exact posterior ``N(cov W^T x / sigma^2, cov)``, ``cov = sigma^2 (sigma^2 I + W^T W)^{-1}``, factorises over the
    latents); decoder ``z -> N(W z, sigma^2 I_D)``; encoder ``x -> (posterior mean, log posterior variance)``. Its
    analytic per-dimension KL is :func:`lidvae_mini.exact.ppca.kl_to_prior` averaged over the data.

    Raises:
        ValueError: as :func:`lidvae_mini.exact.ppca.ml_estimate` (bad shapes, non-finite data, ``sigma <= 0``).
    """
    from .exact import ppca

    fit = ppca.ml_estimate(x, m, sigma=sigma)
    w = torch.as_tensor(np.array(fit.w), dtype=torch.float64)
    s = float(fit.sigma)
    _, cov = ppca.exact_posterior(np.asarray(x, dtype=float)[:1], fit.w, s)
    var = torch.as_tensor(np.diag(cov).copy(), dtype=torch.float64)
    gain = w * (var / s ** 2)                                    # (D, M): mean = x @ gain

    def decoder(z):
        return torch.distributions.Independent(torch.distributions.Normal(z @ w.T, s), 1)

    def encoder(xb):
        mean = xb @ gain
        return mean, torch.log(var).expand_as(mean)

    return TorchModel(decoder, encoder, latent_dim=w.shape[1], data_dim=w.shape[0], dtype=torch.float64)


# ------------------------------------------------------------------------------------- constructed collapses
class _PriorOnDims(GaussianEncoder):
    """A Gaussian encoder whose ``q(z_k|x)`` is the prior ``N(0, 1)`` on chosen dimensions (the rest unchanged)."""

    def __init__(self, base: GaussianEncoder, dims):
        nn.Module.__init__(self)
        self.base = base
        self.data_dim, self.latent_dim = base.data_dim, base.latent_dim
        ref = next(base.parameters())
        keep = torch.ones(base.latent_dim, dtype=ref.dtype, device=ref.device)
        keep[list(dims)] = 0.0
        self.register_buffer("keep", keep)

    def forward(self, x):
        mu, logvar = self.base(x)
        return mu * self.keep, logvar * self.keep


def _check_dims(dims, k: int) -> list:
    try:
        dims = [int(d) for d in dims]
    except TypeError:
        raise TypeError(f"dims must be a sequence of ints, got {dims!r}") from None
    if not dims or any(d < 0 or d >= k for d in dims) or len(set(dims)) != len(dims):
        raise ValueError(f"dims must be distinct indices in [0, {k - 1}], got {dims}")
    return dims


def with_ignored_latents(model, dims):
    """A copy of ``model`` whose decoder ignores the latent coordinates ``dims``: model collapse by construction.

    The weights from ``z_k`` (``k`` in ``dims``) into the first layer of the MLP decoder are set to zero, so
    ``p(x|z)`` does not depend on ``z_k`` at all (Definition 2); the encoder is unchanged.

    Raises:
        TypeError: the decoder has no ``first_layer`` (e.g. the LIDVAE's injective decoder, which cannot ignore a
            latent: Definition 3). ValueError: bad ``dims``.
    """
    if not hasattr(getattr(model, "decoder", None), "first_layer"):
        raise TypeError(f"{type(model).__name__}'s decoder has no first_layer to cut: need an MLPDecoder")
    dims = _check_dims(dims, model.latent_dim)
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.decoder.first_layer.weight[:, dims] = 0.0
    return out


def with_prior_posterior(model, dims):
    """A copy of ``model`` whose encoder gives ``q(z_k|x) = N(0, 1)`` for ``k`` in ``dims`` (every ``x``), while the
    decoder still uses ``z_k``: inference collapse by construction (``KL_k = 0``, AU variance 0).

    Raises:
        TypeError: the encoder is not a :class:`~lidvae_mini.models.encoders.GaussianEncoder`. ValueError: bad ``dims``.
    """
    if not isinstance(getattr(model, "encoder", None), GaussianEncoder):
        got = type(getattr(model, "encoder", None)).__name__
        raise TypeError(f"with_prior_posterior needs a GaussianEncoder, got {got}")
    dims = _check_dims(dims, model.latent_dim)
    out = copy.deepcopy(model)
    out.encoder = _PriorOnDims(out.encoder, dims)
    return out


# ------------------------------------------------------------------------------------------------ internals
_PROTOCOL = ("latent_dim", "check_x", "log_likelihood", "sample_posterior", "encode_mean")


def _is_mixture(model) -> bool:
    from .models.mixture import MixtureVAE

    return isinstance(model, MixtureVAE)


def _like(model) -> torch.Tensor:
    if isinstance(model, TorchModel):
        return model._like()
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p if p is not None else torch.empty(0)


def _moment_kl(z: torch.Tensor, prior_mu=0.0, prior_logvar=0.0) -> torch.Tensor:
    """KL of the moment-matched Gaussian of each marginal of ``z`` (S, B, K) to ``N(prior_mu, exp(prior_logvar))``,
    (B, K): a lower bound on the marginal KL (a Gaussian has the largest entropy for its variance)."""
    m = z.mean(0)
    v = z.var(0, unbiased=True).clamp_min(1e-12)
    pv = torch.exp(torch.as_tensor(prior_logvar, dtype=z.dtype, device=z.device))
    return 0.5 * (torch.log(pv) - torch.log(v) + (v + (m - prior_mu) ** 2) / pv - 1.0)


def _swap_eval(loglik, x, z, a, b, max_rows):
    """For every dimension k: ``l(z with z_k = a_k)`` and ``l(z with z_k = b_k)``, each (K, S, B)."""
    S, B, K = z.shape
    per = max(1, max_rows // max(1, S * B))
    la, lb = [], []
    for k0 in range(0, K, per):
        ks = torch.arange(k0, min(K, k0 + per), device=z.device)
        m = len(ks)
        za = z.unsqueeze(0).repeat(m, 1, 1, 1)
        zb = za.clone()
        idx = torch.arange(m, device=z.device)
        za[idx, :, :, ks] = a[:, :, ks].permute(2, 0, 1)
        zb[idx, :, :, ks] = b[:, :, ks].permute(2, 0, 1)
        la.append(loglik(x, za.reshape(m * S, B, K)).reshape(m, S, B))
        lb.append(loglik(x, zb.reshape(m * S, B, K)).reshape(m, S, B))
    return torch.cat(la), torch.cat(lb)


def _verdicts(s, se, kl, kl_se, au, au_se, significant, th: Thresholds) -> tuple[list, np.ndarray]:
    """The verdict of each dimension, and whether it is borderline.

    Each threshold decision is taken at the estimate and again one standard error either side of it. Where the
    decision that sets the verdict flips within that band (``s_k`` within ``SE(s_k)`` of ``s*``; for an identifiable
    dimension, ``KL_k`` or the AU statistic within their standard errors of ``KL*`` or ``AU*``), the data cannot
    tell the verdicts apart and the dimension is ``"borderline"`` instead. A dimension below ``n_se`` standard
    errors of zero, or flat, is non-identifiable whatever its estimate.
    """
    ident_hi, ident_lo = significant & (s + se >= th.sensitivity), significant & (s - se >= th.sensitivity)
    used_hi = (au + au_se >= th.au) & (kl + kl_se >= th.kl)
    used_lo = (au - au_se >= th.au) & (kl - kl_se >= th.kl)
    borderline = ident_hi & ~(ident_lo & (used_lo | ~used_hi))
    verdict = [VERDICTS[3] if b else VERDICTS[1] if not i else VERDICTS[0] if u else VERDICTS[2]
               for b, i, u in zip(borderline, ident_lo, used_lo)]
    return verdict, borderline


def _sens_stats(v_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``s = sqrt(mean V_i)`` and its delta-method standard error from per-point variances ``v_points`` (N, K)."""
    n = v_points.shape[0]
    v = v_points.mean(0)
    se_v = v_points.std(0, ddof=1) / math.sqrt(n)
    s = np.sqrt(np.clip(v, 0.0, None))
    denom = 2.0 * np.maximum(s, np.sqrt(se_v))
    se = np.divide(se_v, denom, out=np.zeros_like(se_v), where=denom > 0)
    return s, se


def _progress_bar(total, enabled, desc):
    from .models.loop import show_progress as _show_progress

    if not _show_progress(enabled):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="pt", leave=False)


def cluster_log_likelihoods(model, x: torch.Tensor, n_samples: int = 16) -> torch.Tensor:
    """``log p(x|y)`` for every cluster ``y`` of a :class:`~lidvae_mini.models.mixture.MixtureVAE`, (B, C), nats.

    Importance sampling with **one** proposal for every ``y``, the defensive mixture
    ``r(w|x) = (1/C) sum_c q(w|x, c)``, sampled stratified (``n_samples`` draws from each component, ``C n`` in all):

    .. math::

        \\hat p(x|y) = \\frac{1}{C n} \\sum_{c=1}^{C} \\sum_{i=1}^{n}
            \\frac{p(x|w_{ci})\\, p(w_{ci}|y)}{r(w_{ci}|x)}, \\qquad w_{ci} \\sim q(w|x, c),

    unbiased for ``p(x|y)`` (the stratified draws have density ``r`` on average). Every ``y`` reuses the same draws
    and weights, so the estimates differ between clusters only through ``p(w|y)``: clusters with identical priors
    get bitwise-identical estimates, and a cluster variable the likelihood cannot distinguish (Definition 2) gets
    no spread at all. Estimating each ``p(x|y)`` from its own proposal ``q(w|x, y)`` instead lets the proposals'
    different biases pass for a dependence of the model on ``y`` (an error of an earlier version of this module).

    Args:
        model: a :class:`~lidvae_mini.models.mixture.MixtureVAE`; x: (B, D) data it accepts; n_samples: draws per component.

    Raises:
        TypeError: not a mixture VAE. ValueError: bad ``x`` (as the model's ``check_x``) or ``n_samples``.
    """
    if not _is_mixture(model):
        raise TypeError(f"cluster_log_likelihoods needs a MixtureVAE, got {type(model).__name__}")
    n = check_int(n_samples, "n_samples")
    model.check_x(x)
    C, B, K = model.num_clusters, x.shape[0], model.latent_dim
    w, _ = model.encoder.sample(model._context(x), n)                                 # (n, C·B, K)
    w = w.reshape(n, C, B, K).transpose(0, 1).reshape(C * n, B, K)                     # (C·n, B, K)
    log_r = torch.logsumexp(torch.stack([model.encoder.log_prob(w, model._context(x, c)) for c in range(C)]), 0) \
        - math.log(C)                                                                  # (C·n, B)
    log_lik = model.log_likelihood(x, w)                                               # (C·n, B)
    log_prior = torch.stack([model.log_prior_w(w, y) for y in range(C)], -1)           # (C·n, B, C)
    return torch.logsumexp((log_lik - log_r).unsqueeze(-1) + log_prior, 0) - math.log(C * n)


def _pairwise_covariance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, the covariance over the columns of two estimates ``a``, ``b`` (B, C) of the same quantity,
    ``(1/C) sum_y (a_y - mean a)(b_y - mean b)``, written as ``(1 / 2C^2) sum_{y, y'} (a_y - a_y')(b_y - b_y')`` so
    that it is exactly 0 when a row of ``a`` is constant (a mean of equal floats need not equal them). (B,)."""
    da = a.unsqueeze(-1) - a.unsqueeze(-2)
    db = b.unsqueeze(-1) - b.unsqueeze(-2)
    return (da * db).sum((-1, -2)) / (2.0 * a.shape[-1] ** 2)


def _mixture_rows(model, xb, S, iwae_samples, max_rows, kl_method, kl_samples):
    """Per-point statistics of a MixtureVAE batch: v (B, K+1), drop (B, K+1), kl (B, K+1), flat scale."""
    C, K, B = model.num_clusters, model.latent_dim, xb.shape[0]
    log_probs = model.cluster_log_probs(xb)                                          # (B, C)
    probs = log_probs.exp()
    ctx = model._context(xb)                                                          # (C·B, D + C)
    w_all, _ = model.encoder.sample(ctx, S)
    w_all = w_all.reshape(S, C, B, K)
    ys = torch.distributions.Categorical(probs=probs).sample((S,))                    # (S, B)
    w = torch.gather(w_all, 1, ys[:, None, :, None].expand(S, 1, B, K)).squeeze(1)   # (S, B, K)
    base = model.log_likelihood(xb, w)
    mu_p, ls_p = model.prior_means, model.prior_log_scales                           # (C, K)
    kidx = torch.arange(K, device=xb.device)

    def prior_draw():
        yp = torch.randint(0, C, (S, B, K), device=xb.device)
        return mu_p[yp, kidx] + torch.exp(ls_p[yp, kidx]) * torch.randn(S, B, K, dtype=w.dtype, device=w.device)

    a, b = prior_draw(), prior_draw()
    la, lb = _swap_eval(model.log_likelihood, xb, w, a, b, max_rows)                  # (K, S, B)
    v_w = (0.5 * (la - lb) ** 2).mean(1).T
    drop_w = (base.unsqueeze(0) - 0.5 * (la + lb)).mean(1).T
    # KL per w dimension: sum_y q(y|x) KL(q(w_k|x,y) || p(w_k|y))
    if kl_method == "analytic":
        mu_q, lv_q = model.encoder(ctx)
        mu_q, lv_q = mu_q.reshape(C, B, K), lv_q.reshape(C, B, K)
        lv_p = 2.0 * ls_p[:, None, :]
        kl_cy = 0.5 * (lv_p - lv_q + (lv_q.exp() + (mu_q - mu_p[:, None, :]) ** 2) / lv_p.exp() - 1.0)
    else:
        w_kl = model.encoder.sample(ctx, kl_samples)[0].reshape(kl_samples, C, B, K)
        kl_cy = torch.stack([_moment_kl(w_kl[:, c], mu_p[c], 2.0 * ls_p[c]) for c in range(C)])
    kl_w = (probs.T[:, :, None] * kl_cy).sum(0)                                       # (B, K)
    # y: the spread of the marginal log p(x|y) over y ~ Cat(1/C), from two independent estimates A, B whose draws
    # are common to every y (so a y the likelihood cannot tell apart gets identical estimates: v_y = 0 exactly)
    A, Bm = (cluster_log_likelihoods(model, xb, iwae_samples) for _ in range(2))        # (B, C) each
    v_y = _pairwise_covariance(A, Bm)                                                # unbiased: noise cancels
    L = 0.5 * (A + Bm)
    drop_y = (probs * L).sum(1) - L.mean(1)
    kl_y = math.log(C) + (probs * log_probs).sum(1)
    v = torch.cat([v_w, v_y[:, None]], 1)
    drop = torch.cat([drop_w, drop_y[:, None]], 1)
    kl = torch.cat([kl_w, kl_y[:, None]], 1)
    return v, drop, kl, base.abs().mean(), probs


@torch.no_grad()
def diagnose(model, x, *, n_samples: int = 8, batch_size: int = 100, kl_threshold: float = KL_THRESHOLD,
             au_threshold: float = AU_THRESHOLD, n_se: float = N_SE, kl: str = "auto", kl_samples: int = 64,
             iwae_samples: int = 16, seed: int = 0, progress: bool | None = None, max_rows: int = 8192) -> Diagnosis:
    """Per latent dimension: likelihood sensitivity, KL, AU and a verdict on the cause of any collapse.

    Definition 2 measured directly (the module docstring has the estimator and the thresholds): for each of the
    ``N`` points, ``n_samples`` draws ``z ~ q(z|x)``; for each dimension ``k`` the coordinate ``z_k`` alone is
    replaced by two independent prior draws and ``log p(x|z)`` is evaluated at both.

    Args:
        model: a VAE-protocol model (:class:`lidvae_mini.models.vae.VAE`, :class:`~lidvae_mini.models.vae.LIDVAE`, a β-VAE, an
            SA-VAE's ``refined_view()``), a :class:`lidvae_mini.models.mixture.MixtureVAE`, or a :class:`TorchModel`.
        x: data ``(N, D)``, ``N >= 2``: a tensor of the model's dtype or an array (converted to it); binary for a
            Bernoulli likelihood. Use held-out data.
        n_samples: posterior draws per point (S).
        batch_size: points per batch.
        kl_threshold: ``KL*`` (nats); also sets ``s* = sqrt(2 KL*)``.
        au_threshold: AU threshold on ``Var_x E_q[z_k|x]`` (0.01 in the paper).
        n_se: standard errors by which ``s_k`` must exceed 0.
        kl: ``"auto"`` (analytic for a factorised Gaussian ``q``, else moment-matched), ``"analytic"`` or
            ``"moment"`` (KL of the moment-matched Gaussian of each marginal from ``kl_samples`` draws: a lower
            bound on ``KL_k``).
        kl_samples: draws per point for ``kl="moment"``.
        iwae_samples: importance samples per point and cluster component of the proposal shared by every ``y`` for
            a mixture's ``log p(x|y)`` (:func:`cluster_log_likelihoods`).
        seed: seeds every draw (the caller's torch RNG is restored).
        progress: tqdm bar over points; ``None``: only in interactive use, never when ``$TQDM_DISABLE`` is set.
        max_rows: most latent rows per likelihood call (memory only).

    Returns:
        :class:`Diagnosis` (``.to_frame()`` for a table); sensitivities, ``rec_drop`` and ``kl`` in nats per
        datapoint.

    Raises:
        TypeError: ``model`` lacks the protocol; ``x`` of another dtype, not numeric; ``kl="analytic"`` for a
            non-factorised ``q``.
        ValueError: ``x`` of the wrong shape, with NaN/inf, on another device, outside the likelihood's support
            (non-binary for a Bernoulli head), fewer than 2 points; unknown ``kl``; non-positive thresholds or sizes.

    Example:
        >>> import torch
        >>> from lidvae_mini.models.vae import build_vae
        >>> model = build_vae("lidvae", 6, 2, head="gaussian", seed=0)
        >>> d = diagnose(model, torch.randn(50, 6, generator=torch.Generator().manual_seed(0)), seed=0)
        >>> d.names, bool(d.flat.any())     # an injective decoder is flat in no latent dimension
        (['z1', 'z2'], False)

    Source: paper Definition 2, Theorem 1 (§2.1) and the AU/KL metrics of §4.1; the book's chapter 11.
    """
    mixture, x, th, kl_method = _checked_inputs(model, x, kl, kl_threshold, au_threshold, n_se)
    n_samples = check_int(n_samples, "n_samples")
    batch_size = check_int(batch_size, "batch_size")
    kl_samples = check_int(kl_samples, "kl_samples", minimum=2)
    iwae_samples = check_int(iwae_samples, "iwae_samples")
    max_rows = check_int(max_rows, "max_rows")
    seed = check_int(seed, "seed", minimum=0)
    N, K = x.shape[0], model.latent_dim
    names = [f"z{k + 1}" for k in range(K)] if not mixture else [f"w{k + 1}" for k in range(K)] + ["y"]

    # ---- compute, batched over points
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    like = _like(model)
    devices = [like.device.index or 0] if like.device.type == "cuda" else []
    rows, scale = [], 0.0
    bar = _progress_bar(N, progress, f"diagnose {type(model).__name__}")
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, N, batch_size):
                xb = x[start:start + batch_size]
                *batch, sc = _batch_rows(model, xb, mixture, n_samples, iwae_samples, max_rows, kl_method, kl_samples)
                rows.append([None if r is None else r.double().cpu() for r in batch])
                scale += float(sc) * xb.shape[0]
                if bar is not None:
                    bar.update(xb.shape[0])
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    v_pts, drop_pts, kl_pts, means, probs = (None if c[0] is None else torch.cat(c) for c in zip(*rows))
    return _diagnosis(v_pts, drop_pts, kl_pts, means, probs, scale / N, torch.finfo(like.dtype).eps, th,
                      names=names, kl_method=kl_method, n_points=N, n_samples=n_samples, model=type(model).__name__)


def _checked_inputs(model, x, kl, kl_threshold, au_threshold, n_se):
    """``diagnose``'s checks of the model, the data and the thresholds, before any compute. Returns ``(mixture,
    x as a tensor of the model's dtype, Thresholds, the KL method)``; raises as :func:`diagnose` states."""
    mixture = _is_mixture(model)
    if not mixture:
        missing = [a for a in _PROTOCOL if not hasattr(model, a)]
        if missing:
            raise TypeError(f"cannot diagnose a {type(model).__name__}: it lacks {', '.join(missing)} (wrap a plain "
                            f"decoder and encoder in lidvae_mini.diagnose.TorchModel)")
    th = Thresholds(kl=check_positive(kl_threshold, "kl_threshold"), au=check_positive(au_threshold, "au_threshold"),
                    n_se=float(n_se))
    if not (math.isfinite(th.n_se) and th.n_se >= 0):
        raise ValueError(f"n_se must be a finite number >= 0, got {n_se!r}")
    check_choice(kl, "kl method", KL_METHODS)
    enc = getattr(model, "encoder", None)
    factorised = (getattr(model, "has_analytic_kl", False) if isinstance(model, TorchModel)
                  else getattr(enc, "has_analytic_kl", False) and (mixture or hasattr(model, "kl_per_dim")))
    if kl == "analytic" and not factorised:
        raise TypeError(f"kl='analytic' needs a factorised Gaussian q(z|x); {type(model).__name__} has none "
                        f"(use kl='moment' or 'auto')")
    kl_method = "analytic" if (kl == "auto" and factorised) else ("moment" if kl == "auto" else kl)
    like = _like(model)
    if not isinstance(x, torch.Tensor):
        arr = np.asarray(x)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"x must be numeric, got dtype {arr.dtype}")
        x = torch.as_tensor(arr.astype(np.float64), dtype=like.dtype, device=like.device)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (N, D), got {tuple(x.shape)}")
    model.check_x(x)
    if x.shape[0] < 2:
        raise ValueError(f"diagnose needs at least 2 points (variances over x), got {x.shape[0]}")
    return mixture, x, th, kl_method


def _batch_rows(model, xb, mixture, n_samples, iwae_samples, max_rows, kl_method, kl_samples):
    """One batch of ``diagnose``: per point and row, the swap variance ``V`` and the reconstruction drop (each
    ``(B, rows)``), the per-dimension KL, the posterior means, ``q(y|x)`` (mixtures; else ``None``) and the mean
    ``|log p(x|z)|`` (the scale of the flatness test)."""
    if mixture:
        v, drop, klb, sc, probs = _mixture_rows(model, xb, n_samples, iwae_samples, max_rows, kl_method, kl_samples)
        return v, drop, klb, model.encode_mean(xb), probs, sc
    z = model.sample_posterior(xb, n_samples)[0].detach()
    base = model.log_likelihood(xb, z)                                  # (S, B)
    a, b = torch.randn_like(z), torch.randn_like(z)
    la, lb = _swap_eval(model.log_likelihood, xb, z, a, b, max_rows)     # (K, S, B)
    v = (0.5 * (la - lb) ** 2).mean(1).T
    drop = (base.unsqueeze(0) - 0.5 * (la + lb)).mean(1).T
    if kl_method == "analytic":
        klb = model.kl_per_dim(xb)
    else:
        klb = _moment_kl(model.sample_posterior(xb, kl_samples)[0].detach())
    return v, drop, klb, model.encode_mean(xb), None, base.abs().mean()


def _diagnosis(v_pts, drop_pts, kl_pts, means, probs, scale, eps, th, **info) -> Diagnosis:
    """The per-row statistics and verdicts of ``diagnose`` from its per-point float64 tensors (``(N, rows)``;
    ``probs``: ``q(y|x)`` ``(N, C)`` of a mixture, else ``None``; ``scale``: mean ``|log p(x|z)|``; ``eps``: the
    model dtype's machine epsilon)."""
    v_pts, rec_drop, kl_pts, centred = v_pts.numpy(), drop_pts.mean(0).numpy(), kl_pts.numpy(), means.numpy()
    if not np.all(np.isfinite(v_pts)):
        raise ValueError("the log-likelihood is not finite at some prior draws (a decoder that overflows?)")
    N = v_pts.shape[0]
    s, se = _sens_stats(v_pts)
    kl_k, kl_se = mean_and_standard_error(kl_pts)
    if probs is not None:   # the cluster row's AU statistic: the largest variance over clusters of q(y|x)
        probs = probs.numpy()
        centred = np.concatenate([centred, probs[:, [int(np.argmax(probs.var(0)))]]], 1)
    au_var, au_se = mean_and_standard_error((centred - centred.mean(0)) ** 2 * N / (N - 1))
    # flat: zero to floating-point precision, relative to the size of log p(x|z)
    # (on |V_i|: the cluster row's per-point estimates can be negative, and a negative mean is noise, not flatness)
    flat = np.sqrt(np.abs(v_pts).mean(0)) <= 10.0 * eps * max(scale, 1.0)
    significant = (s >= th.n_se * se) & ~flat
    identifiable = (s >= th.sensitivity) & significant
    active = au_var >= th.au
    used = active & (kl_k >= th.kl)
    verdict, borderline = _verdicts(s, se, kl_k, kl_se, au_var, au_se, significant, th)
    return Diagnosis(sensitivity=s, sensitivity_se=se, rec_drop=rec_drop, kl=kl_k, au_variance=au_var, flat=flat,
                     identifiable=identifiable, active=active, used=used, verdict=verdict, thresholds=th, kl_se=kl_se,
                     au_variance_se=au_se, borderline=borderline, **info)


# ------------------------------------------------------------------------------------------------ the figure
VERDICT_COLOURS = dict(zip(VERDICTS, ("tab:green", "tab:red", "tab:orange", "tab:grey")))


def plot_diagnosis(diag: Diagnosis, ax=None, title: str | None = None, annotate: bool = True):
    """Sensitivity ``s_k`` (x, with its standard error) against ``KL_k`` (y), one point per dimension coloured by
    verdict, with the thresholds ``s*`` (dashed) and ``KL*`` (dotted); symmetric-log axes, so exact zeros sit on the
    axes; the legend goes below the panel. Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        ax = plt.gca()
    lin = 1e-3
    for v in VERDICTS:
        idx = [i for i, w in enumerate(diag.verdict) if w == v]
        if idx:
            ax.errorbar(diag.sensitivity[idx], diag.kl[idx], xerr=diag.sensitivity_se[idx], fmt="o", ms=6,
                        color=VERDICT_COLOURS[v], label=f"{v} ({len(idx)})", capsize=2)
    if annotate:
        for i, name in enumerate(diag.names):
            ax.annotate(name, (diag.sensitivity[i], diag.kl[i]), fontsize=8, xytext=(3, 3),
                        textcoords="offset points")
    ax.axvline(diag.thresholds.sensitivity, color="grey", ls="--", lw=1)
    ax.axhline(diag.thresholds.kl, color="grey", ls=":", lw=1)
    ax.set_xscale("symlog", linthresh=lin)
    ax.set_yscale("symlog", linthresh=lin)
    top = max(float(np.max(diag.sensitivity + diag.sensitivity_se)), diag.thresholds.sensitivity)
    ax.set_xlim(0, 5 * top)
    ax.set_ylim(0, 5 * max(float(np.max(diag.kl)), diag.thresholds.kl))
    ax.set(xlabel="likelihood sensitivity $s_k$ (nats)", ylabel="$\\mathrm{KL}_k$ (nats)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    return ax
