"""Which part of the LIDGMVAE keeps the cluster variable ``y`` active: the 3 × 2 ablation and its decision rule.

The LIDGMVAE differs from the GMVAE in its prior ``p(w|y)`` (Example 1's fixed ``beta_1``, or learned ``mu_y,
sigma_y``) and its decoder (an MLP, the injective ``g_2(beta^T g_1(w))`` with the paper's fixed zero-one ``beta``,
or with a learned one). The ablation crosses the two factors (:data:`CELLS`); the decision rule
(:func:`ablation_effects`, :data:`RESOLUTION`), fixed before the committed runs, says which one keeps ``y``
active:

- an effect is the same-seed (paired) difference between two cells; it counts ("resolved") when it has the same
  sign on every seed and its mean is at least ``RESOLUTION[metric]``;
- a factor keeps ``y`` active when switching it on raises ``I_q(x; y)``, resolved, at every level of the other.

:func:`ablation_findings` and :func:`claim_findings` turn the per-seed numbers into Markdown sentences;
:func:`conclusions` states what the committed image runs (tables, depth sweep, ablation, remedies) say together.

Source: paper §3 (Example 1, Definition 3), supplement Eqs. 17 to 19 (the classical counterpart with Example 1's
fixed ``beta_1``); chapter 08c of the book.
"""
from __future__ import annotations

import numpy as np

from ..book.prose import cap, count_of, fmt, listing, number_word, ordinal, span
from .image_tables import NAMES, PAPER, family_of, figure1cd, lidgmvae_ranks, rows_of
from .remedies import MI_Y_GAIN, remedy_verdicts

__all__ = ["CELLS", "CORE", "ABLATION_KEYS", "RESOLUTION", "FACTORS", "WHAT", "LEVEL", "ablation_table",
           "ablation_effects", "ablation_verdict", "keeps_active", "ablation_findings", "versus", "claim_findings",
           "conclusions"]

#: The six cells of the ablation, ``(prior, decoder) -> method``.
CELLS = {("learned", "mlp"): "gmvae", ("learned", "injective"): "lidgmvae_learned",
         ("example1", "mlp"): "gmvae_example1", ("example1", "injective"): "lidgmvae",
         ("learned", "lbeta"): "lidgmvae_learned_lbeta", ("example1", "lbeta"): "lidgmvae_lbeta"}
#: The 2 × 2 the findings need (prior × {MLP, fixed-β injective decoder}).
CORE = ("gmvae", "lidgmvae_learned", "gmvae_example1", "lidgmvae")
#: Metrics reported per cell on the test images, in this order, AU_y (fraction of clusters whose q(y=k|x) varies),
#: I_q(x; y) and KL_y (nats per image), Hungarian accuracy and the IWAE log-likelihood (nats per image).
ABLATION_KEYS = ("AU_y", "MI_y", "KL_y", "acc_hungarian", "iwae_ll")
#: The smallest mean paired difference that counts, per metric (the decision rule).
RESOLUTION = {"AU_y": 0.1, "MI_y": 0.05, "KL_y": 0.05, "acc_hungarian": 0.01, "iwae_ll": 1.0}
FACTORS = ("prior", "decoder", "beta")
#: How the sentences name each factor, switched on.
WHAT = {"prior": "fixing $\\beta_1$ (Example 1)", "decoder": "the injective decoder",
        "beta": "the learned $\\beta$ (in place of the fixed zero-one one)"}
#: How the sentences name each level of the other factor.
LEVEL = {"mlp": "with the MLP decoder", "injective": "with the injective decoder",
         "lbeta": "with the learned-β injective decoder",
         "learned": "with learned cluster priors", "example1": "with Example 1's prior"}


