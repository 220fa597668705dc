"""Image loaders: IDX parsing, checksums, missing files, Omniglot downsampling, binarisation, splits."""
import gzip
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from lidvae_mini.data import MissingDataError
from lidvae_mini.data import images
from lidvae_mini.data.images import (binarize, downsample_area, fixed_binarization, load_dataset, load_fashion_mnist,
                                     load_mnist, load_omniglot, load_omniglot_chardata, read_idx, subsample_split)

torch = pytest.importorskip("torch")

_REPO = Path(__file__).resolve().parents[1]


def _find_data_root():
    if os.environ.get("LIDVAE_DATA"):
        return Path(os.environ["LIDVAE_DATA"])
    for cand in (_REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="module")
def data_root():
    """The real data folder: $LIDVAE_DATA, else ../shared/data next to the repository (the project's machines)."""
    root = _find_data_root()
    if root is None:
        pytest.skip("real data not found: set $LIDVAE_DATA to a folder holding mnist/, fashion-mnist/, omniglot/")
    return root


def _need(root, *rel):
    missing = [r for r in rel if not (root / r).is_file()]
    if missing:
        pytest.skip(f"data file(s) {missing} not in {root}")


def _write_idx(path, arr, magic):
    header = np.array([magic, *arr.shape], dtype=">i4").tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


# ----------------------------------------------------------------------------------------- IDX, synthetic
def test_read_idx_roundtrip_and_bad_magic(tmp_path):
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "i.gz", imgs, images.IDX_IMAGES_MAGIC)
    np.testing.assert_array_equal(read_idx(tmp_path / "i.gz", images.IDX_IMAGES_MAGIC), imgs)
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "i.gz", images.IDX_LABELS_MAGIC)
    # header claims more bytes than there are
    with gzip.open(tmp_path / "bad.gz", "wb") as fh:
        fh.write(np.array([images.IDX_LABELS_MAGIC, 10], dtype=">i4").tobytes() + b"\x01\x02")
    with pytest.raises(ValueError, match="payload"):
        read_idx(tmp_path / "bad.gz", images.IDX_LABELS_MAGIC)


