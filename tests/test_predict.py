"""Inference: native-resolution projection == full upsampling; voting modes; uncertainty; flipped views."""
import math

import pytest
import torch
import torch.nn.functional as F

from ddpmseg.classifier.ensemble import PixelEnsemble
from ddpmseg.classifier.predict import (VOTING_MODES, Votes, ensemble_logits, feature_descriptor, image_uncertainty,
                                        predict_image, view_logits)
from ddpmseg.classifier.train import member_generator


def trained_looking_ensemble(M, C, K, seed=0):
    """An ensemble with non-default BN affine params, running stats and biases."""
    ens = PixelEnsemble(M, C, K, generators=[member_generator(seed, m) for m in range(M)])
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for w in ens.weights:
            w.mul_(5)  # larger weights: logits of order 1, so errors would show
        for b in ens.biases:
            b.copy_(0.1 * torch.randn(b.shape, generator=g))
        for j in range(2):
            ens.bn_weight[j].copy_(1 + 0.3 * torch.randn(ens.bn_weight[j].shape, generator=g))
            ens.bn_bias[j].copy_(0.3 * torch.randn(ens.bn_bias[j].shape, generator=g))
            getattr(ens, f"running_mean{j}").copy_(0.2 * torch.rand(ens.bn_weight[j].shape, generator=g))
            getattr(ens, f"running_var{j}").copy_(0.2 + torch.rand(ens.bn_weight[j].shape, generator=g))
    return ens.eval()


def full_upsampling_logits(ens, layers, out_hw):
    """The original's way: upsample every (fp16-stored) map to the image size, concatenate, run the MLPs."""
    feats = torch.cat([F.interpolate(a.half().float()[None], size=out_hw, mode="bilinear", align_corners=False)[0]
                       for a in layers])  # [C, H, W]
    x = feats.reshape(feats.shape[0], -1).T
    with torch.no_grad():
        return ens.eval()(x)


