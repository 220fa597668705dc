"""Every chapter's parameters: type and allowed values, one source of truth for the CLI and the chapter.

Each chapter of the book has one ``parameters`` cell (its small CPU defaults). :data:`SPECS` says, for every name in
that cell, what a value must be: an integer or a number in a range, a string out of a fixed set, a list of such
values (with a length range), a folder path, a device, and whether ``None`` is allowed. A few chapters add a rule
tying two parameters together (:data:`RULES`, e.g. the LIDVAE's latent dimension is at most the data dimension).

Two readers:

- ``python -m lidvae_mini.book.reproduce`` (and ``lidvae_mini.book.sweep``) call :func:`check` on the resolved parameters
  before a kernel starts, so a bad ``-p``/``-f`` value is a one-line error instead of a notebook traceback;
- every chapter calls it in the cell after its ``parameters`` cell (papermill injects its values between the two),
  so a value set any other way (papermill directly, Colab, an edited cell) is checked too::

      from lidvae_mini.book.parameters import check
      check("02_ppca", globals());

``tests/test_parameters.py`` keeps this module and the chapters in step: the names of every chapter's
``parameters`` cell are those of its spec, every default passes, and so does every ``book/params/**/*.yaml``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Spec", "SPECS", "RULES", "NOT_SETTINGS", "at_defaults", "check", "describe", "small_corner",
           "spec_from_defaults"]


@dataclass(frozen=True)
class Spec:
    """What one parameter may be.

    ``kind``: ``"int"``, ``"float"`` (a real number; an int is accepted), ``"bool"``, ``"str"``, ``"path"`` (a
    string), ``"device"`` (``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; CUDA only where it is available),
    ``"text"`` (any string), ``"any"`` (not checked) or ``"list"`` (a list or tuple whose entries satisfy ``item``,
    with ``min_len <= len <= max_len``).
    ``low``/``high``: inclusive bounds of a number (exclusive when ``low_open``/``high_open``). ``choices``: the
    allowed strings. ``none``: ``None`` is allowed too.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    item: "Spec | None" = None
    min_len: int = 0
    max_len: int | None = None
    none: bool = False
    note: str = ""


def Int(low=None, high=None, none=False) -> Spec:           # noqa: N802 - spec constructors read as types
    return Spec("int", low, high, none=none)


def Float(low=None, high=None, *, low_open=False, high_open=False, none=False) -> Spec:   # noqa: N802
    return Spec("float", low, high, low_open, high_open, none=none)


def Choice(*choices) -> Spec:                                # noqa: N802
    return Spec("str", choices=tuple(choices))


def List(item: Spec, min_len=0, max_len=None, none=False) -> Spec:   # noqa: N802
    return Spec("list", item=item, min_len=min_len, max_len=max_len, none=none)


#: Why a size has a lower bound above 1: the chapter asserts its statements (the checks that keep its prose true)
#: from that value up, so a smaller one is refused before any compute instead of failing in a cell.
ASSERTED = "smaller values are refused: the chapter's checked statements hold from here up"


def Asserted(low, high=None) -> Spec:                        # noqa: N802
    """An integer size with the smallest value at which the chapter's asserted statements hold."""
    return Spec("int", low, high, note=ASSERTED)


def AssertedWidths(low, min_len=1) -> Spec:                  # noqa: N802
    """Hidden-layer widths, each at least ``low``, at least ``min_len`` layers (the chapter's asserted range)."""
    return List(Asserted(low), min_len=min_len)


POSITIVE = Float(0, low_open=True)          # a scale, rate or noise sd
COUNT = Int(1)                              # sizes, epochs, steps, samples
TWO_POINTS = Int(2)                         # evaluation sets: AU and MI are variances over datapoints
SEED = Int(0, 2 ** 32 - 1)                  # NumPy's SeedSequence needs a non-negative integer
FOLDER = Spec("path", none=True)            # out_dir, data_dir
DEVICE = Spec("device")
WIDTHS = List(COUNT, min_len=1)             # hidden layer widths
TWO_WIDTHS = List(WIDTHS, min_len=2, max_len=2)   # widths of g_1 and g_2 (the two ICNNs of a Brenier decoder)
IMAGE_DATASETS = ("mnist", "fashion_mnist", "omniglot")
#: The rows of the images chapter (:data:`lidvae_mini.models.baselines.IMAGE_METHODS`; repeated here so that this module
#: imports nothing heavy; tests/test_parameters.py checks they agree).
IMAGE_METHODS = ("vae", "beta_vae", "sa_vae", "lagging_vae", "gmvae", "lidgmvae", "lidgmvae_learned",
                 "lidgmvae_lbeta", "lidgmvae_learned_lbeta", "gmvae_example1")
