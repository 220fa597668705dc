"""Text data (lidvae_mini.data.text): He et al.'s one-sentence-per-line format, Yahoo protocol, Yelp, synthetic."""
import os
from pathlib import Path

import pytest
import torch

from lidvae_mini.data import DATASETS, MissingDataError, require_dataset
from lidvae_mini.data.text import (BOS, EOS, PAD, SPECIALS, UNK, Vocab, encode_split, length_batches, load_yahoo,
                                   load_yelp, make_synthetic_text, read_sentences)

SHARED = Path(os.environ.get("LIDVAE_DATA", "/work/shared/data"))
HAS_YAHOO = (SHARED / "yahoo" / "yahoo.valid.txt").is_file() and (SHARED / "yahoo" / "yahoo.test.txt").is_file()


def test_registered_in_datasets():
    assert "yahoo" in DATASETS and "synthetic_text" in DATASETS and "mnist" in DATASETS
    assert require_dataset("synthetic_text") is None


def test_vocab_specials_frequency_and_cap():
    sents = [["a", "b", "a"], ["c", "a", "b"]]
    v = Vocab(sents)
    assert v.itos[:4] == list(SPECIALS) and (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    assert v.itos[4:] == ["a", "b", "c"]
    capped = Vocab(sents, max_size=6)
    assert len(capped) == 6 and capped.encode(["c", "zz"]) == [BOS, UNK, UNK, EOS]
    assert capped.decode(capped.encode(["a", "b"])) == "a b"
    with pytest.raises(ValueError, match="special tokens"):
        Vocab(sents, max_size=4)
    with pytest.raises(ValueError, match="no sentences"):
        Vocab([])


def test_read_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty file"):
        read_sentences(empty)
    blank = tmp_path / "blank.txt"
    blank.write_text("a b\n   \nc\n")
    with pytest.raises(ValueError, match=":2: line has no tokens"):
        read_sentences(blank)
    with pytest.raises(MissingDataError):
        read_sentences(tmp_path / "nope.txt")


def test_length_cap_counted_and_batches_grouped():
    v = Vocab([["a"] * 5, ["b"] * 2])
    split = encode_split([["a"] * 5, ["b"] * 2, ["a", "b", "a"], ["b"] * 9], v, max_len=4)
    assert split.n_cut == 2 and [len(s) for s in split.ids] == [6, 4, 5, 6]
    assert split.n_tokens == 5 + 3 + 4 + 5
    batches = length_batches(split, batch_size=8, shuffle=True, seed=0)
    assert sorted(int(i) for idx, _ in batches for i in idx) == [0, 1, 2, 3]
    for idx, x in batches:
        assert x.shape[1] == len(split.ids[int(idx[0])])  # equal lengths, no padding
        assert (x[:, 0] == BOS).all() and (x[:, -1] == EOS).all()
    again = length_batches(split, batch_size=8, shuffle=True, seed=0)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again))


def test_yelp_loader_small_file(tmp_path):
    (tmp_path / "yelp").mkdir()
    for name in ("yelp.train.txt", "yelp.valid.txt", "yelp.test.txt"):
        (tmp_path / "yelp" / name).write_text("0\tthe food was good\n4\tbad service , never again\n")
    d = load_yelp(tmp_path)
    assert d.train.labels == [0, 4] and len(d.test) == 2
    assert d.vocab.decode(d.train.ids[0]) == "the food was good"
    (tmp_path / "yelp" / "yelp.test.txt").write_text("no tab here\n")
    with pytest.raises(ValueError, match="label<TAB>text"):
        load_yelp(tmp_path)


def test_yelp_missing_names_folder(tmp_path):
    with pytest.raises(MissingDataError, match=r"yelp\.train\.txt.*" + str(tmp_path / "yelp").replace("/", ".")):
        load_yelp(tmp_path)


def test_yahoo_missing_names_files(tmp_path):
    with pytest.raises(MissingDataError, match="yahoo.valid.txt, yahoo.test.txt"):
        load_yahoo(tmp_path)
    with pytest.raises(MissingDataError):
        require_dataset("yahoo", data_dir=tmp_path)


@pytest.mark.skipif(not HAS_YAHOO, reason="Yahoo files not in $LIDVAE_DATA/yahoo")
def test_yahoo_protocol():
    d = load_yahoo(SHARED, n_train=300, n_valid=100, n_test=50, seed=1, max_vocab=500, max_len=30)
    assert (len(d.train), len(d.valid), len(d.test)) == (300, 100, 50)
    assert len(d.vocab) == 500 and "yahoo.valid.txt" in d.protocol and "yahoo.test.txt" in d.protocol
    assert max(len(s) for s in d.train.ids) <= 32 and d.train.n_cut > 0
    tr = {tuple(s.tolist()) for s in d.train.ids}
    assert not tr & {tuple(s.tolist()) for s in d.valid.ids}  # disjoint parts of the validation file
    d2 = load_yahoo(SHARED, n_train=300, n_valid=100, n_test=50, seed=1, max_vocab=500, max_len=30)
    assert d2.vocab.itos == d.vocab.itos


def test_synthetic_keeps_true_z_and_is_seeded():
    a = make_synthetic_text(50, 20, 20, seed=3)
    b = make_synthetic_text(50, 20, 20, seed=3)
    assert a.train.z.shape == (50, 5) and a.test.z.shape == (20, 5)
    assert torch.equal(a.train.z, b.train.z) and all(torch.equal(x, y) for x, y in zip(a.train.ids, b.train.ids))
    assert all(len(s) == 12 for s in a.train.ids)  # <s> + 10 words + </s>
    c = make_synthetic_text(50, 20, 20, seed=4)
    assert not torch.equal(a.train.z, c.train.z)


def test_synthetic_latents_are_standard_normal():
    """The generator draws z ~ N(0, I_K) (the prior every text model assumes): a Kolmogorov-Smirnov test per
    dimension, and the first two moments."""
    from scipy import stats

    z = make_synthetic_text(2000, 20, 20, seed=0).train.z.numpy()
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1.0) < 0.05
    for k in range(z.shape[1]):
        assert stats.kstest(z[:, k], "norm").pvalue > 1e-3, k
