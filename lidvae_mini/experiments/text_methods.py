"""The text methods that 09_text compares, each built, trained and measured by one call (:func:`run_text_method`).

Methods (:data:`TEXT_METHODS`): the sequential VAE (He et al. 2019's architecture), the beta-VAE (beta = 0.2), the
SA-VAE (Kim et al. 2018, :func:`lidvae_mini.models.text.sa_text_loss`), the lagging VAE (He et al. 2019,
``fit_text(..., aggressive=True)``), and the LIDSVAE (paper Example 2) with each injective decoder construction of
:data:`lidvae_mini.models.decoders.DECODER_VARIANTS`: ``"lidsvae"`` is the paper's fixed zero-one ``beta_2``,
``"lidsvae_learned"`` a learned full-rank ``beta_2``, ``"lidsvae_learned_init"`` that with ``g_2``'s ICNN initialised
for the ``K + H`` inputs ``beta_2`` lifts. All share the encoder, the optimiser and the loop
(:func:`lidvae_mini.models.text.fit_text`).
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from .._checks import check_choice
from ..data.text import TextSplit, length_batches
from ..evaluation.latent_recovery import generator_log_likelihood, latent_recovery
from ..models.text import build_text_vae, count_parameters, evaluate_text, fit_text, posterior_stats, sa_text_loss

#: Method keys, in the order of the chapter's tables.
TEXT_METHODS = ("vae", "beta_vae", "sa_vae", "lagging", "lidsvae", "lidsvae_learned", "lidsvae_learned_init")
#: Display names.
TEXT_METHOD_NAMES = {"vae": "sequential VAE", "beta_vae": "β-VAE (0.2)", "sa_vae": "SA-VAE",
                     "lagging": "lagging VAE", "lidsvae": "LIDSVAE (fixed β₂)", "lidsvae_learned": "LIDSVAE (learned β₂)",
                     "lidsvae_learned_init": "LIDSVAE (learned β₂, init)"}
#: The LIDSVAE rows and their decoder constructions (:func:`lidvae_mini.models.text.build_text_vae`'s ``decoder``).
LIDSVAE_DECODERS = {"lidsvae": "fixed", "lidsvae_learned": "learned", "lidsvae_learned_init": "learned_init"}


def build_text_method(method: str, vocab_size: int, latent_dim: int, beta_small: float = 0.2, **model_kw):
    """The :class:`~lidvae_mini.models.text.TextVAE` of ``method`` (untrained), ``model_kw`` passed to
    :func:`~lidvae_mini.models.text.build_text_vae` (sizes, ``alpha``).

    Raises:
        ValueError: unknown ``method``.
    """
    check_choice(method, "method", TEXT_METHODS)
    if method in LIDSVAE_DECODERS:
        return build_text_vae("lidsvae", vocab_size, latent_dim=latent_dim, decoder=LIDSVAE_DECODERS[method],
                              **model_kw)
    if method == "beta_vae":
        return build_text_vae("beta_vae", vocab_size, latent_dim=latent_dim, beta=beta_small, **model_kw)
    return build_text_vae("vae", vocab_size, latent_dim=latent_dim, **model_kw)


def fit_kwargs(method: str, sa_svi_steps: int = 5, lagging_inner_steps: int = 20) -> dict:
    """The arguments of :func:`~lidvae_mini.models.text.fit_text` that make ``method`` what it is (empty for the
    others): SA-VAE's refined-posterior loss with ``sa_svi_steps`` SVI steps; the lagging VAE's aggressive phase
    with at most ``lagging_inner_steps`` encoder steps per decoder step, checked every 5."""
    check_choice(method, "method", TEXT_METHODS)
    if method == "sa_vae":
        return {"loss_fn": lambda mod, xb: sa_text_loss(mod, xb, svi_steps=sa_svi_steps)}
    if method == "lagging":
        return {"aggressive": True, "max_inner_steps": lagging_inner_steps, "check_every": 5}
    return {}


def run_text_method(method: str, data, *, latent_dim: int, epochs: int, lr: float, seed: int, batch_size: int = 32,
                    iwae_samples: int = 100, keep_best: bool = True, beta_small: float = 0.2, sa_svi_steps: int = 5,
                    lagging_inner_steps: int = 20, knn_k: int = 20, **model_kw):
    """Build, train (seeded: the model's initialisation and :func:`~lidvae_mini.models.text.fit_text` both use ``seed``) and
    evaluate ``method`` on ``data`` (:class:`lidvae_mini.data.text.TextData`): train on ``data.train``, select the
    epoch of the lowest validation negative ELBO on ``data.valid`` (``keep_best``), measure on ``data.test``.

    Returns ``(model, metrics, history)``: ``metrics`` is :func:`~lidvae_mini.models.text.evaluate_text`'s dict (nats per
    sentence; ``iwae_per_token`` per token) plus ``decoder_parameters``, ``seconds``, ``best_epoch``,
    ``valid_nelbo`` (the learning curve, one value per epoch) and, when the splits carry true latents (synthetic
    data), :func:`~lidvae_mini.evaluation.latent_recovery.latent_recovery`'s ``r2`` and ``r2_knn`` (probes fitted on the
    training sentences' posterior means, scored on the test sentences').

    Raises:
        ValueError: unknown ``method``; the checks of the functions it calls.
    """
    check_choice(method, "method", TEXT_METHODS)
    torch.manual_seed(seed)
    model = build_text_method(method, len(data.vocab), latent_dim, beta_small, **model_kw)
    train = length_batches(data.train, batch_size, shuffle=True, seed=seed)
    valid, test = length_batches(data.valid, 100), length_batches(data.test, 100)
    hist = fit_text(model, train, valid, epochs=epochs, lr=lr, seed=seed, keep_best=keep_best,
                    **fit_kwargs(method, sa_svi_steps, lagging_inner_steps))
    ev = evaluate_text(model, test, iwae_samples=iwae_samples, seed=seed)
    ev.update(decoder_parameters=count_parameters(model.decoder), seconds=sum(hist["seconds"]),
              best_epoch=hist.get("best_epoch", epochs), valid_nelbo=hist["valid_nelbo"])
    if data.test.z is not None:
        mu_tr, _ = posterior_stats(model, length_batches(data.train, 100), len(data.train))
        mu_te, _ = posterior_stats(model, test, len(data.test))
        ev.update(latent_recovery(mu_tr, data.train.z, mu_te, data.test.z, k=knn_k))
    return model, ev, hist


def run_corpus(methods, data, **run_kw) -> tuple[dict, dict, dict]:
    """:func:`run_text_method` for each of ``methods`` on one corpus, in order, with the same arguments ``run_kw``.
    Returns ``(models, metrics, histories)``, each a dict keyed by method.

    Raises:
        ValueError: an unknown method (checked for all before any training).
    """
    for m in methods:
        check_choice(m, "method", TEXT_METHODS)
    models, metrics, histories = {}, {}, {}
    for m in methods:
        models[m], metrics[m], histories[m] = run_text_method(m, data, **run_kw)
    return models, metrics, histories


def generator_ceiling(models: dict, data, n_sentences: int, n_samples: int = 500, iwae_samples: int = 100,
                      seed: int = 0) -> dict:
    """The synthetic generator's own log-likelihood of the first ``n_sentences`` test sentences
    (:func:`lidvae_mini.evaluation.latent_recovery.generator_log_likelihood` with the true latents among the proposal's
    starts, float64) beside each trained model's IWAE on the same sentences: the ceiling under which every model
    sits in expectation (Gibbs' inequality). The models also pay for ``</s>`` (the generator's length is fixed), so
    the comparison leans against them.

    Returns ``{"generator": mean log p(x) (nats per sentence), "generator_se", "generator_given_true_z" (mean
    log p(x | true z): the generator's z is worth ``generator_given_true_z - generator`` nats), "ess_fraction_median",
    "ess_fraction_below_1pc" (share of sentences with ESS under 1% of the draws), "proposal", "n_sentences",
    "models": {method: mean IWAE on the same sentences}}``.

    Raises:
        ValueError: data without a generator (not synthetic); ``n_sentences`` not in ``1..len(test)``.
    """
    if getattr(data, "generator", None) is None or data.test.words is None:
        raise ValueError("the generator's ceiling needs synthetic data (make_synthetic_text keeps the generator)")
    if not 1 <= int(n_sentences) <= len(data.test):
        raise ValueError(f"n_sentences must be in 1..{len(data.test)}, got {n_sentences!r}")
    n = int(n_sentences)
    gen = copy.deepcopy(data.generator).double()
    res = generator_log_likelihood(gen.log_prob, data.test.words[:n], gen.latent_dim, z_true=data.test.z[:n],
                                   n_samples=n_samples, seed=seed)
    subset = length_batches(TextSplit(data.test.ids[:n]), 100)
    models_ll = {}
    for k, m in models.items():
        tot = 0.0
        for j, (_, x) in enumerate(subset):
            with torch.no_grad():
                tot += float(m.iwae_log_likelihood(x, iwae_samples, seed=seed + j).sum())
        models_ll[k] = tot / n
    ess = res["ess_fraction"]
    with torch.no_grad():
        given_z = float(gen.log_prob(data.test.words[:n], data.test.z[:n].double()).mean())
    return {"generator": res["mean"], "generator_se": res["se"], "generator_given_true_z": given_z,
            "ess_fraction_median": float(ess.median()),
            "ess_fraction_below_1pc": float((ess < 0.01).double().mean()), "proposal": res["proposal"],
            "n_sentences": n, "models": models_ll}


def decoder_verdicts(per_seed: dict, n_tokens: float, reference: str = "vae", margin_per_token: float = 0.05) -> dict:
    """The decision rule of 09_text's decoder comparison (stated in ``book/params/09_text/cpu.yaml`` before the runs),
    for every LIDSVAE row present. ``per_seed``: ``{method: {"iwae": [per seed], "au": [per seed]}}`` (test IWAE in
    nats per sentence); ``n_tokens``: mean predicted tokens per test sentence (``</s>`` included).

    A row **fits** when its mean IWAE is within ``margin_per_token * n_tokens`` nats per sentence of the
    ``reference``'s mean; it **keeps the latent** when its AU is at least 1 on every seed. Returns ``{method: {"gap":
    reference mean - row mean (nats per sentence; positive: the row fits worse), "margin": nats per sentence,
    "fits": bool, "keeps_latent": bool, "au_min": smallest AU over seeds}}``.

    Raises:
        ValueError: the reference row missing, seeds that differ in number.
    """
    if reference not in per_seed:
        raise ValueError(f"the reference row {reference!r} is missing (rows: {sorted(per_seed)})")
    ref = np.asarray(per_seed[reference]["iwae"], dtype=float)
    margin = float(margin_per_token) * float(n_tokens)
    out = {}
    for k in LIDSVAE_DECODERS:
        if k not in per_seed:
            continue
        iw, au = np.asarray(per_seed[k]["iwae"], dtype=float), np.asarray(per_seed[k]["au"], dtype=float)
        if iw.shape != ref.shape:
            raise ValueError(f"{k} has {iw.size} seeds and {reference} {ref.size}")
        gap = float(ref.mean() - iw.mean())
        out[k] = {"gap": gap, "margin": margin, "fits": gap <= margin, "keeps_latent": bool((au >= 1).all()),
                  "au_min": float(au.min())}
    return out


# ------------------------------------------------------------------------------ a committed multi-seed result
#: The datasets of a 09_text result (its metrics' keys) and their names in sentences.
TEXT_DATASETS = {"synthetic": "Synthetic", "yahoo": "Yahoo", "yelp": "Yelp"}


def _datasets(metrics: dict) -> list[str]:
    """The datasets of :data:`TEXT_DATASETS` with rows in ``metrics`` (a result from before Yelp has no key)."""
    return [ds for ds in TEXT_DATASETS if metrics.get(ds)]


def seed_values(metrics: dict, dataset: str, key: str) -> dict:
    """``{method: per-seed values}`` of ``key`` in an aggregated 09_text result (``results/09_text/*``), for the
    methods of ``dataset`` (a key of :data:`TEXT_DATASETS`) that have it."""
    from ..book.results import per_seed

    return {k: per_seed(v[key]) for k, v in metrics[dataset].items() if key in v}


def seed_tables(metrics: dict):
    """Three tables (pandas DataFrames of ``"mean ± sd"`` strings over seeds) of an aggregated 09_text result: latent
    use (AU, KL, MI shown never below 0; rows ``(dataset, method)`` for each dataset with rows), recovery of the true
    latents (synthetic only: linear and k-NN R^2) and fit (test IWAE per sentence and per token, the epoch kept; rows
    ``(dataset, method)``)."""
    import pandas as pd

    from ..book.results import mean_sd_text, per_seed

    def table(datasets, columns):
        rows = {}
        for ds in datasets:
            for k in (m for m in TEXT_METHODS if m in metrics[ds]):
                res = metrics[ds][k]
                rows[(ds, TEXT_METHOD_NAMES[k])] = {
                    c: mean_sd_text(np.maximum(per_seed(res[c]), 0.0) if c == "mi" else per_seed(res[c]), d)
                    for c, d in columns if c in res}
        return pd.DataFrame(rows).T.rename(columns={"iwae_per_token": "per token", "best_epoch": "epoch kept"})

    present = _datasets(metrics)
    return (table(present, (("au", 1), ("kl", 3), ("mi", 3))),
            table(("synthetic",), (("r2", 3), ("r2_knn", 3))).droplevel(0),
            table(present, (("iwae", 2), ("iwae_per_token", 3), ("best_epoch", 1))))


def seed_verdicts(metrics: dict, dataset: str) -> dict:
    """:func:`decoder_verdicts` over the seeds of ``dataset`` in an aggregated 09_text result, with the sequential
    VAE's mean predicted tokens per test sentence as the length that scales the margin."""
    from ..book.results import per_seed

    m = metrics[dataset]
    tokens = float(np.mean(per_seed(m["vae"]["n_tokens"]) / per_seed(m["vae"]["n_sentences"])))
    return decoder_verdicts({k: {"iwae": per_seed(v["iwae"]), "au": per_seed(v["au"])} for k, v in m.items()},
                            tokens)


def text_findings(metrics: dict) -> list[str]:
    """The sentences 09_text states about an aggregated multi-seed result, generated from its numbers: the budget
    rule on the sequential VAE's learning curves, the decision rule of :func:`decoder_verdicts` for every LIDSVAE
    row, what the fixed ``beta_2`` costs per seed, and (synthetic) the generator's ceiling and the recovery of
    the true latents."""
    from ..book.prose import budget_sentence, count_of, fmt, span
    from ..book.results import per_seed

    lines = []
    for ds in _datasets(metrics):
        m, label = metrics[ds], TEXT_DATASETS[ds]
        if "vae" not in m:
            continue
        node = m["vae"]["valid_nelbo"]
        curves = node["values"] if isinstance(node, dict) else [node]  # a list kept as is: equal on every seed
        lines.append(f"{label}: " + budget_sentence("the sequential VAE", curves))
        verdicts = seed_verdicts(metrics, ds)
        for k, v in verdicts.items():
            au = (f"its AU is at least 1 on every seed (smallest {fmt(v['au_min'], 0)})" if v["keeps_latent"] else
                  f"its AU falls to {fmt(v['au_min'], 0)} on some seed")
            lines.append(f"{label}, {TEXT_METHOD_NAMES[k]}: {fmt(v['gap'], 2)} nats per sentence below the sequential "
                         f"VAE (margin {fmt(v['margin'], 2)}), so it {'fits' if v['fits'] else '**does not fit**'}; "
                         f"{au}, so it {'keeps' if v['keeps_latent'] else '**does not keep**'} the latent by the rule.")
        if "lidsvae" in m and "lidsvae_learned_init" in m:
            d = per_seed(m["lidsvae_learned_init"]["iwae"]) - per_seed(m["lidsvae"]["iwae"])
            lines.append(f"{label}: the learned β₂ with the sparse initialisation minus the fixed β₂, test IWAE "
                         f"per seed: {span(d, 2)} nats per sentence (the learned one higher on "
                         f"{count_of(int((d > 0).sum()), d.size)} seeds).")
    ceil = metrics.get("ceiling")
    if ceil and "models" in ceil:
        gen = per_seed(ceil["generator"])
        gaps = {k: gen - per_seed(v) for k, v in ceil["models"].items()}
        worth = per_seed(ceil["generator_given_true_z"]) - gen
        lines.append(f"Synthetic: the generator's own log p(x) is {span(gen, 1)} nats per sentence on the first "
                     f"{int(per_seed(ceil['n_sentences'])[0])} test sentences; every model sits "
                     f"{span(np.concatenate(list(gaps.values())), 1)} nats below it, and its true z is worth "
                     f"{span(worth, 1)} nats (log p(x | true z) - log p(x)).")
        r2 = seed_values(metrics, "synthetic", "r2")
        knn = seed_values(metrics, "synthetic", "r2_knn")
        if r2:
            lines.append(f"Synthetic: the posterior means recover at most {fmt(max(v.max() for v in r2.values()), 2)} "
                         f"of the true z's variance linearly and {fmt(max(v.max() for v in knn.values()), 2)} by "
                         f"k-nearest neighbours, over every model and seed.")
    return lines
