"""Real Fashion-MNIST (Debian package dataset-fashion-mnist) through the data module."""

import time
from pathlib import Path

import pytest
import torch

from machop.datasets import DATASETS, DatasetNotFoundError, MaseDataModule
from machop.datasets.colored import colorize
from machop.datasets.sources import load_splits
from machop.datasets.transforms import normalize

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(), reason="apt-get install dataset-fashion-mnist"
)


@pytest.fixture(scope="module")
def dm():
    m = MaseDataModule("fashion_mnist")
    m.prepare_data()
    m.setup("fit")
    return m


def test_real_files():
    s = load_splits("fashion_mnist")
    assert s.train_images.shape == (60000, 1, 28, 28) and s.test_images.shape == (10000, 1, 28, 28)
    assert s.train_images.dtype == torch.uint8 and s.train_labels.dtype == torch.int64
    assert s.train_labels.unique().tolist() == list(range(10)) == s.test_labels.unique().tolist()
    assert torch.bincount(s.train_labels).tolist() == [6000] * 10  # Fashion-MNIST is balanced


def test_split_sizes_and_disjointness(dm):
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (54000, 6000, 10000)
    both = torch.cat([dm.train_indices, dm.val_indices]).sort().values
    assert torch.equal(both, torch.arange(60000))  # train and val partition the training file
    s = load_splits("fashion_mnist")
    assert torch.equal(dm.val_set.images, s.train_images[dm.val_indices])
    assert torch.equal(dm.train_set.labels, s.train_labels[dm.train_indices])


def test_split_is_deterministic(dm):
    again = MaseDataModule("fashion_mnist", seed=0)
    again.setup()
    assert torch.equal(again.val_set.images, dm.val_set.images)
    other = MaseDataModule("fashion_mnist", seed=1)
    other.setup()
    assert not torch.equal(other.val_set.labels, dm.val_set.labels)


def test_limits_take_the_first_samples():
    dm = MaseDataModule("fashion_mnist", train_limit=500, test_limit=100, val_fraction=0.1)
    dm.setup()
    s = load_splits("fashion_mnist")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (450, 50, 100)
    assert torch.equal(dm.test_set.images, s.test_images[:100])
    assert sorted(dm.train_set.labels.tolist() + dm.val_set.labels.tolist()) == sorted(s.train_labels[:500].tolist())


def test_batches_are_normalised(dm):
    x, y = dm.calibration_batch(4096)
    assert x.shape == (4096, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (4096,)
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    assert torch.equal(y, dm.train_set.labels[:4096])
    assert dm.dummy_input(3).shape == (3, 1, 28, 28)


def test_epoch_is_fast_and_complete(dm):
    start = time.perf_counter()
    seen = 0
    for x, y in dm.train_dataloader():
        seen += len(y)
    elapsed = time.perf_counter() - start
    assert seen == 54000 and x.shape[1:] == (1, 28, 28)
    assert elapsed < 1.0, f"one epoch of loading took {elapsed:.2f} s"


def test_shuffling_differs_between_epochs_but_not_between_runs(dm):
    loader = dm.train_dataloader()
    first, second = next(iter(loader))[1], next(iter(loader))[1]
    assert not torch.equal(first, second)
    fresh = MaseDataModule("fashion_mnist", train_limit=2000)
    fresh2 = MaseDataModule("fashion_mnist", train_limit=2000)
    assert torch.equal(next(iter(fresh.train_dataloader()))[1], next(iter(fresh2.train_dataloader()))[1])


def test_colored_fashion_mnist_constants():
    # colour the first 20,000 training images exactly as the data set does (colour depends on file position)
    s = load_splits("fashion_mnist")
    spec = DATASETS["colored_fashion_mnist"]
    x = normalize(colorize(s.train_images[:20000], s.train_labels[:20000]), spec.mean, spec.std)
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    assert (mean.abs() < 0.02).all() and ((std - 1).abs() < 0.02).all(), (mean, std, spec)


def test_missing_files_error(tmp_path):
    dm = MaseDataModule("fashion_mnist", data_dir=str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "MACHOP_DATA_DIR" in msg


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dataset"):
        MaseDataModule("fashion")
    with pytest.raises(ValueError, match="val_fraction"):
        MaseDataModule("fashion_mnist", val_fraction=1.0)