CASES = {
    "square": ([(8, 4, 4), (6, 8, 8), (4, 16, 16)], (16, 16)),
    "non_square": ([(5, 3, 5), (3, 6, 10), (4, 12, 4)], (12, 20)),  # includes a map taller than wide
    "downsample": ([(6, 32, 32), (4, 8, 8)], (16, 16)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_native_projection_equals_full_upsampling(case):
    shapes, out_hw = CASES[case]
    g = torch.Generator().manual_seed(1)
    layers = [torch.randn(c, h, w, generator=g) * 3 for c, h, w in shapes]
    ens = trained_looking_ensemble(3, sum(c for c, _, _ in shapes), 5)
    got = ensemble_logits(ens, layers, out_hw)
    want = full_upsampling_logits(ens, layers, out_hw)
    assert got.shape == (3, out_hw[0] * out_hw[1], 5)
    assert want.abs().max() > 1  # logits are not trivially small
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_native_projection_uses_fp16_rounded_maps_and_accepts_batched_maps():
    shapes, out_hw = CASES["square"]
    g = torch.Generator().manual_seed(2)
    layers = [torch.randn(1, c, h, w, generator=g) * 3 + 1e-3 for c, h, w in shapes]
    ens = trained_looking_ensemble(2, 18, 30)  # the wide MLP
    got = ensemble_logits(ens, layers, out_hw)
    want = full_upsampling_logits(ens, [a[0] for a in layers], out_hw)
    assert torch.allclose(got, want, atol=1e-4)
    assert got.shape == (2, 256, 30)


def test_channel_mismatch_raises():
    ens = trained_looking_ensemble(2, 10, 4)
    with pytest.raises(ValueError, match="9 channels but the ensemble expects 10"):
        ensemble_logits(ens, [torch.randn(5, 4, 4), torch.randn(4, 8, 8)], (8, 8))


def logits_from_votes(votes, K):
    """[M, P] argmax choices -> logits [M, P, K] whose argmax is exactly those votes."""
    votes = torch.tensor(votes)
    g = torch.Generator().manual_seed(0)
    logits = torch.rand(*votes.shape, K, generator=g)
    return logits.scatter(-1, votes[..., None], 5.0)


def majority_vote(logits):
    return Votes.of(logits).mask("hard")


def pixel_uncertainty(logits):
    return Votes.of(logits).uncertainty()


def test_majority_vote_hand_made():
    votes = [  # members x pixels
        [2, 3, 0, 1, 4],
        [2, 1, 0, 3, 4],
        [1, 3, 1, 0, 2],
        [0, 1, 0, 2, 3],
    ]
    # pixel 0: 2,2,1,0 -> 2 (the last member says 0)
    # pixel 1: 3,1,3,1 -> tie between 1 and 3 -> lowest class id 1
    # pixel 2: 0,0,1,0 -> 0
    # pixel 3: 1,3,0,2 -> four-way tie -> 0
    # pixel 4: 4,4,2,3 -> 4 (the last member says 3)
    logits = logits_from_votes(votes, 5)
    assert (logits.argmax(-1) == torch.tensor(votes)).all()
    vote = majority_vote(logits)
    assert vote.tolist() == [2, 1, 0, 0, 4]
    # The published fork's bug (keeping only the last member's argmax) would not give this.
    assert vote.tolist() != logits[-1].argmax(-1).tolist()


def test_majority_vote_single_member_and_unanimous():
    logits = torch.randn(1, 50, 7)
    assert torch.equal(majority_vote(logits), logits[0].argmax(-1))
    same = logits.expand(5, 50, 7)
    assert torch.equal(majority_vote(same), logits[0].argmax(-1))


def test_pixel_uncertainty_zero_when_members_agree():
    logits = torch.randn(1, 30, 6).expand(4, 30, 6) * 3
    js = pixel_uncertainty(logits)
    assert js.shape == (30,)
    assert js.abs().max() < 1e-5
    disagree = torch.randn(4, 30, 6) * 3
    js = pixel_uncertainty(disagree)
    assert (js > 1e-4).all()


def test_pixel_uncertainty_hand_example():
    def H(p):
        return -sum(q * math.log(q) for q in p if q > 0)

    # Two members, two classes: p = [0.9, 0.1] and [0.1, 0.9]; mean [0.5, 0.5].
    p1, p2 = [0.9, 0.1], [0.1, 0.9]
    # Pixel 2, three members, three classes.
    q = [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]]
    logits_a = torch.log(torch.tensor([[p1], [p2]]))  # [2, 1, 2]
    logits_b = torch.log(torch.tensor(q))[:, None] + torch.tensor([[[3.0]], [[-1.0]], [[0.5]]])  # shift-invariant
    js_a = pixel_uncertainty(logits_a)
    js_b = pixel_uncertainty(logits_b)
    assert js_a.item() == pytest.approx(math.log(2) - H(p1), abs=1e-6)
    assert js_a.item() == pytest.approx(0.368064, abs=1e-6)
    mean_q = [sum(col) / 3 for col in zip(*q)]
    assert js_b.item() == pytest.approx(H(mean_q) - sum(H(r) for r in q) / 3, abs=1e-6)


def test_image_uncertainty_is_mean_of_top_fraction():
    js = torch.arange(100.0)[torch.randperm(100, generator=torch.Generator().manual_seed(0))].reshape(10, 10)
    assert image_uncertainty(js) == pytest.approx(94.5)  # top 10: 90..99
    assert image_uncertainty(js, top_fraction=0.25) == pytest.approx(87.0)  # top 25: 75..99
    assert image_uncertainty(js, top_fraction=1.0) == pytest.approx(49.5)
    assert image_uncertainty(torch.tensor([0.1, 0.7, 0.3])) == pytest.approx(0.7)  # at least one pixel
    assert isinstance(image_uncertainty(js), float)


def test_predict_image():
    shapes, out_hw = CASES["non_square"]
    g = torch.Generator().manual_seed(3)
    layers = [torch.randn(c, h, w, generator=g) * 3 for c, h, w in shapes]
    ens = trained_looking_ensemble(5, 12, 4)
    mask, score = predict_image(ens, layers, out_hw)
    assert mask.shape == out_hw and mask.dtype == torch.long and mask.device.type == "cpu"
    assert isinstance(score, float)
    logits = full_upsampling_logits(ens, layers, out_hw)
    assert torch.equal(mask, majority_vote(logits).reshape(out_hw))
    assert score == pytest.approx(image_uncertainty(pixel_uncertainty(logits)), abs=1e-4)
    assert score > 0
    # top_fraction reaches the score: all pixels -> the mean pixel uncertainty
    _, score_all = predict_image(ens, layers, out_hw, top_fraction=1.0)
    assert score_all == pytest.approx(pixel_uncertainty(logits).mean().item(), abs=1e-4)


def test_soft_votings_hand_example():
    # One pixel, three members, three classes. Member probabilities:
    p = torch.tensor([[0.50, 0.50, 0.00001], [0.45, 0.10, 0.45], [0.02, 0.49, 0.49]])
    logits = torch.log(p)[:, None]  # [3, 1, 3]
    votes = Votes.of(logits)
    # argmaxes 0, 0, 1 (first maximum) -> hard 0
    assert votes.mask("hard").item() == 0
    # mean p = [0.3233, 0.3633, 0.3133] -> soft_prob 1
    assert votes.mask("soft_prob").item() == 1
    # mean log p: class 2 is ruined by the near-zero of member 0; class 1 beats class 0 -> soft 1
    assert (torch.log(p).mean(0).argmax().item(), votes.mask("soft").item()) == (1, 1)
    # last member: its argmax (classes 1 and 2 tie -> first) is 1
    assert votes.mask("last_member").item() == 1
    w = torch.exp((p * torch.log(p)).sum(1))  # exp(-entropy)
    assert votes.mask("weighted").item() == (w[:, None] * p).sum(0).argmax().item()


def test_voting_modes_differ_on_random_ensembles():
    """Every mode is a different rule: on many disagreeing pixels each pair of modes disagrees somewhere."""
    logits = torch.randn(5, 2000, 6, generator=torch.Generator().manual_seed(0)) * 2
    votes = Votes.of(logits)
    masks = {m: votes.mask(m) for m in VOTING_MODES}
    for a in VOTING_MODES:
        for b in VOTING_MODES:
            if a < b:
                assert not torch.equal(masks[a], masks[b]), (a, b)
    assert torch.equal(masks["last_member"], logits[-1].argmax(-1))
    assert torch.equal(masks["soft"], torch.log_softmax(logits, -1).mean(0).argmax(-1))
    assert torch.equal(masks["soft_prob"], torch.softmax(logits, -1).mean(0).argmax(-1))
    p = torch.softmax(logits, -1)
    assert torch.equal(masks["weighted"], (torch.exp((p * p.log()).sum(-1))[..., None] * p).sum(0).argmax(-1))
    assert torch.equal(votes.mask(), masks["hard"])
    with pytest.raises(ValueError, match="unknown voting mode 'mean'"):
        votes.mask("mean")


def test_distribution_of_each_voting_mode():
    """Votes.distribution by each mode's definition, a distribution per pixel whose argmax is mask(mode)."""
    logits = torch.randn(5, 300, 7, generator=torch.Generator().manual_seed(0))
    votes = Votes.of(logits)
    logp = torch.log_softmax(logits, -1)
    p = logp.exp()
    wp = (torch.exp((p * logp).sum(-1))[..., None] * p).sum(0)  # each member weighted by exp(-its entropy)
    want = {"hard": F.one_hot(logits.argmax(-1), 7).float().mean(0), "soft": torch.softmax(logp.mean(0), -1),
            "soft_prob": p.mean(0), "weighted": wp / wp.sum(1, keepdim=True),
            "last_member": F.one_hot(logits[-1].argmax(-1), 7).float()}
    for mode in VOTING_MODES:
        dist = votes.distribution(mode)
        assert torch.allclose(dist, want[mode], atol=1e-6), mode  # float32 sums of <= 7 terms, in another order
        assert torch.equal(dist.argmax(1), votes.mask(mode)), mode
    assert torch.equal(votes.distribution(), votes.distribution("hard"))
    with pytest.raises(ValueError, match="unknown voting mode 'mean'"):
        votes.distribution("mean")


def test_last_member_distribution_keeps_every_class_column():
    """The last member votes only classes 0 and 1 of 4: its one-hot distribution still has 4 columns
    (segment.py averages distributions of overlapping windows, which must line up class by class)."""
    logits = torch.full((2, 3, 4), -5.0)
    logits[:, 0, 0] = logits[:, 1, 1] = logits[:, 2, 0] = 5.0
    want = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]])
    assert torch.equal(Votes.of(logits).distribution("last_member"), want)


