"""Sequential VAEs for text: LSTM encoder, the sequential VAE decoder (He et al. 2019) and the LIDSVAE decoder
(paper Example 2; supplement Eqs. 14-20), one ELBO, their training and the text metrics.

Sentences are ``(B, T)`` LongTensors ``<s> w_1 ... w_n </s>`` of equal length (see
:func:`lidvae_mini.data.text.length_batches`); the decoders predict tokens ``1..T-1`` from tokens ``0..T-2``
(teacher forcing), so a sentence has ``T - 1`` predicted tokens, ``</s>`` included.

**Injectivity of the LIDSVAE decoder.** The paper's proof of Proposition 3 ends with "the exponential family
likelihood is injective". A categorical distribution is *not* injective in ``V`` free logits: ``eta`` and
``eta + c·1`` give the same distribution. :class:`LIDSDecoder` therefore uses the minimal parameterisation
(``construction="minimal"``): the logit of token 0 (``<pad>``, never a target) is fixed at 0 and ``g_2`` acts on
``R^{V-1}``; then ``log p_j - log p_0 = eta_j`` recovers ``eta`` from the distribution, and ``z -> eta`` is
injective (strongly monotone Brenier maps, a ``beta_2`` of full rank: the paper's zero-one padding or a learned
:class:`~lidvae_mini.models.decoders.FullRankLift`), so ``z -> p(x_t | z, x_<t)`` is injective for every history. ``construction="naive"`` (``V`` free logits, as the official code) is kept to show the gap:
:class:`QuadraticBrenierMap` gives a valid Brenier map under which two different ``z`` give the same distribution.

:func:`fit_text` trains through the book's one loop (:func:`lidvae_mini.models.loop.train_loop`, as
:class:`TextMethod`: batches of varying shapes in a seeded order), with its guarantees (explicit seed, checkpoint and
resume bitwise, the NaN guard, clipping over all parameters, the epoch of the lowest validation loss kept on
request). The text baselines reuse :mod:`lidvae_mini.models.baselines`: SA-VAE through
:func:`~lidvae_mini.models.baselines.svi_refine` (:func:`sa_text_loss`), the lagging VAE through
:func:`~lidvae_mini.models.baselines.encoder_inner_loop` (``fit_text(..., aggressive=True)``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .._checks import check_choice, check_int, check_positive
from .brenier import BrenierMap
from ..data.text import BOS, EOS, PAD, UNK
from .decoders import BETAS, FullRankLift, decoder_variant
from .baselines import encoder_inner_loop, gaussian_kl, svi_refine
from .loop import BestState, Method, NonFiniteLossError, train_loop, update  # noqa: F401  (raised by fit_text)
from ..evaluation.metrics import (active_units, iwae_log_likelihood, kl_gaussian_standard_per_dim, mutual_information,
                                  mutual_information_report)

CONSTRUCTIONS = ("minimal", "naive")
LOG_2PI = math.log(2 * math.pi)


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of ``module`` (buffers such as ``beta_2`` excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------------- encoder
class LSTMEncoder(nn.Module):
    """Gaussian q(z | x) from the last hidden state of an LSTM over the whole sentence.

    Args: vocab_size V, embed_dim, hidden H, latent_dim K, num_layers (the supplement: two).
    ``forward(x)``: ``(B, T)`` long -> ``(mu, logvar)``, each ``(B, K)``.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, latent_dim: int, num_layers: int = 2):
        super().__init__()
        self.latent_dim = check_int(latent_dim, "latent_dim")
        self.embed = nn.Embedding(check_int(vocab_size, "vocab_size"), check_int(embed_dim, "embed_dim"))
        self.lstm = nn.LSTM(embed_dim, check_int(hidden, "hidden"), num_layers=check_int(num_layers, "num_layers"),
                            batch_first=True)
        self.head = nn.Linear(hidden, 2 * latent_dim)

    def forward(self, x: torch.Tensor):
        _, (h, _) = self.lstm(self.embed(x))
        mu, logvar = self.head(h[-1]).chunk(2, -1)
        return mu, logvar


