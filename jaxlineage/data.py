"""Datasets for jaxlineage: TFDS, local IDX/npz folders and an embedded default.

Every loader returns a :class:`Dataset`: ``images`` uint8 ``[N, H, W, C]`` and
``labels`` int32 ``[N]``, plus the name of the source it came from. Models see
float32 images from :func:`normalize`.

Sources, tried in this order by ``load(name, split)`` with ``source="auto"``:

1. ``local``: a folder of raw files named by ``$JAXLINEAGE_DATA_DIR/<name>/`` (or
   the ``data_dir`` argument), holding either the four IDX files of the MNIST
   family (``train-images-idx3-ubyte[.gz]``, ...) or ``train.npz`` /
   ``test.npz`` with arrays ``images`` and ``labels``. For ``fashion_mnist`` the
   folder where Debian's ``dataset-fashion-mnist`` package installs its files
   (``/usr/share/datasets/fashion-mnist``) is found automatically.
2. ``tfds``: ``tfds.data_source`` (array_record, no TensorFlow), only where the
   dataset is already prepared in the TFDS data dir or ``download=True`` is asked
   for; never touches the network otherwise.
3. ``embedded``: a real-image Fashion-MNIST subset shipped inside the package
   (1000 train and 200 test images per class, MIT licence), so that everything
   runs offline on a fresh machine.

Task helpers build the papers' task splits: :func:`class_subset` (default task A =
classes 0-4, task B = classes 5-9), :func:`k_shot` and :func:`imbalanced`.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from jaxlineage.errors import JaxlineageError

log = logging.getLogger("jaxlineage.data")

#: TFDS names the library knows, with their image shape and number of classes.
DATASETS: dict[str, tuple[tuple[int, int, int], int]] = {
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "emnist/letters": ((28, 28, 1), 37),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "svhn_cropped": ((32, 32, 3), 10),
    "embedded": ((28, 28, 1), 10),
}
__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DEBIAN_DIRS",
    "DataError",
    "Dataset",
    "EMBEDDED_FILE",
    "SOURCES",
    "SPLITS",
    "TASK_A",
    "TASK_B",
    "class_subset",
    "halves",
    "imbalanced",
    "k_shot",
    "load",
    "load_embedded",
    "load_local",
    "load_tfds",
    "normalize",
    "task",
]

SPLITS = ("train", "test")
SOURCES = ("auto", "local", "tfds", "embedded")
DATA_DIR_ENV = "JAXLINEAGE_DATA_DIR"
DEBIAN_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
EMBEDDED_FILE = "fashion_mnist_subset.npz"

TASK_A = tuple(range(5))
TASK_B = tuple(range(5, 10))

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataError(JaxlineageError):
    """A dataset could not be found or read; the message says what and where."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """An image classification split.

    Attributes:
      images: uint8 ``[N, H, W, C]``.
      labels: int32 ``[N]``.
      name: dataset name (``"fashion_mnist"``, ...).
      split: ``"train"`` or ``"test"``.
      source: where it came from (``"local:/path"``, ``"tfds"``, ``"embedded"``).
    """

    images: np.ndarray
    labels: np.ndarray
    name: str
    split: str
    source: str

    def __post_init__(self):
        if self.images.ndim != 4:
            raise DataError(f"{self.name}/{self.split}: images must be [N, H, W, C], got shape {self.images.shape}")
        if self.labels.shape != self.images.shape[:1]:
            raise DataError(
                f"{self.name}/{self.split}: {self.images.shape[0]} images but labels of shape {self.labels.shape}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self) else 0

    def take(self, idx: np.ndarray) -> Dataset:
        """The examples at ``idx`` (same order)."""
        return dataclasses.replace(self, images=self.images[idx], labels=self.labels[idx])


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` -> float32 in ``[0, 1]``, same shape."""
    return np.asarray(images, np.float32) / np.float32(255.0)


# --------------------------------------------------------------------------- loaders