def test_votes_live_on_the_device_of_their_logits():
    # The meta device stands in for a GPU (tensors with a device and no data): every running sum must be
    # where the logits are, or add() fails on a GPU.
    votes = Votes.of(torch.zeros(2, 4, 3, device="meta"))
    sums = (votes.counts, votes.sum_logp, votes.sum_p, votes.sum_wp, votes.sum_entropy)
    assert {t.device.type for t in sums} == {"meta"}


def test_feature_descriptor_hand_example():
    # Channel means [3, 4] and [1]: normalised per map to [0.6, 0.8] and [1], then together (norm sqrt 2).
    a = torch.stack([torch.full((2, 2), 3.0), torch.full((2, 2), 4.0)])
    b = torch.tensor([[[0.0, 2.0], [0.0, 2.0]]])
    want = torch.tensor([0.6, 0.8, 1.0]) / math.sqrt(2)
    assert torch.allclose(feature_descriptor([a, b]), want, atol=1e-7)  # float32 rounding of 3 divisions
    # a batched map [1, C, h, w] and float16 maps give the same float32 vector
    got = feature_descriptor([a[None].half(), b.half()])
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-7)


def test_votes_added_in_groups_equal_votes_added_at_once():
    logits = torch.randn(6, 300, 5, generator=torch.Generator().manual_seed(1)) * 2
    once = Votes.of(logits)
    groups = Votes(300, 5)
    for part in logits.split([2, 3, 1]):
        groups.add(part)
    for mode in VOTING_MODES:
        assert torch.equal(once.mask(mode), groups.mask(mode)), mode
    assert torch.allclose(once.uncertainty(), groups.uncertainty(), atol=1e-6)