def ablation_table(abl: dict):
    """Mean ± sd over seeds of every cell and metric (``abl``: ``{method: {metric: [value per seed]}}``), one row per
    cell in the order of :data:`CELLS`, narrow enough for the text column (two decimals; the log-likelihood in nats
    per image with one). Returns a pandas DataFrame of strings."""
    import pandas as pd

    digits, header = {"iwae_ll": 1}, {"acc_hungarian": "acc", "iwae_ll": "IWAE LL"}
    return pd.DataFrame({m: {header.get(k, k): fmt(np.mean(abl[m][k]), digits.get(k, 2))
                             + (f" ± {fmt(np.std(abl[m][k], ddof=1), digits.get(k, 2))}" if len(abl[m][k]) > 1 else "")
                             for k in ABLATION_KEYS} for m in CELLS.values() if m in abl}).T


def _paired(abl: dict, on: str, off: str, key: str) -> tuple:
    """(mean paired difference ``on - off`` of ``key``, resolved by the decision rule, per-seed differences)."""
    d = np.asarray(abl[on][key], float) - np.asarray(abl[off][key], float)
    return float(d.mean()), bool((np.all(d > 0) or np.all(d < 0)) and abs(d.mean()) >= RESOLUTION[key]), d


def ablation_effects(abl: dict, key: str) -> dict:
    """``{(factor, level of the other factor): (mean paired difference, resolved, per-seed differences)}`` of
    metric ``key`` for the cells present in ``abl`` (``{method: {metric: [value per seed]}}``, the same seeds in every
    cell): factor ``"prior"`` is Example 1 minus learned, ``"decoder"`` injective minus MLP, ``"beta"`` learned minus
    fixed zero-one ``beta`` inside the injective decoder."""
    out = {}
    for factor, levels in (("prior", ("mlp", "injective", "lbeta")), ("decoder", ("learned", "example1")),
                           ("beta", ("learned", "example1"))):
        for lev in levels:
            on, off = ((CELLS["example1", lev], CELLS["learned", lev]) if factor == "prior" else
                       (CELLS[lev, "injective"], CELLS[lev, "mlp"]) if factor == "decoder" else
                       (CELLS[lev, "lbeta"], CELLS[lev, "injective"]))
            if on in abl and off in abl:
                out[factor, lev] = _paired(abl, on, off, key)
    return out


def _updown(d: np.ndarray) -> str:
    """How per-seed differences move: 'up on every seed', 'down on every seed' or 'up on k of n seeds'."""
    up = int((d > 0).sum())
    return "up on every seed" if up == len(d) else "down on every seed" if (d < 0).all() else \
        f"up on {count_of(up, len(d))} seeds"


def _signed(m: float, digits: int) -> str:
    """A difference with its sign ('+0.12', '−3.4'), or 'no change' where it rounds to 0 at ``digits``."""
    return "no change" if round(m, digits) == 0 else ("+" if m > 0 else "−") + fmt(abs(m), digits)


def ablation_verdict(abl: dict) -> dict:
    """``{factor: {"up": levels, "down": levels, "n": levels compared}}``: the levels of the other factor at which
    switching this factor on raises (lowers) ``I_q(x; y)``, resolved by the decision rule."""
    eff = ablation_effects(abl, "MI_y")
    return {factor: {"up": [lev for (f, lev), (m, ok, _) in eff.items() if f == factor and ok and m > 0],
                     "down": [lev for (f, lev), (m, ok, _) in eff.items() if f == factor and ok and m < 0],
                     "n": sum(f == factor for f, _ in eff)} for factor in FACTORS}


def keeps_active(verdict: dict) -> list[str]:
    """The factors that keep ``y`` active: those whose ``"up"`` holds at every level compared."""
    return [f for f, v in verdict.items() if v["n"] and len(v["up"]) == v["n"]]