def load(
    name: str = "fashion_mnist",
    split: str = "train",
    *,
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> Dataset:
    """Loads one split of a dataset from the first source that has it.

    Args:
      name: one of :data:`DATASETS` (``"embedded"`` is the packaged subset).
      split: ``"train"`` or ``"test"``.
      source: ``"auto"`` (local, then TFDS if prepared, then embedded for
        Fashion-MNIST), or one of ``"local"``, ``"tfds"``, ``"embedded"`` to insist.
      data_dir: a local folder to read raw files from (overrides the environment
        variable and the Debian location).
      download: allow TFDS to download and prepare the dataset (network).

    Returns:
      A :class:`Dataset`; ``Dataset.source`` names the source used, which is
      also logged.

    Raises:
      DataError: unknown name, split or source, or no source has the data.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {name!r}; known: {SPLITS}")
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; known: {SOURCES}")
    if name == "embedded":
        source = "embedded"

    tried = []
    if source in ("auto", "local"):
        folder = _local_folder(name, data_dir)
        if folder is not None:
            ds = load_local(folder, split, name=name)
            return _announce(ds)
        tried.append(f"local (no folder: pass data_dir or set ${DATA_DIR_ENV}/{name})")
        if source == "local":
            raise DataError(f"no local folder for {name!r}: " + "; ".join(tried))
    if source in ("auto", "tfds"):
        try:
            return _announce(load_tfds(name, split, data_dir=None, download=download))
        except DataError as e:
            if source == "tfds":
                raise
            tried.append(f"tfds ({e})")
    if source == "embedded" or (source == "auto" and name == "fashion_mnist"):
        return _announce(load_embedded(split))
    raise DataError(
        f"dataset {name!r} is not available offline. Tried: "
        + "; ".join(tried)
        + ". Options: pass download=True (network), put raw IDX/npz files in a folder and pass"
        f" data_dir or set ${DATA_DIR_ENV}, or use name='embedded'."
    )


def _announce(ds: Dataset) -> Dataset:
    log.info("data: %s/%s from %s (%d examples)", ds.name, ds.split, ds.source, len(ds))
    return ds


def _local_folder(name: str, data_dir) -> pathlib.Path | None:
    if data_dir is not None:
        p = pathlib.Path(data_dir)
        if not p.is_dir():
            raise DataError(f"data_dir {str(p)!r} for {name!r} is not a folder")
        return p
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        p = pathlib.Path(env) / name.replace("/", "_")
        if p.is_dir():
            return p
    deb = DEBIAN_DIRS.get(name)
    if deb and pathlib.Path(deb).is_dir():
        return pathlib.Path(deb)
    return None


def load_local(folder: str | os.PathLike, split: str, *, name: str = "local") -> Dataset:
    """Reads raw IDX (optionally gzipped) or ``{split}.npz`` files from ``folder``.

    Raises:
      DataError: naming the missing or truncated file.
    """
    folder = pathlib.Path(folder)
    npz = folder / f"{split}.npz"
    if npz.exists():
        try:
            with np.load(npz) as f:
                images, labels = f["images"], f["labels"]
        except Exception as e:  # zipfile / KeyError / ValueError on corrupt files
            raise DataError(f"cannot read {npz}: {type(e).__name__}: {e}") from e
        if images.ndim == 3:
            images = images[..., None]
        return Dataset(np.asarray(images, np.uint8), np.asarray(labels, np.int32), name, split, f"local:{folder}")
    img_name, lab_name = _IDX_FILES[split]
    images = _read_idx(_find(folder, img_name, split))
    labels = _read_idx(_find(folder, lab_name, split))
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{folder}: unexpected IDX ranks images {images.shape}, labels {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels in split {split!r}")
    return Dataset(images[..., None], labels.astype(np.int32), name, split, f"local:{folder}")


def _find(folder: pathlib.Path, stem: str, split: str) -> pathlib.Path:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.exists():
            return cand
    raise DataError(f"{folder}: missing {stem}[.gz] (or {split}.npz) for split {split!r}")


def _read_idx(path: pathlib.Path) -> np.ndarray:
    """Parses an IDX file (magic 0x00000800 | ndim, big-endian dims, uint8 data)."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not a uint8 IDX file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: truncated or oversized: {len(raw) - header} data bytes, header says {dims} = {expected}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_embedded(split: str = "train") -> Dataset:
    """The packaged Fashion-MNIST subset (1000/200 images per class for train/test).

    Images are uint8 ``[N, 28, 28, 1]`` in ``0..255`` (:func:`normalize` scales them to ``[0, 1]``),
    labels int32 ``[N]``."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; known: {SPLITS}")
    path = pathlib.Path(__file__).parent / "_data" / EMBEDDED_FILE
    if not path.exists():
        raise DataError(f"the embedded dataset {path} is missing from the installed package")
    with np.load(path) as f:
        images, labels = f[f"{split}_images"], f[f"{split}_labels"]
    return Dataset(images[..., None], labels.astype(np.int32), "fashion_mnist", split, "embedded")


def load_tfds(name: str, split: str, *, data_dir=None, download: bool = False) -> Dataset:
    """Loads through ``tfds.data_source`` (array_record; no TensorFlow needed).

    Without ``download`` only an already prepared dataset is used, so this never
    touches the network unless asked to.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - a dependency
        raise DataError(f"tensorflow-datasets is not installed: {e}") from e
    try:
        src = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    except Exception as e:
        hint = "" if download else " (not prepared in the TFDS data dir, and download=False)"
        raise DataError(f"TFDS has no {name}/{split}{hint}: {type(e).__name__}: {str(e)[:200]}") from e
    n = len(src)
    try:
        recs = src.__getitems__(list(range(n)))
    except (TypeError, AttributeError):  # mocked sources lack the batched read
        recs = [src[i] for i in range(n)]
    images = (
        np.stack([np.asarray(r["image"], np.uint8) for r in recs]) if n else np.zeros((0, *DATASETS[name][0]), np.uint8)
    )
    labels = np.asarray([r["label"] for r in recs], np.int32)
    return Dataset(images, labels, name, split, "tfds")


# --------------------------------------------------------------------------- tasks


def class_subset(ds: Dataset, classes: Sequence[int], *, relabel: bool = True) -> Dataset:
    """Keeps the examples of ``classes``; with ``relabel`` maps them to ``0..len-1`` in the given order."""
    classes = tuple(int(c) for c in classes)
    if not classes:
        raise DataError("class_subset: empty class list")
    if len(set(classes)) != len(classes):
        raise DataError(f"class_subset: repeated classes in {classes}")
    present = set(np.unique(ds.labels).tolist())
    missing = [c for c in classes if c not in present]
    if missing:
        raise DataError(f"class_subset: classes {missing} are absent from {ds.name}/{ds.split}")
    mask = np.isin(ds.labels, classes)
    out = ds.take(np.flatnonzero(mask))
    if relabel:
        lut = np.full(int(max(present | set(classes))) + 1, -1, np.int32)
        lut[list(classes)] = np.arange(len(classes), dtype=np.int32)
        out = dataclasses.replace(out, labels=lut[out.labels])
    return out


def halves(labels: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, class-stratified halves of a split (e.g. a defender's and an attacker's data).

    Each class's examples are shuffled with ``seed`` and dealt into the two halves (the first
    ``ceil(n_c / 2)`` to half 0), so both halves hold every class in (nearly) equal numbers.

    Args:
      labels: ``[N]`` integer labels.
      seed: the shuffle's seed; the same labels and seed always give the same halves.

    Returns:
      ``(idx0, idx1)``: sorted example indices of half 0 and half 1, disjoint, covering ``0..N-1``.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cut = (len(members) + 1) // 2
        first.append(members[:cut])
        second.append(members[cut:])
    if not first:
        return np.zeros((0,), np.int64), np.zeros((0,), np.int64)
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def k_shot(ds: Dataset, k: int, *, seed: int = 0) -> Dataset:
    """``k`` examples per class, drawn without replacement with ``seed``; original order kept."""
    if k < 1:
        raise DataError(f"k_shot: k must be >= 1, got {k}")
    rng = np.random.default_rng(seed)
    idx = []
    for c in np.unique(ds.labels):
        members = np.flatnonzero(ds.labels == c)
        if len(members) < k:
            raise DataError(f"k_shot: class {int(c)} has only {len(members)} examples, asked for k={k}")
        idx.append(rng.choice(members, k, replace=False))
    return ds.take(np.sort(np.concatenate(idx)))


def imbalanced(ds: Dataset, *, ratio: float = 0.1, minority: Sequence[int] | None = None, seed: int = 0) -> Dataset:
    """Down-samples the ``minority`` classes (default: the last half) to ``ratio`` of their size."""
    if not 0.0 < ratio <= 1.0:
        raise DataError(f"imbalanced: ratio must be in (0, 1], got {ratio}")
    classes = np.unique(ds.labels)
    if minority is None:
        minority = classes[len(classes) // 2 :]
    rng = np.random.default_rng(seed)
    keep = []
    for c in classes:
        members = np.flatnonzero(ds.labels == c)
        if c in set(int(m) for m in minority):
            members = rng.choice(members, max(1, int(round(ratio * len(members)))), replace=False)
        keep.append(members)
    return ds.take(np.sort(np.concatenate(keep)))


def task(
    name: str = "fashion_mnist",
    classes: Sequence[int] = TASK_A,
    split: str = "train",
    **load_kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``(x [N, H, W, C] float32, y [N] int32)`` of ``classes`` (relabelled from 0)."""
    ds = class_subset(load(name, split, **load_kwargs), classes)
    return normalize(ds.images), ds.labels
