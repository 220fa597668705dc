"""The paper's image tables and Figure 1(c, d): data splits, training the rows, and sentences from their numbers.

Chapters 08 (the tables at the ``ci`` scale), 08b (the committed ``cpu`` runs) and 08c (the ablation) share
this module, so one function describes a run of any scale:

- :func:`image_splits` and :func:`run_rows`: seeded data splits and every row trained once per seed;
- :func:`summarise` and :func:`beside`: mean (and sd) over seeds, and our rows beside the paper's;
- :func:`findings`: Markdown bullets on one table, every number and comparison taken from it;
- :func:`figure1cd`: Figure 1(c, d)'s claims checked on a depth sweep;
- :func:`rows_of`, :func:`family_of`, :func:`table_datasets`: reading committed results made before the
  ``encoder`` parameter and Example 1 (their ``lidgmvae`` is today's ``lidgmvae_learned``).

Source: paper Table 1, supplement Table 2 (MNIST, "9-layer generative model"), Figure 1(c, d); metrics as in
:mod:`lidvae_mini.evaluation.metrics` (nats per image).
"""
from __future__ import annotations

import numpy as np

from ..book.prose import cap, count_of, fmt, listing, number_word, ordinal, span
from ..data.images import fixed_binarization, load_dataset
from ..models.baselines import run_method

__all__ = ["PAPER", "POOL", "KEYS", "NAMES", "LIDS", "DATASET_LABELS", "image_splits", "run_rows",
           "summarise", "beside", "findings", "figure1cd", "legacy", "renamed", "rows_of", "family_of", "mean_sd",
           "table_datasets", "lidgmvae_ranks"]

#: The paper's rows, ``(AU, KL, MI, LL)`` in nats per image (AU a fraction), keyed by our method names (our
#: ``gmvae`` is the paper's "VAE"): the MNIST block of the supplement's Table 2 (mean over 10 seeds) and the
#: Omniglot columns of Table 1, as reconstructed from a garbled text extraction (errata). Fashion-MNIST's columns
#: could not be recovered.
PAPER = {
    "mnist": {"gmvae": (0.1, 0.1, 0.2, -108.2), "sa_vae": (0.4, 0.4, 0.6, -106.3),
              "lagging_vae": (0.5, 0.8, 1.7, -105.2), "beta_vae": (0.8, 1.5, 2.8, -100.4),
              "lidgmvae": (1.0, 1.8, 3.9, -95.4)},
    "omniglot": {"gmvae": (0.02, 0.1, 0.0, -862.1), "sa_vae": (0.1, 1.0, 0.2, -853.4),
                 "lagging_vae": (0.5, 3.6, 1.0, -849.4), "beta_vae": (0.7, 5.9, 1.4, -842.6),
                 "lidgmvae": (1.0, 7.5, 1.7, -820.3)},
}
#: Images in each dataset's training file (for Omniglot, Lake et al.'s background set).
POOL = {"mnist": 60_000, "fashion_mnist": 60_000, "omniglot": 19_280}
#: The metrics of a table row, in the order the tables print them.
KEYS = ("AU", "KL", "MI", "iwae_ll", "acc_hungarian", "acc_majority", "chance")
#: How the sentences name each row.
NAMES = {"vae": "the VAE", "beta_vae": "the β-GMVAE", "sa_vae": "SA-VAE", "lagging_vae": "aggressive training",
         "gmvae": "the GMVAE", "lidgmvae": "the LIDGMVAE (Example 1)",
         "lidgmvae_learned": "the learned-prior LIDGMVAE", "gmvae_example1": "the GMVAE with Example 1's prior",
         "lidgmvae_lbeta": "the Example-1 LIDGMVAE with a learned β",
         "lidgmvae_learned_lbeta": "the learned-prior LIDGMVAE with a learned β"}
#: The names the LIDGMVAE row of a table may have, Example 1 or the learned-prior variant of the official code.
LIDS = ("lidgmvae", "lidgmvae_learned")
DATASET_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "omniglot": "Omniglot"}


