"""metrics.json writing and the environment record."""
from __future__ import annotations

import json

import numpy as np

import pytest

from lidvae_mini.book.provenance import SCALES, check_scale, environment_info, metrics_have_results, save_metrics


def test_save_metrics_converts_arrays_and_non_finite(tmp_path):
    path = save_metrics({"sd": np.array([0.5, 1.0]), "kl": np.float32(0.25), "bad": float("nan"),
                         "nested": {1: (np.int64(3),)}}, tmp_path / "out")
    assert json.loads(path.read_text()) == {"sd": [0.5, 1.0], "kl": 0.25, "bad": None, "nested": {"1": [3]}}
    assert save_metrics({"a": 1}, None) is None


def test_environment_records_commit_versions_and_device():
    env = environment_info()
    assert set(env) == {"git", "python", "platform", "packages", "device"}
    assert env["packages"]["numpy"] == np.__version__
    assert env["device"]["cpu_count"] >= 1


def test_untracked_package_file_makes_the_tree_dirty(tmp_path):
    import subprocess

    from lidvae_mini.book.provenance import git_commit

    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    run("init", "-q")
    (tmp_path / "lidvae_mini").mkdir()
    (tmp_path / "lidvae_mini" / "a.py").write_text("x = 1\n")
    run("add", "-A")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert git_commit(tmp_path)["dirty"] is False
    (tmp_path / "lidvae_mini" / "new.py").write_text("y = 2\n")
    assert git_commit(tmp_path)["dirty"] is True


def test_a_result_is_a_finite_number_outside_params_and_paper():
    assert metrics_have_results({"gmvae": {"acc": 0.2}, "params": {"n": 5}})
    assert metrics_have_results({"ll": {"mean": -2.0, "sd": None, "n": 1, "values": [-2.0]}})
    assert metrics_have_results({"curve": [[0.0, 1.0]]})
    # what a chapter that skipped everything writes: its parameters, the paper's numbers, empty containers
    assert not metrics_have_results({"params": {"n": 5, "seeds": [0]}, "paper": {"mnist": [1.0, 1.8]},
                                     "depth_sweep": {"dataset": "fashion_mnist", "results": {}}})
    assert not metrics_have_results({"flag": True, "name": "x", "acc": None, "nan": float("nan")})
    assert not metrics_have_results({}) and not metrics_have_results(None) and not metrics_have_results([1.0])


def test_scale_labels():
    assert tuple(SCALES) == ("ci", "cpu", "paper")
    assert check_scale("paper") == "paper"
    for bad in (None, "full", "CPU"):
        with pytest.raises(ValueError, match="not one of ci, cpu, paper"):
            check_scale(bad)
