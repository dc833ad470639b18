"""Colourised MNIST / Fashion-MNIST: 3-channel versions of the grayscale sets.

The rule, fixed and deterministic:

- Sample ``i`` of a split (its position in the original file, 0-based; the
  train and test files are numbered separately) with label ``y`` gets colour
  ``PALETTE[(y + i) % 10]``.
- Each channel ``c`` of the coloured image is ``(g * colour[c] + 127) // 255``
  in integer arithmetic, ``g`` the uint8 gray value: the foreground takes the
  colour with the gray value as its intensity, the black background stays black.

Because ``i`` runs over the whole split, every class is spread evenly over the
ten colours: colour carries no information about the label, so a model must
still learn the shapes. The train/val split and ``train_limit`` do not change a
sample's colour (it depends on the file position only).
"""

from __future__ import annotations

import torch

# ten saturated, easily told apart colours (RGB, 0..255)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),  # red
    (0, 255, 0),  # green
    (0, 0, 255),  # blue
    (255, 255, 0),  # yellow
    (255, 0, 255),  # magenta
    (0, 255, 255),  # cyan
    (255, 128, 0),  # orange
    (128, 0, 255),  # violet
    (0, 255, 128),  # spring green
    (255, 255, 255),  # white
)


def colour_index(labels: torch.Tensor) -> torch.Tensor:
    """Palette index of each sample of a split: ``(label + position) % 10``."""
    positions = torch.arange(len(labels), dtype=torch.int64)
    return (labels.to(torch.int64) + positions) % len(PALETTE)


def colorize(images: torch.Tensor, labels: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Colour a whole split of grayscale uint8 images ``(N, 1, H, W)`` → ``(N, 3, H, W)`` uint8."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"colorize expects uint8 images (N, 1, H, W), got {tuple(images.shape)} {images.dtype}")
    # round(g * v / 255) equals (g * v + 127) // 255 for all uint8 g, v (g * v / 255 is never
    # within float32 error of a half-integer) and is twice as fast as integer division
    palette = torch.tensor(PALETTE, dtype=torch.float32) / 255  # (10, 3)
    colours = palette[colour_index(labels)][:, :, None, None]  # (N, 3, 1, 1)
    out = torch.empty((images.shape[0], 3, *images.shape[2:]), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):  # bounded float temporaries
        sl = slice(start, start + chunk)
        out[sl] = torch.round(images[sl].to(torch.float32) * colours[sl]).to(torch.uint8)
    return out
