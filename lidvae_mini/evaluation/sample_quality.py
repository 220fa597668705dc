"""Sample quality without Inception weights: a small MNIST classifier and metrics in its feature space.

The AVAE paper (Saha, Joshi & Whitaker, *Matching aggregate posteriors in the variational autoencoder*) reports
FID, which needs the Inception-v3 weights; they cannot be downloaded on the project's machines. This module ships
a small convolutional MNIST classifier instead (weights committed in the package, regenerated bit for bit by
:func:`train_mnist_classifier`) and two metrics computed in its penultimate-layer features:

- :func:`frechet_distance`: the **Fréchet distance in MNIST-classifier features**, i.e. the 2-Wasserstein distance
  between the Gaussians fitted to two feature sets (Dowson & Landau 1982; the formula FID uses, Heusel et al. 2017).
  It is *not* FID: the features differ, so its values are not comparable with any published FID.
- :func:`precision_recall`: the k-nearest-neighbour manifold precision and recall of Kynkäänniemi et al. (2019,
  "Improved precision and recall metric for assessing generative models", NeurIPS), in the same features.

Regenerate the committed weights (CPU, about a minute per epoch on one core)::

    OMP_NUM_THREADS=1 LIDVAE_DATA=/path/to/data python -m lidvae_mini.evaluation.sample_quality --out lidvae_mini/data/weights

which writes ``mnist_classifier.pt`` and ``mnist_classifier.json`` (seed, epochs, the commit of this file, test
accuracy, SHA-256). Then update :data:`WEIGHTS_SHA256` to the printed digest.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from .._checks import as_float_array, check_int, check_positive
from .._git import git_commit

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "data" / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "mnist_classifier.pt"
INFO_FILE = WEIGHTS_DIR / "mnist_classifier.json"
#: SHA-256 of the committed ``mnist_classifier.pt``; :func:`load_mnist_classifier` refuses any other file.
WEIGHTS_SHA256 = "82b1077e86faaed39cf98d69636e1eb5d9b4e70a0d9d35eca1b4f32af257448b"
#: Width of the penultimate layer, the feature space of :func:`classifier_features`.
FEATURE_DIM = 128
#: Training defaults of the committed weights (see :func:`train_mnist_classifier`).
DEFAULT_EPOCHS = 3
DEFAULT_SEED = 0


def _build_model():
    """A LeNet-style CNN: conv5(16)-pool-conv5(32)-pool-fc(128)-fc(10), ReLU; about 80k parameters (~320 kB)."""
    import torch
    from torch import nn

    class MNISTClassifier(nn.Module):
        """MNIST digit classifier taking flat (N, 784) images in [0, 1]; ``features`` gives the (N, 128) layer."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),   # 28 -> 24 -> 12
                nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),  # 12 -> 8 -> 4
                nn.Flatten(),
            )
            self.fc = nn.Sequential(nn.Linear(32 * 4 * 4, FEATURE_DIM), nn.ReLU())
            self.head = nn.Linear(FEATURE_DIM, 10)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            """(N, 784) images -> (N, 128) penultimate-layer activations (after the ReLU)."""
            return self.fc(self.conv(x.reshape(-1, 1, 28, 28)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """(N, 784) images -> (N, 10) class logits."""
            return self.head(self.features(x))

    return MNISTClassifier()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_mnist_classifier(path=None, check_sha256: bool = True):
    """The committed MNIST classifier, in eval mode on the CPU, in float32.

    Args:
        path: a weights file (state dict); default the package's ``data/weights/mnist_classifier.pt``.
        check_sha256: refuse a file whose SHA-256 is not :data:`WEIGHTS_SHA256` (default; only for the package file
            or when set explicitly).

    Returns:
        ``torch.nn.Module`` with ``forward(x)`` -> (N, 10) logits and ``features(x)`` -> (N, 128), x (N, 784).

    Raises:
        FileNotFoundError: the weights file is missing (regenerate it with :func:`train_mnist_classifier`).
        ValueError: SHA-256 mismatch.
    """
    import torch

    path = WEIGHTS_FILE if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MNIST classifier weights not found at {path}; regenerate them with "
                                f"`python -m lidvae_mini.evaluation.sample_quality --out {WEIGHTS_DIR}`")
    if check_sha256:
        digest = _sha256(path)
        if digest != WEIGHTS_SHA256:
            raise ValueError(f"{path}: SHA-256 {digest} does not match the committed weights ({WEIGHTS_SHA256}); "
                             f"pass check_sha256=False to load another file on purpose")
    model = _build_model()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _code_version() -> dict:
    """The commit the weights come from and whether this module differs from it (``None`` outside git)."""
    git = git_commit(Path(__file__).parent, paths=[Path(__file__).resolve()])
    return {"commit": git["commit"], "file_modified": git["dirty"]}


def train_mnist_classifier(data_dir=None, seed: int = DEFAULT_SEED, epochs: int = DEFAULT_EPOCHS,
                           batch_size: int = 128, lr: float = 1e-3, out_dir=None, verbose: bool = False):
    """Train the MNIST classifier of :func:`load_mnist_classifier` deterministically on the CPU.

    Adam (lr 1e-3), batch 128, cross-entropy on the 60,000 training images; each image is replaced, with
    probability ½, by a dynamic binarisation Bernoulli(x), so the features are meaningful for both grey-level
    decoder means and binary samples. Single-threaded and seeded: the same torch build reproduces the weights bit for
    bit (the committed file came from this function; its JSON records the commit, seed and epochs).

    Args:
        data_dir: folder holding ``mnist/`` (default ``$LIDVAE_DATA``, see :func:`lidvae_mini.data.paths.data_dir`).
        seed: seeds initialisation, shuffling and binarisation.
        epochs: passes over the training set.
        batch_size, lr: optimiser settings.
        out_dir: if given, write ``mnist_classifier.pt`` (state dict) and ``mnist_classifier.json`` there.
        verbose: print one line per epoch.

    Returns:
        ``(model, info)``: the model in eval mode and a dict with the test accuracy (clean and fixed-binarised),
        seed, epochs, torch version, commit and (if written) the SHA-256 of the weights file.

    Raises:
        lidvae_mini.data.paths.MissingDataError: the MNIST files are absent.
        ValueError: bad ``seed``/``epochs``/``batch_size``/``lr``.
    """
    import torch
    from torch import nn

    from ..data import load_mnist
    from ..data.images import fixed_binarization

    seed = check_int(seed, "seed", minimum=0)
    epochs = check_int(epochs, "epochs")
    batch_size = check_int(batch_size, "batch_size")
    if not (math.isfinite(float(lr)) and float(lr) > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    x_train, y_train = load_mnist("train", data_dir=data_dir)
    x_test, y_test = load_mnist("test", data_dir=data_dir)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = _build_model()
        opt = torch.optim.Adam(model.parameters(), lr=float(lr))
        xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
        n = xt.shape[0]
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = perm[start:start + batch_size]
                xb = xt[idx]
                flip = torch.rand(xb.shape[0], 1, generator=gen) < 0.5
                bits = (torch.rand(xb.shape, generator=gen) < xb).to(xb.dtype)
                xb = torch.where(flip, bits, xb)
                loss = nn.functional.cross_entropy(model(xb), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * idx.numel()
            if verbose:
                print(f"epoch {epoch + 1}/{epochs}: train cross-entropy {total / n:.4f} nats")
        model.eval()
        info = {
            "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": float(lr),
            "binarise_probability": 0.5, "torch": torch.__version__, "threads": 1,
            "test_accuracy": classifier_accuracy(model, x_test, y_test),
            "test_accuracy_binarised": classifier_accuracy(model, fixed_binarization(x_test, seed=0), y_test),
            **_code_version(),
        }
    finally:
        torch.set_num_threads(threads)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / WEIGHTS_FILE.name)
        info["sha256"] = _sha256(out / WEIGHTS_FILE.name)
        info["command"] = "python -m lidvae_mini.evaluation.sample_quality --out DIR --seed SEED --epochs EPOCHS"
        (out / INFO_FILE.name).write_text(json.dumps(info, indent=1) + "\n")
    return model, info


def _as_images(x, name: str = "x") -> np.ndarray:
    arr = as_float_array(x, name, ndim=2)
    if arr.shape[1] != 784:
        raise ValueError(f"{name} must have shape (N, 784) (flat 28x28 images), got {arr.shape}")
    if arr.shape[0] < 1:
        raise ValueError(f"{name} is empty")
    if arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"{name} must lie in [0, 1] (pixel/255 or Bernoulli means), got range "
                         f"[{arr.min():.3g}, {arr.max():.3g}]")
    return arr


def _batched(model, x: np.ndarray, fn: str, batch_size: int) -> np.ndarray:
    import torch

    batch_size = check_int(batch_size, "batch_size")
    param = next(model.parameters())
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = torch.as_tensor(x[start:start + batch_size], dtype=param.dtype, device=param.device)
            out.append(getattr(model, fn)(xb).double().cpu().numpy())
    return np.concatenate(out, axis=0)


def classifier_features(model, x, batch_size: int = 1000) -> np.ndarray:
    """Penultimate-layer features of the MNIST classifier (the space of the Fréchet distance and precision/recall).

    Args:
        model: from :func:`load_mnist_classifier` (anything with a ``features`` method taking (B, 784)).
        x: (N, 784) images in [0, 1] (numpy or torch; pixel/255, binary samples or Bernoulli means).
        batch_size: images per forward pass (memory bound).

    Returns:
        (N, 128) float64 numpy array (post-ReLU activations), computed under ``torch.no_grad``.

    Raises:
        TypeError: non-numeric ``x``.
        ValueError: wrong shape, empty, non-finite, or values outside [0, 1].
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return _batched(model, _as_images(x), "features", batch_size)


def classifier_accuracy(model, x, y, batch_size: int = 1000) -> float:
    """Fraction of ``x`` (N, 784) whose arg-max logit equals the label ``y`` (N,) in 0..9."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = _as_images(x)
    labels = np.asarray(y).reshape(-1)
    if labels.shape[0] != arr.shape[0]:
        raise ValueError(f"y has {labels.shape[0]} labels for {arr.shape[0]} images")
    pred = _batched(model, arr, "forward", batch_size).argmax(axis=1)
    return float(np.mean(pred == labels))


def _feature_pair(a, b, name_a: str, name_b: str, min_rows: int = 2):
    fa = as_float_array(a, name_a, ndim=2)
    fb = as_float_array(b, name_b, ndim=2)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"{name_a} and {name_b} must have the same feature width, got {fa.shape} and {fb.shape}")
    for f, nm in ((fa, name_a), (fb, name_b)):
        if f.shape[0] < min_rows:
            raise ValueError(f"{nm} needs at least {min_rows} rows, got {f.shape[0]}")
        if f.shape[1] < 1:
            raise ValueError(f"{nm} has no feature columns")
    return fa, fb


