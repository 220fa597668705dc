"""Text data for the sequential VAEs of chapter 09: He et al. (2019)'s one-sentence-per-line format, Yahoo, Yelp
and a synthetic corpus with its true latents.

Format (He et al. 2019, ``jxhe/vae-lagging-encoder``, ``data/text_data.py``; read by the paper's text code): one
tokenised sentence (document) per line, tokens separated by whitespace; Yelp lines are ``label<TAB>text``. Every
sentence is encoded as ``<s> w_1 ... w_n </s>``; the vocabulary is built from the **training split only** and
starts with the four special tokens ``<pad> <s> </s> <unk>`` (ids 0, 1, 2, 3). Words outside the vocabulary become
``<unk>``; Yahoo's own ``_UNK`` token is an ordinary word.

* :func:`load_yahoo`: Yahoo Answers (Yang et al. 2017). Only ``yahoo.valid.txt`` and ``yahoo.test.txt`` (10,000
  documents each) are available here; the training file could not be obtained. **Protocol**: train on a seeded
  split of the validation file, select on its held-out part, test on the test file.
* :func:`load_yelp`: Yelp reviews (Yang et al. 2017), ``yelp.{train,valid,test}.txt`` with ``label<TAB>text``; not
  shipped, a missing file raises :class:`~lidvae_mini.data.MissingDataError` naming the folder.
* :func:`make_synthetic_text`: sentences drawn from a randomly initialised two-layer LSTM language model
  conditioned on ``z ~ N(0, I_5)`` (vocabulary 1,000 words, length 10: He et al.'s sizes), **keeping the true z**.

:func:`length_batches` groups sentences of equal length into batches (He et al.'s ``create_data_batch``), so no
batch needs padding.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from .._checks import check_choice, check_int
from . import images as _images
from .paths import MissingDataError, data_dir as _data_dir, require_files

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")

YAHOO_SHA256 = {
    "yahoo.valid.txt": "3247ac3ffcc4d4bfd6216f2aaa617f6706cdc4081874da39245fe156825898d1",
    "yahoo.test.txt": "ad843c4363adbdd07d8055d9bf121e5f23c285760df43a0031b89d8538293075",
}
YAHOO_SOURCE = ("the Yahoo files of Yang et al. (2017) as distributed with He et al. (2019); public copies: "
                "OpenVLG/DELLA data/yahoo/yahoo.valid.txt and yahoo.test.txt")
YELP_FILES = ("yelp.train.txt", "yelp.valid.txt", "yelp.test.txt")
YELP_SOURCE = "the Yelp files of Yang et al. (2017) as distributed with He et al. (2019) (label<TAB>text per line)"

#: Text dataset names, added to :data:`lidvae_mini.data.DATASETS` (``synthetic_text`` is generated, no files).
TEXT_DATASETS = ("yahoo", "synthetic_text")
#: Image and text dataset names together (what ``reproduce`` accepts).
DATASETS = tuple(_images.DATASETS) + TEXT_DATASETS


def require_dataset(name: str, data_dir=None, verify: bool = True) -> Path | None:
    """:func:`lidvae_mini.data.images.require_dataset` extended to the text datasets.

    ``yahoo`` needs ``yahoo/yahoo.valid.txt`` and ``yahoo/yahoo.test.txt`` (checked against their SHA-256 when
    ``verify``); ``synthetic_text`` is generated and needs none (returns ``None``).

    Raises:
        ValueError: unknown name or checksum mismatch. MissingDataError: files absent (names them and the folder).
    """
    check_choice(name, "dataset", DATASETS)
    if name == "synthetic_text":
        return None
    if name == "yahoo":
        return require_files("yahoo", tuple(YAHOO_SHA256), root=data_dir,
                             checksums=YAHOO_SHA256 if verify else None, source=YAHOO_SOURCE)
    return _images.require_dataset(name, data_dir=data_dir, verify=verify)


# ------------------------------------------------------------------------------------------------ reading
def read_sentences(path, label: bool = False):
    """Read a one-sentence-per-line file: a list of token lists (and, with ``label``, a list of int labels).

    Args:
        path: the file.
        label: lines are ``label<TAB>text`` (Yelp).

    Raises:
        MissingDataError: the file does not exist.
        ValueError: the file is empty, a line has no tokens (its line number is given), or a label is not an int.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"missing data file {path.name} in {path.parent}")
    sents, labels = [], []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if label:
                head, sep, line = line.partition("\t")
                if not sep:
                    raise ValueError(f"{path}:{lineno}: expected 'label<TAB>text', found no tab")
                try:
                    labels.append(int(head))
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: label {head!r} is not an integer") from None
            toks = line.split()
            if not toks:
                raise ValueError(f"{path}:{lineno}: line has no tokens")
            sents.append(toks)
    if not sents:
        raise ValueError(f"{path}: empty file (no sentences)")
    return (sents, labels) if label else sents


