"""Label every pixel of an image with a trained PixelEnsemble: voting and uncertainty.

Bilinear upsampling and the MLPs' first Linear layer are both linear maps, so they commute:
applying a member's first-layer weights to the activation maps at their native resolution
and upsampling the (much narrower) result gives the same pre-activations as upsampling the
full feature maps first. For the LSUN blocks that is ~20x fewer multiply-adds per image, and
the [C, H, W] upsampled feature tensor (2.2 GB at 256 px) never exists: working memory is one
member's [h1, H, W] map (33 MB at 256 px).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..data.augment import class_permutation
from .ensemble import PixelEnsemble


@torch.no_grad()
def ensemble_logits(ens: PixelEnsemble, layers: Sequence[torch.Tensor], out_hw: tuple[int, int]) -> torch.Tensor:
    """Logits [M, H*W, K] of every pixel; ``layers`` are [C_l, h_l, w_l] maps in feature order."""
    w0 = ens.weights[0]  # [M, C, h1]
    M, h1 = ens.num_members, w0.shape[2]
    H, W = out_hw
    native, offset = [], 0
    for a in layers:
        a = a[0] if a.dim() == 4 else a
        c, h, w = a.shape
        # Round to float16 first, as the training features were (the FeatureStore's dtype).
        native.append((a.to(w0.device).half().float().permute(1, 2, 0).reshape(h * w, c), offset, h, w))
        offset += c
    if offset != ens.dim:
        raise ValueError(f"the activations have {offset} channels but the ensemble expects {ens.dim}")
    first = torch.zeros(M, H * W, h1, device=w0.device)
    for m in range(M):
        for x, off, h, w in native:
            projected = (x @ w0[m, off:off + x.shape[1]]).reshape(1, h, w, h1).permute(0, 3, 1, 2)
            # A channels-last input (this permuted view) makes CPU interpolation ~16x faster.
            up = F.interpolate(projected, size=out_hw, mode="bilinear", align_corners=False)
            first[m] += up.permute(0, 2, 3, 1).reshape(H * W, h1)
    return ens.hidden(first + ens.biases[0][:, None])


# How the members' (and test-time views') predictions become one label per pixel.
VOTING_MODES = (
    "hard",         # majority of the argmax labels (the original; ties go to the lowest class id)
    "soft",         # argmax of the mean log-probability, i.e. of the geometric mean (the ETF paper)
    "soft_prob",    # argmax of the mean probability
    "weighted",     # mean probability, each member weighted by exp(-its entropy) at that pixel
    "last_member",  # the published ETF code's "hard voting" bug: the last member alone (for comparison)
)


class Votes:
    """Running per-pixel sums over members and views, from which every voting mode follows.

    Folding logits in ``add`` a group at a time keeps memory at a few [P, K] tensors however
    many members and test-time views there are.
    """

    def __init__(self, num_pixels: int, num_classes: int, device: str | torch.device = "cpu"):
        P, K = num_pixels, num_classes
        self.counts = torch.zeros(P, K, device=device)
        self.sum_logp, self.sum_p, self.sum_wp = (torch.zeros(P, K, device=device) for _ in range(3))
        self.sum_entropy = torch.zeros(P, device=device)
        self.n = 0
        self.last: torch.Tensor | None = None

    @classmethod
    def of(cls, logits: torch.Tensor) -> "Votes":
        """The votes of one group of logits [M, P, K]."""
        votes = cls(logits.shape[1], logits.shape[2], logits.device)
        votes.add(logits)
        return votes

    def add(self, logits: torch.Tensor) -> None:
        """Fold in logits [M, P, K] of M members (or one view of the whole ensemble)."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        p = logp.exp()
        entropy = -(p * logp).sum(-1)  # [M, P]
        labels = logits.argmax(-1)
        self.counts.scatter_add_(1, labels.T, torch.ones_like(labels.T, dtype=self.counts.dtype))
        self.sum_logp += logp.sum(0)
        self.sum_p += p.sum(0)
        self.sum_wp += (torch.exp(-entropy)[..., None] * p).sum(0)
        self.sum_entropy += entropy.sum(0)
        self.n += logits.shape[0]
        self.last = labels[-1]

    def mask(self, mode: str = "hard") -> torch.Tensor:
        """The label of every pixel [P] under voting ``mode`` (see VOTING_MODES)."""
        if mode == "last_member":
            return self.last
        scores = {"hard": self.counts, "soft": self.sum_logp, "soft_prob": self.sum_p, "weighted": self.sum_wp}
        if mode not in scores:
            raise ValueError(f"unknown voting mode {mode!r}; choose from {VOTING_MODES}")
        return scores[mode].argmax(1)  # argmax takes the first maximum: ties go to the lowest id

    def distribution(self, mode: str = "hard") -> torch.Tensor:
        """Per-pixel class distribution [P, K] whose argmax is ``mask(mode)``: vote shares (hard), the
        normalised geometric (soft), arithmetic (soft_prob) or entropy-weighted mean, the last member's
        one-hot vote. Averaging it over overlapping windows keeps the meaning of the voting mode."""
        if mode == "last_member":
            return torch.nn.functional.one_hot(self.last, self.counts.shape[1]).float()
        if mode == "soft":
            return torch.softmax(self.sum_logp / self.n, dim=1)
        scores = {"hard": self.counts, "soft_prob": self.sum_p, "weighted": self.sum_wp}
        if mode not in scores:
            raise ValueError(f"unknown voting mode {mode!r}; choose from {VOTING_MODES}")
        return scores[mode] / scores[mode].sum(1, keepdim=True)

    def probabilities(self) -> torch.Tensor:
        """Mean class probability over members and views [P, K]: the soft first prediction a
        mask refiner is conditioned on."""
        return self.sum_p / self.n

    def uncertainty(self) -> torch.Tensor:
        """Mutual information per pixel: H(mean_m p_m) - mean_m H(p_m), natural log."""
        mean_p = self.sum_p / self.n
        return -(mean_p * torch.log(mean_p.clamp_min(1e-30))).sum(-1) - self.sum_entropy / self.n


