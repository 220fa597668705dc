"""Summaries of several seeds' runs, and the committed results/ folders."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from lidvae_mini.book.results import aggregate_metrics, load_result, main, mean_sd_text, per_seed, summarise_runs

ROOT = Path(__file__).resolve().parents[1]


def _run(folder: Path, seed: int, metrics: dict, chapter="07_lidgmvae_pinwheel", status="completed", scale="cpu",
         **params):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "params.yaml").write_text(yaml.safe_dump({"seed": seed, "out_dir": str(folder), "epochs": 5, **params}))
    env = {"chapter": chapter, "status": status, "wall_time_s": 60.0, "git": {"commit": "a" * 40, "dirty": False},
           "device": {"cpu_count": 2, "torch_cuda": []}}
    if scale is not None:
        env["scale"] = scale
    (folder / "environment.json").write_text(json.dumps(env))
    return folder


def test_numeric_leaves_get_mean_and_sample_sd():
    agg = aggregate_metrics([{"m": {"acc": 0.5, "au": 1, "name": "x"}}, {"m": {"acc": 1.0, "au": 3, "name": "x"}},
                             {"m": {"acc": 0.0, "au": 2, "name": "x"}}])
    assert agg["m"]["acc"]["mean"] == pytest.approx(0.5)
    assert agg["m"]["acc"]["sd"] == pytest.approx(np.std([0.5, 1.0, 0.0], ddof=1))
    assert agg["m"]["au"] == {"mean": 2.0, "sd": 1.0, "n": 3, "values": [1.0, 3.0, 2.0]}
    assert agg["m"]["name"] == "x"


def test_none_values_are_left_out_and_lists_averaged_elementwise_or_dropped():
    agg = aggregate_metrics([{"acc": None, "hist": [1, 2], "ll": -3.0, "tags": ["a"], "same": [1, 2]},
                             {"acc": 0.7, "hist": [1, 3], "ll": -1.0, "tags": ["b"], "same": [1, 2]}])
    assert agg["acc"]["n"] == 1 and agg["acc"]["sd"] is None and agg["acc"]["mean"] == pytest.approx(0.7)
    assert agg["hist"]["mean"] == [1.0, 2.5] and agg["hist"]["values"] == [[1.0, 2.0], [1.0, 3.0]]
    assert agg["hist"]["sd"] == pytest.approx([0.0, np.std([2, 3], ddof=1)])
    assert "tags" not in agg and agg["same"] == [1, 2]
    assert "x" not in aggregate_metrics([{"x": [1, 2]}, {"x": [1, 2, 3]}])   # lengths differ: dropped
    assert agg["ll"]["mean"] == pytest.approx(-2.0)
    assert aggregate_metrics([{"a": None}, {"a": None}]) == {"a": None}
    assert aggregate_metrics([{"flag": True}, {"flag": True}]) == {"flag": True}  # booleans are not averaged


def test_runs_with_different_keys_are_refused():
    with pytest.raises(ValueError, match="different metric keys"):
        aggregate_metrics([{"a": 1.0}, {"b": 1.0}])
    with pytest.raises(ValueError, match="at least one"):
        aggregate_metrics([])


def test_summary_folder_orders_seeds_and_records_every_run(tmp_path):
    dirs = [_run(tmp_path / f"s{s}", s, {"acc": float(s)}) for s in (2, 0, 1)]
    out = summarise_runs(dirs, tmp_path / "summary")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["acc"]["values"] == [0.0, 1.0, 2.0]
    params = yaml.safe_load((out / "params.yaml").read_text())
    assert params == {"epochs": 5, "seeds": [0, 1, 2]}
    env = json.loads((out / "environment.json").read_text())
    assert env["n_runs"] == 3 and env["wall_time_s_total"] == 180.0 and env["commits"] == ["a" * 40]
    assert env["scale"] == "cpu"


@pytest.mark.parametrize("change, match", [
    (dict(epochs=6), "differs .* epochs"),
    (dict(chapter="08_images"), "different chapters"),
    (dict(status="failed: KeyboardInterrupt"), "did not complete"),
    (dict(seed=0), "seed occurs twice"),
    (dict(scale="paper"), "different scales"),
    (dict(scale="full"), "unknown scale 'full'"),
])
def test_summary_refuses_runs_that_do_not_belong_together(tmp_path, change, match):
    a = _run(tmp_path / "a", 0, {"acc": 1.0})
    kw = {"seed": 1, **change}
    seed = kw.pop("seed")
    b = _run(tmp_path / "b", seed, {"acc": 0.5}, **kw)
    with pytest.raises(ValueError, match=match):
        summarise_runs([a, b], tmp_path / "out")


def test_incomplete_run_folder_names_the_missing_file(tmp_path):
    a = _run(tmp_path / "a", 0, {"acc": 1.0})
    (a / "params.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="params.yaml"):
        summarise_runs([a], tmp_path / "out")


def test_command_line_writes_the_summary_and_load_result_reads_it(tmp_path, capsys):
    dirs = [str(_run(tmp_path / "runs" / f"s{s}", s, {"acc": 0.25 * s})) for s in (0, 1)]
    assert main(["aggregate", *dirs, "--out", str(tmp_path / "results" / "07_lidgmvae_pinwheel" / "cpu")]) == 0
    res = load_result("07_lidgmvae_pinwheel", "cpu", root=tmp_path / "results")
    assert res.metrics["acc"]["mean"] == pytest.approx(0.125) and res.params["seeds"] == [0, 1]
    line = res.provenance()
    assert "commit aaaaaaa" in line and "seeds [0, 1]" in line and "2 min" in line and "CPU (2 cores)" in line
    assert res.scale == "cpu" and line.startswith("cpu scale (") and "below the paper's" in line
    assert "(cpu scale)" in capsys.readouterr().out
    assert load_result("07_lidgmvae_pinwheel", "gpu", root=tmp_path / "results") is None
    with pytest.raises(SystemExit):
        main(["aggregate", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert "missing" in capsys.readouterr().err


def test_empty_results_are_refused_even_with_include_failed(tmp_path, capsys):
    """A run that skipped everything (its metrics hold only params and the paper's numbers) is not a result."""
    a = _run(tmp_path / "a", 0, {"acc": 1.0, "params": {"n": 5}})
    b = _run(tmp_path / "b", 1, {"params": {"n": 5}, "paper": {"ll": -95.4}, "sweep": {"dataset": "x", "results": {}}})
    for include_failed in (False, True):
        with pytest.raises(ValueError, match=f"empty results .*{b}"):
            summarise_runs([a, b], tmp_path / "out", include_failed=include_failed)
    with pytest.raises(SystemExit) as exit_:
        main(["aggregate", str(a), str(b), "--out", str(tmp_path / "out"), "--include-failed"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "empty results" in err and str(b) in err
    assert not (tmp_path / "out").exists()


def test_command_line_refuses_runs_that_did_not_complete_unless_asked(tmp_path, capsys):
    a = _run(tmp_path / "a", 0, {"acc": 1.0})
    b = _run(tmp_path / "b", 1, {"acc": 0.2}, status="failed: PapermillExecutionError")
    with pytest.raises(SystemExit) as exit_:
        main(["aggregate", str(a), str(b), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "did not complete" in err and str(b) in err and "--include-failed" in err
    assert main(["aggregate", str(a), str(b), "--out", str(tmp_path / "out"), "--include-failed"]) == 0


def test_scale_of_runs_that_record_none_must_be_stated_and_must_not_contradict(tmp_path, capsys):
    old = [_run(tmp_path / f"s{s}", s, {"acc": 0.5}, scale=None) for s in (0, 1)]
    with pytest.raises(ValueError, match="record no scale.*--scale"):
        summarise_runs(old, tmp_path / "out")
    out = summarise_runs(old, tmp_path / "results" / "07_lidgmvae_pinwheel" / "cpu", scale="cpu")
    assert json.loads((out / "environment.json").read_text())["scale"] == "cpu"
    assert load_result("07_lidgmvae_pinwheel", "cpu", root=tmp_path / "results").scale == "cpu"
    labelled = _run(tmp_path / "s2", 2, {"acc": 0.5}, scale="cpu")
    with pytest.raises(ValueError, match="--scale paper contradicts the runs, which record scale cpu"):
        summarise_runs([labelled], tmp_path / "out2", scale="paper")
    with pytest.raises(SystemExit) as exit_:
        main(["aggregate", *map(str, old), "--out", str(tmp_path / "out3")])
    assert exit_.value.code == 2 and "record no scale" in capsys.readouterr().err


def test_load_result_refuses_a_folder_without_a_scale_label(tmp_path):
    folder = _run(tmp_path / "results" / "07_lidgmvae_pinwheel" / "x", 0, {"acc": 1.0}, scale=None)
    with pytest.raises(ValueError, match="needs a 'scale' label"):
        load_result("07_lidgmvae_pinwheel", "x", root=tmp_path / "results")
    env = json.loads((folder / "environment.json").read_text())
    (folder / "environment.json").write_text(json.dumps({**env, "scale": "paper", "scale_note": "why"}))
    res = load_result("07_lidgmvae_pinwheel", "x", root=tmp_path / "results")
    assert res.scale == "paper" and res.provenance().startswith("paper scale (the paper's data size")
    assert res.provenance().endswith("Scale note: why")


def _committed_result_folders():
    base = ROOT / "results"
    return sorted(p.parent for p in base.glob("*/*/metrics.json")) if base.is_dir() else []


@pytest.mark.parametrize("folder", _committed_result_folders(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_results_are_complete_and_traceable(folder):
    """Every results/CHAPTER/SETTING folder has its three files, is listed in results/README.md, comes from a
    chapter that exists, and names commits that are in this repository's history (when it has a full one)."""
    res = load_result(folder.parent.name, folder.name, root=ROOT / "results")
    assert (ROOT / "book" / f"{folder.parent.name}.md").exists()
    assert f"{folder.parent.name}/{folder.name}" in (ROOT / "results" / "README.md").read_text()
    assert res.metrics and any(k not in ("params", "paper") for k in res.metrics)
    env = res.environment
    commits = env.get("commits") or [env["git"]["commit"]]
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
    if (ROOT / ".git").exists() and shallow == "false":   # a shallow clone lacks the older commits
        for c in commits:
            ok = subprocess.run(["git", "cat-file", "-e", f"{c}^{{commit}}"], cwd=ROOT, capture_output=True)
            assert ok.returncode == 0, f"{folder}: commit {c} is not in this repository's history"


@pytest.mark.parametrize("folder", _committed_result_folders(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_results_carry_a_scale_label_shown_in_their_provenance_and_readme(folder):
    """Every results/CHAPTER/SETTING records "scale" (ci, cpu or paper) in environment.json; load_result exposes
    it, the provenance line chapters print starts with it, and results/README.md's row for it names it."""
    from lidvae_mini.book.provenance import SCALES, metrics_have_results

    env = json.loads((folder / "environment.json").read_text())
    assert env.get("scale") in SCALES, f"{folder}: no valid scale label"
    res = load_result(folder.parent.name, folder.name, root=ROOT / "results")
    assert res.scale == env["scale"] and res.provenance().startswith(f"{res.scale} scale (")
    assert metrics_have_results(res.metrics)
    rows = [line for line in (ROOT / "results" / "README.md").read_text().splitlines()
            if line.startswith(f"| `{folder.parent.name}/{folder.name}` |")]
    assert len(rows) == 1 and f"| `{res.scale}` |" in rows[0], f"results/README.md: no row with the scale of {folder}"


def test_per_seed_values_and_their_text():
    agg = aggregate_metrics([{"a": 1.0}, {"a": None}, {"a": 3.0}])
    v = per_seed(agg["a"])
    assert np.isnan(v[1]) and v[0] == 1.0 and v[2] == 3.0
    assert mean_sd_text(v, 2) == "2.00 ± 1.41"
    assert mean_sd_text([0.5]) == "0.500" and mean_sd_text([]) == "n/a"
    with pytest.raises(TypeError, match="aggregated"):
        per_seed({"gmvae": 1.0})


def test_failed_runs_are_admitted_only_on_request_and_then_listed(tmp_path):
    a = _run(tmp_path / "a", 0, {"acc": 1.0})
    b = _run(tmp_path / "b", 1, {"acc": 0.2}, status="failed: PapermillExecutionError")
    with pytest.raises(ValueError, match="did not complete"):
        summarise_runs([a, b], tmp_path / "out")
    out = summarise_runs([a, b], tmp_path / "results" / "07_lidgmvae_pinwheel" / "cpu", include_failed=True)
    env = json.loads((out / "environment.json").read_text())
    assert env["failed"] == [{"seed": 1, "status": "failed: PapermillExecutionError"}]
    res = load_result("07_lidgmvae_pinwheel", "cpu", root=tmp_path / "results")
    assert res.metrics["acc"]["n"] == 2 and "failed after writing their metrics: seeds [1]" in res.provenance()


def test_provenance_names_the_seeds_of_a_chosen_parameter():
    res = load_result("08_images", "cpu_table_realnvp")
    assert f"seeds {res.params['seeds']}" in res.provenance(seeds_parameter="seeds")
    assert "seeds 0;" in res.provenance(seeds_parameter="seed")          # the unused single `seed`
    with pytest.raises(ValueError, match="not a parameter"):
        res.provenance(seeds_parameter="no_such_seeds")