IMAGE_ENCODERS = ("realnvp", "gaussian")
#: The rows of the text chapter (:data:`lidvae_mini.experiments.text_methods.TEXT_METHODS`; repeated here, checked by
#: tests/test_parameters.py).
TEXT_METHODS = ("vae", "beta_vae", "sa_vae", "lagging", "lidsvae", "lidsvae_learned", "lidsvae_learned_init")
#: The injective decoder constructions (:data:`lidvae_mini.models.decoders.DECODER_VARIANTS`; repeated here, checked by
#: tests/test_parameters.py).
DECODER_VARIANTS = ("fixed", "learned", "learned_init")
#: The remedies of the Example-1 LIDGMVAE's cluster collapse (:data:`lidvae_mini.experiments.remedies.REMEDIES`; repeated here,
#: checked by tests/test_parameters.py).
REMEDIES = ("none", "decoder_init", "kl_y_warmup", "aggressive", "learned_beta")
#: The cells of the images ablation (the values of :data:`lidvae_mini.experiments.image_ablation.CELLS`; repeated here,
#: checked by tests/test_parameters.py).
ABLATION_CELLS = ("gmvae", "lidgmvae_learned", "gmvae_example1", "lidgmvae", "lidgmvae_learned_lbeta", "lidgmvae_lbeta")
MNIST_PIXELS = 784

