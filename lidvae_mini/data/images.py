"""Image data: MNIST, Fashion-MNIST and Omniglot loaders, binarisation, seeded splits, ``load_dataset``.

Files are read from ``data_dir`` (else ``$LIDVAE_DATA``, else ``~/.cache/lidvae_mini``), in the sub-folders
``mnist/``, ``fashion-mnist/`` and ``omniglot/``; their SHA-256 is checked against the values below (from the
project's data provenance file ``SOURCES.md``). Nothing is downloaded unless a caller asks for it with
``download=True`` or ``python -m lidvae_mini.data.download mnist fashion_mnist`` (MNIST and Fashion-MNIST only;
never used in tests or CI); the missing-file error of those two names gives that command.

Conventions: images are float32 in [0, 1], flattened row-major to (N, 784); labels are int64. The
likelihood of every image set is Bernoulli: train on :func:`binarize` (dynamic binarisation, fresh bits
each time) and evaluate on :func:`fixed_binarization` (the same bits for the same seed).
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from .._checks import check_choice, check_int
from .paths import data_dir as _data_dir
from .paths import require_files, sha256
from .pinwheel import make_pinwheel

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: SHA-256 of the original files (see ``SOURCES.md``; they equal the upstream MD5-verified files).
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
OMNIGLOT_SHA256 = {
    "images_background.npz": "8bf84167413cd00beacdce3fe582f780ab538d8dbef043a6d688f2527bbce199",
    "images_evaluation.npz": "0b84c7ffd94c4841c0040e529c86a82eaaccb986d8eadad5673f7991b7475276",
}

MNIST_SOURCE = ("https://ossci-datasets.s3.amazonaws.com/mnist/ (the PyTorch mirror of "
                "http://yann.lecun.com/exdb/mnist/); the four *-ubyte.gz files")
FASHION_MNIST_SOURCE = ("https://github.com/zalandoresearch/fashion-mnist (data/fashion/, or "
                        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/); the four *-ubyte.gz files")
OMNIGLOT_SOURCE = ("brendenlake/omniglot images_background.zip / images_evaluation.zip converted to npz with "
                   "arrays 'images' (bool, (C, 20, 105, 105)) and 'labels' (C, 20), e.g. bitsandscraps/omniglot")

_DOWNLOAD_BASE = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

#: The datasets with a public mirror, which ``python -m lidvae_mini.data.download NAME`` (or ``download=True`` of
#: their loader) fetches, keeping each file only when its SHA-256 matches.
DOWNLOADABLE = ("mnist", "fashion_mnist")


def download_command(name: str) -> str:
    """The shell command that downloads dataset ``name`` (one of :data:`DOWNLOADABLE`) into the data directory."""
    check_choice(name, "downloadable dataset", DOWNLOADABLE)
    return f"python -m lidvae_mini.data.download {name}"


#: Names accepted by :func:`load_dataset`.
DATASETS = ("pinwheel", "mnist", "fashion_mnist", "omniglot")

#: Files :func:`load_dataset` reads for each name: ``{name: (sub-folder, {file: sha256}, source)}``; pinwheel is
#: generated and needs none.
DATASET_FILES = {
    "pinwheel": None,
    "mnist": ("mnist", MNIST_SHA256, MNIST_SOURCE),
    "fashion_mnist": ("fashion-mnist", FASHION_MNIST_SHA256, FASHION_MNIST_SOURCE),
    "omniglot": ("omniglot", OMNIGLOT_SHA256, OMNIGLOT_SOURCE),
}


def require_dataset(name: str, data_dir=None, verify: bool = True) -> Path | None:
    """Check, without loading anything, that every file :func:`load_dataset` reads for ``name`` is on disk.

    Use it before a long run (``python -m lidvae_mini.book.reproduce`` does) so that a missing file fails in
    seconds, not after hours of training on the other datasets.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: data folder (see :func:`lidvae_mini.data.data_dir`).
        verify: also check each file's SHA-256 (about 0.1 s per file).

    Returns:
        The folder holding the files, or ``None`` for a generated dataset (pinwheel).

    Raises:
        ValueError: unknown ``name`` (lists the valid names), or a checksum mismatch.
        MissingDataError: files are absent; the message names all of them, the folder to put them in and
            where to get them (the message of :func:`lidvae_mini.data.require_files`).
    """
    check_choice(name, "dataset", DATASETS)
    if DATASET_FILES[name] is None:
        return None
    subdir, table, source = DATASET_FILES[name]
    return require_files(subdir, tuple(table), root=data_dir, checksums=table if verify else None, source=source,
                         download=download_command(name) if name in DOWNLOADABLE else "")


# ----------------------------------------------------------------------------------------------------- IDX
def read_idx(path: str | os.PathLike, expected_magic: int) -> np.ndarray:
    """Read a gzipped IDX file (LeCun's MNIST format) into a uint8 array.

    Format: big-endian int32 magic number ``0x0000 08 nd`` (``08`` = unsigned byte, ``nd`` = number of
    dimensions), ``nd`` big-endian int32 sizes, then the bytes in row-major order.

    Raises:
        ValueError: wrong magic number, or a payload whose length disagrees with the header.
    """
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    magic = int(np.frombuffer(raw, dtype=">i4", count=1)[0]) if len(raw) >= 4 else -1
    if magic != expected_magic:
        raise ValueError(f"{path}: IDX magic number {magic}, expected {expected_magic}")
    ndim = magic & 0xFF
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but the payload has {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _download(subdir: str, files, root) -> None:
    """Fetch missing files from the canonical mirror, check their SHA-256, then move them in place."""
    table = MNIST_SHA256 if subdir == "mnist" else FASHION_MNIST_SHA256
    folder = _data_dir(root) / subdir
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        target = folder / name
        if target.is_file():
            continue
        with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".part") as tmp:
            part = tmp.name
            try:
                with urllib.request.urlopen(_DOWNLOAD_BASE[subdir] + name, timeout=60) as resp:
                    shutil.copyfileobj(resp, tmp)
            except BaseException:
                tmp.close()
                os.unlink(part)
                raise
        if sha256(part) != table[name]:
            os.unlink(part)
            raise ValueError(f"downloaded {name} from {_DOWNLOAD_BASE[subdir]} has the wrong SHA-256; not kept")
        os.replace(part, target)


def _load_idx_pair(subdir: str, table: dict, source: str, split: str, data_dir, download: bool, verify: bool):
    check_choice(split, "split", tuple(_IDX_FILES))
    img_name, lbl_name = _IDX_FILES[split]
    if download:
        _download(subdir, (img_name, lbl_name), data_dir)
    checksums = {img_name: table[img_name], lbl_name: table[lbl_name]} if verify else None
    folder = require_files(subdir, (img_name, lbl_name), root=data_dir, checksums=checksums, source=source,
                           download=download_command(subdir.replace("-", "_")))
    images = read_idx(folder / img_name, IDX_IMAGES_MAGIC)
    labels = read_idx(folder / lbl_name, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels")
    x = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)
    return x, labels.astype(np.int64)


def load_mnist(split: str = "train", data_dir=None, download: bool = False, verify: bool = True):
    """MNIST digits (LeCun, Cortes & Burges) from the original gzipped IDX files.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        data_dir: folder holding ``mnist/`` (see :func:`lidvae_mini.data.data_dir`).
        download: fetch missing files from the PyTorch mirror and check their SHA-256 (needs internet;
            off by default, never used in tests).
        verify: check the SHA-256 of both files (default; about 0.1 s).

    Returns:
        ``(x, y)``: ``x`` float32 (N, 784) in [0, 1] (pixel/255, row-major 28×28), ``y`` int64 (N,) in 0..9.

    Raises:
        MissingDataError: a file is absent (the message names it and the folder to put it in).
        ValueError: unknown split, checksum mismatch, or a malformed IDX file.
    """
    return _load_idx_pair("mnist", MNIST_SHA256, MNIST_SOURCE, split, data_dir, download, verify)


def load_fashion_mnist(split: str = "train", data_dir=None, download: bool = False, verify: bool = True):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from the original gzipped IDX files in ``fashion-mnist/``.

    Same arguments, shapes and errors as :func:`load_mnist` (60,000 train / 10,000 test, labels 0..9).
    """
    return _load_idx_pair("fashion-mnist", FASHION_MNIST_SHA256, FASHION_MNIST_SOURCE, split, data_dir,
                          download, verify)


# ------------------------------------------------------------------------------------------------ Omniglot
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of exact area-averaging weights: row i averages input interval [i·s, (i+1)·s)."""
    step = n_in / n_out
    edges = np.arange(n_out + 1) * step
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / step


def downsample_area(images: np.ndarray, size: int, chunk: int = 2048) -> np.ndarray:
    """Resize square images (N, H, H) to (N, size, size) by exact area averaging (box filter).

    Each output pixel is the mean of the input over its footprint, with fractional pixels weighted by
    their overlap (so 105 → 28 uses footprints of 3.75 input pixels). Values stay in the input range.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), got {images.shape}")
    size = check_int(size, "size")
    a = _area_matrix(images.shape[-1], size).astype(np.float32)
    b = _area_matrix(images.shape[-2], size).astype(np.float32)
    out = np.empty((images.shape[0], size, size), dtype=np.float32)
    for start in range(0, images.shape[0], chunk):
        block = images[start:start + chunk].astype(np.float32)
        out[start:start + chunk] = b @ block @ a.T
    return np.clip(out, 0.0, 1.0)


