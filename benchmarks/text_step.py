"""Time and activation memory of one LIDSVAE training step against the sequential VAE (issue 10, Sec. 5).

    python benchmarks/text_step.py [--size cpu|paper|all] [--reps 5] [--device cpu|cuda] [--out FILE.json]

One step is :func:`lidvae_mini.models.text.fit_text`'s: ``TextVAE.loss`` (batch-mean negative ELBO, one draw), backward,
clipping at norm 5 over all parameters, an Adam update. Same batch (B = 32 sentences of T = 30 tokens plus
``<s>``/``</s>``), vocabulary and encoder for every model; the decoders' parameter counts are printed; the
fixed-beta_2 LIDSVAE's must be within 10% of the VAE's (the learned beta_2 adds its (K+H) x (V-1) frame).
The LIDSVAE's logit-space Brenier map g_2 runs on all B x T tokens in one batched call with the explicit ICNN
gradient (the package default).

Models: the sequential VAE, the LIDSVAE with the paper's fixed zero-one ``beta_2`` (``decoder="fixed"``), and the
LIDSVAE with a learned full-rank ``beta_2`` (``decoder="learned_init"``, issue 19: a ``(K+H) x (V-1)`` map, its
orthonormal frame recomputed by a QR decomposition at every step). Target: each LIDSVAE step at most 2x the VAE's.

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

from lidvae_mini.models.text import build_text_vae, count_parameters

SIZES = {
    "cpu": dict(V=2000, embed_dim=32, enc_hidden=64, dec_hidden=64, latent_dim=8, icnn_hidden=((64,), (64,))),
    "paper": dict(V=20000, embed_dim=1024, enc_hidden=1024, dec_hidden=1024, latent_dim=32,
                  icnn_hidden=((1024,), (1024,))),
}
B, T = 32, 30


#: (name, build_text_vae's kind, its decoder construction)
MODELS = (("vae", "vae", "fixed"), ("lidsvae", "lidsvae", "fixed"), ("lidsvae_learned_init", "lidsvae", "learned_init"))
NAMES = {"vae": "sequential VAE", "lidsvae": "LIDSVAE, fixed beta_2", "lidsvae_learned_init": "LIDSVAE, learned beta_2"}


def build(name, size, device, seed=0):
    cfg = dict(SIZES[size])
    V = cfg.pop("V")
    _, kind, decoder = next(m for m in MODELS if m[0] == name)
    torch.manual_seed(seed)
    m = build_text_vae(kind, V, decoder=decoder, **cfg).to(device)
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
    kinds = tuple(m[0] for m in MODELS)
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
    for k in kinds[1:]:
        out[k]["time_ratio"] = out[k]["ms_per_step"] / out["vae"]["ms_per_step"]
        out[k]["parameter_ratio"] = counts[k] / counts["vae"]
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
        for k, name in NAMES.items():
            ratio = r[k].get("time_ratio", 1.0)
            print(f"| {size} | {a.device} | {name} | {r[k]['decoder_parameters']:,} | {r[k]['ms_per_step']:.1f} | "
                  f"{r[k]['saved_mb']:.1f} | {ratio:.2f} |")
        print(f"decoder parameters relative to the VAE's: "
              + ", ".join(f"{NAMES[k]} {r[k]['parameter_ratio']:.2f}" for k in NAMES if k != "vae"))
        ratio = r["lidsvae"]["parameter_ratio"]
        assert abs(ratio - 1) <= 0.10, f"decoder sizes differ by more than 10%: {ratio}"
    if a.out:
        env = {"torch": torch.__version__, "device": a.device,
               "cuda": torch.cuda.get_device_name() if a.device == "cuda" else None, "B": B, "T": T}
        with open(a.out, "w") as fh:
            json.dump({"results": res, "environment": env}, fh, indent=2)


if __name__ == "__main__":
    main()