#: ``{chapter: {parameter name: Spec}}``, every chapter's parameter types and ranges (the one source the CLI and
#: the chapters' check cells read).
#:
#: :meta hide-value:
SPECS: dict[str, dict[str, Spec]] = {
    "01_theorem": dict(K=Int(2), accuracy=Float(0, 1, low_open=True, high_open=True), n_t=Int(2), n_a=Int(2),
                       n=COUNT, n_tables=COUNT, seed=SEED, out_dir=FOLDER),
    "02_ppca": dict(data=Choice("official", "regenerated"), sigmas=List(POSITIVE, 1),
                    datapoints=List(Int(0, 499), 1), num_warmup=COUNT, num_samples=COUNT, num_chains=COUNT,
                    joint_sigmas=List(POSITIVE, 1), joint_datasets=List(Choice("oned", "twod"), 1), seed=SEED,
                    out_dir=FOLDER),
    "03_gmm": dict(n=Asserted(2000), data=Choice("official", "regenerated", "auto"), num_warmup=Asserted(300),
                   num_samples=Asserted(300), num_chains=Asserted(2), seed=SEED, exact_ns=List(COUNT),
                   out_dir=FOLDER),
    "03b_gmm_larger_n": dict(n=Asserted(2000), data=Choice("official", "regenerated", "auto"), seed=SEED,
                             exact_ns=List(COUNT), out_dir=FOLDER),
    "04_gmvae": dict(n=COUNT, mu=Float(0, low_open=True), s=POSITIVE, grid_size=Int(3), seed=SEED, out_dir=FOLDER),
    "05_icnn_brenier": dict(steps=Asserted(400), hidden=AssertedWidths(64, 2), n=Asserted(2000), seed=SEED,
                            out_dir=FOLDER),
    "06_lidvae": dict(n_train=Asserted(2000), n_valid=Asserted(500), epochs=Asserted(30), batch_size=COUNT,
                      lr=POSITIVE, latent_dim=Asserted(2, 2), alpha=POSITIVE, alpha_small=POSITIVE,
                      encoder_hidden=AssertedWidths(64, 2), icnn_hidden=AssertedWidths(32, 2),
                      mnist_n=Asserted(2000), mnist_epochs=Asserted(10), mnist_lr=POSITIVE,
                      mnist_latent_dim=Asserted(16, MNIST_PIXELS), mnist_encoder_hidden=AssertedWidths(256),
                      mnist_icnn_hidden=List(AssertedWidths(32, 2), min_len=2, max_len=2),
                      mnist_lidvae_variants=List(Choice("fixed", "learned", "learned_init"), 1),
                      iwae_samples=COUNT, seed=SEED, data_dir=FOLDER, device=DEVICE, out_dir=FOLDER),
    "07_lidgmvae_pinwheel": dict(n_per_class=Asserted(200), n_test_per_class=Asserted(100), epochs=Asserted(50),
                                 batch_size=COUNT, lr=POSITIVE, latent_dim=Asserted(2, 2),
                                 num_clusters=Asserted(5), depth=Asserted(2), icnn_width=Asserted(32), alpha=POSITIVE,
                                 hidden=AssertedWidths(64, 2), encoder=Choice(*IMAGE_ENCODERS),
                                 learn_prior=Spec("bool"), prior_radius=POSITIVE, prior_scale=POSITIVE,
                                 fixed_scale=Float(0, low_open=True, none=True), iwae_samples=COUNT, seed=SEED,
                                 device=DEVICE, out_dir=FOLDER),
    "07b_pinwheel_cpu": dict(out_dir=FOLDER),
    "08_images": dict(datasets=List(Choice(*IMAGE_DATASETS)), methods=List(Choice(*IMAGE_METHODS), 1),
                      n_train=COUNT, n_valid=TWO_POINTS, n_test=TWO_POINTS, epochs=COUNT, batch_size=COUNT, lr=POSITIVE,
                      latent_dim=Int(1, MNIST_PIXELS), num_clusters=Int(2), depth=COUNT, hidden=WIDTHS,
                      encoder=Choice(*IMAGE_ENCODERS), icnn_width=COUNT, alpha=POSITIVE, svi_steps=COUNT,
                      max_inner_steps=COUNT, check_every=COUNT, iwae_samples=COUNT,
                      sweep_dataset=Choice(*IMAGE_DATASETS), sweep_methods=List(Choice(*IMAGE_METHODS), 1),
                      depths=List(COUNT), seed=SEED, seeds=List(SEED, 1, none=True), data_dir=FOLDER, device=DEVICE,
                      out_dir=FOLDER),
    "08b_images_cpu": dict(out_dir=FOLDER),
    "08c_images_ablation": dict(ablation_dataset=Choice(*IMAGE_DATASETS), ablation_cells=List(Choice(*ABLATION_CELLS)),
                                remedies=List(Choice(*REMEDIES)), warmup_epochs=COUNT, n_train=COUNT, n_valid=TWO_POINTS,
                                n_test=TWO_POINTS, epochs=COUNT, batch_size=COUNT, lr=POSITIVE,
                                latent_dim=Int(1, MNIST_PIXELS), num_clusters=Int(2), depth=COUNT, hidden=WIDTHS,
                                encoder=Choice(*IMAGE_ENCODERS), icnn_width=COUNT, alpha=POSITIVE,
                                max_inner_steps=COUNT, check_every=COUNT, iwae_samples=COUNT, seed=SEED,
                                seeds=List(SEED, 1, none=True), data_dir=FOLDER, device=DEVICE, out_dir=FOLDER),
    "09_text": dict(synth_n_train=Asserted(2000), synth_n_valid=Asserted(300), synth_n_test=Asserted(500),
                    synth_epochs=Asserted(8), methods=List(Choice(*TEXT_METHODS), 1),
                    yahoo_methods=List(Choice(*TEXT_METHODS), 1), keep_best=Spec("bool"), knn_k=COUNT,
                    ceiling_n=COUNT, ceiling_samples=COUNT,
                    latent_dim=COUNT, embed_dim=COUNT, enc_hidden=COUNT, dec_hidden=COUNT, icnn_hidden=TWO_WIDTHS,
                    alpha=POSITIVE, beta_small=POSITIVE, sa_svi_steps=COUNT, lagging_inner_steps=COUNT,
                    lr=POSITIVE, batch_size=COUNT, iwae_samples=COUNT, yahoo_n=Int(0), yahoo_n_valid=COUNT,
                    yahoo_n_test=COUNT, yahoo_vocab=Int(5), yahoo_max_len=COUNT, yahoo_latent_dim=COUNT,
                    yahoo_epochs=COUNT, yelp_n=Int(0), n_interp=Int(2), seed=SEED, data_dir=FOLDER, out_dir=FOLDER),
    "09b_text_cpu": dict(out_dir=FOLDER),
    "10_avae": dict(methods=List(Choice("vae", "beta_vae", "lidvae", "avae", "lid_avae"), 1), n_train=Asserted(1000),
                    n_valid=Asserted(200), n_test=Asserted(500), epochs=Asserted(6), batch_size=COUNT, lr=POSITIVE,
                    latent_dim=Int(1, MNIST_PIXELS), encoder_hidden=WIDTHS, icnn_hidden=TWO_WIDTHS, alpha=POSITIVE,
                    injective_decoder=Choice(*DECODER_VARIANTS), kde_size=Int(2), refresh_every=COUNT,
                    n_generate=Asserted(500), pr_k=COUNT,
                    sensitivity_step=POSITIVE,
                    flat_threshold=POSITIVE, mds_points=Int(2), seed=SEED, seeds=List(SEED, 1, none=True),
                    data_dir=FOLDER, device=DEVICE, out_dir=FOLDER),
    "11_diagnose": dict(sigmas=List(POSITIVE, 1), n_points=Asserted(200), n_samples=COUNT, kl_threshold=POSITIVE,
                        synth_n=Asserted(1000), synth_epochs=Asserted(20), pin_n=Asserted(2000),
                        pin_epochs=Asserted(30), pin_alpha=POSITIVE,
                        mnist_models=List(Choice("vae", "beta_vae", "lagging_vae", "lidvae")), mnist_n=Asserted(1000),
                        mnist_epochs=Asserted(5), mnist_latent_dim=Int(1, MNIST_PIXELS), mnist_lr=POSITIVE,
                        mnist_alpha=POSITIVE, mnist_icnn_hidden=TWO_WIDTHS, lagging_inner_steps=COUNT,
                        batch_size=COUNT, seed=SEED, data_dir=FOLDER, device=DEVICE, out_dir=FOLDER),
    "errata": dict(seed=SEED, n_points=Asserted(1000), iw_repetitions=Asserted(100), out_dir=FOLDER),
    "errata_experiments": dict(seed=SEED, out_dir=FOLDER),
}


