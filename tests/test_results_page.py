"""The results page (book/results.md): every committed result folder is on it, and every paper table and figure
has a status with evidence that exists in the book."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import BOOK, ROOT, toc_files
from lidvae_mini.book import results

FOLDERS = sorted(f"results/{p.parent.name}/{p.name}" for p in (ROOT / "results").glob("*/*") if p.is_dir())
HTML = ROOT / "_build" / "html" / "book" / "results.html"


def _labels() -> dict[str, str]:
    """``{label: page}`` of every MyST label ``(label)=`` of the book's pages."""
    return {m: p.stem for p in BOOK.glob("*.md") for m in re.findall(r"^\(([\w.:-]+)\)=\s*$", p.read_text(), re.M)}


def test_every_result_folder_is_a_row_of_the_generated_table():
    assert "results/07_lidgmvae_pinwheel/cpu" in FOLDERS
    rows = results.result_rows()
    assert [r.folder for r in rows] == FOLDERS
    table = results.results_table_markdown(rows)
    missing = [f for f in FOLDERS if f"`{f}`" not in table]
    assert missing == [], f"result folders not on the results page: {missing}"


def test_rows_carry_scale_seeds_device_commit_wall_time_and_a_section():
    labels = _labels()
    for r in results.result_rows():
        env = json.loads((ROOT / r.folder / "environment.json").read_text())
        assert r.scale == env["scale"] and r.seeds, r
        assert re.fullmatch(r"[0-9a-f]{40}", r.commits[0]), r
        assert r.wall_time_s and r.wall_time_s > 0 and r.device, r
        if (BOOK / f"{r.chapter}.md").exists():
            assert r.sections, f"{r.folder}: no page calls load_result({r.chapter!r}, {r.setting!r})"
        for page, label in r.sections:
            assert label is None or labels.get(label) == page, (r.folder, page, label)


def test_committed_sections_are_labelled():
    """The page links to the section itself, not only to the chapter, for every committed result."""
    unlabelled = [r.folder for r in results.result_rows() if r.sections and not any(lb for _, lb in r.sections)]
    assert unlabelled == [], ("label the heading above the load_result call, e.g. `(gmm-committed)=`, for "
                              f"{unlabelled}")


def test_a_new_result_folder_and_its_chapter_section_appear_without_editing_the_page(tmp_path):
    folder = tmp_path / "results" / "10_toy" / "cpu"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"elbo": -90.0}))
    (folder / "params.yaml").write_text(yaml.safe_dump({"seeds": [0, 1, 2], "epochs": 5}))
    env = {"chapter": "10_toy", "scale": "cpu", "n_runs": 3, "commits": ["a" * 40], "dirty": False,
           "wall_time_s_total": 600.0, "runs": [{"device": {"cpu_count": 2, "torch_cuda": []}}]}
    (folder / "environment.json").write_text(json.dumps(env))
    book = tmp_path / "book"
    book.mkdir()
    (book / "10_toy.md").write_text("# Toy\n\n```{code-cell} ipython3\n# Not a heading\nx = 1\n```\n\n(toy-cpu)=\n"
                                    "## At the cpu scale\n\n```{code-cell} ipython3\n# a comment heading\n"
                                    "res = load_result('10_toy', 'cpu')\n```\n")
    rows = results.result_rows(tmp_path / "results", book)
    assert [(r.folder, r.scale, r.seeds, r.sections) for r in rows] == \
        [("results/10_toy/cpu", "cpu", {"seeds": [0, 1, 2]}, (("10_toy", "toy-cpu"),))]
    table = results.results_table_markdown(rows, book)
    assert "{doc}`10_toy`" in table and "{ref}`toy-cpu`" in table and "seeds 0–2 |" in table and "10 min" in table


def test_an_incomplete_result_folder_fails_the_page(tmp_path):
    (tmp_path / "08_images" / "broken").mkdir(parents=True)
    (tmp_path / "08_images" / "broken" / "params.yaml").write_text("seed: 0\n")
    with pytest.raises(FileNotFoundError, match="missing metrics.json, environment.json"):
        results.result_rows(tmp_path)


def test_page_is_in_the_toc_and_uses_the_generating_directives():
    text = (BOOK / "results.md").read_text()
    assert "```{committed-results}" in text and "```{paper-status}" in text
    assert "book/results" in toc_files()
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "results_page" in config["sphinx"]["local_extensions"]


def test_every_table_and_figure_of_the_paper_has_a_status_and_existing_evidence():
    items = results.paper_status()
    named = {m for it in items for m in re.findall(r"(?:Figure|Table) \d", it["item"])}
    assert named >= {"Figure 1", "Figure 2", "Figure 3", "Figure 4", "Table 1", "Table 2"}, named
    labels, pages = _labels(), {p.stem for p in BOOK.glob("*.md")}
    for it in items:
        for ev in it["evidence"]:
            if "ref" in ev:
                assert ev["ref"] in labels, f"{it['item']}: no label {ev['ref']!r} in the book"
            else:
                assert ev["doc"] in pages, f"{it['item']}: no page {ev['doc']!r}"
    table = results.paper_status_markdown(items)
    assert all(f"**{it['status']}**" in table for it in items)


def test_paper_status_refuses_an_unknown_status(tmp_path):
    bad = tmp_path / "status.yml"
    bad.write_text(yaml.safe_dump({"items": [{"item": "Figure 9", "claim": "c", "status": "mostly", "scale": "cpu",
                                              "finding": "f", "evidence": [{"ref": "x"}]}]}))
    with pytest.raises(ValueError, match="status 'mostly'"):
        results.paper_status(bad)


def test_rendered_page_lists_every_folder():
    if not HTML.exists():
        pytest.skip("no built book (_build/html): `make test` builds it first")
    html = HTML.read_text()
    missing = [f for f in FOLDERS if f not in html]
    assert missing == [], f"result folders missing from the rendered results page: {missing}"
