"""The pinwheel data set: five curved Gaussian arms in the plane (Johnson et al., NeurIPS 2016).

Written from the published description of the generator (Johnson, Duvenaud, Wiltschko, Adams & Datta,
"Composing graphical models with neural networks for structured representations and fast inference",
NeurIPS 2016; public code mattjj/svae ``experiments/gmm_svae_synth.py``; the LIDVAE copy returns the labels).
No code was copied. For a point of class ``k``:

1. draw ``f = (f_r, f_t)`` with ``f_r ~ N(1, radial_std²)`` and ``f_t ~ N(0, tangential_std²)``
   (a short radial segment around (1, 0), thin in the tangential direction);
2. bend it: the angle is ``θ = 2πk/num_classes + rate·exp(f_r)`` (points further out turn further);
3. rotate by θ with the same sign convention as the reference code, which turns *clockwise*:
   ``x = (f_r cos θ + f_t sin θ, −f_r sin θ + f_t cos θ)``;
4. multiply by ``scale`` (10 in the reference code: the arms reach radius ≈ 10 to 20);
5. shuffle points and labels together.

The reference code multiplies by 10 without exposing it; ``scale=1`` gives the unit-scale version that
appears in Johnson et al.'s figures.
"""
from __future__ import annotations

import numpy as np

from .._checks import check_int, check_positive


def _check_nonneg(value, name: str) -> float:
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def make_pinwheel(n_per_class: int, num_classes: int = 5, radial_std: float = 0.3, tangential_std: float = 0.05,
                  rate: float = 0.25, scale: float = 10.0, seed=None):
    """Draw a pinwheel data set with labels.

    Args:
        n_per_class: points per arm (the LIDVAE experiments use 10,000 for train and again for test).
        num_classes: number of arms (5 in Johnson et al. and LIDVAE).
        radial_std: sd of the radial coordinate before bending (0.3).
        tangential_std: sd across the arm (0.05).
        rate: how fast an arm turns with its radial coordinate (0.25).
        scale: final multiplication (10.0 in the reference code; document it when comparing figures).
        seed: an int, ``None`` or a ``numpy.random.Generator``; the same int gives the same points.

    Returns:
        ``(x, labels)``: ``x`` float32 of shape (num_classes·n_per_class, 2) and ``labels`` int64 of
        shape (num_classes·n_per_class,) with values in ``0..num_classes-1``, exactly ``n_per_class`` of
        each, in a random (seeded) order.

    Raises:
        ValueError: non-positive counts, negative standard deviations, non-positive scale.
    """
    n_per_class = check_int(n_per_class, "n_per_class")
    num_classes = check_int(num_classes, "num_classes")
    radial_std = _check_nonneg(radial_std, "radial_std")
    tangential_std = _check_nonneg(tangential_std, "tangential_std")
    rate = float(rate)
    if not np.isfinite(rate):
        raise ValueError(f"rate must be finite, got {rate!r}")
    scale = check_positive(scale, "scale")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    n = n_per_class * num_classes
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), n_per_class)
    f_r = 1.0 + radial_std * rng.standard_normal(n)
    f_t = tangential_std * rng.standard_normal(n)
    theta = 2.0 * np.pi * labels / num_classes + rate * np.exp(f_r)
    c, s = np.cos(theta), np.sin(theta)
    x = scale * np.stack([f_r * c + f_t * s, -f_r * s + f_t * c], axis=1)
    order = rng.permutation(n)
    return x[order].astype(np.float32), labels[order]
