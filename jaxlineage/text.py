"""Real text, offline: byte-level corpora from the files every CPython install ships.

Corpora (:data:`CORPORA`), each a list of documents read as UTF-8 bytes:

============  ====================================================================
``stdlib``    the standard library's top-level modules (``<stdlib>/*.py``): code
``pydoc``     the English reference documentation of ``pydoc_data.topics``: prose
``stdlib_net``    packages ``email``, ``http``, ``urllib``, ``json``, ``html``, ``xml``: another part of the library
``stdlib_async``  packages ``asyncio``, ``concurrent``, ``multiprocessing``: another part again
============  ====================================================================

Splits are by document (``crc32(document name) % 10 == 0`` is ``test``), so a test
sequence never shares a file with a training one. Tokens are bytes (vocabulary 256).
:func:`sequences` cuts a split into non-overlapping windows of ``T + 1`` bytes:
``x`` is a window's first ``T`` bytes and ``y`` its last ``T`` (next-byte targets).

The source is recorded as :func:`jaxlineage.data.load` does: :attr:`TextSplit.source`
names the folder or module, the Python version and a SHA-256 of the bytes (CPython
versions ship different text), and it is logged.

A task's dataset name is a corpus name with an optional ``@T`` (sequence length,
default :data:`DEFAULT_SEQ_LEN`), e.g. ``"pydoc@32"`` (:func:`parse_dataset`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import pathlib
import sys
import sysconfig
import zlib

import numpy as np

from jaxlineage.errors import JaxlineageError

__all__ = [
    "CORPORA",
    "DEFAULT_SEQ_LEN",
    "TextError",
    "TextSplit",
    "documents",
    "is_text_dataset",
    "load_text",
    "parse_dataset",
    "sequences",
]

log = logging.getLogger("jaxlineage.text")

DEFAULT_SEQ_LEN = 64
SPLITS = ("train", "test")

#: Corpus name -> (kind, what): ``("modules", ())`` top-level stdlib modules; ``("packages", names)``;
#: ``("pydoc", ())`` the pydoc_data topics.
CORPORA: dict[str, tuple[str, tuple[str, ...]]] = {
    "stdlib": ("modules", ()),
    "pydoc": ("pydoc", ()),
    "stdlib_net": ("packages", ("email", "http", "urllib", "json", "html", "xml")),
    "stdlib_async": ("packages", ("asyncio", "concurrent", "multiprocessing")),
}


class TextError(JaxlineageError):
    """A text corpus is unknown or could not be read; the message names it and where it looked."""


@dataclasses.dataclass(frozen=True)
class TextSplit:
    """One split of a corpus as bytes.

    Attributes:
      tokens: uint8 ``[L]``, the split's documents joined (each followed by ``b"\\n"``).
      name: corpus name.
      split: ``"train"`` or ``"test"``.
      source: where the bytes came from, the Python version and their SHA-256.
      documents: how many documents the split holds.
    """

    tokens: np.ndarray
    name: str
    split: str
    source: str
    documents: int

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def is_text_dataset(dataset: str) -> bool:
    """Whether a task's dataset name names a text corpus (``"pydoc"``, ``"stdlib@32"``, ...)."""
    return dataset.split("@")[0] in CORPORA


def parse_dataset(dataset: str) -> tuple[str, int]:
    """``"pydoc@32"`` -> ``("pydoc", 32)``; without ``@``, the :data:`DEFAULT_SEQ_LEN`.

    Raises:
      TextError: unknown corpus or a malformed length.
    """
    name, _, t = dataset.partition("@")
    if name not in CORPORA:
        raise TextError(f"unknown text corpus {name!r}; known: {sorted(CORPORA)}")
    try:
        seq_len = int(t) if t else DEFAULT_SEQ_LEN
    except ValueError:
        raise TextError(f"text dataset {dataset!r}: the length after '@' must be an integer") from None
    if seq_len < 1:
        raise TextError(f"text dataset {dataset!r}: the sequence length must be >= 1")
    return name, seq_len


