"""NUTS effective samples per second on the GMM joint model at N = 10^5: NumPyro against PyMC.

    pip install -r benchmarks/requirements.txt      # PyMC (not needed by the package, tests or chapters)
    python benchmarks/nuts_vs_pymc.py [--n 100000] [--draws 1000] [--tune 1000] [--chains 4] [--out FILE.json]

Both samplers run the same model (the official ``gauss_mix.stan``, ``lidvae_mini.exact.gmm.model_joint``:
``mu_k ~ N(0, 2^2)``, ``sigma_k ~ HalfNormal(2)``, ``alpha ~ Beta(5, 5)``, two-component normal mixture whose
log-likelihood is written as the same ``sum(logaddexp(log alpha + lp1, log1p(-alpha) + lp2))`` in both;
``--pymc-model mixture`` uses ``pm.NormalMixture`` instead, about 3x slower per gradient at N = 10^5) on
the same data (the overlap dataset regenerated at ``--n`` points with ``lidvae_mini.exact.gmm.simulate``), in
float64, with the same number of chains, warm-up (``--tune``) and draws, target acceptance 0.8 and maximum
tree depth 10, one after the other in this process. Chains run in parallel over the CPU cores in both
(NumPyro: one host device per chain, ``chain_method="parallel"``; PyMC: ``cores = min(chains, cpu count)``).

Reported per library: wall time of the whole sampling call (compilation, warm-up and draws included;
PyMC's one-time on-disk C compilation is done beforehand by a 5-draw pilot), the sampling time without
compilation (PyMC's ``sampling_time``; for NumPyro the wall time minus that of a 1 warm-up + 1 draw run,
which is almost all tracing and compilation), minimum bulk ESS (ArviZ) over the five scalars after relabelling every draw so that ``mu1 < mu2``
(``lidvae_mini.exact.gmm.relabel``; otherwise chains in mirror-image modes would make the ESS meaningless), and
ESS per second of each. The NumPyro/PyMC ratio of ESS per second is the headline number. PyMC runs first:
its chains are forked processes, and forking after JAX has started its threads can deadlock.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="datapoints (regenerated overlap data)")
    parser.add_argument("--draws", type=int, default=1000, help="draws per chain after warm-up")
    parser.add_argument("--tune", type=int, default=1000, help="warm-up iterations per chain")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed of both samplers")
    parser.add_argument("--data-seed", type=int, default=None, help="seed of the data (default gmm.DEFAULT_SEED)")
    parser.add_argument("--only", choices=["numpyro", "pymc"], default=None, help="run one library only")
    parser.add_argument("--pymc-model", choices=["logaddexp", "mixture"], default="logaddexp",
                        help="PyMC likelihood: the same logaddexp expression as NumPyro (default) or pm.NormalMixture")
    parser.add_argument("--out", help="write the numbers and the environment as JSON here")
    return parser.parse_args(argv)


def _min_ess(samples: dict) -> tuple[float, float, dict]:
    """Minimum bulk ESS and maximum R-hat over the scalars, after relabelling (mu1 < mu2)."""
    import arviz as az

    from lidvae_mini.exact.gmm import relabel

    relabelled, swapped = relabel(samples)
    summary = az.summary(az.from_dict(posterior=relabelled), kind="diagnostics", round_to="none")
    means = {k: np.round(np.asarray(v).mean(axis=(0, 1)), 4).tolist() for k, v in relabelled.items()}
    means["swapped_fraction"] = float(swapped.mean())
    return float(summary["ess_bulk"].min()), float(summary["r_hat"].max()), means


def run_numpyro(y, args) -> dict:
    import jax
    from numpyro.infer import MCMC, NUTS

    from lidvae_mini.exact.gmm import model_joint

    def sample(num_warmup, num_samples):
        mcmc = MCMC(NUTS(model_joint, target_accept_prob=0.8, max_tree_depth=10), num_warmup=num_warmup,
                    num_samples=num_samples, num_chains=args.chains,
                    chain_method="parallel" if jax.local_device_count() >= args.chains else "sequential",
                    progress_bar=False)
        start = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(args.seed), y, extra_fields=("diverging", "num_steps"))
        samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
        return mcmc, samples, time.perf_counter() - start

    _, _, compile_s = sample(1, 1)  # tracing + XLA compilation, paid again by every new MCMC object
    mcmc, samples, wall = sample(args.tune, args.draws)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    ess, rhat, means = _min_ess(samples)
    sampling = max(wall - compile_s, 1e-9)
    return {"library": "numpyro", "version": __import__("numpyro").__version__, "wall_s": wall,
            "sampling_s": sampling, "sampling_s_note": "wall_s minus the wall time of a 1+1-iteration run",
            "min_ess_bulk": ess, "max_r_hat": rhat, "ess_per_s": ess / wall, "ess_per_sampling_s": ess / sampling,
            "divergences": int(np.asarray(extra["diverging"]).sum()),
            "mean_leapfrog_steps": float(np.asarray(extra["num_steps"]).mean()),
            "chain_method": mcmc.chain_method, "posterior_means": means}


def run_pymc(y, args) -> dict:
    import pymc as pm

    import pytensor.tensor as pt

    with pm.Model():
        mu = pm.Normal("mu", 0.0, 2.0, shape=2)
        sigma = pm.HalfNormal("sigma", 2.0, shape=2)
        alpha = pm.Beta("alpha", 5.0, 5.0)
        if args.pymc_model == "mixture":  # the idiomatic PyMC spelling (about 3x slower per gradient here)
            pm.NormalMixture("y", w=pm.math.stack([alpha, 1.0 - alpha]), mu=mu, sigma=sigma, observed=y)
        else:  # the same expression as lidvae_mini.exact.gmm.model_joint
            lp1 = pm.logp(pm.Normal.dist(mu[0], sigma[0]), y)
            lp2 = pm.logp(pm.Normal.dist(mu[1], sigma[1]), y)
            pm.Potential("loglik", pt.logaddexp(pt.log(alpha) + lp1, pt.log1p(-alpha) + lp2).sum())
        common = dict(random_seed=args.seed, progressbar=False,
                      compute_convergence_checks=False, nuts={"max_treedepth": 10, "target_accept": 0.8})
        # Pilot: fills PyTensor's on-disk C cache (a one-time cost per machine, not per run).
        pm.sample(draws=5, tune=5, chains=1, cores=1, **common)
        cores = min(args.chains, os.cpu_count() or 1)
        start = time.perf_counter()
        idata = pm.sample(draws=args.draws, tune=args.tune, chains=args.chains, cores=cores, **common)
        wall = time.perf_counter() - start
    post = idata.posterior
    samples = {k: post[k].values for k in ("mu", "sigma", "alpha")}
    ess, rhat, means = _min_ess(samples)
    stats_ = idata.sample_stats
    sampling = float(stats_.attrs.get("sampling_time", float("nan")))
    return {"library": "pymc", "version": pm.__version__, "wall_s": wall, "sampling_s": sampling,
            "sampling_s_note": "PyMC's own sampling_time (excludes model compilation)",
            "min_ess_bulk": ess, "max_r_hat": rhat, "ess_per_s": ess / wall, "ess_per_sampling_s": ess / sampling,
            "divergences": int(stats_["diverging"].values.sum()),
            "mean_leapfrog_steps": float(stats_["n_steps"].values.mean()), "cores": cores,
            "pymc_model": args.pymc_model,
            "posterior_means": means}


def main(argv=None) -> dict:
    args = _parse(argv)
    # Before JAX starts: one CPU device per chain for parallel chains, float64 like PyMC.
    import numpyro

    numpyro.set_host_device_count(args.chains)
    numpyro.enable_x64()
    from lidvae_mini.exact.gmm import DEFAULT_SEED, simulate
    from lidvae_mini.book.provenance import environment_info

    y = simulate("overlap", args.n, DEFAULT_SEED if args.data_seed is None else args.data_seed)
    rows = []
    # PyMC first: its worker processes are forked, which must happen before JAX starts its threads.
    for lib, fn in (("pymc", run_pymc), ("numpyro", run_numpyro)):
        if args.only in (None, lib):
            print(f"running {lib} ...", file=sys.stderr, flush=True)
            rows.append(fn(y, args))
            print(f"  {lib}: {rows[-1]['wall_s']:.1f} s, min bulk ESS {rows[-1]['min_ess_bulk']:.0f}",
                  file=sys.stderr, flush=True)
    result = {"n": args.n, "draws": args.draws, "tune": args.tune, "chains": args.chains, "seed": args.seed,
              "data": "overlap, regenerated (lidvae_mini.exact.gmm.simulate)", "results": rows}
    by = {r["library"]: r for r in rows}
    if len(by) == 2:
        result["ratio_ess_per_s_numpyro_over_pymc"] = by["numpyro"]["ess_per_s"] / by["pymc"]["ess_per_s"]
        result["ratio_ess_per_sampling_s_numpyro_over_pymc"] = (by["numpyro"]["ess_per_sampling_s"]
                                                                / by["pymc"]["ess_per_sampling_s"])
    print(f"\nGMM joint model, N = {args.n}, {args.chains} chains x ({args.tune} warm-up + {args.draws} draws), "
          f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})\n")
    print("| library | version | wall time (s) | sampling only (s) | min bulk ESS | ESS / s (wall) "
          "| ESS / s (sampling) | max R-hat | divergences | mean leapfrog steps |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['library']} | {r['version']} | {r['wall_s']:.1f} | {r['sampling_s']:.1f} | {r['min_ess_bulk']:.0f} | "
              f"{r['ess_per_s']:.2f} | {r['ess_per_sampling_s']:.2f} | {r['max_r_hat']:.3f} | {r['divergences']} | "
              f"{r['mean_leapfrog_steps']:.1f} |")
    if "ratio_ess_per_s_numpyro_over_pymc" in result:
        print(f"\nNumPyro / PyMC, ESS per second of wall time: {result['ratio_ess_per_s_numpyro_over_pymc']:.2f}; "
              f"of sampling time: {result['ratio_ess_per_sampling_s_numpyro_over_pymc']:.2f}")
    if args.out:
        result["environment"] = environment_info()
        try:
            from importlib import metadata

            result["environment"]["packages"]["pymc"] = metadata.version("pymc")
            result["environment"]["packages"]["pytensor"] = metadata.version("pytensor")
        except Exception:  # PyMC not installed (--only numpyro)
            pass
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