def view_logits(ens: PixelEnsemble, layers: Sequence[torch.Tensor], out_hw: tuple[int, int],
                flipped: bool = False, flip_pairs: Sequence[Sequence[int]] = ()) -> torch.Tensor:
    """``ensemble_logits`` of one (test-time) view, mapped back to the original image if it was
    mirrored: pixels flipped back, and the scores of left/right classes (``flip_pairs``) exchanged."""
    logits = ensemble_logits(ens, layers, out_hw)
    if not flipped:
        return logits
    M, _, K = logits.shape
    order = class_permutation(K, flip_pairs).to(logits.device)
    return logits.reshape(M, *out_hw, K).flip(2).reshape(M, -1, K)[..., order]


def feature_descriptor(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """One unit vector per image for telling images apart by their features: each activation map's
    channel means, L2-normalised per map (so no block dominates by its width or scale), concatenated
    and normalised again. Cosine distances between descriptors say how differently two images look
    to the backbone."""
    parts = [F.normalize(layer.float().mean(dim=(-2, -1)).flatten(), dim=0) for layer in layers]
    return F.normalize(torch.cat(parts), dim=0)


def image_uncertainty(js: torch.Tensor, top_fraction: float = 0.1) -> float:
    """The original's image score: mean of the top ``top_fraction`` of pixel JS values."""
    k = max(1, int(js.numel() * top_fraction))
    return js.flatten().topk(k).values.mean().item()


def predict_image(ens: PixelEnsemble, layers: Sequence[torch.Tensor], out_hw: tuple[int, int],
                  top_fraction: float = 0.1, voting: str = "hard") -> tuple[torch.Tensor, float]:
    """(mask [H, W] on the CPU under ``voting``, image uncertainty score) of one image."""
    votes = Votes.of(ensemble_logits(ens, layers, out_hw))
    return votes.mask(voting).reshape(out_hw).cpu(), image_uncertainty(votes.uncertainty(), top_fraction)