def _val(r: dict, k: str, digits: int = 2) -> str:
    """A summary's metric ``k`` as text, with ``± sd`` over seeds when there are several."""
    sd = r.get(f"{k}_sd")
    return fmt(r[k], digits) + (f" ± {fmt(sd, digits)}" if sd is not None else "")


def image_splits(name: str, seed: int, *, n_train: int, n_valid: int, n_test: int, data_dir=None) -> dict:
    """Seeded splits of one image dataset: ``{"train": (images (N, 784) in [0, 1], labels), "valid": images (V,
    784) binarised once, "test": (images (T, 784) binarised once, labels (T,))}``. Training images are binarised
    afresh at every visit by the trainer; validation and test bits are fixed by ``seed`` (the same for every row).
    ``n_train`` is capped at what the training file leaves after validation (Omniglot: 19,280 images).

    Raises:
        lidvae_mini.data.MissingDataError: the dataset's files are not in ``data_dir`` (the message says where).
    """
    n_tr = min(n_train, POOL[name] - n_valid)
    d = load_dataset(name, n_train=n_tr, n_valid=n_valid, n_test=n_test, seed=seed, data_dir=data_dir)
    return {"train": d["train"], "valid": fixed_binarization(d["valid"][0], seed=10_000 + seed),
            "test": (fixed_binarization(d["test"][0], seed=20_000 + seed), d["test"][1])}


def run_rows(name: str, rows, depth: int, seeds, *, data_kw: dict, cache: dict | None = None, **kw) -> tuple:
    """Train every method in ``rows`` on dataset ``name`` for each seed: ``({method: [metrics per seed]},
    {method: history of the first seed})``. ``data_kw`` goes to :func:`image_splits`, ``kw`` (model sizes and the
    training budget) to :func:`lidvae_mini.models.baselines.run_method`. ``cache`` (``{(dataset, method, seed,
    depth): (metrics, history)}``) lets a row trained once serve every section of a chapter.

    Raises:
        lidvae_mini.data.MissingDataError: the dataset's files are missing.
    """
    cache = {} if cache is None else cache
    out, hists = {m: [] for m in rows}, {}
    for s in seeds:
        missing = [m for m in rows if (name, m, s, depth) not in cache]
        data = image_splits(name, s, **data_kw) if missing else None       # no data to load when all are cached
        for m in missing:
            cache[name, m, s, depth] = run_method(m, data, depth=depth, seed=s, **kw)
        for m in rows:
            res, hist = cache[name, m, s, depth]
            out[m].append(res)
            hists.setdefault(m, hist)
    return out, hists


def summarise(runs: list[dict]) -> dict:
    """Mean of every numeric metric over a row's runs (one dict per seed), and ``"<metric>_sd"`` (sample standard
    deviation) when there are several; a metric without numbers (e.g. the VAE's accuracy) is ``None``."""
    out = {}
    for k in runs[0]:
        vals = [r[k] for r in runs if isinstance(r[k], (int, float))]
        out[k] = float(np.mean(vals)) if vals else None
        if len(vals) > 1:
            out[f"{k}_sd"] = float(np.std(vals, ddof=1))
    return out


def beside(ours, paper):
    """Our AU, KL, MI and LL rows (a DataFrame with those columns, LL as ``"IWAE LL"``), each followed by the paper's
    row for the same model (``paper``: a DataFrame of four columns, rows named by method): one table that fits the
    text column, ``–`` where a value is missing."""
    import pandas as pd

    ours = ours[["AU", "KL", "MI", "IWAE LL"]].rename(columns={"IWAE LL": "LL"})
    paper = paper.set_axis(["AU", "KL", "MI", "LL"], axis=1)
    parts = []
    for m in ours.index:
        parts.append(ours.loc[[m]])
        if m in paper.index:
            parts.append(paper.loc[[m]].rename(index={m: f"{m} (paper)"}))
    return pd.concat(parts).astype(object).fillna("–")


