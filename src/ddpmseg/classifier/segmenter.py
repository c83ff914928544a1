"""A trained run applied to new, unlabelled images of any size and aspect ratio.

    seg = Segmenter.from_run("pixel_classifiers/x/50_150_250_5_6_7_8_12").predict(Image.open("a.jpg"))

The image is cut into the windows of ``ddpmseg.data.windows`` (short side scaled to the working
resolution S, S x S windows overlapping along the long side), the same windows training and evaluation
use; each window gets the run's full inference (members, test-time views, voting, refiner); their
per-pixel class distributions and uncertainties are averaged where windows overlap and resized
bilinearly to the image's own size. Without test-time views or a refiner (whose random streams evaluation
draws per test-set window) this is exactly evaluation's prediction, for an image of any size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..common.device import resolve_device
from ..data.folders import image_transform, to_rgb
from ..data.windows import Tiling
from ..features.registry import open_backbone
from .interpreter import load_trained_config
from .predict import feature_descriptor, image_uncertainty
from .predictor import Predictor


@dataclass
class Segmentation:
    """One image's result, all at the image's own size (H, W)."""
    mask: np.ndarray           # [H, W] int64 class ids: argmax of ``probabilities``
    probabilities: np.ndarray | None  # [K, H, W] float32 class distribution under the run's voting (or
    # refiner); None when predict(..., probabilities=False) spared the K full-size maps
    uncertainty: np.ndarray    # [H, W] float32 members' mutual information per pixel, in nats
    score: float               # the image's uncertainty: mean of its top uncertainty_top_fraction pixels
    disagreement: np.ndarray   # [H, W] float32 share of member (and view) votes that differ from the majority
    descriptor: np.ndarray     # [D] float32 unit vector: the windows' mean ``feature_descriptor`` (plain view)


class Segmenter:
    """The ensemble (and refiner) of one finished run, ready to segment PIL images."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.cfg = predictor.cfg
        self.size = self.cfg["dim"][0]
        self.transform = image_transform(self.size)

    @classmethod
    def from_run(cls, run_dir: str, overrides: dict[str, Any] | None = None,
                 log: Callable[[str], None] = lambda msg: None) -> "Segmenter":
        """The run in ``run_dir`` from its ``config.json``, with ``overrides`` of inference-only keys
        (e.g. ``{"voting": "soft", "tta": ["hflip"]}``). Its test set is not needed."""
        cfg = load_trained_config(run_dir, overrides or {})
        device = resolve_device(cfg["device"])
        backbone = open_backbone(cfg, cfg["model_flags"], device, log)
        return cls(Predictor.load(cfg, backbone, run_dir, device))

    @property
    def class_names(self) -> list[str]:
        return self.cfg["class_names"]

    @property
    def palette(self) -> list[list[int]]:
        return self.cfg["palette"]

    def window(self, crop: torch.Tensor, index: int) -> tuple[torch.Tensor, ...]:
        """(class distribution [K, S, S], uncertainty [S, S], disagreement [S, S], feature descriptor [D])
        of one working-resolution window; ``index`` seeds its random test-time views and refiner noise as
        a test image index does in evaluation."""
        p = self.predictor
        layers = p.features(crop, f"image {index}")
        votes = p.votes(crop, index, layers=layers)
        probs = p.distribution(votes) if p.refiner is None else p.refined(crop, votes, index)[0]
        disagreement = 1 - votes.counts.max(1).values / votes.n
        return (probs.float().cpu(), votes.uncertainty().reshape(p.hw).float().cpu(),
                disagreement.reshape(p.hw).float().cpu(), feature_descriptor(layers).cpu())

    @torch.no_grad()
    def predict(self, image: Image.Image, probabilities: bool = True) -> Segmentation:
        """Segment one PIL image (any mode, size and aspect; EXIF orientation is applied).

        ``probabilities=False`` resizes one class map at a time and keeps only the running argmax,
        so a large photo needs a few [H, W] maps instead of K of them (same mask).
        """
        rgb = to_rgb(image)
        width, height = rgb.size
        x = self.transform(rgb)
        _, h, w = x.shape
        k = self.cfg["number_class"]
        tiling = Tiling(h, w, self.size)
        windows = [self.window(crop, i) for i, crop in enumerate(tiling.crops(x))]
        probs = tiling.merge([probs for probs, _, _, _ in windows])
        unc, dis = tiling.merge([torch.stack([unc, dis]) for _, unc, dis, _ in windows])
        descriptors = [descriptor for _, _, _, descriptor in windows]
        full_size = (lambda m: m) if (h, w) == (height, width) else (
            lambda m: F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False))
        unc, dis = full_size(unc[None, None])[0, 0], full_size(dis[None, None])[0, 0]
        if probabilities:
            probs = full_size(probs[None])[0]
            mask = probs.argmax(0)
        else:
            best, mask = full_size(probs[None, :1])[0, 0], torch.zeros(height, width, dtype=torch.long)
            for c in range(1, k):
                p = full_size(probs[None, c:c + 1])[0, 0]
                mask[p > best] = c  # strictly greater: ties keep the lower id, as argmax does
                best = torch.maximum(best, p)
        return Segmentation(mask=mask.numpy(), probabilities=probs.numpy() if probabilities else None,
                            uncertainty=unc.numpy(), score=image_uncertainty(unc, self.cfg["uncertainty_top_fraction"]),
                            disagreement=dis.numpy(),
                            descriptor=F.normalize(torch.stack(descriptors).mean(0), dim=0).numpy())
