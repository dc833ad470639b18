"""Model registry: shapes per data set, parameter counts, fx traceability."""

import pytest
import torch
import torch.fx as fx
from torch import nn

from machop.datasets import DatasetInfo, get_dataset_info
from machop.models import MODELS, get_model

FASHION = DatasetInfo("fashion_mnist", 10, 1, (28, 28))
CIFAR = DatasetInfo("cifar10", 10, 3, (32, 32))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("info", [FASHION, CIFAR, DatasetInfo("cifar100", 100, 3, (32, 32))], ids=lambda i: i.name)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape(name, info):
    torch.manual_seed(0)
    model = get_model(name, info)
    x = torch.randn(2, info.in_channels, *info.image_size)
    assert model(x).shape == (2, info.num_classes)


@pytest.mark.parametrize("info", [FASHION, CIFAR], ids=lambda i: i.name)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_fx_trace_is_exact(name, info):
    torch.manual_seed(0)
    model = get_model(name, info).eval()
    traced = fx.symbolic_trace(model)
    x = torch.randn(3, info.in_channels, *info.image_size)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    # activations and pools are modules, so passes find them as call_module nodes
    targets = {type(traced.get_submodule(n.target)) for n in traced.graph.nodes if n.op == "call_module"}
    assert nn.ReLU in targets
    assert not any(n.op == "call_function" and "relu" in str(n.target) for n in traced.graph.nodes)


def test_lenet5_caffe_parameter_count():
    model = get_model("lenet5", FASHION)
    assert n_params(model) == 431_080
    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert shapes == [(20, 1, 5, 5), (50, 20, 5, 5), (500, 800), (10, 500)]


def test_lenet300_layers():
    model = get_model("lenet300", FASHION)
    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(300, 784), (100, 300), (10, 100)] and n_params(model) == 266_610


def test_vgg7_structure():
    model = get_model("vgg7", CIFAR)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [128, 128, 256, 256, 512, 512]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6
    linears = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [(1024, 8192), (1024, 1024), (10, 1024)]
    # 28x28 input: 28 -> 14 -> 7 -> 3, so 512 * 3 * 3 features
    assert get_model("vgg7", FASHION).classifier[0].in_features == 512 * 3 * 3


def test_resnet18_parameter_count():
    model = get_model("resnet18", CIFAR)
    assert n_params(model) == 11_173_962  # the usual CIFAR ResNet-18
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_registry_names_and_errors():
    assert set(MODELS) == {"lenet300", "lenet5", "vgg7", "resnet18"}
    with pytest.raises(ValueError, match="unknown model 'alexnet'; choose from lenet300, lenet5, resnet18, vgg7"):
        get_model("alexnet", FASHION)


def test_info_as_dict_and_registry_info():
    from dataclasses import asdict

    a = get_model("lenet5", asdict(get_dataset_info("colored_mnist")))
    assert a.conv1.in_channels == 3


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="at least 16"):
        get_model("lenet5", DatasetInfo("tiny", 10, 1, (12, 12)))
