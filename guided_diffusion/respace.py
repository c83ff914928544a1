"""Timestep respacing: run a diffusion trained with T steps on a subset of those steps."""
from __future__ import annotations

from typing import Iterable, Union

import numpy as np
import torch

from .gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps: int, section_counts: Union[str, Iterable[int]]) -> set[int]:
    """Pick which of the original ``num_timesteps`` steps to keep.

    ``section_counts`` is either "ddimN" (N evenly strided steps with an integer stride, as in
    the DDIM paper) or a comma list / list of counts: the T steps are cut into equal sections
    (the first T mod n sections one step longer) and section i keeps counts[i] evenly spaced
    steps, always including its first and last step. E.g. (300, [10, 15, 20]) keeps 10 of the
    first 100 steps, 15 of the next 100 and 20 of the last 100.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            return _ddim_timesteps(num_timesteps, section_counts)
        try:
            section_counts = [int(c) for c in section_counts.split(",")]
        except ValueError:
            raise ValueError(
                f"bad timestep respacing {section_counts!r}: expected 'ddimN' or comma-separated integers"
            ) from None
    section_counts = list(section_counts)
    if not section_counts:
        raise ValueError("section_counts must not be empty")

    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start = 0
    steps: list[int] = []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of only {size} steps")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        # Accumulate by repeated float addition and use Python's round-half-to-even: the
        # reference does exactly this, and i * stride would pick different steps in places.
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return set(steps)


def _ddim_timesteps(num_timesteps: int, spec: str) -> set[int]:
    """"ddimN": range(0, T, stride) for the smallest integer stride giving exactly N steps."""
    try:
        desired = int(spec[len("ddim"):])
    except ValueError:
        raise ValueError(f"bad DDIM respacing {spec!r}: expected 'ddim' followed by an integer") from None
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired:
            return set(range(0, num_timesteps, stride))
    raise ValueError(
        f"cannot pick exactly {desired} of {num_timesteps} steps with an integer stride ({spec!r})"
    )


class SpacedDiffusion(GaussianDiffusion):
    """A GaussianDiffusion over the kept steps ``use_timesteps`` of a base diffusion.

    Spaced index k corresponds to original step ``timestep_map[k]``. Models and cond_fns are
    wrapped so that they always see original timesteps; ``q_sample`` is not wrapped and takes
    spaced indices (its alpha-bar table is the spaced one).
    """

    def __init__(self, use_timesteps: Iterable[int], **kwargs):
        self.use_timesteps = set(use_timesteps)
        self.timestep_map: list[int] = []
        self.original_num_steps = len(kwargs["betas"])

        base = GaussianDiffusion(**kwargs)
        # Choose betas so that the cumulative products at the kept steps equal the original
        # alpha-bars. This runs even when every step is kept (then betas move by ~1e-16).
        last_alpha_cumprod = 1.0
        new_betas = []
        for i, alpha_cumprod in enumerate(base.alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                self.timestep_map.append(i)
        kwargs["betas"] = np.array(new_betas)
        super().__init__(**kwargs)

    def p_mean_variance(self, model, *args, **kwargs) -> dict:
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs) -> dict:
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def condition_mean(self, cond_fn, *args, **kwargs):
        return super().condition_mean(self._wrap_model(cond_fn), *args, **kwargs)

    def condition_score(self, cond_fn, *args, **kwargs) -> dict:
        return super().condition_score(self._wrap_model(cond_fn), *args, **kwargs)

    def _wrap_model(self, model) -> "_WrappedModel":
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self.timestep_map, self.rescale_timesteps, self.original_num_steps)

    def _scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        # The wrapper does the mapping and any rescaling, on the original step count.
        return t


class _WrappedModel:
    """Calls ``model`` with original timesteps in place of spaced indices."""

    def __init__(self, model, timestep_map: list[int], rescale_timesteps: bool, original_num_steps: int):
        self.model = model
        self.timestep_map = timestep_map
        self.rescale_timesteps = rescale_timesteps
        self.original_num_steps = original_num_steps

    def __call__(self, x: torch.Tensor, ts: torch.Tensor, **kwargs):
        # Same dtype as ts, so an int64 t reaches the model as int64 original steps.
        map_tensor = torch.tensor(self.timestep_map, device=ts.device, dtype=ts.dtype)
        new_ts = map_tensor[ts]
        if self.rescale_timesteps:
            new_ts = new_ts.float() * (1000.0 / self.original_num_steps)
        return self.model(x, new_ts, **kwargs)
