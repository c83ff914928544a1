"""Label every pixel of an image with a trained PixelEnsemble: voting and uncertainty.

Bilinear upsampling and the MLPs' first Linear layer are both linear maps, so they commute:
applying each member's first-layer weights to the activation maps at their native resolution
and upsampling the (much narrower) result gives the same pre-activations as upsampling the
full feature maps first. For the LSUN blocks that is ~60x fewer multiply-adds per image, and
the [C, H, W] upsampled feature tensor (2.2 GB at 256 px) never exists.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .ensemble import PixelEnsemble
from .store import BilinearIndex


@torch.no_grad()
def ensemble_logits(ens: PixelEnsemble, layers: Sequence[torch.Tensor], out_hw: tuple[int, int],
                    tile_pixels: int = 16384) -> torch.Tensor:
    """Logits [M, H*W, K] of every pixel; ``layers`` are [C_l, h_l, w_l] maps in feature order."""
    M = ens.num_members
    h1 = ens.weights[0].shape[2]
    w0 = ens.weights[0]  # [M, C, h1]
    projected, offset = [], 0
    for a in layers:
        a = a[0] if a.dim() == 4 else a
        c, h, w = a.shape
        wl = w0[:, offset:offset + c, :].permute(1, 0, 2).reshape(c, M * h1)  # [C_l, M*h1]
        # Round to the store's float16 first, as the training features were.
        nhwc = a.to(w0.device).half().float().permute(1, 2, 0).reshape(h * w, c)
        projected.append(((nhwc @ wl).reshape(1, h, w, M * h1), BilinearIndex((h, w), out_hw)))
        offset += c
    if offset != ens.dim:
        raise ValueError(f"the activations have {offset} channels but the ensemble expects {ens.dim}")
    H, W = out_hw
    out = []
    for start in range(0, H * W, tile_pixels):
        p = torch.arange(start, min(start + tile_pixels, H * W), device=w0.device)
        ys, xs = p // W, p % W
        zero = torch.zeros_like(p)
        first = sum(ix.gather(pm, zero, ys.cpu(), xs.cpu()).to(w0.device) for pm, ix in projected)
        first = first.reshape(-1, M, h1).transpose(0, 1) + ens.biases[0][:, None]
        out.append(ens.hidden(first))
    return torch.cat(out, dim=1)


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
                  tile_pixels: int = 16384, top_fraction: float = 0.1) -> tuple[torch.Tensor, float]:
    """(majority-vote mask [H, W] on the CPU, image uncertainty score)."""
    logits = ensemble_logits(ens, layers, out_hw, tile_pixels)
    mask = majority_vote(logits).reshape(out_hw).cpu()
    return mask, image_uncertainty(pixel_uncertainty(logits), top_fraction)