def ablation_findings(abl: dict, n_clusters: int) -> list[str]:
    """Markdown bullets on an ablation (``{method: {metric: [value per seed]}}``, :data:`ABLATION_KEYS`): the cells'
    numbers, the cells that put every image in one cluster, each factor's paired effects, and which part keeps
    ``y`` active by the decision rule. ``n_clusters``: C, for the largest possible ``KL_y = log C``."""
    n_seeds = len(next(iter(abl.values()))["MI_y"])
    cell = {m: {k: float(np.mean(v)) for k, v in abl[m].items()} for m in abl}
    out = [f"**The cells** ({'mean over ' + number_word(n_seeds) + ' seeds' if n_seeds > 1 else 'one seed'}): "
           + "; ".join(f"{NAMES[m]}, $I_q(x; y)$ {fmt(cell[m]['MI_y'])} nats, $\\mathrm{{AU}}_y$ {fmt(cell[m]['AU_y'])}, "
                       f"accuracy {fmt(cell[m]['acc_hungarian'], 3)}, log-likelihood {fmt(cell[m]['iwae_ll'], 1)}"
                       for m in CELLS.values() if m in cell) + "."]
    one_cluster = [m for m in CELLS.values() if m in abl
                   and max(abl[m]["MI_y"]) < 0.01 and min(abl[m]["KL_y"]) > 0.95 * np.log(n_clusters)]
    if one_cluster:
        out.append(f"**{cap(listing(NAMES[m] for m in one_cluster))} put{'s' if len(one_cluster) == 1 else ''} every "
                   f"test image in one cluster, with certainty, on every seed**: $\\mathrm{{KL}}_y$ "
                   f"{span([v for m in one_cluster for v in abl[m]['KL_y']], 3)} nats, the largest possible value "
                   f"$\\log {n_clusters} = {fmt(np.log(n_clusters), 3)}$, with $I_q(x; y)$ "
                   f"{span([v for m in one_cluster for v in abl[m]['MI_y']], 3)}. That is not the paper's collapse "
                   "(a posterior equal to the prior: $\\mathrm{KL}_y = 0$) but the opposite extreme, and it carries no "
                   "more information about the image: distinct priors for distinct clusters (the identifiability "
                   "Example 1 buys) do not make the fit use more than one of them.")
    for factor in FACTORS:
        parts = []
        for key, name, digits in (("MI_y", "$I_q(x; y)$", 3), ("acc_hungarian", "accuracy", 3), ("iwae_ll", "log-likelihood", 1)):
            parts.append(f"{name} " + " and ".join(
                f"{_signed(m, digits)} {LEVEL[lev]} ({'resolved' if ok else 'not resolved'}"
                + (f", {_updown(d)})" if len(d) > 1 else ")")
                for (f, lev), (m, ok, d) in ablation_effects(abl, key).items() if f == factor))
        if any(f == factor for f, _ in ablation_effects(abl, "MI_y")):
            out.append(f"**{cap(WHAT[factor])}** changes " + "; ".join(parts) + ".")
    v = ablation_verdict(abl)
    keeps = keeps_active(v)
    answer = (listing(WHAT[f] for f in keeps) + (", each on its own," if len(keeps) > 1 else "")
              + " keeps $y$ active" if keeps else "no factor keeps $y$ active on its own")
    extra = "".join(f"; {WHAT[f]} raises $I_q(x; y)$ {listing(LEVEL[lev] for lev in v[f]['up'])}"
                    for f in FACTORS if f not in keeps and v[f]["up"])
    extra += "".join(f"; {WHAT[f]} *lowers* it {listing(LEVEL[lev] for lev in v[f]['down'])}"
                     for f in FACTORS if v[f]["down"])
    out.append(f"**By the decision rule, {answer}**{extra}"
               + (" (one seed: nothing is replicated, so read this as a smoke test)." if n_seeds < 2 else "."))
    return out


def versus(abl: dict, a: str, b: str) -> dict:
    """``{metric: (mean paired difference a - b, resolved)}`` for ``MI_y``, accuracy and log-likelihood."""
    return {k: _paired(abl, a, b, k)[:2] for k in ("MI_y", "acc_hungarian", "iwae_ll")}


