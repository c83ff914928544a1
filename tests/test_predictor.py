"""ddpmseg.classifier.predictor: the votes of an image and its test-time views, checked against views
built here by hand."""
from __future__ import annotations

import torch

from ddpmseg.classifier.ensemble import PixelEnsemble
from ddpmseg.classifier.predict import Votes, ensemble_logits
from ddpmseg.classifier.predictor import Predictor
from ddpmseg.data.augment import tta_view, view_seed
from ddpmseg.features.rgb_xy import RGBPositionFeatures

SIZE, K, MEMBERS = 16, 4, 2
PAIRS = [[1, 2]]  # a left/right pair; classes 0 and 3 have no mirror image
SWAPPED = [0, 2, 1, 3]  # class c of the mirrored view votes for class SWAPPED[c] of the image


def test_mirror_view_votes_are_the_flipped_logits_with_left_right_classes_swapped():
    """With tta ["hflip"], the votes are those of the image plus those of its mirror image, flipped
    back and with each hflip_class_pairs pair exchanged (rgb_xy features: the x feature does not
    mirror, so the two views give different logits)."""
    backbone = RGBPositionFeatures(SIZE)
    gens = [torch.Generator().manual_seed(m) for m in range(MEMBERS)]
    ens = PixelEnsemble(MEMBERS, 5, K, generators=gens).eval()
    cfg = {"dim": [SIZE, SIZE, 5], "number_class": K, "tta": ["hflip"], "hflip_class_pairs": PAIRS, "seed": 0}
    image = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    votes = Predictor(cfg, backbone, torch.device("cpu"), ensemble=ens).votes(image, 0)

    hw = (SIZE, SIZE)
    with torch.no_grad():
        plain = ensemble_logits(ens, backbone(image[None]), hw)
        seen, flipped = tta_view(image, "hflip", view_seed(0, 0, 0))
        assert flipped
        mirrored = ensemble_logits(ens, backbone(seen[None]), hw).reshape(MEMBERS, SIZE, SIZE, K).flip(2)
    back = mirrored.reshape(MEMBERS, -1, K)[..., SWAPPED]
    assert not torch.equal(back.argmax(-1), mirrored.reshape(MEMBERS, -1, K).argmax(-1))  # the swap shows
    expected = Votes.of(plain)
    expected.add(back)
    assert votes.n == expected.n == 2 * MEMBERS
    for name in ("counts", "sum_logp", "sum_p", "sum_wp", "sum_entropy"):
        assert torch.equal(getattr(votes, name), getattr(expected, name)), name
