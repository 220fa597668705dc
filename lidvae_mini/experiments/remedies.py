"""Why the Example-1 LIDGMVAE's cluster variable dies in its first epochs, and what keeps it alive.

With the paper's Example 1 (fixed, distinct cluster means ``mu_y = gamma * beta_1^T onehot(y)``) the cluster
variable ``y`` is identifiable, so by Theorem 1 a ``q(y|x)`` that sends every image to one cluster is an
*inference* collapse, not the model's. This module measures it and tests remedies that keep the model exactly
Example 1's (same prior, same injective decoder family, same ELBO at the end):

- :func:`cluster_usage`: the largest share of the aggregate ``q(y) = mean_x q(y|x)`` and ``MI_y = I_q(x; y)``;
- :func:`likelihood_spread`: how much the decoder can tell the clusters apart, ``mean_x std_y log p(x | mu_y)``;
- :class:`ClusterTrace`: both, before training and after every epoch;
- :data:`REMEDIES` and :func:`run_remedy`: one training run of the Example-1 LIDGMVAE with one remedy;
- :func:`remedy_verdicts`: the decision rule, fixed before the runs (book/params/08c_images_ablation/cpu_remedies.yaml).

Source: paper §3 (Example 1, Theorem 1); KL warm-up: Bowman et al. (2016), Sønderby et al. (2016); aggressive
(lagging-encoder) training: He et al. (2019); the initialisation for mostly-zero inputs: :mod:`lidvae_mini.models.icnn`.
"""
from __future__ import annotations

import numpy as np
import torch

from .._checks import check_choice, check_int
from ..models.mixture import _entropy

__all__ = ["REMEDIES", "MI_Y_ACTIVE", "MAX_SHARE", "MI_Y_GAIN", "cluster_usage", "likelihood_spread",
           "kl_y_warmup_weight", "ClusterTrace", "remedy_settings", "run_remedy", "remedy_verdicts", "collapse_timing",
           "remedies_table", "plot_remedy_traces", "remedy_findings", "SHORT_VERDICTS"]

#: The remedies, each applied alone to the Example-1 LIDGMVAE (row ``"lidgmvae"`` of the images chapter), name ->
#: what changes. ``"none"`` is the row as it is.
REMEDIES = {
    "none": "nothing: the Example-1 LIDGMVAE as packaged (fixed zero-one beta, default ICNN initialisation)",
    "decoder_init": "g_2's ICNN initialised for the K of D inputs that carry signal (g2_active_inputs = K)",
    "kl_y_warmup": "the training loss's weight on KL_y rises linearly from 0 to 1 over the first warm-up epochs",
    "aggressive": "lagging-encoder (aggressive) training of q(y|x) and q(w|x, y) (He et al. 2019)",
    "learned_beta": "a learned beta of full column rank in place of the fixed zero-one one",
}
# The decision rule, fixed before the runs: a remedy keeps y active when on every seed its test MI_y is at least
# MI_Y_ACTIVE and no cluster holds more than MAX_SHARE of the aggregate q(y), and its paired (same-seed) gain in MI_y
# over "none" is positive on every seed with a mean of at least MI_Y_GAIN (the images chapter's resolution).
#: The smallest test ``I_q(x; y)`` (nats) on every seed for a remedy to keep y active (:func:`remedy_verdicts`).
MI_Y_ACTIVE = 0.1
#: The largest share of the aggregate ``q(y)`` one cluster may hold on any seed (:func:`remedy_verdicts`).
MAX_SHARE = 0.5
#: The smallest mean same-seed gain in ``I_q(x; y)`` over ``"none"`` (nats), positive on every seed.
MI_Y_GAIN = 0.05


