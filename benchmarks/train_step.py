"""Throughput and memory of the package's real training step (:func:`lidvae_mini.models.train.fit`) at the paper's sizes,
the training loop of issue 9 against the loop before it, side by side in one run.

    python benchmarks/train_step.py [--steps 20] [--reps 3] [--device cpu|cuda|all] [--models vae,gmvae,...]
                                    [--mixture-encoder realnvp|gaussian] [--bf16] [--threads N] [--out FILE.json]

What is timed: one epoch of ``fit`` (``epochs=1``, ``--steps`` optimisation steps of batch 100, Adam, gradient
clipping, dynamic binarisation for images) on the same model object again and again: on CUDA the epoch's wall time
(the history's ``seconds``: batches, shuffles, loss, backward, clipping, optimiser step, NaN checks, epoch sums), on
CPU the process's CPU time over the call (:func:`run_loop`; use ``--threads 1``).
Loops compared, interleaved rep by rep (the order alternates) so that a busy machine slows them alike:

- ``old``: :func:`benchmarks.legacy_fit.legacy_fit`, the loop before issue 9 (data in host memory, a batch copied
  per step, five host reads per step, a Gaussian encoder run twice per ELBO);
- ``new``: :func:`lidvae_mini.models.train.fit` (data resident on the device, no host read per step, encoder once);
- ``new-bf16`` (with ``--bf16``): the same with ``precision="bf16"``, for the models whose modules accept
  bfloat16 activations (MLP decoders; the ICNN of the injective decoders does not yet: ``unsupported``).

Models (issue 9 §2; supplement C: 512 hidden units, 64 continuous latents; batch 100; depth 3 = our reading of
the "9-layer generative model"; decoders size-matched as in chapters 06-08), all built by the package:

- images, D = 784, K = 64: ``vae`` (chapter 08's single-latent row: :func:`lidvae_mini.models.baselines.build_method`),
  ``lidvae`` (:func:`lidvae_mini.models.vae.build_vae`, ICNN widths 512 x 3, Gaussian encoder 512-512),
  ``gmvae`` and ``lidgmvae`` (:func:`lidvae_mini.models.mixture.build_mixture_vae`, C = 10 clusters, ``--mixture-encoder``
  q(w|x, y), networks 512-512, ICNN width 512, depth 3);
- pinwheel (chapter 07's ``full.yaml``), D = K = 2, C = 5: ``pinwheel-gmvae``, ``pinwheel-lidgmvae`` (learned
  cluster prior, as chapter 07 fits), widths 512, depth 3, alpha 1, RealNVP q(w|x, y);
- ``sa_vae`` (not in the default list: a step costs about as much as 20 ordinary ones): chapter 08's SA-GMVAE
  row (:func:`lidvae_mini.models.baselines.build_method`, Gaussian q(w|x, y), 20 SVI steps), images as above.

Memory: on CUDA the allocator's peak over the timed epoch (``torch.cuda.max_memory_allocated``, the resident data
included). On CPU, where no allocator peak is exposed, an estimate: the activations autograd saves for one step's
backward pass (``torch.autograd.graph.saved_tensors_hooks``, distinct storages, parameters excluded) plus the
training state (parameters, gradients and Adam's two moments: 4 x parameters x 4 bytes).

Rates are images (datapoints) per second of training (median epoch; ``images_per_s_best`` from the fastest);
``ratio_vs_old`` is the median over reps of old seconds / new seconds of the two epochs run back to back (paired,
so a load change between reps cancels; above 1: the new loop is faster).

Per-step profile (``profile``, from single steps outside ``fit``): aten operators dispatched by one step (forward,
backward, clipping, Adam; on a GPU about one kernel launch each), matmul GFLOP (``torch.utils.flop_counter``), and
host reads per step of each loop (``bool``/``float``/``item``/... of a tensor, each a synchronisation on a GPU;
those of ``torch.optim``, on Adam's host-side step counter, are not counted). ``gpu_estimate_ms_per_step`` is a
stated estimate for one modern GPU, not a measurement (:func:`gpu_estimate_ms`).

Not a test: run by hand; ``--out`` writes the numbers with :func:`lidvae_mini.book.provenance.environment_info`.
"""
from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import count_host_reads, devices, saved_storage_mib  # noqa: E402
from legacy_fit import legacy_fit  # noqa: E402