def load_omniglot(split: str = "background", size: int = 28, data_dir=None, verify: bool = True):
    """Omniglot characters (Lake et al. 2015) from the 105×105 npz conversion, downsampled to ``size`` × ``size``.

    Ink is 1 and background 0 (the npz stores white = True, so it is inverted); each 105×105 image is
    reduced by exact area averaging (:func:`downsample_area`), giving grey values in [0, 1].

    **Not the paper's data.** LIDVAE and He et al. use Burda et al.'s 28×28 ``chardata.mat`` (24,345 train /
    8,070 test images from all 50 alphabets, labels = alphabet), which is not available here; use
    :func:`load_omniglot_chardata` if you have it. This loader keeps Lake's background (964 characters of
    30 alphabets, 19,280 images) / evaluation (659 characters of 20 alphabets, 13,180 images) split, and
    its downsampling differs from Burda's.

    Args:
        split: ``"background"`` or ``"evaluation"``.
        size: output side length (28 by default; 105 returns the original resolution).
        data_dir: folder holding ``omniglot/``.
        verify: check the SHA-256 of the npz file.

    Returns:
        ``(x, y)``: ``x`` float32 (N, size·size) in [0, 1], ``y`` int64 (N,) = character index within the
        split (0..963 background, 0..658 evaluation), 20 drawings per character, in file order.

    Raises:
        MissingDataError: the npz file is absent. ValueError: unknown split or checksum mismatch.
    """
    check_choice(split, "split", ("background", "evaluation"))
    size = check_int(size, "size")
    name = f"images_{split}.npz"
    folder = require_files("omniglot", [name], root=data_dir,
                           checksums={name: OMNIGLOT_SHA256[name]} if verify else None, source=OMNIGLOT_SOURCE)
    with np.load(folder / name) as npz:
        images, labels = npz["images"], npz["labels"]
    ink = ~images.reshape(-1, images.shape[-2], images.shape[-1])
    if size == ink.shape[-1]:
        x = ink.astype(np.float32)
    else:
        x = downsample_area(ink, size)
    return x.reshape(x.shape[0], -1), labels.reshape(-1).astype(np.int64)


