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


def majority_vote(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel most frequent member argmax [M, P, K] -> [P]; ties go to the lowest class id."""
    votes = logits.argmax(-1)  # [M, P]
    counts = torch.zeros(logits.shape[1], logits.shape[2], dtype=torch.long, device=logits.device)
    counts.scatter_add_(1, votes.T, torch.ones_like(votes.T))
    return counts.argmax(1)


def pixel_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Ensemble mutual information per pixel: H(mean_m p_m) - mean_m H(p_m), natural log."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    member_entropy = -(p * logp).sum(-1).mean(0)
    mean_p = p.mean(0)
    mean_entropy = -(mean_p * torch.log(mean_p.clamp_min(1e-30))).sum(-1)
    return mean_entropy - member_entropy


def image_uncertainty(js: torch.Tensor, top_fraction: float = 0.1) -> float:
    """The original's image score: mean of the top ``top_fraction`` of pixel JS values."""
    k = max(1, int(js.numel() * top_fraction))
    return js.flatten().topk(k).values.mean().item()


def predict_image(ens: PixelEnsemble, layers: Sequence[torch.Tensor], out_hw: tuple[int, int],
                  top_fraction: float = 0.1) -> tuple[torch.Tensor, float]:
    """(majority-vote mask [H, W] on the CPU, image uncertainty score)."""
    logits = ensemble_logits(ens, layers, out_hw)
    mask = majority_vote(logits).reshape(out_hw).cpu()
    return mask, image_uncertainty(pixel_uncertainty(logits), top_fraction)