def _example1_rows(p: dict) -> set:
    """The rows of an images run (08_images or 08c_images_ablation) that have Example 1's prior."""
    rows = set(p["methods"] if p.get("datasets") else ()) | set(p["sweep_methods"] if p.get("depths") else ())
    rows |= {"lidgmvae"} if p.get("remedies") else set()       # every remedy is applied to the Example-1 LIDGMVAE
    return (rows | set(p.get("ablation_cells", ()))) & {"lidgmvae", "lidgmvae_lbeta", "gmvae_example1"}


_EXAMPLE1_K = (("num_clusters", "latent_dim"), lambda p: not _example1_rows(p) or p["num_clusters"] <= p["latent_dim"],
               "num_clusters <= latent_dim for the rows with Example 1's prior (lidgmvae, lidgmvae_lbeta, "
               "gmvae_example1 and every remedy: the paper's Example 1 needs K >= C)")


_OFFICIAL_GMM_N = (("data", "n"), lambda p: p["data"] != "official" or p["n"] <= 10_000,
                   "n <= 10000 with data='official' (the official files hold 10^4 points; use data='auto' or "
                   "'regenerated' for more)")


#: Rules that tie parameters of one chapter together, as ``(names, holds(values) -> bool, what is expected)``.
RULES: dict[str, list[tuple[tuple[str, ...], object, str]]] = {
    "03_gmm": [_OFFICIAL_GMM_N],
    "03b_gmm_larger_n": [_OFFICIAL_GMM_N],
    "07_lidgmvae_pinwheel": [(("n_per_class", "epochs"), lambda p: p["n_per_class"] * p["epochs"] >= 24_000,
                              "n_per_class * epochs >= 24000 (the chapter's checked statements need that much "
                              "training: 200 points per arm for 120 epochs, or 2000 for 50 as in cpu.yaml)")],
    "09_text": [(("methods",), lambda p: {"vae", "beta_vae", "lidsvae"} <= set(p["methods"]),
                 "'vae', 'beta_vae' and 'lidsvae' among methods (the chapter compares the others with them)"),
                (("yahoo_methods",), lambda p: {"vae", "lidsvae"} <= set(p["yahoo_methods"]),
                 "'vae' and 'lidsvae' among yahoo_methods (the decoder comparison is against the sequential VAE)")],
    "06_lidvae": [(("mnist_lidvae_variants",), lambda p: "fixed" in p["mnist_lidvae_variants"],
                   "'fixed' among mnist_lidvae_variants (the chapter compares every variant with the paper's beta)")],
    "10_avae": [(("kde_size", "n_train"), lambda p: p["kde_size"] < p["n_train"],
                 "kde_size < n_train (the AVAE holds its KDE codes out of the training images)")],
    "08_images": [(("datasets", "depths"), lambda p: bool(p["datasets"] or p["depths"]),
                   "datasets or depths not empty (with both empty the chapter trains nothing)"),
                  (("sweep_methods", "depths"), lambda p: not p["depths"] or ("gmvae" in p["sweep_methods"] and any(
                      m in p["sweep_methods"] for m in ("lidgmvae", "lidgmvae_learned"))),
                   "'gmvae' and a LIDGMVAE ('lidgmvae' or 'lidgmvae_learned') among sweep_methods when depths is not "
                   "empty (Figure 1(c, d) compares them)"),
                  _EXAMPLE1_K],
    "08c_images_ablation": [(("ablation_cells", "remedies"), lambda p: bool(p["ablation_cells"] or p["remedies"]),
                             "ablation_cells or remedies not empty (with both empty the chapter trains nothing)"),
                            _EXAMPLE1_K,
                            (("warmup_epochs", "epochs", "remedies"), lambda p: "kl_y_warmup" not in p["remedies"]
                             or p["warmup_epochs"] < p["epochs"], "warmup_epochs < epochs when the remedies include "
                             "'kl_y_warmup' (the warm-up must end before training does)")],
}


