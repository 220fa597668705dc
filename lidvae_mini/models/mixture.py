"""Mixture VAEs: the GMVAE, the β-GMVAE and the latent-identifiable LIDGMVAE (paper Example 1, §3.2, supplement C).

Generative model, per datapoint (``C`` clusters, ``K`` continuous latent dimensions, ``D`` data dimensions; the
paper's Example 1 writes K clusters and M latent dimensions)::

    y ~ Cat(1/C),    w | y ~ N(mu_y, diag sigma_y^2),    x | w ~ EF(eta(w)).

Two priors ``p(w|y)`` (argument ``prior``):

- ``"example1"``, the LIDGMVAE of the paper's Example 1 (Eq. 9; supplement Eq. 15): ``w | y ~ EF(beta_1^T y)``
  with a **fixed** zero-one ``beta_1`` (C x K, ones on the main diagonal, zeros elsewhere; full row rank, so it
  needs ``C <= K``), Gaussian as for the LIDGMVAE: ``mu_y = gamma * beta_1^T onehot(y) = gamma e_y`` and
  ``sigma_y = sigma`` for every cluster. ``beta_1`` is a registered buffer; ``gamma`` and ``sigma`` are fixed too
  (see :data:`EXAMPLE1_GAMMA`). Distinct clusters then have distinct priors by construction: ``y -> p(w|y)`` is
  injective, whatever is learned. This is the default of the ``"lidgmvae"`` kind of :func:`build_mixture_vae`.
- ``"learned"``: the per-cluster ``(mu_y, log sigma_y)`` are learned (as in the official code, where they are
  ``fc7``/``fc8`` of ``onehot(y)``; ``learn_prior=False`` freezes them at their distinct initial values). Two
  learned components can merge, and then ``y`` is not identifiable whatever the decoder. The default of the GMVAE
  kinds, and the named variant ``prior="learned"`` of the LIDGMVAE (the only one possible when ``C > K``, e.g.
  pinwheel: 5 clusters, ``K <= D = 2``).

The decoder ``eta`` is an :class:`~lidvae_mini.models.decoders.MLPDecoder` for the GMVAE (``depth`` hidden layers) or an
:class:`~lidvae_mini.models.decoders.InjectiveDecoder` ``g_2(beta^T g_1(w))`` for the LIDGMVAE (ICNNs with ``depth``
hidden layers; needs ``K <= D``). EF is Gaussian (pinwheel) or Bernoulli (binary images).

Variational family: ``q(y|x) = softmax(logits(x))`` (an MLP) and ``q(w|x, y)`` an encoder of
:mod:`lidvae_mini.models.encoders` (Gaussian or conditional RealNVP) applied to the context ``[x, onehot(y)]``.

Objective, per datapoint in nats, with ``y`` **summed exactly** (no sampling of the discrete latent)::

    ELBO(x) = sum_y q(y|x) [ E_{q(w|x,y)} ( log p(x|w) + log p(w|y) - log q(w|x,y) ) + log p(y) - log q(y|x) ]
            = rec - KL_w - KL_y,

``rec = sum_y q(y|x) E_q log p(x|w)``, ``KL_w = sum_y q(y|x) KL(q(w|x,y) || p(w|y))`` (Monte Carlo with the same
draws) and ``KL_y = KL(q(y|x) || Cat(1/C))`` (exact). The β-GMVAE trains on ``rec - β (KL_w + KL_y)`` (β = 0.2 in the
paper's tables); every reported ELBO is the β = 1 bound. The official code's defects (linear GMVAE decoder, an
"IW-NLL" that is not an IWAE, no MI, majority-vote accuracy only; the book's appendix *Errata of the reference
implementation*)
are avoided: :meth:`MixtureVAE.iwae_log_likelihood` is a per-datapoint IWAE with ``y`` enumerated, and
:func:`evaluate_mixture` reports AU, KL, MI and both accuracies with the chance level.

Model protocol shared with :func:`lidvae_mini.models.train.fit` / :func:`lidvae_mini.models.train.evaluate`: ``data_dim``,
``check_x(x)``, ``loss(x, n_samples) -> (scalar, parts)`` with ``parts["elbo"]``, ``parts["kl"]`` of shape ``(B,)``,
``elbo_parts``, ``encode_mean`` and ``iwae_log_likelihood(x, num_samples, chunk)``.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn

from .._checks import as_float_array, check_choice, check_int, check_positive
from .decoders import InjectiveDecoder, MLPDecoder, count_parameters, mlp_parameter_count
from .encoders import LOG_2PI, MEAN_SAMPLES, ConditionalRealNVP, make_encoder, mlp
from .vae import DecoderFacts

KINDS = ("gmvae", "lidgmvae", "beta_gmvae")
#: Priors ``p(w|y)``: the fixed zero-one ``beta_1`` of the paper's Example 1, or learned per-cluster Gaussians.
PRIORS = ("example1", "learned")
#: The fixed scale γ of the Example-1 cluster means ``gamma * e_y`` (with the prior scale ``sigma = 1``). Our choice:
#: the paper's Eq. (9) writes ``EF(w | beta_1^T y)`` (γ = 1) and the supplement ``Gaussian(y^T beta, gamma_theta)``
#: without giving the variance. Only γ/σ matters (the decoder can rescale w); γ = 3 puts any two cluster means
#: 3√2 ≈ 4.2 prior standard deviations apart (a Bayes error of Φ(-2.1) ≈ 1.7% between two clusters), so that
#: distinct clusters are distinct in practice and not only in principle. Fixed, not learned: a learned γ (or σ)
#: could shrink γ/σ towards 0 and make the clusters nearly non-identifiable again.
EXAMPLE1_GAMMA = 3.0
SUPPORTED_HEADS = ("bernoulli", "gaussian")
#: β of the β-GMVAE in the paper's comparisons (supplement Table 2).
PAPER_BETA = 0.2
#: Keys of :func:`evaluate_mixture` that the chapters report (``metrics.json``).
METRIC_KEYS = ("acc_hungarian", "acc_majority", "chance", "AU_y", "AU_w", "KL_y", "KL_w", "MI_y", "neg_elbo",
               "iwae_ll")


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of categorical rows, nats, (..., C) -> (...); 0 log 0 = 0. For values only: its gradient is NaN
    where a probability is exactly 0 (d/dp of p log p at 0); differentiate :func:`entropy_from_log_probs`."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def entropy_from_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy of categorical rows from their log-probabilities (e.g. ``log_softmax``), nats, (..., C) -> (...).

    Differentiable everywhere: where ``softmax`` underflows to exactly 0 (a confident ``q(y|x)`` in float32),
    ``p log p`` computed from probabilities has a 0/0 gradient, while ``exp(l) * l`` has the finite one.
    """
    return -(log_probs.exp() * log_probs).sum(-1)