def _collapse_bullet(rows: dict, mix: list, lid) -> str:
    flat = [m for m in mix if rows[m]["MI_y"] < 0.1]
    why_lid = ("" if lid not in flat else
               f", here for {NAMES[lid]} too, whose injective decoder constrains $w \\mapsto p(x \\mid w)$ but not $y$ "
               "(its learned cluster priors can merge; [the GMVAE chapter](04_gmvae.md))" if lid == "lidgmvae_learned" else
               f", here for {NAMES[lid]} too, although its fixed $\\beta_1$ keeps $y$ identifiable in the model: a "
               "collapsed $q(y \\mid x)$ is then the inference network's failure, not the model's "
               "([diagnosing collapse](11_diagnose.md))")
    return (f"**{cap(count_of(len(flat), len(mix)))} mixture rows {'has' if len(flat) == 1 else 'have'} a collapsed "
            "$q(y \\mid x)$** "
            f"($I_q(x; y)$ below 0.1 nats; over the rows it is {span([rows[m]['MI_y'] for m in mix])} nats, with "
            f"{span([rows[m]['clusters_used'] for m in mix], 0)} clusters in use): Hungarian accuracy "
            f"{span([rows[m]['acc_hungarian'] for m in mix], 3)} against a chance level of {fmt(rows[mix[0]]['chance'], 3)}."
            + (f" {'Its' if len(flat) == 1 else 'Their'} $\\mathrm{{KL}}_y$ ({span([rows[m]['KL_y'] for m in flat])} nats) "
               "is not information about the image: $q(y \\mid x)$ sits on the same few clusters for every image, the "
               "collapse of the categorical latent in the paper's Figure 1" + why_lid + "." if flat else ""))


def findings(rows: dict, paper: dict | None = None) -> list[str]:
    """Markdown bullets on one table, every number and comparison taken from it.

    ``rows``: ``{method: summary}`` (:func:`summarise`; keys ``AU``, ``KL``, ``MI``, ``iwae_ll``, ``acc_hungarian``,
    ``chance``, and for mixture rows ``KL_y``, ``MI_y``, ``clusters_used``; nats per image); ``paper``: the paper's
    rows for the dataset (:data:`PAPER`), or ``None``. Says which mixture rows have a collapsed ``q(y|x)``, what AU
    separates, where the LIDGMVAE ranks, which rows lead, and whether MI <= KL holds.
    """
    mix = [m for m in rows if rows[m].get("KL_y") is not None]
    lid = next((m for m in LIDS if m in rows), None)
    ll = {m: rows[m]["iwae_ll"] for m in rows}
    order = sorted(ll, key=ll.get, reverse=True)                          # best log-likelihood first
    out = [_collapse_bullet(rows, mix, lid)] if mix else []
    au = {m: rows[m]["AU"] for m in rows}
    if min(au.values()) == 1:
        out.append("**AU is 1 for every row**: no continuous dimension has been pruned, so AU cannot separate the "
                   "methods here (it does in the paper's tables).")
    else:
        lo = min(au, key=au.get)
        out.append(f"**AU counts dimensions, not nats**: {NAMES[lo]} has the fewest active units ({_val(rows[lo], 'AU')}) "
                   f"and an MI of {_val(rows[lo], 'MI', 1)} nats" + (f"; {NAMES[lid]} has AU {_val(rows[lid], 'AU')} "
                   f"with {_val(rows[lid], 'MI', 1)} nats" if lid and lo != lid else "") + ".")
    if lid and "gmvae" in rows:
        r, rank, mi = rows[lid], order.index(lid), sorted(rows, key=lambda m: rows[m]["MI"])
        place = "the worst" if rank == len(order) - 1 else "the best" if rank == 0 else f"the {ordinal(rank + 1)} best"
        out.append(f"**{cap(NAMES[lid])} has {place} test log-likelihood of the {number_word(len(order))} rows** "
                   f"({_val(r, 'iwae_ll', 1)} nats, against {_val(rows['gmvae'], 'iwae_ll', 1)} for the GMVAE and "
                   f"{_val(rows[order[0]], 'iwae_ll', 1)} for {NAMES[order[0]]}, the best row), and "
                   f"{'the least' if mi[0] == lid else 'not the least'} MI of all rows ({_val(r, 'MI')} nats).")
        if paper and "lidgmvae" in paper:
            top = {c: max(paper, key=lambda m: paper[m][i]) for i, c in ((1, "KL"), (2, "MI"), (3, "LL"))}
            out[-1] += (" In the paper's table the LIDGMVAE has " + listing(
                f"{'the highest' if top[c] == 'lidgmvae' else 'not the highest'} {c}" for c in top) + ".")
    kl_top, mi_top = (max(rows, key=lambda m, k=k: rows[m][k]) for k in ("KL", "MI"))
    lead = (f"**{cap(NAMES[order[0]])} and {NAMES[order[1]]} have the best "
            f"log-likelihoods** ({_val(rows[order[0]], 'iwae_ll', 1)} and {_val(rows[order[1]], 'iwae_ll', 1)} nats)"
            + (": the two methods that spend more computation on inference per decoder step (SVI refinement, an "
               "encoder inner loop), which closes part of the amortisation gap" if set(order[:2]) == {"sa_vae", "lagging_vae"}
               else "") if len(order) > 1 else
            f"**{cap(NAMES[order[0]])} is the only row** (log-likelihood {_val(rows[order[0]], 'iwae_ll', 1)} nats)")
    out.append(lead + f". The largest KL is {NAMES[kl_top]}'s ({_val(rows[kl_top], 'KL', 1)} nats), the most MI "
               f"{NAMES[mi_top]}'s ({_val(rows[mi_top], 'MI', 1)}); MI ≤ KL holds for "
               f"{count_of(sum(rows[m]['MI'] <= rows[m]['KL'] for m in rows), len(rows))} rows.")
    return out


