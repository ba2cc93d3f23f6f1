import gzip

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxlineage import data


def _write_idx(path, arr, gz=False):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(raw)


@pytest.fixture
def idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    for _split, stem, n in (("train", "train", 30), ("test", "t10k", 10)):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), gz=True)
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10)
    return tmp_path


def test_embedded_is_real_balanced_fashion_mnist():
    train, test = data.load_embedded("train"), data.load_embedded("test")
    assert train.images.shape == (10000, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (2000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(train.labels), np.full(10, 1000))
    np.testing.assert_array_equal(np.bincount(test.labels), np.full(10, 200))
    # Real images, not noise: mean intensity and a large share of background pixels.
    assert 50 < train.images.mean() < 100
    assert (train.images == 0).mean() > 0.3


def test_load_embedded_by_name_and_source():
    ds = data.load("embedded", "test")
    assert ds.source == "embedded" and len(ds) == 2000
    assert data.load("fashion_mnist", "test", source="embedded").source == "embedded"


def test_local_idx_folder(idx_folder):
    ds = data.load("mnist", "train", data_dir=idx_folder)
    assert ds.images.shape == (30, 28, 28, 1) and ds.source.startswith("local:")
    np.testing.assert_array_equal(ds.labels, np.arange(30) % 10)
    assert len(data.load("mnist", "test", data_dir=idx_folder)) == 10


def test_local_folder_from_environment(idx_folder, monkeypatch, tmp_path_factory):
    root = tmp_path_factory.mktemp("env")
    (root / "mnist").symlink_to(idx_folder)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(root))
    assert data.load("mnist", "test").source == f"local:{root / 'mnist'}"


def test_local_npz(tmp_path):
    np.savez(tmp_path / "train.npz", images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.arange(4))
    ds = data.load("cifar10", "train", data_dir=tmp_path)
    assert ds.images.shape == (4, 32, 32, 3)


def test_local_missing_file(idx_folder):
    (idx_folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(data.DataError, match="missing t10k-labels-idx1-ubyte"):
        data.load("mnist", "test", data_dir=idx_folder)


def test_local_truncated_file(idx_folder):
    path = idx_folder / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(data.DataError, match="truncated"):
        data.load("mnist", "train", data_dir=idx_folder)


def test_local_corrupt_gzip(idx_folder):
    path = idx_folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(data.DataError, match="train-images"):
        data.load("mnist", "train", data_dir=idx_folder)


def test_tfds_through_mock_data():
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load("mnist", "train", source="tfds")
    assert ds.images.shape == (12, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.source == "tfds"


def test_unknown_dataset_split_source():
    with pytest.raises(data.DataError, match="unknown dataset 'mnsit'"):
        data.load("mnsit")
    with pytest.raises(data.DataError, match="unknown split 'val'"):
        data.load("embedded", "val")
    with pytest.raises(data.DataError, match="unknown source 'web'"):
        data.load("embedded", source="web")


def test_unavailable_offline_names_options(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(data.DataError, match="download=True") as e:
        data.load("svhn_cropped", "train")
    assert "data_dir" in str(e.value)


def test_class_subset_relabels():
    ds = data.load_embedded("test")
    b = data.class_subset(ds, data.TASK_B)
    assert len(b) == 1000 and set(np.unique(b.labels)) == set(range(5))
    # Relabelling is in the given order: class 5 -> 0.
    np.testing.assert_array_equal(b.images[b.labels == 0], ds.images[ds.labels == 5])
    with pytest.raises(data.DataError, match="absent"):
        data.class_subset(data.class_subset(ds, (0, 1)), (7,))


def test_k_shot_counts_and_determinism():
    ds = data.class_subset(data.load_embedded("test"), data.TASK_A)
    k5 = data.k_shot(ds, 5, seed=3)
    np.testing.assert_array_equal(np.bincount(k5.labels), np.full(5, 5))
    np.testing.assert_array_equal(k5.images, data.k_shot(ds, 5, seed=3).images)
    with pytest.raises(data.DataError, match="only 200"):
        data.k_shot(ds, 201)


def test_imbalanced_ratio():
    ds = data.load_embedded("test")
    imb = data.imbalanced(ds, ratio=0.1)
    counts = np.bincount(imb.labels)
    np.testing.assert_array_equal(counts[:5], np.full(5, 200))
    np.testing.assert_array_equal(counts[5:], np.full(5, 20))


def test_normalize_and_task():
    x, y = data.task("embedded", data.TASK_A, "test")
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert x.shape == (1000, 28, 28, 1) and y.max() == 4