class Vocab:
    """Word <-> id table: ``<pad>=0, <s>=1, </s>=2, <unk>=3``, then words by decreasing training frequency (ties
    by first appearance).

    Args:
        sentences: training token lists (the only source of words).
        max_size: optional cap on the vocabulary size **including** the four special tokens (He et al. keep the
            most frequent words); ``None`` keeps every word.

    Raises:
        ValueError: no sentences, or ``max_size`` below 5 (the four specials and at least one word).
    """

    def __init__(self, sentences, max_size: int | None = None):
        if max_size is not None:
            max_size = int(max_size)
            if max_size <= len(SPECIALS):
                raise ValueError(f"vocabulary cap {max_size} must exceed the {len(SPECIALS)} special tokens "
                                 f"{', '.join(SPECIALS)}")
        counts: dict[str, int] = {}
        n = 0
        for s in sentences:
            n += 1
            for w in s:
                counts[w] = counts.get(w, 0) + 1
        if n == 0:
            raise ValueError("cannot build a vocabulary from no sentences")
        order = sorted(counts, key=lambda w: -counts[w])  # stable: ties keep first appearance
        order = [w for w in order if w not in SPECIALS]
        if max_size is not None:
            order = order[:max_size - len(SPECIALS)]
        self.itos = list(SPECIALS) + order
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.n_words_seen = len(counts)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens) -> list[int]:
        """``[<s>, ids..., </s>]`` for a token list (unknown words -> ``<unk>``)."""
        return [BOS] + [self.stoi.get(w, UNK) for w in tokens] + [EOS]

    def decode(self, ids, strip: bool = True) -> str:
        """Words of an id sequence; ``strip`` drops ``<s>``/``<pad>`` and stops at ``</s>``."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            i = int(i)
            if strip and i in (PAD, BOS):
                continue
            if strip and i == EOS:
                break
            out.append(self.itos[i])
        return " ".join(out)


@dataclasses.dataclass
class TextSplit:
    """One encoded split: ``ids[i]`` is a 1-D LongTensor ``<s> ... </s>`` (length >= 3); ``z`` (N, K) true latents
    and ``words`` (N, L) the generator's word ids (synthetic only), ``labels`` (Yelp only), ``n_cut`` sentences
    shortened by the length cap."""
    ids: list
    n_cut: int = 0
    z: torch.Tensor | None = None
    labels: list | None = None
    words: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_tokens(self) -> int:
        """Predicted tokens, words plus ``</s>`` (``<s>`` is given, not predicted): the perplexity's count."""
        return sum(len(s) - 1 for s in self.ids)


@dataclasses.dataclass
class TextData:
    """A text corpus: vocabulary and splits ``train``, ``valid``, ``test`` (see :class:`TextSplit`), and a
    ``protocol`` sentence saying where each split comes from; ``generator`` the synthetic data's true model
    (:class:`SyntheticTextGenerator`, synthetic only)."""
    vocab: Vocab
    train: TextSplit
    valid: TextSplit
    test: TextSplit
    protocol: str = ""
    generator: torch.nn.Module | None = None


def encode_split(sentences, vocab: Vocab, max_len: int | None = None, z=None, labels=None) -> TextSplit:
    """Encode token lists; ``max_len`` caps the number of words (before ``</s>``); cut sentences are counted."""
    ids, cut = [], 0
    for s in sentences:
        if max_len is not None and len(s) > max_len:
            s, cut = s[:max_len], cut + 1
        ids.append(torch.tensor(vocab.encode(s), dtype=torch.long))
    return TextSplit(ids, cut, z, labels)


def length_batches(split: TextSplit, batch_size: int, shuffle: bool = False, seed: int | None = None):
    """Batches of equal-length sentences (He et al.'s ``create_data_batch``): a list of ``(idx, x)`` with ``x``
    a ``(B, T)`` LongTensor and ``idx`` the sentence indices. Sentences are grouped by length, cut into batches of
    at most ``batch_size``; with ``shuffle`` the sentences within a length and the batch order are permuted by a
    generator seeded with ``seed``."""
    batch_size = check_int(batch_size, "batch_size")
    rng = np.random.default_rng(seed)
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(split.ids):
        by_len.setdefault(len(s), []).append(i)
    out = []
    for length in sorted(by_len):
        idx = np.array(by_len[length])
        if shuffle:
            idx = rng.permutation(idx)
        for a in range(0, len(idx), batch_size):
            sel = idx[a:a + batch_size]
            out.append((torch.as_tensor(sel), torch.stack([split.ids[i] for i in sel])))
    if shuffle:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


