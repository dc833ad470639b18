"""Vectorised batch transforms against per-sample reference implementations."""

import torch

from machop.datasets.colored import PALETTE, colorize
from machop.datasets.transforms import BatchTransform, crop_flip, normalize, random_crop_flip


def _images(b=6, c=3, h=8, w=10, seed=0):
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_crop_flip_matches_per_sample_reference():
    x = _images()
    top = torch.tensor([0, 1, 2, 3, 4, 8])
    left = torch.tensor([8, 0, 4, 2, 7, 3])
    flip = torch.tensor([False, True, True, False, True, False])
    out = crop_flip(x, 4, top, left, flip)
    for i in range(len(x)):
        padded = torch.nn.functional.pad(x[i], (4, 4, 4, 4))
        ref = padded[:, top[i] : top[i] + 8, left[i] : left[i] + 10]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    assert out.dtype == torch.uint8


def test_centre_crop_without_flip_is_identity():
    x = _images()
    n = len(x)
    out = crop_flip(x, 4, torch.full((n,), 4), torch.full((n,), 4), torch.zeros(n, dtype=torch.bool))
    assert torch.equal(out, x)


def test_random_crop_flip_is_deterministic_per_generator():
    x = _images(b=64)
    a = random_crop_flip(x, 4, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, 4, torch.Generator().manual_seed(1))
    c = random_crop_flip(x, 4, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    # every output is a window of the padded input: its pixel sum cannot exceed the original's
    assert (a.sum((1, 2, 3)) <= x.to(torch.int64).sum((1, 2, 3))).all()


def test_normalize_formula():
    x = _images(c=3)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    ref = (x.double() / 255 - torch.tensor(mean).double()[:, None, None]) / torch.tensor(std).double()[:, None, None]
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


def test_batch_transform_accepts_batched_and_listed_samples():
    x, y = _images(c=1), torch.arange(6)
    t = BatchTransform((0.5,), (0.25,))
    a = t((x, y))
    b = t([(x[i], y[i]) for i in range(6)])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[1].dtype == torch.int64


def test_batch_transform_augmentation_is_repeatable():
    x, y = _images(b=32), torch.zeros(32, dtype=torch.int64)
    first = [BatchTransform((0.5,) * 3, (0.5,) * 3, augment=True, seed=7)((x, y))[0] for _ in range(2)]
    assert torch.equal(first[0], first[1])
    t = BatchTransform((0.5,) * 3, (0.5,) * 3, augment=True, seed=7)
    assert not torch.equal(t((x, y))[0], t((x, y))[0])  # the stream advances batch to batch


def test_colorize_rule():
    gray = torch.randint(0, 256, (25, 1, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    labels = torch.randint(0, 10, (25,), generator=torch.Generator().manual_seed(4))
    out = colorize(gray, labels, chunk=7)
    assert out.shape == (25, 3, 4, 5) and out.dtype == torch.uint8
    for i in range(25):
        colour = PALETTE[(int(labels[i]) + i) % 10]
        for c in range(3):
            ref = (gray[i, 0].to(torch.int64) * colour[c] + 127) // 255
            assert torch.equal(out[i, c].to(torch.int64), ref)
    assert (out[gray.expand(-1, 3, -1, -1) == 0] == 0).all()  # background stays black


def test_colorize_exhaustive_over_gray_values():
    gray = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).repeat(10, 1, 1, 1)
    out = colorize(gray, torch.zeros(10, dtype=torch.int64))  # sample i gets PALETTE[i]
    for i, colour in enumerate(PALETTE):
        for c, v in enumerate(colour):
            assert torch.equal(out[i, c].flatten().to(torch.int64), (torch.arange(256) * v + 127) // 255)
