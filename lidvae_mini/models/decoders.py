"""Decoders p(x | z): the injective LIDVAE decoder (paper Definition 3) and the classical MLP decoder.

LIDVAE (Wang, Blei & Cunningham 2021, Sec. 3.1, Eq. 7):

.. math::

    x \\mid z \\sim \\mathrm{EF}\\big(x \\mid \\eta(z)\\big),\\qquad
    \\eta(z) = g_2\\big(\\beta^\\top g_1(z)\\big),

with :math:`g_1 = \\nabla\\psi_1: \\mathbb{R}^K\\to\\mathbb{R}^K`, :math:`g_2 = \\nabla\\psi_2: \\mathbb{R}^D\\to\\mathbb{R}^D`
Brenier maps (:class:`~lidvae_mini.models.brenier.BrenierMap`, strongly monotone with constant ``alpha``) and
:math:`\\beta` a ``K x D`` matrix of full row rank ``K`` (so :math:`\\beta^\\top` has full column rank). Two
variants (``beta=`` of :class:`InjectiveDecoder`):

- ``"fixed"``, the paper's text: a zero-one matrix with ones on the main diagonal, a buffer never trained. Its
  ones write :math:`g_1(z)` into coordinates ``0..K-1`` of :math:`g_2`'s input: for a flattened image, the first
  ``K`` pixels (MNIST with ``K = 16``: the left part of the top row, which is blank in almost every image).
- ``"learned"``, as the official code's dense layer but with the rank guaranteed (:class:`FullRankLift`):
  :math:`\\beta^\\top = Q\\,\\mathrm{diag}(e^{s})` with :math:`Q` of orthonormal columns, plus an optional bias.
  Full column rank holds for every parameter value; :math:`\\sigma_{\\min}(\\beta) = \\min_k e^{s_k}`.

Hence :math:`z \\mapsto \\eta(z)` is injective and, for the heads whose parameters identify the distribution, so
is :math:`z \\mapsto p(\\cdot\\mid z)` (Proposition 2):
:math:`\\lVert\\eta(z)-\\eta(z')\\rVert \\ge \\alpha^2\\,\\sigma_{\\min}(\\beta)\\,\\lVert z-z'\\rVert`.

Heads (``forward`` returns the likelihood parameters, shape ``(B, D)``):

- ``"bernoulli"``: logits; ``x`` binary ``(B, D)``; independent Bernoulli over ``D``.
- ``"gaussian"``: mean; per-dimension scale, learned (``exp`` of a parameter, initialised at 1) or fixed
  (``fixed_scale``); independent Normal over ``D``.
- ``"categorical"``: logits over ``D`` categories; ``x`` integer class ids ``(B,)``. Caveat: logits are
  identified only up to an additive constant, so injectivity of :math:`\\eta` gives injectivity of the
  distribution only if no two :math:`\\eta(z)` differ by a multiple of the all-ones vector (not enforced).

``log_prob(x, z)`` returns log p(x | z) in **nats per datapoint**, shape ``(B,)`` (summed over ``D``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch import distributions as td

from .._checks import check_choice, check_int, check_positive
from .brenier import BrenierMap
from .._checks import check_batch, hidden_sizes

HEADS = ("bernoulli", "gaussian", "categorical")
#: The variants of the LIDVAE's linear map ``beta`` (:class:`InjectiveDecoder`).
BETAS = ("fixed", "learned")
#: Named injective-decoder constructions (see :func:`decoder_variant`), namely ``"fixed"``, the paper's text (zero-one
#: beta, g_2's ICNN initialised for D inputs); ``"learned"``, a learned full-rank beta; and ``"learned_init"``, the
#: same with g_2's ICNN initialised for the K inputs that carry signal (:class:`~lidvae_mini.models.icnn.ICNN`'s
#: ``active_inputs``).
DECODER_VARIANTS = ("fixed", "learned", "learned_init")
#: The book's default construction of the single-latent LIDVAE's decoder when K < D (see :func:`book_decoder`,
#: used by :func:`lidvae_mini.models.vae.build_vae` and :func:`lidvae_mini.models.avae.build_avae`). On MNIST
#: (results/06_lidvae/cpu_decoders, three seeds, 3,000 steps) it fitted best of the three on every seed, and it keeps
#: the injectivity guarantee. The mixtures keep :data:`PAPER_DECODER`, because in the images chapter's ablation a
#: learned beta changed neither their fit nor their clusters.
BOOK_DECODER = "learned_init"
#: The paper's construction (its text; Definition 3 with Example 1's zero-one beta).
PAPER_DECODER = "fixed"


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters of ``module`` (only those with ``requires_grad`` by default)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def bernoulli_kl_from_logits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``KL(Bernoulli(sigmoid(a)) || Bernoulli(sigmoid(b)))`` elementwise, nats, from the logits.

    ``sigmoid(a) (softplus(-b) - softplus(-a)) + sigmoid(-a) (softplus(b) - softplus(a))``: finite for every pair of
    finite logits. (``torch.distributions.kl_divergence`` of two Bernoullis works from the probabilities and
    returns ``inf`` as soon as one probability rounds to exactly 0 or 1, e.g. a float32 logit above about 17.)
    """
    softplus = nn.functional.softplus
    return torch.sigmoid(a) * (softplus(-b) - softplus(-a)) + torch.sigmoid(-a) * (softplus(b) - softplus(a))