# ------------------------------------------------------------------------------------------------- Yahoo
def load_yahoo(data_dir=None, n_train: int | None = 2000, n_valid: int | None = 500, n_test: int | None = 500,
               seed: int = 0, max_vocab: int | None = 5000, max_len: int | None = 40,
               verify: bool = True) -> TextData:
    """Yahoo (Yang et al. 2017) under this book's protocol: **train on a seeded split of ``yahoo.valid.txt``,
    select on its held-out part, test on ``yahoo.test.txt``** (the training file could not be obtained).

    Args:
        data_dir: folder holding ``yahoo/`` (see :func:`lidvae_mini.data.data_dir`).
        n_train, n_valid: sizes of the two disjoint parts of a seeded permutation of the 10,000 validation
            documents (``None``: n_train = 10,000 - n_valid, n_valid = 1,000).
        n_test: the first ``n_test`` test documents (``None``: all 10,000; He et al. evaluate the first 10,000).
        seed: seed of the permutation.
        max_vocab: vocabulary cap including the specials (``None``: every training word; the paper 20,000).
        max_len: cap on words per document (``None``: none); cut documents are counted in each split's ``n_cut``.

    Raises:
        MissingDataError: a file is absent (the message names both files and the folder).
        ValueError: sizes exceed the file, checksum mismatch, malformed file.
    """
    folder = require_files("yahoo", tuple(YAHOO_SHA256), root=data_dir,
                           checksums=YAHOO_SHA256 if verify else None, source=YAHOO_SOURCE)
    pool = read_sentences(folder / "yahoo.valid.txt")
    test = read_sentences(folder / "yahoo.test.txt")
    n_valid = 1000 if n_valid is None else check_int(n_valid, "n_valid")
    n_train = len(pool) - n_valid if n_train is None else check_int(n_train, "n_train")
    n_test = len(test) if n_test is None else check_int(n_test, "n_test")
    if n_train + n_valid > len(pool) or n_test > len(test):
        raise ValueError(f"n_train + n_valid = {n_train + n_valid} must be <= {len(pool)} and n_test = {n_test} "
                         f"<= {len(test)}")
    perm = np.random.default_rng(seed).permutation(len(pool))
    tr = [pool[i] for i in perm[:n_train]]
    va = [pool[i] for i in perm[n_train:n_train + n_valid]]
    vocab = Vocab(tr, max_vocab)
    protocol = (f"Yahoo: trained on {n_train:,} documents of a seeded split (seed {seed}) of yahoo.valid.txt, "
                f"selected on {n_valid:,} held-out documents of the same file, tested on the first {n_test:,} "
                f"documents of yahoo.test.txt (the training file was not available)")
    return TextData(vocab, encode_split(tr, vocab, max_len), encode_split(va, vocab, max_len),
                    encode_split(test[:n_test], vocab, max_len), protocol)


# -------------------------------------------------------------------------------------------------- Yelp
def load_yelp(data_dir=None, max_vocab: int | None = 20000, max_len: int | None = None,
              n_train: int | None = None, n_valid: int | None = None, n_test: int | None = None) -> TextData:
    """Yelp (Yang et al. 2017): ``yelp/yelp.{train,valid,test}.txt``, lines ``label<TAB>text``; the vocabulary
    from the training file; the first ``n_*`` lines of each file (``None``: all). Labels are kept per split.

    Raises:
        MissingDataError: files are absent; the message names them and the folder to put them in (they are
            not shipped with the book and not available in its build).
        ValueError: malformed lines (see :func:`read_sentences`).
    """
    folder = require_files("yelp", YELP_FILES, root=data_dir, source=YELP_SOURCE)
    parts = []
    for f, n in zip(YELP_FILES, (n_train, n_valid, n_test)):
        s, lab = read_sentences(folder / f, label=True)
        parts.append((s[:n], lab[:n]) if n is not None else (s, lab))
    vocab = Vocab(parts[0][0], max_vocab)
    splits = [encode_split(s, vocab, max_len, labels=lab) for s, lab in parts]
    return TextData(vocab, *splits, protocol="Yelp: the train, valid and test files of Yang et al. (2017)")


