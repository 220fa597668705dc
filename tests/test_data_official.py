"""The official PPCA/GMM inputs shipped with the package, and the data-directory rules."""
from __future__ import annotations

import numpy as np
import pytest

from lidvae_mini.data import MissingDataError, data_dir, load_official, require_files
from lidvae_mini.data.paths import sha256


def test_official_ppca_matches_documented_eigenvalues():
    # ../shared/data/SOURCES.md: eigenvalues of x'x/N are 18.29, 8.42, 0.0112, ... (twod) and 12.55, 0.0119 (oned)
    for name, top in [("twod_ppca", [18.29, 8.42]), ("oned_ppca", [12.55, 0.0119])]:
        d = load_official(name)
        x = d["x"]
        assert x.shape == (500, 5)
        eig = np.sort(np.linalg.eigvalsh(x.T @ x / len(x)))[::-1]
        np.testing.assert_allclose(eig[:2], top, rtol=5e-3)  # documented to 3-4 digits


def test_official_gmm_means():
    for name, mean in [("single_gaussian", -0.994), ("overlap_gaussian", -0.347), ("nonoverlap_gaussian", -7.077)]:
        y = load_official(name)["y"]
        assert y.shape == (10000,)
        assert abs(y.mean() - mean) < 1e-3


def test_unknown_official_dataset_names_the_choices():
    with pytest.raises(ValueError, match="unknown official dataset 'threed_ppca'.*oned_ppca"):
        load_official("threed_ppca")


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LIDVAE_DATA", str(tmp_path / "env"))
    assert data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data_dir() == tmp_path / "env"
    monkeypatch.delenv("LIDVAE_DATA")
    assert data_dir().name == "lidvae_mini"


def test_require_files_names_missing_files_and_checks_sums(tmp_path):
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "a.bin").write_bytes(b"abc")
    with pytest.raises(MissingDataError, match=r"b\.bin in .*set.*LIDVAE_DATA"):
        require_files("set", ["a.bin", "b.bin"], root=tmp_path)
    good = sha256(tmp_path / "set" / "a.bin")
    assert require_files("set", ["a.bin"], root=tmp_path, checksums={"a.bin": good}) == tmp_path / "set"
    with pytest.raises(ValueError, match="checksum mismatch"):
        require_files("set", ["a.bin"], root=tmp_path, checksums={"a.bin": "0" * 64})
