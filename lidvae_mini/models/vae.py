"""The VAE, the β-VAE and the latent-identifiable VAE (LIDVAE) as one model class (PyTorch).

Generative model (paper Eq. 1 and Definition 3, Eq. 7): ``z ~ N(0, I_K)``, ``x | z ~ EF(x | eta(z))``, where
``eta`` is the decoder: an MLP ``f_theta`` for the classical VAE, or the injective
``g_2(beta^T g_1(z))`` of Brenier maps for the LIDVAE (:class:`lidvae_mini.models.decoders.InjectiveDecoder`).
Inference is identical for both (paper §3.2): an amortised ``q(z|x)`` (:mod:`lidvae_mini.models.encoders`) and the
evidence lower bound, per datapoint, in nats,

.. math::

    \\mathrm{ELBO}(x) = \\mathbb{E}_{q(z|x)}[\\log p(x|z)] - \\mathrm{KL}(q(z|x)\\,\\|\\,p(z)) \\le \\log p(x).

The β-VAE (Higgins et al. 2017; β = 0.2 in the paper's comparisons) trains on ``E_q log p(x|z) - β KL``;
its reported ELBO is still the β = 1 bound. So :class:`VAE` is parameterised by its decoder (and β), and
:func:`build_vae` builds the three models of the chapter with decoders of matched size.

Methods used by the metrics (:mod:`lidvae_mini.evaluation.metrics`): :meth:`VAE.encode_mean` (AU),
:meth:`VAE.sample_posterior` and :meth:`VAE.log_joint` (``metrics.iwae_log_likelihood``), :meth:`VAE.kl_per_dim`; :meth:`VAE.latent_sensitivity` measures Definition 2 directly.
"""
from __future__ import annotations

import torch
from torch import nn

from .._checks import check_choice, check_data, check_int, check_positive
from .decoders import (InjectiveDecoder, MLPDecoder, book_decoder, count_parameters, decoder_variant,
                       matched_mlp_hidden)
from .encoders import MEAN_SAMPLES, make_encoder, standard_normal_log_prob

KINDS = ("vae", "lidvae", "beta_vae")
SUPPORTED_HEADS = ("bernoulli", "gaussian")
#: β of the β-VAE in the paper's comparisons (Tables 1 and 2).
PAPER_BETA = 0.2


def check_encoder_decoder(encoder: nn.Module, decoder: nn.Module) -> None:
    """Check that ``encoder`` and ``decoder`` agree on ``latent_dim`` and ``data_dim`` and that the decoder's head
    is one of ``SUPPORTED_HEADS`` (Bernoulli or Gaussian).

    Raises:
        ValueError: they disagree, or the head is not supported.
    """
    for attr in ("latent_dim", "data_dim"):
        if getattr(encoder, attr, None) != getattr(decoder, attr, None):
            raise ValueError(f"encoder and decoder disagree on {attr}: {getattr(encoder, attr, None)} vs "
                             f"{getattr(decoder, attr, None)}")
    check_choice(getattr(decoder, "head", None), "decoder head", SUPPORTED_HEADS)


class DecoderFacts:
    """What a latent variable model knows from its ``decoder`` alone (shared by :class:`VAE` and
    :class:`lidvae_mini.models.mixture.MixtureVAE`): the likelihood head, whether the decoder is injective in the
    latent variable (Definition 3), and the check of a data batch. Needs ``self.decoder`` and ``self.data_dim``.
    """

    @property
    def head(self) -> str:
        return self.decoder.head

    @property
    def identifiable(self) -> bool:
        """True when the decoder is injective in its latent input (an :class:`InjectiveDecoder`): LIDVAE/LIDGMVAE."""
        return isinstance(self.decoder, InjectiveDecoder)

    def _like(self) -> torch.Tensor:
        return next(self.decoder.parameters())

    def check_x(self, x, name: str = "x") -> torch.Tensor:
        """Validate a data batch: a finite floating tensor ``(B, D)`` of the model's dtype and device; binary
        for the Bernoulli head. Returns ``x``.

        Raises:
            TypeError: not a tensor, not floating point, or another dtype than the parameters.
            ValueError: wrong shape, NaN/inf, other device, or non-binary data for a Bernoulli decoder.
        """
        return check_data(x, self.data_dim, self.head, name, like=self._like())


class EncoderFacts:
    """The sizes a single-latent model reads from its ``encoder`` (shared by :class:`VAE` and
    :class:`lidvae_mini.models.avae.AVAE`): ``latent_dim`` (K) and ``data_dim`` (D). Needs ``self.encoder``."""

    @property
    def latent_dim(self) -> int:
        return self.encoder.latent_dim

    @property
    def data_dim(self) -> int:
        return self.encoder.data_dim


