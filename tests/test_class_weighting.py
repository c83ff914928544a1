"""class_weighting: class weights from the pixels trained on, the weighted loss, and class-balanced batches."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from conftest import CELEBAMASK64, REPO, require
from ddpmseg.classifier.class_balance import BalancedBatchSource, class_weights
from ddpmseg.classifier.etf import simplex_etf
from ddpmseg.classifier.train import member_generator, member_losses, per_member_ce

# 6 pixels of class 0, 3 of class 1, 1 of class 2, none of class 3 (K = 4).
LABELS = torch.tensor([0, 1, 0, 2, 0, 1, 0, 0, 1, 0])
F = {0: 0.6, 1: 0.3, 2: 0.1}  # their shares f_c, counted by hand


def test_inverse_frequency_weights_are_one_over_f_normalised_to_pixel_weighted_mean_one():
    w = class_weights(LABELS, 4, "inverse_frequency")
    # w_c = a / f_c with sum_c f_c w_c = 3a = 1: w_c = 1 / (3 f_c); the absent class 3 gets 0.
    want = [1 / (3 * 0.6), 1 / (3 * 0.3), 1 / (3 * 0.1), 0.0]
    assert w.dtype == torch.float64
    torch.testing.assert_close(w, torch.tensor(want, dtype=torch.float64), rtol=1e-15, atol=0)  # float64 rounding


def test_sqrt_inverse_frequency_weights_are_one_over_sqrt_f_normalised_to_pixel_weighted_mean_one():
    w = class_weights(LABELS, 4, "sqrt_inverse_frequency")
    # w_c = a / sqrt(f_c) with sum_c f_c w_c = a * sum_c sqrt(f_c) = 1.
    norm = math.sqrt(0.6) + math.sqrt(0.3) + math.sqrt(0.1)
    want = [1 / (math.sqrt(F[c]) * norm) for c in range(3)] + [0.0]
    torch.testing.assert_close(w, torch.tensor(want, dtype=torch.float64), rtol=1e-15, atol=0)
    assert sum(F[c] * w[c].item() for c in range(3)) == pytest.approx(1, abs=1e-15)


@pytest.mark.parametrize("mode", ["none", "balanced_sampling"])
def test_unweighted_modes_have_no_weights(mode):
    assert class_weights(LABELS, 4, mode) is None


def hand_ce(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(1/B) sum_i w[y_i] * (log sum_k exp(z_ik) - z_i,y_i) per member, with Python floats."""
    out = []
    for zm, ym in zip(logits.tolist(), y.tolist()):
        terms = [w[c].item() * (math.log(sum(math.exp(v) for v in z)) - z[c]) for z, c in zip(zm, ym)]
        out.append(sum(terms) / len(terms))
    return torch.tensor(out, dtype=torch.float64)


def test_weighted_loss_is_the_hand_computed_weighted_cross_entropy_with_and_without_etf():
    g = torch.Generator().manual_seed(0)
    M, B, K, D = 3, 7, 4, 5
    logits = torch.randn(M, B, K, generator=g, dtype=torch.float64)
    features = torch.randn(M, B, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (M, B), generator=g)
    w = class_weights(LABELS, K, "inverse_frequency")
    # float64 on both sides, the same operations in another order: rounding only (~1e-16 relative)
    torch.testing.assert_close(per_member_ce(logits, y, w), hand_ce(logits, y, w), rtol=1e-13, atol=0)
    etf = simplex_etf(D, K, seed=0).double()
    ce, total = member_losses(logits, features, y, etf, 0.7, 0.4, w)
    torch.testing.assert_close(ce, hand_ce(logits, y, w), rtol=1e-13, atol=0)
    torch.testing.assert_close(total, 0.7 * hand_ce(logits, y, w) + 0.4 * hand_ce(features @ etf, y, w),
                               rtol=1e-13, atol=0)
    # weights None is the plain mean cross-entropy, as published
    torch.testing.assert_close(per_member_ce(logits, y), hand_ce(logits, y, torch.ones(K, dtype=torch.float64)),
                               rtol=1e-13, atol=0)


