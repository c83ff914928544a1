"""PixelEnsemble: M pixel-classifier MLPs with stacked weights, run as one batched computation.

Each member is the original pixel classifier
    Linear(C, h1) -> ReLU -> BatchNorm1d(h1) -> Linear(h1, h2) -> ReLU -> BatchNorm1d(h2) -> Linear(h2, K)
with (h1, h2) = (128, 32) for K < 30 classes and (256, 128) otherwise. Stacking the members'
weights along a leading axis turns M small matmuls into one batched matmul; members never
share parameters, so summing their losses gives each exactly its own gradients. An ensemble of
one member runs the same layers as plain 2-D kernels (addmm, the native batch_norm), which
skip the batched kernels' per-call overhead: the one-member-at-a-time training step. Optional
dropout (the regularised fork's variant) sits after each hidden ReLU, before its BatchNorm
(``dropout_position="before_bn"``, as published), or after the BatchNorm (``"after_bn"``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

INIT_STD = 0.02  # the original init_weights: Linear weights ~ N(0, 0.02), biases 0
BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # BatchNorm1d defaults
DROPOUT_POSITIONS = ("before_bn", "after_bn")  # the config key dropout_position (ddpmseg.common.config)


def hidden_sizes(num_classes: int) -> tuple[int, int]:
    """The original's two widths: bigger MLP for 30+ classes (ffhq_34, ade_bedroom_30)."""
    return (128, 32) if num_classes < 30 else (256, 128)