# ------------------------------------------------------------------------------------------------ decoders
class _Decoder(nn.Module):
    """Shared interface: ``token_log_probs(x, z)`` ``(B, T) x (S, B, K) -> (S, B, T-1)``, ``log_prob`` and ancestral
    ``sample(z, max_len)``; subclasses give ``_logits(z_flat, x_in)`` ``-> (N, T', V)`` and one-step decoding."""

    def token_log_probs(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x_t | z, x_<t) for t = 1..T-1, nats, ``(S, B, T-1)``; ``z`` is ``(B, K)`` or ``(S, B, K)``."""
        if z.dim() == 2:
            z = z.unsqueeze(0)
        S, B, K = z.shape
        if x.dim() != 2 or x.shape[0] != B or K != self.latent_dim:
            raise ValueError(f"x must be (B, T) and z (S, B, {self.latent_dim}); got {tuple(x.shape)} and "
                             f"{tuple(z.shape)}")
        xs = x.unsqueeze(0).expand(S, B, x.shape[1]).reshape(S * B, -1)
        logits = self._logits(z.reshape(S * B, K), xs[:, :-1])
        lp = torch.log_softmax(logits, -1).gather(-1, xs[:, 1:].unsqueeze(-1)).squeeze(-1)
        return lp.view(S, B, -1)

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) = sum of :meth:`token_log_probs` over tokens, nats: ``(S, B)`` for ``z`` ``(S, B, K)``,
        ``(B,)`` for ``z`` ``(B, K)`` (the protocol of :func:`lidvae_mini.models.baselines.svi_refine`)."""
        lp = self.token_log_probs(x, z).sum(-1)
        return lp[0] if z.dim() == 2 else lp

    @torch.no_grad()
    def sample(self, z: torch.Tensor, max_len: int = 20, greedy: bool = False,
               generator: torch.Generator | None = None, banned=(PAD,)) -> torch.Tensor:
        """Token ids ``(N, max_len + 2)`` starting with ``<s>``, decoded from ``z`` ``(N, K)``; after ``</s>``
        the rest is ``<pad>``. ``greedy``: argmax at each step, else ancestral sampling; ``banned`` token ids get
        probability 0 (``<pad>`` always; e.g. also ``<unk>`` for display)."""
        n = z.shape[0]
        tok = torch.full((n,), BOS, dtype=torch.long, device=z.device)
        out, done = [tok], torch.zeros(n, dtype=torch.bool, device=z.device)
        state = self._init_state(z)
        for _ in range(max_len + 1):
            logits, state = self._step(z, tok, state)
            logits[:, list(banned)] = -float("inf")
            tok = logits.argmax(-1) if greedy else torch.multinomial(torch.softmax(logits, -1), 1,
                                                                       generator=generator)[:, 0]
            tok = torch.where(done, torch.full_like(tok, PAD), tok)
            out.append(tok)
            done = done | (tok == EOS)
            if bool(done.all()):
                break
        return torch.stack(out, 1)


class SequentialDecoder(_Decoder):
    """The sequential VAE's decoder (He et al. 2019): an LSTM language model that sees ``z`` at every step (``z``
    concatenated to each input embedding) and starts from ``c_0 = W z``, ``h_0 = tanh(c_0)``; logits
    ``W_out h_t + b``. Paper Eq. 19 with an arbitrary ``g``."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, latent_dim: int, num_layers: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.vocab_size, self.latent_dim = check_int(vocab_size, "vocab_size"), check_int(latent_dim, "latent_dim")
        self.hidden, self.num_layers = check_int(hidden, "hidden"), check_int(num_layers, "num_layers")
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim + latent_dim, hidden, num_layers=num_layers, batch_first=True)
        self.init = nn.Linear(latent_dim, hidden * num_layers)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab_size)

    def _init_state(self, z):
        c = self.init(z).view(z.shape[0], self.num_layers, self.hidden).transpose(0, 1).contiguous()
        return torch.tanh(c), c

    def _logits(self, z, x_in):
        emb = self.drop(self.embed(x_in))
        inp = torch.cat([emb, z.unsqueeze(1).expand(-1, x_in.shape[1], -1)], -1)
        o, _ = self.lstm(inp, self._init_state(z))
        return self.out(self.drop(o))

    def _step(self, z, tok, state):
        inp = torch.cat([self.embed(tok), z], -1).unsqueeze(1)
        o, state = self.lstm(inp, state)
        return self.out(o[:, 0]), state


class QuadraticBrenierMap(nn.Module):
    """The Brenier map ``g(v) = M v`` of the strongly convex quadratic potential ``psi(v) = v^T M v / 2`` with
    ``M = alpha I + 4 alpha a a^T`` and ``a = 1 - e_0 / 2`` (so ``M`` is positive definite, ``M >= alpha I``).

    ``M e_0 = alpha e_0 + 4 alpha (1/2) a = 2 alpha 1``: moving the input along ``e_0`` moves the output along the
    all-ones direction. Under ``V`` free softmax logits that does not change the distribution: the counterexample
    to the paper's "the exponential family likelihood is injective" (:class:`LIDSDecoder`, ``"naive"``).
    """

    def __init__(self, dim: int, alpha: float = 0.1):
        super().__init__()
        a = torch.ones(dim)
        a[0] = 0.5
        self.alpha = check_positive(alpha, "alpha")
        self.register_buffer("M", alpha * torch.eye(dim) + 4 * alpha * torch.outer(a, a))

    @property
    def dim(self) -> int:
        return self.M.shape[0]

    def forward(self, v):
        return v @ self.M


class LinearBrenierMap(nn.Module):
    """``g(u) = alpha u``, the Brenier map of ``alpha |u|^2 / 2`` (a fixed test map)."""

    def __init__(self, dim: int, alpha: float = 1.0):
        super().__init__()
        self.dim, self.alpha = dim, float(alpha)

    def forward(self, u):
        return self.alpha * u


def _folded_linear(layer: nn.Linear, w: torch.Tensor, beta_t, bias) -> torch.Tensor:
    """``layer(beta^T w + b)`` without forming the ``(N, D)`` lifted input: the layer's ``(h, D)`` weight folded with
    ``beta^T`` to ``(h, M)`` (zero padding, ``beta_t=None``: its first ``M`` columns), and ``A b`` added to the
    layer's bias."""
    if beta_t is None:
        return nn.functional.linear(w, layer.weight[:, :w.shape[-1]], layer.bias)
    out_bias = layer.bias
    if bias is not None:
        out_bias = layer.weight @ bias + (0 if out_bias is None else out_bias)
    return nn.functional.linear(w, layer.weight @ beta_t, out_bias)


