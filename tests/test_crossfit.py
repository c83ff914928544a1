"""ddpmseg.classifier.crossfit: fold assignment and the pixels each fold ensemble may train on."""
import pickle

import pytest
import torch

from ddpmseg.classifier import crossfit
from ddpmseg.classifier.crossfit import fold_assignment, out_of_fold_probabilities, pixels_outside_fold
from ddpmseg.classifier.train import LabelledPixels, load_ensemble
from ddpmseg.common.seeding import stream_generator


def test_folds_are_balanced_seeded_and_not_the_file_order():
    fold = fold_assignment(10, 4, seed=0)
    assert sorted(torch.bincount(fold, minlength=4).tolist()) == [2, 2, 3, 3]
    assert torch.equal(fold, fold_assignment(10, 4, seed=0))
    assert not torch.equal(fold, fold_assignment(10, 4, seed=1))
    assert not torch.equal(fold, torch.arange(10) % 4)


def test_splits_deal_the_permutation_of_their_own_named_stream():
    # Split 0 (the default, cross-fitting's) deals the "fold_order" stream's permutation round-robin, split
    # s >= 1 the ("fold_split", s) one's: the streams ddpmseg.common.seeding names for them.
    def dealt(generator):
        fold = torch.empty(10, dtype=torch.long)
        fold[torch.randperm(10, generator=generator)] = torch.arange(10) % 4
        return fold

    assert torch.equal(fold_assignment(10, 4, seed=5), dealt(stream_generator("fold_order", 5)))
    for split in (1, 2):
        assert torch.equal(fold_assignment(10, 4, seed=5, split=split), dealt(stream_generator("fold_split", 5, split)))


def test_the_windows_of_an_image_share_its_fold():
    image_fold = fold_assignment(3, 2, seed=0).tolist()
    assert fold_assignment(3, 2, seed=0, windows_per_image=[1, 3, 2]).tolist() == [
        image_fold[0], image_fold[1], image_fold[1], image_fold[1], image_fold[2], image_fold[2]]


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


def small_problem(n):
    """A random store of ``n`` images (or windows) of 6 channels at 8 x 8 and one augmented copy of each, random
    labels of the 19 celebamask64 classes for every pixel, its config (1 epoch, seed 3), and ``predict``: the
    members' mean softmax, as a test image gets it."""
    from ddpmseg.common.config import load_config
    from ddpmseg.features.store import FeatureStore

    H, W, C, K = 8, 8, 6, 19
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

    return cfg, store, pixels, predict


def test_each_image_is_predicted_by_the_fold_ensemble_that_never_saw_it(tmp_path):
    """out_of_fold_probabilities end to end on a small random store (4 images + 1 augmented copy
    each, 2 folds): image i's first prediction is exactly the prediction of the ensemble saved for
    its fold, and that ensemble's weights are exactly those of an ensemble trained with the fold's
    seed on the pixels of the OTHER images and their copies only (selected here by a plain loop)."""
    from ddpmseg.common.seeding import stream_seed
    from ddpmseg.classifier.train import EnsembleSettings, train_ensemble

    n, (H, W), C, K = 4, (8, 8), 6, 19
    cfg, store, pixels, predict = small_problem(n)
    index = pixels.index
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


def test_windows_are_predicted_by_the_fold_ensemble_of_their_image(tmp_path):
    windows = [1, 2, 1]  # 3 images cut into 4 windows: windows 1 and 2 are image 1's
    cfg, store, pixels, predict = small_problem(sum(windows))
    probs = out_of_fold_probabilities(store, pixels, cfg, sum(windows), folds=2, members=1, folder=str(tmp_path),
                                      predict=predict, device="cpu", log=lambda m: None, windows_per_image=windows)
    fold = fold_assignment(3, 2, cfg["seed"], windows)
    for i, f in enumerate(fold.tolist()):
        assert torch.equal(probs[i], predict(load_ensemble(str(tmp_path / f"fold_{f}"), 1, 6, 19), i))


class Code:
    """Unpickling this needs code (this class), which a weights_only load refuses."""


def test_fold_training_settings_and_resume(tmp_path, monkeypatch):
    """The fold ensembles train on the given device with the run's epoch length and log, the result is kept
    in first_predictions.pt, and a rerun trains nothing: it reads that file back, or, without it, the fold
    members already saved."""
    n, HW = 4, 8 * 8
    cfg, store, pixels, predict = small_problem(n)
    calls = []
    train, load = crossfit.train_ensemble, crossfit.load_ensemble
    monkeypatch.setattr(crossfit, "train_ensemble", lambda *a, **kw: (
        calls.append(("train", kw["device"], kw["epoch_size"], kw["log"])), train(*a, **kw))[1])
    monkeypatch.setattr(crossfit, "load_ensemble", lambda *a: (calls.append(("load", *a[4:])), load(*a))[1])
    log = []

    def run(**keys):
        return out_of_fold_probabilities(store, pixels, {**cfg, **keys}, n, folds=2, members=1, folder=str(tmp_path),
                                         predict=predict, device="cpu", log=log.append)

    probs = run()
    held_out = [fold_assignment(n, 2, cfg["seed"]).eq(f).nonzero().flatten().tolist() for f in range(2)]
    assert [m for m in log if m.startswith("refiner")] == [  # the rest is train_ensemble's, through the same log
        f"refiner first predictions: fold {f + 1}/2 (images {held_out[f]} held out), training 1 members" for f in range(2)]
    # An epoch is the un-augmented pixels the fold trains on: its 2 other images' (all labelled).
    assert calls == [("train", "cpu", 2 * HW, log.append), ("load", "cpu")] * 2
    saved = tmp_path / "first_predictions.pt"
    assert torch.equal(torch.load(saved, weights_only=True), probs)
    calls.clear(), log.clear()
    assert torch.equal(run(), probs) and calls == [] and log == []
    saved.unlink()  # stopped after the fold members were saved, before the final tensor
    assert torch.equal(run(), probs) and calls == [("load", "cpu")] * 2 and log == []
    # epoch_pixels "all": no epoch length is given (an epoch is every pixel, augmented copies too).
    saved.unlink()
    for f in range(2):
        (tmp_path / f"fold_{f}" / "model_0.pth").unlink()
    calls.clear()
    run(epoch_pixels="all")
    assert [c[2] for c in calls if c[0] == "train"] == [None, None]
    # Safe loading: a first_predictions.pt that needs code to unpickle is refused, its code never runs.
    torch.save(Code(), saved)
    with pytest.raises(pickle.UnpicklingError):
        run()
