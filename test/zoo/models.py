"""Small models written the way users write them: every layer kind machop compresses, ties and reuse.

Each class lists the compressible weights it holds (``WEIGHTS``, as machop
names them) so a test can tell when one is skipped, and builds its own
example input (``example(batch)``). A fresh process imports only this file
and machop to open the compressed files of these models.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class MLP(nn.Module):
    WEIGHTS = ["fc1", "fc2", "fc3"]

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(20, 32), nn.Linear(32, 16), nn.Linear(16, 5)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 20)


class ResBlockNet(nn.Module):
    WEIGHTS = ["stem", "conv1", "conv2", "head"]

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.pool, self.head = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.head(torch.flatten(self.pool(F.relu(x + y)), 1))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 3, 8, 8)


class DepthwiseNet(nn.Module):
    WEIGHTS = ["expand", "depthwise", "pointwise", "grouped", "fc"]

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 12, 1)
        self.depthwise = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.pointwise = nn.Conv2d(12, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu6(self.expand(x))
        x = F.relu6(self.depthwise(x))
        x = self.grouped(self.pointwise(x))
        return self.fc(x.mean(dim=(2, 3)))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 3, 8, 8)


class Conv1dNet(nn.Module):
    WEIGHTS = ["conv1", "conv2", "fc"]

    def __init__(self):
        super().__init__()
        self.conv1, self.bn = nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8)
        self.conv2, self.pool = nn.Conv1d(8, 8, 3), nn.AdaptiveMaxPool1d(4)
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        x = self.pool(F.relu(self.conv2(F.relu(self.bn(self.conv1(x))))))
        return self.fc(x.flatten(1))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 2, 24)


class Conv3dNet(nn.Module):
    WEIGHTS = ["conv1", "conv2", "fc"]

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv3d(1, 4, 3, padding=1), nn.Conv3d(4, 6, 3, stride=2)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3, 4)))

    @staticmethod
    def example(batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, 1, 6, 6, 6)


class TinyTransformer(nn.Module):
    WEIGHTS = ["emb", "enc.self_attn.in_proj_weight", "enc.self_attn.out_proj", "enc.linear1", "enc.linear2", "head"]

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, tokens):
        return self.head(self.enc(self.emb(tokens)).mean(dim=1))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randint(0, 50, (batch, 7))


class LSTMNet(nn.Module):
    WEIGHTS = ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1", "fc"]

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 12, num_layers=2, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 5, 6)


class AttentionGRU(nn.Module):
    WEIGHTS = ["attn.in_proj_weight", "attn.out_proj", "gru.weight_ih_l0", "gru.weight_hh_l0", "out"]

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        a, _ = self.attn(x, x, x)
        h, _ = self.gru(a + x)
        return self.out(h[:, -1])

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 6, 8)


class ConvTransposeAE(nn.Module):
    WEIGHTS = ["enc1", "enc2", "dec1", "dec2"]

    def __init__(self):
        super().__init__()
        self.enc1, self.enc2 = nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.dec1 = nn.ConvTranspose2d(4, 8, 4, stride=2, padding=1)
        self.dec2 = nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1)

    def forward(self, x):
        z = F.relu(self.enc2(F.relu(self.enc1(x))))
        return torch.sigmoid(self.dec2(F.relu(self.dec1(z))))

    @staticmethod
    def example(batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, 1, 12, 12)


class TiedEmbedding(nn.Module):
    """A language-model head whose output projection is the embedding (weight tying)."""

    WEIGHTS = ["emb", "mix"]

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 12)
        self.mix = nn.Linear(12, 12)
        self.decoder = nn.Linear(12, 40, bias=False)
        self.decoder.weight = self.emb.weight

    def forward(self, tokens):
        return self.decoder(torch.tanh(self.mix(self.emb(tokens))))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randint(0, 40, (batch, 5))


class CalledTwice(nn.Module):
    """One Linear applied twice (a shared block), between two others."""

    WEIGHTS = ["inp", "shared", "outp"]

    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.outp = nn.Linear(10, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        x = F.relu(self.inp(x))
        x = F.relu(self.shared(x))
        x = F.relu(self.shared(x))
        return self.outp(x)

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 10)


class SmallCNN(nn.Module):
    """A LeNet-like image classifier: conv, pool, two Linear layers (1x28x28 inputs)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(6 * 12 * 12, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class ShrinkCNN(nn.Module):
    """conv-bn-relu-conv-linear on 1x8x8 inputs, to shrink: its width and kernel size are arguments (not in ZOO)."""

    WEIGHTS = ["conv1", "conv2", "fc"]

    def __init__(self, width: int = 8, kernel: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel, padding=kernel // 2)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(width * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))


class FunctionalNet(nn.Module):
    """Its own parameters, used through the functional API (no layer modules)."""

    WEIGHTS = ["conv_w", "fc_w", "out_w"]

    def __init__(self):
        super().__init__()
        self.conv_w, self.conv_b = nn.Parameter(torch.randn(6, 3, 3, 3) * 0.3), nn.Parameter(torch.zeros(6))
        self.fc_w, self.fc_b = nn.Parameter(torch.randn(16, 6) * 0.3), nn.Parameter(torch.zeros(16))
        self.out_w = nn.Parameter(torch.randn(4, 16) * 0.3)

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.conv_w, self.conv_b, padding=1)).mean(dim=(2, 3))
        return F.linear(F.relu(F.linear(x, self.fc_w, self.fc_b)), self.out_w)

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 3, 8, 8)


