"""One test image of any size predicted through its working-resolution windows (ddpmseg.data.windows),
every output at the image's own size (H, W), where evaluation scores it against the image's own label.

An image that is one window at its own size (a square image of the working side S) is predicted
exactly as the square computation always was: each voting mode's mask, the refiner's masks and the
uncertainty come straight from the window's votes. Any other image merges its windows as
``Segmenter`` does: each voting mode's per-pixel class distribution (``Votes.distribution``) is averaged
where windows overlap, resized bilinearly to H x W and its argmax taken; the refiner's output is merged
the same way from its class distributions, and its earlier noise steps (reported as miou_by_step only)
from their masks as one-hot distributions; the uncertainty is averaged and resized alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.windows import Tiling
from .predict import image_uncertainty
from .predictor import Predictor


@dataclass
class ImagePrediction:
    """One test image's predictions at its own size (H, W)."""
    masks: dict[str, torch.Tensor]  # voting mode -> [H, W] class ids
    refined: list[torch.Tensor]     # the refiner's [H, W] mask after each noise step; [] without a refiner
    uncertainty: torch.Tensor       # [H, W] members' mutual information per pixel, nats
    score: float                    # the image's uncertainty (image_uncertainty)


def predict_image(predictor: Predictor, image: torch.Tensor, tiling: Tiling, own_hw: tuple[int, int],
                  first_index: int, name: str, modes: tuple[str, ...]) -> ImagePrediction:
    """Predict ``image`` [3, h, w] (short side S) cut by ``tiling``; its windows take the indices
    ``first_index``, ``first_index + 1``, ... (they seed test-time views and refiner noise)."""
    crops = list(tiling.crops(image))
    n, top_fraction = len(crops), predictor.cfg["uncertainty_top_fraction"]
    names = [name] if n == 1 else [f"{name} (window {j + 1} of {n})" for j in range(n)]
    votes = [predictor.votes(crop, first_index + j, names[j]) for j, crop in enumerate(crops)]
    refined = ([predictor.refined(crop, v, first_index + j) for j, (crop, v) in enumerate(zip(crops, votes))]
               if predictor.refiner is not None else [])
    if n == 1 and (tiling.height, tiling.width) == own_hw:
        hw, v = predictor.hw, votes[0]
        uncertainty = v.uncertainty()
        return ImagePrediction({m: v.mask(m).reshape(hw).cpu() for m in modes}, refined[0][1] if refined else [],
                               uncertainty.reshape(hw), image_uncertainty(uncertainty, top_fraction))
    k, s = predictor.cfg["number_class"], tiling.size

    def own_size(maps: list[torch.Tensor]) -> torch.Tensor:
        merged = tiling.merge([m.float().cpu() for m in maps])
        if (tiling.height, tiling.width) == own_hw:
            return merged
        return F.interpolate(merged[None], size=own_hw, mode="bilinear", align_corners=False)[0]

    def one_hot(mask: torch.Tensor) -> torch.Tensor:
        return F.one_hot(mask.reshape(s, s).long(), k).permute(2, 0, 1)

    masks = {m: own_size([v.distribution(m).T.reshape(k, s, s) for v in votes]).argmax(0) for m in modes}
    steps = []
    if refined:
        steps = [own_size([one_hot(masks[step]) for _, masks in refined]).argmax(0)
                 for step in range(len(refined[0][1]) - 1)] + [own_size([probs for probs, _ in refined]).argmax(0)]
    uncertainty = own_size([v.uncertainty().reshape(1, s, s) for v in votes])[0]
    return ImagePrediction(masks, steps, uncertainty, image_uncertainty(uncertainty, top_fraction))
