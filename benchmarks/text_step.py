"""Time and activation memory of one LIDSVAE training step against the sequential VAE (issue 10, Sec. 5).

    python benchmarks/text_step.py [--size cpu|paper|all] [--reps 5] [--device cpu|cuda] [--out FILE.json]

One step is :func:`lidvae_mini.text.fit_text`'s: ``TextVAE.loss`` (batch-mean negative ELBO, one draw), backward,
clipping at norm 5 over all parameters, an Adam update. Same batch (B = 32 sentences of T = 30 tokens plus
``<s>``/``</s>``), vocabulary and encoder for both models; the decoders' parameter counts are printed and must be
within 10% of each other. The LIDSVAE's logit-space Brenier map g_2 runs on all B x T tokens in one batched
call with the explicit ICNN gradient (the package default).

Sizes: ``cpu`` = the chapter's defaults at Yahoo's vocabulary (V = 2,000, embedding 32, LSTM 64, ICNN widths 64,
K = 8); ``paper`` = the supplement's text sizes (V = 20,000, embedding and hidden 1,024, K = 32, ICNN widths
1,024). Time: median over ``--reps`` steps after one warm-up step, the two models interleaved. Memory: bytes of the
distinct storages autograd saves for backward (parameters excluded), plus the CUDA peak on a GPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lidvae_mini.text import build_text_vae, count_parameters

SIZES = {
    "cpu": dict(V=2000, embed_dim=32, enc_hidden=64, dec_hidden=64, latent_dim=8, icnn_hidden=((64,), (64,))),
    "paper": dict(V=20000, embed_dim=1024, enc_hidden=1024, dec_hidden=1024, latent_dim=32,
                  icnn_hidden=((1024,), (1024,))),
}
B, T = 32, 30


def build(kind, size, device, seed=0):
    cfg = dict(SIZES[size])
    V = cfg.pop("V")
    torch.manual_seed(seed)
    m = build_text_vae(kind, V, **cfg).to(device)
    x = torch.randint(4, V, (B, T + 2), generator=torch.Generator().manual_seed(seed)).to(device)
    x[:, 0], x[:, -1] = 1, 2
    return m, torch.optim.Adam(m.parameters(), lr=1e-3), x


def saved_bytes(model, x):
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = model.loss(x)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def step(model, opt, x):
    loss, _ = model.loss(x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()


def run(size, device, reps):
    kinds = ("vae", "lidsvae")
    built = {k: build(k, size, device) for k in kinds}
    counts = {k: count_parameters(built[k][0].decoder) for k in kinds}
    times = {k: [] for k in kinds}
    for k in kinds:
        step(*built[k])  # warm-up
    for _ in range(reps):
        for k in kinds:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(*built[k])
            if device == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    out = {}
    for k in kinds:
        m, _, x = built[k]
        rec = {"decoder_parameters": counts[k], "ms_per_step": 1000 * statistics.median(times[k]),
               "saved_mb": saved_bytes(m, x) / 2**20}
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step(*built[k])
            torch.cuda.synchronize()
            rec["cuda_peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        out[k] = rec
    out["time_ratio"] = out["lidsvae"]["ms_per_step"] / out["vae"]["ms_per_step"]
    out["parameter_ratio"] = counts["lidsvae"] / counts["vae"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("cpu", "paper", "all"), default="cpu")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    res = {}
    print("| size | device | decoder | parameters | ms/step | saved MB | ratio to the VAE |")
    print("|---|---|---|---|---|---|---|")
    for size in (("cpu", "paper") if a.size == "all" else (a.size,)):
        r = run(size, a.device, a.reps)
        res[size] = r
        for k, name in (("vae", "sequential VAE"), ("lidsvae", "LIDSVAE")):
            ratio = r["time_ratio"] if k == "lidsvae" else 1.0
            print(f"| {size} | {a.device} | {name} | {r[k]['decoder_parameters']:,} | {r[k]['ms_per_step']:.1f} | "
                  f"{r[k]['saved_mb']:.1f} | {ratio:.2f} |")
        assert abs(r["parameter_ratio"] - 1) <= 0.10, f"decoder sizes differ by more than 10%: {r['parameter_ratio']}"
    if a.out:
        env = {"torch": torch.__version__, "device": a.device,
               "cuda": torch.cuda.get_device_name() if a.device == "cuda" else None, "B": B, "T": T}
        with open(a.out, "w") as fh:
            json.dump({"results": res, "environment": env}, fh, indent=2)


if __name__ == "__main__":
    main()