def _cluster_probs(model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    like = next(model.parameters())
    return torch.cat([model.cluster_probs(x[i:i + batch_size].to(like)).double().cpu()
                      for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def cluster_usage(model, x: torch.Tensor) -> dict:
    """How many clusters ``q(y|x)`` uses on ``x`` (N, D), N >= 2.

    Returns ``{"largest_share", "MI_y", "entropy_y"}``: ``max_y mean_x q(y|x)`` (1/C when every cluster is used
    equally, 1 when one cluster takes everything), ``I_q(x; y) = H(mean_x q(y|x)) - mean_x H(q(y|x))`` (nats, in
    ``[0, log C]``) and ``mean_x H(q(y|x))`` (nats).

    Raises:
        ValueError: fewer than 2 points (and the model's own checks of ``x``).
    """
    if x.shape[0] < 2:
        raise ValueError(f"cluster_usage needs at least 2 points, got {x.shape[0]}")
    q = _cluster_probs(model, x)
    marginal = q.mean(0)
    ent = _entropy(q).mean()
    return {"largest_share": float(marginal.max()), "MI_y": max(float(_entropy(marginal) - ent), 0.0),
            "entropy_y": float(ent)}


@torch.no_grad()
def likelihood_spread(model, x: torch.Tensor) -> float:
    """``mean_x std_y log p(x | w = mu_y)``, nats per datapoint: how far apart the decoder puts the clusters' prior
    means, seen through the likelihood of ``x`` (N, D). Near 0 the likelihood cannot tell the clusters apart, and
    ``q(y|x)`` is then moved by the KL terms alone.

    Raises:
        ValueError: fewer than 2 clusters' means to compare (and the model's own checks of ``x``).
    """
    mu = model.prior_means.detach()
    if mu.shape[0] < 2:
        raise ValueError(f"likelihood_spread needs at least 2 cluster means, got {mu.shape[0]}")
    like = next(model.parameters())
    x = x.to(like)
    ll = torch.stack([model.decoder.log_prob(x, m.expand(x.shape[0], -1)) for m in mu])    # (C, N)
    return float(ll.std(0).mean())


def kl_y_warmup_weight(epoch: int, warmup_epochs: int) -> float:
    """The weight on ``KL_y`` in training epoch ``epoch`` (from 1) of a linear warm-up over ``warmup_epochs``:
    ``(epoch - 1) / warmup_epochs``, capped at 1 (0 in the first epoch; 1 from epoch ``warmup_epochs + 1``).

    Raises:
        ValueError: ``epoch < 1`` or ``warmup_epochs < 1``.
    """
    epoch, warmup_epochs = check_int(epoch, "epoch"), check_int(warmup_epochs, "warmup_epochs")
    return min(1.0, (epoch - 1) / warmup_epochs)


class ClusterTrace:
    """:func:`cluster_usage` and :func:`likelihood_spread` on fixed images before training and after every epoch.

    Use :meth:`start` before training and the instance itself as an ``after_epoch`` hook
    (:func:`lidvae_mini.models.baselines.run_method`). ``rows`` is a dict of lists: ``epoch`` (0 = initialisation),
    ``largest_share``, ``MI_y``, ``entropy_y`` and ``likelihood_spread``.
    """

    KEYS = ("epoch", "largest_share", "MI_y", "entropy_y", "likelihood_spread")

    def __init__(self, x: torch.Tensor):
        self.x = torch.as_tensor(x)
        self.rows = {k: [] for k in self.KEYS}

    def record(self, model, epoch: int) -> None:
        row = {"epoch": int(epoch), **cluster_usage(model, self.x), "likelihood_spread": likelihood_spread(model, self.x)}
        for k in self.KEYS:
            self.rows[k].append(row[k])

    def start(self, model, epoch: int) -> None:
        """A ``before_epoch`` hook: records the initialisation (epoch 0) before the first epoch."""
        if epoch == 1 and not self.rows["epoch"]:
            self.record(model, 0)

    __call__ = record


def remedy_settings(remedy: str, latent_dim: int, warmup_epochs: int = 4) -> dict:
    """The arguments of :func:`lidvae_mini.models.baselines.run_method` that apply ``remedy`` to the Example-1 LIDGMVAE:
    ``{"method", "decoder_kwargs", "trainer", "warmup_epochs"}`` (``warmup_epochs`` 0 except for
    ``"kl_y_warmup"``).

    Raises:
        ValueError: unknown ``remedy``; non-positive sizes.
    """
    check_choice(remedy, "remedy", tuple(REMEDIES))
    K = check_int(latent_dim, "latent_dim")
    warmup_epochs = check_int(warmup_epochs, "warmup_epochs")
    return {"method": "lidgmvae_lbeta" if remedy == "learned_beta" else "lidgmvae",
            "decoder_kwargs": {"g2_active_inputs": K} if remedy == "decoder_init" else None,
            "trainer": "aggressive" if remedy == "aggressive" else None,
            "warmup_epochs": warmup_epochs if remedy == "kl_y_warmup" else 0}


def run_remedy(remedy: str, data: dict, *, latent_dim: int, warmup_epochs: int = 4, diagnose_points: int = 200,
               **run_kwargs) -> tuple[dict, dict]:
    """Train and evaluate the Example-1 LIDGMVAE with one remedy (:data:`REMEDIES`), tracing its clusters.

    Args:
        remedy: a key of :data:`REMEDIES`.
        data: the splits of :func:`lidvae_mini.models.baselines.run_method`; the trace reads the validation images.
        latent_dim: K (>= the number of clusters, as Example 1 needs).
        warmup_epochs: the length of ``"kl_y_warmup"``'s ramp (:func:`kl_y_warmup_weight`).
        diagnose_points: test images for :func:`lidvae_mini.diagnose.diagnose`'s cluster verdict (0 skips it).
        run_kwargs: the rest of :func:`~lidvae_mini.models.baselines.run_method`'s settings (epochs, seed, sizes, ...).

    Returns:
        ``(metrics, history)``: ``run_method``'s test metrics plus ``largest_share`` (of the aggregate ``q(y)`` on
        the test images), ``cluster_verdict`` and ``cluster_sensitivity`` (nats) of ``diagnose``; the history
        plus ``trace`` (the ``rows`` of a :class:`ClusterTrace` on the validation images, epoch 0 = initialisation).

    Raises:
        ValueError: unknown ``remedy`` (before any compute), and ``run_method``'s errors.
    """
    from ..models.baselines import run_method

    settings = remedy_settings(remedy, latent_dim, warmup_epochs)
    diagnose_points = check_int(diagnose_points, "diagnose_points", minimum=0)
    trace = ClusterTrace(torch.as_tensor(np.asarray(data["valid"])))
    warmup = settings.pop("warmup_epochs")

    def before(model, epoch):
        trace.start(model, epoch)
        if warmup:
            model.set_kl_y_weight(kl_y_warmup_weight(epoch, warmup))

    models = []

    def after(model, epoch):
        trace.record(model, epoch)
        if not models:
            models.append(model)

    metrics, hist = run_method(settings.pop("method"), data, latent_dim=latent_dim, before_epoch=before,
                               after_epoch=after, **settings, **run_kwargs)
    model = models[0]
    model.set_kl_y_weight(1.0)
    x_test = torch.as_tensor(np.asarray(data["test"][0]), dtype=next(model.parameters()).dtype)
    metrics["largest_share"] = cluster_usage(model, x_test)["largest_share"]
    if diagnose_points:
        from ..diagnose import diagnose

        seed = run_kwargs.get("seed", 0)
        d = diagnose(model, x_test[:diagnose_points], seed=seed, progress=False)
        metrics.update(cluster_verdict=d.verdict[-1], cluster_sensitivity=float(d.sensitivity[-1]),
                       cluster_borderline=bool(d.borderline[-1]))
    return metrics, {**hist, "trace": trace.rows}


def remedy_verdicts(per_seed: dict) -> dict:
    """The decision rule on ``{remedy: {"MI_y": [per seed], "largest_share": [per seed], ...}}`` (the form the
    images chapter saves; the seeds in the same order for every remedy, with ``"none"`` among them):
    ``{remedy: {"keeps_y_active", "mi_gain", "mi_gain_by_seed", "min_MI_y", "max_share"}}`` (nats, nats, nats,
    share). The thresholds are :data:`MI_Y_ACTIVE`, :data:`MAX_SHARE` and :data:`MI_Y_GAIN`; ``"none"`` gets
    ``keeps_y_active`` from the first two alone.

    Raises:
        ValueError: no ``"none"`` entry, or remedies with different numbers of seeds.
    """
    if "none" not in per_seed:
        raise ValueError("remedy_verdicts needs the 'none' runs to pair against")
    base = per_seed["none"]["MI_y"]
    out = {}
    for name, runs in per_seed.items():
        mi, share = runs["MI_y"], runs["largest_share"]
        if len(mi) != len(base):
            raise ValueError(f"{name!r} has {len(mi)} seeds, 'none' has {len(base)}")
        gain = [a - b for a, b in zip(mi, base)]
        alive = min(mi) >= MI_Y_ACTIVE and max(share) <= MAX_SHARE
        resolved = name == "none" or (min(gain) > 0 and float(np.mean(gain)) >= MI_Y_GAIN)
        out[name] = {"keeps_y_active": bool(alive and resolved), "mi_gain": float(np.mean(gain)),
                     "mi_gain_by_seed": gain, "min_MI_y": float(min(mi)), "max_share": float(max(share))}
    return out


#: Short names of :data:`lidvae_mini.diagnose.VERDICTS` for a table that fits the text column.
SHORT_VERDICTS = {"identifiable and used": "none", "non-identifiable (model collapse)": "model",
                  "identifiable but unused (inference collapse)": "inference", "borderline": "borderline"}


def remedies_table(per_seed: dict):
    """A :class:`pandas.DataFrame` narrow enough for the text column, one row per remedy: mean ± sd over seeds of
    ``MI_y`` (nats), the largest share of ``q(y)`` ("share") and ``iwae_ll`` (nats per test image), ``diagnose``'s
    verdicts on ``y`` as the kind of collapse ("collapse of y": :data:`SHORT_VERDICTS`, each with its count of
    seeds) and the decision rule's answer ("alive": :func:`remedy_verdicts`, when ``"none"``
    was run); the rows in the order of :data:`REMEDIES`.

    ``per_seed``: ``{remedy: {metric: [value per seed]}}``.
    """
    import pandas as pd

    from ..book.prose import fmt

    rule = remedy_verdicts(per_seed) if "none" in per_seed else {}
    columns = {"MI_y": ("MI_y", 2), "largest_share": ("share", 2), "iwae_ll": ("IWAE LL", 1)}
    rows = {}
    for r, v in per_seed.items():
        row = {name: fmt(np.mean(v[k]), d) + (f" ± {fmt(np.std(v[k], ddof=1), d)}" if len(v[k]) > 1 else "")
               for k, (name, d) in columns.items()}
        verdicts = [SHORT_VERDICTS.get(x, x) for x in v.get("cluster_verdict", [])]
        row["collapse of y"] = ", ".join(f"{x} ×{verdicts.count(x)}" for x in dict.fromkeys(verdicts))
        if rule:
            row["alive"] = "yes" if rule[r]["keeps_y_active"] else "no"
        rows[r] = row
    order = [r for r in REMEDIES if r in rows] + [r for r in rows if r not in REMEDIES]
    return pd.DataFrame(rows).T.loc[order]


def plot_remedy_traces(curves: dict, axes=None):
    """Three panels over epochs (0 = initialisation): the largest share of ``q(y)``, ``I_q(x; y)`` (nats) and the
    likelihood spread (nats, log scale), one colour per remedy and one line per seed.

    ``curves``: ``{remedy: [{"trace": ClusterTrace.rows, ...} per seed]}``. Returns the axes.
    """
    from .. import plotting

    if axes is None:
        _, axes = plotting.subplots(1, 3, row_height=3.0)
    colours = dict(zip(REMEDIES, [f"C{i}" for i in range(len(REMEDIES))]))
    for r, runs in curves.items():
        for i, run in enumerate(runs):
            t = run["trace"]
            kw = dict(color=colours.get(r, "k"), alpha=0.8, lw=1.2, label=r if i == 0 else None)
            axes[0].plot(t["epoch"], t["largest_share"], "o-", ms=2.5, **kw)
            axes[1].plot(t["epoch"], t["MI_y"], "o-", ms=2.5, **kw)
            axes[2].plot(t["epoch"], np.maximum(t["likelihood_spread"], 1e-3), "o-", ms=2.5, **kw)
    for ax, title in zip(axes, ("largest share of q(y)", "I_q(x; y), nats", "likelihood spread, nats")):
        ax.set_xlabel("epoch (0: initialisation)")
        ax.set_title(title)
    axes[2].set_yscale("log")
    plotting.legend_below(axes[0].figure, axes[0])
    return axes


def collapse_timing(traces: list, share: float = 0.9) -> dict:
    """When the cluster variable died, from :class:`ClusterTrace` rows of several seeds: ``{"epoch": [first epoch
    whose largest share of q(y) exceeds ``share``, or None, per seed], "spread_then": [likelihood spread at that
    epoch (nats)], "spread_max": [the largest spread of the run (nats)]}``."""
    out = {"epoch": [], "spread_then": [], "spread_max": []}
    for t in traces:
        e = next((i for i, v in enumerate(t["largest_share"]) if v > share), None)
        out["epoch"].append(None if e is None else t["epoch"][e])
        out["spread_then"].append(None if e is None else t["likelihood_spread"][e])
        out["spread_max"].append(max(t["likelihood_spread"]))
    return out


def remedy_findings(per_seed: dict, curves: dict | None = None) -> list:
    """Markdown sentences on the remedies, every number taken from ``per_seed`` (``{remedy: {metric: [value per
    seed]}}``, with ``"none"``): which remedies keep ``y`` active by the decision rule, and by how much; with
    ``curves`` (``{remedy: [{"trace": ...} per seed]}``) also when ``"none"``'s ``y`` died (:func:`collapse_timing`).

    Raises:
        ValueError: no ``"none"`` runs.
    """
    from ..book.prose import count_of, fmt, listing, span

    rule = remedy_verdicts(per_seed)
    n = len(per_seed["none"]["MI_y"])
    none = per_seed["none"]
    seeds = "its one seed" if n == 1 else f"{count_of(n, n)} seeds"
    out = [f"**Without a remedy** the largest share of $q(y)$ on the test images is "
           f"{span(none['largest_share'], 3)} and $I_q(x; y)$ {span(none['MI_y'], 3)} nats over {seeds}; "
           f"`diagnose` calls $y$: {listing(dict.fromkeys(none.get('cluster_verdict', ['(not run)'])))}."]
    if curves and "none" in curves:
        t = collapse_timing([c["trace"] for c in curves["none"]])
        died = [i for i, e in enumerate(t["epoch"]) if e is not None]
        if died:
            out.append(f"**When it dies**: without a remedy the largest share passes 0.9 by epoch "
                       f"{span([t['epoch'][i] for i in died], 0)} on {count_of(len(died), n)} seeds, when the "
                       f"likelihood spread is {span([t['spread_then'][i] for i in died], 1)} nats; the spread later "
                       f"reaches {span([t['spread_max'][i] for i in died], 1)} nats, and $q(y \\mid x)$ does not "
                       "come back even then: once a cluster holds every image, the other clusters' branches of "
                       "$q(w \\mid x, y)$ get no weight in the ELBO and stop improving.")
    keep = [r for r in per_seed if r != "none" and rule[r]["keeps_y_active"]]
    for r in (r for r in per_seed if r != "none"):
        v = rule[r]
        up = sum(g > 0 for g in v["mi_gain_by_seed"])
        where = ("positive" if up else "not positive") if n == 1 else f"positive on {count_of(up, n)} seeds"
        out.append(f"`{r}`: $I_q(x; y)$ {span(per_seed[r]['MI_y'], 3)} nats (same-seed gain over `none` "
                   f"{fmt(v['mi_gain'], 3)}, {where}), largest share up to {fmt(v['max_share'], 3)}, test log-likelihood "
                   f"{fmt(float(np.mean(per_seed[r]['iwae_ll'])), 1)} against {fmt(float(np.mean(none['iwae_ll'])), 1)}"
                   f" nats: **{'keeps' if v['keeps_y_active'] else 'does not keep'} $y$ active**.")
    out.append(f"**By the decision rule, {listing(f'`{r}`' for r in keep)} keep{'s' if len(keep) == 1 else ''} $y$ "
               "active**." if keep else "**By the decision rule, no remedy keeps $y$ active.**")
    if n < 2:
        out.append("One seed: nothing is replicated, so read this as a smoke test.")
    return out