class _LikelihoodHead(nn.Module):
    """Shared head logic: scale parameter, distribution, input checks and ``log_prob``."""

    def _init_head(self, D: int, head: str, learn_scale: bool, fixed_scale) -> None:
        self.head = check_choice(head, "head", HEADS)
        self.learn_scale = False
        if head == "gaussian":
            if fixed_scale is not None:
                self.register_buffer("fixed_scale", torch.full((D,), check_positive(fixed_scale, "fixed_scale")))
                self.log_scale = None
            elif learn_scale:
                self.learn_scale = True
                self.log_scale = nn.Parameter(torch.zeros(D))
            else:
                self.register_buffer("fixed_scale", torch.ones(D))
                self.log_scale = None
        elif fixed_scale is not None:
            raise ValueError(f"fixed_scale applies to the gaussian head only, not {head!r}")

    def scale(self) -> torch.Tensor:
        """Per-dimension standard deviation of the Gaussian head, shape ``(D,)``."""
        if self.head != "gaussian":
            raise ValueError(f"the {self.head!r} head has no scale")
        return self.log_scale.exp() if self.log_scale is not None else self.fixed_scale

    def distribution(self, z: torch.Tensor) -> td.Distribution:
        """p(x | z) as a :mod:`torch.distributions` object with batch shape ``(B,)``.

        ``Independent(Bernoulli(logits), 1)``, ``Independent(Normal(mean, scale), 1)`` or
        ``Categorical(logits)``: its ``log_prob`` gives nats per datapoint, shape ``(B,)``.
        """
        eta = self(z)
        if self.head == "bernoulli":
            return td.Independent(td.Bernoulli(logits=eta, validate_args=False), 1)
        if self.head == "gaussian":
            return td.Independent(td.Normal(eta, self.scale().expand_as(eta), validate_args=False), 1)
        return td.Categorical(logits=eta, validate_args=False)

    @torch.no_grad()
    def latent_sensitivity(self, step: float = 0.5, n_samples: int = 1000, seed: int = 0) -> torch.Tensor:
        """How distinguishable the likelihood makes latents ``step`` apart along each axis, shape (K,), nats.

        ``S_k = E_{z ~ N(0, I)} KL(p(x | z) || p(x | z + step e_k))``, the KL summed over the D coordinates
        (paper Definition 2, measured: ``S_k = 0`` iff the likelihood ignores axis k). Computed in float64 from
        the head's parameters (:func:`bernoulli_kl_from_logits`; ``(mu - mu')^2 / (2 sigma^2)``; log-softmax for
        the categorical head), so confident outputs cannot turn it into ``inf`` as torch.distributions' Bernoulli
        KL does once a float32 probability rounds to 0 or 1. The draws of z use ``seed`` and leave the caller's
        RNG untouched.

        Raises:
            ValueError: ``step <= 0``, ``n_samples < 1`` or ``seed < 0``.
        """
        step = check_positive(step, "step")
        n_samples = check_int(n_samples, "n_samples")
        like = next(self.parameters())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(check_int(seed, "seed", minimum=0))
            z = torch.randn(n_samples, self.latent_dim, dtype=like.dtype)
        z = z.to(like.device)
        base = self(z).double()
        out = []
        for k in range(self.latent_dim):
            dz = torch.zeros_like(z)
            dz[:, k] = step
            moved = self(z + dz).double()
            if self.head == "bernoulli":
                kl = bernoulli_kl_from_logits(base, moved).sum(-1)
            elif self.head == "gaussian":
                kl = ((base - moved) ** 2 / (2.0 * self.scale().double() ** 2)).sum(-1)
            else:
                log_p, log_q = base.log_softmax(-1), moved.log_softmax(-1)
                kl = (log_p.exp() * (log_p - log_q)).sum(-1)
            out.append(kl.mean())
        return torch.stack(out)

    def check_data(self, x: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """Validate observations ``x`` for this head (see :meth:`log_prob`); returns ``x`` unchanged."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        D = self.data_dim
        if self.head == "categorical":
            if x.ndim != 1 or (batch is not None and x.shape[0] != batch):
                raise ValueError(f"x must hold one class id per datapoint, shape ({batch or 'B'},), "
                                 f"got {tuple(x.shape)}")
            if torch.is_floating_point(x):
                if not bool(torch.isfinite(x).all()):
                    raise ValueError("x contains NaN or infinite values")
                if not bool((x == x.round()).all()):
                    raise ValueError("x must hold integer class ids for the categorical head")
            elif x.dtype == torch.bool or torch.is_complex(x):
                raise TypeError(f"x must hold integer class ids, got dtype {x.dtype}")
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= D):
                raise ValueError(f"class ids must lie in [0, {D - 1}], got range "
                                 f"[{int(x.min())}, {int(x.max())}]")
            return x
        if x.ndim != 2 or x.shape[1] != D or (batch is not None and x.shape[0] != batch):
            raise ValueError(f"x must have shape ({batch or 'B'}, {D}), got {tuple(x.shape)}")
        if not (torch.is_floating_point(x) or x.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16,
                                                          torch.int32, torch.int64)):
            raise TypeError(f"x must be a real tensor, got dtype {x.dtype}")
        if torch.is_floating_point(x) and not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or infinite values")
        if self.head == "bernoulli" and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError("the bernoulli head needs binary data in {0, 1}; binarise x first "
                             "(e.g. x = (x > torch.rand_like(x)).float())")
        return x

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z), shape ``(B,)``, nats per datapoint (summed over the ``D`` coordinates).

        Args:
            x: ``(B, D)`` binary (bernoulli) or real (gaussian) data, or ``(B,)`` integer class ids in
                ``[0, D)`` (categorical).
            z: latents ``(B, K)``.

        Raises:
            TypeError/ValueError: wrong shapes or dtypes, non-finite values, non-binary data for the
                bernoulli head, class ids out of range or non-integer for the categorical head.
        """
        self.check_latent(z)
        x = self.check_data(x, batch=z.shape[0])
        dist = self.distribution(z)
        like = self._param_like()
        if self.head == "categorical":
            return dist.log_prob(x.long())
        return dist.log_prob(x.to(like.dtype))

    def check_latent(self, z) -> torch.Tensor:
        return check_batch(z, self.latent_dim, "z", like=self._param_like())

    def _param_like(self) -> torch.Tensor:
        return next(self.parameters())


class FullRankLift(nn.Module):
    """A learned linear map ``u -> beta^T u + b`` from ``R^K`` to ``R^D`` (``K <= D``) of full column rank ``K`` for
    every parameter value: :math:`\\beta^\\top = Q\\,\\mathrm{diag}(e^{s})`, ``Q`` (D, K) with orthonormal columns,
    ``s`` (K,) log scales (initialised at 0), ``b`` (D,) an optional bias (initialised at 0). The singular values of
    ``beta`` are exactly :math:`e^{s_k}`. ``Q`` is the orthonormal factor of the QR decomposition of an
    unconstrained parameter ``V`` (D, K) (:func:`torch.linalg.qr`, signs fixed by ``diag R > 0`` so that ``Q`` is a
    smooth function of ``V``), which has orthonormal columns for every ``V``; ``V`` starts as a random Gaussian
    matrix, so ``Q`` starts as a uniformly random orthonormal frame. (Torch's orthogonal parametrization gives the
    same set of matrices through ``K`` sequential Householder reflections, about 60 times slower per step here.)

    The official code puts an unconstrained dense layer here, whose rank nothing guarantees (and whose SVD clip is a
    no-op: the book's errata); this keeps its flexibility and the guarantee.

    ``forward(u)``: ``(B, K) -> (B, D)``.

    Raises:
        ValueError: ``K > D`` or bad sizes.
    """

    def __init__(self, latent_dim: int, data_dim: int, bias: bool = False):
        super().__init__()
        K, D = check_int(latent_dim, "latent_dim"), check_int(data_dim, "data_dim")
        if K > D:
            raise ValueError(f"a map from R^{K} to R^{D} cannot have full column rank {K}: need K <= D")
        self.latent_dim, self.data_dim = K, D
        self.frame = nn.Parameter(torch.randn(D, K))
        self.log_scale = nn.Parameter(torch.zeros(K))
        self.bias = nn.Parameter(torch.zeros(D)) if bias else None

    def orthonormal_frame(self) -> torch.Tensor:
        """``Q``, shape ``(D, K)``, ``Q^T Q = I``: the QR factor of ``frame`` with ``diag R > 0``."""
        q, r = torch.linalg.qr(self.frame)
        return q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)

    def matrix(self) -> torch.Tensor:
        """``beta``, shape ``(K, D)`` (``beta^T = Q diag(exp s)``)."""
        return (self.orthonormal_frame() * self.log_scale.exp()).T

    def singular_values(self) -> torch.Tensor:
        """The singular values of ``beta``, ``exp(s)`` sorted descending, shape ``(K,)``."""
        return self.log_scale.exp().sort(descending=True).values

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        out = (u * self.log_scale.exp()) @ self.orthonormal_frame().T
        return out if self.bias is None else out + self.bias