def test_loader_on_synthetic_idx_without_checksum(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28))
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", imgs, images.IDX_IMAGES_MAGIC)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([3, 1, 4, 1, 5]), images.IDX_LABELS_MAGIC)
    x, y = load_mnist("test", data_dir=tmp_path, verify=False)
    assert x.shape == (5, 784) and x.dtype == np.float32
    np.testing.assert_allclose(x[2].reshape(28, 28), imgs[2] / 255.0, rtol=1e-6)   # row-major pixels
    np.testing.assert_array_equal(y, [3, 1, 4, 1, 5])
    assert y.dtype == np.int64
    with pytest.raises(ValueError, match="checksum"):
        load_mnist("test", data_dir=tmp_path)          # verify=True: these are not the real files


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(MissingDataError) as err:
        load_mnist("train", data_dir=tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert str(tmp_path / "mnist") in msg
    with pytest.raises(MissingDataError, match="images_evaluation.npz"):
        load_omniglot("evaluation", data_dir=tmp_path)
    with pytest.raises(MissingDataError, match="chardata.mat"):
        load_omniglot_chardata(tmp_path / "chardata.mat")


def test_unknown_split_and_dataset():
    with pytest.raises(ValueError, match="train"):
        load_mnist("validation")
    with pytest.raises(ValueError) as err:
        load_dataset("cifar10")
    for name in ("pinwheel", "mnist", "fashion_mnist", "omniglot"):
        assert name in str(err.value)


# --------------------------------------------------------------------------------------------- real files
@pytest.mark.parametrize("loader,sub,first_train,first_test", [
    (load_mnist, "mnist", [5, 0, 4, 1, 9], [7, 2, 1, 0, 4]),
    (load_fashion_mnist, "fashion-mnist", [9, 0, 0, 3, 0], [9, 2, 1, 1, 6]),
])
def test_real_idx_files(data_root, loader, sub, first_train, first_test):
    _need(data_root, f"{sub}/train-images-idx3-ubyte.gz", f"{sub}/t10k-images-idx3-ubyte.gz")
    for split, n, first in (("train", 60000, first_train), ("test", 10000, first_test)):
        x, y = loader(split, data_dir=data_root)            # checksums verified by default
        assert x.shape == (n, 784) and x.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.int64
        assert x.min() == 0.0 and x.max() == 1.0
        assert set(np.unique(y)) == set(range(10))
        np.testing.assert_array_equal(y[:5], first)
        counts = np.bincount(y)
        assert counts.min() > n // 20                         # every class well represented


def test_tampered_copy_fails_checksum(data_root, tmp_path):
    _need(data_root, "mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz")
    (tmp_path / "mnist").mkdir()
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(data_root / "mnist" / f, tmp_path / "mnist" / f)
    x, _ = load_mnist("test", data_dir=tmp_path)             # an exact copy passes
    assert x.shape == (10000, 784)
    with open(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", "r+b") as fh:
        fh.seek(-3, os.SEEK_END)
        b = fh.read(1)
        fh.seek(-3, os.SEEK_END)
        fh.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="checksum mismatch.*t10k-labels"):
        load_mnist("test", data_dir=tmp_path)


def test_download_checks_checksum_offline(data_root, tmp_path, monkeypatch):
    """The optional download path, with the network replaced by local bytes (never touches the internet)."""
    _need(data_root, "mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz")

    def fake_urlopen(url, timeout=None, corrupt=False):
        data = (data_root / "mnist" / url.rsplit("/", 1)[-1]).read_bytes()
        return io.BytesIO(data + (b"x" if corrupt else b""))

    monkeypatch.setattr(images.urllib.request, "urlopen", lambda url, timeout=None: fake_urlopen(url, corrupt=True))
    with pytest.raises(ValueError, match="SHA-256"):
        load_mnist("test", data_dir=tmp_path, download=True)
    assert not any((tmp_path / "mnist").iterdir())          # nothing corrupt was kept
    monkeypatch.setattr(images.urllib.request, "urlopen", lambda url, timeout=None: fake_urlopen(url))
    x, y = load_mnist("test", data_dir=tmp_path, download=True)
    assert x.shape == (10000, 784) and y[:3].tolist() == [7, 2, 1]


def test_omniglot_28x28(data_root):
    _need(data_root, "omniglot/images_evaluation.npz")
    x, y = load_omniglot("evaluation", data_dir=data_root)
    assert x.shape == (659 * 20, 28 * 28) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert 0.02 < x.mean() < 0.2                           # ink is 1, background 0 (strokes are sparse)
    assert y.dtype == np.int64 and y.min() == 0 and y.max() == 658
    np.testing.assert_array_equal(np.bincount(y), 20)


def test_downsample_area_is_exact_box_averaging():
    rng = np.random.default_rng(0)
    img = rng.random((3, 105, 105)) < 0.3
    out = downsample_area(img, 28)
    assert out.shape == (3, 28, 28)
    # each column of input pixels has total weight 28/105, so the mean intensity is preserved exactly
    np.testing.assert_allclose(out.mean(axis=(1, 2)), img.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(downsample_area(np.ones((1, 105, 105)), 28), 1.0, rtol=1e-6)
    # integer factor: plain block means
    small = rng.random((2, 6, 6))
    np.testing.assert_allclose(downsample_area(small, 3), small.reshape(2, 3, 2, 3, 2).mean(axis=(2, 4)), rtol=1e-6)


def test_chardata_reader_on_a_synthetic_mat(tmp_path):
    from scipy.io import savemat
    rng = np.random.default_rng(0)
    tr = rng.random((4, 28, 28))
    te = rng.random((2, 28, 28))
    t_tr = np.eye(50)[:, [0, 3, 3, 49]]
    t_te = np.eye(50)[:, [7, 1]]
    # chardata.mat stores each image column-major in a (784, N) matrix
    savemat(tmp_path / "chardata.mat", {"data": tr.reshape(4, 784, order="F").T,
                                         "testdata": te.reshape(2, 784, order="F").T,
                                         "target": t_tr, "testtarget": t_te})
    out = load_omniglot_chardata(tmp_path / "chardata.mat")
    np.testing.assert_allclose(out["train"][0].reshape(4, 28, 28), tr, rtol=1e-6)
    np.testing.assert_allclose(out["test"][0].reshape(2, 28, 28), te, rtol=1e-6)
    np.testing.assert_array_equal(out["train"][1], [0, 3, 3, 49])
    np.testing.assert_array_equal(out["test"][1], [7, 1])


# ------------------------------------------------------------------------------------------- binarisation
def test_fixed_binarization_reproducible_and_binary():
    x = np.random.default_rng(1).random((500, 784)).astype(np.float32)
    b1, b2 = fixed_binarization(x, seed=7), fixed_binarization(x, seed=7)
    np.testing.assert_array_equal(b1, b2)
    assert set(np.unique(b1)) <= {0.0, 1.0} and b1.dtype == np.float32
    assert not np.array_equal(b1, fixed_binarization(x, seed=8))
    assert abs(b1.mean() - x.mean()) < 0.01                 # Bernoulli(x): E[b] = x
    np.testing.assert_array_equal(fixed_binarization(np.zeros(10), 0), 0)
    np.testing.assert_array_equal(fixed_binarization(np.ones(10), 0), 1)
    with pytest.raises(ValueError):
        fixed_binarization(x, seed=None)


def test_dynamic_binarize_numpy_and_torch():
    x = np.full((200, 50), 0.5, dtype=np.float32)
    assert not np.array_equal(binarize(x), binarize(x))      # fresh bits each call
    xt = torch.full((200, 50), 0.3)
    bt = binarize(xt, seed=3)
    assert isinstance(bt, torch.Tensor) and set(bt.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(bt, fixed_binarization(xt, 3))
    assert abs(bt.mean().item() - 0.3) < 0.02
    with pytest.raises(ValueError):
        binarize(np.array([1.5]))
    with pytest.raises(ValueError):
        binarize(torch.tensor([-0.1]))


# ------------------------------------------------------------------------------------------------- splits
def test_subsample_split_disjoint_and_deterministic():
    tr, va = subsample_split(1000, 600, 200, seed=5)
    assert len(tr) == 600 and len(va) == 200
    assert not set(tr) & set(va)
    assert set(tr) | set(va) <= set(range(1000))
    tr2, va2 = subsample_split(1000, 600, 200, seed=5)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(va, va2)
    tr3, va3 = subsample_split(1000, 600, 200, seed=6)
    assert not np.array_equal(va, va3)
    big, va4 = subsample_split(1000, None, 200, seed=5)      # rest of the pool; valid does not depend on n_train
    np.testing.assert_array_equal(va4, va)
    assert len(big) == 800 and np.array_equal(big[:600], tr)
    with pytest.raises(ValueError):
        subsample_split(100, 90, 20, seed=0)


def test_load_dataset_pinwheel():
    d = load_dataset("pinwheel", n_train=500, n_valid=100, n_test=300, seed=0)
    assert d["likelihood"] == "gaussian"
    assert d["train"][0].shape == (500, 2) and d["valid"][0].shape == (100, 2) and d["test"][0].shape == (300, 2)
    assert d["train"][1].dtype == np.int64
    e = load_dataset("pinwheel", n_train=500, n_valid=100, n_test=300, seed=0)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(d[split][0], e[split][0])
    f = load_dataset("pinwheel", n_train=500, n_valid=100, n_test=300, seed=1)
    assert not np.allclose(d["train"][0], f["train"][0])
    # test is an independent draw, not a subset of train/valid
    assert not (set(map(tuple, d["test"][0])) & set(map(tuple, d["train"][0])))


def test_load_dataset_mnist(data_root):
    _need(data_root, "mnist/train-images-idx3-ubyte.gz", "mnist/t10k-images-idx3-ubyte.gz")
    d = load_dataset("mnist", n_train=1000, n_valid=500, n_test=200, seed=0, data_dir=data_root)
    assert d["likelihood"] == "bernoulli"
    assert d["train"][0].shape == (1000, 784) and d["valid"][0].shape == (500, 784)
    assert d["test"][0].shape == (200, 784)
    full = load_dataset("mnist", seed=0, data_dir=data_root)
    assert len(full["train"][0]) == 50000 and len(full["valid"][0]) == 10000 and len(full["test"][0]) == 10000
