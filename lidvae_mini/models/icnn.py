"""Input convex neural networks (ICNN): the convex potentials behind LIDVAE's Brenier maps.

Paper: Wang, Blei & Cunningham (NeurIPS 2021), Sec. 3.1, Eq. (6):

.. math::

    z_0 = u,\\qquad z_{l+1} = h_l(W_l z_l + A_l u + b_l),\\quad l = 0,\\dots,L-1,

with :math:`W_l \\ge 0`, :math:`W_0 = 0`, :math:`h_0(x) = \\mathrm{LReLU}_{0.2}(x)^2`, later
:math:`h_l = \\mathrm{LReLU}_{0.2}` and a scalar last layer. :class:`ICNN` adds the strongly convex
term :math:`(\\alpha/2)\\lVert u\\rVert^2` (``alpha > 0``), so that its gradient (the Brenier map,
:mod:`lidvae_mini.models.brenier`) is *strongly monotone* and hence injective:

.. math::

    \\psi(u) = w_L^\\top z_L + a_L^\\top u + b_L + \\tfrac{\\alpha}{2}\\lVert u\\rVert^2 .

Differences from the official code (``yixinwang/lidvae-public`` at commit ``8a0a6a5``; the book's appendix *Errata of the
reference implementation* gives each with its evidence):

- every layer lives in an :class:`torch.nn.ModuleList` / :class:`torch.nn.ParameterList`, so it is in
  ``parameters()`` and ``state_dict()``;
- :math:`W_l = \\mathrm{softplus}(R_l)/n_{l}` (``R_l`` a raw parameter, ``n_l`` the fan-in): non-negative by
  construction and with a non-zero gradient everywhere. The official ``clamp(W, min=0.01)`` with
  ``xavier_uniform_(gain=0.01)`` starts every entry below 0.01 and therefore freezes every ``W`` at the
  constant 0.01 for all of training (the clamp's gradient is zero there);
- the map is strongly monotone thanks to ``alpha``, with the certified constant
  :math:`\\langle g(u)-g(v), u-v\\rangle \\ge \\alpha\\lVert u-v\\rVert^2`. Without it, injectivity rests on strict
  convexity, which needs :math:`A_0` of full column rank and comes with no margin.

Two properties of the paper's leaky-ReLU layers (``activation="leaky_relu"``, the default) worth knowing:
:math:`\\psi` has kinks, so :math:`\\nabla\\psi` **jumps** across them (strongly monotone and injective, but
neither continuous nor onto; Definition 3 asks for continuous maps), and the biases ``b_l`` of layers
``l >= 1`` only move kinks, so the map's derivative in them is zero almost everywhere.
``activation="softplus"`` (``h_0 = softplus^2``, ``h_l = softplus``) gives a smooth potential and a
continuous, onto map, as a change-of-variables density needs.

Initialisation (convex and trainable from step 0): ``R_l ~ N(softplus^{-1}(1), 0.5^2)`` so that
:math:`W_l` has positive entries around ``1/fan_in`` (each unit sees a positive average of the
previous layer); :math:`A_l` entries ``~ N(0, 1/n)`` with ``n = active_inputs`` (default ``dim``): Kaiming-like
fan-in scaling for a linear unit, so pre-activations have unit variance when ``n`` coordinates of ``u`` carry unit
variance and the rest are zero. The LIDVAE's :math:`g_2` reads :math:`\beta^\top g_1(z)`, which spans only ``K``
of its ``D`` dimensions: initialised for ``D`` active inputs, its pre-activations start with variance ``K/D``
(0.02 for MNIST with ``K = 16``); ``active_inputs=K`` restores unit scale (the effective fan-in; He et al. 2015's
argument with the fan-in counted over the inputs that carry signal); biases zero. Convexity holds for *every* parameter
value, so no projection step is ever needed.

The gradient :math:`\\nabla_u \\psi` is written out explicitly in :meth:`ICNN.gradient` (the backward pass
of Eq. 6 as a forward computation). Training through it needs a single backward pass instead of autograd's
double backward; :mod:`lidvae_mini.models.brenier` uses it by default.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_batch, check_choice, check_int, check_positive, hidden_sizes

ACTIVATIONS = ("leaky_relu", "softplus")
_SOFTPLUS_INV_ONE = math.log(math.e - 1.0)  # softplus(x) = 1


class ICNN(nn.Module):
    """Input convex neural network :math:`\\psi: \\mathbb{R}^{dim} \\to \\mathbb{R}` (paper Eq. 6) plus
    :math:`(\\alpha/2)\\lVert u\\rVert^2`.

    Args:
        dim: input dimension ``d``.
        hidden: widths ``(h_1, ..., h_{L-1})`` of the hidden layers ``z_1, ..., z_{L-1}`` (an int means one
            hidden layer). The scalar output is layer ``L``.
        alpha: strong-convexity weight ``alpha > 0`` (default 0.1): :math:`\\nabla^2\\psi \\succeq \\alpha I`.
        negative_slope: slope of the leaky ReLU for negative inputs (paper: 0.2), in ``[0, 1)``.
        activation: ``"leaky_relu"`` (paper: :math:`h_l = \\mathrm{LReLU}` for ``l >= 1``; then
            :math:`\\nabla\\psi` jumps across the kinks of those layers: still strongly monotone, but
            discontinuous) or ``"softplus"`` (:math:`h_0 = \\mathrm{softplus}^2`, :math:`h_l = \\mathrm{softplus}`:
            :math:`\\psi` is smooth, :math:`\\nabla\\psi` continuous with a continuous Jacobian, as a
            change-of-variables density needs).
        output_bias: include the constant ``b_L`` (it does not change :math:`\\nabla\\psi`;
            :class:`~lidvae_mini.models.brenier.BrenierMap` leaves it out so that no parameter is dead).
        active_inputs: the number ``n <= dim`` of input coordinates expected to carry signal, which sets the
            scale of the input weights at initialisation (``N(0, 1/n)``; default ``dim``; see the module docstring).
        hidden_bias: give layers ``l >= 1`` biases ``b_l``. With leaky-ReLU layers, ``b_l`` only moves the
            kinks: :math:`\\nabla\\psi` has zero derivative in ``b_l`` almost everywhere, so gradient training
            of a Brenier map never changes it (and weight decay would shrink it to 0).
            :class:`~lidvae_mini.models.brenier.BrenierMap` therefore leaves them out for ``"leaky_relu"``.

    Shapes: ``forward(u)``: ``(B, dim) -> (B,)``; ``gradient(u)``: ``(B, dim) -> (B, dim)``.

    Raises:
        ValueError: non-positive ``dim``/widths/``alpha``, ``negative_slope`` outside ``[0, 1)``, unknown
            ``activation``; at call time, inputs failing :func:`~lidvae_mini._checks.check_batch`.
    """

    def __init__(self, dim: int, hidden=(64, 64), alpha: float = 0.1, negative_slope: float = 0.2,
                 activation: str = "leaky_relu", output_bias: bool = True, hidden_bias: bool = True,
                 active_inputs: int | None = None):
        super().__init__()
        self.dim = check_int(dim, "dim")
        self.active_inputs = self.dim if active_inputs is None else check_int(active_inputs, "active_inputs")
        if self.active_inputs > self.dim:
            raise ValueError(f"active_inputs must be at most dim = {self.dim}, got {active_inputs!r}")
        self.hidden = hidden_sizes(hidden)
        self.alpha = check_positive(alpha, "alpha")
        slope = float(negative_slope)
        if not 0.0 <= slope < 1.0:
            raise ValueError(f"negative_slope must be in [0, 1), got {negative_slope!r}")
        self.negative_slope = slope
        self.activation = check_choice(activation, "activation", ACTIVATIONS)
        widths = self.hidden + (1,)
        # A_l u + b_l for l = 0..L-1 (hidden layers); the output layer's a_L u (+ b_L) is separate.
        self.A = nn.ModuleList([nn.Linear(self.dim, h, bias=(l == 0 or hidden_bias))
                                for l, h in enumerate(self.hidden)])
        # Raw parameters of W_l >= 0 (l = 1..L-1 hidden, then the output row w_L); W_0 = 0 is absent.
        self.W_raw = nn.ParameterList([nn.Parameter(torch.empty(widths[i + 1], widths[i]))
                                       for i in range(len(self.hidden))])
        self.a_out = nn.Parameter(torch.empty(self.dim))
        self.b_out = nn.Parameter(torch.zeros(())) if output_bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as documented in the module docstring (convex and trainable from step 0)."""
        std = 1.0 / math.sqrt(self.active_inputs)
        for lin in self.A:
            lin.weight.normal_(0.0, std)
            if lin.bias is not None:
                lin.bias.zero_()
        for raw in self.W_raw:
            raw.normal_(_SOFTPLUS_INV_ONE, 0.5)
        self.a_out.normal_(0.0, std)
        if self.b_out is not None:
            self.b_out.zero_()

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.hidden}, alpha={self.alpha}, "
                f"negative_slope={self.negative_slope}, activation={self.activation!r}"
                + (f", active_inputs={self.active_inputs}" if self.active_inputs != self.dim else ""))

    # -- weights ---------------------------------------------------------------------------------------
    def positive_weights(self) -> list[torch.Tensor]:
        """The effective non-negative weights ``[W_1, ..., W_{L-1}, w_L]`` (``softplus(R)/fan_in``)."""
        return [F.softplus(raw) / raw.shape[1] for raw in self.W_raw]

    # ``_smoothing`` (tau >= 0, private, default 0 = exact) replaces the leaky ReLU of layers l >= 1 by the
    # smooth convex nondecreasing ``slope*s + (1 - slope)*tau*softplus(s/tau)`` (-> leaky ReLU as tau -> 0).
    # Only BrenierMap.inverse uses it, on a private copy, as a homotopy across the kinks.
    _smoothing: float = 0.0

    def _act(self, s: torch.Tensor) -> torch.Tensor:
        if self.activation == "leaky_relu":
            tau = self._smoothing
            if tau > 0:
                return self.negative_slope * s + (1 - self.negative_slope) * tau * F.softplus(s / tau)
            return F.leaky_relu(s, self.negative_slope)
        return F.softplus(s)

    def _act_grad(self, s: torch.Tensor) -> torch.Tensor:
        if self.activation == "leaky_relu":
            tau = self._smoothing
            if tau > 0:
                return self.negative_slope + (1 - self.negative_slope) * torch.sigmoid(s / tau)
            # piecewise constant: no gradient w.r.t. s, as in autograd
            return torch.where(s > 0, torch.ones_like(s), torch.full_like(s, self.negative_slope)).detach()
        return torch.sigmoid(s)

    def _h0(self, s: torch.Tensor) -> torch.Tensor:
        if self.activation == "leaky_relu":
            return F.leaky_relu(s, self.negative_slope).square()
        return F.softplus(s).square()

    def _h0_grad(self, s: torch.Tensor) -> torch.Tensor:
        if self.activation == "leaky_relu":
            mask = torch.where(s > 0, torch.ones_like(s), torch.full_like(s, self.negative_slope)).detach()
            return 2.0 * F.leaky_relu(s, self.negative_slope) * mask
        return 2.0 * F.softplus(s) * torch.sigmoid(s)

    def _check(self, u) -> torch.Tensor:
        return check_batch(u, self.dim, "u", like=self.a_out)

    # -- potential and its gradient --------------------------------------------------------------------
    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Potential :math:`\\psi(u)`, shape ``(B,)`` (Eq. 6 plus :math:`(\\alpha/2)\\lVert u\\rVert^2`)."""
        u = self._check(u)
        Ws = self.positive_weights()
        z = self._h0(self.A[0](u))
        for l in range(1, len(self.hidden)):
            z = self._act(F.linear(z, Ws[l - 1]) + self.A[l](u))
        out = F.linear(z, Ws[-1]).squeeze(-1) + u @ self.a_out + 0.5 * self.alpha * u.square().sum(-1)
        if self.b_out is not None:
            out = out + self.b_out
        return out

    def gradient(self, u: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla_u\\psi(u)`, shape ``(B, dim)``, computed explicitly (no autograd on ``u``).

        The backward pass of Eq. (6) written as a forward computation: with ``s_l`` the pre-activations,
        ``delta_L = w_L`` and, for ``l = L-1, ..., 1``, ``e_l = delta_{l+1} * h_l'(s_l)``,
        ``delta_l = e_l W_l``; at the first layer ``e_0 = delta_1 * h_0'(s_0)``
        (``h_0'(s) = 2 LReLU(s) LReLU'(s)``). Then
        :math:`\\nabla\\psi = \\sum_l A_l^\\top e_l + a_L + \\alpha u`. Differentiable w.r.t. the parameters
        and ``u`` by ordinary (first-order) autograd; equals the autograd gradient (tested).
        """
        u = self._check(u)
        Ws = self.positive_weights()
        # forward: pre-activations of every hidden layer
        s0 = self.A[0](u)
        pre = [s0]
        z = self._h0(s0)
        for l in range(1, len(self.hidden)):
            s = F.linear(z, Ws[l - 1]) + self.A[l](u)
            pre.append(s)
            z = self._act(s)
        return self.backward_pass(u, Ws, pre)

    def backward_pass(self, u: torch.Tensor, Ws: list, pre: list) -> torch.Tensor:
        """The backward half of :meth:`gradient`, written out: ``grad psi(u)`` (B, D) from the input ``u`` (B, D),
        the positive weights ``Ws`` and the forward pass's pre-activations ``pre`` (``pre[0] = A_0 u``, then one
        per hidden layer). Also used where the forward pass is computed differently
        (:func:`lidvae_mini.models.text.lifted_brenier` folds a linear lift into every ``A_l``)."""
        delta = Ws[-1].expand(u.shape[0], -1)  # d psi / d z_{L-1}: (B, h_{L-1})
        grad = self.a_out + self.alpha * u
        for l in range(len(self.hidden) - 1, 0, -1):
            e = delta * self._act_grad(pre[l])
            grad = grad + e @ self.A[l].weight
            delta = e @ Ws[l - 1]
        return grad + (delta * self._h0_grad(pre[0])) @ self.A[0].weight
