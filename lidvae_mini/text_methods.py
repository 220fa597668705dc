"""The text methods that 09_text compares, each built, trained and measured by one call (:func:`run_text_method`).

Methods (:data:`TEXT_METHODS`): the sequential VAE (He et al. 2019's architecture), the beta-VAE (beta = 0.2), the
SA-VAE (Kim et al. 2018, :func:`lidvae_mini.text.sa_text_loss`), the lagging VAE (He et al. 2019,
``fit_text(..., aggressive=True)``), and the LIDSVAE (paper Example 2) with each injective decoder construction of
:data:`lidvae_mini.decoders.DECODER_VARIANTS`: ``"lidsvae"`` is the paper's fixed zero-one ``beta_2``,
``"lidsvae_learned"`` a learned full-rank ``beta_2``, ``"lidsvae_learned_init"`` that with ``g_2``'s ICNN initialised
for the ``K + H`` inputs ``beta_2`` lifts. All share the encoder, the optimiser and the loop
(:func:`lidvae_mini.text.fit_text`).
"""
from __future__ import annotations

from ._checks import check_choice
from .data.text import length_batches
from .latent_recovery import latent_recovery
from .text import build_text_vae, count_parameters, evaluate_text, fit_text, posterior_stats, sa_text_loss

#: Method keys, in the order of the chapter's tables.
TEXT_METHODS = ("vae", "beta_vae", "sa_vae", "lagging", "lidsvae", "lidsvae_learned", "lidsvae_learned_init")
#: Display names.
TEXT_METHOD_NAMES = {"vae": "sequential VAE", "beta_vae": "beta-VAE (0.2)", "sa_vae": "SA-VAE",
                     "lagging": "lagging VAE", "lidsvae": "LIDSVAE (fixed beta_2)",
                     "lidsvae_learned": "LIDSVAE (learned beta_2)",
                     "lidsvae_learned_init": "LIDSVAE (learned beta_2, sparse init)"}
#: The LIDSVAE rows and their decoder constructions (:func:`lidvae_mini.text.build_text_vae`'s ``decoder``).
LIDSVAE_DECODERS = {"lidsvae": "fixed", "lidsvae_learned": "learned", "lidsvae_learned_init": "learned_init"}


def build_text_method(method: str, vocab_size: int, latent_dim: int, beta_small: float = 0.2, **model_kw):
    """The :class:`~lidvae_mini.text.TextVAE` of ``method`` (untrained), ``model_kw`` passed to
    :func:`~lidvae_mini.text.build_text_vae` (sizes, ``alpha``).

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
    """The arguments of :func:`~lidvae_mini.text.fit_text` that make ``method`` what it is (empty for the
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
    """Build, train (seeded: the model's initialisation and :func:`~lidvae_mini.text.fit_text` both use ``seed``) and
    evaluate ``method`` on ``data`` (:class:`lidvae_mini.data.text.TextData`): train on ``data.train``, select the
    epoch of the lowest validation negative ELBO on ``data.valid`` (``keep_best``), measure on ``data.test``.

    Returns ``(model, metrics, history)``: ``metrics`` is :func:`~lidvae_mini.text.evaluate_text`'s dict (nats per
    sentence; ``iwae_per_token`` per token) plus ``decoder_parameters``, ``seconds``, ``best_epoch``,
    ``valid_nelbo`` (the learning curve, one value per epoch) and, when the splits carry true latents (synthetic
    data), :func:`~lidvae_mini.latent_recovery.latent_recovery`'s ``r2`` and ``r2_knn`` (probes fitted on the
    training sentences' posterior means, scored on the test sentences').

    Raises:
        ValueError: unknown ``method``; the checks of the functions it calls.
    """
    import torch

    check_choice(method, "method", TEXT_METHODS)
    torch.manual_seed(seed)
    model = build_text_method(method, len(data.vocab), latent_dim, beta_small, **model_kw)
    train = length_batches(data.train, batch_size, shuffle=True, seed=seed)
    valid, test = length_batches(data.valid, 100), length_batches(data.test, 100)
    hist = fit_text(model, train, valid, epochs=epochs, lr=lr, seed=seed, keep_best=keep_best,
                    **fit_kwargs(method, sa_svi_steps, lagging_inner_steps))
    ev = evaluate_text(model, test, iwae_samples=iwae_samples, seed=seed)
    ev.update(decoder_parameters=count_parameters(model.decoder), seconds=hist["seconds"],
              best_epoch=hist.get("best_epoch", epochs), valid_nelbo=hist["valid_nelbo"])
    if data.test.z is not None:
        mu_tr, _ = posterior_stats(model, length_batches(data.train, 100), len(data.train))
        mu_te, _ = posterior_stats(model, test, len(data.test))
        ev.update(latent_recovery(mu_tr, data.train.z, mu_te, data.test.z, k=knn_k))
    return model, ev, hist


def generator_ceiling(models: dict, data, n_sentences: int, n_samples: int = 500, iwae_samples: int = 100,
                      seed: int = 0) -> dict:
    """The synthetic generator's own log-likelihood of the first ``n_sentences`` test sentences
    (:func:`lidvae_mini.latent_recovery.generator_log_likelihood` with the true latents among the proposal's
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
    import copy

    import torch

    from .data.text import TextSplit
    from .latent_recovery import generator_log_likelihood

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
    return {"generator": res["mean"], "generator_se": res["se"], "generator_given_true_z": given_z, "ess_fraction_median": float(ess.median()),
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
    import numpy as np

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