# --------------------------------------------------------------------------------------------- synthetic
class SyntheticTextGenerator(torch.nn.Module):
    """A randomly initialised two-layer LSTM language model conditioned on ``z`` (the synthetic-data generator).

    ``z`` sets the initial state of both layers (``h0 = tanh(W z)``, ``c0 = W' z``) and is concatenated to every
    input embedding; tokens are drawn from ``softmax(scale * W_out h_t)`` over the ``vocab_size`` words
    (``scale = 10`` gives about 3.3 nats of entropy per word, the order of the paper's -40 nats per 11-token sentence); every sentence has exactly ``length`` words. All weights are drawn from
    ``U(-init, init)`` with a generator seeded by ``seed``. He et al. (2019)'s generator (vocabulary 1,000, length
    10) had a 2-d latent; the paper's file (a 5-d latent) is not public, so this one is a re-creation.
    """

    def __init__(self, latent_dim: int = 5, vocab_size: int = 1000, embed_dim: int = 32, hidden: int = 64,
                 scale: float = 10.0, init: float = 1.0, seed: int = 19950927):
        super().__init__()
        self.latent_dim, self.vocab_size, self.scale = latent_dim, vocab_size, float(scale)
        g = torch.Generator().manual_seed(int(seed))
        self.embed = torch.nn.Embedding(vocab_size + 1, embed_dim)  # +1: <s>
        self.lstm = torch.nn.LSTM(embed_dim + latent_dim, hidden, num_layers=2, batch_first=True)
        self.init_h = torch.nn.Linear(latent_dim, 2 * hidden)
        self.init_c = torch.nn.Linear(latent_dim, 2 * hidden)
        self.out = torch.nn.Linear(hidden, vocab_size)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * init)
            self.out.weight.mul_(1.0 / math.sqrt(hidden))
        self.requires_grad_(False)

    def _init_state(self, z: torch.Tensor):
        n, H = z.shape[0], self.lstm.hidden_size
        h = torch.tanh(self.init_h(z)).view(n, 2, H).transpose(0, 1).contiguous()
        return h, self.init_c(z).view(n, 2, H).transpose(0, 1).contiguous()

    def log_prob(self, words: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(words | z) under the generator, nats per sentence, ``(N,)``, for ``words`` ``(N, L)`` (ids
        ``0..vocab_size-1``) and ``z`` ``(N, K)``. The length is fixed, so there is no end-of-sentence term.
        Differentiable in ``z`` (the weights are frozen)."""
        n, L = words.shape
        if z.shape != (n, self.latent_dim):
            raise ValueError(f"z must be ({n}, {self.latent_dim}) for words {tuple(words.shape)}, got {tuple(z.shape)}")
        prev = torch.cat([torch.full((n, 1), self.vocab_size, dtype=torch.long, device=words.device),
                          words[:, :-1]], 1)
        inp = torch.cat([self.embed(prev), z.unsqueeze(1).expand(n, L, -1)], -1)
        o, _ = self.lstm(inp, self._init_state(z))
        logp = torch.log_softmax(self.scale * self.out(o), -1)
        return logp.gather(-1, words.unsqueeze(-1)).squeeze(-1).sum(-1)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, length: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
        """Words ``(N, length)`` (ids ``0..vocab_size-1``) for latents ``z`` ``(N, K)``."""
        h, c = self._init_state(z)
        tok = torch.full((z.shape[0],), self.vocab_size, dtype=torch.long)
        words = []
        for _ in range(length):
            inp = torch.cat([self.embed(tok), z], -1).unsqueeze(1)
            o, (h, c) = self.lstm(inp, (h, c))
            probs = torch.softmax(self.scale * self.out(o[:, 0]), -1)
            tok = torch.multinomial(probs, 1, generator=generator)[:, 0]
            words.append(tok)
        return torch.stack(words, 1)


def make_synthetic_text(n_train: int = 2000, n_valid: int = 500, n_test: int = 500, latent_dim: int = 5,
                        vocab_size: int = 1000, length: int = 10, seed: int = 0,
                        generator_seed: int = 19950927, **generator_kw) -> TextData:
    """Synthetic sentences from :class:`SyntheticTextGenerator` (weights seeded by ``generator_seed``), with
    ``z ~ N(0, I_K)`` and the draws seeded by ``seed``. Each split keeps its true latents in ``split.z``
    ``(N, K)``. Words are ``"w0" ... "w{V-1}"``; the vocabulary is the training split's words (at most ``V`` + 4).
    """
    gen = SyntheticTextGenerator(latent_dim, vocab_size, seed=generator_seed, **generator_kw)
    g = torch.Generator().manual_seed(int(seed))
    splits = []
    for n in (n_train, n_valid, n_test):
        n = check_int(n, "n")
        z = torch.randn(n, latent_dim, generator=g)
        w = gen.sample(z, length, generator=g)
        splits.append(([[f"w{int(i)}" for i in row] for row in w], z, w))
    vocab = Vocab(splits[0][0])
    protocol = (f"synthetic: {n_train:,}/{n_valid:,}/{n_test:,} sentences of {length} words from a random two-layer "
                f"LSTM language model conditioned on z ~ N(0, I_{latent_dim}), vocabulary {vocab_size:,} "
                f"(generator seed {generator_seed}, data seed {seed})")
    encoded = []
    for sentences, z, w in splits:
        split = encode_split(sentences, vocab, z=z)
        split.words = w
        encoded.append(split)
    return TextData(vocab, *encoded, protocol=protocol, generator=gen)


def text_data_dir(data_dir=None) -> Path:
    """The folder the text loaders read from (``data_dir(...)``)."""
    return _data_dir(data_dir)
