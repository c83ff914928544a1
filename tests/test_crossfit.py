"""ddpmseg.classifier.crossfit: fold assignment and the pixels each fold ensemble may train on."""
import torch

from ddpmseg.classifier.crossfit import fold_assignment, pixels_outside_fold
from ddpmseg.classifier.train import LabelledPixels


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


def test_each_image_is_predicted_by_the_fold_ensemble_that_never_saw_it(tmp_path):
    """out_of_fold_probabilities end to end on a small random store (4 images + 1 augmented copy
    each, 2 folds): image i's first prediction is exactly the prediction of the ensemble saved for
    its fold, and that ensemble's weights are exactly those of an ensemble trained with the fold's
    seed on the pixels of the OTHER images and their copies only (selected here by a plain loop)."""
    from ddpmseg.common.config import load_config
    from ddpmseg.classifier.crossfit import out_of_fold_probabilities
    from ddpmseg.common.seeding import stream_seed
    from ddpmseg.features.store import FeatureStore
    from ddpmseg.classifier.train import EnsembleSettings, load_ensemble, train_ensemble

    n, H, W, C, K = 4, 8, 8, 6, 19
    cfg = load_config("experiments/celebamask64/ddpm.json", {
        "model_type": "rgb_xy", "model_path": "", "steps": [], "blocks": [], "dim": [H, H, C], "batch_size": 16,
        "max_epochs": 1, "seed": 3})
    g = torch.Generator().manual_seed(0)
    store = FeatureStore(2 * n, [(C, H, W)], (H, W))
    for s in range(2 * n):
        store.put(s, [torch.randn(C, H, W, generator=g)])
    index = torch.arange(2 * n * H * W)
    pixels = LabelledPixels(index, torch.randint(0, K, (len(index),), generator=g), (H, W))

    @torch.no_grad()
    def predict(ens, i):
        return ens(store.image_features(i).reshape(C, -1).T).softmax(-1).mean(0).T.reshape(K, H, W)

    probs = out_of_fold_probabilities(store, pixels, cfg, n, folds=2, members=1, folder=str(tmp_path),
                                      predict=predict, device="cpu", log=lambda m: None)
    fold = fold_assignment(n, 2, cfg["seed"])
    for f in range(2):
        saved = load_ensemble(str(tmp_path / f"fold_{f}"), 1, C, K)
        unseen = [i for i in range(n) if fold[i] == f]
        seen = [p for p in range(len(index)) if (p // (H * W)) % n not in unseen]
        mine = tmp_path / f"by_hand_{f}"
        fold_cfg = {**cfg, "model_num": 1, "seed": stream_seed("fold_seed", cfg["seed"], f)}
        sub = LabelledPixels(index[seen], pixels.labels[seen], (H, W))
        train_ensemble(store, sub, EnsembleSettings.from_config(fold_cfg), str(mine), [0], log=lambda m: None,
                       epoch_size=int((sub.index < n * H * W).sum()))
        by_hand = load_ensemble(str(mine), 1, C, K)
        assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), by_hand.state_dict().values(),
                                                      strict=True))
        for i in unseen:
            assert torch.equal(probs[i], predict(saved, i))
    assert sorted(fold.tolist()) == [0, 0, 1, 1]  # both folds hold images, so both branches ran