def claim_findings(abl: dict) -> list[str]:
    """The paper's image claim (the LIDGMVAE's ``y`` stays informative where the GMVAE's does not, and it fits at
    least as well), checked for the Example-1 LIDGMVAE against both GMVAEs: one Markdown bullet per comparison."""
    what = {"MI_y": ("$I_q(x; y)$", 2), "acc_hungarian": ("accuracy", 3), "iwae_ll": ("log-likelihood", 1)}
    out = []
    for other in ("gmvae", "gmvae_example1"):
        res = versus(abl, "lidgmvae", other)
        said = [(f"the same {what[k][0]}" if round(m, what[k][1]) == 0 else
                 f"{what[k][0]} {'higher' if m > 0 else 'lower'} by {fmt(abs(m), what[k][1])}")
                + ("" if ok else " (not resolved)") for k, (m, ok) in res.items()]
        holds = [k for k, (m, ok) in res.items() if ok and m > 0]
        fails = [k for k, (m, ok) in res.items() if ok and m < 0]
        verdict = ("the claim holds in every metric" if len(holds) == len(res) else
                   "the claim fails in " + listing(what[k][0] for k in fails) if fails else
                   "the claim holds in " + listing(what[k][0] for k in holds) + ", and nothing is resolved against it"
                   if holds else "no difference is resolved either way")
        out.append(f"Against {NAMES[other]}"
                   + (" (the official code's comparison)" if other == "gmvae" else
                      " (the supplement's classical counterpart, Eqs. 17 to 19)")
                   + f", {NAMES['lidgmvae']} has " + listing(said) + f": **{verdict}**.")
    return out


def _table_bullets(tables: list) -> list[str]:
    out = []
    for name, (run, lid, rank, n_rows) in lidgmvae_ranks(tables).items():
        paper_best = name in PAPER and max(PAPER[name], key=lambda m: PAPER[name][m][3]) == "lidgmvae"
        n_seeds = len(run.params["seeds"])
        out.append(f"{name} ({run.scale} scale, {number_word(n_seeds)} seed{'s' if n_seeds > 1 else ''}; "
                   f"{family_of(run)}): {NAMES[lid]}'s log-likelihood ranks {ordinal(rank)} of {number_word(n_rows)}"
                   + ("; in the paper the LIDGMVAE ranks first: **not reproduced** by this variant."
                      if paper_best and rank > 1 else "; as in the paper." if paper_best else
                      "; the paper gives no numbers to compare."))
    return out


def _sweep_bullet(sweep) -> str:
    rows = {int(d): rows_of(sweep, r) for d, r in sweep.metrics["depth_sweep"]["results"].items()}
    claims = [(c, h) for c, h, _ in figure1cd(rows) if h is not None]
    held, failed = [c for c, h in claims if h], [c for c, h in claims if not h]
    return (f"Figure 1(c, d) ({sweep.scale} scale, means over seeds; {family_of(sweep)}): "
            f"{number_word(len(held))} of the {number_word(len(claims))} claims checked hold"
            + (f" ({'; '.join(held)})" if held else "")
            + (f"; **not reproduced**: {'; '.join(failed)}." if failed else "."))


