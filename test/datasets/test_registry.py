"""The data set registry: names, DatasetInfo round trip, normalisation constants."""

import dataclasses
import json

import pytest

from machop.datasets import DATASETS, DatasetInfo, get_dataset_info
from machop.datasets.registry import colored_stats


def test_registered_names():
    assert set(DATASETS) == {"fashion_mnist", "mnist", "colored_mnist", "colored_fashion_mnist", "cifar10"}


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose from cifar10, colored_fashion_mnist"):
        get_dataset_info("imagenet")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_info_json_round_trip(name):
    info = get_dataset_info(name)
    back = DatasetInfo(**json.loads(json.dumps(dataclasses.asdict(info))))
    assert back == info and isinstance(back.image_size, tuple)
    assert len(DATASETS[name].mean) == len(DATASETS[name].std) == info.in_channels


def test_info_is_a_copy():
    info = get_dataset_info("mnist")
    info.num_classes = 3
    assert get_dataset_info("mnist").num_classes == 10


def test_shapes():
    assert get_dataset_info("fashion_mnist") == DatasetInfo("fashion_mnist", 10, 1, (28, 28))
    assert get_dataset_info("colored_mnist") == DatasetInfo("colored_mnist", 10, 3, (28, 28))
    assert get_dataset_info("cifar10") == DatasetInfo("cifar10", 10, 3, (32, 32))


def test_colored_stats_white_only_palette_is_grayscale(monkeypatch):
    # with a palette of white only, a coloured set is the gray set in three channels
    import machop.datasets.registry as registry

    monkeypatch.setattr(registry, "PALETTE", ((255, 255, 255),))
    assert colored_stats(0.2, 0.3) == ((0.2,) * 3, (0.3,) * 3)