def describe(spec: Spec) -> str:
    """What ``spec`` accepts, in words (``"an integer >= 1"``, ``"a list of numbers > 0 (at least 1 entry)"``)."""
    if spec.kind == "list":
        size = ("a list" if spec.min_len == 0 and spec.max_len is None
                else f"a list of length {spec.min_len}" if spec.min_len == spec.max_len
                else "a non-empty list" if spec.min_len == 1 and spec.max_len is None
                else f"a list of at least {spec.min_len} entries" if spec.max_len is None
                else f"a list of {spec.min_len} to {spec.max_len} entries")
        text = f"{size} of {_plural(describe(spec.item))}"
    elif spec.kind in ("int", "float"):
        text = "an integer" if spec.kind == "int" else "a number"
        if spec.low is not None and spec.high is not None:
            lo, hi = ("(" if spec.low_open else "["), (")" if spec.high_open else "]")
            text += f" in {lo}{spec.low:g}, {spec.high:d}{hi}" if _is_int(spec.high) else \
                f" in {lo}{spec.low:g}, {spec.high:g}{hi}"
        elif spec.low is not None:
            text += f" {'>' if spec.low_open else '>='} {spec.low:g}"
        elif spec.high is not None:
            text += f" {'<' if spec.high_open else '<='} {spec.high:g}"
    elif spec.kind == "str":
        text = "one of " + ", ".join(repr(c) for c in spec.choices)
    elif spec.kind == "bool":
        text = "true or false"
    elif spec.kind == "path":
        text = "a folder path (a string)"
    elif spec.kind == "text":
        text = "a string"
    elif spec.kind == "device":
        text = "'auto', 'cpu', 'cuda' or 'cuda:N' (CUDA only where available)"
    else:
        raise ValueError(f"unknown spec kind {spec.kind!r}")
    return text + (" or None" if spec.none else "") + (f" ({spec.note})" if spec.note else "")


