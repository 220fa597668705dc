"""Sample quality in MNIST-classifier features: committed weights, Fréchet distance, k-NN precision/recall."""
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import linalg

from lidvae_mini.evaluation import sample_quality as sq
from lidvae_mini.evaluation.sample_quality import (classifier_accuracy, classifier_features, frechet_distance,
                                                   load_mnist_classifier, precision_recall)

torch = pytest.importorskip("torch")

_REPO = Path(__file__).resolve().parents[1]


def _data_root():
    """$LIDVAE_DATA, else ../shared/data beside the repository; in CI (``$CI`` set) missing MNIST is an error."""
    cands = [Path(os.environ["LIDVAE_DATA"])] if os.environ.get("LIDVAE_DATA") else []
    cands += [_REPO.parent / "shared" / "data", Path("/work/shared/data")]
    for root in cands:
        if (root / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
            return root
    msg = "MNIST not found: set $LIDVAE_DATA to a folder holding mnist/ (the classifier test needs the test set)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def mnist_test():
    from lidvae_mini.data import load_mnist

    return load_mnist("test", data_dir=_data_root())


@pytest.fixture(scope="module")
def model(single_torch_thread):
    return load_mnist_classifier()


# --------------------------------------------------------------------------------------- committed weights
def test_weights_file_is_small_and_matches_its_sha256_and_record():
    assert sq.WEIGHTS_FILE.stat().st_size < 1_000_000
    assert sq._sha256(sq.WEIGHTS_FILE) == sq.WEIGHTS_SHA256
    info = json.loads(sq.INFO_FILE.read_text())
    assert info["sha256"] == sq.WEIGHTS_SHA256
    assert info["seed"] == sq.DEFAULT_SEED and info["epochs"] == sq.DEFAULT_EPOCHS
    assert info["file_modified"] is False and len(info["commit"]) == 40, "weights must come from committed code"
    assert info["test_accuracy"] >= 0.98


def test_tampered_weights_are_refused(tmp_path):
    bad = tmp_path / "w.pt"
    bad.write_bytes(sq.WEIGHTS_FILE.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="SHA-256"):
        load_mnist_classifier(bad)
    with pytest.raises(FileNotFoundError, match="regenerate"):
        load_mnist_classifier(tmp_path / "missing.pt")


def test_classifier_accuracy_on_mnist_test_set(model, mnist_test):
    x, y = mnist_test
    assert not model.training
    acc = classifier_accuracy(model, x, y)
    assert acc >= 0.98, f"test accuracy {acc:.4f} < 0.98"
    assert acc == pytest.approx(json.loads(sq.INFO_FILE.read_text())["test_accuracy"], abs=1e-12)


def test_features_shape_dtype_and_real_vs_noise(model, mnist_test):
    x, _ = mnist_test
    f = classifier_features(model, x[:1000], batch_size=300)
    assert f.shape == (1000, sq.FEATURE_DIM) and f.dtype == np.float64
    np.testing.assert_allclose(f[:10], classifier_features(model, torch.as_tensor(x[:10])), rtol=1e-6, atol=1e-6)
    g = classifier_features(model, x[1000:2000])
    noise = classifier_features(model, np.random.default_rng(0).permutation(x[1000:2000], axis=1))
    assert frechet_distance(f, g) < 0.2 * frechet_distance(f, noise)
    pr_real, pr_noise = precision_recall(f, g), precision_recall(f, noise)
    assert pr_real["precision"] > 0.8 and pr_real["recall"] > 0.8
    assert pr_noise["precision"] < 0.2 and pr_noise["recall"] < 0.2


def test_one_call_metrics_equal_the_parts(model, mnist_test):
    x, _ = mnist_test
    real, fake = x[:400], x[400:700]
    got = sq.classifier_feature_metrics(real, fake, model=model)
    fr, ff = classifier_features(model, real), classifier_features(model, fake)
    pr = precision_recall(fr, ff)
    assert got == {"frechet_distance": frechet_distance(fr, ff), "precision": pr["precision"],
                   "recall": pr["recall"], "k": 3, "n_real": 400, "n_fake": 300}


def test_feature_inputs_checked(model):
    with pytest.raises(ValueError, match=r"\(N, 784\)"):
        classifier_features(model, np.zeros((3, 783)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classifier_features(model, np.full((3, 784), 255.0))
    with pytest.raises(ValueError, match="NaN"):
        classifier_features(model, np.full((3, 784), np.nan))
    with pytest.raises(TypeError):
        classifier_features(model, np.array([["a"] * 784]))
    with pytest.raises(ValueError, match="labels"):
        classifier_accuracy(model, np.zeros((3, 784)), np.zeros(2))


def test_training_arguments_checked():
    with pytest.raises(ValueError, match="epochs"):
        sq.train_mnist_classifier(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        sq.train_mnist_classifier(lr=-1.0)


# ------------------------------------------------------------------------------------------ Fréchet distance
def _exact_moments(rng, n, mean, cov):
    """n points whose sample mean and unbiased sample covariance equal ``mean`` and ``cov`` to rounding."""
    x = rng.standard_normal((n, len(mean)))
    x -= x.mean(axis=0)
    c = np.cov(x, rowvar=False)
    x = x @ np.linalg.inv(np.linalg.cholesky(c)).T
    return x @ np.linalg.cholesky(cov).T + mean


def _closed_form(m1, c1, m2, c2):
    r1 = linalg.sqrtm(c1).real
    return float(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * linalg.sqrtm(r1 @ c2 @ r1).real))


def _random_gaussian(rng, d):
    a = rng.standard_normal((d, d))
    return rng.standard_normal(d), a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_matches_closed_form_exactly_for_exact_moments():
    rng = np.random.default_rng(0)
    (m1, c1), (m2, c2) = _random_gaussian(rng, 5), _random_gaussian(rng, 5)
    a, b = _exact_moments(rng, 400, m1, c1), _exact_moments(rng, 300, m2, c2)
    assert frechet_distance(a, b) == pytest.approx(_closed_form(m1, c1, m2, c2), rel=1e-8)


def test_frechet_matches_closed_form_for_large_gaussian_samples():
    """Sampling error only: with N = 200,000 per set in d = 4 the relative error is well under 2 %."""
    rng = np.random.default_rng(1)
    (m1, c1), (m2, c2) = _random_gaussian(rng, 4), _random_gaussian(rng, 4)
    a = rng.multivariate_normal(m1, c1, size=200_000)
    b = rng.multivariate_normal(m2, c2, size=200_000)
    assert frechet_distance(a, b) == pytest.approx(_closed_form(m1, c1, m2, c2), rel=0.02)


def test_frechet_zero_symmetric_and_growing_with_mean_shift():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((500, 6)), rng.standard_normal((400, 6)) * 1.3
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-8)
    shifts = [frechet_distance(a, b + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(u < v for u, v in zip(shifts, shifts[1:]))
    # a pure mean shift adds |Δμ|² exactly
    assert frechet_distance(a, a + 2.0) == pytest.approx(6 * 4.0, rel=1e-8)


def test_frechet_singular_covariance_and_more_features_than_points_without_warnings():
    """Dead ReLU features give singular covariances: finite values, no LinAlgWarning (the book builds with -W)."""
    rng = np.random.default_rng(3)
    a = np.zeros((50, 4))
    a[:, 0] = rng.standard_normal(50)          # rank-1 covariance
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = frechet_distance(a, rng.standard_normal((60, 4)))
        assert np.isfinite(value) and value > 0
        assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
        assert np.isfinite(frechet_distance(rng.standard_normal((10, 30)), rng.standard_normal((12, 30))))
    with pytest.raises(ValueError, match="eps"):
        frechet_distance(a, a, eps=0.0)


@pytest.mark.parametrize("a,b,err", [
    (np.zeros((1, 3)), np.zeros((5, 3)), ValueError),
    (np.zeros((5, 3)), np.zeros((5, 4)), ValueError),
    (np.zeros(5), np.zeros((5, 1)), ValueError),
    (np.full((5, 3), np.inf), np.zeros((5, 3)), ValueError),
    (np.array([["x", "y"]] * 3), np.zeros((3, 2)), TypeError),
])
def test_frechet_bad_inputs(a, b, err):
    with pytest.raises(err):
        frechet_distance(a, b)


# --------------------------------------------------------------------------------------- precision / recall
def _brute_force(real, fake, k):
    def radii(s):
        d = np.linalg.norm(s[:, None] - s[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    def covered(q, c, r):
        return float(np.mean((np.linalg.norm(q[:, None] - c[None], axis=-1) <= r[None]).any(axis=1)))

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def test_precision_recall_matches_brute_force_and_chunking():
    rng = np.random.default_rng(4)
    real, fake = rng.standard_normal((150, 3)), rng.standard_normal((120, 3)) * 1.5 + 0.5
    want = _brute_force(real, fake, k=3)
    for chunk in (7, 1000):
        got = precision_recall(real, fake, k=3, chunk=chunk)
        assert (got["precision"], got["recall"]) == pytest.approx(want, abs=1e-12)


def test_precision_recall_identical_and_disjoint():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 8))
    assert precision_recall(x, x) == {"precision": 1.0, "recall": 1.0, "k": 3}
    far = precision_recall(x, rng.standard_normal((300, 8)) + 100.0)
    assert far["precision"] == 0.0 and far["recall"] == 0.0


def test_precision_recall_half_the_modes():
    """Real: 10 tight, well-separated 2-D modes; fake: fresh draws from 5 of them -> precision ≈ 1, recall ≈ ½.

    Fresh draws from the real distribution itself land outside the real k-NN balls a few % of the time (the balls
    miss the tails; more so in higher dimension), hence precision >= 0.95 rather than 1.
    """
    rng = np.random.default_rng(6)
    centres = rng.standard_normal((10, 2)) * 20.0
    real = centres[rng.integers(0, 10, 2000)] + 0.3 * rng.standard_normal((2000, 2))
    fake = centres[rng.integers(0, 5, 1000)] + 0.3 * rng.standard_normal((1000, 2))
    got = precision_recall(real, fake, k=3)
    assert got["precision"] >= 0.95
    assert got["recall"] == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("k", [0, 5, 2.5, True])
def test_precision_recall_bad_k(k):
    rng = np.random.default_rng(7)
    with pytest.raises(ValueError, match="k"):
        precision_recall(rng.standard_normal((5, 2)), rng.standard_normal((6, 2)), k=k)


def test_precision_recall_bad_inputs():
    z = np.zeros((10, 2))
    with pytest.raises(ValueError, match="width"):
        precision_recall(z, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="NaN"):
        precision_recall(z, np.full((10, 2), np.nan))
    with pytest.raises(ValueError, match="chunk"):
        precision_recall(z, z + 1, chunk=0)