from lidvae_mini.models.train import fit  # noqa: E402

BATCH = 100
IMAGE_D, IMAGE_K, IMAGE_C, WIDTH, DEPTH = 784, 64, 10, 512, 3
PIN_C = 5
CONFIGS = ("vae", "lidvae", "gmvae", "lidgmvae", "pinwheel-gmvae", "pinwheel-lidgmvae", "sa_vae")
LOOPS = ("old", "new", "new-bf16")


def build(name: str, mixture_encoder: str = "realnvp"):
    """The model of configuration ``name`` (seed 0) on the CPU."""
    from lidvae_mini.models.baselines import build_method
    from lidvae_mini.models.mixture import build_mixture_vae
    from lidvae_mini.models.vae import build_vae

    hidden = (WIDTH, WIDTH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "sa_vae":    # chapter 08's SA-GMVAE row: Gaussian q(w|x, y) refined by 20 SVI steps per step
            return build_method("sa_vae", IMAGE_D, IMAGE_K, IMAGE_C, depth=DEPTH, hidden=hidden, icnn_width=WIDTH,
                                svi_steps=20, seed=0)
        if name == "vae":
            return build_method("vae", IMAGE_D, IMAGE_K, IMAGE_C, depth=DEPTH, hidden=hidden, icnn_width=WIDTH, seed=0)
        if name == "lidvae":
            return build_vae("lidvae", IMAGE_D, IMAGE_K, "bernoulli", encoder_hidden=hidden, hidden1=(WIDTH,) * DEPTH,
                             hidden2=(WIDTH,) * DEPTH, seed=0)
        if name in ("gmvae", "lidgmvae"):
            return build_mixture_vae(name, IMAGE_D, IMAGE_K, IMAGE_C, "bernoulli", DEPTH, encoder=mixture_encoder,
                                     encoder_hidden=hidden, cluster_hidden=hidden, icnn_width=WIDTH, alpha=0.1, seed=0)
        kind = name.split("-", 1)[1]
        extra = {"prior": "learned"} if "prior" in inspect.signature(build_mixture_vae).parameters else {}
        return build_mixture_vae(kind, 2, 2, PIN_C, "gaussian", DEPTH, encoder="realnvp", encoder_hidden=hidden,
                                 cluster_hidden=hidden, icnn_width=WIDTH, alpha=1.0, prior_radius=1.5,
                                 prior_scale=0.3, seed=0, **extra)


def data(name: str, n: int) -> tuple[np.ndarray, str | None]:
    """``n`` training points for ``name`` and the binarisation mode of its chapter."""
    if name.startswith("pinwheel"):
        from lidvae_mini.data.pinwheel import make_pinwheel

        x, _ = make_pinwheel(-(-n // PIN_C), num_classes=PIN_C, seed=0)
        x = (x - x.mean(0)) / x.std(0)
        return x[:n].astype(np.float32), None
    return np.random.default_rng(0).random((n, IMAGE_D), dtype=np.float32), "dynamic"   # grey levels in [0, 1]


def supports_bf16(model) -> bool:
    from lidvae_mini.models.decoders import InjectiveDecoder

    return not isinstance(model.decoder, InjectiveDecoder)


def run_loop(loop: str, model, x, binarize, device) -> tuple[float, float | None]:
    """Seconds of one training epoch with ``loop``, and the CUDA allocator's peak MiB over it (else None).

    On CUDA: the wall time of the epoch (the history's ``seconds``; the loop reads the device at the epoch's end).
    On CPU: the process's CPU time over the ``fit`` call (``time.process_time``; with one torch thread, the time
    the work took, not the time other processes held the core: the benchmark machine is shared)."""
    kw = dict(epochs=1, batch_size=BATCH, lr=1e-4, seed=0, binarize=binarize, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    cpu0 = time.process_time()
    if loop == "old":
        hist = legacy_fit(model, x, **kw)
    else:
        hist = fit(model, x, precision="bf16" if loop == "new-bf16" else "fp32", **kw)
    if device.type == "cuda":
        return hist["seconds"][0], torch.cuda.max_memory_allocated() / 2**20
    return time.process_time() - cpu0, None


def cpu_memory_mib(model, x, binarize) -> dict:
    """Activations saved for one step's backward (MiB) and the training state (MiB), on the CPU."""
    xb = torch.as_tensor(x[:BATCH])
    if binarize == "dynamic":
        xb = torch.bernoulli(xb, generator=torch.Generator().manual_seed(0))
    activations, (loss, _) = saved_storage_mib(model, lambda: model.loss(xb))
    loss.backward()
    model.zero_grad(set_to_none=True)
    n_params = sum(p.numel() for p in model.parameters())
    return {"activations_mib": activations, "state_mib": 4 * n_params * 4 / 2**20,
            "parameters": n_params}


class _OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched (on a GPU, about one kernel launch each)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _one_step(model, opt, xb) -> None:
    loss, _ = model.loss(xb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), 5.0)
    opt.step()


def step_profile(name: str, mixture_encoder: str, x, binarize, device) -> dict:
    """Per training step: aten operators (forward, backward, clipping, Adam), matmul GFLOP
    (``torch.utils.flop_counter``) and host reads of each loop (the difference between epochs of 4 and 2 steps)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build(name, mixture_encoder).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    xb = torch.as_tensor(x[:BATCH]).to(device)
    if binarize == "dynamic":
        xb = torch.bernoulli(xb)
    _one_step(model, opt, xb)
    with _OpCounter() as ops:
        _one_step(model, opt, xb)
    with FlopCounterMode(display=False) as flops:
        _one_step(model, opt, xb)
    reads = {}
    x, _ = data(name, 4 * BATCH)
    for loop, fn in (("old", legacy_fit), ("new", fit)):
        counts = []
        for steps in (2, 4):
            with count_host_reads() as c:
                fn(model, x[:steps * BATCH], epochs=1, batch_size=BATCH, lr=1e-4, seed=0, binarize=binarize,
                   progress=False)
            counts.append(c["n"])
        reads[loop] = (counts[1] - counts[0]) / 2
    return {"aten_ops_per_step": ops.n, "gflop_per_step": flops.get_total_flops() / 1e9,
            "host_reads_per_step": reads}


def gpu_estimate_ms(profile: dict, us_per_op: float = 10.0, tflops: float = 15.0) -> float:
    """A stated estimate, not a measurement: eager PyTorch on a GPU takes at least ``us_per_op`` of host time per
    operator (dispatch and launch) and at least the matmul FLOPs at ``tflops`` (float32, small matrices); a
    step takes the larger of the two."""
    return max(profile["aten_ops_per_step"] * us_per_op / 1e3, profile["gflop_per_step"] / tflops)


def bench(name: str, device: torch.device, steps: int, reps: int, bf16: bool, mixture_encoder: str) -> dict:
    x, binarize = data(name, steps * BATCH)
    loops = ["old", "new"] + (["new-bf16"] if bf16 else [])
    models = {loop: build(name, mixture_encoder).to(device) for loop in loops}
    out: dict = {"parameters": sum(p.numel() for p in models["new"].parameters()), "steps": steps,
                 "batch": BATCH, "binarize": binarize}
    if "new-bf16" in loops and not supports_bf16(models["new-bf16"]):
        loops.remove("new-bf16")
        out["new-bf16"] = "unsupported (the ICNN's input check rejects bfloat16 activations)"
    for loop in loops:                                   # warm-up (allocator, kernels, first-call costs)
        run_loop(loop, models[loop], x, binarize, device)
    secs = {loop: [] for loop in loops}
    peaks = {loop: [] for loop in loops}
    for r in range(reps):
        for loop in (loops if r % 2 == 0 else loops[::-1]):
            s, p = run_loop(loop, models[loop], x, binarize, device)
            secs[loop].append(s)
            peaks[loop].append(p)
    for loop in loops:
        med = statistics.median(secs[loop])
        out[loop] = {"seconds_per_epoch": secs[loop], "images_per_s": steps * BATCH / med,
                     "images_per_s_best": steps * BATCH / min(secs[loop]), "ms_per_step": 1e3 * med / steps,
                     "cuda_peak_mib": max(peaks[loop]) if device.type == "cuda" else None}
    for loop in loops[1:]:
        # paired: the two loops of one rep ran back to back, under the same load
        out[loop]["ratio_vs_old"] = statistics.median(o / n for o, n in zip(secs["old"], secs[loop]))
    out["profile"] = step_profile(name, mixture_encoder, x, binarize, device)
    if device.type == "cpu":
        out["cpu_memory_estimate"] = cpu_memory_mib(build(name, mixture_encoder), x, binarize)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimisation steps per timed epoch (default 20)")
    parser.add_argument("--reps", type=int, default=3, help="timed epochs per loop (default 3; median reported)")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="cpu, cuda, or all available (default)")
    parser.add_argument("--models", default=",".join(CONFIGS[:-1]),
                        help=f"comma-separated subset of {', '.join(CONFIGS)} (default: all but sa_vae)")
    parser.add_argument("--mixture-encoder", choices=("realnvp", "gaussian"), default="realnvp",
                        help="q(w|x, y) of the image mixtures (default realnvp, the paper's family)")
    parser.add_argument("--bf16", action="store_true", help="also time precision='bf16'")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", help="write the numbers and the environment as JSON here")
    args = parser.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {CONFIGS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for dev in devices(args.device):
        device = torch.device(dev)
        where = torch.cuda.get_device_name(0) if dev == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"\n### {dev} ({where}); batch {BATCH}, {args.steps} steps per timed epoch, median of {args.reps}\n")
        print("| model | parameters | old img/s | new img/s | new/old | new-bf16 img/s | bf16/old | "
              + ("CUDA peak MiB (old / new) |" if dev == "cuda" else "CPU est. MiB (activations + state) |")
              + " aten ops/step | GFLOP/step | host reads/step (old / new) | GPU est. ms/step |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        results[dev] = {}
        for name in names:
            r = bench(name, device, args.steps, args.reps, args.bf16, args.mixture_encoder)
            results[dev][name] = r
            b16 = r.get("new-bf16")
            b16_rate = f"{b16['images_per_s']:.0f}" if isinstance(b16, dict) else (b16 and "unsupported") or "-"
            b16_ratio = f"{b16['ratio_vs_old']:.2f}" if isinstance(b16, dict) else "-"
            if dev == "cuda":
                mem = f"{r['old']['cuda_peak_mib']:.0f} / {r['new']['cuda_peak_mib']:.0f}"
            else:
                est = r["cpu_memory_estimate"]
                mem = f"{est['activations_mib']:.0f} + {est['state_mib']:.0f}"
            pr = r["profile"]
            pr["gpu_estimate_ms_per_step"] = gpu_estimate_ms(pr)
            print(f"| {name} | {r['parameters']:,} | {r['old']['images_per_s']:.0f} | {r['new']['images_per_s']:.0f} "
                  f"| {r['new']['ratio_vs_old']:.2f} | {b16_rate} | {b16_ratio} | {mem} | {pr['aten_ops_per_step']} "
                  f"| {pr['gflop_per_step']:.2f} | {pr['host_reads_per_step']['old']:.0f} / "
                  f"{pr['host_reads_per_step']['new']:.0f} | {pr['gpu_estimate_ms_per_step']:.1f} |", flush=True)
    if args.out:
        from lidvae_mini.book.provenance import environment_info

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "setup": {"batch": BATCH, "steps_per_epoch": args.steps, "reps": args.reps, "image_D": IMAGE_D,
                      "image_K": IMAGE_K, "image_clusters": IMAGE_C, "width": WIDTH, "depth": DEPTH,
                      "pinwheel_clusters": PIN_C, "mixture_encoder": args.mixture_encoder, "optimizer": "adam",
                      "threads": torch.get_num_threads(),
                      "command": "python benchmarks/train_step.py " + " ".join(sys.argv[1:])},
            "results": results, "environment": environment_info()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