def lifted_brenier(g: BrenierMap, w: torch.Tensor, lift=None) -> torch.Tensor:
    """``g(beta^T w)``: ``(N, M) -> (N, D)``, for ``beta = eye(M, D)`` (``lift=None``: zero padding) or a learned
    full-rank :class:`~lidvae_mini.models.decoders.FullRankLift` ``lift`` (``beta^T w + b``). Equal to ``g`` applied to the
    lifted input (tested), but every ICNN layer ``A_l`` acts on the ``M`` coordinates of ``w`` through its weight
    folded with ``beta^T`` (the explicit gradient of :meth:`lidvae_mini.models.icnn.ICNN.gradient`, for all tokens in one
    batched call; the lift's orthonormal frame is computed once per call). Falls back to ``g(lifted input)`` for a
    map that is not a :class:`~lidvae_mini.models.brenier.BrenierMap` in explicit mode.
    """
    D, M = g.dim, w.shape[-1]
    beta_t = bias = None
    if lift is None:
        v = nn.functional.pad(w, (0, D - M))
    else:
        beta_t, bias = lift.matrix().T, lift.bias
        v = w @ beta_t.T if bias is None else torch.addmm(bias, w, beta_t.T)
    net = getattr(g, "potential_net", None)
    if net is None or g.grad_mode != "explicit" or not torch.isfinite(w).all():
        return g(v)
    Ws = net.positive_weights()
    s0 = _folded_linear(net.A[0], w, beta_t, bias)
    pre, zz = [s0], net._h0(s0)
    for l in range(1, len(net.hidden)):
        sl = nn.functional.linear(zz, Ws[l - 1]) + _folded_linear(net.A[l], w, beta_t, bias)
        pre.append(sl)
        zz = net._act(sl)
    return net.backward_pass(v, Ws, pre)


