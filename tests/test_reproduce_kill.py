"""A ``reproduce`` run SIGKILLed while its notebook runs (a real kill of the process group: the CLI and its
kernel) leaves the earlier run in ``--out`` whole, and the rerun replaces it without mixing the two runs' files
(issue 12, "Kill and resume")."""
import os
import signal
import subprocess
import sys
import time

import jupytext
import nbformat
import pytest

from test_reproduce import TINY_CHAPTER

# The tiny chapter writes its metrics, then waits for a file that never comes: the kill lands mid-run, after
# the new run has written a metrics.json of its own (in its hidden sibling folder).
SLOW_CHAPTER = TINY_CHAPTER.replace(
    'save_metrics({"n": n, "total": sum(range(n)), "label": label}, out_dir)',
    'save_metrics({"n": n, "total": sum(range(n)), "label": label}, out_dir)\n'
    'import pathlib, time\n'
    'while label == "slow" and not pathlib.Path(out_dir, "never").exists():\n'
    '    time.sleep(0.1)')


def _cli(book, out, *args):
    return [sys.executable, "-m", "lidvae_mini.book.reproduce", "00_tiny", "--book", str(book), "--out", str(out), *args]


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGKILL are POSIX")
def test_killed_reproduce_run_leaves_the_earlier_run_whole_and_the_rerun_does_not_mix(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    (book / "00_tiny.md").write_text(SLOW_CHAPTER)
    nbformat.write(jupytext.read(book / "00_tiny.md"), book / "00_tiny.ipynb")
    out = tmp_path / "run"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    first = subprocess.run(_cli(book, out, "-p", "n=4"), capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert '"total": 6' in before["metrics.json"].decode()

    partial = tmp_path / ".run.partial"
    proc = subprocess.Popen(_cli(book, out, "-p", "n=5", "-p", "label=slow", "--overwrite"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (partial / "metrics.json").exists():          # the new run is inside its notebook
            assert proc.poll() is None, "the slow run stopped before it was killed"
            assert time.monotonic() < deadline, "the slow run never wrote its metrics"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)                     # the CLI and its kernel, at once
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # the earlier run, byte for byte
    assert '"total": 10' in (partial / "metrics.json").read_text()      # the killed run's output, kept apart

    rerun = subprocess.run(_cli(book, out, "-p", "n=6", "--overwrite"), capture_output=True, text=True, env=env,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert not partial.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book", "run"]
    assert '"total": 15' in (out / "metrics.json").read_text()
    assert "n: 6" in (out / "params.yaml").read_text() and "label: a" in (out / "params.yaml").read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(before)       # the same files, all from the rerun