def test_balanced_sampling_draws_every_present_class_equally_often_and_its_pixels_uniformly():
    # 1000 pixels of class 0, 30 of class 1, 3 of class 3, none of class 2: 333 : 10 : 1 unbalanced.
    labels = torch.cat([torch.zeros(1000), torch.ones(30), torch.full((3,), 3)]).long()[torch.randperm(
        1033, generator=torch.Generator().manual_seed(1))]
    members, batch, batches = 2, 64, 400
    source = BalancedBatchSource([member_generator(0, m) for m in range(members)], labels, batch, 4)
    drawn = torch.stack([source.indices(step) for step in range(batches)])  # [batches, members, batch]
    n = batches * batch  # draws per member
    for m in range(members):
        cls = labels[drawn[:, m].reshape(-1)]
        counts = torch.bincount(cls, minlength=4).tolist()
        assert counts[2] == 0  # a class without training pixels is never drawn
        # Each present class is drawn with probability 1/3: its count is Binomial(n, 1/3), whose standard
        # deviation is sigma = sqrt(n * 1/3 * 2/3) (~75 here); 5 sigma is exceeded with probability < 1e-6.
        sigma = math.sqrt(n * (1 / 3) * (2 / 3))
        for c in (0, 1, 3):
            assert abs(counts[c] - n / 3) <= 5 * sigma, (m, c, counts)
        # Within class 3 (3 pixels), each pixel is Binomial(counts[3], 1/3) too.
        picks = drawn[:, m].reshape(-1)[cls == 3]
        per_pixel = [(picks == i).sum().item() for i in (labels == 3).nonzero().flatten().tolist()]
        s3 = math.sqrt(counts[3] * (1 / 3) * (2 / 3))
        assert sum(per_pixel) == counts[3] and all(abs(k - counts[3] / 3) <= 5 * s3 for k in per_pixel)
    assert not torch.equal(drawn[:, 0], drawn[:, 1])  # each member its own stream


def test_balanced_sampling_is_seeded_by_the_members_stream_and_resumes_where_it_was():
    labels = torch.tensor([0] * 50 + [1] * 5 + [2] * 1)

    def source():
        return BalancedBatchSource([member_generator(7, m) for m in (0, 3)], labels, 8, 3)

    a, b = source(), source()
    first = [a.indices(s) for s in range(5)]
    states = a.epoch_states
    later = [a.indices(s) for s in range(5, 9)]
    assert all(torch.equal(x, b.indices(s)) for s, x in enumerate(first))  # the same seed: the same batches
    b.restore(states)
    assert all(torch.equal(x, b.indices(s)) for s, x in zip(range(5, 9), later))  # a resume replays them
    # member 3 draws alone what it draws beside member 0
    alone = BalancedBatchSource([member_generator(7, 3)], labels, 8, 3)
    assert all(torch.equal(x[1], alone.indices(s)[0]) for s, x in enumerate(first))


def test_a_runs_weights_come_from_the_pixels_it_trained_on(tmp_path, capsys):
    """An rgb_xy run with min_region_pixels 20: the weights it logs are the hand-computed ones from its
    training masks after the ignore label and the small regions are removed (not from the raw masks)."""
    from ddpmseg.commands import train as train_interpreter

    data = require(CELEBAMASK64) / "real"
    faces = json.loads((REPO / "experiments/celebamask64/ddpm.json").read_text())
    cfg = {k: faces[k] for k in ("category", "number_class", "ignore_label", "class_names", "palette")}
    cfg.update(exp_dir=str(tmp_path / "exp"), model_type="rgb_xy", model_path="", dim=[64, 64, 5], steps=[],
               blocks=[], training_path=str(data / "train"), testing_path=str(data / "test"), training_number=3,
               testing_number=1, model_num=1, max_epochs=1, device="cpu", min_region_pixels=20,
               class_weighting="inverse_frequency")
    (tmp_path / "exp.json").write_text(json.dumps(cfg))
    assert train_interpreter.main(["--exp", str(tmp_path / "exp.json")]) == 0
    line = re.search(r"class weights \(inverse_frequency, pixel-weighted mean 1\): (.*)", capsys.readouterr().out)
    logged = [float(v) for v in line.group(1).split(", ")]

    K, ignore = cfg["number_class"], cfg["ignore_label"]
    kept, raw = np.zeros(K), np.zeros(K)
    for path in sorted((data / "train").glob("*.npy"))[:3]:
        mask = np.load(path)
        for c in range(K):
            n = int((mask == c).sum())
            raw[c] += n
            kept[c] += n if n >= 20 else 0  # a region under 20 pixels of an image is not trained on
    assert 0 < kept.sum() < raw.sum() and ignore not in range(K)

    def inverse(counts):
        f = counts / counts.sum()
        return [1 / ((f > 0).sum() * fc) if fc > 0 else 0.0 for fc in f]

    want = inverse(kept)
    # the log prints 3 significant digits: relative 5e-3
    assert logged == pytest.approx(want, rel=5e-3)
    assert logged != pytest.approx(inverse(raw), rel=5e-3)  # the removal matters for these masks
    resolved = json.loads(next((tmp_path / "exp").rglob("config.json")).read_text())
    assert (resolved["class_weighting"], resolved["noise_draws"]) == ("inverse_frequency", 1)