class VAE(EncoderFacts, DecoderFacts, nn.Module):
    """A VAE ``p(z) p(x|z)`` with prior ``N(0, I)``, decoder ``p(x|z)`` and encoder ``q(z|x)``.

    Args:
        encoder: a :class:`~lidvae_mini.models.encoders.GaussianEncoder` or
            :class:`~lidvae_mini.models.encoders.ConditionalRealNVP` (anything with ``sample``, ``log_prob``, ``mean``).
        decoder: an :class:`~lidvae_mini.models.decoders.MLPDecoder` (classical VAE) or an
            :class:`~lidvae_mini.models.decoders.InjectiveDecoder` (LIDVAE), head ``"bernoulli"`` or ``"gaussian"``.
        beta: weight of the KL term in the *training* objective (1 = VAE/LIDVAE, 0.2 = the paper's β-VAE).

    Raises:
        ValueError: encoder and decoder disagree on ``latent_dim``/``data_dim``, unsupported head, ``beta <= 0``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, beta: float = 1.0):
        super().__init__()
        check_encoder_decoder(encoder, decoder)
        self.encoder = encoder
        self.decoder = decoder
        self.beta = check_positive(beta, "beta")

    # -- basic facts --------------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return f"beta={self.beta}, identifiable={self.identifiable}"

    # -- densities ------------------------------------------------------------------------------------------
    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """``log N(z; 0, I)`` in nats, summed over the K dimensions: (..., K) -> (...)."""
        return standard_normal_log_prob(z)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x|z)`` in nats per datapoint: ``z`` (B, K) -> (B,), or (S, B, K) -> (S, B)."""
        if z.ndim == 2:
            return self.decoder.log_prob(x, z)
        if z.ndim != 3 or z.shape[1] != x.shape[0]:
            raise ValueError(f"z must have shape (B, K) or (S, B, K) with B = {x.shape[0]}, got {tuple(z.shape)}")
        s, b, k = z.shape
        xs = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, x.shape[1])
        return self.decoder.log_prob(xs, z.reshape(s * b, k)).reshape(s, b)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x, z) = log p(x|z) + log p(z)`` in nats: (B, K) -> (B,), (S, B, K) -> (S, B).

        With :meth:`sample_posterior` it is what :func:`lidvae_mini.evaluation.metrics.iwae_log_likelihood` needs.
        """
        return self.log_likelihood(x, z) + self.log_prior(z)

    def sample_posterior(self, x: torch.Tensor, n_samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised ``z ~ q(z|x)``, shape (S, B, K), and ``log q(z|x)``, shape (S, B) (nats)."""
        self.check_x(x)
        return self.encoder.sample(x, n_samples)

    def encode_mean(self, x: torch.Tensor, n_samples: int = MEAN_SAMPLES) -> torch.Tensor:
        """Posterior means ``E_q[z|x]``, shape (B, K): exact for a Gaussian encoder, a Monte Carlo average of
        ``n_samples`` draws, common to all datapoints, for the RealNVP encoder
        (:meth:`~lidvae_mini.models.encoders.ConditionalRealNVP.mean`). Their variance over x defines the active units."""
        self.check_x(x)
        return self.encoder.mean(x, n_samples=n_samples)

    def kl_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Analytic ``KL(q(z_k|x) || N(0, 1))`` per datapoint and latent dimension, shape (B, K), nats.

        Only for a factorised (Gaussian) encoder; the sum over k is the KL term of the ELBO.

        Raises:
            TypeError: the encoder is not factorised (e.g. RealNVP): use :meth:`elbo_parts` for the total KL.
        """
        if not getattr(self.encoder, "has_analytic_kl", False):
            raise TypeError(f"{type(self.encoder).__name__} has no per-dimension KL (q(z|x) is not factorised)")
        self.check_x(x)
        return self.encoder.kl_per_dim(x)

    # -- objectives ----------------------------------------------------------------------------------------
    def elbo_parts(self, x: torch.Tensor, n_samples: int = 1) -> dict:
        """ELBO and its parts per datapoint, nats, each shape (B,).

        ``rec = mean_s log p(x|z_s)`` with ``z_s ~ q(z|x)`` (reparameterised); ``kl`` is analytic for a
        Gaussian encoder and ``mean_s [log q(z_s|x) - log p(z_s)]`` (same draws) otherwise;
        ``elbo = rec - kl``. Returns ``{"elbo", "rec", "kl"}``.

        The encoder network runs once: an encoder with ``sample_with_kl`` (the
        :class:`~lidvae_mini.models.encoders.GaussianEncoder`) gives the draws and the analytic KL from one pass; an
        analytic-KL encoder without it gets a second pass through its ``kl_per_dim``.
        """
        n_samples = check_int(n_samples, "n_samples")
        self.check_x(x)
        if getattr(self.encoder, "has_analytic_kl", False):
            one_pass = getattr(self.encoder, "sample_with_kl", None)
            if one_pass is not None:
                z, _, kl_dims = one_pass(x, n_samples)
            else:
                z = self.encoder.sample(x, n_samples)[0]
                kl_dims = self.encoder.kl_per_dim(x)
            kl = kl_dims.sum(-1)
            rec = self.log_likelihood(x, z).mean(0)
        else:
            z, log_q = self.encoder.sample(x, n_samples)
            rec = self.log_likelihood(x, z).mean(0)
            kl = (log_q - self.log_prior(z)).mean(0)
        return {"elbo": rec - kl, "rec": rec, "kl": kl}

    def elbo(self, x: torch.Tensor, n_samples: int = 1) -> torch.Tensor:
        """The evidence lower bound per datapoint (β = 1 whatever ``beta``), shape (B,), nats."""
        return self.elbo_parts(x, n_samples)["elbo"]

    def loss(self, x: torch.Tensor, n_samples: int = 1) -> tuple[torch.Tensor, dict]:
        """Training objective: the batch mean of ``-(rec - beta * kl)`` (a scalar), and :meth:`elbo_parts`."""
        parts = self.elbo_parts(x, n_samples)
        return -(parts["rec"] - self.beta * parts["kl"]).mean(), parts

    # -- how much the likelihood depends on each latent -------------------------------------------------------
    @torch.no_grad()
    def latent_sensitivity(self, step: float = 0.5, n_samples: int = 1000, seed: int = 0) -> torch.Tensor:
        """How distinguishable the likelihood makes latents ``step`` apart along each coordinate, shape (K,), nats.

        ``S_k = E_{z ~ N(0, I)} KL(p(x | z) || p(x | z + step * e_k))`` (the decoder's
        ``latent_sensitivity``: float64, from the logits or means, summed over the D coordinates). ``S_k = 0`` means moving ``z_k`` does not change
        the likelihood at all: ``z_k`` is non-identifiable (paper Definition 2) and, by Theorem 1, its posterior
        collapses. For small steps ``S_k ~ step^2 I_k / 2`` with ``I_k`` the Fisher information; unlike a
        derivative, ``S_k`` stays finite for the paper's leaky-ReLU ICNNs, whose Brenier maps jump across kinks.
        For an LIDVAE with a Gaussian head, ``S_k >= alpha^4 step^2 / (2 max_d sigma_d^2)`` (strong monotonicity).
        The draws of z use ``seed`` and leave the caller's RNG untouched.
        """
        return self.decoder.latent_sensitivity(step, n_samples, seed)

    # -- generation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        """``n`` draws from the model: ``z ~ N(0, I)``, then the likelihood mean (``mean=True``: Bernoulli
        probabilities or Gaussian means) or a draw from ``p(x|z)``; shape (n, D)."""
        n = check_int(n, "n")
        like = self._like()
        z = torch.randn(n, self.latent_dim, dtype=like.dtype, device=like.device)
        dist = self.decoder.distribution(z)
        return dist.mean if mean else dist.sample()


class LIDVAE(VAE):
    """The latent-identifiable VAE (paper Definition 3): a :class:`VAE` whose decoder is an
    :class:`~lidvae_mini.models.decoders.InjectiveDecoder`. Nothing else differs (paper §3.2).

    Raises:
        TypeError: ``decoder`` is not injective.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, beta: float = 1.0):
        if not isinstance(decoder, InjectiveDecoder):
            raise TypeError(f"an LIDVAE needs an InjectiveDecoder, got {type(decoder).__name__}")
        super().__init__(encoder, decoder, beta)