def _ablation_bullets(ablation) -> list[str]:
    abl = ablation.metrics["ablation"]["per_seed"]
    v, res = ablation_verdict(abl), versus(abl, "lidgmvae", "gmvae")
    keeps = keeps_active(v)
    mi_up, ll_down = res["MI_y"][1] and res["MI_y"][0] > 0, res["iwae_ll"][1] and res["iwae_ll"][0] < 0
    mi_down = res["MI_y"][1] and res["MI_y"][0] < 0
    n_abl = number_word(len(ablation.metrics["ablation"]["seeds"]))
    out = [f"The ablation ({ablation.scale} scale, {n_abl} seeds, {ablation.params['encoder']} $q(w \\mid x, y)$): "
           + (f"what keeps $y$ active is {' and '.join(WHAT[f] for f in keeps)}" if keeps else
              "by the decision rule no single factor keeps $y$ active")
           + "".join(f"; {WHAT[f]} raises $I_q(x; y)$ {listing(LEVEL[lev] for lev in v[f]['up'])}"
                     for f in FACTORS if f not in keeps and v[f]["up"])
           + "".join(f"; {WHAT[f]} lowers it {listing(LEVEL[lev] for lev in v[f]['down'])}"
                     for f in FACTORS if v[f]["down"])
           + "".join(f"; {WHAT[f]} changes it nowhere, resolved" for f in FACTORS
                     if v[f]["n"] and not v[f]["up"] and not v[f]["down"])
           + ". Against the GMVAE, the Example-1 LIDGMVAE "
           + ("keeps $y$ more informative" if mi_up else "keeps $y$ *less* informative" if mi_down else
              "does not keep $y$ more informative")
           + (" and fits worse" if ll_down else " and fits no worse")
           + ": the paper's image claim "
           + ("holds at this scale" if mi_up and not ll_down else "holds only in its first half at this scale"
              if mi_up else "is **not reproduced** at this scale") + "."]
    if not mi_up and ablation.params.get("encoder") == "realnvp":
        out.append("So at this scale the committed tables' contradiction of the paper is not explained by the "
                   "learned prior or by the Gaussian $q$: with both as the paper specifies (Example 1's fixed "
                   "$\\beta_1$, the supplement's RealNVP), the LIDGMVAE is still behind the GMVAE"
                   + (", and the injective decoder lowers $I_q(x; y)$ "
                      + ("with either prior" if len(v["decoder"]["down"]) == v["decoder"]["n"] else
                         listing(LEVEL[lev] for lev in v["decoder"]["down"])) if v["decoder"]["down"] else "")
                   + ". What remains untested is the paper's scale (`full.yaml` has not been run) and what the "
                   "paper leaves unspecified (the generator's depth, the variance of $p(w \\mid y)$, the optimiser "
                   "and its schedule).")
    else:
        out.append("Whether the paper's scale changes this is untested here: `full.yaml` has not been run.")
    return out


def _remedies_bullet(remedies) -> str:
    per_seed = remedies.metrics["remedies"]["per_seed"]
    rule = remedy_verdicts(per_seed)
    keep = [r for r, v in rule.items() if r != "none" and v["keeps_y_active"]]
    partial = [r for r, v in rule.items() if r != "none" and not v["keeps_y_active"] and v["mi_gain"] >= MI_Y_GAIN]
    return (f"The remedies ({remedies.scale} scale, {number_word(len(remedies.metrics['remedies']['seeds']))} seeds): "
            + (f"{listing(f'`{r}`' for r in keep)} keep{'s' if len(keep) == 1 else ''} the Example-1 LIDGMVAE's "
               "$y$ active by the decision rule" if keep else
               "no remedy keeps the Example-1 LIDGMVAE's $y$ active by the decision rule")
            + (f"; {listing(f'`{r}`' for r in partial)} raise{'s' if len(partial) == 1 else ''} $I_q(x; y)$ "
               "on average but not on every seed" if partial else "")
            + ". `diagnose` calls the collapsed $y$ identifiable but unused: an inference collapse, as "
            "Theorem 1 says it must be when the model is identifiable.")


def conclusions(tables: list, sweep=None, ablation=None, remedies=None) -> list[str]:
    """What the committed image runs say together, as Markdown bullets generated from their numbers.

    ``tables``: committed table results (:class:`lidvae_mini.book.results.Result`), newest first, ``None`` for a
    missing one; ``sweep``, ``ablation``, ``remedies``: the committed depth sweep, ablation and remedies, or
    ``None``. One bullet per table dataset (where the LIDGMVAE ranks against the paper), one for Figure 1(c, d),
    two for the ablation (which factor keeps ``y`` active; whether the paper's claim holds) and one for the
    remedies.
    """
    out = _table_bullets(tables)
    if sweep is not None:
        out.append(_sweep_bullet(sweep))
    if ablation is not None:
        out += _ablation_bullets(ablation)
    if remedies is not None:
        out.append(_remedies_bullet(remedies))
    return out