def coupling_context_parts(enc: ConditionalRealNVP, h: torch.Tensor) -> list:
    """Per coupling of ``enc``: its first linear layer split into the part that reads ``w`` (hidden, K) and the
    part that reads the context, evaluated once per context row of ``h`` (M, hidden) (bias included)."""
    K = enc.latent_dim
    return [(layer.net[0].weight[:, :K], h @ layer.net[0].weight[:, K:].T + layer.net[0].bias)
            for layer in enc.couplings]


def flow_forward_split(enc: ConditionalRealNVP, u: torch.Tensor, parts: list) -> torch.Tensor:
    """``enc.flow(u, h)[0]`` for base points ``u`` (S, M, K) with the context parts of
    :func:`coupling_context_parts` (M rows): the same affine couplings, without concatenating the context to every
    draw (the context is usually much wider than ``w``)."""
    for layer, (w_z, ctx) in zip(enc.couplings, parts):
        raw_s, t = layer.net[1:]((u * layer.mask) @ w_z.T + ctx).chunk(2, dim=-1)
        free = 1.0 - layer.mask
        u = u * torch.exp(layer.scale * torch.tanh(raw_s) * free) + t * free
    return u


def flow_mean(enc: ConditionalRealNVP, x: torch.Tensor, n_samples: int = MEAN_SAMPLES, seed: int = 0) -> torch.Tensor:
    """:meth:`ConditionalRealNVP.mean` (the same common random numbers, the same chunks of 128 draws), computed
    with :func:`flow_forward_split`; equal up to floating-point rounding (tested), a few times faster for a mixture's
    ``C·B`` contexts. ``x`` (M, D + C) -> (M, K)."""
    mu, logvar, h = enc.base_params(x)
    parts = coupling_context_parts(enc, h)
    gen = torch.Generator(device=mu.device).manual_seed(check_int(seed, "seed", minimum=0))
    eps = torch.randn((n_samples, 1, enc.latent_dim), generator=gen, device=mu.device).to(mu.dtype)
    total = torch.zeros_like(mu)
    for chunk in eps.split(128):
        total = total + flow_forward_split(enc, mu + torch.exp(0.5 * logvar) * chunk, parts).sum(0)
    return total / n_samples


def example1_beta(num_clusters: int, latent_dim: int) -> torch.Tensor:
    """The fixed zero-one ``beta_1`` of the paper's Example 1 (Eq. 9; supplement Definition 4, Eq. 15), (C, K).

    Ones on the main diagonal, zeros elsewhere, so ``beta_1^T onehot(y) = e_y`` (the y-th unit vector of R^K) and
    distinct clusters get distinct, orthogonal means. Full row rank needs ``C <= K``.

    Raises:
        ValueError: ``num_clusters > latent_dim`` (naming both, and pointing at ``prior="learned"``).
    """
    C, K = check_int(num_clusters, "num_clusters"), check_int(latent_dim, "latent_dim")
    if C > K:
        raise ValueError(f"Example 1's fixed zero-one beta_1 needs num_clusters <= latent_dim (C distinct unit vectors "
                         f"in R^K), got num_clusters = {C} > latent_dim = {K}; use the learned-prior variant "
                         f"(prior='learned') or a latent_dim of at least {C}")
    return torch.eye(C, K, dtype=torch.get_default_dtype())


