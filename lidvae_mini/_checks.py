"""Input validation shared by the package: fail with a clear message before any compute."""
from __future__ import annotations

import numpy as np


def _matches(shape: tuple, want: tuple) -> bool:
    return len(shape) == len(want) and all(w is None or w == a for w, a in zip(want, shape))


def transposed_hint(name: str, shape: tuple, want: tuple) -> str:
    """``"; it looks transposed: ..."`` when ``shape`` is ``want`` reversed (a 2-D array given as (D, N) instead of
    (N, D)), or when a 1-D array was expected and ``shape`` has one axis of size 1; else ``""``."""
    shape = tuple(shape)
    if len(shape) == 2 and len(want) == 2 and not _matches(shape, want) and _matches(shape[::-1], want):
        return f"; it looks transposed: pass {name}.T (datapoints are rows)"
    if len(want) == 1 and len(shape) == 2 and 1 in shape:
        return f"; flatten it ({name}.reshape(-1))"
    return ""


def as_float_array(x, name: str, ndim: int | None = None, shape: tuple | None = None) -> np.ndarray:
    """Return ``x`` as a finite float64 array, checking its rank and (optionally) its shape.

    ``shape`` entries that are ``None`` match any size.

    Raises:
        TypeError: ``x`` is not numeric.
        ValueError: wrong rank, wrong shape (saying when ``x`` looks transposed), or non-finite entries.
    """
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}"
                         + transposed_hint(name, arr.shape, (None,) * ndim))
    if shape is not None:
        if not _matches(arr.shape, tuple(shape)):
            want = ", ".join("*" if s is None else str(s) for s in shape)
            want = f"({want}{',' if len(shape) == 1 else ''})"
            raise ValueError(f"{name} must have shape {want}, got {arr.shape}"
                             + transposed_hint(name, arr.shape, tuple(shape)))
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def check_positive(value, name: str) -> float:
    """Return ``value`` as a float, raising ``ValueError`` unless it is finite and > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def check_choice(value, name: str, choices) -> str:
    """Raise ``ValueError`` naming the valid options unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, choices))}")
    return value


def check_int(value, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int, raising ``ValueError`` unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return v


def hidden_sizes(hidden, name: str = "hidden") -> tuple[int, ...]:
    """``hidden`` as a non-empty tuple of positive ints (an int means one hidden layer).

    Raises:
        TypeError: not an int or a sequence of ints.
        ValueError: empty, or an entry that is not a positive integer.
    """
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = (hidden,)
    try:
        sizes = tuple(hidden)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {hidden!r}") from None
    if not sizes:
        raise ValueError(f"{name} must name at least one hidden layer")
    return tuple(check_int(h, f"{name} entry") for h in sizes)


def check_batch(x, dim: int, name: str = "x", like=None):
    """Check that ``x`` is a finite floating-point ``torch.Tensor`` of shape ``(B, dim)`` and return it.

    ``like`` (a parameter of the module receiving ``x``) fixes the expected dtype and device.

    Raises:
        TypeError: ``x`` is not a tensor, not floating point, or its dtype differs from ``like``'s.
        ValueError: wrong shape, wrong device, or NaN/inf entries.
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, {dim}), got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape (B, {dim}), got {tuple(x.shape)}"
                         + transposed_hint(name, tuple(x.shape), (None, dim)))
    if like is not None:
        if x.dtype != like.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but the module's parameters are {like.dtype}; "
                            f"cast one of them (e.g. x.to({like.dtype}) or module.to({x.dtype}))")
        if x.device != like.device:
            raise ValueError(f"{name} is on {x.device} but the module's parameters are on {like.device}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def check_data(x, dim: int, head: str, name: str = "x", like=None):
    """:func:`check_batch`, plus binary values (0/1) when ``head`` is ``"bernoulli"``. Returns ``x``.

    Raises:
        TypeError, ValueError: as :func:`check_batch`; ``ValueError`` for non-binary data to a Bernoulli likelihood.
    """
    check_batch(x, dim, name, like=like)
    if head == "bernoulli" and not bool(((x == 0) | (x == 1)).all()):
        raise ValueError(f"{name} must be binary (0/1) for a Bernoulli decoder; binarise it first "
                         f"(lidvae_mini.data.images.binarize, or fit(..., binarize='dynamic'))")
    return x