def figure1cd(sw: dict) -> list[tuple]:
    """Figure 1(c, d)'s claims on a depth sweep ``{depth: {"gmvae": summary, LIDGMVAE: summary}}`` (LIDGMVAE:
    ``"lidgmvae"`` or ``"lidgmvae_learned"``; summaries as :func:`summarise` makes them): a list of ``(claim, holds,
    Markdown bullet)``, ``holds`` ``None`` for an observation that is not one of the paper's claims.

    A change from the shallowest to the deepest generator counts only if it is at least one sd over seeds (where
    there are several) and shows at the printed precision. One seed gives no noise estimate: its bullets say
    whether a change goes the paper's way, never that it is "as in the paper".
    """
    ds = sorted(sw)
    lid = next(m for m in LIDS if m in sw[ds[0]])
    v = {(m, k): np.array([sw[d][m][k] for d in ds]) for m in ("gmvae", lid) for k in ("acc_hungarian", "iwae_ll", "MI_y")}
    sd = {(m, k): max(sw[d][m].get(f"{k}_sd") or 0.0 for d in ds) for m, k in v}
    if all(sw[d][m].get(f"{k}_sd") is None for d in ds for m, k in v):      # one seed
        caveat = " (one seed, no noise estimate: not a test)"
        agree = {True: ": the paper's direction" + caveat, False: ": **against the paper's direction**" + caveat}
        ahead_verdict = {True: f": as the paper has it{caveat}.", False: f"; the paper has it ahead at every depth{caveat}."}
        unresolved = "does not change at the printed precision"
    else:
        agree = {True: ": as in the paper", False: ": **not as in the paper**"}
        ahead_verdict = {True: ": as in the paper.", False: ": **not as in the paper**, which has it ahead at every depth."}
        unresolved = "does not change beyond the noise"
    what = {"acc_hungarian": ("accuracy", 3), "iwae_ll": ("log-likelihood", 1), "MI_y": ("$I_q(x; y)$", 2)}
    out = []
    for m, k, paper_falls in (("gmvae", "acc_hungarian", True), ("gmvae", "iwae_ll", True),
                              (lid, "acc_hungarian", False), (lid, "iwae_ll", False), ("gmvae", "MI_y", None)):
        change, digits = v[m, k][-1] - v[m, k][0], what[k][1]
        resolved = abs(change) >= sd[m, k] and round(change, digits) != 0
        trend = ("falls" if change < 0 else "rises") if resolved else unresolved
        claim = f"{NAMES[m]}'s {what[k][0]} {'falls' if paper_falls else 'does not fall'} with depth"
        holds = None if paper_falls is None else bool((resolved and change < 0) == paper_falls)
        verdict = {None: " (Theorem 1's mechanism: the information the clusters carry)", **agree}[holds]
        out.append((claim, holds, f"{cap(NAMES[m])}'s {what[k][0]} {trend} from {ds[0]} to "
                    f"{ds[-1]} layers ({', '.join(fmt(x, digits) for x in v[m, k])}"
                    + (f"; sd over seeds up to {fmt(sd[m, k], digits)}" if sd[m, k] else "") + f"){verdict}."))
    for k in ("acc_hungarian", "iwae_ll"):
        ahead = v[lid, k] > v["gmvae", k]
        out.append((f"{NAMES[lid]} is ahead in {what[k][0]} at every depth", bool(ahead.all()),
                    f"{cap(NAMES[lid])} is ahead in {what[k][0]} at {count_of(ahead.sum(), len(ds))} depths"
                    + ahead_verdict[bool(ahead.all())]))
    return out