def book_decoder(latent_dim: int, data_dim: int) -> str:
    """The book's default construction for K = ``latent_dim`` and D = ``data_dim``: :data:`BOOK_DECODER` when K < D;
    the paper's ``"fixed"`` when K = D, where its zero-one beta is the identity (it reaches every coordinate, and g_2's
    inputs all carry signal), so there is nothing for the other constructions to repair. (K > D has no injective
    decoder: :class:`InjectiveDecoder` refuses it.)

    Raises:
        ValueError: non-positive sizes.
    """
    K, D = check_int(latent_dim, "latent_dim"), check_int(data_dim, "data_dim")
    return PAPER_DECODER if K == D else BOOK_DECODER


def decoder_variant(name: str, latent_dim: int) -> dict:
    """The :class:`InjectiveDecoder` arguments of a construction of :data:`DECODER_VARIANTS`, for latent dimension K:
    ``{"beta": "fixed"}``, ``{"beta": "learned"}`` or ``{"beta": "learned", "g2_active_inputs": K}``.

    Raises:
        ValueError: unknown ``name``; ``latent_dim < 1``.
    """
    check_choice(name, "decoder variant", DECODER_VARIANTS)
    K = check_int(latent_dim, "latent_dim")
    return {"fixed": {"beta": "fixed"}, "learned": {"beta": "learned"},
            "learned_init": {"beta": "learned", "g2_active_inputs": K}}[name]


