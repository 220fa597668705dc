"""python -m lidvae_mini.book.sweep: validation before submission, run folders, resume, retries, and a two-node Ray
cluster on loopback addresses (a lost worker and a lost node lose no result).

Network: Ray rewrites ``127.0.0.1``/``localhost`` into the machine's routable address, so the test cluster uses
other loopback addresses (``127.0.0.2`` head, ``127.0.0.3`` worker node); the sweep's local runtime is kept on
``127.0.0.1``; Ray's own probes of cloud metadata services and its usage report are switched off
(:func:`lidvae_mini.book.sweep.ray_offline_env`). A ``sitecustomize`` guard (``conftest.NETWORK_GUARD``) in every
subprocess of these tests (sweep, ``ray start`` and all Python processes Ray starts, notebook kernels) refuses
and records any connection, datagram or name lookup that is not on the loopback interface; the module fails if one
was attempted.

The cluster's processes are stopped by their process ids (everything under the cluster's temporary folder and their
children), not by ``ray stop``, which would also stop any other Ray on the machine.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from conftest import NETWORK_GUARD, ROOT

import ray  # noqa: F401  - a test dependency (requirements.txt): a missing Ray fails here, it is not skipped

from lidvae_mini.book import sweep  # noqa: E402

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
# Token authentication with a token of this test run only: the same for every node and driver, and independent of
# a ~/.ray/auth_token that an earlier local runtime may have written (Ray would enable token mode on some
# processes and not on others).
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
OBJECT_STORE = str(100 * 1024 ** 2)

FAKE_CHAPTER = """---
jupytext:
  formats: ipynb,md:myst
  text_representation: {extension: .md, format_name: myst}
kernelspec: {display_name: Python 3, language: python, name: python3}
---
# Fake

```{code-cell} ipython3
:tags: [parameters]

seed = 0
scale_x = 1.0
sleep_s = 0.0
fail = False
kill_marker = ""
started_dir = ""
device = "cpu"
out_dir = None
```

```{code-cell} ipython3
import json, os, pathlib, signal, time
if started_dir:
    pathlib.Path(started_dir, f"seed_{seed}_{os.getpid()}").touch()
time.sleep(sleep_s)
if kill_marker and not os.path.exists(kill_marker):
    # first attempt only: kill the Ray worker that runs this notebook (the kernel's parent), then this kernel
    pathlib.Path(kill_marker).write_text(str(os.getppid()))
    os.kill(os.getppid(), signal.SIGKILL)
    os._exit(1)
if fail:
    raise RuntimeError("fake failure")
if out_dir:
    pathlib.Path(out_dir, "metrics.json").write_text(json.dumps({"value": seed * scale_x + 0.5,
                                                                 "params": {"seed": seed}}))
```
"""


@pytest.fixture(scope="module")
def fake_book(tmp_path_factory):
    book = tmp_path_factory.mktemp("book")
    (book / "fake.md").write_text(FAKE_CHAPTER)
    nbformat.write(jupytext.read(book / "fake.md"), book / "fake.ipynb")
    return book


@pytest.fixture(scope="module", autouse=True)
def network_guard(tmp_path_factory):
    """Install the guard for this module's subprocesses; fail if any of them reached off the loopback interface."""
    folder = tmp_path_factory.mktemp("guard")
    (folder / "sitecustomize.py").write_text(NETWORK_GUARD)
    log = folder / "refused.log"
    saved = {k: os.environ.get(k) for k in ("LIDVAE_TEST_NETWORK_GUARD", "LIDVAE_TEST_NETWORK_LOG")}
    os.environ.update(LIDVAE_TEST_NETWORK_GUARD=str(folder), LIDVAE_TEST_NETWORK_LOG=str(log))
    yield log
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    assert not log.exists(), f"network use off the loopback interface:\n{log.read_text()}"


