"""Bad input, table-driven: every case fails with an exception or exit status whose message names the argument and
what was expected, before any compute, leaving nothing half-written on disk (issue 12).

Adding a case is one line in :data:`API_CASES` (a call, the exception, a regex of its message) or :data:`CLI_CASES`
(a command line, the exit status, a regex of stderr). The command lines run in-process (``main(argv)``) with
papermill's ``execute_notebook`` and the sweep's Ray entry points replaced by a failing stub, so a case that
started a kernel or submitted a run fails the test; the files under the test's folder are compared before and
after. A few run as subprocesses to check that the console shows one short message and no traceback.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT

torch = pytest.importorskip("torch")

from lidvae_mini.book import parameters, reproduce, results, sweep  # noqa: E402
from lidvae_mini.exact import collapse, gmm, ppca  # noqa: E402
from lidvae_mini.models import icnn, mixture, train, vae  # noqa: E402
from lidvae_mini.data import load_dataset, require_dataset  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.normal(size=(50, 5))          # PPCA data (N, D)
W = RNG.normal(size=(5, 2))           # loadings (D, M)
Y = RNG.normal(size=200)              # GMM data (N,)
GMM_PARAMS = [0.5, -1.0, 1.0, 1.0, 1.0]   # alpha, mu1, sigma1, mu2, sigma2
_MODELS: dict = {}


def model(name: str):
    """Tiny models, built once: a Bernoulli VAE (D = 6), a Gaussian VAE (D = 2), a pinwheel GMVAE (D = 2)."""
    if name not in _MODELS:
        small = dict(encoder_hidden=(8,), hidden1=(4,), hidden2=(8,), seed=0)
        _MODELS.update(
            bern=vae.build_vae("vae", 6, 2, "bernoulli", **small),
            gauss=vae.build_vae("vae", 2, 2, "gaussian", **small),
            mix=mixture.build_mixture_vae("gmvae", 2, 2, 3, "gaussian", depth=1, encoder="gaussian",
                                          encoder_hidden=(8,), cluster_hidden=(8,), icnn_width=4, seed=0))
    return _MODELS[name]


def binary(b=4, d=6):
    return torch.bernoulli(torch.full((b, d), 0.5), generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------------ the API
# (id, call, exception, regex the message must match: the argument and what was expected)
API_CASES = [
    ("ppca data transposed", lambda: ppca.ml_estimate(X.T, 2), ValueError, r"x must have shape \(N, D\).*N >= D.*transposed"),
    ("ppca data transposed against w", lambda: ppca.log_likelihood(X.T, W, 0.5), ValueError, r"x must have shape \(N, D\) = \(\*, 5\).*transposed"),
    ("ppca posterior data transposed", lambda: ppca.exact_posterior(X.T, W, 0.5), ValueError, r"x must have shape \(N, D\).*pass x\.T"),
    ("ppca zero noise sd", lambda: ppca.exact_posterior(X, W, 0.0), ValueError, r"sigma must be > 0, got 0\.0"),
    ("ppca negative noise sd", lambda: ppca.log_likelihood(X, W, -1), ValueError, r"sigma must be > 0, got -1"),
    ("ppca NaN data", lambda: ppca.ml_estimate(np.where(X > 1, np.nan, X), 2), ValueError, r"x contains NaN or infinite"),
    ("ppca M > D", lambda: ppca.ml_estimate(X, 6), ValueError, r"m must be <= D = 5, got 6"),
    ("ppca text data", lambda: ppca.ml_estimate(np.array([["a", "b"]]), 1), TypeError, r"x must be a numeric array"),
    ("ppca loadings of another D", lambda: ppca.exact_posterior(X, W[:3], 0.5), ValueError, r"w must have shape \(D, M\) with D = 5"),
    ("ppca covariance shape", lambda: ppca.kl_to_prior(np.zeros((3, 2)), np.eye(3)), ValueError, r"cov must have shape \(2, 2\), got \(3, 3\)"),
    ("gmm data as a column", lambda: gmm.log_likelihood(Y[:, None], GMM_PARAMS), ValueError, r"y must have 1 dimension.*\(200, 1\).*flatten"),
    ("gmm infinite data", lambda: gmm.log_likelihood(np.r_[Y, np.inf], GMM_PARAMS), ValueError, r"y contains NaN or infinite"),
    ("gmm four parameters", lambda: gmm.log_likelihood(Y, GMM_PARAMS[:4]), ValueError, r"params must have shape \(5,\), got \(4,\)"),
    ("gmm negative sd", lambda: gmm.log_likelihood(Y, [0.5, -1, -1.0, 1, 1]), ValueError, r"sigma1 must be > 0"),
    ("gmm weight above 1", lambda: gmm.log_likelihood(Y, [1.5, -1, 1, 1, 1]), ValueError, r"alpha must lie in \[0, 1\]"),
    ("gmm unknown dataset", lambda: gmm.load_data("nope", 100), ValueError, r"unknown GMM dataset 'nope'; choose one of"),
    ("images transposed (D, B)", lambda: model("bern").elbo(binary().T), ValueError, r"x must have shape \(B, 6\), got \(6, 4\).*transposed"),
    ("non-binary data, Bernoulli head", lambda: model("bern").elbo(binary() * 0.5), ValueError, r"x must be binary \(0/1\) for a Bernoulli decoder"),
    ("float64 data, float32 model", lambda: model("bern").elbo(binary().double()), TypeError, r"x has dtype torch\.float64.*parameters are torch\.float32"),
    ("integer tensor", lambda: model("bern").elbo(binary().long()), TypeError, r"x must be a floating-point tensor"),
    ("NumPy array for a tensor", lambda: model("bern").elbo(binary().numpy()), TypeError, r"x must be a torch\.Tensor of shape \(B, 6\)"),
    ("data on another device", lambda: model("bern").elbo(torch.zeros(4, 6, device="meta")), ValueError, r"x is on meta but the module's parameters are on cpu"),
    ("NaN data", lambda: model("gauss").elbo(torch.tensor([[float("nan"), 0.0]])), ValueError, r"x contains NaN or infinite"),
    ("pinwheel transposed (2, N)", lambda: model("mix").elbo(torch.zeros(2, 7)), ValueError, r"x must have shape \(B, 2\), got \(2, 7\).*transposed"),
    ("pinwheel evaluation transposed", lambda: mixture.evaluate_mixture(model("mix"), np.zeros((2, 30))), ValueError, r"x must have shape \(\*, 2\), got \(2, 30\).*transposed"),
    ("LIDVAE K > D", lambda: vae.build_vae("lidvae", 2, 3, "gaussian"), ValueError, r"latent_dim K = 3 must not exceed data_dim D = 2"),
    ("LIDGMVAE K > D", lambda: mixture.build_mixture_vae("lidgmvae", 2, 3, 3, "gaussian"), ValueError, r"latent_dim K = 3 <= data_dim D = 2"),
    ("negative Brenier constant", lambda: vae.build_vae("lidvae", 2, 2, "gaussian", alpha=-0.1), ValueError, r"alpha must be > 0, got -0\.1"),
    ("unknown likelihood head", lambda: vae.build_vae("vae", 2, 2, "poisson"), ValueError, r"unknown head 'poisson'; choose one of: bernoulli, gaussian"),
    ("zero ICNN width", lambda: icnn.ICNN(2, hidden=(4, 0)), ValueError, r"hidden entry must be an integer >= 1, got 0"),
    ("training data of another D", lambda: train.fit(model("gauss"), np.zeros((2, 30)), epochs=1), ValueError, r"train_x must have shape \(N, 2\)"),
    ("negative learning rate", lambda: train.fit(model("gauss"), np.zeros((30, 2)), epochs=1, lr=-1.0), ValueError, r"lr must be > 0, got -1\.0"),
    ("zero batch size", lambda: train.fit(model("gauss"), np.zeros((30, 2)), epochs=1, batch_size=0), ValueError, r"batch_size must be an integer >= 1, got 0"),
    ("channel accuracy above 1", lambda: collapse.noisy_channel(4, 1.5), ValueError, r"accuracy must lie in \(0, 1\), got 1\.5"),
    ("channel with one value", lambda: collapse.noisy_channel(1, 0.9), ValueError, r"K must be an integer >= 2, got 1"),
    ("unknown image dataset", lambda: load_dataset("mnst"), ValueError, r"unknown dataset 'mnst'; choose one of: pinwheel, mnist"),
    ("unknown dataset to require", lambda: require_dataset("mnst"), ValueError, r"unknown dataset 'mnst'"),
    ("chapter check: seed 1.5", lambda: parameters.check("02_ppca", {**_defaults("02_ppca"), "seed": 1.5}), ValueError, r"02_ppca: parameter seed=1\.5: expected an integer"),
    ("chapter check: n = 3e3 unconverted", lambda: parameters.check("03_gmm", {**_defaults("03_gmm"), "n": 3e3}), ValueError, r"n=3000\.0: expected an integer >= 2000"),
]


def _defaults(chapter: str) -> dict:
    return reproduce.chapter_parameters(ROOT / "book" / f"{chapter}.ipynb")


@pytest.mark.parametrize("call, exc, pattern", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_bad_input(call, exc, pattern, single_torch_thread):
    with pytest.raises(exc, match=pattern):
        call()


# ------------------------------------------------------------------------------------------------ the commands
# (id, command, argv given the case's folder c (SimpleNamespace of paths), exit status, regex of stderr)
# c.out: a new folder for the run; c.run_here: a folder holding a run; c.junk: a non-empty folder, not a run;
# c.file: a plain file; c.yaml(text): a parameter file; c.runs(**changes): run folders for results aggregate.
CLI_CASES = [
    ("unknown chapter", "reproduce", lambda c: ["nope", "--out", c.out], 2, r"unknown chapter 'nope'; choose one of: 01_theorem"),
    ("unknown parameter", "reproduce", lambda c: ["03_gmm", "-p", "typo=1", "--out", c.out], 2, r"unknown parameter\(s\) typo for chapter 03_gmm.*known: data, exact_ns"),
    ("seed not an integer", "reproduce", lambda c: ["02_ppca", "-p", "seed=1.5", "--out", c.out], 2, r"02_ppca: parameter seed=1\.5: expected an integer in \[0, 4294967295\]"),
    ("list given a number", "reproduce", lambda c: ["02_ppca", "-p", "sigmas=1.5", "--out", c.out], 2, r"parameter sigmas=1\.5: expected a non-empty list of numbers > 0"),
    ("integer given text", "reproduce", lambda c: ["03_gmm", "-p", "n=abc", "--out", c.out], 2, r"parameter n='abc': expected an integer >= 2000 \(smaller values are refused: the chapter's checked statements hold from here up\)"),
    ("negative noise sd", "reproduce", lambda c: ["04_gmvae", "-p", "s=-1", "--out", c.out], 2, r"parameter s=-1: expected a number > 0"),
    ("NaN learning rate", "reproduce", lambda c: ["06_lidvae", "-p", "lr=.nan", "--out", c.out], 2, r"parameter lr=nan: expected a number > 0"),
    ("-p without =", "reproduce", lambda c: ["03_gmm", "-p", "n", "100", "--out", c.out], 2, r"-p 'n' is not of the form key=value"),
    ("-p given twice", "reproduce", lambda c: ["03_gmm", "-p", "n=100", "-p", "n=200", "--out", c.out], 2, r"parameter n is given twice with -p \(n=100 and 'n=200'\): give it once"),
    ("-p value not YAML", "reproduce", lambda c: ["03_gmm", "-p", "exact_ns=[1,", "--out", c.out], 2, r"parameter 'exact_ns=\[1,': the value is not valid YAML"),
    ("missing -f file", "reproduce", lambda c: ["03_gmm", "-f", c.tmp / "none.yaml", "--out", c.out], 2, r"parameter file .*none\.yaml cannot be read: No such file"),
    ("malformed -f file", "reproduce", lambda c: ["03_gmm", "-f", c.yaml("n: [1, 2\n"), "--out", c.out], 2, r"parameter file .*\.yaml is not valid YAML"),
    ("-f file not a mapping", "reproduce", lambda c: ["03_gmm", "-f", c.yaml("- 1\n- 2\n"), "--out", c.out], 2, r"parameter file .* must hold a mapping of parameter names to values, got list"),
    ("-f file with a mistyped value", "reproduce", lambda c: ["05_icnn_brenier", "-f", c.yaml("hidden: [64, 0]\n"), "--out", c.out], 2, r"hidden=\[64, 0\]: expected a list of at least 2 entries of integers >= 64 \(smaller values are refused: the chapter's checked statements hold from here up\) \(entry 0 is not\)"),
    ("-f file with an unknown name", "reproduce", lambda c: ["03_gmm", "-f", c.yaml("nn: 3\n"), "--out", c.out], 2, r"unknown parameter\(s\) nn .*from .*\.yaml"),
    ("CUDA without CUDA", "reproduce", lambda c: ["06_lidvae", "-p", "device=cuda", "--out", c.out], 2, r"device='cuda': expected 'auto', 'cpu', 'cuda' or 'cuda:N'.*CUDA is not available"),
    ("unknown device", "reproduce", lambda c: ["07_lidgmvae_pinwheel", "-p", "device=tpu", "--out", c.out], 2, r"device='tpu': expected 'auto', 'cpu'"),
    ("unknown choice", "reproduce", lambda c: ["02_ppca", "-p", "data=offical", "--out", c.out], 2, r"data='offical': expected one of 'official', 'regenerated'"),
    ("unknown dataset in a list", "reproduce", lambda c: ["08_images", "-p", "datasets=[mnst]", "--out", c.out], 2, r"datasets=\['mnst'\]: expected a list of strings, each one of 'mnist'.*entry 'mnst' is not"),
    ("index out of range", "reproduce", lambda c: ["02_ppca", "-p", "datapoints=[12, 600]", "--out", c.out], 2, r"datapoints=\[12, 600\]: expected a non-empty list of integers in \[0, 499\]"),
    ("not a boolean", "reproduce", lambda c: ["07_lidgmvae_pinwheel", "-p", "learn_prior=maybe", "--out", c.out], 2, r"learn_prior='maybe': expected true or false"),
    ("two ICNN widths needed", "reproduce", lambda c: ["06_lidvae", "-p", "mnist_icnn_hidden=[[32]]", "--out", c.out], 2, r"mnist_icnn_hidden=\[\[32\]\]: expected a list of length 2"),
    ("LIDVAE K > D = 2", "reproduce", lambda c: ["06_lidvae", "-p", "latent_dim=3", "--out", c.out], 2, r"latent_dim=3: expected an integer in \[2, 2\]"),
    ("Example 1 needs K >= C", "reproduce", lambda c: ["08_images", "-p", "num_clusters=32", "--out", c.out], 2, r"num_clusters=32, latent_dim=16: expected num_clusters <= latent_dim"),
    ("official GMM data hold 10^4", "reproduce", lambda c: ["03_gmm", "-p", "n=20000", "-p", "data=official", "--out", c.out], 2, r"data='official', n=20000: expected n <= 10000"),
    ("cpu scale at the defaults", "reproduce", lambda c: ["01_theorem", "--scale", "cpu", "--out", c.out], 2, r"--scale cpu claimed for a run at the chapter defaults"),
    ("--out holds another run", "reproduce", lambda c: ["01_theorem", "--out", c.run_here], 2, r"--out .*run_here holds another run; .*--overwrite"),
    ("--out holds other files", "reproduce", lambda c: ["01_theorem", "--out", c.junk, "--overwrite"], 2, r"--out .*junk is a non-empty folder that is not a run folder"),
    ("--out is a file", "reproduce", lambda c: ["01_theorem", "--out", c.file], 2, r"--out .*a_file exists and is not a folder"),
    ("missing data file", "reproduce", lambda c: ["06_lidvae", "-p", f"data_dir={c.empty_data}", "--out", c.out], 1, r"(?s)06_lidvae needs data files.*nothing was run.*train-images-idx3-ubyte\.gz"),
    ("corrupt data file (checksum)", "reproduce", lambda c: ["06_lidvae", "-p", f"data_dir={c.bad_data}", "--out", c.out], 1, r"(?s)nothing was run.*checksum mismatch for .*train-images-idx3-ubyte\.gz"),
    ("results: missing file", "results", lambda c: ["aggregate", c.runs(drop="metrics.json"), "--out", c.out], 2, r"seed_1 is not a complete run folder: missing metrics\.json"),
    ("results: malformed params.yaml", "results", lambda c: ["aggregate", c.runs(write={"params.yaml": "seed: [1\n"}), "--out", c.out], 2, r"seed_1/params\.yaml cannot be read as YAML"),
    ("results: malformed metrics.json", "results", lambda c: ["aggregate", c.runs(write={"metrics.json": "{"}), "--out", c.out], 2, r"seed_1/metrics\.json cannot be read as JSON"),
    ("results: metrics not a mapping", "results", lambda c: ["aggregate", c.runs(write={"metrics.json": "[1]"}), "--out", c.out], 2, r"seed_1/metrics\.json must hold a mapping, got list"),
    ("results: repeated seed", "results", lambda c: ["aggregate", c.runs(write={"params.yaml": "seed: 0\nn: 3\n"}), "--out", c.out], 2, r"a seed occurs twice among the runs"),
    ("results: different chapters", "results", lambda c: ["aggregate", c.runs(write={"environment.json": '{"chapter": "x", "status": "completed", "scale": "cpu"}'}), "--out", c.out], 2, r"the runs are of different chapters"),
    ("results: unknown scale", "results", lambda c: ["aggregate", c.runs(), "--scale", "full", "--out", c.out], 2, r"argument --scale: invalid choice: 'full'"),
    ("sweep: mistyped -p", "sweep", lambda c: ["03_gmm", "-p", "n=abc", "--out", c.out], 2, r"parameter n='abc' does not match its chapter default 2000"),
    ("sweep: grid value out of range", "sweep", lambda c: ["04_gmvae", "--grid", "s=0.1,-1", "--out", c.out], 2, r"grid point s=-1: 04_gmvae: parameter s=-1: expected a number > 0"),
    ("sweep: zero chains", "sweep", lambda c: ["02_ppca", "--grid", "num_chains=0,2", "--out", c.out], 2, r"grid point num_chains=0: 02_ppca: parameter num_chains=0: expected an integer >= 1"),
    ("sweep: unknown chapter", "sweep", lambda c: ["nope", "--out", c.out], 2, r"unknown chapter 'nope'"),
]

MAINS = {"reproduce": reproduce.main, "results": results.main, "sweep": sweep.main}


@pytest.fixture()
def case_dir(tmp_path, monkeypatch):
    """The folders the commands are pointed at, and guards that fail the test if any compute starts."""
    import papermill

    def started(*args, **kwargs):
        pytest.fail("a kernel was started although the input is bad")

    monkeypatch.setattr(papermill, "execute_notebook", started)
    monkeypatch.setattr(sweep, "connect", started)
    monkeypatch.setattr(sweep, "run_sweep", started)
    monkeypatch.setattr(parameters, "_cuda_devices", lambda: 0)   # "CUDA without CUDA" also on a GPU machine
    monkeypatch.chdir(tmp_path)

    run_here = tmp_path / "run_here"
    run_here.mkdir()
    for name, text in (("params.yaml", "seed: 0\n"), ("metrics.json", '{"x": 1}'),
                       ("environment.json", '{"status": "completed"}')):
        (run_here / name).write_text(text)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty_data").mkdir()
    (tmp_path / "bad_data" / "mnist").mkdir(parents=True)
    from lidvae_mini.data.images import MNIST_SHA256

    for name in MNIST_SHA256:
        (tmp_path / "bad_data" / "mnist" / name).write_bytes(b"not the file")
    counter = iter(range(1000))

    def yaml_file(text):
        path = tmp_path / f"params_{next(counter)}.yaml"
        path.write_text(text)
        return path

    def runs(drop=None, write=None):
        """Two run folders of one chapter (seeds 0 and 1); the second changed by ``drop``/``write``."""
        folders = []
        for seed in (0, 1):
            f = tmp_path / "runs" / f"seed_{seed}"
            f.mkdir(parents=True)
            (f / "params.yaml").write_text(f"seed: {seed}\nn: 3\n")
            (f / "metrics.json").write_text(f'{{"total": {seed + 1.5}}}')
            (f / "environment.json").write_text('{"chapter": "01_theorem", "status": "completed", "scale": "cpu"}')
            folders.append(f)
        for name, text in (write or {}).items():
            (folders[1] / name).write_text(text)
        if drop:
            (folders[1] / drop).unlink()
        return [str(f) for f in folders]

    return SimpleNamespace(tmp=tmp_path, out=tmp_path / "out", run_here=run_here, junk=tmp_path / "junk",
                           file=tmp_path / "a_file", empty_data=tmp_path / "empty_data",
                           bad_data=tmp_path / "bad_data", yaml=yaml_file, runs=runs)


def _flatten(argv):
    out = []
    for a in argv:
        out += [str(x) for x in a] if isinstance(a, list) else [str(a)]
    return out


def _snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("command, argv, status, pattern", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_fails_before_any_compute(case_dir, capsys, command, argv, status, pattern):
    args = _flatten(argv(case_dir))
    before = _snapshot(case_dir.tmp)
    start = time.perf_counter()
    try:
        got = MAINS[command](args)
    except SystemExit as exit_:     # argparse's parser.error
        got = exit_.code
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert got == status, err
    assert re.search(pattern, err), err
    assert "Traceback" not in err
    if command == "reproduce" and status == 2:
        assert len(err.strip().splitlines()) == 1, err          # one line, no usage dump
    assert _snapshot(case_dir.tmp) == before                     # nothing written, nothing half-written
    assert elapsed < 20, f"{elapsed:.1f} s: checks must come before any compute"


def test_there_are_at_least_40_cases_and_they_are_distinct():
    ids = [c[0] for c in API_CASES + CLI_CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    assert {c[1] for c in CLI_CASES} == set(MAINS)


# ------------------------------------------------------------------------------------------- on the console
@pytest.mark.parametrize("argv, pattern", [
    (["lidvae_mini.book.reproduce", "02_ppca", "-p", "seed=1.5"], r"parameter seed=1\.5: expected an integer"),
    (["lidvae_mini.book.reproduce", "03_gmm", "-p", "n", "100"], r"-p 'n' is not of the form key=value"),
    (["lidvae_mini.book.results", "aggregate", "no_such_run", "--out", "summary"], r"no_such_run is not a complete run folder"),
], ids=["reproduce seed", "reproduce -p without =", "results missing folder"])
def test_console_shows_one_message_and_no_traceback(tmp_path, argv, pattern):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and re.search(pattern, res.stderr), res.stderr
    assert "Traceback" not in res.stderr and "warning" not in res.stderr.lower()
    assert res.stdout == "" and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- --out and a killed reproduce run
def test_out_with_another_run_needs_overwrite_and_a_killed_run_leaves_no_mix(tmp_path, monkeypatch):
    """A run writes into a hidden sibling and is renamed into place when it stops: killed before that (here:
    the rename never happens), the earlier run stays whole; the next run clears the stale sibling."""
    import jupytext
    import nbformat

    from test_reproduce import TINY_CHAPTER

    book = tmp_path / "book"
    book.mkdir()
    (book / "00_tiny.md").write_text(TINY_CHAPTER)
    nbformat.write(jupytext.read(book / "00_tiny.md"), book / "00_tiny.ipynb")
    out = tmp_path / "run"
    first = reproduce.run("00_tiny", {"n": 4}, book=book, out=out)
    files = {p.name: p.read_bytes() for p in first.iterdir()}
    assert '"total": 6' in files["metrics.json"].decode()
    with pytest.raises(reproduce.ReproduceError, match="holds another run"):
        reproduce.run("00_tiny", {"n": 5}, book=book, out=out)

    monkeypatch.setattr(reproduce, "_publish", lambda work, out_dir: None)    # killed before the rename
    reproduce.run("00_tiny", {"n": 5}, book=book, out=out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files          # the earlier run, untouched
    partial = tmp_path / ".run.partial"
    assert '"total": 10' in (partial / "metrics.json").read_text()           # the killed run, apart
    monkeypatch.undo()

    reproduce.run("00_tiny", {"n": 6}, book=book, out=out, overwrite=True)
    assert '"total": 15' in (out / "metrics.json").read_text() and "n: 6" in (out / "params.yaml").read_text()
    assert not partial.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["book", "run"]
    assert f"out_dir: {out}" in (out / "params.yaml").read_text()            # the final folder, not the sibling
