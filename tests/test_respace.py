"""guided_diffusion.respace: which steps are kept, and how spaced indices reach the model."""
import json

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from guided_diffusion.gaussian_diffusion import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    get_named_beta_schedule,
)
from guided_diffusion.respace import SpacedDiffusion, space_timesteps

SPACINGS = ["50", "250", "ddim25", "10,10,10", "ddim50"]


def _kwargs(steps=1000, var_type=ModelVarType.FIXED_LARGE, rescale_timesteps=False):
    return dict(
        betas=get_named_beta_schedule("linear", steps),
        model_mean_type=ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=LossType.MSE,
        rescale_timesteps=rescale_timesteps,
    )


class RecordingModel:
    """Predicts zero noise and remembers every timestep tensor it was called with."""

    def __init__(self, out_channels=3):
        self.out_channels = out_channels
        self.calls = []

    def __call__(self, x, t, **kwargs):
        self.calls.append(t.clone())
        return torch.zeros(x.shape[0], self.out_channels, *x.shape[2:])


@pytest.mark.parametrize("spacing", SPACINGS)
def test_space_timesteps_matches_reference(spacing):
    with open(FIXTURES / "diffusion_schedules.json") as f:
        expected = json.load(f)[f"space_timesteps_{spacing}"]
    got = space_timesteps(1000, spacing)
    assert isinstance(got, set)
    assert sorted(got) == expected


def test_space_timesteps_rounding_details():
    assert space_timesteps(1000, "1000") == set(range(1000))
    assert space_timesteps(1000, [10, 10, 10]) == space_timesteps(1000, "10,10,10")
    # Stride 2.5: round-half-to-even picks 2, not 3.
    assert space_timesteps(6, [3]) == {0, 2, 5}
    # Stride 15/14: repeated addition reaches 7.4999..., so 7 is kept; 7 * (15/14) == 7.5 would give 8.
    assert space_timesteps(16, [15]) == set(range(16)) - {8}
    # ddim250 is stride 4, unlike "250" which ends at 999.
    assert max(space_timesteps(1000, "ddim250")) == 996
    assert max(space_timesteps(1000, "250")) == 999


@pytest.mark.parametrize(
    "steps,spec,match",
    [
        (10, "ddim6", "exactly 6 of 10"),  # strides 1 and 2 give 10 and 5 steps
        (1000, "ddim999", "exactly 999"),
        (1000, "ddimx", "'ddim' followed by an integer"),
        (1000, "abc", "comma-separated integers"),
        (10, [11], "11 steps from a section of only 10"),
        (10, [], "must not be empty"),
    ],
)
def test_space_timesteps_errors(steps, spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(steps, spec)


def test_identity_spacing_recomputes_betas():
    base = GaussianDiffusion(**_kwargs())
    spaced = SpacedDiffusion(use_timesteps=space_timesteps(1000, [1000]), **_kwargs())
    assert spaced.timestep_map == list(range(1000))
    assert spaced.original_num_steps == 1000 and spaced.num_timesteps == 1000
    assert np.array_equal(spaced.alphas_cumprod, base.alphas_cumprod)
    assert np.abs(spaced.betas - base.betas).max() <= 2e-16


def test_spaced_alpha_bars_are_the_kept_originals():
    base = GaussianDiffusion(**_kwargs())
    spaced = SpacedDiffusion(use_timesteps=space_timesteps(1000, "ddim10"), **_kwargs())
    assert spaced.timestep_map == list(range(0, 1000, 100))
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[spaced.timestep_map], rtol=1e-13)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_model_sees_original_timesteps_with_same_dtype(dtype):
    spaced = SpacedDiffusion(use_timesteps=space_timesteps(1000, "ddim10"), **_kwargs())
    model = RecordingModel()
    spaced.p_mean_variance(model, torch.zeros(2, 3, 4, 4), torch.tensor([5, 0], dtype=dtype))
    (t,) = model.calls
    assert t.dtype == dtype
    assert t.tolist() == [500, 0]


def test_rescaled_timesteps_use_original_step_count():
    # 200 original steps, ddim10 keeps every 20th; spaced 5 -> original 100 -> 100 * 1000 / 200.
    spaced = SpacedDiffusion(
        use_timesteps=space_timesteps(200, "ddim10"), **_kwargs(200, rescale_timesteps=True)
    )
    model = RecordingModel()
    spaced.p_mean_variance(model, torch.zeros(1, 3, 4, 4), torch.tensor([5]))
    assert model.calls[0].dtype == torch.float32
    assert model.calls[0].tolist() == [500.0]


def test_sampling_losses_and_guidance_are_wrapped():
    spaced = SpacedDiffusion(
        use_timesteps=space_timesteps(1000, "ddim10"), **_kwargs(var_type=ModelVarType.LEARNED_RANGE)
    )
    model = RecordingModel(out_channels=6)
    x = torch.zeros(1, 3, 4, 4)
    spaced.ddim_sample_loop(model, (1, 3, 4, 4), noise=x)
    assert [t.item() for t in model.calls] == list(range(900, -1, -100))

    model.calls.clear()
    spaced.training_losses(model, x, torch.tensor([3]))
    assert [t.item() for t in model.calls] == [300]

    seen = []

    def cond_fn(x, t):
        seen.append(t.item())
        return torch.zeros_like(x)

    out = spaced.p_mean_variance(model, x, torch.tensor([2]))
    spaced.condition_mean(cond_fn, out, x, torch.tensor([2]))
    spaced.condition_score(cond_fn, out, x, torch.tensor([4]))
    assert seen == [200, 400]


def test_q_sample_uses_spaced_indices():
    base = GaussianDiffusion(**_kwargs())
    spaced = SpacedDiffusion(use_timesteps=space_timesteps(1000, "ddim10"), **_kwargs())
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 3, 4, 4, generator=g), torch.randn(1, 3, 4, 4, generator=g)
    got = spaced.q_sample(x0, torch.tensor([5]), noise=noise)
    torch.testing.assert_close(got, base.q_sample(x0, torch.tensor([500]), noise=noise), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got, base.q_sample(x0, torch.tensor([5]), noise=noise))