class LIDSDecoder(_Decoder):
    """The LIDSVAE decoder (paper Example 2; supplement Eq. 16 with ``w = z``):
    ``x_t | z, x_<t ~ Cat(h(g_2(beta_2^T g_1([z, f(x_<t)]))))``.

    * ``f``: an LSTM over the embeddings of the history that **never sees z** (initial state a learned constant);
      ``f(x_<t) in R^H``.
    * ``g_1``: a Brenier map on ``R^{K+H}``; ``beta_2`` a ``(K+H) x D`` map of full row rank ``K+H``; ``g_2``: a
      Brenier map on ``R^D`` (:class:`~lidvae_mini.models.brenier.BrenierMap`, explicit ICNN gradient, one batched call for
      all ``B x T`` tokens, :func:`lifted_brenier`).
    * ``beta="fixed"`` (the paper's text): ``beta_2 = eye(K+H, D)``, a registered buffer never trained. It writes
      ``g_1``'s output into the first ``K+H`` free logits: with the vocabulary sorted by frequency, the special tokens
      and the most frequent words. ``beta="learned"``: :class:`~lidvae_mini.models.decoders.FullRankLift`
      (``beta_2^T = Q diag(e^s)``, orthonormal ``Q``, plus a bias when ``beta_bias``), full rank for every parameter
      value, ``sigma_min(beta_2) = min_k e^{s_k}``.
    * ``g2_active_inputs``: the ``active_inputs`` of ``g_2``'s ICNN (default ``D``); ``K + H`` initialises it for
      the ``K+H``-dimensional signal that ``beta_2`` lifts (see :class:`~lidvae_mini.models.icnn.ICNN`).
    * ``construction="minimal"`` (default): ``D = V - 1`` and the logits are ``[0, g_2(...)]`` (token 0,
      ``<pad>``, fixed at logit 0): ``z -> p(x_t | z, x_<t)`` is injective for every history, with
      ``||eta(z) - eta(z')|| >= alpha^2 sigma_min(beta_2) ||z - z'||``. ``"naive"``: ``D = V`` free logits (the
      official code), for which the paper's injectivity argument fails.

    Args: vocab_size V, embed_dim, hidden H, latent_dim K, hidden1/hidden2 (ICNN widths of g_1/g_2), alpha
    (strong-monotonicity constant of both maps), construction, num_layers, dropout, beta, beta_bias,
    g2_active_inputs.

    Raises:
        ValueError: ``K + H > D`` (``beta_2`` would not be injective), bad sizes, construction or beta.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, latent_dim: int, hidden1=(64,),
                 hidden2=(64,), alpha: float = 0.5, construction: str = "minimal", num_layers: int = 1,
                 dropout: float = 0.0, beta: str = "fixed", beta_bias: bool = False,
                 g2_active_inputs: int | None = None):
        super().__init__()
        self.vocab_size, self.latent_dim = check_int(vocab_size, "vocab_size"), check_int(latent_dim, "latent_dim")
        self.hidden, self.num_layers = check_int(hidden, "hidden"), check_int(num_layers, "num_layers")
        self.construction = check_choice(construction, "construction", CONSTRUCTIONS)
        self.beta_kind = check_choice(beta, "beta", BETAS)
        D = vocab_size - 1 if construction == "minimal" else vocab_size
        M = latent_dim + hidden
        if M > D:
            raise ValueError(f"K + H = {M} must not exceed the logit dimension D = {D}: beta_2 lifts [z, f] into "
                             f"R^D and needs D >= K + H to be injective")
        self.logit_dim = D
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=num_layers, batch_first=True)
        self.h0 = nn.Parameter(torch.zeros(num_layers, 1, hidden))
        self.c0 = nn.Parameter(torch.zeros(num_layers, 1, hidden))
        self.drop = nn.Dropout(dropout)
        self.g1 = BrenierMap(M, hidden1, alpha=alpha)
        self.g2 = BrenierMap(D, hidden2, alpha=alpha, active_inputs=g2_active_inputs)
        if beta == "fixed":
            if beta_bias:
                raise ValueError("beta_bias needs beta='learned' (the fixed beta_2 is the paper's zero-one matrix)")
            self.register_buffer("beta2", torch.eye(M, D))
            self.lift = None
        else:
            self.lift = FullRankLift(M, D, bias=beta_bias)

    def beta2_matrix(self) -> torch.Tensor:
        """``beta_2``, shape ``(K+H, D)``: ``eye(K+H, D)`` or the learned lift's matrix."""
        return self.beta2 if self.lift is None else self.lift.matrix()

    def sigma_min(self) -> float:
        """The smallest singular value of ``beta_2`` (1 for the fixed zero-one matrix)."""
        return 1.0 if self.lift is None else float(self.lift.singular_values()[-1].detach())

    def beta_lift(self, w: torch.Tensor) -> torch.Tensor:
        """``beta_2^T w (+ b)``: ``(N, K+H) -> (N, D)``; for the fixed ``beta_2`` a zero padding, without the
        ``(K+H) x D`` matmul (equal to ``w @ beta2``, tested)."""
        if self.lift is None:
            return nn.functional.pad(w, (0, self.logit_dim - w.shape[-1]))
        return self.lift(w)

    def _init_state(self, z):
        n = z.shape[0]
        return (self.h0.expand(-1, n, -1).contiguous(), self.c0.expand(-1, n, -1).contiguous())

    def history(self, x_in: torch.Tensor) -> torch.Tensor:
        """``f(x_<t)`` for every prefix: ``(N, T')`` long -> ``(N, T', H)`` (does not depend on z)."""
        o, _ = self.lstm(self.drop(self.embed(x_in)), self._init_state(x_in))
        return self.drop(o)

    def head(self, z: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., V)`` from ``z`` ``(..., K)`` and ``f`` ``(..., H)`` (same leading shape)."""
        lead = f.shape[:-1]
        u = torch.cat([z, f], -1).reshape(-1, self.latent_dim + self.hidden)
        eta = lifted_brenier(self.g2, self.g1(u), self.lift)
        if self.construction == "minimal":
            eta = torch.cat([eta.new_zeros(eta.shape[0], 1), eta], -1)
        return eta.view(*lead, self.vocab_size)

    def natural_parameters(self, z: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``eta = g_2(beta_2^T g_1([z, f]))`` ``(N, D)``: the free logits (minimal: ``log p_j - log p_0``)."""
        return lifted_brenier(self.g2, self.g1(torch.cat([z, f], -1)), self.lift)

    def _logits(self, z, x_in):
        f = self.history(x_in)
        return self.head(z.unsqueeze(1).expand(-1, x_in.shape[1], -1), f)

    def _step(self, z, tok, state):
        o, state = self.lstm(self.embed(tok).unsqueeze(1), state)
        return self.head(z, o[:, 0]), state


