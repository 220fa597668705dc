"""The pinwheel generator (Johnson et al. 2016): shapes, balance, seeding, geometry of the five arms."""
import numpy as np
import pytest

from lidvae_mini.data.pinwheel import make_pinwheel


def test_shapes_dtypes_and_balance():
    x, y = make_pinwheel(200, seed=0)
    assert x.shape == (1000, 2) and x.dtype == np.float32
    assert y.shape == (1000,) and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), [200] * 5)
    assert np.all(np.isfinite(x))


def test_seeded_reproducible_and_shuffled():
    x1, y1 = make_pinwheel(100, seed=3)
    x2, y2 = make_pinwheel(100, seed=3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, _ = make_pinwheel(100, seed=4)
    assert not np.allclose(x1, x3)
    # shuffled: labels are not in blocks
    assert np.any(np.diff(y1) < 0) and (np.diff(y1) != 0).sum() > 100


def test_noise_free_points_sit_at_the_five_arm_tips():
    """With no noise every point of arm k is scale·(cos θ, −sin θ), θ = 2πk/5 + rate·e (clockwise rotation)."""
    x, y = make_pinwheel(3, radial_std=0.0, tangential_std=0.0, seed=1)
    theta = 2 * np.pi * y / 5 + 0.25 * np.e
    expected = 10.0 * np.stack([np.cos(theta), -np.sin(theta)], axis=1)
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-5)
    assert len(np.unique(np.round(x, 4), axis=0)) == 5


def test_five_arms_72_degrees_apart():
    x, y = make_pinwheel(2000, seed=0)
    angles = np.arctan2(x[:, 1], x[:, 0])
    arm_dirs = np.array([np.angle(np.exp(1j * angles[y == k]).mean()) for k in range(5)])
    # consecutive arms are 72° apart (clockwise in the plane, i.e. the angle decreases with k)
    gaps = np.mod(arm_dirs[:-1] - arm_dirs[1:], 2 * np.pi)
    np.testing.assert_allclose(gaps, 2 * np.pi / 5, atol=0.05)
    # each point is much closer to its own arm's direction than to the neighbours' (arms are thin)
    own = np.abs(np.angle(np.exp(1j * (angles - arm_dirs[y]))))
    assert np.mean(own < np.pi / 5) > 0.95
    radius = np.hypot(x[:, 0], x[:, 1])
    assert 8.0 < np.median(radius) < 12.0        # scale 10 × radial coordinate ≈ 1


def test_scale_and_bad_arguments():
    x10, _ = make_pinwheel(50, seed=2)
    x1, _ = make_pinwheel(50, scale=1.0, seed=2)
    np.testing.assert_allclose(x10, 10 * x1, rtol=1e-5)
    with pytest.raises(ValueError):
        make_pinwheel(0)
    with pytest.raises(ValueError):
        make_pinwheel(10, radial_std=-1)
    with pytest.raises(ValueError):
        make_pinwheel(10, scale=0)
