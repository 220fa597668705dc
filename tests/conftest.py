"""Shared test configuration: repository paths, the chapter list, the network guard of subprocesses, and how
``pytest -n N --dist loadgroup`` (``make test``) shares the tests among workers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


def toc_files() -> list[str]:
    """Every ``file:`` entry of ``_toc.yml`` (root included), without extension."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return files


def chapter_sources() -> list[Path]:
    """MyST notebook chapters: ``book/*.md`` whose header declares a jupytext pairing."""
    return sorted(p for p in BOOK.glob("*.md") if p.read_text().startswith("---\njupytext:"))


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine (restored afterwards)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------------------
# Parallel runs (pytest-xdist, ``make test``: ``-n 2 --dist loadgroup --no-loadscope-reorder``)

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Every test module runs on one worker (its module fixtures are built once, and the Ray clusters of
    ``test_sweep.py`` never meet another), except tests marked ``xdist_group`` themselves (one chapter each in
    ``test_determinism.py``); chapter runs go first, so the longest start first and the workers end together.
    Runs before pytest-xdist turns the groups into scheduling scopes; harmless without xdist."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(Path(str(item.path)).stem))
    items.sort(key=lambda item: item.get_closest_marker("chapter_run") is None)   # stable: order kept otherwise


# ------------------------------------------------------------------------------------------------------------
# Network guard for subprocesses: a ``sitecustomize`` on PYTHONPATH, so every Python process started with it
# (notebook kernels, Ray's processes) refuses and records network use off the loopback interface.

NETWORK_GUARD = r"""
# Written by tests/conftest.py (install_network_guard): refuse and record network use off the loopback interface.
import ipaddress, os, socket, sys, traceback

_LOG = os.environ.get("LIDVAE_TEST_NETWORK_LOG")
_HOSTNAME = socket.gethostname()
if os.environ.get("LIDVAE_TEST_NETWORK_SEEN"):        # which processes loaded the guard (their command lines)
    try:
        with open("/proc/self/cmdline", "rb") as _f:
            _cmd = _f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        _cmd = " ".join(sys.argv)
    with open(os.environ["LIDVAE_TEST_NETWORK_SEEN"], "a") as _f:
        _f.write(f"{os.getpid()} {_cmd}\n")


def _loopback(host):
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in ("localhost", "", _HOSTNAME):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or ip.is_unspecified or bool(mapped and mapped.is_loopback)


def _refuse(kind, what):
    if _LOG:
        with open(_LOG, "a") as f:
            stack = "".join(traceback.format_stack()[-6:-2])
            f.write(f"{kind} {what!r} by pid {os.getpid()} {sys.argv[:2]}\n{stack}\n")
    raise OSError(f"test network guard: {kind} {what!r} is not on the loopback interface")


_connect, _connect_ex, _sendto, _getaddrinfo = (socket.socket.connect, socket.socket.connect_ex,
                                                 socket.socket.sendto, socket.getaddrinfo)
_gethostbyname, _gethostbyname_ex = socket.gethostbyname, socket.gethostbyname_ex


def _check(sock, addr, kind):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(addr, tuple) and not _loopback(addr[0]):
        _refuse(kind, addr)


def connect(self, addr):
    _check(self, addr, "connect")
    return _connect(self, addr)


def connect_ex(self, addr):
    _check(self, addr, "connect")
    return _connect_ex(self, addr)


def sendto(self, data, *args):
    _check(self, args[-1], "sendto")
    return _sendto(self, data, *args)


def getaddrinfo(host, *args, **kwargs):
    if host is not None and not _loopback(host):
        _refuse("name lookup", host)
    return _getaddrinfo(host, *args, **kwargs)


def gethostbyname(host):
    if not _loopback(host):
        _refuse("name lookup", host)
    return _gethostbyname(host)


def gethostbyname_ex(host):
    if not _loopback(host):
        _refuse("name lookup", host)
    return _gethostbyname_ex(host)


socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = connect, connect_ex, sendto
socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex = getaddrinfo, gethostbyname, gethostbyname_ex
"""


def install_network_guard(folder: Path) -> dict:
    """Write the guard's ``sitecustomize.py`` into ``folder``; return the environment variables that put it on a
    subprocess's path (``PYTHONPATH``, the repository next) and name its log (``folder/refused.log``, which exists
    only if something was refused). A process started with these variables passes them on to its children."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(NETWORK_GUARD)
    path = os.pathsep.join(p for p in (str(folder), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "LIDVAE_TEST_NETWORK_LOG": str(folder / "refused.log")}
