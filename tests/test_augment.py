"""Per-sample flips and rotations applied to a whole batch (train/augment.py) against torchvision's own."""

import pytest
import torch
from torchvision.transforms.v2 import functional as tvf

from train.augment import augment_batch, draw_params, flip_rotate


def _phantom_batch(n: int, height: int = 40, width: int = 40) -> torch.Tensor:
    """Asymmetric test images: a bar and a blob in one corner, so flips and turns all look different."""
    torch.manual_seed(0)
    images = torch.rand(n, 1, height, width) * 0.2
    images[..., 5:12, 4:30] = 1.0
    images[..., 25:34, 28:36] = 0.7
    return images


@pytest.mark.parametrize("shape", [(40, 40), (36, 52)])
def test_each_sample_matches_torchvision_flip_then_rotate(shape):
    images = _phantom_batch(6, *shape)
    flips = torch.tensor([False, True, False, True, False, True])
    angles = torch.tensor([0.0, 0.0, 9.5, -7.25, 90.0, -33.0])
    out = flip_rotate(images, flips, angles)
    for image, flip, angle, got in zip(images, flips, angles, out, strict=True):
        expected = tvf.horizontal_flip(image) if flip else image
        expected = tvf.rotate(expected, float(angle), interpolation=tvf.InterpolationMode.BILINEAR)
        assert torch.allclose(got, expected, atol=1e-4), (bool(flip), float(angle))


def test_draws_are_per_sample_and_within_the_recipe_range():
    flips, angles = draw_params(4000, 0.5, 10.0, torch.Generator().manual_seed(1))
    assert 0.45 < flips.float().mean() < 0.55
    assert angles.abs().max() <= 10.0 and angles.min() < -9.5 and angles.max() > 9.5
    assert len(torch.unique(angles)) == 4000
    never, _ = draw_params(100, 0.0, 10.0, torch.Generator().manual_seed(1))
    assert not never.any()


def test_a_batch_of_one_image_gets_a_different_transform_per_sample():
    image = _phantom_batch(1)
    out = augment_batch(image.repeat(8, 1, 1, 1), 0.5, 10.0, torch.Generator().manual_seed(3))
    distinct = {tuple(sample.flatten()[::97].tolist()) for sample in out}
    assert len(distinct) == 8


def test_same_generator_state_gives_the_same_batch_and_none_means_unchanged():
    images = _phantom_batch(5)
    first = augment_batch(images, 0.5, 10.0, torch.Generator().manual_seed(7))
    again = augment_batch(images, 0.5, 10.0, torch.Generator().manual_seed(7))
    other = augment_batch(images, 0.5, 10.0, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert augment_batch(images, 0.0, 0.0) is images
    assert torch.allclose(flip_rotate(images, torch.zeros(5, dtype=torch.bool), torch.zeros(5)), images, atol=1e-5)