def test_flipped_view_is_mapped_back():
    """Predicting on a mirrored input and flipping the logits back gives the unmirrored prediction."""
    shapes, out_hw = CASES["non_square"]
    g = torch.Generator().manual_seed(5)
    layers = [torch.randn(c, h, w, generator=g) for c, h, w in shapes]
    ens = trained_looking_ensemble(3, 12, 4)
    want = ensemble_logits(ens, layers, out_hw)
    got = view_logits(ens, [a.flip(-1) for a in layers], out_hw, flipped=True)
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(view_logits(ens, [a.flip(-1) for a in layers], out_hw), want, atol=1e-2)
    # With left/right class pairs, the mirrored view's scores for each pair are exchanged back.
    swapped = view_logits(ens, [a.flip(-1) for a in layers], out_hw, flipped=True, flip_pairs=[(0, 2)])
    assert torch.allclose(swapped, want[..., [2, 1, 0, 3]], atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ensemble_logits_on_cuda_equals_cpu():
    shapes, out_hw = CASES["non_square"]
    g = torch.Generator().manual_seed(4)
    layers = [torch.randn(c, h, w, generator=g) * 3 for c, h, w in shapes]
    ens = trained_looking_ensemble(3, 12, 5)
    want = ensemble_logits(ens, layers, out_hw)
    got = ensemble_logits(ens.cuda(), [a.cuda() for a in layers], out_hw)
    assert got.device.type == "cuda"
    assert torch.allclose(got.cpu(), want, atol=1e-3)
    mask, score = predict_image(ens, [a.cuda() for a in layers], out_hw)
    assert mask.device.type == "cpu" and isinstance(score, float)


def test_probabilities_are_the_mean_over_members_and_views():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    votes = Votes.of(a)
    votes.add(b)
    expected = torch.cat([a, b]).softmax(-1).mean(0)
    assert torch.allclose(votes.probabilities(), expected, atol=1e-6)
    assert torch.allclose(votes.probabilities().sum(-1), torch.ones(5))
    assert torch.equal(votes.probabilities().argmax(1), votes.mask("soft_prob"))
