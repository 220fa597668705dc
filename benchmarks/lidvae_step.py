"""Time and peak memory of one LIDVAE training step against a classical VAE of equal decoder size.

    python benchmarks/lidvae_step.py [--reps 10] [--device cpu|cuda|all] [--out FILE.json]

One step is the package's training step, as :func:`lidvae_mini.models.train.fit` takes it: ``VAE.loss`` (the batch-mean
negative ELBO, 1 reparameterised sample, analytic KL from one encoder pass), backward, gradient clipping at norm 5
over all parameters and an Adam update, for a :class:`lidvae_mini.models.vae.VAE` with the package's
:class:`~lidvae_mini.models.encoders.GaussianEncoder` (784-512-512-2K, ReLU) and a Bernoulli decoder, batch 100,
D = 784, K = 64 (issue 3, Sec. 6). The whole loop around it (data on the device, no host reads) is timed by
``benchmarks/train_step.py``; this script isolates the decoders. Decoders compared side by side:

- ``mlp``: :class:`~lidvae_mini.models.decoders.MLPDecoder` with two equal hidden layers, width chosen by
  :func:`~lidvae_mini.models.decoders.matched_mlp_hidden` so its parameter count is within 10% of the LIDVAE one;
- ``lidvae-explicit``: :class:`~lidvae_mini.models.decoders.InjectiveDecoder` with the ICNN gradient written out
  (:meth:`ICNN.gradient`, one ordinary backward pass; the package default);
- ``lidvae-autograd``: the same decoder with ``grad_mode="autograd"`` (``autograd.grad(create_graph=True)``,
  double backward, as the official code);
- ``lidvae-learned-beta``: the explicit decoder with ``beta="learned"`` (:class:`~lidvae_mini.models.decoders.FullRankLift`:
  ``beta^T = Q diag(exp s)``, ``Q`` the orthonormal QR factor of a free matrix, recomputed every step)
  and ``g2_active_inputs=K``; ``K D + K`` more parameters than the fixed-beta decoder (4% here), so the MLP stays
  within 10% of both.

Time: median over ``--reps`` steps after 2 warm-up steps, the configurations interleaved step by step so
that a busy machine slows them alike. Memory, on every device: the distinct storages autograd saves for
the backward pass (parameters excluded; ``torch.autograd.graph.saved_tensors_hooks``), i.e. the
activation memory held from forward to backward. On CUDA also the peak ``torch.cuda.max_memory_allocated``
over one step above the memory allocated before it. (On CPU, tracemalloc does not see torch's allocations
and the process's peak RSS is dominated by start-up, so neither is used.)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from lidvae_mini.models.decoders import InjectiveDecoder, MLPDecoder, count_parameters, matched_mlp_hidden
from lidvae_mini.models.encoders import GaussianEncoder
from lidvae_mini.models.vae import VAE

from _common import devices, saved_storage_mib  # benchmarks/ is on sys.path when a script here runs

B, D, K = 100, 784, 64
ENC_HIDDEN = (512, 512)
LID_HIDDEN1, LID_HIDDEN2 = (256, 256), (512, 512)
CONFIGS = ("mlp", "lidvae-explicit", "lidvae-autograd", "lidvae-learned-beta")


def build(config: str, device: str, seed: int = 0):
    """``(model, optimizer, x)``: a VAE with the given decoder, its Adam optimizer and a binary batch."""
    torch.manual_seed(seed)
    lid = InjectiveDecoder(K, D, LID_HIDDEN1, LID_HIDDEN2, head="bernoulli")
    if config == "mlp":
        dec = MLPDecoder(K, D, matched_mlp_hidden(lid, K, D), head="bernoulli")
    elif config == "lidvae-learned-beta":
        dec = InjectiveDecoder(K, D, LID_HIDDEN1, LID_HIDDEN2, head="bernoulli", beta="learned", g2_active_inputs=K)
    else:
        dec = lid
        if config == "lidvae-autograd":
            dec.g1.grad_mode = dec.g2.grad_mode = "autograd"
    model = VAE(GaussianEncoder(D, K, hidden=ENC_HIDDEN), dec).to(device)
    x = (torch.rand(B, D) > 0.5).float()
    return model, torch.optim.Adam(model.parameters(), lr=1e-4), x.to(device)


def step(model, opt, x) -> torch.Tensor:
    """One training step as ``fit`` takes it (loss, backward, clipping, Adam); no host read."""
    loss, _ = model.loss(x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), 5.0)
    opt.step()
    return loss.detach()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_configs(device: str, reps: int) -> dict:
    models = {c: build(c, device) for c in CONFIGS}
    times = {c: [] for c in CONFIGS}
    for _ in range(2):
        for c in CONFIGS:
            step(*models[c])
    for _ in range(reps):
        for c in CONFIGS:
            sync(device)
            t0 = time.perf_counter()
            step(*models[c])
            sync(device)
            times[c].append(1e3 * (time.perf_counter() - t0))
    return {c: {"ms_median": statistics.median(t), "ms_min": min(t), "reps": len(t),
                "decoder_params": count_parameters(models[c][0].decoder)} for c, t in times.items()}


def cuda_peak_mib(config: str) -> float:
    model, opt, x = build(config, "cuda")
    step(model, opt, x)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(model, opt, x)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def saved_tensor_mib(config: str, device: str = "cpu") -> float:
    """MiB of distinct storages that autograd saves for the backward pass of one step (parameters
    excluded): the activation memory held from forward to backward, the part that differs between
    decoders. Measured with ``torch.autograd.graph.saved_tensors_hooks``."""
    model, opt, x = build(config, device)
    return saved_storage_mib(model, lambda: step(model, opt, x))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10, help="timed steps per configuration (default 10)")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="cpu, cuda, or all available (default)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", help="write the numbers and the environment as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for dev in devices(args.device):
        res = time_configs(dev, args.reps)
        for c in CONFIGS:
            res[c]["saved_mib"] = saved_tensor_mib(c, dev)
            res[c]["peak_mib"] = cuda_peak_mib(c) if dev == "cuda" else None
            res[c]["ratio_vs_mlp"] = res[c]["ms_median"] / res["mlp"]["ms_median"]
            res[c]["saved_ratio_vs_mlp"] = res[c]["saved_mib"] / res["mlp"]["saved_mib"]
        results[dev] = res
        name = torch.cuda.get_device_name(0) if dev == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"\n### {dev} ({name}); batch {B}, D = {D}, K = {K}\n")
        print("| decoder | decoder params | ms/step (median) | time ratio vs MLP | saved-for-backward MiB "
              "| memory ratio |" + (" CUDA peak MiB (one step) |" if dev == "cuda" else ""))
        print("|---|---|---|---|---|---|" + ("---|" if dev == "cuda" else ""))
        for c in CONFIGS:
            r = res[c]
            print(f"| {c} | {r['decoder_params']:,} | {r['ms_median']:.1f} | {r['ratio_vs_mlp']:.2f} | "
                  f"{r['saved_mib']:.1f} | {r['saved_ratio_vs_mlp']:.2f} |"
                  + (f" {r['peak_mib']:.1f} |" if dev == "cuda" else ""))
    if args.out:
        from lidvae_mini.book.provenance import environment_info

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "setup": {"batch": B, "D": D, "K": K, "encoder_hidden": ENC_HIDDEN, "lid_hidden1": LID_HIDDEN1,
                      "lid_hidden2": LID_HIDDEN2, "likelihood": "bernoulli", "reps": args.reps,
                      "step": "VAE.loss (1 sample, one encoder pass) + backward + clip at 5 + Adam"},
            "results": results, "environment": environment_info()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