def _plural(text: str) -> str:
    for one, many in (("an integer", "integers"), ("a number", "numbers"), ("a non-empty list", "non-empty lists"),
                      ("a list", "lists"),
                      ("one of", "strings, each one of"), ("a folder path", "folder paths")):
        if text.startswith(one):
            return many + text[len(one):]
    return text


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _cuda_devices() -> int:
    try:
        import torch
    except ImportError:   # pragma: no cover - torch is a dependency
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _fits(spec: Spec, value, coerce: bool, cuda_here: bool = True):
    """``(ok, value)``: whether ``value`` satisfies ``spec``, and the value with integral floats made ints when
    ``coerce`` (``-p n=1e5``)."""
    if spec.kind == "any":
        return True, value
    if value is None:
        return spec.none, value
    kind = spec.kind
    if kind == "int":
        if coerce and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _is_int(value):
            return False, value
    elif kind == "float":
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            return False, value
    elif kind == "bool":
        return isinstance(value, bool), value
    elif kind == "path":
        return isinstance(value, str) and value != "", value
    elif kind == "text":
        return isinstance(value, str), value
    elif kind == "str":
        return isinstance(value, str) and value in spec.choices, value
    elif kind == "device":
        if not isinstance(value, str):
            return False, value
        if value in ("auto", "cpu"):
            return True, value
        head, _, index = value.partition(":")
        if head != "cuda" or (index and not index.isdigit()):
            return False, value
        return (not cuda_here) or int(index or 0) < _cuda_devices(), value
    elif kind == "list":
        if not isinstance(value, (list, tuple)) or not spec.min_len <= len(value) <= (spec.max_len or len(value)):
            return False, value
        out = []
        for v in value:
            ok, v = _fits(spec.item, v, coerce)
            if not ok:
                return False, value
            out.append(v)
        return True, (out if isinstance(value, list) else tuple(out))
    if kind in ("int", "float"):
        if spec.low is not None and (value < spec.low or (spec.low_open and value == spec.low)):
            return False, value
        if spec.high is not None and (value > spec.high or (spec.high_open and value == spec.high)):
            return False, value
    return True, value


def _explain(name: str, spec: Spec, value) -> str:
    why = describe(spec)
    if spec.kind == "device" and isinstance(value, str) and value.startswith("cuda"):
        n = _cuda_devices()
        why += f"; this machine has {n} CUDA device(s)" if n else "; CUDA is not available on this machine"
    if spec.kind == "list" and isinstance(value, (list, tuple)):
        bad = [v for v in value if not _fits(spec.item, v, True)[0]]
        if bad:
            why += f" (entry {bad[0]!r} is not)"
    return f"parameter {name}={value!r}: expected {why}"


def spec_from_defaults(defaults: dict) -> dict[str, Spec]:
    """A loose spec for a chapter without one in :data:`SPECS`: each value of the kind of its default (an integer
    for an integer, a number for a number, true/false, a string, a list; ``None`` allowed where it is the default
    or for a string)."""
    def of(v) -> Spec:
        if isinstance(v, bool):
            return Spec("bool")
        if _is_int(v):
            return Int()
        if isinstance(v, float):
            return Float()
        if isinstance(v, (list, tuple)):
            items = [of(x) for x in v]
            same = items and all(i == items[0] for i in items)
            return List(items[0] if same else Spec("any"))
        if isinstance(v, str):
            return Spec("text", none=True)
        return Spec("any")
    return {k: (Spec("any") if v is None else of(v)) for k, v in defaults.items()}