def load_omniglot_chardata(path: str | os.PathLike):
    """Burda et al.'s 28×28 Omniglot (``chardata.mat``, the split LIDVAE and He et al. use), if you have it.

    The file holds ``data`` (784, 24345), ``testdata`` (784, 8070) and one-hot alphabet targets
    ``target`` (50, 24345), ``testtarget`` (50, 8070). Images are stored column-major (Fortran order);
    they are returned row-major like MNIST.

    Returns:
        ``{"train": (x, y), "test": (x, y)}`` with ``x`` float32 (N, 784) in [0, 1] and ``y`` int64 alphabet
        index (0..49). There is no validation split: carve one with :func:`subsample_split`.

    Raises:
        MissingDataError: ``path`` does not exist. KeyError: the file lacks one of the four arrays.
    """
    from scipy.io import loadmat

    from .paths import MissingDataError

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingDataError(f"missing data file {path}: chardata.mat of Burda et al. (yburda/iwae, "
                               "datasets/OMNIGLOT/chardata.mat) is not shipped; place it there or pass its path")
    mat = loadmat(path)
    out = {}
    for split, xk, yk in (("train", "data", "target"), ("test", "testdata", "testtarget")):
        if xk not in mat or yk not in mat:
            raise KeyError(f"{path} lacks '{xk}' or '{yk}'")
        raw = np.asarray(mat[xk], dtype=np.float32).T  # (N, 784), each row column-major
        x = raw.reshape(-1, 28, 28).transpose(0, 2, 1).reshape(-1, 784)
        y = np.argmax(np.asarray(mat[yk]), axis=0).astype(np.int64)
        out[split] = (np.ascontiguousarray(np.clip(x, 0.0, 1.0)), y)
    return out


