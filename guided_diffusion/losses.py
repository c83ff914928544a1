"""Likelihood helpers for the variational bound (KL between Gaussians, discretized decoder NLL).

All results are in nats and elementwise; callers average them and convert to bits.
"""
from __future__ import annotations

import math
from typing import Union

import torch

TensorOrFloat = Union[torch.Tensor, float]

# Half-width of one of the 256 pixel bins once uint8 values are mapped onto [-1, 1].
_BIN_HALF_WIDTH = 1.0 / 255.0
# Floor for probabilities before log(), so saturated CDF tails give a finite penalty, not -inf.
_PROB_FLOOR = 1e-12


def normal_kl(
    mean1: TensorOrFloat, logvar1: TensorOrFloat, mean2: TensorOrFloat, logvar2: TensorOrFloat
) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, broadcasting.

    Any argument may be a Python float (e.g. a standard-normal prior), but at least one must be
    a tensor; it supplies the dtype and device for the others.
    """
    ref = next((a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor)), None)
    if ref is None:
        raise TypeError("normal_kl needs at least one tensor argument")
    # Log-variances go through torch.exp, so promote scalars to tensors on ref's device/dtype.
    logvar1, logvar2 = (
        lv if isinstance(lv, torch.Tensor) else torch.tensor(lv).to(ref) for lv in (logvar1, logvar2)
    )
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Fast tanh approximation of the standard normal CDF (the one the reference code uses)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Log-probability of 8-bit images ``x`` in [-1, 1] under a Gaussian discretized into 256 bins.

    ``log_scales`` is the log standard deviation. The two outermost bins absorb the tails
    (everything below the first / above the last bin edge), so the 256 probabilities sum to 1.
    """
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError(
            f"shape mismatch: x {tuple(x.shape)}, means {tuple(means.shape)}, "
            f"log_scales {tuple(log_scales.shape)}"
        )
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_upper = approx_standard_normal_cdf(inv_std * (centered + _BIN_HALF_WIDTH))
    cdf_lower = approx_standard_normal_cdf(inv_std * (centered - _BIN_HALF_WIDTH))
    log_cdf_upper = torch.log(cdf_upper.clamp(min=_PROB_FLOOR))
    log_survival_lower = torch.log((1.0 - cdf_lower).clamp(min=_PROB_FLOOR))
    log_bin_mass = torch.log((cdf_upper - cdf_lower).clamp(min=_PROB_FLOOR))
    # x == -1 is the lowest bin (open to -inf); x == +1 is the highest bin (open to +inf).
    return torch.where(
        x < -0.999,
        log_cdf_upper,
        torch.where(x > 0.999, log_survival_lower, log_bin_mass),
    )