def check(chapter: str, values: dict, *, coerce: bool = False, spec: dict | None = None,
          cuda_here: bool = True) -> dict:
    """Check a chapter's parameter values against :data:`SPECS` (and :data:`RULES`); return them.

    Args:
        chapter: the chapter's file stem (``"02_ppca"``).
        values: a mapping holding every parameter of the chapter, e.g. the resolved parameters of a
            ``reproduce`` run or a chapter's ``globals()``; other names in it are ignored.
        coerce: turn integral floats into ints where an integer is expected (``-p n=1e5``); the chapter calls
            without, so there ``n = 1e5`` is refused.
        spec: ``{name: Spec}`` to use instead of ``SPECS[chapter]`` (e.g. :func:`spec_from_defaults`).
        cuda_here: a ``device`` of ``"cuda"``/``"cuda:N"`` must exist on this machine (``False``: only its form is
            checked, for a sweep driver whose runs execute on other nodes).

    Returns:
        ``{name: value}`` for the names of the spec, with the coerced values.

    Raises:
        KeyError: ``chapter`` has no spec and none is given.
        ValueError: a value outside its spec or a broken rule; the message names the chapter, the parameter,
            the value given and what was expected (one line). A parameter of the spec missing from ``values``.
    """
    spec = SPECS[chapter] if spec is None else spec
    missing = [k for k in spec if k not in values]
    if missing:
        raise ValueError(f"{chapter}: parameter(s) {', '.join(missing)} missing")
    out = {}
    for name, s in spec.items():
        if s.kind == "any":
            out[name] = values[name]
            continue
        ok, value = _fits(s, values[name], coerce, cuda_here)
        if not ok:
            raise ValueError(f"{chapter}: {_explain(name, s, values[name])}")
        out[name] = value
    for names, holds, expected in RULES.get(chapter, ()) if spec is SPECS.get(chapter) else ():
        if not holds(out):
            given = ", ".join(f"{k}={out[k]!r}" for k in names)
            raise ValueError(f"{chapter}: parameters {given}: expected {expected}")
    return out


def _corner_value(spec: Spec, default):
    if spec.kind == "int" and spec.low is not None and default is not None:
        return int(spec.low)
    if spec.kind == "list" and isinstance(default, (list, tuple)):
        return [_corner_value(spec.item, v) for v in list(default)[:spec.min_len]]
    return default


def small_corner(chapter: str, defaults: dict) -> dict:
    """The smallest values :data:`SPECS` accepts for ``chapter``, starting from its ``defaults``: every integer with a
    lower bound at that bound (sizes, epochs, samples, widths), every list cut to its shortest allowed length
    (entries at their own corner); numbers, choices, flags, paths and devices keep their defaults, and so do batch
    sizes (a smaller batch costs more steps, not less); where the corner breaks one of :data:`RULES`, that rule's
    parameters keep their defaults. The values
    satisfy the spec and its :data:`RULES` (``tests/test_parameters.py``), so a run at them must end with its
    results: the test of every chapter at its small corner (``tests/test_small_corner.py``) holds the chapters
    and the specs to that.

    Raises:
        KeyError: ``chapter`` has no spec.
    """
    spec = SPECS[chapter]
    corner = {name: defaults[name] if "batch_size" in name else _corner_value(s, defaults[name])
              for name, s in spec.items()}
    for names, holds, _ in RULES.get(chapter, ()):
        if not holds(corner):          # the corner breaks a rule: that rule's parameters keep their defaults
            corner.update({k: defaults[k] for k in names})
    return corner


#: Parameters that set where a run reads or writes, or which seed it uses, not what it computes at a setting.
NOT_SETTINGS = ("seed", "seeds", "out_dir", "data_dir", "device")


def at_defaults(chapter: str, values: dict, book_dir=".") -> bool:
    """Whether ``values`` (a chapter's ``globals()``) hold the chapter's default setting: every parameter of its
    spec except :data:`NOT_SETTINGS` equal to the value in the chapter's own ``parameters`` cell, read from
    ``book_dir/<chapter>.ipynb``. A chapter asserts its seed-dependent claims only there (on the seeds checked while
    writing it) and reports what it found elsewhere. ``False`` when the notebook is not on disk (e.g. opened in
    Colab from the repository's URL), so that such a run reports rather than stops.

    Raises:
        KeyError: ``chapter`` has no spec.
    """
    from pathlib import Path

    from .reproduce import _listify, chapter_parameters

    path = Path(book_dir) / f"{chapter}.ipynb"
    if not path.is_file():
        return False
    defaults = chapter_parameters(path)
    return all(_listify(values.get(k)) == _listify(defaults.get(k)) for k in SPECS[chapter] if k not in NOT_SETTINGS)
