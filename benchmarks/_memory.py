"""Activation memory of one training step, shared by the benchmarks (not a benchmark itself)."""
from __future__ import annotations

import torch


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