class MixtureVAE(DecoderFacts, nn.Module):
    """A mixture VAE ``p(y) p(w|y) p(x|w)`` with ``q(y|x) q(w|x,y)``; ``y`` is summed exactly everywhere.

    Args:
        cluster_net: module mapping ``x`` (B, D) to the logits of ``q(y|x)``, (B, C).
        encoder: ``q(w|x, y)``: an encoder of :mod:`lidvae_mini.models.encoders` with ``data_dim = D + C`` (it reads
            ``[x, onehot(y)]``) and ``latent_dim = K``.
        decoder: ``p(x|w)``: :class:`~lidvae_mini.models.decoders.MLPDecoder` (GMVAE) or
            :class:`~lidvae_mini.models.decoders.InjectiveDecoder` (LIDGMVAE), head ``"gaussian"`` or ``"bernoulli"``.
        num_clusters: C >= 2.
        beta: weight of ``KL_y + KL_w`` in the *training* loss (1 = GMVAE/LIDGMVAE, 0.2 = the paper's β-GMVAE).
        prior_means: (C, K) initial ``mu_y`` of the learned prior (default: C draws of N(0, I) from the global
            torch RNG); must be None for ``prior="example1"``.
        prior_log_scales: (C, K) ``log sigma_y`` (initial when learned; default 0).
        learn_prior: for ``prior="learned"``: train ``mu_y`` and ``log sigma_y`` (default, as the official code) or
            keep them fixed. ``prior="example1"`` learns nothing (None or False).
        prior: ``"learned"`` (default of this class) or ``"example1"`` (the paper's Example 1: ``mu_y = gamma *
            beta_1^T onehot(y)`` with the fixed zero-one ``beta_1`` of :func:`example1_beta`, registered as the buffer
            ``beta_1``; ``gamma`` and the scales fixed).
        gamma: the fixed scale of the Example-1 means (:data:`EXAMPLE1_GAMMA`); ignored for a learned prior.

    Attributes ``prior`` (the name), ``learn_prior``, ``prior_means`` and ``prior_log_scales`` (parameters or
    buffers), and for Example 1 the buffers ``beta_1`` (C, K) and ``prior_gamma`` (a scalar).

    Raises:
        ValueError: C < 2, sizes that disagree (encoder width ``D + C``, latent dims, prior shapes),
            unsupported head, ``beta <= 0``, unknown ``prior``; for Example 1: C > K, ``prior_means`` given,
            ``learn_prior=True``, ``gamma <= 0``.
    """

    def __init__(self, cluster_net: nn.Module, encoder: nn.Module, decoder: nn.Module, num_clusters: int,
                 beta: float = 1.0, prior_means=None, prior_log_scales=None, learn_prior: bool | None = None,
                 prior: str = "learned", gamma: float = EXAMPLE1_GAMMA):
        super().__init__()
        C = check_int(num_clusters, "num_clusters")
        if C < 2:
            raise ValueError(f"num_clusters must be >= 2 for a mixture, got {num_clusters!r}")
        check_choice(getattr(decoder, "head", None), "decoder head", SUPPORTED_HEADS)
        K, D = decoder.latent_dim, decoder.data_dim
        if getattr(encoder, "latent_dim", None) != K:
            raise ValueError(f"encoder latent_dim {getattr(encoder, 'latent_dim', None)} != decoder latent_dim {K}")
        if getattr(encoder, "data_dim", None) != D + C:
            raise ValueError(f"the encoder q(w|x, y) reads [x, onehot(y)]: its data_dim must be D + C = {D + C}, "
                             f"got {getattr(encoder, 'data_dim', None)}")
        self.num_clusters, self._latent_dim, self._data_dim = C, K, D
        self.cluster_net = cluster_net
        self.encoder = encoder
        self.decoder = decoder
        self.beta = check_positive(beta, "beta")
        self.kl_y_weight = 1.0     # the training loss's weight on KL_y; 1 is the ELBO (see set_kl_y_weight)
        self.prior = check_choice(prior, "prior", PRIORS)
        like = next(decoder.parameters())
        if self.prior == "example1":
            if prior_means is not None:
                raise ValueError("Example 1 fixes the cluster means at gamma * beta_1^T onehot(y): prior_means must be "
                                 "None (use prior='learned' to choose or learn them)")
            if learn_prior:
                raise ValueError("Example 1's prior is fixed (beta_1, gamma and the scales): learn_prior must be None "
                                 "or False (use prior='learned' to learn it)")
            beta_1 = example1_beta(C, K)
            gamma = check_positive(gamma, "gamma")
            means = gamma * beta_1
        else:
            means = torch.randn(C, K) if prior_means is None else torch.as_tensor(
                as_float_array(prior_means, "prior_means", shape=(C, K)))
        log_scales = torch.zeros(C, K) if prior_log_scales is None else torch.as_tensor(
            as_float_array(prior_log_scales, "prior_log_scales", shape=(C, K)))
        means, log_scales = means.to(like), log_scales.to(like)
        self.learn_prior = self.prior == "learned" and (learn_prior is None or bool(learn_prior))
        if self.prior == "example1":
            self.register_buffer("beta_1", beta_1.to(like))
            self.register_buffer("prior_gamma", torch.tensor(float(gamma)).to(like))
        if self.learn_prior:
            self.prior_means = nn.Parameter(means)
            self.prior_log_scales = nn.Parameter(log_scales)
        else:
            self.register_buffer("prior_means", means)
            self.register_buffer("prior_log_scales", log_scales)

    # -- basic facts --------------------------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        """K, the dimension of the continuous latent w."""
        return self._latent_dim

    @property
    def data_dim(self) -> int:
        return self._data_dim

    def extra_repr(self) -> str:
        return (f"num_clusters={self.num_clusters}, beta={self.beta}, prior={self.prior!r}, "
                f"learn_prior={self.learn_prior}, identifiable={self.identifiable}")

    @torch.no_grad()
    def prior_pairwise_kl(self) -> torch.Tensor:
        """``KL(p(w|y) || p(w|y'))`` for every pair of clusters, (C, C), nats (0 on the diagonal).

        ``y -> p(w|y)`` is injective exactly when every off-diagonal entry is positive: with Example 1's fixed
        ``beta_1`` each is ``gamma^2 / sigma^2`` (distinct unit vectors), whatever training does; a learned prior
        can drive an entry to 0 (two merged clusters, which no decoder can tell apart: Theorem 1).
        """
        mu, ls = self.prior_means.detach(), self.prior_log_scales.detach()
        var = torch.exp(2 * ls)
        # KL(N(mu_a, var_a) || N(mu_b, var_b)), summed over K, for every (a, b)
        diff = mu[None, :, :] - mu[:, None, :]                                    # (a, b, K): mu_b - mu_a
        kl = 0.5 * ((var[:, None, :] + diff ** 2) / var[None, :, :] - 1.0
                    + 2 * (ls[None, :, :] - ls[:, None, :])).sum(-1)
        return kl.fill_diagonal_(0.0)

    # -- the pieces ------------------------------------------------------------------------------------------
    def cluster_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log q(y|x), shape (B, C)."""
        self.check_x(x)
        return self.cluster_net(x)

    def cluster_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``q(y|x)``, shape (B, C), rows summing to 1."""
        return torch.softmax(self.cluster_logits(x), dim=-1)

    def cluster_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``log q(y|x)``, shape (B, C), by ``log_softmax`` (finite where ``q`` underflows to 0)."""
        return torch.log_softmax(self.cluster_logits(x), dim=-1)

    def _context(self, x: torch.Tensor, y: int | None = None) -> torch.Tensor:
        """``[x, onehot(y)]``: (B, D + C) for one cluster ``y``, or (C·B, D + C) for all, cluster-major."""
        C, B = self.num_clusters, x.shape[0]
        eye = torch.eye(C, dtype=x.dtype, device=x.device)
        if y is not None:
            return torch.cat([x, eye[y].expand(B, C)], dim=-1)
        xs = x.unsqueeze(0).expand(C, B, x.shape[1])
        return torch.cat([xs, eye[:, None, :].expand(C, B, C)], dim=-1).reshape(C * B, -1)

    def log_prior_w(self, w: torch.Tensor, y: int | torch.Tensor | None = None) -> torch.Tensor:
        """``log N(w; mu_y, diag sigma_y^2)`` in nats (summed over K).

        ``y`` an int: ``w`` (..., K) -> (...). ``y`` None: ``w`` (..., C, B, K) with cluster axis -3 -> (..., C, B).
        """
        if y is None:
            mu = self.prior_means[:, None, :]
            ls = self.prior_log_scales[:, None, :]
        else:
            mu, ls = self.prior_means[y], self.prior_log_scales[y]
        return -0.5 * (LOG_2PI + 2.0 * ls + ((w - mu) * torch.exp(-ls)) ** 2).sum(-1)

    def log_prior_mixture(self, w: torch.Tensor) -> torch.Tensor:
        """``log p(w) = log (1/C) sum_y N(w; mu_y, sigma_y^2)``, (..., K) -> (...), nats."""
        lp = torch.stack([self.log_prior_w(w, y) for y in range(self.num_clusters)], dim=-1)
        return torch.logsumexp(lp, dim=-1) - math.log(self.num_clusters)

    def log_likelihood(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``log p(x|w)`` in nats per datapoint; ``w`` (..., B, K) -> (..., B) (``x`` (B, D) broadcast)."""
        if w.ndim < 2 or w.shape[-2] != x.shape[0] or w.shape[-1] != self.latent_dim:
            raise ValueError(f"w must have shape (..., {x.shape[0]}, {self.latent_dim}), got {tuple(w.shape)}")
        lead = w.shape[:-2]
        n = int(np.prod(lead)) if lead else 1
        xs = x.expand(*lead, *x.shape).reshape(n * x.shape[0], x.shape[1])
        return self.decoder.log_prob(xs, w.reshape(-1, self.latent_dim)).reshape(*lead, x.shape[0])

    def log_joint(self, x: torch.Tensor, w: torch.Tensor, y: int) -> torch.Tensor:
        """``log p(x, w | y) = log p(x|w) + log p(w|y)`` in nats: w (S, B, K) -> (S, B) (the mixture IWAE's
        ``log_joint_fn``)."""
        return self.log_likelihood(x, w) + self.log_prior_w(w, y)

    def sample_posterior(self, x: torch.Tensor, y: int, n_samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised ``w ~ q(w|x, y)`` for one cluster ``y``: (S, B, K) and ``log q(w|x,y)`` (S, B)."""
        self.check_x(x)
        y = check_int(y, "y", minimum=0)
        if y >= self.num_clusters:
            raise ValueError(f"y must be in [0, {self.num_clusters - 1}], got {y}")
        return self.encoder.sample(self._context(x, y), n_samples)

    # -- objectives ------------------------------------------------------------------------------------------
    def elbo_parts(self, x: torch.Tensor, n_samples: int = 1) -> dict:
        """ELBO and its parts per datapoint, nats, each shape (B,), with y summed exactly.

        Returns ``{"elbo", "rec", "kl", "kl_y", "kl_w", "entropy_y"}``: ``kl = kl_y + kl_w``, ``elbo = rec - kl``,
        ``entropy_y = H(q(y|x))``; ``kl_w`` and ``rec`` are Monte Carlo with ``n_samples`` reparameterised
        draws of w per datapoint *and cluster*.
        """
        n_samples = check_int(n_samples, "n_samples")
        log_probs = self.cluster_log_probs(x)                                # (B, C); checks x
        probs = log_probs.exp()
        C, B, K = self.num_clusters, x.shape[0], self.latent_dim
        w, log_q = self.encoder.sample(self._context(x), n_samples)          # (S, C·B, K), (S, C·B)
        w, log_q = w.reshape(n_samples, C, B, K), log_q.reshape(n_samples, C, B)
        rec_cy = self.log_likelihood(x, w).mean(0)                           # (C, B)
        klw_cy = (log_q - self.log_prior_w(w)).mean(0)                       # (C, B)
        pt = probs.T
        rec = (pt * rec_cy).sum(0)
        kl_w = (pt * klw_cy).sum(0)
        ent = entropy_from_log_probs(log_probs)
        kl_y = math.log(C) - ent
        kl = kl_y + kl_w
        return {"elbo": rec - kl, "rec": rec, "kl": kl, "kl_y": kl_y, "kl_w": kl_w, "entropy_y": ent}

    def elbo(self, x: torch.Tensor, n_samples: int = 1) -> torch.Tensor:
        """The evidence lower bound per datapoint (β = 1 whatever ``beta``), shape (B,), nats."""
        return self.elbo_parts(x, n_samples)["elbo"]

    def loss(self, x: torch.Tensor, n_samples: int = 1) -> tuple[torch.Tensor, dict]:
        """Training objective: batch mean of ``-(rec - beta (lambda KL_y + KL_w))`` (a scalar), and
        :meth:`elbo_parts`; ``lambda`` is the attribute ``kl_y_weight`` (1 unless :meth:`set_kl_y_weight` changed
        it)."""
        parts = self.elbo_parts(x, n_samples)
        kl = self.kl_y_weight * parts["kl_y"] + parts["kl_w"]      # == parts["kl"] bit for bit at weight 1
        return -(parts["rec"] - self.beta * kl).mean(), parts

    def set_kl_y_weight(self, weight: float) -> None:
        """Set ``lambda``, the weight of ``KL_y = KL(q(y|x) || Cat(1/C))`` in :meth:`loss`, for a warm-up schedule
        (:func:`lidvae_mini.experiments.remedies.kl_y_warmup_weight`). The model and its ELBO (:meth:`elbo`, every metric)
        do not change; only the training objective does. Source: KL warm-up, Bowman et al. (2016) and
        Sønderby et al. (2016), here on the cluster term alone.

        Raises:
            ValueError: ``weight`` negative or not finite.
        """
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"kl_y weight must be a finite number >= 0, got {weight!r}")
        self.kl_y_weight = weight

    def kl_parts(self, x: torch.Tensor, n_samples: int = 16) -> dict:
        """``{"kl_y": (B,), "kl_w": (B,)}``: ``KL(q(y|x) || Cat(1/C))`` (exact) and
        ``sum_y q(y|x) KL(q(w|x,y) || p(w|y))`` (Monte Carlo, ``n_samples`` draws per cluster), nats."""
        parts = self.elbo_parts(x, n_samples)
        return {"kl_y": parts["kl_y"], "kl_w": parts["kl_w"]}

    def encode_mean(self, x: torch.Tensor, n_samples: int = MEAN_SAMPLES) -> torch.Tensor:
        """``E_q[w|x] = sum_y q(y|x) E_q[w|x, y]`` (after the flow), shape (B, K); AU_w is read off its variance.

        Exact for a Gaussian ``q(w|x,y)``, Monte Carlo for the RealNVP (``n_samples`` base draws, the same for every datapoint and cluster, so a
        collapsed coordinate has variance exactly 0 across x: :meth:`ConditionalRealNVP.mean`).
        """
        probs = self.cluster_probs(x)
        C, B = self.num_clusters, x.shape[0]
        if type(self.encoder) is ConditionalRealNVP:
            m = flow_mean(self.encoder, self._context(x), n_samples=check_int(n_samples, "n_samples"))
        else:
            m = self.encoder.mean(self._context(x), n_samples=n_samples)
        return (probs.T[:, :, None] * m.reshape(C, B, self.latent_dim)).sum(0)

    def iwae_log_likelihood(self, x: torch.Tensor, num_samples: int = 100, chunk: int = 100,
                            seed: int | None = None) -> torch.Tensor:
        """Per-datapoint IWAE estimate of ``log p(x)`` with y summed exactly, (B,) float64, nats.

        ``log p(x) ~ logsumexp_y [log p(y) + log (1/S) sum_s p(x, w_s|y) / q(w_s|x,y)]``, ``w_s ~ q(w|x,y)``
        (:func:`lidvae_mini.evaluation.metrics.iwae_log_likelihood_mixture`; ``C·S`` decoder passes per point).
        """
        from ..evaluation.metrics import iwae_log_likelihood_mixture

        self.check_x(x)
        with torch.no_grad():
            return iwae_log_likelihood_mixture(self.log_joint, self.sample_posterior, x, self.num_clusters,
                                               num_samples=check_int(num_samples, "num_samples"),
                                               chunk=check_int(chunk, "chunk"), seed=seed)

    @torch.no_grad()
    def model_cluster_posterior(self, x: torch.Tensor, num_samples: int = 2000, seed: int | None = 0) -> torch.Tensor:
        """The *model's* posterior ``p(y|x)`` (not ``q``), (B, C), by self-normalised importance sampling.

        The same draws ``w_s ~ p(w)`` (the prior mixture) serve every cluster:
        ``p(y|x) ∝ sum_s p(x|w_s) p(w_s|y) / p(w_s)``. With identical cluster priors every ratio
        ``p(w_s|y) / p(w_s)`` is 1, so ``p(y|x) = 1/C`` exactly, as Theorem 1 says for a y that the likelihood
        ``p(x|y)`` cannot distinguish. Consistent as ``num_samples`` grows; ``seed`` isolates the RNG.
        """
        self.check_x(x)
        num_samples = check_int(num_samples, "num_samples")
        like = self._like()
        C, B = self.num_clusters, x.shape[0]
        with torch.random.fork_rng(devices=[like.device.index or 0] if like.device.type == "cuda" else [],
                                   enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(check_int(seed, "seed", minimum=0))
            comp = torch.randint(C, (num_samples,), device=like.device)
            eps = torch.randn(num_samples, self.latent_dim, dtype=like.dtype, device=like.device)
        w = self.prior_means[comp] + torch.exp(self.prior_log_scales[comp]) * eps     # (S, K)
        log_ratio = torch.stack([self.log_prior_w(w, y) for y in range(C)], 0) - self.log_prior_mixture(w)  # (C, S)
        out = []
        for b in range(B):
            ll = self.decoder.log_prob(x[b:b + 1].expand(num_samples, -1), w)      # (S,)
            out.append(torch.logsumexp(ll[None, :] + log_ratio, dim=1))            # (C,)
        return torch.softmax(torch.stack(out, 0), dim=-1)

    # -- generation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws ``(x, y)`` from the model: x (n, D) (likelihood mean, or a draw when ``mean=False``),
        y (n,) int64."""
        n = check_int(n, "n")
        like = self._like()
        with torch.random.fork_rng(devices=[like.device.index or 0] if like.device.type == "cuda" else [],
                                   enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(check_int(seed, "seed", minimum=0))
            y = torch.randint(self.num_clusters, (n,), device=like.device)
            w = self.prior_means[y] + torch.exp(self.prior_log_scales[y]) * torch.randn(
                n, self.latent_dim, dtype=like.dtype, device=like.device)
            dist = self.decoder.distribution(w)
            x = dist.mean if mean else dist.sample()
        return x, y


def _matched_mlp(target: int, latent_dim: int, data_dim: int, depth: int, head: str, learn_scale: bool,
                 rtol: float = 0.1) -> tuple[tuple[int, ...], bool]:
    """Equal widths ``(h,) * depth`` whose MLP decoder parameter count is closest to ``target``; and whether
    it is within ``rtol``."""
    def count(h):
        return mlp_parameter_count(latent_dim, data_dim, (h,) * depth, head, learn_scale)

    lo, hi = 1, 1
    while count(hi) < target and hi < 2 ** 20:
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    h = min((lo, hi), key=lambda w: abs(count(w) - target))
    return (h,) * depth, abs(count(h) - target) <= rtol * target


def default_prior_means(num_clusters: int, latent_dim: int, radius: float = 2.0) -> torch.Tensor:
    """Distinct initial cluster means, (C, K): C points evenly spaced on a circle of ``radius`` in the first two
    coordinates (on a line for K = 1), so that no two clusters start with the same prior."""
    C, K = check_int(num_clusters, "num_clusters"), check_int(latent_dim, "latent_dim")
    angles = 2.0 * math.pi * torch.arange(C, dtype=torch.float64) / C
    means = torch.zeros(C, K, dtype=torch.float64)
    if K == 1:
        means[:, 0] = torch.linspace(-radius, radius, C, dtype=torch.float64)
    else:
        means[:, 0], means[:, 1] = radius * torch.cos(angles), radius * torch.sin(angles)
    return means.to(torch.get_default_dtype())


def build_mixture_vae(kind: str, data_dim: int, latent_dim: int, num_clusters: int, head: str = "gaussian",
                      depth: int = 2, *, encoder: str = "realnvp", encoder_hidden=(64, 64), cluster_hidden=(64, 64),
                      icnn_width: int = 32, hidden1=None, hidden2=None, alpha: float = 0.1, mlp_hidden=None,
                      beta: float | None = None, learn_scale: bool = True, fixed_scale=None, prior: str | None = None,
                      gamma: float = EXAMPLE1_GAMMA, learn_prior: bool | None = None,
                      prior_init: str = "circle", prior_radius: float = 2.0, prior_scale: float = 1.0,
                      seed: int | None = None,
                      encoder_kwargs: dict | None = None, decoder_kwargs: dict | None = None,
                      mlp_kwargs: dict | None = None) -> MixtureVAE:
    """Build a GMVAE (``"gmvae"``), a β-GMVAE (``"beta_gmvae"``, β = 0.2) or an LIDGMVAE (``"lidgmvae"``).

    The LIDGMVAE is, by default, the paper's Example 1 (``prior="example1"``): fixed cluster means
    ``gamma * beta_1^T onehot(y)`` with the zero-one ``beta_1`` (needs ``C <= K``), so ``y -> p(w|y)`` is injective.
    Its learned-prior variant, ``prior="learned"``, learns ``mu_y, sigma_y`` as the official code does (and as the
    GMVAE kinds do by default). ``prior`` applies to every kind, so the four models of the 2 x 2 ablation
    {learned, Example 1} x {MLP, injective decoder} are ``build_mixture_vae(kind, ..., prior=p)`` for ``kind`` in
    ``("gmvae", "lidgmvae")`` and ``p`` in :data:`PRIORS`.

    The LIDGMVAE decoder is ``InjectiveDecoder(K, D, hidden1, hidden2, head, alpha)`` with, by default,
    ``hidden1 = hidden2 = (icnn_width,) * depth``. The GMVAE decoders are MLPs with ``depth`` equal hidden layers
    whose width makes their parameter count closest to that injective decoder's; if no width comes within 10%
    (possible for ``depth = 1`` with few parameters) a ``UserWarning`` says so and the closest is used. The
    attribute ``model.size_match`` records ``{"decoder_params", "reference_params", "within_10pct"}``. All kinds
    get the same encoder and cluster network initialisation for the same ``seed`` (built first).

    Args:
        kind: ``"gmvae"``, ``"lidgmvae"`` or ``"beta_gmvae"``.
        data_dim, latent_dim, num_clusters: D, K (the LIDGMVAE needs K <= D), C >= 2.
        head: ``"gaussian"`` (pinwheel) or ``"bernoulli"`` (binary images).
        depth: hidden layers of the generative network (MLP layers, or ICNN layers of both Brenier maps):
            the generator-depth axis of Figure 1(c, d).
        encoder: ``"realnvp"`` (the paper's two-layer RealNVP, conditioned on ``[x, onehot(y)]``) or ``"gaussian"``.
        encoder_hidden, cluster_hidden: MLP sizes of q(w|x,y) and of the logits of q(y|x).
        icnn_width, hidden1, hidden2, alpha: the injective decoder (widths of g_1 and g_2; strong monotonicity).
        mlp_hidden: explicit hidden sizes of the GMVAE decoder (skips the size matching).
        beta: KL weight; default 0.2 (:data:`PAPER_BETA`) for ``"beta_gmvae"`` and 1 otherwise.
        learn_scale, fixed_scale: the Gaussian head's per-dimension scale (learned, or fixed).
        prior: ``"example1"`` or ``"learned"`` (:data:`PRIORS`); None: ``"example1"`` for ``"lidgmvae"``,
            ``"learned"`` for the GMVAE kinds.
        gamma: the fixed scale of the Example-1 means (:data:`EXAMPLE1_GAMMA`; not learned).
        learn_prior: for the learned prior: learn ``mu_y, sigma_y`` (None or True, default) or keep them at their
            initial values (False). Example 1 learns nothing (None or False).
        prior_init: ``"circle"`` (:func:`default_prior_means` with ``prior_radius``) or ``"random"``
            (N(0, I) draws) for the initial ``mu_y`` of the learned prior (unused by Example 1).
        prior_scale: ``sigma_y`` of every cluster and coordinate (initial value when learned; the fixed ``sigma``
            of Example 1).
        seed: initialise under ``torch.manual_seed(seed)`` (the caller's RNG is left untouched).
        encoder_kwargs, decoder_kwargs, mlp_kwargs: extra arguments of the encoder, the injective decoder and
            the MLP decoder.

    Example:
        >>> model = build_mixture_vae("lidgmvae", 12, 4, 3, "gaussian", encoder="gaussian", seed=0)
        >>> model.identifiable, model.num_clusters, model.size_match["within_10pct"]
        (True, 3, True)

    Raises:
        ValueError: unknown ``kind``/``encoder``/``head``/``prior``/``prior_init``, C < 2, K > D for an LIDGMVAE,
            C > K for Example 1 (the message names both and points at ``prior="learned"``), ``learn_prior=True``
            with Example 1.
    """
    check_choice(kind, "model kind", KINDS)
    prior = ("example1" if kind == "lidgmvae" else "learned") if prior is None else check_choice(prior, "prior", PRIORS)
    check_choice(encoder, "encoder", ("gaussian", "realnvp"))
    check_choice(head, "head", SUPPORTED_HEADS)
    check_choice(prior_init, "prior_init", ("circle", "random"))
    D, K = check_int(data_dim, "data_dim"), check_int(latent_dim, "latent_dim")
    C = check_int(num_clusters, "num_clusters")
    if C < 2:
        raise ValueError(f"num_clusters must be >= 2 for a mixture, got {num_clusters!r}")
    depth, icnn_width = check_int(depth, "depth"), check_int(icnn_width, "icnn_width")
    if kind == "lidgmvae" and K > D:
        raise ValueError(f"an LIDGMVAE needs latent_dim K = {K} <= data_dim D = {D} (injective beta^T)")
    if prior == "example1":
        example1_beta(C, K)                                   # C <= K, checked before any network is built
        if learn_prior:
            raise ValueError("Example 1's prior is fixed: learn_prior must be None or False (or use prior='learned')")
    beta = check_positive((PAPER_BETA if kind == "beta_gmvae" else 1.0) if beta is None else beta, "beta")
    hidden1, hidden2 = ((icnn_width,) * depth if h is None else h for h in (hidden1, hidden2))
    head_kw = dict(head=head, learn_scale=learn_scale, fixed_scale=fixed_scale)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(check_int(seed, "seed", minimum=0))
        cluster_net = mlp(D, cluster_hidden, C)
        enc = make_encoder(encoder, D + C, K, hidden=encoder_hidden, **dict(encoder_kwargs or {}))
        means = (default_prior_means(C, K, check_positive(prior_radius, "prior_radius")) if prior_init == "circle"
                 else torch.randn(C, K))
        dec, match = _mixture_decoder(kind, K, D, depth, hidden1, hidden2, alpha, head_kw, mlp_hidden,
                                      dict(decoder_kwargs or {}), dict(mlp_kwargs or {}))
        log_scales = torch.full((C, K), math.log(check_positive(prior_scale, "prior_scale")))
        if prior == "example1":
            model = MixtureVAE(cluster_net, enc, dec, C, beta=beta, prior_log_scales=log_scales, prior="example1",
                               gamma=gamma)
        else:
            model = MixtureVAE(cluster_net, enc, dec, C, beta=beta, prior_means=means,
                               prior_log_scales=log_scales, learn_prior=learn_prior, prior="learned")
    model.kind, model.size_match = kind, match
    return model


def _mixture_decoder(kind, K, D, depth, hidden1, hidden2, alpha, head_kw, mlp_hidden, decoder_kwargs, mlp_kwargs):
    """The decoder of :func:`build_mixture_vae` and its size match (``(decoder, {"decoder_params",
    "reference_params", "within_10pct"})``): the injective decoder for ``"lidgmvae"``, else an MLP with
    ``mlp_hidden`` or, when it is None, the ``depth``-layer width closest in parameters to that injective decoder
    (a ``UserWarning`` when none is within 10%). The injective decoder is built in both cases, so every kind draws
    the same random numbers before its decoder."""
    # the reference size: the injective decoder with these widths (its count does not need K <= D)
    ref = InjectiveDecoder(min(K, D), D, hidden1, hidden2, alpha=alpha, **head_kw, **decoder_kwargs)
    n_ref = count_parameters(ref)
    if kind == "lidgmvae":
        return ref, {"decoder_params": n_ref, "reference_params": n_ref, "within_10pct": True}
    if mlp_hidden is None:
        scale_learned = head_kw["head"] == "gaussian" and head_kw["fixed_scale"] is None and head_kw["learn_scale"]
        mlp_hidden, ok = _matched_mlp(n_ref, K, D, depth, head_kw["head"], scale_learned)
        if not ok:
            warnings.warn(f"no MLP decoder with {depth} hidden layer(s) is within 10% of the injective "
                          f"decoder's {n_ref} parameters; using the closest, width {mlp_hidden[0]}",
                          UserWarning, stacklevel=3)
    dec = MLPDecoder(K, D, mlp_hidden, **head_kw, **mlp_kwargs)
    n_dec = count_parameters(dec)
    return dec, {"decoder_params": n_dec, "reference_params": n_ref, "within_10pct": abs(n_dec - n_ref) <= 0.1 * n_ref}


@torch.no_grad()
def evaluate_mixture(model: MixtureVAE, x, labels=None, *, batch_size: int = 1000, n_samples: int = 1,
                     mean_samples: int = MEAN_SAMPLES, iwae_samples: int = 100, seed: int | None = None) -> dict:
    """Held-out metrics of a :class:`MixtureVAE` on the whole of ``x`` (no replacement), nats per datapoint.

    Returns a dict with

    - ``neg_elbo``, ``rec`` (``-E_q log p(x|w)``), ``KL_y`` (``KL(q(y|x) || Cat(1/C))``, exact), ``KL_w``
      (``sum_y q(y|x) KL(q(w|x,y) || p(w|y))``, Monte Carlo with ``n_samples`` draws), ``entropy_y``
      (mean ``H(q(y|x))``); ``neg_elbo = rec + KL_y + KL_w``;
    - ``MI_y``: ``I_q(x; y) = H(mean_x q(y|x)) - mean_x H(q(y|x))``, exact over the evaluation set (in
      ``[0, log C]``; ``<= KL_y``);
    - ``AU_y`` / ``AU_y_fraction``: ``#{y : Var_x q(y|x) >= 0.01}`` and its fraction of C; ``AU_w`` /
      ``AU_w_fraction``: the same on ``E_q[w|x]`` (:meth:`MixtureVAE.encode_mean`, ``mean_samples`` draws);
    - ``iwae_ll`` (when ``iwae_samples > 0``): mean IWAE log-likelihood, y summed exactly;
    - with ``labels`` (N,): ``acc_hungarian``, ``acc_majority``, ``chance`` (largest class frequency) and
      ``clusters_used`` from ``argmax_y q(y|x)`` (:func:`lidvae_mini.evaluation.metrics.cluster_accuracy`); ``acc_soft``,
      the expected accuracy when ``y ~ q(y|x)`` instead of the argmax, under the same Hungarian map (an argmax of a
      nearly uniform q(y|x) can still sort points well: ``acc_soft`` is then near 1/C); and ``pred`` (N,), the
      argmax clusters as a list;
    - ``cluster_marginal``: ``mean_x q(y|x)``, (C,) list.

    ``seed``: draws run under ``torch.manual_seed(seed)`` and the caller's RNG is restored.

    Raises:
        TypeError/ValueError: ``x`` not (N, D) finite numbers (binary for a Bernoulli model), labels of another
            length, N < 2.
    """
    from ..evaluation.metrics import active_units, cluster_accuracy

    batch_size = check_int(batch_size, "batch_size")
    n_samples = check_int(n_samples, "n_samples")
    mean_samples = check_int(mean_samples, "mean_samples")
    iwae_samples = check_int(iwae_samples, "iwae_samples", minimum=0)
    like = model._like()
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = torch.as_tensor(as_float_array(x, "x", shape=(None, model.data_dim)), dtype=like.dtype)
    N = x.shape[0]
    if N < 2:
        raise ValueError(f"evaluate_mixture needs at least 2 datapoints, got {N}")
    if labels is not None:
        labels = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels.shape != (N,):
            raise ValueError(f"labels must have shape ({N},), got {labels.shape}")
    model.check_x(x[: min(N, 10_000)].to(like.device))
    was_training = model.training
    model.eval()
    tot = {"neg_elbo": 0.0, "rec": 0.0, "KL_y": 0.0, "KL_w": 0.0, "entropy_y": 0.0, "iwae_ll": 0.0}
    probs, means = [], []
    devices = [like.device.index or 0] if like.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(check_int(seed, "seed", minimum=0))
            for start in range(0, N, batch_size):
                xb = x[start:start + batch_size].to(like.device)
                parts = model.elbo_parts(xb, n_samples=n_samples)
                tot["neg_elbo"] -= float(parts["elbo"].sum())
                tot["rec"] -= float(parts["rec"].sum())
                tot["KL_y"] += float(parts["kl_y"].sum())
                tot["KL_w"] += float(parts["kl_w"].sum())
                tot["entropy_y"] += float(parts["entropy_y"].sum())
                probs.append(model.cluster_probs(xb).double().cpu())
                means.append(model.encode_mean(xb, n_samples=mean_samples).double().cpu())
                if iwae_samples:
                    tot["iwae_ll"] += float(model.iwae_log_likelihood(xb, num_samples=iwae_samples,
                                                                      chunk=min(iwae_samples, 100)).sum())
    finally:
        model.train(was_training)
    out = {k: v / N for k, v in tot.items()}
    if not iwae_samples:
        del out["iwae_ll"]
    q = torch.cat(probs)
    marginal = q.mean(0)
    out["MI_y"] = max(float(_entropy(marginal) - _entropy(q).mean()), 0.0)
    out["cluster_marginal"] = marginal.tolist()
    au_y = active_units(q)
    out["AU_y"], out["AU_y_fraction"] = int(au_y["count"]), float(au_y["fraction"])
    au_w = active_units(torch.cat(means))
    out["AU_w"], out["AU_w_fraction"] = int(au_w["count"]), float(au_w["fraction"])
    if labels is not None:
        pred = q.argmax(1).numpy()
        acc = cluster_accuracy(pred, labels, num_clusters=model.num_clusters)
        hmap = torch.as_tensor(acc["hungarian_map"])
        lab = torch.as_tensor(labels.astype(np.int64))
        # expected accuracy when y is drawn from q(y|x), under the Hungarian map fitted to the argmax
        soft = (q * (hmap[None, :] == lab[:, None])).sum(1).mean()
        out.update(acc_hungarian=acc["hungarian"], acc_majority=acc["majority"], acc_soft=float(soft),
                   chance=acc["chance"], clusters_used=acc["clusters_used"], pred=pred.tolist())
    return out
