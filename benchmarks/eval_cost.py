"""Cost of the test-time evaluation of one paper-scale run of chapters 07 and 08, measured on a subset and
extrapolated (the training step is timed by ``benchmarks/train_step.py``).

    python benchmarks/eval_cost.py [--models gmvae,lidgmvae,pinwheel-gmvae,pinwheel-lidgmvae] [--threads 1]
                                   [--out FILE.json]

For each mixture model of ``train_step.py`` (same sizes, untrained: the cost does not depend on the weights):

- ``evaluate_mixture`` (:mod:`lidvae_mini.models.mixture`: ELBO parts, AU, accuracies and the IWAE with 500 importance
  samples per cluster, as the paper-scale parameter files set it) on ``--n-iwae`` test points; its cost is linear
  in the number of points;
- ``mixture_mutual_information`` (:mod:`lidvae_mini.models.baselines`, chapter 08's MI) on ``--n-mi`` and twice as many
  points; its cost is quadratic (all pairs of points), extrapolated as ``a N + b N^2`` through the two timings;
- for the image models, the validation pass that ``fit`` runs after every epoch (chapter 08 selects the epoch on
  it: :func:`lidvae_mini.models.train.evaluate`, i.e. the ELBO and the posterior means, 512 flow draws each for a
  RealNVP) on ``--n-iwae`` x 10 points, scaled to 2,000 validation images x 100 epochs.

Each is timed in process CPU seconds (``time.process_time``, one torch thread: the machine is shared) and its matmul
FLOPs are counted (``torch.utils.flop_counter``); both are scaled to the paper-scale test set (10,000 images for
08, 10,000 pinwheel points for 07). The GPU estimate is FLOPs / 15 TFLOP/s (float32, large batches: these passes
are compute-bound), a stated estimate, not a measurement. Not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import build, data  # noqa: E402

IWAE_SAMPLES = 500
N_TEST = {"gmvae": 10_000, "lidgmvae": 10_000, "pinwheel-gmvae": 10_000, "pinwheel-lidgmvae": 10_000}
GPU_TFLOPS = 15.0
N_VALID, EPOCHS = 2_000, 100          # chapter 08's paper-scale validation split and epochs


def _timed(fn):
    from torch.utils.flop_counter import FlopCounterMode

    t0 = time.process_time()
    fn()
    secs = time.process_time() - t0
    with FlopCounterMode(display=False) as counter:
        fn()
    return secs, counter.get_total_flops()


def cost(name: str, n_iwae: int, n_mi: int) -> dict:
    from lidvae_mini.models.baselines import mixture_mutual_information
    from lidvae_mini.models.mixture import evaluate_mixture

    model = build(name)
    x, binarize = data(name, 2 * n_mi)
    x = torch.as_tensor(x)
    if binarize == "dynamic":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(0))
    labels = np.arange(x.shape[0]) % model.num_clusters
    n_test = N_TEST[name]
    with torch.no_grad():
        s_iwae, f_iwae = _timed(lambda: evaluate_mixture(model, x[:n_iwae], labels[:n_iwae],
                                                         iwae_samples=IWAE_SAMPLES, seed=0))
        mi = [_timed(lambda n=n: mixture_mutual_information(model, x[:n], seed=0)) for n in (n_mi, 2 * n_mi)]
    # a N + b N^2 through (n, t1) and (2n, t2): b = (t2 - 2 t1) / (2 n^2), a = (t1 - b n^2) / n
    def extrapolate(t1, t2):
        b = max(0.0, (t2 - 2 * t1) / (2 * n_mi ** 2))
        a = max(0.0, (t1 - b * n_mi ** 2) / n_mi)
        return a * n_test + b * n_test ** 2
    if not name.startswith("pinwheel"):
        from lidvae_mini.models.train import evaluate

        n_val = 10 * n_iwae
        s_val, f_val = _timed(lambda: evaluate(model, x[:n_val], batch_size=1000))
        scale = N_VALID * EPOCHS / n_val
        validation = {"points": n_val, "cpu_s": s_val, "gflop": f_val / 1e9, "cpu_s_per_run": s_val * scale,
                      "gflop_per_run": f_val / 1e9 * scale}
    else:
        validation = None      # chapter 07 trains without a validation set
    out = {"n_test": n_test, "iwae_samples": IWAE_SAMPLES, "validation": validation,
           "evaluate_mixture": {"points": n_iwae, "cpu_s": s_iwae, "gflop": f_iwae / 1e9,
                                "cpu_s_at_n_test": s_iwae * n_test / n_iwae,
                                "gflop_at_n_test": f_iwae / 1e9 * n_test / n_iwae},
           "mutual_information": {"points": [n_mi, 2 * n_mi], "cpu_s": [m[0] for m in mi],
                                  "gflop": [m[1] / 1e9 for m in mi],
                                  "cpu_s_at_n_test": extrapolate(mi[0][0], mi[1][0]),
                                  "gflop_at_n_test": extrapolate(mi[0][1], mi[1][1]) / 1e9}}
    total_gflop = (out["evaluate_mixture"]["gflop_at_n_test"] + out["mutual_information"]["gflop_at_n_test"]
                   + (validation["gflop_per_run"] if validation else 0.0))
    out["gpu_estimate_s"] = total_gflop / (GPU_TFLOPS * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(N_TEST), help=f"comma-separated subset of {', '.join(N_TEST)}")
    parser.add_argument("--n-iwae", type=int, default=20, help="points for the timed evaluate_mixture (default 20)")
    parser.add_argument("--n-mi", type=int, default=250, help="points for the first MI timing (default 250)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", help="write the numbers and the environment as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    print("| model | validation CPU h per run | evaluate_mixture CPU h (IWAE 500/cluster) | MI CPU h "
          "| GPU est. min (FLOPs / 15 TFLOP/s) |")
    print("|---|---|---|---|---|")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        r = results[name] = cost(name, args.n_iwae, args.n_mi)
        val = f"{r['validation']['cpu_s_per_run'] / 3600:.2f}" if r["validation"] else "-"
        print(f"| {name} | {val} | {r['evaluate_mixture']['cpu_s_at_n_test'] / 3600:.2f} | "
              f"{r['mutual_information']['cpu_s_at_n_test'] / 3600:.2f} | {r['gpu_estimate_s'] / 60:.1f} |", flush=True)
    if args.out:
        from lidvae_mini.book.provenance import environment_info

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "setup": {"threads": args.threads, "gpu_tflops_assumed": GPU_TFLOPS,
                      "command": "python benchmarks/eval_cost.py " + " ".join(sys.argv[1:])},
            "results": results, "environment": environment_info()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