# ------------------------------------------------------------------ committed results made by earlier versions
def legacy(run) -> bool:
    """Whether a committed result (:class:`lidvae_mini.book.results.Result`) predates the ``encoder`` parameter and
    Example 1: a Gaussian ``q`` in every row and a learned-prior LIDGMVAE."""
    return "encoder" not in run.params


def renamed(run, names) -> list[str]:
    """Method names of a committed run under today's names (a legacy run's ``lidgmvae`` is ``lidgmvae_learned``)."""
    return [("lidgmvae_learned" if m == "lidgmvae" and legacy(run) else m) for m in names]


def rows_of(run, rows: dict) -> dict:
    """``rows`` (``{method: summary}`` of a committed run) keyed by today's method names."""
    return dict(zip(renamed(run, rows), rows.values()))


def family_of(run) -> str:
    """The model family of a committed run, in words: its ``q(w|x, y)`` and which LIDGMVAE it has."""
    return ("Gaussian q(w|x, y) in every row; the LIDGMVAE has learned cluster priors (lidgmvae_learned)"
            if legacy(run) else f"q(w|x, y): {run.params['encoder']} (SA-VAE: Gaussian); the LIDGMVAE is Example 1")


def mean_sd(r: dict, k: str, digits: int = 3) -> str:
    """``"mean ± sd"`` of metric ``k`` in a summary (sd over seeds when there are several), ``"–"`` when missing."""
    if r.get(k) is None:
        return "–"
    sd = r.get(f"{k}_sd")
    return f"{r[k]:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def table_datasets(run, tables: list) -> list[str]:
    """The datasets committed table ``run`` shows: those that no newer table covers (``tables``: committed
    results, newest first, ``None`` for a missing one).

    Raises:
        ValueError: ``run`` is not in ``tables``.
    """
    newer = {d for r in tables[:tables.index(run)] if r is not None for d in r.params["datasets"]}
    return [d for d in run.params["datasets"] if d not in newer]


def lidgmvae_ranks(tables: list) -> dict:
    """``{dataset: (run, LIDGMVAE row name, its rank by test log-likelihood (1 = best), number of rows)}`` for every
    dataset of the committed tables (``tables``: newest first, ``None`` for a missing one; each dataset from the
    newest table that has it), where a LIDGMVAE row exists."""
    out = {}
    for run in filter(None, tables):
        for name in table_datasets(run, tables):
            rows = rows_of(run, run.metrics[name])
            lid = next((m for m in LIDS if m in rows), None)
            if lid:
                order = sorted(rows, key=lambda m: rows[m]["iwae_ll"], reverse=True)
                out[name] = (run, lid, order.index(lid) + 1, len(order))
    return out