def documents(name: str) -> tuple[list[tuple[str, bytes]], str]:
    """The corpus's documents ``[(name, bytes)]`` in a fixed order, and where they came from.

    Raises:
      TextError: unknown corpus, or the files are missing (e.g. a Python without its sources).
    """
    if name not in CORPORA:
        raise TextError(f"unknown text corpus {name!r}; known: {sorted(CORPORA)}")
    return _documents(name)


@functools.cache
def _documents(name: str) -> tuple[list[tuple[str, bytes]], str]:
    kind, what = CORPORA[name]
    if kind == "pydoc":
        try:
            from pydoc_data import topics
        except ImportError as e:
            raise TextError(f"corpus {name!r}: this Python has no pydoc_data ({e})") from e
        docs = [(k, v.encode("utf-8")) for k, v in sorted(topics.topics.items())]
        return docs, f"pydoc_data.topics ({topics.__file__})"
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    if kind == "modules":
        files = sorted(root.glob("*.py"))
        where = f"{root}/*.py"
    else:
        files = sorted(f for pkg in what for f in (root / pkg).rglob("*.py"))
        where = f"{root}/{{{','.join(what)}}}/**/*.py"
    if not files:
        raise TextError(f"corpus {name!r}: no files at {where} (a Python installed without its sources?)")
    return [(f.relative_to(root).as_posix(), f.read_bytes()) for f in files], where


def _is_test(doc_name: str) -> bool:
    return zlib.crc32(doc_name.encode()) % 10 == 0


def load_text(name: str, split: str = "train") -> TextSplit:
    """One split of a corpus as bytes (documents assigned to splits by a hash of their name).

    Raises:
      TextError: unknown corpus or split, missing files, or an empty split.
    """
    if split not in SPLITS:
        raise TextError(f"unknown split {split!r} for corpus {name!r}; known: {SPLITS}")
    docs, where = documents(name)
    chosen = [b for d, b in docs if _is_test(d) == (split == "test")]
    if not chosen:
        raise TextError(f"corpus {name!r} has no documents in its {split} split")
    raw = b"".join(b + b"\n" for b in chosen)
    digest = hashlib.sha256(raw).hexdigest()[:16]
    py = ".".join(map(str, sys.version_info[:3]))
    out = TextSplit(
        np.frombuffer(raw, np.uint8).copy(), name, split, f"{where} (Python {py}, sha256 {digest})", len(chosen)
    )
    log.info("text: %s/%s from %s: %d documents, %d bytes", name, split, out.source, len(chosen), len(raw))
    return out


def sequences(
    dataset: str, split: str = "train", *, seq_len: int | None = None, limit: int | None = None, seed: int = 12345
) -> tuple[np.ndarray, np.ndarray]:
    """Next-byte prediction windows of a corpus split.

    Args:
      dataset: a corpus name, optionally with ``@T`` (:func:`parse_dataset`).
      split: ``"train"`` or ``"test"``.
      seq_len: ``T`` (overrides the ``@T`` of ``dataset``).
      limit: keep the first ``limit`` windows after a fixed shuffle (``seed``), so that a capped
        set still covers the whole corpus; ``None`` keeps all, in a shuffled order.
      seed: the shuffle's seed.

    Returns:
      ``(x, y)``, int32 ``[N, T]`` each: ``y[:, t]`` is the byte after ``x[:, t]``.
    """
    name, t = parse_dataset(dataset)
    t = int(seq_len) if seq_len is not None else t
    tokens = load_text(name, split).tokens
    n = (len(tokens) - 1) // t
    if n < 1:
        raise TextError(f"corpus {name!r}/{split} has {len(tokens)} bytes, fewer than one window of {t + 1}")
    idx = np.arange(n)[:, None] * t + np.arange(t + 1)[None, :]  # windows share their boundary byte
    windows = tokens[idx].astype(np.int32)
    order = np.random.default_rng(seed).permutation(n)
    if limit is not None:
        order = order[:limit]
    windows = windows[order]
    return windows[:, :-1], windows[:, 1:]