# ---------------------------------------------------------------------------------------------------- model
class TextVAE(nn.Module):
    """A sequential VAE: :class:`LSTMEncoder` q(z | x), N(0, I) prior, a decoder (:class:`SequentialDecoder` or
    :class:`LIDSDecoder`), ELBO weight ``beta`` on the KL (1: VAE/LIDSVAE; 0.2: the paper's beta-VAE).

    ``loss(x, n_samples)`` -> ``(scalar, parts)``: the batch mean of ``rec + beta * KL`` (nats per sentence), as
    :func:`lidvae_mini.models.train.fit`'s protocol; ``elbo_parts``; ``encode_mean``; ``iwae_log_likelihood``.
    """

    def __init__(self, encoder: LSTMEncoder, decoder: _Decoder, beta: float = 1.0):
        super().__init__()
        if encoder.latent_dim != decoder.latent_dim:
            raise ValueError("encoder and decoder latent_dim differ")
        self.encoder, self.decoder, self.beta = encoder, decoder, float(beta)
        self.latent_dim = encoder.latent_dim

    def encode_mean(self, x):
        return self.encoder(x)[0]

    def sample_posterior(self, x, n_samples: int = 1):
        """``(z, log_q, mu, logvar)``: ``z`` ``(S, B, K)`` from q(z|x) and its log density ``(S, B)``."""
        mu, logvar = self.encoder(x)
        std = (0.5 * logvar).exp()
        eps = torch.randn((n_samples,) + mu.shape, dtype=mu.dtype, device=mu.device)
        z = mu + eps * std
        log_q = (-0.5 * (eps ** 2 + LOG_2PI) - 0.5 * logvar).sum(-1)
        return z, log_q, mu, logvar

    def elbo_parts(self, x, n_samples: int = 1) -> dict:
        """Per sentence (nats): ``rec`` = -E_q log p(x|z) (``n_samples`` draws), ``kl`` (analytic), ``elbo``."""
        z, _, mu, logvar = self.sample_posterior(x, n_samples)
        rec = -self.decoder.log_prob(x, z).mean(0)
        kl = kl_gaussian_standard_per_dim(mu, logvar).sum(-1)
        return {"rec": rec, "kl": kl, "elbo": -(rec + kl)}

    def loss(self, x, n_samples: int = 1):
        p = self.elbo_parts(x, n_samples)
        return (p["rec"] + self.beta * p["kl"]).mean(), {k: v.detach().mean() for k, v in p.items()}

    def log_joint(self, x, z):
        """log p(z) + log p(x | z), ``(S, B)`` nats."""
        return (-0.5 * (z ** 2 + LOG_2PI)).sum(-1) + self.decoder.log_prob(x, z)

    def iwae_log_likelihood(self, x, num_samples: int = 100, chunk: int = 50, seed=None) -> torch.Tensor:
        """Importance-weighted log p(x) per sentence, ``(B,)`` float64 nats
        (:func:`lidvae_mini.evaluation.metrics.iwae_log_likelihood`, proposal q(z|x))."""
        def sample_fn(xx, s):
            z, log_q, _, _ = self.sample_posterior(xx, s)
            return z, log_q
        return iwae_log_likelihood(self.log_joint, sample_fn, x, num_samples, chunk, seed=seed)


def build_text_vae(kind: str, vocab_size: int, latent_dim: int = 5, embed_dim: int = 32, enc_hidden: int = 64,
                   dec_hidden: int = 64, icnn_hidden=((64,), (64,)), alpha: float = 0.5, beta: float | None = None,
                   construction: str = "minimal", enc_layers: int = 2, dec_layers: int = 1,
                   dropout: float = 0.0, decoder: str = "fixed", beta_bias: bool = False) -> TextVAE:
    """``kind``: ``"vae"`` (sequential VAE), ``"beta_vae"`` (beta = 0.2 unless given) or ``"lidsvae"``.

    ``decoder`` (LIDSVAE only): a construction of :data:`lidvae_mini.models.decoders.DECODER_VARIANTS`, as for the images
    (:func:`~lidvae_mini.models.decoders.decoder_variant` with ``K + H`` inputs): ``"fixed"`` (the paper's zero-one
    ``beta_2``, ``g_2`` initialised for ``D`` inputs), ``"learned"`` (a learned full-rank ``beta_2``) or
    ``"learned_init"`` (that, with ``g_2`` initialised for the ``K + H`` inputs ``beta_2`` lifts); ``beta_bias``
    adds a bias to a learned ``beta_2``.

    Example:
        >>> model = build_text_vae("lidsvae", vocab_size=100, latent_dim=4)
        >>> type(model.decoder).__name__, model.latent_dim
        ('LIDSDecoder', 4)

    Raises:
        ValueError: unknown ``kind`` or ``decoder``; a ``decoder`` other than ``"fixed"`` for a non-LIDSVAE.
    """
    check_choice(kind, "kind", ("vae", "beta_vae", "lidsvae"))
    variant = decoder_variant(decoder, latent_dim + dec_hidden)
    if kind != "lidsvae" and (decoder != "fixed" or beta_bias):
        raise ValueError(f"decoder={decoder!r} and beta_bias apply to the LIDSVAE only, not {kind!r}")
    enc = LSTMEncoder(vocab_size, embed_dim, enc_hidden, latent_dim, enc_layers)
    if kind == "lidsvae":
        dec = LIDSDecoder(vocab_size, embed_dim, dec_hidden, latent_dim, icnn_hidden[0], icnn_hidden[1], alpha,
                          construction, dec_layers, dropout, beta_bias=beta_bias, **variant)
    else:
        dec = SequentialDecoder(vocab_size, embed_dim, dec_hidden, latent_dim, dec_layers, dropout)
    if beta is None:
        beta = 0.2 if kind == "beta_vae" else 1.0
    return TextVAE(enc, dec, beta)


