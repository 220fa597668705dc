"""Helpers shared by the benchmarks (and tests/test_train_efficiency.py); not a benchmark itself: the devices a
run times, the activation memory of one training step, and a count of host reads."""
from __future__ import annotations

import contextlib
import sys

import torch


def devices(choice: str) -> list[str]:
    """The devices a benchmark runs on for ``--device`` ``cpu``, ``cuda`` or ``all`` (the CPU and CUDA when present)."""
    if choice in ("cpu", "cuda"):
        return [choice]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@contextlib.contextmanager
def count_host_reads(skip_optim: bool = True):
    """Count reads of a tensor's value on the host (``bool``, ``float``, ``int``, ``item``, ``tolist``, ``numpy``):
    on a GPU each is a synchronisation. ``skip_optim``: leave out those made by torch.optim itself (Adam keeps its
    step counter in host memory, so its read is not a GPU synchronisation). Yields ``{"n": count}``."""
    names = ("__bool__", "__float__", "__int__", "item", "tolist", "numpy")
    saved = {n: getattr(torch.Tensor, n) for n in names}
    count = {"n": 0}

    def wrap(fn):
        def counted(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if not (skip_optim and "torch/optim" in caller):
                count["n"] += 1
            return fn(self, *args, **kwargs)
        return counted

    for n in names:
        setattr(torch.Tensor, n, wrap(saved[n]))
    try:
        yield count
    finally:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, fn)


def saved_storage_mib(model, run) -> tuple[float, object]:
    """MiB of the distinct storages autograd saves for backward while ``run()`` executes, parameters excluded:
    the activation memory held from forward to backward (``torch.autograd.graph.saved_tensors_hooks``), and
    what ``run()`` returned."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return sum(seen.values()) / 2**20, out
