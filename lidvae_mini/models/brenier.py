"""Brenier maps: gradients of (strongly) convex ICNN potentials, their inverses and Jacobians.

Paper Sec. 3.1: a Brenier map is :math:`g = \\nabla\\psi` for a convex :math:`\\psi`; LIDVAE parametrises
:math:`\\psi` by an ICNN (Eq. 6) and uses :math:`g(u) = \\partial z_L / \\partial u`. With the strongly
convex term :math:`(\\alpha/2)\\lVert u\\rVert^2` of :class:`~lidvae_mini.models.icnn.ICNN`,

.. math::

    \\langle g(u) - g(v),\\, u - v\\rangle \\;\\ge\\; \\alpha\\,\\lVert u - v\\rVert^2 ,

so ``g(u) = g(v)`` forces ``u = v`` (injectivity) and :math:`\\lVert g(u)-g(v)\\rVert \\ge \\alpha\\lVert u-v\\rVert`.
The inverse solves :math:`\\nabla\\psi(u) = y` by minimising the strongly convex
:math:`\\psi(u) - \\langle u, y\\rangle` (the convex conjugate :math:`\\psi^*(y)` is its negative minimum and
:math:`\\nabla\\psi^* = g^{-1}`).

Two ways to evaluate ``g`` (``grad_mode``): ``"explicit"`` (default, :meth:`ICNN.gradient`: the ICNN's
backward pass written as a forward computation, trained with one ordinary backward pass) and
``"autograd"`` (``torch.autograd.grad(..., create_graph=True)``, double backward during training, as the
official code). They agree to rounding (tested); ``benchmarks/lidvae_step.py`` times both.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from .._checks import check_choice, check_int, check_positive
from .._checks import check_batch
from .icnn import ICNN

GRAD_MODES = ("explicit", "autograd")


class InverseError(RuntimeError):
    """:meth:`BrenierMap.inverse` did not reach the requested residual (the message names it)."""


class BrenierMap(nn.Module):
    """Brenier map :math:`g = \\nabla_u\\psi: \\mathbb{R}^{dim}\\to\\mathbb{R}^{dim}` of an :class:`ICNN` potential.

    Args:
        dim: dimension ``d`` of input and output.
        hidden: ICNN hidden widths (see :class:`~lidvae_mini.models.icnn.ICNN`).
        alpha: strong-monotonicity constant ``alpha > 0`` (default 0.1).
        negative_slope, activation: passed to the ICNN (paper: 0.2, ``"leaky_relu"``).
        grad_mode: ``"explicit"`` (default, faster) or ``"autograd"``.
        active_inputs: passed to the ICNN (input coordinates expected to carry signal; sets the initial scale).

    The potential has no output bias (it does not move the map), and with ``"leaky_relu"`` no biases on
    layers ``l >= 1`` (their gradient through the map is zero almost everywhere; see
    :class:`~lidvae_mini.models.icnn.ICNN`): every parameter of a BrenierMap receives a gradient.

    ``forward(u)``: ``(B, d) -> (B, d)``. Differentiable w.r.t. parameters and ``u`` when grad is enabled;
    under :func:`torch.no_grad` it returns a tensor without graph (``"autograd"`` mode enables grad
    internally to differentiate the potential).

    Example:
        >>> import torch
        >>> g = BrenierMap(3, hidden=(8,), alpha=0.5)
        >>> u, v = torch.randn(5, 3), torch.randn(5, 3)
        >>> # strongly monotone: <g(u) - g(v), u - v> >= alpha |u - v|^2, so g is injective
        >>> bool((((g(u) - g(v)) * (u - v)).sum(1) >= 0.5 * ((u - v) ** 2).sum(1) - 1e-5).all())
        True

    Raises:
        ValueError/TypeError: bad constructor arguments; inputs failing
            :func:`lidvae_mini._checks.check_batch` (shape ``(B, d)``, floating dtype equal to the
            parameters', same device, finite).
    """

    def __init__(self, dim: int, hidden=(64, 64), alpha: float = 0.1, negative_slope: float = 0.2,
                 activation: str = "leaky_relu", grad_mode: str = "explicit", active_inputs: int | None = None):
        super().__init__()
        self.potential_net = ICNN(dim, hidden, alpha=alpha, negative_slope=negative_slope,
                                  activation=activation, output_bias=False,
                                  hidden_bias=(activation != "leaky_relu"), active_inputs=active_inputs)
        self.grad_mode = check_choice(grad_mode, "grad_mode", GRAD_MODES)

    @property
    def dim(self) -> int:
        return self.potential_net.dim

    @property
    def alpha(self) -> float:
        return self.potential_net.alpha

    def extra_repr(self) -> str:
        return f"grad_mode={self.grad_mode!r}"

    def potential(self, u: torch.Tensor) -> torch.Tensor:
        """The convex potential :math:`\\psi(u)`, shape ``(B,)`` (defined up to an additive constant)."""
        return self.potential_net(u)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """:math:`g(u) = \\nabla_u\\psi(u)`, shape ``(B, d)``."""
        if self.grad_mode == "explicit":
            return self.potential_net.gradient(u)
        return self.autograd_forward(u)

    def autograd_forward(self, u: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla_u\\psi(u)` by autograd (``create_graph`` whenever the caller records gradients)."""
        check_batch(u, self.dim, "u", like=self.potential_net.a_out)
        outer = torch.is_grad_enabled()
        with torch.enable_grad():
            v = u if (outer and u.requires_grad) else u.detach().requires_grad_(True)
            psi = self.potential_net(v).sum()
            (g,) = torch.autograd.grad(psi, v, create_graph=outer)
        return g if outer else g.detach()

    # -- inverse -----------------------------------------------------------------------------------------
    def inverse(self, y: torch.Tensor, tol: float = 1e-6, max_iter: int = 100, method: str = "newton",
                raise_on_failure: bool = True):
        """Solve :math:`\\nabla\\psi(u) = y` row by row; returns ``(u, residual)``.

        Minimises :math:`\\psi(u_i) - \\langle u_i, y_i\\rangle` for every row ``i`` (strongly convex, so the
        minimiser is unique and is :math:`g^{-1}(y_i) = \\nabla\\psi^*(y_i)`), in float64 on a detached copy of
        the potential, starting from ``u = y``:

        - ``method="newton"`` (default): Newton steps, solved by conjugate gradients with Hessian-vector
          products (the Hessian is :math:`\\succeq\\alpha I`), each row with its own exact line search
          (a root of the directional derivative, which is monotone). With the paper's leaky-ReLU layers
          :math:`\\psi` has kinks and Newton can zig-zag across them; rows still unsolved after 30 steps are
          re-solved by a homotopy that smooths the kinks at a scale shrinking from 0.1 to 1e-12;
        - ``method="lbfgs"``: :class:`torch.optim.LBFGS` with a strong-Wolfe line search on the sum over rows.

        ``residual`` is :math:`\\max_i \\lVert g(u_i) - y_i\\rVert_\\infty` evaluated in float64 (a Python float);
        ``u`` has ``y``'s dtype and device and carries no graph.

        Args:
            y: targets, shape ``(B, d)``.
            tol: required residual (max-abs, in the units of ``y``).
            max_iter: maximal number of Newton (or L-BFGS) iterations.
            method: ``"newton"`` or ``"lbfgs"``.
            raise_on_failure: raise :class:`InverseError` (a ``RuntimeError``) when ``residual > tol``;
                otherwise return the last iterate.

        Raises:
            InverseError: not converged (the message gives the residual, ``tol`` and ``max_iter``). With the
                paper's leaky-ReLU layers ``g`` jumps across kinks, so a ``y`` inside a jump is not in the
                range of ``g`` and cannot be reached.
            ValueError/TypeError: ``y`` fails :func:`~lidvae_mini._checks.check_batch`; bad ``tol``, ``max_iter``
                or ``method``.
        """
        net = self.potential_net
        check_batch(y, self.dim, "y", like=net.a_out)
        tol = check_positive(tol, "tol")
        max_iter = check_int(max_iter, "max_iter")
        check_choice(method, "method", ("newton", "lbfgs"))
        net64 = copy.deepcopy(net).double().requires_grad_(False)
        target = y.detach().double()
        with torch.enable_grad():
            if method == "newton":
                u = _inverse_newton(net64, target, tol, max_iter)
            else:
                u = _lbfgs_solve(net64, target, tol, max_iter)
            resid = (net64.gradient(u) - target).abs()
        residual = float(resid.max()) if resid.numel() else 0.0
        if not math.isfinite(residual) or (raise_on_failure and residual > tol):
            raise InverseError(f"BrenierMap.inverse did not converge: residual max|g(u) - y| = {residual:.3e} "
                               f"> tol = {tol:.1e} after max_iter = {max_iter} {method} iterations "
                               f"(raise max_iter, loosen tol, or check that y is in the range of g)")
        return u.detach().to(y.dtype), residual

    # -- Jacobian -----------------------------------------------------------------------------------------
    def jacobian(self, u: torch.Tensor) -> torch.Tensor:
        """Jacobian :math:`\\partial g/\\partial u = \\nabla^2\\psi(u)`, shape ``(B, d, d)`` (symmetric PSD,
        :math:`\\succeq\\alpha I` where defined).

        Exact, by ``d`` reverse-mode passes (``create_graph`` when grad is enabled, so it can be trained
        through): meant for small ``d`` (e.g. change-of-variables densities in 2-D). With the paper's
        leaky-ReLU layers it is the almost-everywhere Hessian (the jumps of ``g`` are not in it).
        """
        check_batch(u, self.dim, "u", like=self.potential_net.a_out)
        outer = torch.is_grad_enabled()
        with torch.enable_grad():
            v = u if (outer and u.requires_grad) else u.detach().requires_grad_(True)
            g = self.potential_net.gradient(v)
            rows = [torch.autograd.grad(g[:, i].sum(), v, create_graph=outer, retain_graph=True)[0]
                    for i in range(self.dim)]
        jac = torch.stack(rows, dim=1)
        return jac if outer else jac.detach()

    def log_abs_det_jacobian(self, u: torch.Tensor) -> torch.Tensor:
        """:math:`\\log\\det\\nabla^2\\psi(u)`, shape ``(B,)`` (exact, via :meth:`jacobian`; small ``d``)."""
        return torch.linalg.slogdet(self.jacobian(u))[1]


def _objective(net: ICNN, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise :math:`\\psi(u_i) - \\langle u_i, y_i\\rangle`, shape ``(B,)``."""
    return net(u) - (u * y).sum(-1)


def _batched_cg(hvp, b: torch.Tensor, max_iter: int, rtol: float = 1e-10) -> torch.Tensor:
    """Solve ``H_i x_i = b_i`` for every row by conjugate gradients (``hvp(v)`` returns ``H_i v_i`` row-wise)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(-1)
    stop = rs.sqrt() * rtol
    for _ in range(max_iter):
        if bool((rs.sqrt() <= stop).all()):
            break
        Hp = hvp(p)
        pHp = (p * Hp).sum(-1)
        step = torch.where(pHp > 0, rs / pHp.clamp_min(torch.finfo(b.dtype).tiny), torch.zeros_like(rs))
        x = x + step[:, None] * p
        r = r - step[:, None] * Hp
        rs_new = (r * r).sum(-1)
        p = r + torch.where(rs > 0, rs_new / rs.clamp_min(torch.finfo(b.dtype).tiny), torch.zeros_like(rs))[:, None] * p
        rs = rs_new
    return x


def _newton_solve(net: ICNN, y: torch.Tensor, tol: float, max_iter: int,
                  u0: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Newton-CG with an exact line search on each row of :math:`\\psi(u) - \\langle u, y\\rangle`.

    Only rows whose residual exceeds ``tol`` are updated. Along a Newton direction ``p`` the derivative
    :math:`\\varphi'(t) = \\langle g(u + tp) - y, p\\rangle` is non-decreasing (convexity); the full step is
    taken when :math:`\\varphi'(1)` is not clearly positive, otherwise a root of :math:`\\varphi'` in ``(0, 1)``
    is found by regula falsi (:func:`_line_root`). Returns the iterate and the iterations used.
    """
    u = (y if u0 is None else u0).clone()
    cg_iter = min(2 * net.dim, 200)
    it = 0
    for it in range(1, max_iter + 1):
        with torch.no_grad():
            r_all = net.gradient(u) - y
        idx = (r_all.abs().amax(-1) > tol).nonzero().squeeze(-1)
        if idx.numel() == 0:
            return u.detach(), it - 1
        ua, ya = u[idx], y[idx]
        v = ua.detach().requires_grad_(True)
        g = net.gradient(v)
        r = (g - ya).detach()

        def hvp(p):
            return torch.autograd.grad(g, v, grad_outputs=p, retain_graph=True)[0]

        step = _batched_cg(hvp, -r, cg_iter)
        with torch.no_grad():
            bad = ~((r * step).sum(-1) < 0)  # no descent direction (CG breakdown): steepest descent
            step = torch.where(bad[:, None], -r, step)

            def dphi(t):
                return ((net.gradient(ua + t[:, None] * step) - ya) * step).sum(-1)

            t = torch.ones(idx.numel(), dtype=u.dtype, device=u.device)
            d0 = (r * step).sum(-1)  # phi'(0) < 0
            d1 = dphi(t)
            over = d1 > 1e-3 * d0.abs()
            if bool(over.any()):
                t = torch.where(over, _line_root(dphi, d0, d1, 1e-3 * d0.abs()), t)
            u = u.index_copy(0, idx, ua + t[:, None] * step)
    return u.detach(), it


def _inverse_newton(net: ICNN, y: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """Newton on the exact potential; rows left unsolved (the paper's leaky-ReLU layers make
    :math:`\\psi` piecewise quadratic, and Newton can zig-zag across kinks) are re-solved by a homotopy:
    the kinks are smoothed at scale ``tau`` (see ``ICNN._smoothing``), ``tau`` shrinks geometrically to
    1e-12 with warm starts, then the exact problem is solved from the last smoothed solution."""
    first = min(max_iter, 30)
    u, _ = _newton_solve(net, y, tol, first)
    with torch.no_grad():
        idx = ((net.gradient(u) - y).abs().amax(-1) > tol).nonzero().squeeze(-1)
    if idx.numel() == 0 or max_iter <= first:
        return u
    if net.activation != "leaky_relu":
        return _newton_solve(net, y, tol, max_iter - first, u0=u)[0]
    ys, us = y[idx], y[idx].clone()
    budget = max_iter - first
    try:
        for tau in (10.0 ** -k for k in range(1, 13)):
            net._smoothing = tau
            us, n = _newton_solve(net, ys, tol, min(10, budget), u0=us)
            budget -= n
            if budget <= 0:
                break
    finally:
        net._smoothing = 0.0
    us, _ = _newton_solve(net, ys, tol, max(budget, 1), u0=us)
    return u.index_copy(0, idx, us)


def _line_root(dphi, d0: torch.Tensor, d1: torch.Tensor, ftol: torch.Tensor, iters: int = 60) -> torch.Tensor:
    """Per row, ``t`` in ``(0, 1]`` with ``|phi'(t)| <= ftol`` (Illinois regula falsi on the bracket
    ``phi'(0) < 0 < phi'(1)``). Where ``phi'`` jumps over zero (a kink) the bracket shrinks onto the jump
    and the point just past it is returned, so that the next Newton step sees the other piece."""
    lo, hi = torch.zeros_like(d0), torch.ones_like(d0)
    flo, fhi = d0.clone(), d1.clone()
    t = hi.clone()
    done = torch.zeros_like(d0, dtype=torch.bool)
    side = torch.zeros_like(d0)
    for _ in range(iters):
        cand = lo - flo * (hi - lo) / (fhi - flo)
        cand = torch.where((cand > lo) & (cand < hi), cand, 0.5 * (lo + hi))
        f = dphi(cand)
        good = (f.abs() <= ftol) & ~done
        t = torch.where(good, cand, t)
        done = done | good
        if bool(done.all()):
            break
        neg = f < 0
        # Illinois: halve the stale end's value when the same end is kept twice
        flo_new = torch.where(neg, f, torch.where(side > 0, 0.5 * flo, flo))
        fhi_new = torch.where(neg, torch.where(side < 0, 0.5 * fhi, fhi), f)
        side = torch.where(neg, -torch.ones_like(side), torch.ones_like(side))
        lo, hi = torch.where(neg, cand, lo), torch.where(neg, hi, cand)
        flo, fhi = flo_new, fhi_new
        if bool((((hi - lo) <= 1e-14 * hi) | done).all()):
            break
    return torch.where(done, t, hi)


def _lbfgs_solve(net: ICNN, y: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    u = y.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([u], lr=1.0, max_iter=max_iter, max_eval=int(max_iter * 1.5) + 10,
                            tolerance_grad=tol, tolerance_change=0.0, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _objective(net, u, y).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return u.detach()


# -- a Brenier flow: density estimation by change of variables (book chapter 05) -----------------------
def flow_log_prob(g: BrenierMap, x: torch.Tensor) -> torch.Tensor:
    """Log density of ``x`` under the model ``g(x) ~ N(0, I)`` (``g`` a Brenier map), shape ``(B,)``, nats.

    Change of variables: :math:`\\log p(x) = \\log\\mathcal N(g(x); 0, I) + \\log\\det\\nabla^2\\psi(x)`
    (the Jacobian of ``g`` is the Hessian of the potential, symmetric positive definite, so the
    determinant is positive). Exact, with :meth:`BrenierMap.jacobian` (``d`` backward passes: small ``d``).
    Use a smooth potential (``activation="softplus"``): with the paper's leaky-ReLU layers ``g`` jumps and
    this formula misses the jumps, so it is not a normalised density. Samples: ``x = g^{-1}(u)``,
    :math:`u\\sim\\mathcal N(0, I)`, with :meth:`BrenierMap.inverse` (:math:`g^{-1} = \\nabla\\psi^*` is itself a
    Brenier map: the gradient of the convex conjugate).
    """
    u = g(x)
    log_normal = -0.5 * u.square().sum(-1) - 0.5 * g.dim * math.log(2 * math.pi)
    return log_normal + g.log_abs_det_jacobian(x)


def fit_brenier_flow(x, hidden=(64, 64), steps: int = 500, lr: float = 2e-2, batch: int = 512,
                     alpha: float = 0.1, seed: int = 0, activation: str = "softplus"):
    """Fit a Brenier map ``g`` with ``g(x) ~ N(0, I)`` to data ``x`` by maximum likelihood (Adam with a
    cosine learning-rate decay to 0 over ``steps``).

    Args:
        x: data, array or tensor ``(n, d)`` (small ``d``: the log-determinant is exact).
        hidden, alpha, activation: the :class:`BrenierMap`'s potential.
        steps, lr, batch: Adam steps, learning rate, minibatch size (sampled with replacement-free
            permutations from a ``torch.Generator`` seeded by ``seed``).
        seed: seeds the initialisation and the minibatches (same seed, same numbers on CPU).

    Returns:
        ``(g, losses)``: the fitted map (float32, CPU) and the minibatch negative log-likelihoods
        (nats per datapoint) per step, a NumPy array.
    """
    steps = check_int(steps, "steps")
    batch = check_int(batch, "batch")
    lr = check_positive(lr, "lr")
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    check_batch(x, x.shape[1] if x.ndim == 2 else -1, "x")
    torch.manual_seed(seed)
    g = BrenierMap(x.shape[1], hidden, alpha=alpha, activation=activation)
    opt = torch.optim.Adam(g.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    losses = np.empty(steps)
    perm, pos = torch.randperm(len(x), generator=gen), 0
    for i in range(steps):
        if pos + batch > len(x):
            perm, pos = torch.randperm(len(x), generator=gen), 0
        xb = x[perm[pos:pos + batch]]
        pos += batch
        opt.zero_grad()
        loss = -flow_log_prob(g, xb).mean()
        loss.backward()
        opt.step()
        sched.step()
        losses[i] = float(loss.detach())
    return g, losses


def monotonicity_ratio(g: BrenierMap, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """:math:`\\langle g(u)-g(v), u-v\\rangle / \\lVert u-v\\rVert^2` per row, shape ``(B,)``; >= alpha for a
    strongly monotone map (> 0 means injective on those pairs)."""
    with torch.no_grad():
        d = u - v
        return ((g(u) - g(v)) * d).sum(-1) / d.square().sum(-1)


# -- a small 2-D target for examples -------------------------------------------------------------------
def make_banana(n: int, seed: int, curvature: float = 0.5, noise: float = 0.3) -> np.ndarray:
    """``n`` samples of a 2-D "banana": :math:`u\\sim N(0, I)`, :math:`x = (u_1,\\, u_2 \\cdot s + c\\,u_1^2 - c)`.

    A smooth, non-Gaussian target for fitting a Brenier map in the book (chapter 05).
    Returns float64 array ``(n, 2)``. Seeded with ``numpy.random.default_rng(seed)``.
    """
    n = check_int(n, "n")
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, 2))
    return np.stack([u[:, 0], noise * u[:, 1] + curvature * u[:, 0] ** 2 - curvature], axis=1)
