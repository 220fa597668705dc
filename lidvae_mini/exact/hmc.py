"""NUTS runs with convergence diagnostics (NumPyro for sampling, ArviZ for R-hat and ESS).

The PPCA and GMM chapters sample the exact posterior with the No-U-Turn sampler (Hoffman & Gelman
2014), as the official code did with Stan (4 chains, 1000 warm-up, 1000 draws).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .._checks import check_int

#: ArviZ 0.23 prints this ``FutureWarning`` on its first import of each calendar day (a date stamp in the user
#: cache), so a fresh machine's output differed from a warm one's; the book shows no warnings it cannot act on.
ARVIZ_DAILY_WARNING = r"\s*ArviZ is undergoing a major refactor"


def import_arviz():
    """``import arviz`` with its once-a-day refactor notice silenced (that warning only; others still show)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ARVIZ_DAILY_WARNING, category=FutureWarning, module="arviz")
        import arviz
    return arviz


@dataclass
class NutsResult:
    """Draws of a NUTS run, kept per chain.

    Attributes:
        samples: ``{site: array of shape (num_chains, num_samples, *site_shape)}``.
        summary: ArviZ summary table (mean, sd, HDI, ``ess_bulk``, ``ess_tail``, ``r_hat``) per scalar.
        num_divergences: divergent transitions after warm-up, over all chains.
    """

    samples: dict
    summary: "object"
    num_divergences: int

    @property
    def max_rhat(self) -> float:
        """Largest split R-hat over all scalar quantities (1.0 means the chains agree)."""
        return float(np.nanmax(self.summary["r_hat"].to_numpy()))

    @property
    def min_ess(self) -> float:
        """Smallest bulk effective sample size over all scalar quantities."""
        return float(np.nanmin(self.summary["ess_bulk"].to_numpy()))


def run_nuts(model, *model_args, num_warmup: int = 1000, num_samples: int = 1000, num_chains: int = 4,
             seed: int = 0, chain_method: str = "vectorized", progress_bar: bool = False,
             target_accept_prob: float = 0.8, init_params: dict | None = None, **model_kwargs) -> NutsResult:
    """Run NUTS on a NumPyro ``model`` and return per-chain draws with diagnostics.

    Args:
        model: a NumPyro model callable; ``model_args``/``model_kwargs`` are passed to it.
        num_warmup, num_samples, num_chains: NUTS schedule (per chain).
        seed: PRNG seed; the same seed gives the same draws on CPU.
        chain_method: ``"vectorized"`` (one device, fastest for small models) or ``"sequential"``.
        init_params: optional initial values, each with a leading ``num_chains`` axis.

    Raises:
        ValueError: a non-positive schedule.
    """
    az = import_arviz()
    import jax
    from numpyro.infer import MCMC, NUTS

    num_warmup = check_int(num_warmup, "num_warmup", minimum=0)
    num_samples = check_int(num_samples, "num_samples")
    num_chains = check_int(num_chains, "num_chains")
    mcmc = MCMC(NUTS(model, target_accept_prob=target_accept_prob), num_warmup=num_warmup,
                num_samples=num_samples, num_chains=num_chains, chain_method=chain_method,
                progress_bar=progress_bar)
    mcmc.run(jax.random.PRNGKey(seed), *model_args, init_params=init_params,
             extra_fields=("diverging",), **model_kwargs)
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    summary = az.summary(az.from_dict(posterior=samples), kind="all", round_to="none")
    divergences = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    return NutsResult(samples=samples, summary=summary, num_divergences=divergences)
