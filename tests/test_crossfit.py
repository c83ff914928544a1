"""ddpmseg.crossfit: fold assignment and the pixels each fold ensemble may train on."""
import torch

from ddpmseg.crossfit import fold_assignment, pixels_outside_fold
from ddpmseg.train import LabelledPixels


def test_folds_are_balanced_seeded_and_not_the_file_order():
    fold = fold_assignment(10, 4, seed=0)
    assert sorted(torch.bincount(fold, minlength=4).tolist()) == [2, 2, 3, 3]
    assert torch.equal(fold, fold_assignment(10, 4, seed=0))
    assert not torch.equal(fold, fold_assignment(10, 4, seed=1))
    assert not torch.equal(fold, torch.arange(10) % 4)


def test_a_held_out_image_and_its_augmented_copies_are_left_out():
    H = W = 2
    n = 3  # store slots 0..2 are the images, 3..5 their augmented copies
    index = torch.arange(2 * n * H * W)
    pixels = LabelledPixels(index, index % 5, (H, W))
    fold = torch.tensor([0, 1, 0])
    kept = pixels_outside_fold(pixels, fold, held_out=0)
    slots = (kept.index // (H * W)).unique().tolist()
    assert slots == [1, 4]  # image 1 and its copy
    assert torch.equal(kept.labels, kept.index % 5)  # labels stay with their pixels
    assert len(pixels_outside_fold(pixels, fold, held_out=1).labels) == 4 * H * W