class PixelEnsemble(nn.Module):
    """M independent MLPs. Inputs are [M, B, C] (one batch per member) or [B, C] (shared)."""

    def __init__(self, num_members: int, dim: int, num_classes: int,
                 generators: Sequence[torch.Generator] | None = None, dropout: float = 0.0,
                 dropout_position: str = "before_bn"):
        super().__init__()
        if dropout_position not in DROPOUT_POSITIONS:
            raise ValueError(f"dropout_position must be one of {DROPOUT_POSITIONS}, got {dropout_position!r}")
        self.num_members, self.dim, self.num_classes = num_members, dim, num_classes
        self.dropout, self.dropout_after_bn = dropout, dropout_position == "after_bn"
        # The trainer sets one seeded generator per member (on the ensemble's device), so a
        # member's masks are reproducible and do not depend on its companions.
        self.dropout_generators: list[torch.Generator] | None = None
        h1, h2 = hidden_sizes(num_classes)
        self.feature_dim = h2  # width of the penultimate features (the ETF regularizer's input)
        sizes = [(dim, h1), (h1, h2), (h2, num_classes)]
        M = num_members
        # Weights are [M, in, out] (x @ W); saved per member in nn.Linear's [out, in] layout.
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(M, i, o)) for i, o in sizes])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(M, o)) for _, o in sizes])
        self.bn_weight = nn.ParameterList([nn.Parameter(torch.ones(M, h)) for h in (h1, h2)])
        self.bn_bias = nn.ParameterList([nn.Parameter(torch.zeros(M, h)) for h in (h1, h2)])
        for j, h in enumerate((h1, h2)):
            self.register_buffer(f"running_mean{j}", torch.zeros(M, h))
            self.register_buffer(f"running_var{j}", torch.ones(M, h))
        self.register_buffer("num_batches_tracked", torch.zeros(M, dtype=torch.long))
        self.reset_parameters(generators)

    @torch.no_grad()
    def reset_parameters(self, generators: Sequence[torch.Generator] | None = None) -> None:
        """N(0, 0.02) weights; member m draws from ``generators[m]`` so its init is its own."""
        for w in self.weights:
            for m in range(self.num_members):
                g = generators[m] if generators else None
                w[m].copy_(torch.randn(w.shape[1:], generator=g) * INIT_STD)

    def _bn(self, h: torch.Tensor, j: int) -> torch.Tensor:
        """Per-member BatchNorm1d over the batch axis of h [M, B, F]."""
        rm, rv = getattr(self, f"running_mean{j}"), getattr(self, f"running_var{j}")
        if self.training:
            mean = h.mean(dim=1)
            var = h.var(dim=1, unbiased=False)
            with torch.no_grad():
                n = h.shape[1]
                rm.lerp_(mean, BN_MOMENTUM)
                rv.lerp_(var * n / max(n - 1, 1), BN_MOMENTUM)  # running stats use unbiased var
        else:
            mean, var = rm, rv
        h = (h - mean[:, None]) * torch.rsqrt(var[:, None] + BN_EPS)
        return h * self.bn_weight[j][:, None] + self.bn_bias[j][:, None]

    @property
    def _dropping(self) -> bool:
        return self.training and self.dropout > 0

    def _drop(self, h: torch.Tensor) -> torch.Tensor:
        if not self._dropping:
            return h
        if self.dropout_generators is None:
            u = torch.rand(h.shape, device=h.device)
        else:
            u = torch.stack([torch.rand(h.shape[1:], generator=g, device=h.device) for g in self.dropout_generators])
        return h * (u >= self.dropout) / (1 - self.dropout)

    def _relu_bn_drop(self, h: torch.Tensor, j: int) -> torch.Tensor:
        """ReLU, then BatchNorm j with dropout before it (published) or after it."""
        if self.dropout_after_bn:
            return self._drop(self._bn(F.relu(h), j))
        return self._bn(self._drop(F.relu(h)), j)

    def penultimate(self, first: torch.Tensor) -> torch.Tensor:
        """First-layer pre-activations [M, B, h1] -> the features the last Linear reads [M, B, h2]."""
        h = self._relu_bn_drop(first, 0)
        return self._relu_bn_drop(torch.baddbmm(self.biases[1][:, None], h, self.weights[1]), 1)

    def _single_member(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The one member's layers on x [B, C] -> (logits [B, K], penultimate features [B, h2]): the same
        computation as the batched path (dropout masks drawn from the same stream, in the same shape).

        ``own`` drops the member axis by a view, so the gradient flows back without a copy; the native
        batch_norm updates the running stats in place through such views of the buffers."""
        def own(t: torch.Tensor) -> torch.Tensor:
            return t.view(t.shape[1:])

        def relu_bn_drop(h: torch.Tensor, j: int) -> torch.Tensor:
            def bn(h: torch.Tensor) -> torch.Tensor:
                return F.batch_norm(h, own(getattr(self, f"running_mean{j}")), own(getattr(self, f"running_var{j}")),
                                    own(self.bn_weight[j]), own(self.bn_bias[j]), self.training, BN_MOMENTUM, BN_EPS)

            def drop(h: torch.Tensor) -> torch.Tensor:  # without dropout, not even the two views
                return own(self._drop(h[None])) if self._dropping else h
            return drop(bn(F.relu(h))) if self.dropout_after_bn else bn(drop(F.relu(h)))

        h = relu_bn_drop(torch.addmm(own(self.biases[0]), x, own(self.weights[0])), 0)
        features = relu_bn_drop(torch.addmm(own(self.biases[1]), h, own(self.weights[1])), 1)
        return torch.addmm(own(self.biases[2]), features, own(self.weights[2])), features

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The last Linear: penultimate features [M, B, h2] -> logits [M, B, K]."""
        return torch.baddbmm(self.biases[2][:, None], features, self.weights[2])

    def hidden(self, first: torch.Tensor) -> torch.Tensor:
        """Everything after the first Linear: first-layer pre-activations [M, B, h1] -> logits."""
        return self.head(self.penultimate(first))

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """x [M, B, C] or [B, C] -> logits [M, B, K] (and the penultimate features if asked)."""
        if self.training:
            self.num_batches_tracked += 1
        if self.num_members == 1:
            logits, features = self._single_member(x.reshape(x.shape[-2:]))
            return (logits[None], features[None]) if with_features else logits[None]
        if x.dim() == 2:
            first = torch.matmul(x, self.weights[0]) + self.biases[0][:, None]
        else:
            first = torch.baddbmm(self.biases[0][:, None], x, self.weights[0])
        features = self.penultimate(first)
        logits = self.head(features)
        return (logits, features) if with_features else logits

    # --- per-member export/import in the original pixel_classifier layout -------------------
    def member_state_dict(self, m: int) -> dict[str, torch.Tensor]:
        """Member m as the original's ``layers`` Sequential state dict (0,2,3,5,6 = Linear,BN,Linear,BN,Linear)."""
        sd = {}
        for j, layer in enumerate((0, 3, 6)):
            sd[f"layers.{layer}.weight"] = self.weights[j][m].T.detach().clone()
            sd[f"layers.{layer}.bias"] = self.biases[j][m].detach().clone()
        for j, layer in enumerate((2, 5)):
            sd[f"layers.{layer}.weight"] = self.bn_weight[j][m].detach().clone()
            sd[f"layers.{layer}.bias"] = self.bn_bias[j][m].detach().clone()
            sd[f"layers.{layer}.running_mean"] = getattr(self, f"running_mean{j}")[m].clone()
            sd[f"layers.{layer}.running_var"] = getattr(self, f"running_var{j}")[m].clone()
            sd[f"layers.{layer}.num_batches_tracked"] = self.num_batches_tracked[m].clone()
        return sd

    @torch.no_grad()
    def load_member(self, m: int, sd: dict[str, torch.Tensor]) -> None:
        """Load one member from the original layout (a ``module.`` prefix is accepted)."""
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        try:
            for j, layer in enumerate((0, 3, 6)):
                self.weights[j][m].copy_(sd[f"layers.{layer}.weight"].T)
                self.biases[j][m].copy_(sd[f"layers.{layer}.bias"])
            for j, layer in enumerate((2, 5)):
                self.bn_weight[j][m].copy_(sd[f"layers.{layer}.weight"])
                self.bn_bias[j][m].copy_(sd[f"layers.{layer}.bias"])
                getattr(self, f"running_mean{j}")[m].copy_(sd[f"layers.{layer}.running_mean"])
                getattr(self, f"running_var{j}")[m].copy_(sd[f"layers.{layer}.running_var"])
            self.num_batches_tracked[m] = sd["layers.2.num_batches_tracked"]
        except (KeyError, RuntimeError) as e:
            raise ValueError(
                f"pixel classifier state does not fit an MLP for dim {self.dim} and {self.num_classes} "
                f"classes: {e}") from None