# ------------------------------------------------------------------------------------------------- training
def sa_text_loss(model: TextVAE, x: torch.Tensor, svi_steps: int = 10, svi_lr: float = 1.0,
                 momentum: float = 0.5, clip: float = 5.0):
    """SA-VAE objective (Kim et al. 2018) for a :class:`TextVAE`, ``(scalar, parts)``: the encoder's
    ``(mu_0, logvar_0)`` are refined by :func:`lidvae_mini.models.baselines.svi_refine` (``svi_steps`` of SGD with
    momentum on the ELBO through the LSTM decoder); the decoder is trained on the ELBO at the refined posterior
    ``q_K`` and the encoder on ``KL(q_0 || stopgrad(q_K))`` (Kim et al.'s ``train_kl``; the end-to-end variant needs
    double backpropagation through the LSTM and is not used). Metrics of the trained model use the amortised
    encoder."""
    mu0, lv0 = model.encoder(x)
    mu, lv, _ = svi_refine(model, x, mu0.detach(), lv0.detach(), svi_steps, svi_lr, momentum, clip)
    z = mu + (0.5 * lv).exp() * torch.randn_like(mu)
    rec = -model.decoder.log_prob(x, z)
    kl = kl_gaussian_standard_per_dim(mu, lv).sum(-1)
    kl_init = gaussian_kl(mu0, lv0, mu, 0.5 * lv)
    loss = (rec + model.beta * kl).mean() + kl_init.mean()
    return loss, {"rec": rec.detach().mean(), "kl": kl.detach().mean(), "elbo": -(rec + kl).detach().mean()}


def fit_text(model: TextVAE, train_batches, valid_batches=None, epochs: int = 5, lr: float = 1e-3,
             seed: int = 0, clip: float = 5.0, weight_decay: float = 0.0, verbose: bool = False,
             loss_fn=None, aggressive: bool = False, max_inner_steps: int = 100, check_every: int = 15,
             keep_best: bool = False, checkpoint_dir=None, resume: bool = True, progress: bool | None = None) -> dict:
    """Maximise the ELBO (``rec + beta·KL``, batch mean, one draw) with Adam over equal-length batches.

    Trains through :func:`lidvae_mini.models.loop.train_loop` (as :class:`TextMethod`), with its guarantees:
    seeded (the batch order of every epoch and the reparameterisation noise come from ``seed``; the caller's torch
    RNG is restored), gradients clipped over all parameters (norm ``clip``), checkpoints in ``checkpoint_dir``
    (``checkpoint.pt``, every epoch) that ``resume`` continues bitwise, and the NaN guard: a non-finite loss or
    gradient restores the model to the start of the epoch and raises
    :class:`~lidvae_mini.models.loop.NonFiniteLossError`. Per epoch the history records the mean training loss and
    KL and the validation negative ELBO and KL (one draw, seeded), all in nats per sentence.

    ``loss_fn(model, x) -> (scalar, parts)`` replaces ``model.loss`` (e.g. :func:`sa_text_loss`). ``aggressive``:
    He et al. (2019)'s lagging-inference training: while the aggressive phase lasts, before every decoder update
    the encoder alone is updated on random training batches (:func:`lidvae_mini.models.baselines.encoder_inner_loop`,
    at most ``max_inner_steps``, stopping when the mean loss of a block of ``check_every`` steps rises); the phase
    ends after the first epoch whose validation MI (needs ``valid_batches``) does not increase.

    ``keep_best``: at the end, restore the parameters of the epoch with the lowest validation negative ELBO (early
    stopping without stopping: the learning curve is still recorded to the last epoch); needs ``valid_batches``.

    Returns: ``{"epoch", "train_loss", "train_kl", "valid_nelbo", "valid_kl", "seconds"}``, one entry per epoch
    (the ``valid_*`` only with ``valid_batches``); ``"aggressive_epochs"`` (with ``aggressive``) and
    ``"best_epoch"`` (1-based, with ``keep_best``) are numbers.

    Raises:
        ValueError: ``aggressive`` or ``keep_best`` without ``valid_batches``; ``epochs < 1``; a checkpoint written
            with other settings.
        NonFiniteLossError: a non-finite loss, gradient or parameter.
    """
    epochs = check_int(epochs, "epochs")
    if keep_best and not valid_batches:
        raise ValueError("keep_best needs valid_batches (it keeps the epoch with the lowest validation loss)")
    if aggressive and not valid_batches:
        raise ValueError("aggressive training needs valid_batches (its phase ends on the validation MI)")
    config = dict(lr=lr, seed=seed, clip=clip, weight_decay=weight_decay, aggressive=aggressive,
                  max_inner_steps=max_inner_steps, check_every=check_every, n_batches=len(train_batches),
                  loss=getattr(loss_fn, "__qualname__", "TextVAE.loss"))
    method = TextMethod(model, train_batches, valid_batches, config, loss_fn, verbose)
    best = BestState() if keep_best else None
    hist = train_loop(model, method, epochs=epochs, seed=seed, checkpoint_dir=checkpoint_dir, resume=resume,
                      progress=progress, best=best)
    if aggressive:
        hist["aggressive_epochs"] = method.aggressive_epochs
    if best is not None:
        best.restore(model)
        hist["best_epoch"] = best.epoch
    return hist


