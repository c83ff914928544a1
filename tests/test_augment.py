"""Joint image + mask augmentation and the test-time views, on shapes64 images (and a celebamask64 face for
the mirrored left/right classes)."""
import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from conftest import CELEBAMASK64, require, shapes64
from ddpmseg.data.augment import (CROP_SCALE, HOLES, TTA_VIEWS, CoarseDropout, HorizontalFlipSwap, augment_pair,
                                  class_permutation, copy_seed, swap_classes, training_pipeline, tta_view, view_seed)
from ddpmseg.data.folders import ImageLabelDataset

FILL = -1


@pytest.fixture(scope="module")
def sample():
    ds = ImageLabelDataset(str(shapes64() / "real" / "train"), resolution=64, num_images=2,
                           number_class=19, ignore_label=None)
    return ds[0]["image"], ds[0]["label"]


def test_copies_are_reproducible_and_distinct(sample):
    image, label = sample
    a = augment_pair(image, label, 5, 0.4, FILL)
    b = augment_pair(image, label, 5, 0.4, FILL)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    outs = [augment_pair(image, label, s, 0.4, FILL) for s in range(6)]
    assert len({o[0].sum().item() for o in outs}) == 6  # six seeds, six different copies


def test_augmentation_leaves_the_global_rng_alone(sample):
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    augment_pair(*sample, 1, 1.0, FILL)
    assert torch.equal(torch.rand(3), want)


def test_probability_zero_is_the_identity(sample):
    image, label = sample
    img, lab = augment_pair(image, label, 3, 0.0, FILL)
    assert torch.allclose(img, image, atol=1e-6) and torch.equal(lab, label)


def test_masks_keep_their_classes_and_invented_pixels_get_the_fill(sample):
    image, label = sample
    classes = set(label.unique().tolist())
    filled = 0
    for s in range(8):
        img, lab = augment_pair(image, label, copy_seed(0, 0, s + 1), 1.0, FILL)
        assert img.shape == image.shape and lab.shape == label.shape and lab.dtype == torch.int64
        assert -1.0 <= img.min() and img.max() <= 1.0
        # Nearest-neighbour resampling: no label value that was not there (or the fill) appears.
        assert set(lab.unique().tolist()) <= classes | {FILL}
        filled += int((lab == FILL).sum())
    assert filled > 0  # rotation corners and dropout holes are excluded from training


def test_coarse_dropout_blacks_out_the_image_where_the_mask_gets_the_fill():
    torch.manual_seed(0)
    img = tv_tensors.Image(torch.rand(3, 64, 64) * 0.5 + 0.5)  # no black pixel to begin with
    mask = tv_tensors.Mask(torch.zeros(64, 64, dtype=torch.int64))
    out_img, out_mask = CoarseDropout(fill_label=255)(img, mask)
    holes = out_mask == 255
    assert holes.any()
    assert torch.equal((out_img == 0).all(0), holes)
    side = np.sqrt(holes.sum().item() / 2)  # at least 2 holes of 10..15 px at 64 px
    assert 40 / 256 * 64 * 0.9 <= side


def test_tta_views(sample):
    image, _ = sample
    for j, view in enumerate(TTA_VIEWS):
        seen, flipped = tta_view(image, view, view_seed(0, 0, j))
        assert seen.shape == image.shape and flipped == view.endswith("hflip")
        assert not torch.allclose(seen, image, atol=1e-3)
        assert torch.equal(seen, tta_view(image, view, view_seed(0, 0, j))[0])
    flipped_only, _ = tta_view(image, "hflip", 0)
    assert torch.allclose(flipped_only, image.flip(-1), atol=1e-6)
    gray, _ = tta_view(image, "grayscale", 0)
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    with pytest.raises(ValueError, match="unknown test-time view 'vflip'"):
        tta_view(image, "vflip", 0)


def test_mirror_swaps_left_and_right_classes():
    """A mirrored left eye is a right eye: the flip exchanges the paired ids, and only those."""
    image = tv_tensors.Image(torch.rand(3, 8, 8))
    mask = torch.zeros(8, 8, dtype=torch.int64)
    mask[:, :2], mask[:, 2:4], mask[0, 7] = 4, 5, 255  # left eye, right eye, an ignored pixel
    out_img, out_mask = HorizontalFlipSwap([(4, 5), (6, 7)])(image, tv_tensors.Mask(mask))
    assert torch.equal(out_img, image.flip(-1))
    want = mask.flip(-1).clone()
    want[mask.flip(-1) == 4], want[mask.flip(-1) == 5] = 5, 4
    assert torch.equal(out_mask, want)
    assert (out_mask[:, 6:] == 5).all() and (out_mask[:, 4:6] == 4).all() and out_mask[0, 0] == 255
    assert torch.equal(swap_classes(swap_classes(mask, [(4, 5)]), [(4, 5)]), mask)


@pytest.fixture(scope="module")
def both_eyes():
    """A face whose label has both eyes (the first training image has no r_eye pixels)."""
    ds = ImageLabelDataset(str(require(CELEBAMASK64) / "real" / "train"), resolution=64, num_images=2,
                           number_class=19, ignore_label=None)
    assert (ds[1]["label"] == 4).any() and (ds[1]["label"] == 5).any()
    return ds[1]["image"], ds[1]["label"]