def build_vae(kind: str, data_dim: int, latent_dim: int, head: str = "bernoulli", encoder: str = "gaussian", *,
              encoder_hidden=(256,), hidden1=(64, 64), hidden2=(128, 128), alpha: float = 0.1,
              mlp_layers: int = 2, mlp_hidden=None, beta: float | None = None, learn_scale: bool = True,
              fixed_scale=None, seed: int | None = None, encoder_kwargs: dict | None = None,
              decoder_kwargs: dict | None = None, mlp_kwargs: dict | None = None, decoder: str | None = None) -> VAE:
    """Build one of the chapter's models, with decoders of matched size.

    ``"lidvae"``: :class:`LIDVAE` with ``InjectiveDecoder(latent_dim, data_dim, hidden1, hidden2, head, alpha)`` in the
    construction ``decoder`` (:data:`~lidvae_mini.models.decoders.DECODER_VARIANTS`; default the book's,
    :func:`~lidvae_mini.models.decoders.book_decoder`: for K < D a learned full-rank beta with g_2 initialised for K inputs,
    for K = D the paper's ``"fixed"`` zero-one beta, then the identity); ``"vae"`` and ``"beta_vae"``: :class:`VAE` with an
    :class:`~lidvae_mini.models.decoders.MLPDecoder` of ``mlp_layers`` equal hidden layers whose width is chosen
    (:func:`~lidvae_mini.models.decoders.matched_mlp_hidden`) so that its parameter count is within 10% of the paper's
    injective decoder of these sizes (unless ``mlp_hidden`` is given; a learned beta adds its K x D weights).

    Args:
        kind: ``"vae"``, ``"lidvae"`` or ``"beta_vae"``.
        data_dim, latent_dim: D and K (the LIDVAE needs K <= D).
        head: ``"bernoulli"`` (binary images) or ``"gaussian"`` (pinwheel).
        encoder: ``"gaussian"`` or ``"realnvp"`` (the paper's two-layer RealNVP family).
        encoder_hidden: hidden sizes of the encoder MLP.
        hidden1, hidden2: ICNN widths of g_1 (R^K) and g_2 (R^D); they also set the size of the matched MLP.
        alpha: strong-monotonicity constant of both Brenier maps.
        mlp_layers, mlp_hidden: depth of the matched MLP decoder, or explicit hidden sizes.
        beta: KL weight; default 0.2 (:data:`PAPER_BETA`) for ``"beta_vae"`` and 1 otherwise.
        learn_scale, fixed_scale: Gaussian head's scale (learned per dimension, or fixed).
        seed: if given, parameters are initialised under ``torch.manual_seed(seed)`` (caller's RNG untouched);
            the encoder is built first, so the same seed gives the three kinds the same encoder.
        encoder_kwargs: extra arguments of the encoder class (e.g. ``activation``, ``n_layers``).
        decoder_kwargs: extra arguments of :class:`~lidvae_mini.models.decoders.InjectiveDecoder` (e.g. ``grad_mode``), over
            those of ``decoder``; for the VAE kinds they shape the size reference.
        mlp_kwargs: extra arguments of :class:`~lidvae_mini.models.decoders.MLPDecoder` (e.g. ``activation``).
        decoder: the LIDVAE's construction (see above); None is the book's default. Only for ``"lidvae"``.

    Example:
        >>> model = build_vae("lidvae", data_dim=12, latent_dim=4, head="gaussian", seed=0)
        >>> type(model).__name__, model.identifiable, model.latent_dim
        ('LIDVAE', True, 4)
        >>> build_vae("vae", 12, 4, head="gaussian", seed=0).identifiable   # an MLP decoder
        False

    Raises:
        ValueError: unknown ``kind``/``encoder``/``head``/``decoder``, ``decoder`` for a VAE kind, K > D for an
            LIDVAE, no MLP within 10%.
    """
    check_choice(kind, "model kind", KINDS)
    check_choice(encoder, "encoder", ("gaussian", "realnvp"))
    check_choice(head, "head", SUPPORTED_HEADS)
    data_dim = check_int(data_dim, "data_dim")
    latent_dim = check_int(latent_dim, "latent_dim")
    if beta is None:
        beta = PAPER_BETA if kind == "beta_vae" else 1.0
    beta = check_positive(beta, "beta")
    enc_kw = dict(encoder_kwargs or {})
    if decoder is not None and kind != "lidvae":
        raise ValueError(f"decoder={decoder!r} chooses the LIDVAE's construction; kind {kind!r} has an MLP decoder")
    dec_kw = dict(decoder_kwargs or {})
    if kind == "lidvae":
        name = book_decoder(latent_dim, data_dim) if decoder is None else decoder
        dec_kw = {**decoder_variant(name, latent_dim), **dec_kw}
    mlp_kw = dict(mlp_kwargs or {})
    head_kw = dict(head=head, learn_scale=learn_scale, fixed_scale=fixed_scale)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(check_int(seed, "seed", minimum=0))
        enc = make_encoder(encoder, data_dim, latent_dim, hidden=encoder_hidden, **enc_kw)
        injective = InjectiveDecoder(latent_dim, data_dim, hidden1, hidden2, alpha=alpha, **head_kw, **dec_kw)
        if kind == "lidvae":
            return LIDVAE(enc, injective, beta=beta)
        if mlp_hidden is None:
            scale_learned = head == "gaussian" and fixed_scale is None and learn_scale
            mlp_hidden = matched_mlp_hidden(count_parameters(injective), latent_dim, data_dim, n_layers=mlp_layers,
                                            head=head, learn_scale=scale_learned)
        dec = MLPDecoder(latent_dim, data_dim, mlp_hidden, **head_kw, **mlp_kw)
        return VAE(enc, dec, beta=beta)