def test_network_guard_refuses_other_addresses(tmp_path):
    code = ("import socket\ntry:\n    socket.create_connection(('192.0.2.1', 9), timeout=0.1)\n"
            "except OSError as err:\n    print(err)\n")
    log = tmp_path / "refused.log"
    res = subprocess.run([sys.executable, "-c", code], env=_env(LIDVAE_TEST_NETWORK_LOG=str(log)),
                         capture_output=True, text=True, timeout=60)
    assert "test network guard" in res.stdout, res.stdout + res.stderr
    assert "192.0.2.1" in log.read_text()


def _env(**extra) -> dict:
    """The environment of every subprocess: this checkout first on the path, the network guard, no usage
    statistics, one thread."""
    guard = os.environ.get("LIDVAE_TEST_NETWORK_GUARD")
    path = os.pathsep.join(p for p in (guard, str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0", "TQDM_DISABLE": "1",
            "OMP_NUM_THREADS": "1", **AUTH, **extra}


def _ray_node_env(home: Path) -> dict:
    """The environment of ``ray start``: :func:`_env` plus the variables that keep Ray's own processes off the
    network (no cloud metadata probe, no usage report; see :func:`lidvae_mini.book.sweep.ray_offline_env`)."""
    return _env(**sweep.ray_offline_env(home))


def _sweep_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "lidvae_mini.book.sweep", *map(str, args)]


