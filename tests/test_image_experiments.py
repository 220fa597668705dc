"""The images pages' decision rules and generated sentences (lidvae_mini.experiments.image_tables and
image_ablation), on small hand-made tables whose answers are known."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lidvae_mini.experiments import image_ablation as A
from lidvae_mini.experiments import image_tables as T


def _row(ll, mi=1.0, kl=2.0, au=1.0, mi_y=0.5, kl_y=0.5, acc=0.3, clusters=5, chance=0.11, mixture=True):
    r = {"iwae_ll": ll, "MI": mi, "KL": kl, "AU": au, "acc_hungarian": acc, "chance": chance}
    if mixture:
        r.update(MI_y=mi_y, KL_y=kl_y, clusters_used=clusters)
    return r


def test_summarise_gives_the_mean_and_the_sample_sd_and_none_without_numbers():
    out = T.summarise([{"a": 1.0, "b": None}, {"a": 3.0, "b": None}])
    assert out["a"] == 2.0 and out["a_sd"] == pytest.approx(np.sqrt(2.0))
    assert out["b"] is None and "b_sd" not in out
    assert "a_sd" not in T.summarise([{"a": 1.0}])                       # one seed: no sd


def test_findings_count_collapsed_rows_and_rank_the_lidgmvae():
    rows = {"gmvae": _row(-100.0, mi_y=0.5), "lidgmvae": _row(-110.0, mi_y=0.01, kl_y=2.3),
            "sa_vae": _row(-95.0, mi_y=0.3), "vae": _row(-105.0, mixture=False, mi=3.0, kl=2.0)}
    text = " ".join(T.findings(rows, T.PAPER["mnist"]))
    assert "One of three mixture rows has a collapsed" in text
    assert "the worst test log-likelihood of the four rows" in text
    assert "In the paper's table the LIDGMVAE has the highest KL, the highest MI and the highest LL" in text
    assert "MI ≤ KL holds for three of four rows" in text                  # the VAE row breaks it


def test_findings_without_mixture_rows_still_describe_the_table():
    rows = {"vae": _row(-100.0, mixture=False), "beta_vae": _row(-101.0, mixture=False)}
    assert not any("collapsed" in b for b in T.findings(rows))
    assert "**The VAE is the only row**" in T.findings({"vae": _row(-100.0, mixture=False)})[-1]


def _sweep(gmvae_acc, lid_acc, sd=None):
    def r(acc):
        out = {"acc_hungarian": acc, "iwae_ll": -100.0, "MI_y": 0.5}
        if sd is not None:
            out.update(acc_hungarian_sd=sd, iwae_ll_sd=sd, MI_y_sd=sd)
        return out
    return {d: {"gmvae": r(a), "lidgmvae": r(b)} for d, a, b in zip((1, 3), gmvae_acc, lid_acc)}


def test_figure1cd_never_says_as_in_the_paper_for_one_seed():
    one = T.figure1cd(_sweep((0.5, 0.3), (0.5, 0.6)))
    assert not any("as in the paper" in b for _, _, b in one)
    assert one[0][1] is True and "the paper's direction (one seed" in one[0][2]


def test_figure1cd_resolves_changes_against_the_sd_over_seeds():
    held = T.figure1cd(_sweep((0.5, 0.3), (0.5, 0.6), sd=0.01))
    assert held[0][1] is True and "as in the paper" in held[0][2]
    noisy = T.figure1cd(_sweep((0.5, 0.3), (0.5, 0.6), sd=0.5))          # the fall is inside the noise
    assert noisy[0][1] is False and "does not change beyond the noise" in noisy[0][2]


def _result(datasets, name):
    return SimpleNamespace(params={"datasets": datasets}, name=name)


def test_table_datasets_leave_each_dataset_to_the_newest_table():
    new, old = _result(["mnist"], "new"), _result(["mnist", "omniglot"], "old")
    tables = [new, None, old]
    assert T.table_datasets(new, tables) == ["mnist"] and T.table_datasets(old, tables) == ["omniglot"]
    with pytest.raises(ValueError):
        T.table_datasets(_result([], "other"), tables)


def _ablation(mi):
    """Per-seed cells from {cell: [MI_y per seed]}; the other metrics equal across cells."""
    return {m: {"MI_y": v, "AU_y": [0.5] * len(v), "KL_y": [1.0] * len(v), "acc_hungarian": [0.3] * len(v),
                "iwae_ll": [-100.0] * len(v)} for m, v in mi.items()}


def test_the_decision_rule_needs_the_same_sign_on_every_seed_and_the_resolution():
    abl = _ablation({"gmvae": [0.1, 0.1, 0.1], "gmvae_example1": [0.3, 0.3, 0.3],
                     "lidgmvae_learned": [0.1, 0.1, 0.1], "lidgmvae": [0.3, 0.3, 0.3]})
    eff = A.ablation_effects(abl, "MI_y")
    assert eff["prior", "mlp"][:2] == (pytest.approx(0.2), True)
    assert A.keeps_active(A.ablation_verdict(abl)) == ["prior"]
    mixed = _ablation({"gmvae": [0.1, 0.1, 0.1], "gmvae_example1": [0.5, 0.5, 0.05],     # down on one seed
                       "lidgmvae_learned": [0.1, 0.1, 0.1], "lidgmvae": [0.12, 0.12, 0.12]})  # below 0.05
    eff = A.ablation_effects(mixed, "MI_y")
    assert not eff["prior", "mlp"][1] and not eff["prior", "injective"][1]
    assert A.keeps_active(A.ablation_verdict(mixed)) == []
    assert "no factor keeps $y$ active on its own" in " ".join(A.ablation_findings(mixed, 10))


def test_claim_findings_say_where_the_claim_fails():
    abl = _ablation({"gmvae": [0.5, 0.5], "gmvae_example1": [0.5, 0.5], "lidgmvae_learned": [0.1, 0.1],
                     "lidgmvae": [0.1, 0.1]})
    text = A.claim_findings(abl)
    assert len(text) == 2 and all("the claim fails in $I_q(x; y)$" in b for b in text)


def test_conclusions_read_the_committed_runs():
    from lidvae_mini.book.results import load_result

    tables = [load_result("08_images", "cpu_table_realnvp"), load_result("08_images", "cpu_table1_realnvp"),
              load_result("08_images", "cpu_table1_omniglot_realnvp")]
    ranks = T.lidgmvae_ranks(tables)
    assert set(ranks) == {"mnist", "fashion_mnist", "omniglot"}
    bullets = A.conclusions(tables, load_result("08_images", "cpu_sweep"))
    assert len(bullets) == 4 and bullets[-1].startswith("Figure 1(c, d) (cpu scale")
    for name, (_, _, rank, n) in ranks.items():
        assert any(b.startswith(name) and "ranks" in b for b in bullets) and 1 <= rank <= n