# ------------------------------------------------------------------------------------------- binarisation
def binarize(x, seed=None):
    """Dynamic binarisation for training: independent bits ``b ~ Bernoulli(x)``, fresh on every call.

    Args:
        x: intensities in [0, 1]; a NumPy array or a torch tensor (kept on its device).
        seed: ``None`` (fresh bits), an int, a ``numpy.random.Generator`` (NumPy input) or a
            ``torch.Generator`` (tensor input).

    Returns:
        An array/tensor of x's type and shape, float32 (tensor: x's float dtype), with values in {0, 1}.

    Raises:
        ValueError: values outside [0, 1] or not finite.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        if not torch.isfinite(x).all() or (x < 0).any() or (x > 1).any():
            raise ValueError("binarize needs finite values in [0, 1]")
        gen = seed
        if seed is not None and not isinstance(seed, torch.Generator):
            gen = torch.Generator(device=x.device).manual_seed(int(seed))
        xf = x if x.is_floating_point() else x.float()
        return torch.bernoulli(xf, generator=gen)
    arr = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(arr)) or arr.min(initial=0.0) < 0 or arr.max(initial=0.0) > 1:
        raise ValueError("binarize needs finite values in [0, 1]")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return (rng.random(arr.shape, dtype=np.float32) < arr).astype(np.float32)


def fixed_binarization(x, seed: int = 0):
    """Binarise once, reproducibly, for evaluation: the same ``seed`` gives the same bits.

    Equivalent to :func:`binarize` with an integer seed (required here). Use one fixed binarised copy of the
    validation/test images for every model and epoch, so log-likelihoods are comparable.
    """
    if seed is None or isinstance(seed, bool):
        raise ValueError("fixed_binarization needs an integer seed")
    return binarize(x, seed=int(seed))


# --------------------------------------------------------------------------------------------------- splits
def subsample_split(n_total: int, n_train: int | None, n_valid: int, seed=0):
    """Disjoint, seeded train/validation index sets carved from one pool of ``n_total`` items.

    A single permutation of ``range(n_total)`` drawn with ``seed``: validation = its first ``n_valid``
    entries, train = the next ``n_train`` (all the rest when ``None``). Train sets for larger ``n_train``
    extend smaller ones, and the validation set does not depend on ``n_train``. Use it on the *training*
    pool only; the test set stays untouched.

    Returns:
        ``(train_idx, valid_idx)``: int64 arrays in permuted (random) order.

    Raises:
        ValueError: negative sizes, or ``n_train + n_valid > n_total``.
    """
    n_total = check_int(n_total, "n_total")
    n_valid = check_int(n_valid, "n_valid", minimum=0)
    avail = n_total - n_valid
    if avail < 0:
        raise ValueError(f"n_valid={n_valid} exceeds n_total={n_total}")
    n_train = avail if n_train is None else check_int(n_train, "n_train", minimum=0)
    if n_train + n_valid > n_total:
        raise ValueError(f"n_train + n_valid = {n_train + n_valid} exceeds n_total={n_total}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    perm = rng.permutation(n_total).astype(np.int64)
    return perm[n_valid:n_valid + n_train], perm[:n_valid]


def _take_test(x, y, n_test, rng):
    if n_test is None:
        return x, y
    n_test = check_int(n_test, "n_test")
    if n_test > len(x):
        raise ValueError(f"n_test={n_test} exceeds the {len(x)} test items")
    idx = np.sort(rng.permutation(len(x))[:n_test])
    return x[idx], y[idx]


def load_dataset(name: str, n_train: int | None = None, n_valid: int | None = None, n_test: int | None = None,
                 seed: int = 0, data_dir=None) -> dict:
    """One entry point for the experiment data: seeded train / validation / test splits.

    Args:
        name: ``"pinwheel"``, ``"mnist"``, ``"fashion_mnist"`` or ``"omniglot"``.
        n_train: training items (``None``: pinwheel 50,000; images all that remain after validation).
        n_valid: validation items, carved from the training pool, never from the test set
            (``None``: pinwheel 5,000, MNIST/Fashion 10,000, Omniglot 2,000).
        n_test: test items, a seeded subset without replacement (``None``: pinwheel 50,000; images the whole
            test set).
        seed: one int; separate streams are derived for the split, the test subset and pinwheel draws.
        data_dir: data folder for the image sets.

    Splits: pinwheel train+valid and test are independent draws of :func:`make_pinwheel` (as in LIDVAE,
    classes balanced up to rounding); MNIST/Fashion: official 60k train file (train + valid) and 10k test
    file; Omniglot: Lake's background set (train + valid) and evaluation set (test), downsampled to 28×28
    (new characters at test time; see :func:`load_omniglot` for how this differs from the paper).

    Returns:
        ``{"train": (x, y), "valid": (x, y), "test": (x, y), "likelihood": "gaussian" | "bernoulli",
        "name": name}``; ``x`` float32 (pinwheel (N, 2); images (N, 784) in [0, 1], not binarised),
        ``y`` int64 labels (pinwheel arm, digit/class, Omniglot character).

    Raises:
        ValueError: unknown ``name`` (lists the valid names), sizes too large for the data.
        MissingDataError: an image file is absent.
    """
    check_choice(name, "dataset", DATASETS)
    split_ss, test_ss, draw_ss = np.random.SeedSequence(seed).spawn(3)
    if name == "pinwheel":
        n_train = 50_000 if n_train is None else check_int(n_train, "n_train")
        n_valid = 5_000 if n_valid is None else check_int(n_valid, "n_valid", minimum=0)
        n_test = 50_000 if n_test is None else check_int(n_test, "n_test")
        pool = n_train + n_valid
        x, y = make_pinwheel(-(-pool // 5), seed=np.random.default_rng(draw_ss))
        x, y = x[:pool], y[:pool]
        xt, yt = make_pinwheel(-(-n_test // 5), seed=np.random.default_rng(test_ss))
        test = (xt[:n_test], yt[:n_test])
        likelihood = "gaussian"
    else:
        if name == "mnist":
            (x, y), test = load_mnist("train", data_dir), load_mnist("test", data_dir)
            default_valid = 10_000
        elif name == "fashion_mnist":
            (x, y), test = load_fashion_mnist("train", data_dir), load_fashion_mnist("test", data_dir)
            default_valid = 10_000
        else:
            (x, y), test = load_omniglot("background", data_dir=data_dir), load_omniglot("evaluation",
                                                                                          data_dir=data_dir)
            default_valid = 2_000
        n_valid = default_valid if n_valid is None else n_valid
        test = _take_test(*test, n_test, np.random.default_rng(test_ss))
        likelihood = "bernoulli"
    tr, va = subsample_split(len(x), n_train, n_valid, seed=np.random.default_rng(split_ss))
    return {"train": (x[tr], y[tr]), "valid": (x[va], y[va]), "test": test, "likelihood": likelihood,
            "name": name}