class BilinearNet(nn.Module):
    """Two views of the input combined by an `nn.Bilinear`."""

    WEIGHTS = ["a", "b", "bil", "head"]

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(10, 8), nn.Linear(10, 6)
        self.bil = nn.Bilinear(8, 6, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.bil(torch.relu(self.a(x)), torch.relu(self.b(x)))))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 10)


class EinsumNet(nn.Module):
    """A 3-D parameter contracted with `torch.einsum` (a per-head projection), then a Linear layer."""

    WEIGHTS = ["fc", "proj"]

    def __init__(self):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(3, 8, 4) * 0.3)  # heads x in x out
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        return self.fc(torch.einsum("bi,hio->bho", x, self.proj).flatten(1))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 8)


class WeightNormNet(nn.Module):
    """Weight-normalised layers (`torch.nn.utils.parametrizations.weight_norm`)."""

    WEIGHTS = ["conv", "fc"]

    def __init__(self):
        super().__init__()
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(2, 6, 3))
        self.fc = nn.utils.parametrizations.weight_norm(nn.Linear(6, 3))

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).amax(dim=(2, 3)))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 2, 6, 6)


class SpectralNormNet(nn.Module):
    """A GAN-discriminator-like net with spectral-normalised layers (`parametrizations.spectral_norm`)."""

    WEIGHTS = ["conv", "fc"]

    def __init__(self):
        super().__init__()
        self.conv = nn.utils.parametrizations.spectral_norm(nn.Conv2d(1, 4, 3, stride=2))
        self.fc = nn.utils.parametrizations.spectral_norm(nn.Linear(16, 1))

    def forward(self, x):
        return self.fc(F.leaky_relu(self.conv(x), 0.2).flatten(1))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 1, 6, 6)


class Float64CNN(nn.Module):
    """A double-precision CNN (scientific code)."""

    WEIGHTS = ["conv", "fc"]

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)
        self.double()

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 1, 8, 8, dtype=torch.float64)


class BFloat16MLP(nn.Module):
    """An MLP kept in bfloat16."""

    WEIGHTS = ["fc1", "fc2"]

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 24), nn.Linear(24, 4)
        self.to(torch.bfloat16)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 12).to(torch.bfloat16)


ZOO: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in (
    MLP, ResBlockNet, DepthwiseNet, Conv1dNet, Conv3dNet, TinyTransformer, LSTMNet, AttentionGRU, ConvTransposeAE,
    TiedEmbedding, CalledTwice, FunctionalNet, BilinearNet, EinsumNet, WeightNormNet, SpectralNormNet, Float64CNN,
    BFloat16MLP,
)}

