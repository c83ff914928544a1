"""Numerical faults: NaN or inf in features or a loss stops the run with one line that names the
stage, the image or step, and what to try; nothing is trained or written on such values."""
from __future__ import annotations

from typing import Sequence

import torch

# The largest float16 value: the feature store keeps activations in float16 (ddpmseg.features.store).
FLOAT16_MAX = float(torch.finfo(torch.float16).max)
FEATURE_HINT = ("if the U-Net runs in float16 (model flag use_fp16 true), run it with use_fp16 false; "
                "otherwise check model_path for a damaged checkpoint (NaN/inf weights)")


class NumericalError(RuntimeError):
    """A computation gave NaN or inf (or left the range of the dtype that stores it)."""


def check_features(activations: Sequence[torch.Tensor], layer_names: Sequence[str], what: str,
                   limit: float | None = None) -> None:
    """Raise NumericalError if an activation map of ``what`` (e.g. "training image x.png") holds
    NaN/inf, or a magnitude above ``limit`` (the float16 store's range, where it would become inf)."""
    for a, layer in zip(activations, layer_names):
        if not torch.isfinite(a).all():
            raise NumericalError(f"feature extraction: {what} gives NaN/inf activations at {layer}; {FEATURE_HINT}")
        if limit is not None:
            peak = a.abs().max().item()
            if peak > limit:
                raise NumericalError(
                    f"feature extraction: {what} gives activations up to {peak:.3g} at {layer}, beyond the "
                    f"{limit:g} that the float16 feature store can hold; {FEATURE_HINT}")
