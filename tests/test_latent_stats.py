"""Latent statistics of the AVAE paper: collapsed axes, whitened leave-one-out KDE entropy, the MDS picture."""
import math

import matplotlib
import numpy as np
import pytest
from scipy.special import logsumexp

from lidvae_mini.evaluation.latent_stats import (collapsed_axes, gaussian_reference_entropy, mds_embedding, mds_picture,
                                                 whitened_entropy)

matplotlib.use("Agg")


# ------------------------------------------------------------------------------------------------- entropy
def test_gaussian_reference_is_d_over_2_log_2_pi_e():
    assert gaussian_reference_entropy(1) == pytest.approx(0.5 * math.log(2 * math.pi * math.e))
    assert gaussian_reference_entropy(16) == pytest.approx(8 * math.log(2 * math.pi) + 8)
    with pytest.raises(ValueError):
        gaussian_reference_entropy(0)


def _brute_loo_entropy(w, h):
    n, d = w.shape
    d2 = ((w[:, None] - w[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    logp = logsumexp(-d2 / (2 * h * h), axis=1) - math.log(n - 1) - 0.5 * d * math.log(2 * math.pi * h * h)
    return -logp.mean()


def test_fixed_bandwidth_matches_brute_force_loo_kde_on_whitened_codes():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((120, 3)) @ np.array([[2.0, 0, 0], [0.5, 1, 0], [0, 0, 0.3]]) + 5.0
    c = np.cov(z, rowvar=False)
    vals, vecs = np.linalg.eigh(c)
    w = (z - z.mean(0)) @ (vecs / np.sqrt(vals + 1e-4)) @ vecs.T
    for chunk in (7, 1000):
        assert whitened_entropy(z, bandwidth=0.5, chunk=chunk) == pytest.approx(_brute_loo_entropy(w, 0.5), rel=1e-10)
    # whitening removes location and scale: an affine map of the codes leaves the estimate unchanged
    assert whitened_entropy(3.0 * z - 7.0, bandwidth=0.5) == pytest.approx(whitened_entropy(z, bandwidth=0.5),
                                                                         abs=1e-3)


@pytest.mark.parametrize("d,n,tol", [(2, 1500, 0.1), (4, 1500, 0.25)])
def test_standard_gaussian_codes_reach_the_reference(d, n, tol):
    """N(0, I_d) draws: the cross-validated estimate is within ``tol`` nats of d/2·log(2πe) (finite-N KDE bias)."""
    z = np.random.default_rng(d).standard_normal((n, d))
    out = whitened_entropy(z, return_details=True)
    assert out["reference"] == gaussian_reference_entropy(d)
    assert out["entropy"] == pytest.approx(out["reference"], abs=tol)
    assert 0.05 < out["bandwidth"] < 1.5


def test_non_isotropic_gaussian_with_the_jacobian_added_back():
    """With add_log_det the estimate targets ½ log det(2πe Σ); stated tolerance 0.25 nats (d = 4, N = 1500)."""
    rng = np.random.default_rng(11)
    a = rng.standard_normal((4, 4))
    cov = a @ a.T + 0.5 * np.eye(4)
    z = rng.multivariate_normal(np.ones(4), cov, size=1500)
    analytic = 0.5 * np.linalg.slogdet(2 * math.pi * math.e * cov)[1]
    assert whitened_entropy(z, add_log_det=True) == pytest.approx(analytic, abs=0.25)
    # without the Jacobian the same codes read as a standard Gaussian
    assert whitened_entropy(z) == pytest.approx(gaussian_reference_entropy(4), abs=0.25)


def test_collapsed_and_non_gaussian_codes_have_lower_entropy():
    rng = np.random.default_rng(3)
    full = rng.standard_normal((1000, 4))
    low_rank = full.copy()
    low_rank[:, 2:] = 0.0                      # two collapsed axes
    near = full.copy()
    near[:, 2:] *= 1e-3                        # variance 1e-6, far below the whitening floor 1e-4
    clustered = np.sign(full) + 0.1 * rng.standard_normal((1000, 4))   # 16 tight clusters, same covariance scale
    h_full = whitened_entropy(full)
    for codes in (low_rank, near, clustered):
        assert whitened_entropy(codes) < h_full - 1.0


def test_estimator_reference_carries_the_same_bias():
    ref = gaussian_reference_entropy(3, n=800, seed=1)
    z = np.random.default_rng(1).standard_normal((800, 3))
    assert ref == pytest.approx(whitened_entropy(z), rel=1e-12)
    assert ref == pytest.approx(gaussian_reference_entropy(3), abs=0.2)


def test_bandwidth_rules():
    z = np.random.default_rng(4).standard_normal((500, 2))
    silverman = whitened_entropy(z, bandwidth="silverman", return_details=True)
    assert silverman["bandwidth"] == pytest.approx((4 / 4) ** (1 / 6) * 500 ** (-1 / 6))
    cv = whitened_entropy(z, bandwidth="cv", return_details=True)
    assert cv["entropy"] <= silverman["entropy"] + 1e-6  # cv minimises the estimate over h


@pytest.mark.parametrize("kwargs,err", [
    (dict(z=np.zeros(5)), ValueError),
    (dict(z=np.zeros((1, 3))), ValueError),
    (dict(z=np.full((5, 2), np.nan)), ValueError),
    (dict(z=np.array([["a", "b"]] * 3)), TypeError),
    (dict(z=np.ones((5, 2)), bandwidth="scott"), ValueError),
    (dict(z=np.ones((5, 2)), bandwidth=0.0), ValueError),
    (dict(z=np.ones((5, 2)), eps=-1.0), ValueError),
    (dict(z=np.ones((2, 2)), bandwidth="cv"), ValueError),
])
def test_entropy_bad_inputs(kwargs, err):
    with pytest.raises(err):
        whitened_entropy(**kwargs)


# -------------------------------------------------------------------------------------------- collapsed axes
def test_collapsed_axes_counts_low_variance_axes():
    rng = np.random.default_rng(5)
    codes = rng.standard_normal((2000, 16))
    codes[:, :4] *= 0.05        # variance 0.0025 < 0.01: collapsed
    codes[:, 4] *= 0.2          # variance 0.04: active
    assert collapsed_axes(codes) == 4
    assert collapsed_axes(codes, threshold=0.1) == 5
    assert collapsed_axes(codes, threshold=0.0) == 0
    assert collapsed_axes(np.tile(np.arange(3.0), (10, 1))) == 3   # constant codes: all collapsed


def test_collapsed_axes_bad_inputs():
    with pytest.raises(ValueError):
        collapsed_axes(np.zeros((1, 3)))
    with pytest.raises(ValueError):
        collapsed_axes(np.zeros(4))
    with pytest.raises(ValueError):
        collapsed_axes(np.zeros((4, 2)), threshold=-1)
    with pytest.raises(ValueError):
        collapsed_axes(np.full((4, 2), np.inf))


# ---------------------------------------------------------------------------------------------------- MDS
def test_mds_picture_two_panels_and_seeded():
    import matplotlib.pyplot as plt

    codes = np.random.default_rng(6).standard_normal((300, 16)) * 0.3
    fig = mds_picture(codes, n=60, seed=0)
    assert len(fig.axes) == 2
    assert fig.get_figwidth() == pytest.approx(7.0)
    assert all(t.get_fontsize() >= 9 for a in fig.axes for t in a.get_xticklabels() + a.get_yticklabels())
    plt.close(fig)
    a1, p1 = mds_embedding(codes, n=60, seed=0)
    a2, p2 = mds_embedding(codes, n=60, seed=0)
    np.testing.assert_array_equal(a1, a2)
    assert a1.shape == p1.shape == (60, 2)
    # shrunken codes (scale 0.3) occupy a smaller disc than the prior draws in the joint embedding
    assert np.linalg.norm(a1, axis=1).mean() < 0.6 * np.linalg.norm(p1, axis=1).mean()


def test_mds_picture_into_given_axes_and_bad_inputs():
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    assert mds_picture(np.random.default_rng(7).standard_normal((20, 3)), n=10, ax=axes) is fig
    with pytest.raises(ValueError, match="pair"):
        mds_picture(np.zeros((20, 3)), ax=axes[0])
    plt.close(fig)
    with pytest.raises(ValueError):
        mds_picture(np.zeros((1, 3)))
    with pytest.raises(ValueError):
        mds_picture(np.full((5, 3), np.nan))
    with pytest.raises(ValueError):
        mds_picture(np.zeros((5, 3)), n=1)