def _run_sweep(*args, timeout=240, **env):
    return subprocess.run(_sweep_cmd(*args), cwd=ROOT, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def _status(folder: Path) -> str:
    return json.loads((folder / "environment.json").read_text())["status"]


# ------------------------------------------------------------------------------------------------------------
# Parsing and validation: nothing is submitted, Ray is never started

def test_parse_seeds():
    assert sweep.parse_seeds("0-3") == [0, 1, 2, 3]
    assert sweep.parse_seeds("0,2,5") == [0, 2, 5]
    assert sweep.parse_seeds("0-2, 7") == [0, 1, 2, 7]
    for bad in ("", "a", "3-1", "-1", "0,0", "0-2,1", "1.5"):
        with pytest.raises(sweep.SweepError):
            sweep.parse_seeds(bad)


def test_parse_grid_reads_values_as_yaml():
    grid = sweep.parse_grid(["n=1e3,500", "datasets=[mnist,omniglot],[mnist]", "flag=true,false", "s=a,'b,c'"])
    assert grid == {"n": [1000.0, 500], "datasets": [["mnist", "omniglot"], ["mnist"]], "flag": [True, False],
                    "s": ["a", "b,c"]}
    for bad in (["n"], ["=1,2"], ["n="], ["n=1,,2"], ["n=[1,2"], ["n=1,1"], ["seed=0,1"], ["n=1", "n=2"]):
        with pytest.raises(sweep.SweepError):
            sweep.parse_grid(bad)


def test_point_labels_and_folders(fake_book, tmp_path):
    specs = sweep.plan("fake", grid=sweep.parse_grid(["scale_x=1,2.5", "sleep_s=0"]), seeds=[3, 4], out=tmp_path,
                       book=fake_book)
    assert [(s.label, s.seed) for s in specs] == [("scale_x=1,sleep_s=0", 3), ("scale_x=1,sleep_s=0", 4),
                                                 ("scale_x=2.5,sleep_s=0", 3), ("scale_x=2.5,sleep_s=0", 4)]
    assert specs[0].folder == tmp_path / "scale_x=1,sleep_s=0" / "seed_3"
    assert specs[0].params["seed"] == 3 and specs[3].params["scale_x"] == 2.5
    assert [s.scale for s in specs] == ["ci", "ci", "cpu", "cpu"]
    assert specs[2].command[:4] == ["python", "-m", "lidvae_mini.book.reproduce", "fake"]
    assert "scale_x=2.5" in specs[2].command and "seed=3" in specs[2].command
    assert all(s.num_cpus == 1 and s.num_gpus == 0 for s in specs)
    assert not tmp_path.joinpath("scale_x=1,sleep_s=0").exists()   # planning makes no folder
    no_grid = sweep.plan("fake", seeds=[0], out=tmp_path, book=fake_book)
    assert no_grid[0].folder == tmp_path / "default" / "seed_0"


def test_cuda_runs_reserve_a_gpu(fake_book, tmp_path):
    specs = sweep.plan("fake", grid={"device": ["cpu", "cuda", "cuda:1", "auto"]}, seeds=[0], out=tmp_path,
                       book=fake_book)
    assert [s.label for s in specs] == ["device=cpu", "device=cuda", "device=cuda_1", "device=auto"]
    assert [s.num_gpus for s in specs] == [0, 1, 1, 0]   # "auto" uses a GPU only where one is free: none reserved
    assert {s.num_gpus for s in sweep.plan("fake", seeds=[0], out=tmp_path, book=fake_book,
                                           gpus_per_run=0.5)} == {0.5}


@pytest.fixture()
def nothing_submitted(monkeypatch):
    """Fail the test if the sweep gets as far as Ray."""
    def refuse(*args, **kwargs):
        pytest.fail("the sweep reached Ray although its input is bad")
    monkeypatch.setattr(sweep, "connect", refuse)
    monkeypatch.setattr(sweep, "run_sweep", refuse)


@pytest.mark.parametrize("args, message", [
    (["nope"], "unknown chapter"),
    (["fake", "--grid", "nosuch=1,2"], "unknown grid parameter"),
    (["fake", "-p", "nosuch=1"], "unknown parameter"),
    (["fake", "--grid", "scale_x=1,abc"], "does not match its chapter default"),
    (["fake", "--grid", "scale_x"], "key=v1,v2"),
    (["fake", "--grid", "scale_x=[1,2"], "unbalanced"),
    (["fake", "--grid", "seed=1,2"], "--seeds"),
    (["fake", "--seeds", "3-1"], "reversed"),
    (["fake", "--seeds", "x"], "not a seed"),
    (["fake", "-p", "seed=4"], "--seeds"),
    (["fake", "-f", "no-such-file.yaml"], "does not exist"),
    (["fake", "--scale", "cpu"], "chapter defaults"),
    (["fake", "--grid", "scale_x=1,2", "--scale", "cpu"], "grid point scale_x=1"),
    (["fake", "--retries", "-1"], ">= 0"),
    (["fake", "--cpus-per-run", "0"], "positive"),
])
def test_bad_input_fails_before_anything_is_submitted(fake_book, tmp_path, capsys, nothing_submitted, args,
                                                      message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        sweep.main([*args, "--book", str(fake_book), "--out", str(out), "--address", "127.0.0.2:1"])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_data_fails_before_anything_is_submitted(tmp_path, capsys, nothing_submitted):
    empty = tmp_path / "no-data"
    empty.mkdir()
    out = tmp_path / "out"
    assert sweep.main(["06_lidvae", "--book", str(ROOT / "book"), "--seeds", "0-1", "--out", str(out), "-p",
                       f"data_dir={empty}"]) == 1
    err = capsys.readouterr().err
    assert "mnist" in err and "nothing was run" in err
    assert not out.exists()


def test_cli_bad_input_exit_status(fake_book, tmp_path):
    res = _run_sweep("fake", "--book", fake_book, "--out", tmp_path / "out", "--grid", "nosuch=1", timeout=60)
    assert res.returncode == 2 and "unknown grid parameter" in res.stderr
    assert not (tmp_path / "out").exists()


def test_finished_run_with_other_parameters_is_refused(fake_book, tmp_path):
    folder = tmp_path / "default" / "seed_0"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"value": 1.0}')
    (folder / "environment.json").write_text('{"status": "completed", "scale": "cpu"}')
    (folder / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "scale_x": 9.0, "sleep_s": 0.0, "fail": False,
                                                        "kill_marker": "", "started_dir": "", "device": "cpu",
                                                        "out_dir": str(folder)}))
    with pytest.raises(sweep.SweepError, match="other parameter"):
        sweep.plan("fake", seeds=[0], out=tmp_path, book=fake_book)


