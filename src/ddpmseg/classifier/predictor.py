"""From an image to its class distribution per pixel: the backbone's checked features, the ensemble's
votes on the image and its test-time views, the configured voting, and the mask refiner.

Evaluation (``ddpmseg.classifier.interpreter``), ``Segmenter``, DatasetDDPM labelling and the refiner's
out-of-fold first predictions all predict through this one class, so they see the same numbers.
"""
from __future__ import annotations

import os

import torch

from ..common.numerics import FLOAT16_MAX, check_features
from ..common.seeding import stream_generator
from ..data.augment import tta_view, view_seed
from ..features.registry import Backbone
from .predict import Votes, view_logits
from .refine import load_refiner, refine
from .train import load_ensemble

REFINER_FILE = "refiner.pt"


class Predictor:
    """The inference of one config: its backbone, and (for prediction) its trained ensemble and refiner."""

    def __init__(self, cfg: dict, backbone: Backbone, device: torch.device, ensemble=None, refiner=None,
                 refine_settings=None):
        self.cfg, self.backbone, self.device = cfg, backbone, device
        self.ensemble, self.refiner, self.refine_settings = ensemble, refiner, refine_settings
        self.hw = (cfg["dim"][0], cfg["dim"][0])
        self.layer_names = [layer.name for layer in backbone.layers()]

    @classmethod
    def load(cls, cfg: dict, backbone: Backbone, models_dir: str, device: torch.device) -> "Predictor":
        """The ensemble (and refiner, when ``cfg`` refines) trained in ``models_dir``."""
        ens = load_ensemble(models_dir, cfg["model_num"], cfg["dim"][2], cfg["number_class"], str(device))
        refiner, settings = (load_refiner(os.path.join(models_dir, REFINER_FILE), device) if cfg["refine"]
                             else (None, None))
        return cls(cfg, backbone, device, ens, refiner, settings)

    def features(self, image: torch.Tensor, what: str, store: bool = False) -> list[torch.Tensor]:
        """The activation maps of one image; NumericalError (naming ``what``) on NaN/inf, or on values
        the float16 feature store cannot hold when they are for the ``store``."""
        activations = self.backbone(image[None])
        check_features(activations, self.layer_names, what, FLOAT16_MAX if store else None)
        return activations

    def votes(self, image: torch.Tensor, image_index: int, name: str | None = None,
              layers: list[torch.Tensor] | None = None, ensemble=None) -> Votes:
        """The votes of ``ensemble`` (default: the trained one) on one image and on each configured
        test-time view of it; ``layers`` are the image's activation maps when the caller has them."""
        c, ens = self.cfg, ensemble if ensemble is not None else self.ensemble
        what = name or f"image {image_index}"
        votes = Votes(self.hw[0] * self.hw[1], c["number_class"], self.device)
        votes.add(view_logits(ens, layers if layers is not None else self.features(image, what), self.hw))
        for j, view in enumerate(c["tta"]):
            seen, flipped = tta_view(image, view, view_seed(c["seed"], image_index, j))
            votes.add(view_logits(ens, self.features(seen, f"{what} ({view} view)"), self.hw, flipped,
                                  c["hflip_class_pairs"]))
        return votes

    def probability_map(self, votes: Votes) -> torch.Tensor:
        """The mean class probabilities [K, H, W] of one image's votes: a refiner's first prediction."""
        return votes.probabilities().T.reshape(self.cfg["number_class"], *self.hw)

    def distribution(self, votes: Votes) -> torch.Tensor:
        """The class distribution [K, H, W] of the votes under the configured voting."""
        return votes.distribution(self.cfg["voting"]).T.reshape(self.cfg["number_class"], *self.hw)

    def refined(self, image: torch.Tensor, votes: Votes, image_index: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The refiner's (class distribution [K, H, W], mask [H, W] after each noise step) for one image,
        its re-noising drawn from the image's own "refine_noise" stream."""
        probs, masks = refine(self.refiner, image[None], self.probability_map(votes)[None], self.refine_settings,
                              generator=stream_generator("refine_noise", self.cfg["seed"], image_index))
        return probs[0], [m[0] for m in masks]