class TextMethod(Method):
    """:func:`fit_text`'s method for :func:`~lidvae_mini.models.loop.train_loop`: the batches of every epoch in a
    seeded order (a NumPy generator, ``data_rng``), one Adam step each on ``loss_fn``; in the aggressive phase the
    encoder's inner loop first and the decoder alone after it (the lagging VAE); validation ELBO and, in the
    aggressive phase, MI after the epoch. ``config``: :func:`fit_text`'s settings."""

    selection_key, progress_keys, resume_defaults = "valid_nelbo", ("train_loss",), {}

    def __init__(self, model: TextVAE, train_batches, valid_batches, config: dict, loss_fn, verbose: bool):
        self.model, self.train, self.valid, self.config, self.verbose = model, train_batches, valid_batches, config, \
            verbose
        self.loss_fn = loss_fn or (lambda mod, xb: mod.loss(xb))
        self.keys = ("epoch", "train_loss", "train_kl") + (("valid_nelbo", "valid_kl") if valid_batches else ()) \
            + ("seconds",)
        self.params = list(model.parameters())
        self.optimizers = {"optimizer": torch.optim.Adam(self.params, lr=config["lr"],
                                                         weight_decay=config["weight_decay"])}
        self.generators = {"data_rng": np.random.default_rng(config["seed"])}
        self.enc_params = list(model.encoder.parameters())
        self.dec_params = [p for p in self.params if all(p is not q for q in self.enc_params)]
        self.best_mi, self.aggressive_epochs = (-math.inf if config["aggressive"] else None), 0
        if config["aggressive"]:
            self.optimizers["encoder_optimizer"] = torch.optim.Adam(self.enc_params, lr=config["lr"],
                                                                    weight_decay=config["weight_decay"])

    def batches(self, epoch: int, step: int):
        for i in self.generators["data_rng"].permutation(len(self.train)):
            yield self.train[i][1]

    def _update(self, x, opt, params, guard, frozen=()):
        for p in frozen:
            p.requires_grad_(False)
        try:
            loss, parts = self.loss_fn(self.model, x)
            update(opt, loss, params, self.config["clip"], guard)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return loss.detach(), parts

    def step(self, x: torch.Tensor, guard) -> torch.Tensor:
        lagging = self.best_mi is not None
        if lagging:  # the encoder first (on random batches), then the decoder alone
            def enc_step():
                _, xb = self.train[int(self.generators["data_rng"].integers(len(self.train)))]
                lo, _ = self._update(xb, self.optimizers["encoder_optimizer"], self.enc_params, guard)
                return float(lo) * xb.shape[0], xb.shape[0]
            encoder_inner_loop(enc_step, self.config["max_inner_steps"], self.config["check_every"])
        loss, parts = self._update(x, self.optimizers["optimizer"], self.dec_params if lagging else self.params,
                                   guard, frozen=self.enc_params if lagging else ())
        m = x.shape[0]
        return torch.stack([loss.double() * m, parts["kl"].detach().double() * m,
                            torch.full((), float(m), dtype=torch.float64, device=loss.device)])

    def end_epoch(self, epoch: int, sums, guard) -> dict:
        tot, kl, n = sums.tolist()
        row = {"train_loss": tot / n, "train_kl": kl / n}
        if self.valid:
            ev = elbo_eval(self.model, self.valid, seed=self.config["seed"])
            if not math.isfinite(ev["elbo"]):
                guard.diverged("validation negative ELBO", -ev["elbo"])
            row.update(valid_nelbo=-ev["elbo"], valid_kl=ev["kl"])
        if self.best_mi is not None:
            self.aggressive_epochs += 1
            nv = sum(int(xb.shape[0]) for _, xb in self.valid)
            with torch.no_grad():
                mi = mutual_information(*posterior_stats(self.model, self.valid, nv), seed=self.config["seed"])
            self.best_mi = mi if mi > self.best_mi else None  # None: the aggressive phase is over
        if self.verbose:
            print(f"epoch {epoch}: loss {row['train_loss']:.2f} kl {row['train_kl']:.3f}")
        return row

    def state_dict(self) -> dict:
        return {"best_mi": self.best_mi, "aggressive_epochs": self.aggressive_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best_mi, self.aggressive_epochs = state["best_mi"], state["aggressive_epochs"]


# -------------------------------------------------------------------------------------------------- metrics
@torch.no_grad()
def elbo_eval(model: TextVAE, batches, seed: int = 0) -> dict:
    """Mean per-sentence ELBO, reconstruction and KL (one seeded draw), nats."""
    model.eval()
    s = {"elbo": 0.0, "rec": 0.0, "kl": 0.0}
    n = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _, x in batches:
            p = model.elbo_parts(x)
            for k in s:
                s[k] += float(p[k].sum())
            n += x.shape[0]
    return {k: v / n for k, v in s.items()}


@torch.no_grad()
def posterior_stats(model: TextVAE, batches, n: int):
    """Encoder means and log-variances ``(n, K)`` in the sentences' original order."""
    mu = torch.zeros(n, model.latent_dim)
    lv = torch.zeros(n, model.latent_dim)
    for idx, x in batches:
        m, v = model.encoder(x)
        mu[idx], lv[idx] = m, v
    return mu, lv


@torch.no_grad()
def evaluate_text(model: TextVAE, batches, iwae_samples: int = 100, seed: int = 0, au_threshold: float = 0.01):
    """The text metrics on a split (nats; tokens counted with ``</s>``, without ``<s>``):

    ``elbo``, ``rec``, ``kl`` per sentence (one draw); ``iwae`` = importance-weighted log p(x) per sentence
    (``iwae_samples`` draws; the paper's LL, K = 500); ``iwae_per_token`` = sum of ``iwae`` / tokens;
    ``ppl = exp(-iwae_per_token)``; ``au`` (count), ``au_fraction``, ``kl_per_dim`` (K,), ``mi`` (He et al.'s
    estimator, q(z) pooled over the whole split, never below 0), ``mi_se`` (its Monte Carlo standard error) and
    ``mi_estimate`` (the raw estimate: :func:`lidvae_mini.evaluation.metrics.mutual_information_report`); ``n_sentences``,
    ``n_tokens``.
    """
    model.eval()
    ev = elbo_eval(model, batches, seed)
    n = sum(int(x.shape[0]) for _, x in batches)
    n_tok = sum(int(x.shape[0]) * (int(x.shape[1]) - 1) for _, x in batches)
    ll = torch.zeros(n, dtype=torch.float64)
    for j, (idx, x) in enumerate(batches):
        ll[idx] = model.iwae_log_likelihood(x, iwae_samples, seed=seed + j)
    mu, lv = posterior_stats(model, batches, n)
    au = active_units(mu, au_threshold)
    out = dict(ev)
    out.update(iwae=float(ll.mean()), iwae_per_token=float(ll.sum()) / n_tok,
               ppl=math.exp(-float(ll.sum()) / n_tok), au=au["count"], au_fraction=au["fraction"],
               kl_per_dim=kl_gaussian_standard_per_dim(mu, lv).mean(0).tolist(),
               **mutual_information_report(*mutual_information(mu, lv, seed=seed, return_se=True)), n_sentences=n,
               n_tokens=n_tok)
    return out


@torch.no_grad()
def interpolate(model: TextVAE, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 5, max_len: int = 20,
                banned=(PAD, UNK)):
    """Greedy decodings of ``(1 - t) mu(x_a) + t mu(x_b)`` for ``t`` in ``linspace(0, 1, steps)``: ``(steps, L)``
    token ids (encoder means of the two sentences, each ``(1, T)``); ``banned`` tokens (default ``<pad>`` and
    ``<unk>``) are never decoded."""
    ma, mb = model.encode_mean(x_a), model.encode_mean(x_b)
    t = torch.linspace(0, 1, steps).unsqueeze(1)
    return model.decoder.sample((1 - t) * ma + t * mb, max_len=max_len, greedy=True, banned=banned)