def _fixed_beta(beta, K: int, D: int) -> torch.Tensor:
    """``eye(K, D)`` for ``"fixed"``, or a given ``(K, D)`` matrix checked for full row rank ``K``."""
    if isinstance(beta, str):
        return torch.eye(K, D)
    b = torch.as_tensor(beta, dtype=torch.float64)
    if tuple(b.shape) != (K, D) or not torch.isfinite(b).all():
        raise ValueError(f"beta must be 'fixed', 'learned' or a finite (K, D) = ({K}, {D}) matrix, got shape "
                         f"{tuple(b.shape)}")
    sv = torch.linalg.svdvals(b)
    if sv[-1] <= 1e-6 * sv[0]:
        raise ValueError(f"beta has rank below K = {K} (smallest singular value {float(sv[-1]):.3g}): the decoder "
                         f"would not be injective")
    return b.float()


class InjectiveDecoder(_LikelihoodHead):
    """LIDVAE decoder :math:`\\eta(z) = g_2(\\beta^\\top g_1(z))` (paper Definition 3, Eq. 7).

    Args:
        latent_dim: ``K``.
        data_dim: ``D`` (``K <= D``; for ``head="categorical"`` the number of categories).
        hidden1: ICNN hidden widths of :math:`\\psi_1` (:math:`g_1: \\mathbb{R}^K\\to\\mathbb{R}^K`).
        hidden2: ICNN hidden widths of :math:`\\psi_2` (:math:`g_2: \\mathbb{R}^D\\to\\mathbb{R}^D`).
        head: ``"bernoulli"``, ``"gaussian"`` or ``"categorical"``.
        alpha: strong-monotonicity constant of both Brenier maps (default 0.1).
        learn_scale: Gaussian head only (see ``fixed_scale``).
        fixed_scale: Gaussian head only; a positive float, takes precedence over ``learn_scale``.
        negative_slope, activation, grad_mode: passed to :class:`~lidvae_mini.models.brenier.BrenierMap`.
        beta: ``"fixed"`` (default; the paper's text: the buffer ``beta = eye(K, D)``, never trained), ``"learned"``
            (:class:`FullRankLift`, full column rank by construction) or a fixed ``(K, D)`` matrix of rank ``K``
            (a buffer).
        beta_bias: with ``beta="learned"``, add a learned bias ``b`` (D,) after ``beta^T`` (it does not affect
            injectivity).
        g2_active_inputs: the ``active_inputs`` of :math:`g_2`'s ICNN (default ``D``): ``K`` initialises it for
            inputs that span only ``K`` of its ``D`` dimensions, as :math:`\\beta^\\top g_1(z)` does (see
            :mod:`lidvae_mini.models.icnn`).

    ``forward(z)``: ``(B, K) -> (B, D)``. :meth:`beta_matrix` gives the current ``beta`` (K, D),
    :meth:`beta_singular_values` its singular values.

    Raises:
        ValueError: ``K > D`` (no injective linear map), a given ``beta`` of rank below ``K`` or of the wrong shape,
            an unknown ``beta`` name, ``beta_bias`` without a learned ``beta``, bad sizes or head; at call time, see
            ``log_prob``.
    """

    def __init__(self, latent_dim: int, data_dim: int, hidden1=(64, 64), hidden2=(256, 256),
                 head: str = "bernoulli", alpha: float = 0.1, learn_scale: bool = True, fixed_scale=None,
                 negative_slope: float = 0.2, activation: str = "leaky_relu", grad_mode: str = "explicit",
                 beta="fixed", beta_bias: bool = False, g2_active_inputs: int | None = None):
        super().__init__()
        K = check_int(latent_dim, "latent_dim")
        D = check_int(data_dim, "data_dim")
        if K > D:
            raise ValueError(f"latent_dim K = {K} must not exceed data_dim D = {D}: beta^T (D x K) needs full "
                             f"column rank K for the decoder to be injective")
        if isinstance(beta, str):
            check_choice(beta, "beta", BETAS)
        if beta_bias and not (isinstance(beta, str) and beta == "learned"):
            raise ValueError("beta_bias needs beta='learned'")
        self.latent_dim, self.data_dim = K, D
        kw = dict(alpha=alpha, negative_slope=negative_slope, activation=activation, grad_mode=grad_mode)
        self.g1 = BrenierMap(K, hidden1, **kw)
        self.g2 = BrenierMap(D, hidden2, active_inputs=g2_active_inputs, **kw)
        if isinstance(beta, str) and beta == "learned":
            self.beta_kind, self.lift = "learned", FullRankLift(K, D, bias=beta_bias)
        else:
            self.beta_kind, self.lift = "fixed", None
            self.register_buffer("beta", _fixed_beta(beta, K, D))
        self._init_head(D, head, learn_scale, fixed_scale)

    @property
    def alpha(self) -> float:
        return self.g1.alpha

    def beta_matrix(self) -> torch.Tensor:
        """The current ``beta``, shape ``(K, D)``."""
        return self.lift.matrix() if self.lift is not None else self.beta

    def beta_singular_values(self) -> torch.Tensor:
        """The singular values of ``beta``, descending, shape ``(K,)`` (all > 0: rank ``K``)."""
        if self.lift is not None:
            return self.lift.singular_values()
        return torch.linalg.svdvals(self.beta)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Likelihood parameters :math:`\\eta(z) = g_2(\\beta^\\top g_1(z))`, shape ``(B, D)``."""
        self.check_latent(z)
        u = self.g1(z)
        return self.g2(self.lift(u) if self.lift is not None else u @ self.beta)

    def injectivity_bound(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Lower bound :math:`\\alpha_1\\alpha_2\\,\\sigma_{\\min}(\\beta)\\lVert z_1 - z_2\\rVert` on
        :math:`\\lVert\\eta(z_1)-\\eta(z_2)\\rVert`, shape ``(B,)``.

        Strong monotonicity gives :math:`\\lVert g(u)-g(v)\\rVert \\ge \\alpha\\lVert u-v\\rVert` for each map, and
        :math:`\\lVert\\beta^\\top w\\rVert \\ge \\sigma_{\\min}(\\beta)\\lVert w\\rVert` (1 for ``eye(K, D)``; a bias
        cancels in the difference).
        """
        return self.g1.alpha * self.g2.alpha * self.beta_singular_values()[-1] * (z1 - z2).norm(dim=-1)