def test_run_state(tmp_path):
    assert sweep.run_state(tmp_path / "none") == "missing"
    (tmp_path / "metrics.json").write_text('{"params": {"n": 1}}')
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / "environment.json").write_text('{"status": "completed"}')
    assert sweep.run_state(tmp_path) == "incomplete"            # no result in metrics.json
    (tmp_path / "metrics.json").write_text('{"x": 1.5}')
    assert sweep.run_state(tmp_path) == "completed"
    (tmp_path / "environment.json").write_text('{"status": "failed: PapermillExecutionError"}')
    assert sweep.run_state(tmp_path) == "incomplete"
    (tmp_path / "environment.json").write_text("{broken")
    assert sweep.run_state(tmp_path) == "incomplete"


# ------------------------------------------------------------------------------------------------------------
# A local Ray runtime: failed runs are retried, then listed; a rerun clears them and skips finished runs

def test_local_runtime_retries_failed_runs_then_lists_them(fake_book, tmp_path):
    out = tmp_path / "out"
    res = _run_sweep("fake", "--book", fake_book, "--out", out, "--grid", "fail=false,true", "--seeds", "0",
                     "--retries", "1", "--local-cpus", "2", "--object-store-mb", "100")
    assert res.returncode == 1, res.stdout + res.stderr
    ok, bad = out / "fail=false" / "seed_0", out / "fail=true" / "seed_0"
    assert _status(ok) == "completed"
    assert _status(bad).startswith("failed")
    env = json.loads((bad / "environment.json").read_text())
    assert env["sweep"]["attempt"] == 2 and "fake failure" in env["sweep"]["error"]
    assert (bad / "fake.ipynb").exists()                       # the failed notebook is kept
    assert "failed fail=true/seed_0 (attempt 1 of 2), retrying" in res.stderr
    assert "FAILED fail=true/seed_0 after 2 attempt(s)" in res.stdout
    assert "raised RuntimeError: fake failure" in res.stdout
    assert "1 completed, 1 failed" in res.stdout
    assert "127.0.0.1" in env["sweep"]["node"]                 # the local runtime is on the loopback address


