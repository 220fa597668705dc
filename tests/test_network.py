"""Nothing touches the network (issue 12): importing every module of the package and running a fast chapter through
``python -m lidvae_mini.book.reproduce`` make no connection, datagram or name lookup off the loopback interface.

The guard (``conftest.NETWORK_GUARD``) is a ``sitecustomize`` on ``PYTHONPATH``: every Python process started under
it loads it, the notebook kernel included (checked: the kernel's process appears in the guard's list of processes),
and a refused attempt raises ``OSError`` in that process and is written to a log that fails the test. The kernel's
own ZeroMQ sockets are on 127.0.0.1. The chapter is ``01_theorem`` (no data files, a few seconds).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, install_network_guard

IMPORT_ALL = """
import importlib, pkgutil
import lidvae_mini
names = sorted(m.name for m in pkgutil.walk_packages(lidvae_mini.__path__, "lidvae_mini."))
for name in names:
    importlib.import_module(name)
print(len(names), "modules")
"""


@pytest.fixture()
def guarded(tmp_path):
    env = install_network_guard(tmp_path / "guard")
    seen = tmp_path / "guard" / "seen.log"
    yield {**os.environ, **env, "LIDVAE_TEST_NETWORK_SEEN": str(seen), "TQDM_DISABLE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}, tmp_path / "guard"


def _refused(folder) -> str:
    log = folder / "refused.log"
    return log.read_text() if log.exists() else ""


def test_the_guard_refuses_connections_and_name_lookups(guarded):
    env, folder = guarded
    code = ("import socket\n"
            "for attempt in (lambda: socket.create_connection(('192.0.2.1', 9), timeout=0.1),\n"
            "                lambda: socket.getaddrinfo('example.org', 443),\n"
            "                lambda: socket.gethostbyname('pypi.org'),\n"
            "                lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('192.0.2.2', 53))):\n"
            "    try:\n        attempt()\n    except OSError as err:\n        print(err)\n"
            "socket.getaddrinfo('localhost', 80)\n")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("test network guard") == 4, res.stdout + res.stderr
    log = _refused(folder)
    assert all(what in log for what in ("192.0.2.1", "example.org", "pypi.org", "192.0.2.2")), log


def test_import_and_a_chapter_run_stay_off_the_network(guarded, tmp_path):
    env, folder = guarded
    res = subprocess.run([sys.executable, "-c", IMPORT_ALL], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not _refused(folder), _refused(folder)

    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "lidvae_mini.book.reproduce", "01_theorem", "--out", str(out)], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads((out / "environment.json").read_text())["status"] == "completed"
    assert not _refused(folder), _refused(folder)
    seen = (folder / "seen.log").read_text()
    assert "ipykernel_launcher" in seen, f"the notebook kernel did not load the guard:\n{seen}"
