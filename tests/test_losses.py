"""guided_diffusion.losses: Gaussian KL and the discretized decoder likelihood."""
import math

import pytest
import torch

from guided_diffusion.losses import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, normal_kl


def test_normal_kl_is_zero_for_equal_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    assert torch.allclose(normal_kl(mean, logvar, mean, logvar), torch.zeros(4, 5), atol=1e-7)


def test_normal_kl_closed_forms():
    zero = torch.zeros(3)
    # Unit variances: KL = (m1 - m2)^2 / 2.
    got = normal_kl(zero, zero, torch.tensor([1.0, 2.0, -3.0]), zero)
    assert torch.allclose(got, torch.tensor([0.5, 2.0, 4.5]))
    # Equal means: KL = 0.5 (-1 + ln(s2/s1) + s1/s2) with variances s1 = 1, s2 = e.
    expected = 0.5 * (-1 + 1 + math.exp(-1))
    assert torch.allclose(normal_kl(zero, zero, zero, torch.ones(3)), torch.full((3,), expected))


def test_normal_kl_symmetry_properties():
    g = torch.Generator().manual_seed(1)
    m1, m2, lv = (torch.randn(10, generator=g) for _ in range(3))
    # With a shared variance the KL depends only on (m1 - m2)^2, so it is symmetric ...
    assert torch.allclose(normal_kl(m1, lv, m2, lv), normal_kl(m2, lv, m1, lv))
    # ... but not when the variances differ, and it is never negative.
    lv2 = lv + 1.0
    assert not torch.allclose(normal_kl(m1, lv, m2, lv2), normal_kl(m2, lv2, m1, lv))
    assert (normal_kl(m1, lv, m2, lv2) >= 0).all()


def test_normal_kl_accepts_float_prior_but_needs_one_tensor():
    mean, logvar = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0])
    assert torch.allclose(normal_kl(mean, logvar, 0.0, 0.0), torch.tensor([0.0, 0.5]))
    with pytest.raises(TypeError):
        normal_kl(0.0, 0.0, 0.0, 0.0)


def test_approx_cdf_is_close_to_exact():
    x = torch.linspace(-5, 5, 201, dtype=torch.float64)
    exact = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    approx = approx_standard_normal_cdf(x)
    assert approx[100].item() == pytest.approx(0.5)
    assert (approx - exact).abs().max() < 1e-3  # the tanh approximation is good to ~2e-4
    assert (approx.diff() >= 0).all()


@pytest.mark.parametrize(
    "mean,log_scale",
    [(0.0, math.log(0.1)), (0.7, math.log(0.02)), (-0.95, math.log(0.5)), (0.0, math.log(3.0))],
)
def test_discretized_likelihood_sums_to_one_over_256_bins(mean, log_scale):
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)  # the 8-bit values mapped to [-1, 1]
    logp = discretized_gaussian_log_likelihood(
        bins, means=torch.full_like(bins, mean), log_scales=torch.full_like(bins, log_scale)
    )
    # The two edge bins absorb the tails, so wide Gaussians also sum to one.
    assert torch.exp(logp).sum().item() == pytest.approx(1.0, abs=1e-6)


def test_discretized_likelihood_peaks_at_the_mean_bin():
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    mean = 0.3
    logp = discretized_gaussian_log_likelihood(
        bins, means=torch.full_like(bins, mean), log_scales=torch.full_like(bins, math.log(0.05))
    )
    assert (bins[logp.argmax()] - mean).abs() <= 1 / 255 + 1e-12


def test_discretized_likelihood_floor_and_shape_check():
    x = torch.tensor([0.0])
    # A very narrow Gaussian far from x: the bin mass underflows and is floored at 1e-12.
    far = discretized_gaussian_log_likelihood(x, means=torch.tensor([0.5]), log_scales=torch.tensor([-10.0]))
    assert far.item() == pytest.approx(math.log(1e-12))
    with pytest.raises(ValueError):
        discretized_gaussian_log_likelihood(x, means=torch.zeros(2), log_scales=torch.zeros(1))