# ------------------------------------------------------------------------------------------------------------
# A two-node Ray cluster on loopback addresses

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    """``{pid: (parent pid, command line)}`` of every process (from /proc)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            out[int(d)] = (ppid, cmd)
    return out


def _environ_names(pid: int, markers: list[str]) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return any(f"HOME={m}".encode() in env for m in markers)


def _cluster_pids(markers: list[str]) -> set[int]:
    """The processes whose command line names one of ``markers`` (the cluster's temp folder or GCS address) or whose
    ``HOME`` is one of them (the node's own folder: every process ``ray start`` launches inherits it, including
    those that rename themselves, such as ``ray::DashboardAgent``, and outlive their parent), and all their
    descendants (Ray workers, notebook kernels)."""
    procs = _processes()
    me = os.getpid()
    tree = {p for p, (_, cmd) in procs.items()
            if p != me and (any(m in cmd for m in markers) or _environ_names(p, markers))}
    grew = True
    while grew:
        new = {p for p, (pp, _) in procs.items() if pp in tree and p not in tree}
        tree |= new
        grew = bool(new)
    return tree


def _kill(pids) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _ray_cli() -> str:
    cli = Path(sys.executable).with_name("ray")
    assert cli.exists(), f"the ray command is not beside {sys.executable}: pip install -r requirements.txt"
    return str(cli)


def _ray_start(args: list[str], home: Path) -> None:
    res = subprocess.run([_ray_cli(), "start", *args], env=_ray_node_env(home), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, f"ray start {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"


def _start_worker_node(gcs: str, home: Path) -> None:
    _ray_start([f"--address={gcs}", f"--node-ip-address={WORKER_IP}", "--num-cpus=1",
                f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats"], home)


def _wait_nodes(gcs: str, n: int, timeout: float = 60) -> None:
    code = ("import ray, time; ray.init(address=%r, logging_level='error'); t = time.time()\n"
            "while sum(x['Alive'] for x in ray.nodes()) != %d and time.time() - t < %f: time.sleep(0.5)\n"
            "print(sum(x['Alive'] for x in ray.nodes()))") % (gcs, n, timeout)
    res = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True,
                         timeout=timeout + 60)
    assert res.stdout.strip().endswith(str(n)), res.stdout + res.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node (127.0.0.2, 1 CPU) and a worker node (127.0.0.3, 1 CPU) started with ``ray start``.

    Ray's temporary folder is a short one directly under the system's: its socket paths must stay within 107 bytes
    (AF_UNIX), which pytest's per-worker folders under pytest-xdist (``.../popen-gw0/...``) exceed."""
    temp = Path(tempfile.mkdtemp(prefix="ray-"))
    home = tmp_path_factory.mktemp("ray_home")
    port = _free_port()
    gcs = f"{HEAD_IP}:{port}"
    markers = [str(temp), gcs, str(home)]
    try:
        _ray_start(["--head", f"--node-ip-address={HEAD_IP}", f"--port={port}", "--num-cpus=1",
                    "--include-dashboard=false",
                    f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats", f"--temp-dir={temp}"], home)
        _start_worker_node(gcs, home)
        _wait_nodes(gcs, 2)
        yield {"gcs": gcs, "markers": markers}
    finally:
        _kill(_cluster_pids(markers))
        shutil.rmtree(temp, ignore_errors=True)


def test_cluster_two_seed_sweep_of_a_real_chapter_then_rerun_skips_all(cluster, tmp_path):
    """(a) two seeds of 01_theorem on a two-node cluster, the driver on the cluster (the head's GCS address, as Ray
    supports; no Ray Client), aggregated; (c) a second invocation runs nothing new."""
    out, agg = tmp_path / "out", tmp_path / "results" / "01_theorem" / "ci_seeds"
    args = ("01_theorem", "--seeds", "0-1", "--out", out, "--address", cluster["gcs"], "--aggregate-to", agg)
    res = _run_sweep(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 runs: 0 skipped (finished before), 2 completed, 0 failed" in res.stdout
    nodes = set()
    for seed in (0, 1):
        folder = out / "default" / f"seed_{seed}"
        assert sweep.run_state(folder) == "completed"
        env = json.loads((folder / "environment.json").read_text())
        assert env["scale"] == "ci" and env["chapter"] == "01_theorem"
        assert env["command"][-2:] == ["--out", str(folder)] and f"seed={seed}" in env["command"]
        assert yaml.safe_load((folder / "params.yaml").read_text())["out_dir"] == str(folder)
        nodes.add(env["sweep"]["node"].split()[0])
    assert nodes <= {HEAD_IP, WORKER_IP}
    summary = json.loads((agg / "environment.json").read_text())
    assert summary["scale"] == "ci" and summary["seeds"] == [0, 1] and summary["n_runs"] == 2
    assert yaml.safe_load((agg / "params.yaml").read_text())["seeds"] == [0, 1]
    stamp = [(out / "default" / f"seed_{s}" / "environment.json").stat().st_mtime_ns for s in (0, 1)]

    res = _run_sweep(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 runs: 2 skipped (finished before), 0 completed, 0 failed" in res.stdout
    assert stamp == [(out / "default" / f"seed_{s}" / "environment.json").stat().st_mtime_ns for s in (0, 1)]


def test_cluster_killed_worker_loses_no_result(cluster, fake_book, tmp_path):
    """(b) the first run to start kills the Ray worker executing it; Ray retries it and every run finishes."""
    out, marker = tmp_path / "out", tmp_path / "killed"
    res = _run_sweep("fake", "--book", fake_book, "--out", out, "--seeds", "0-1", "-p", f"kill_marker={marker}",
                     "--address", cluster["gcs"], "--retries", "0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert marker.exists()                                     # a worker was killed
    for seed in (0, 1):
        assert sweep.run_state(out / "default" / f"seed_{seed}") == "completed"
        env = json.loads((out / "default" / f"seed_{seed}" / "environment.json").read_text())
        assert env["sweep"]["attempt"] == 1                    # retried by Ray, not by the sweep
    assert "2 completed, 0 failed" in res.stdout


def test_cluster_rerun_skips_finished_clears_partial_and_aggregates(cluster, fake_book, tmp_path):
    """A finished run is skipped, a partial one (a crash left it) is cleared and rerun; the seeds aggregate."""
    out = tmp_path / "out"
    spec0, spec1 = sweep.plan("fake", grid={"scale_x": [2.0]}, seeds=[0, 1], out=out, book=fake_book)
    spec0.folder.mkdir(parents=True)
    (spec0.folder / "params.yaml").write_text(yaml.safe_dump({**spec0.params, "out_dir": str(spec0.folder)}))
    (spec0.folder / "metrics.json").write_text('{"value": 0.25, "params": {"seed": 0}}')
    (spec0.folder / "environment.json").write_text('{"status": "completed", "scale": "cpu", "chapter": "fake"}')
    spec1.folder.mkdir(parents=True)
    (spec1.folder / "params.yaml").write_text(yaml.safe_dump(spec1.params))
    (spec1.folder / "stray.txt").write_text("left by a crashed run")
    stamp = (spec0.folder / "environment.json").stat().st_mtime_ns
    agg = tmp_path / "agg"
    res = _run_sweep("fake", "--book", fake_book, "--out", out, "--grid", "scale_x=2.0", "--seeds", "0-1",
                     "--address", cluster["gcs"], "--aggregate-to", agg)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 runs: 1 skipped (finished before), 1 completed, 0 failed" in res.stdout
    assert (spec0.folder / "environment.json").stat().st_mtime_ns == stamp
    assert sweep.run_state(spec1.folder) == "completed" and not (spec1.folder / "stray.txt").exists()
    summary = json.loads((agg / "scale_x=2.0" / "metrics.json").read_text())
    assert summary["value"]["values"] == [0.25, 2.5]
    env = json.loads((agg / "scale_x=2.0" / "environment.json").read_text())
    assert env["scale"] == "cpu" and env["sweep"]["grid_point"] == {"scale_x": 2.0}


def test_cluster_lost_node_loses_no_result(cluster, fake_book, tmp_path):
    """(b) the worker node's raylet is killed while both nodes run a task: its run is rerun on the head."""
    out, started = tmp_path / "out", tmp_path / "started"
    started.mkdir()
    proc = subprocess.Popen(_sweep_cmd("fake", "--book", fake_book, "--out", out, "--seeds", "0-1", "-p",
                                       "sleep_s=4", "-p", f"started_dir={started}", "--address", cluster["gcs"]),
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while len(list(started.iterdir())) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert len(list(started.iterdir())) == 2, "both runs should be running, one per node"
        raylets = [p for p, (_, cmd) in _processes().items()
                   if "raylet" in cmd.split(" ")[0] and f"--node_ip_address={WORKER_IP}" in cmd]
        assert len(raylets) == 1, raylets
        _kill(raylets)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout + stderr
    assert "2 completed, 0 failed" in stdout
    for seed in (0, 1):
        folder = out / "default" / f"seed_{seed}"
        assert sweep.run_state(folder) == "completed"
        assert json.loads((folder / "environment.json").read_text())["sweep"]["node"].startswith(HEAD_IP)
    assert len(list(started.iterdir())) == 3                   # the lost run started again, on the head


def test_a_ray_client_address_is_refused_with_the_supported_ways(tmp_path):
    """Ray Client (ray://) is deprecated by Ray: refused before anything is planned, naming the driver-on-cluster
    address and the Jobs API."""
    res = _run_sweep("01_theorem", "--seeds", "0", "--out", tmp_path / "out", "--address", "ray://127.0.0.2:10001")
    assert res.returncode == 2
    assert "Ray Client (ray://) is not supported" in res.stderr and "ray job submit" in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(sweep.SweepError, match="ray job submit"):
        sweep.connect("ray://127.0.0.2:10001")


# ------------------------------------------------------------------------------------------------------------
# Remote submission: the Ray Jobs API runs the sweep's driver on a cluster's head node

JOBS_HEAD_IP = "127.0.0.4"


def _wait_jobs_api(address: str, home: Path, timeout: float = 180) -> None:
    """``ray start`` returns before the dashboard and the node's job agent serve jobs ("No available agent to submit
    job"): submit a no-op job until one succeeds (seconds on an idle 2-core machine)."""
    start, res = time.monotonic(), None
    while time.monotonic() - start < timeout:
        res = subprocess.run([_ray_cli(), "job", "submit", "--address", address, "--", "true"],
                             env=_ray_node_env(home), capture_output=True, text=True, timeout=120)
        if res.returncode == 0:
            return
        time.sleep(2)
    raise AssertionError(f"the Jobs API at {address} did not accept a job within {timeout} s:\n"
                         + (res.stdout + res.stderr if res else ""))


@pytest.fixture(scope="module")
def jobs_head(tmp_path_factory):
    """A one-node cluster (127.0.0.4, 1 CPU) with its dashboard, which serves the Ray Jobs API, on loopback."""
    temp = Path(tempfile.mkdtemp(prefix="rayj-"))
    home = tmp_path_factory.mktemp("ray_jobs_home")
    port, dash, agent, agent_grpc, env_agent, metrics = (_free_port() for _ in range(6))
    markers = [str(temp), f"{JOBS_HEAD_IP}:{port}", str(home)]
    try:
        # every port of its own: the job agent's default port (52365) can still be held by an agent of a cluster
        # that an earlier test killed, and then this head never gets an agent ("No available agent to submit job")
        _ray_start(["--head", f"--node-ip-address={JOBS_HEAD_IP}", f"--port={port}", "--num-cpus=1",
                    f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                    f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
                    "--include-dashboard=true", f"--dashboard-host={JOBS_HEAD_IP}", f"--dashboard-port={dash}",
                    f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats", f"--temp-dir={temp}"], home)
        jobs = f"http://{JOBS_HEAD_IP}:{dash}"
        _wait_jobs_api(jobs, home)
        yield {"jobs": jobs, "home": home}
    finally:
        _kill(_cluster_pids(markers))
        shutil.rmtree(temp, ignore_errors=True)


def test_a_sweep_submitted_through_the_ray_jobs_api(jobs_head, tmp_path):
    """`ray job submit` (the supported way to start a driver on a remote cluster, as the module docstring shows)
    runs the sweep on the head node: the run completes there and its folder is written."""
    out = tmp_path / "out"
    driver = f"cd {ROOT} && {sys.executable} -m lidvae_mini.book.sweep 01_theorem --seeds 0 --out {out} --address auto"
    res = subprocess.run([_ray_cli(), "job", "submit", "--address", jobs_head["jobs"], "--", "bash", "-c", driver],
                         env=_ray_node_env(jobs_head["home"]), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 runs: 0 skipped (finished before), 1 completed, 0 failed" in res.stdout, res.stdout
    folder = out / "default" / "seed_0"
    assert sweep.run_state(folder) == "completed"
    assert json.loads((folder / "environment.json").read_text())["sweep"]["node"].startswith(JOBS_HEAD_IP)