def _sqrtm_quiet(mat: np.ndarray):
    """``scipy.linalg.sqrtm(mat)`` and whether scipy found it singular (its LinAlgWarning caught, not shown)."""
    import warnings

    from scipy import linalg

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        root = linalg.sqrtm(mat)
    singular = any(issubclass(w.category, linalg.LinAlgWarning) for w in caught)
    for w in caught:  # anything else is passed on unchanged
        if not issubclass(w.category, linalg.LinAlgWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return root, singular


def frechet_distance(feat_a, feat_b, eps: float = 1e-6) -> float:
    """Fréchet distance in MNIST-classifier features between two sets, each summarised by a Gaussian.

    ``d² = |μ_a − μ_b|² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})``, the squared 2-Wasserstein distance between
    N(μ_a, Σ_a) and N(μ_b, Σ_b) (Dowson & Landau 1982), with sample means and unbiased (N − 1) covariances.
    This is the formula of FID (Heusel et al. 2017) in a different feature space, so it is **not** FID and its
    values are not comparable with published FIDs. The matrix square root is ``scipy.linalg.sqrtm``; if scipy
    reports the product singular (dead ReLU features, fewer points than features) or the root is not finite,
    ``eps·I`` is added to both covariances throughout the formula (no warning is shown); imaginary parts from
    rounding are dropped when they are below 1e-3 of the largest real entry (or 1e-3 absolute), else an error is
    raised. The value is clipped at 0.

    Args:
        feat_a, feat_b: (N_a, F) and (N_b, F) features, e.g. from :func:`classifier_features`; N ≥ 2 each.
        eps: diagonal offset (> 0, squared feature units) used only when the plain square root is singular.

    Returns:
        float, in squared feature units (not nats); symmetric in its arguments up to rounding.

    Raises:
        TypeError: non-numeric input.
        ValueError: wrong rank, different widths, fewer than 2 rows, non-finite values, ``eps`` ≤ 0, or a square
            root with a large imaginary part.
    """
    fa, fb = _feature_pair(feat_a, feat_b, "feat_a", "feat_b")
    mu_a, mu_b = fa.mean(axis=0), fb.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(fa, rowvar=False))
    cov_b = np.atleast_2d(np.cov(fb, rowvar=False))
    eps = check_positive(eps, "eps")
    covmean, singular = _sqrtm_quiet(cov_a @ cov_b)
    if singular or not np.all(np.isfinite(covmean)):
        # dead ReLU features or fewer points than features: regularise both covariances, in the whole formula
        offset = np.eye(cov_a.shape[0]) * eps
        cov_a, cov_b = cov_a + offset, cov_b + offset
        covmean, _ = _sqrtm_quiet(cov_a @ cov_b)
        if not np.all(np.isfinite(covmean)):
            raise ValueError("the matrix square root of the covariance product is not finite, even with eps·I added")
    if np.iscomplexobj(covmean):
        scale = max(1.0, float(np.abs(covmean.real).max()))
        if np.abs(covmean.imag).max() > 1e-3 * scale:
            raise ValueError(f"the matrix square root has an imaginary part of {np.abs(covmean.imag).max():.3g}; "
                             f"the covariances are too ill-conditioned (use more samples than features)")
        covmean = covmean.real
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def _kth_radii_sq(feats: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Squared distance of each row to its k-th nearest other row (the row itself excluded by taking index k)."""
    sq = np.einsum("ij,ij->i", feats, feats)
    radii = np.empty(feats.shape[0])
    for start in range(0, feats.shape[0], chunk):
        block = feats[start:start + chunk]
        d2 = sq[start:start + chunk, None] + sq[None, :] - 2.0 * block @ feats.T
        np.maximum(d2, 0.0, out=d2)
        radii[start:start + chunk] = np.partition(d2, k, axis=1)[:, k]
    return radii


def _coverage(queries: np.ndarray, centres: np.ndarray, radii_sq: np.ndarray, chunk: int) -> float:
    """Fraction of ``queries`` inside at least one ball B(centre_j, radius_j)."""
    sq_c = np.einsum("ij,ij->i", centres, centres)
    inside = 0
    for start in range(0, queries.shape[0], chunk):
        q = queries[start:start + chunk]
        d2 = np.einsum("ij,ij->i", q, q)[:, None] + sq_c[None, :] - 2.0 * q @ centres.T
        np.maximum(d2, 0.0, out=d2)
        inside += int(np.any(d2 <= radii_sq[None, :], axis=1).sum())
    return inside / queries.shape[0]


def precision_recall(real_feats, fake_feats, k: int = 3, chunk: int = 1000) -> dict:
    """k-NN manifold precision and recall (Kynkäänniemi et al. 2019) in MNIST-classifier features.

    Each set's manifold is the union of balls centred at its points with radius the distance to the point's k-th
    nearest neighbour in the same set. Precision is the fraction of fake points inside the real manifold (are the
    samples realistic?); recall is the fraction of real points inside the fake manifold (is the data covered?).
    Euclidean distances in float64; distances are computed ``chunk`` rows at a time, so the peak extra memory is
    about ``chunk × max(N_real, N_fake) × 8`` bytes (80 MB for chunk 1000 and 10,000 points), never N².

    Args:
        real_feats: (N_r, F) features of data, e.g. from :func:`classifier_features`.
        fake_feats: (N_f, F) features of model samples.
        k: neighbourhood size, 3 as in the paper; 1 ≤ k < min(N_r, N_f).
        chunk: rows per distance block.

    Returns:
        ``{"precision": float, "recall": float, "k": k}``, both fractions in [0, 1].

    Raises:
        TypeError: non-numeric input.
        ValueError: wrong rank, different widths, non-finite values, fewer than 2 rows, or ``k`` out of range.
    """
    real, fake = _feature_pair(real_feats, fake_feats, "real_feats", "fake_feats")
    k = check_int(k, "k")
    if k >= min(real.shape[0], fake.shape[0]):
        raise ValueError(f"k must be < the size of each set ({real.shape[0]} real, {fake.shape[0]} fake), got {k}")
    chunk = check_int(chunk, "chunk")
    real_r = _kth_radii_sq(real, k, chunk)
    fake_r = _kth_radii_sq(fake, k, chunk)
    return {"precision": _coverage(fake, real, real_r, chunk), "recall": _coverage(real, fake, fake_r, chunk),
            "k": k}


def classifier_feature_metrics(real_x, fake_x, model=None, k: int = 3) -> dict:
    """Fréchet distance in MNIST-classifier features and k-NN precision/recall for two image sets, in one call.

    Args:
        real_x: (N_r, 784) data images in [0, 1].
        fake_x: (N_f, 784) model samples (binary draws or Bernoulli means) in [0, 1].
        model: the classifier; default :func:`load_mnist_classifier`.
        k: neighbourhood size of :func:`precision_recall`.

    Returns:
        ``{"frechet_distance", "precision", "recall", "k", "n_real", "n_fake"}`` (the distance in squared feature
        units, never to be called FID).

    Raises:
        TypeError: non-numeric images.
        ValueError: as :func:`classifier_features`, :func:`frechet_distance` and :func:`precision_recall`.
    """
    model = load_mnist_classifier() if model is None else model
    real = classifier_features(model, real_x)
    fake = classifier_features(model, fake_x)
    pr = precision_recall(real, fake, k=k)
    return {"frechet_distance": frechet_distance(real, fake), "precision": pr["precision"],
            "recall": pr["recall"], "k": pr["k"], "n_real": real.shape[0], "n_fake": fake.shape[0]}


def main(argv=None) -> int:
    """``python -m lidvae_mini.evaluation.sample_quality --out DIR [--seed S] [--epochs E]``: train and write the weights."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for mnist_classifier.pt and mnist_classifier.json")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    _, info = train_mnist_classifier(data_dir=args.data_dir, seed=args.seed, epochs=args.epochs, out_dir=args.out,
                                     verbose=True)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
