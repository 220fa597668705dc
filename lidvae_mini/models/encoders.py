"""Variational families q(z|x) for the VAE chapters (PyTorch).

Two amortised encoders share one interface, so the VAE and the training loop never ask which one
they hold:

* :class:`GaussianEncoder`: ``q(z|x) = N(mu(x), diag exp(logvar(x)))`` from an MLP (Kingma & Welling 2014).
* :class:`ConditionalRealNVP`: the paper's "two-layer RealNVP" posterior (supplement C; Dinh et al. 2017):
  a Gaussian base from an MLP of x, then affine coupling layers with alternating masks whose scale and
  shift networks also see features of x, so the whole flow depends on x. (The official TensorFlow code
  uses a volume-preserving flow that ignores x and never transforms two of the 64 dimensions; see the
  book's appendix *Errata of the reference implementation*.) The density is exact by the change of variables.

Common interface (``B`` datapoints of dimension ``D``, ``n`` samples, ``K`` latent dimensions):

``sample(x, n_samples)``
    reparameterised draws ``z`` of shape ``(n, B, K)`` and their ``log q(z|x)`` of shape ``(n, B)``, in nats.
``log_prob(z, x)``
    ``log q(z|x)`` for ``z`` of shape ``(B, K)`` or ``(n, B, K)``; returns ``(B,)`` or ``(n, B)``.
``mean(x)``
    ``E_q[z|x]``, shape ``(B, K)`` (exact for the Gaussian; Monte Carlo with the same base draws for every
    datapoint for the flow): the quantity whose variance across datapoints defines the active units (paper §4.1).

:class:`GaussianEncoder` also has ``sample_with_kl(x, n_samples)`` (draws, ``log q`` and the analytic KL per
dimension from one pass of its network: what a training step of :class:`lidvae_mini.models.vae.VAE` uses). Both encoders
return their draws and densities in the dtype of ``x``, also under ``torch.autocast`` (mixed precision runs the
networks in bfloat16 and the reparameterisation, densities and KL in float32).

Inputs are checked first: ``x`` must be a floating-point ``torch.Tensor`` of shape ``(B, D)`` with finite
entries, else ``TypeError``/``ValueError``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_batch, check_choice, check_int, hidden_sizes  # check_batch re-exported for vae, mixture

LOG_2PI = math.log(2.0 * math.pi)
#: ``logvar`` is clamped to this range: variances from 3e-7 to 2.2e4 (keeps exp() finite early in training).
LOGVAR_RANGE = (-15.0, 10.0)
#: Base draws per datapoint for a flow's posterior mean (:meth:`ConditionalRealNVP.mean`), shared by all x.
MEAN_SAMPLES = 512
_ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "softplus": nn.Softplus}


def mlp(in_dim: int, hidden, out_dim: int | None, activation: str = "relu") -> nn.Sequential:
    """A multilayer perceptron ``in_dim -> hidden[0] -> ... -> out_dim`` with ``activation`` between layers.

    With ``out_dim=None`` the network ends with the last hidden layer *and its activation* (a feature trunk).
    """
    check_choice(activation, "activation", sorted(_ACTIVATIONS))
    layers: list[nn.Module] = []
    prev = check_int(in_dim, "in_dim")
    for h in hidden_sizes(hidden):
        layers += [nn.Linear(prev, h), _ACTIVATIONS[activation]()]
        prev = h
    if out_dim is not None:
        layers.append(nn.Linear(prev, check_int(out_dim, "out_dim")))
    return nn.Sequential(*layers)


def _check_latent(z, batch: int, dim: int, name: str = "z") -> torch.Tensor:
    if not isinstance(z, torch.Tensor) or not torch.is_floating_point(z):
        raise TypeError(f"{name} must be a floating-point torch.Tensor")
    if z.ndim not in (2, 3) or z.shape[-1] != dim or z.shape[-2] != batch:
        raise ValueError(f"{name} must have shape ({batch}, {dim}) or (n, {batch}, {dim}), got {tuple(z.shape)}")
    return z


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``log N(z; mu, diag exp(logvar))`` summed over the last axis (nats); broadcasts leading axes."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last axis (nats): the VAE prior."""
    return -0.5 * (LOG_2PI + z ** 2).sum(-1)