class MLPDecoder(_LikelihoodHead):
    """Classical VAE decoder :math:`\\eta(z) = f_\\theta(z)`: an MLP (paper Eq. 1), not injective in general.

    Args:
        latent_dim: ``K``; data_dim: ``D``; hidden: widths of the hidden layers (int or sequence).
        head, learn_scale, fixed_scale: as :class:`InjectiveDecoder`.
        activation: ``"relu"`` (default) or ``"tanh"`` between layers.

    ``first_layer`` is the ``nn.Linear(K, hidden[0])`` acting on ``z``.
    """

    def __init__(self, latent_dim: int, data_dim: int, hidden=(512, 512), head: str = "bernoulli",
                 learn_scale: bool = True, fixed_scale=None, activation: str = "relu"):
        super().__init__()
        self.latent_dim = check_int(latent_dim, "latent_dim")
        self.data_dim = check_int(data_dim, "data_dim")
        widths = (self.latent_dim,) + hidden_sizes(hidden)
        act = {"relu": nn.ReLU, "tanh": nn.Tanh}[check_choice(activation, "activation", ("relu", "tanh"))]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), act()]
        layers.append(nn.Linear(widths[-1], self.data_dim))
        self.net = nn.Sequential(*layers)
        self.hidden = widths[1:]
        self._init_head(self.data_dim, head, learn_scale, fixed_scale)

    @property
    def first_layer(self) -> nn.Linear:
        return self.net[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Likelihood parameters :math:`f_\\theta(z)`, shape ``(B, D)``."""
        self.check_latent(z)
        return self.net(z)


def mlp_parameter_count(latent_dim: int, data_dim: int, hidden, head: str = "bernoulli",
                        learn_scale: bool = True) -> int:
    """Parameter count of ``MLPDecoder(latent_dim, data_dim, hidden, head, learn_scale)`` (closed form)."""
    widths = (latent_dim,) + hidden_sizes(hidden) + (data_dim,)
    n = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    return n + (data_dim if head == "gaussian" and learn_scale else 0)


def matched_mlp_hidden(target, latent_dim: int, data_dim: int, n_layers: int = 2, head: str = "bernoulli",
                       learn_scale: bool = True, rtol: float = 0.1) -> tuple[int, ...]:
    """Equal hidden widths ``(h,) * n_layers`` for an :class:`MLPDecoder` whose parameter count is closest to
    ``target`` (an int, or a module whose :func:`count_parameters` is used, e.g. an :class:`InjectiveDecoder`).

    Raises:
        ValueError: no width brings the count within ``rtol`` (relative) of the target.
    """
    n_target = count_parameters(target) if isinstance(target, nn.Module) else check_int(target, "target")
    n_layers = check_int(n_layers, "n_layers")

    def count(h):
        return mlp_parameter_count(latent_dim, data_dim, (h,) * n_layers, head, learn_scale)

    lo, hi = 1, 1
    while count(hi) < n_target:
        hi *= 2
    while hi - lo > 1:  # count is increasing in h: bisection
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < n_target else (lo, mid)
    h = min((lo, hi), key=lambda w: abs(count(w) - n_target))
    if abs(count(h) - n_target) > rtol * n_target:
        raise ValueError(f"no MLP with {n_layers} hidden layer(s) has a parameter count within {rtol:.0%} of "
                         f"{n_target} (closest: width {h}, {count(h)} parameters)")
    return (h,) * n_layers