def test_augmented_copies_swap_sides_when_mirrored(both_eyes):
    """Over many copies, l_eye (4) pixels only ever land on the side where the l_eye was or became r_eye."""
    image, label = both_eyes
    left_x = torch.nonzero(label == 4)[:, 1].float().mean()
    right_x = torch.nonzero(label == 5)[:, 1].float().mean()
    pairs = [(4, 5), (6, 7), (8, 9)]
    checked = mirrored = 0
    for s in range(10):
        img, lab = augment_pair(image, label, copy_seed(0, 0, s + 1), 0.4, FILL, pairs)
        if (lab == 4).any() and (lab == 5).any():
            # the class-4 region stays on class 4's side of the face (true for unmirrored and mirrored copies)
            lx, rx = torch.nonzero(lab == 4)[:, 1].float().mean(), torch.nonzero(lab == 5)[:, 1].float().mean()
            assert (lx < rx) == (left_x < right_x)
            checked += 1
            # A copy is mirrored when its image is closer to the flipped original than to the original.
            mirrored += int((img - image.flip(-1)).abs().mean() < (img - image).abs().mean())
    # Both eyes survive in most copies, and some of those are mirrored: the assertion above ran on both kinds.
    assert checked >= 5 and 0 < mirrored < checked, (checked, mirrored)


def test_custom_transforms_keep_the_mask_a_mask():
    """Later transforms only move what they recognise as a mask: the custom ones must hand one back."""
    image = tv_tensors.Image(torch.rand(3, 16, 16))
    mask = tv_tensors.Mask(torch.zeros(16, 16, dtype=torch.int64))
    for t in (HorizontalFlipSwap([(0, 1)]), CoarseDropout(fill_label=9)):
        img, m = t(image, mask)
        assert type(img) is tv_tensors.Image and type(m) is tv_tensors.Mask


@pytest.mark.parametrize("seed", range(6))
def test_image_and_mask_stay_aligned(seed):
    """Image = its own label (black = class 0, white = class 1): after every transform at p = 1 the
    brightness still tells the classes apart pixel by pixel, so geometry moved both alike."""
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    label = ((xx + 2 * yy) % 40 < 20).long()  # diagonal stripes: any misplacement shows
    image = label.float().expand(3, 64, 64) * 2 - 1
    img, lab = augment_pair(image, label, copy_seed(seed, 0, 1), 1.0, FILL)
    kept = lab != FILL
    brightness = img.mean(0)[kept]
    corr = torch.corrcoef(torch.stack([brightness, lab[kept].float()]))[0, 1]
    assert corr > 0.9, corr


def test_coarse_dropout_draws_every_allowed_hole_count_size_and_position():
    """On a 40x64 (HxW) image: 2-4 holes, sides round(40/256 * 40) = 6 to round(60/256 * 40) = 9 px (both
    ends drawn), every box inside the image and touching each border in some draw."""
    torch.manual_seed(0)
    h, w = 40, 64
    dropout = CoarseDropout(FILL)
    draws = [dropout.make_params([tv_tensors.Image(torch.zeros(3, h, w))])["boxes"] for _ in range(2000)]
    assert {len(b) for b in draws} == set(range(HOLES[0], HOLES[1] + 1))
    boxes = [box for b in draws for box in b]
    assert {bh for _, _, bh, _ in boxes} == {bw for _, _, _, bw in boxes} == {6, 7, 8, 9}
    assert min(y for y, _, _, _ in boxes) == 0 and max(y + bh for y, _, bh, _ in boxes) == h
    assert min(x for _, x, _, _ in boxes) == 0 and max(x + bw for _, x, _, bw in boxes) == w


def test_invented_image_pixels_are_black(sample):
    """Pixels the transforms invent (rotated or warped in from outside, dropped out) are black in the image
    (-1 in [-1, 1]) where the mask gets the fill. Elastic warping blends a border pixel bilinearly with
    its neighbours while the mask takes the nearest one, hence the mean, not every pixel."""
    image, label = sample
    invented = []
    for seed in range(6):
        img, mask = augment_pair(image, label, seed=seed, p=1.0, fill_label=FILL)
        invented.append(img[:, mask == FILL].flatten())
    invented = torch.cat(invented)
    assert invented.numel() > 1000 and invented.mean() < -0.9


def test_class_permutation_swaps_each_pair():
    assert class_permutation(5, [(1, 3)]).tolist() == [0, 3, 2, 1, 4]
    assert class_permutation(4, [(0, 1), (2, 3)]).tolist() == [1, 0, 3, 2]
    assert class_permutation(3, []).tolist() == [0, 1, 2]


def test_pixels_rotated_or_warped_in_get_the_fill_not_a_class(sample):
    """A label of class 5 everywhere: after full-strength augmentation every pixel is 5 or the fill.
    Rotation and elastic warping must fill what they bring in from outside with the fill label; their
    default fill, 0, would label it background (a class) and train on it."""
    image, _ = sample
    label = torch.full(image.shape[-2:], 5, dtype=torch.int64)
    for seed in range(6):
        _, mask = augment_pair(image, label, seed=seed, p=1.0, fill_label=FILL)
        assert set(mask.unique().tolist()) <= {5, FILL}


def test_random_resized_crop_keeps_30_to_60_percent_of_the_area():
    """The fork's crop scale (CROP_SCALE), not torchvision's default 8-100 %."""
    crops = [t.transforms[0] for t in training_pipeline(64, 0.5, FILL).transforms
             if isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], v2.RandomResizedCrop)]
    assert CROP_SCALE == (0.3, 0.6) and [tuple(c.scale) for c in crops] == [CROP_SCALE]