class GaussianEncoder(nn.Module):
    """Diagonal Gaussian posterior ``q(z|x) = N(mu(x), diag exp(logvar(x)))`` from an MLP.

    Args:
        data_dim: D, width of ``x``.
        latent_dim: K.
        hidden: hidden layer sizes of the MLP (an int means one layer).
        activation: ``"relu"``, ``"elu"``, ``"tanh"`` or ``"softplus"``.

    ``forward(x)`` returns ``(mu, logvar)``, each ``(B, K)``; ``logvar`` is clamped to :data:`LOGVAR_RANGE`.
    """

    has_analytic_kl = True

    def __init__(self, data_dim: int, latent_dim: int, hidden=(256,), activation: str = "relu"):
        super().__init__()
        self.data_dim = check_int(data_dim, "data_dim")
        self.latent_dim = check_int(latent_dim, "latent_dim")
        self.net = mlp(self.data_dim, hidden, 2 * self.latent_dim, activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_batch(x, self.data_dim)
        mu, logvar = self.net(x).chunk(2, dim=-1)
        # in x's dtype: under torch.autocast the MLP runs in bfloat16, the draws, densities and KL in float32
        return mu.to(x.dtype), logvar.clamp(*LOGVAR_RANGE).to(x.dtype)

    @staticmethod
    def _draw(mu: torch.Tensor, logvar: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        eps = torch.randn((n,) + tuple(mu.shape), dtype=mu.dtype, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        log_q = -0.5 * (LOG_2PI + logvar + eps ** 2).sum(-1)
        return z, log_q

    @staticmethod
    def _kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return 0.5 * (mu ** 2 + torch.exp(logvar) - logvar - 1.0)

    def sample(self, x: torch.Tensor, n_samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised ``z = mu + exp(logvar/2) * eps``: ``z`` (n, B, K) and ``log q(z|x)`` (n, B), nats."""
        n = check_int(n_samples, "n_samples")
        mu, logvar = self(x)
        return self._draw(mu, logvar, n)

    def sample_with_kl(self, x: torch.Tensor, n_samples: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`sample` and :meth:`kl_per_dim` from **one** pass of the encoder network (the ELBO of a training
        step needs both): ``z`` (n, B, K), ``log q(z|x)`` (n, B) and the analytic KL per dimension (B, K), nats.

        The same numbers as calling :meth:`sample` then :meth:`kl_per_dim` (the same noise draws; the KL draws none).
        """
        n = check_int(n_samples, "n_samples")
        mu, logvar = self(x)
        z, log_q = self._draw(mu, logvar, n)
        return z, log_q, self._kl(mu, logvar)

    def log_prob(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log q(z|x)`` in nats: ``z`` (B, K) -> (B,), or (n, B, K) -> (n, B)."""
        mu, logvar = self(x)
        _check_latent(z, mu.shape[0], self.latent_dim)
        return gaussian_log_prob(z, mu, logvar)

    def mean(self, x: torch.Tensor, n_samples: int | None = None, seed: int | None = None) -> torch.Tensor:
        """``E_q[z|x] = mu(x)``, shape (B, K) (``n_samples`` and ``seed`` are ignored: the mean is exact)."""
        return self(x)[0]

    def kl_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Analytic ``KL(q(z_k|x) || N(0, 1))`` per datapoint and dimension, shape (B, K), nats.

        ``0.5 (mu^2 + exp(logvar) - logvar - 1)``; summed over k it is the KL term of the ELBO.
        """
        mu, logvar = self(x)
        return self._kl(mu, logvar)


class AffineCoupling(nn.Module):
    """One conditional affine coupling layer (RealNVP, Dinh et al. 2017), conditioned on a context.

    With a binary ``mask`` b (1 = passed through), ``y = b*z + (1-b)*(z*exp(s) + t)`` where
    ``(s, t) = net([b*z, context])`` and ``s = scale * tanh(raw)``; ``log|det dy/dz| = sum((1-b)*s)``.
    The last layer is zero-initialised, so a new layer is the identity.
    """

    def __init__(self, latent_dim: int, context_dim: int, hidden, mask: torch.Tensor, activation: str = "relu"):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))
        self.net = mlp(latent_dim + context_dim, hidden, 2 * latent_dim, activation)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.scale = nn.Parameter(torch.ones(latent_dim))

    def _shift_scale(self, z_kept: torch.Tensor, context: torch.Tensor):
        context = context.expand(z_kept.shape[:-1] + context.shape[-1:])
        raw_s, t = self.net(torch.cat([z_kept, context], dim=-1)).chunk(2, dim=-1)
        free = 1.0 - self.mask
        return self.scale * torch.tanh(raw_s) * free, t * free

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, log|det dy/dz|)``; ``z`` (..., K), ``context`` broadcastable to (..., C)."""
        s, t = self._shift_scale(z * self.mask, context)
        return z * torch.exp(s) + t, s.sum(-1)

    def inverse(self, y: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log|det dy/dz|)`` evaluated at the recovered ``z``."""
        s, t = self._shift_scale(y * self.mask, context)
        return (y - t) * torch.exp(-s), s.sum(-1)


class ConditionalRealNVP(nn.Module):
    """RealNVP posterior ``q(z|x)``: a Gaussian base from an MLP of x pushed through x-conditioned couplings.

    ``u ~ N(mu(x), diag exp(logvar(x)))``, ``z = f_L(... f_1(u; h(x)) ...; h(x))``, where ``h(x)`` are the
    trunk features and ``f_l`` are :class:`AffineCoupling` layers with alternating even/odd masks, so
    every coordinate is transformed when ``n_layers >= 2``. Exact density:
    ``log q(z|x) = log N(u; mu, sigma^2) - sum_l log|det df_l/du_{l-1}|`` (paper supplement C, "two-layer RealNVP").

    Args:
        data_dim: D.
        latent_dim: K.
        hidden: hidden sizes of the trunk MLP of x (its last layer gives the context ``h(x)``).
        n_layers: number of coupling layers (2 in the paper).
        coupling_hidden: hidden sizes of each coupling's scale/shift network.
        activation: activation of all MLPs.
    """

    has_analytic_kl = False

    def __init__(self, data_dim: int, latent_dim: int, hidden=(256,), n_layers: int = 2, coupling_hidden=(64,),
                 activation: str = "relu"):
        super().__init__()
        self.data_dim = check_int(data_dim, "data_dim")
        self.latent_dim = check_int(latent_dim, "latent_dim")
        n_layers = check_int(n_layers, "n_layers")
        sizes = hidden_sizes(hidden)
        self.trunk = mlp(self.data_dim, sizes, None, activation)
        self.base = nn.Linear(sizes[-1], 2 * self.latent_dim)
        idx = torch.arange(self.latent_dim)
        self.couplings = nn.ModuleList(
            AffineCoupling(self.latent_dim, sizes[-1], coupling_hidden, ((idx + layer) % 2 == 0), activation)
            for layer in range(n_layers))

    def base_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mu, logvar, context)`` of the base Gaussian and the coupling context, each with batch axis B."""
        check_batch(x, self.data_dim)
        h = self.trunk(x)
        mu, logvar = self.base(h).chunk(2, dim=-1)
        # in x's dtype: under torch.autocast the networks run in bfloat16, the draws and densities in float32
        return mu.to(x.dtype), logvar.clamp(*LOGVAR_RANGE).to(x.dtype), h

    def flow(self, u: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Push base points ``u`` (..., B, K) through the couplings: ``(z, total log|det dz/du|)``."""
        logdet = torch.zeros(u.shape[:-1], dtype=u.dtype, device=u.device)
        for layer in self.couplings:
            u, ld = layer(u, context)
            logdet = logdet + ld
        return u, logdet

    def inverse(self, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Invert :meth:`flow`: ``(u, total log|det dz/du|)``."""
        logdet = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for layer in reversed(self.couplings):
            z, ld = layer.inverse(z, context)
            logdet = logdet + ld
        return z, logdet

    def sample(self, x: torch.Tensor, n_samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised draws: ``z`` (n, B, K) and exact ``log q(z|x)`` (n, B), nats."""
        n = check_int(n_samples, "n_samples")
        mu, logvar, h = self.base_params(x)
        eps = torch.randn((n,) + tuple(mu.shape), dtype=mu.dtype, device=mu.device)
        u = mu + torch.exp(0.5 * logvar) * eps
        z, logdet = self.flow(u, h)
        log_q = -0.5 * (LOG_2PI + logvar + eps ** 2).sum(-1) - logdet
        return z, log_q

    def log_prob(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log q(z|x)`` in nats: ``z`` (B, K) -> (B,), or (n, B, K) -> (n, B)."""
        mu, logvar, h = self.base_params(x)
        _check_latent(z, mu.shape[0], self.latent_dim)
        u, logdet = self.inverse(z, h)
        return gaussian_log_prob(u, mu, logvar) - logdet

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of the *base* Gaussian (before the flow), each (B, K)."""
        mu, logvar, _ = self.base_params(x)
        return mu, logvar

    def mean(self, x: torch.Tensor, n_samples: int = MEAN_SAMPLES, seed: int = 0) -> torch.Tensor:
        """Monte Carlo ``E_q[z|x]``, shape (B, K), with **common random numbers** across datapoints.

        The same ``n_samples`` base draws ``eps`` (a private generator seeded by ``seed``; the global torch RNG is
        untouched) push every x through ``z = f(mu(x) + sigma(x) eps; h(x))``, and on every call, so batches agree.
        Why: the active units count ``Var_x E_q[z_d|x] >= 0.01``. With fresh draws per datapoint, a collapsed
        unit (``q(z_d|x) = N(0, 1)`` for every x) would show Monte Carlo noise of variance ``1/n_samples``
        across x (0.016 at 64 draws, over the threshold). With common draws that unit's estimate is the same
        number for every x, so its variance is exactly 0; in general the noise adds at most
        ``E_x Var_q(z_d|x) / n_samples`` in expectation (<= 1/512 ~ 0.002 for posteriors no wider than the
        prior at the default 512 draws, a fifth of the threshold). Draws are pushed through in chunks of 128.

        Raises:
            TypeError/ValueError: bad ``x`` (see the module docstring), non-positive ``n_samples``.
        """
        n = check_int(n_samples, "n_samples")
        mu, logvar, h = self.base_params(x)
        gen = torch.Generator(device=mu.device).manual_seed(check_int(seed, "seed", minimum=0))
        eps = torch.randn((n, 1, self.latent_dim), generator=gen, device=mu.device).to(mu.dtype)
        total = torch.zeros_like(mu)
        for chunk in eps.split(128):
            total = total + self.flow(mu + torch.exp(0.5 * logvar) * chunk, h)[0].sum(0)
        return total / n


ENCODERS = {"gaussian": GaussianEncoder, "realnvp": ConditionalRealNVP}


def make_encoder(kind: str, data_dim: int, latent_dim: int, hidden=(256,), **kwargs) -> nn.Module:
    """Build an encoder by name: ``"gaussian"`` (:class:`GaussianEncoder`) or ``"realnvp"`` (:class:`ConditionalRealNVP`).

    Raises:
        ValueError: unknown ``kind``.
    """
    check_choice(kind, "encoder", sorted(ENCODERS))
    return ENCODERS[kind](data_dim, latent_dim, hidden=hidden, **kwargs)
