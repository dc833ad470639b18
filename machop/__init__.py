"""machop: Deep Compression (prune, quantize, retrain, Huffman-code) as torch.fx graph passes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"


def load_compressed(path: str | os.PathLike, model: nn.Module | None = None, saved_class: str | None = None) -> nn.Module:
    """The model decoded from a compressed ``.mchz`` file, ready to run.

    ``model``: an instance of your own model class (its weights are
    replaced; its architecture is checked against the file first; a shrunk
    model's layers are resized to the file's shapes), or None for a model of
    machop's registry, which the file names. The file records the class it
    was saved from and opens only into that class: a file of ``TinyNet``
    into ``OtherNet()`` is an error naming both, even with the same shapes.
    ``saved_class="TinyNet"`` opens it into a class renamed since.
    """
    from machop.passes.graph.transforms.huffman import load_compressed as load  # torch: not at `import machop`

    return load(path, model=model, saved_class=saved_class).model
