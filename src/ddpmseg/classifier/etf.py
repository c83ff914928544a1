"""The fixed simplex equiangular tight frame (ETF) of the feature-regularized pixel classifier.

A simplex ETF is K unit vectors in R^d (d >= K) whose pairwise cosines all equal -1/(K-1):
the most spread-out arrangement K class directions can have. Projecting a member's
penultimate features onto these fixed directions and adding the cross-entropy of the result
to the loss pulls each class's features towards its own direction (the "neural collapse"
geometry). The frame is drawn once per experiment, saved, and reused by every member and rerun.
"""
from __future__ import annotations

import math
import os

import torch

from ..common.atomic import torch_save_atomic
from ..common.seeding import stream_generator

ETF_FILE = "etf_matrix.pt"


def simplex_etf(dim: int, num_classes: int, seed: int) -> torch.Tensor:
    """E = sqrt(K/(K-1)) * U (I - 11^T/K), U [dim, K] with orthonormal columns from a seeded QR."""
    K = num_classes
    if dim < K:
        raise ValueError(f"a simplex ETF for {K} classes needs features of width >= {K}, got {dim}")
    u, _ = torch.linalg.qr(torch.rand(dim, K, generator=stream_generator("etf_frame", seed), dtype=torch.float64))
    centering = torch.eye(K, dtype=torch.float64) - 1.0 / K
    return (math.sqrt(K / (K - 1)) * u @ centering).float()


def load_or_create_etf(exp_dir: str, dim: int, num_classes: int, seed: int) -> torch.Tensor:
    """The experiment's frame: ``<exp_dir>/etf_matrix.pt`` if it exists, else a new one saved there."""
    path = os.path.join(exp_dir, ETF_FILE)
    if os.path.exists(path):
        etf = torch.load(path, map_location="cpu", weights_only=True)
        if tuple(etf.shape) != (dim, num_classes):
            raise ValueError(f"{path} is a {tuple(etf.shape)} frame but this run needs ({dim}, {num_classes}); "
                             "delete it or use another exp_dir")
        return etf
    etf = simplex_etf(dim, num_classes, seed)
    torch_save_atomic(etf, path)
    return etf
