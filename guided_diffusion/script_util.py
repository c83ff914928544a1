"""Flags -> model and diffusion, with the keyword names and defaults of the original scripts."""
from __future__ import annotations

import argparse
from typing import Any, Mapping

from . import gaussian_diffusion as gd
from .respace import SpacedDiffusion, space_timesteps
from .unet import UNetModel

NUM_CLASSES = 1000  # class-conditional checkpoints are ImageNet models


def diffusion_defaults() -> dict[str, Any]:
    """Diffusion flags and their command-line defaults."""
    return dict(
        learn_sigma=False,
        diffusion_steps=1000,
        noise_schedule="linear",
        timestep_respacing="",
        use_kl=False,
        predict_xstart=False,
        rescale_timesteps=False,
        rescale_learned_sigmas=False,
    )


def model_and_diffusion_defaults() -> dict[str, Any]:
    """Every flag of ``create_model_and_diffusion`` with its command-line default."""
    return dict(
        image_size=64,
        num_channels=128,
        num_res_blocks=2,
        num_heads=4,
        num_heads_upsample=-1,
        num_head_channels=-1,
        attention_resolutions="16,8",
        channel_mult="",
        dropout=0.0,
        class_cond=False,
        use_checkpoint=False,
        use_scale_shift_norm=True,
        resblock_updown=False,
        use_fp16=False,
        use_new_attention_order=False,
        **diffusion_defaults(),
    )


def merged_flags(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """``model_and_diffusion_defaults()`` updated by each of ``layers`` in turn (a later layer
    wins; None is no layer): the one way flags from several places become a full set."""
    flags = model_and_diffusion_defaults()
    for layer in layers:
        flags.update(layer or {})
    return flags


def unknown_flags(flags: Mapping[str, Any]) -> list[str]:
    """The names in ``flags`` that are no flag of ``create_model_and_diffusion``, sorted."""
    return sorted(set(flags) - set(model_and_diffusion_defaults()))


def create_model_and_diffusion(**flags: Any) -> tuple[UNetModel, SpacedDiffusion]:
    """Build the U-Net and its diffusion from flags; unknown flags are an error."""
    unknown = unknown_flags(flags)
    if unknown:
        raise TypeError(f"unknown model/diffusion flag(s): {', '.join(unknown)}; "
                        f"known: {', '.join(model_and_diffusion_defaults())}")
    f = merged_flags(flags)
    model = create_model(
        f["image_size"], f["num_channels"], f["num_res_blocks"],
        channel_mult=f["channel_mult"], learn_sigma=f["learn_sigma"], class_cond=f["class_cond"],
        use_checkpoint=f["use_checkpoint"], attention_resolutions=f["attention_resolutions"],
        num_heads=f["num_heads"], num_head_channels=f["num_head_channels"],
        num_heads_upsample=f["num_heads_upsample"], use_scale_shift_norm=f["use_scale_shift_norm"],
        dropout=f["dropout"], resblock_updown=f["resblock_updown"], use_fp16=f["use_fp16"],
        use_new_attention_order=f["use_new_attention_order"],
    )
    diffusion = create_gaussian_diffusion(
        steps=f["diffusion_steps"], learn_sigma=f["learn_sigma"], noise_schedule=f["noise_schedule"],
        use_kl=f["use_kl"], predict_xstart=f["predict_xstart"], rescale_timesteps=f["rescale_timesteps"],
        rescale_learned_sigmas=f["rescale_learned_sigmas"], timestep_respacing=f["timestep_respacing"],
    )
    return model, diffusion


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """The per-level width multipliers the original picks when ``channel_mult`` is empty."""
    table = {
        512: (0.5, 1, 1, 2, 2, 4, 4),
        256: (1, 1, 2, 2, 4, 4),
        128: (1, 1, 2, 3, 4),
        64: (1, 2, 3, 4),
    }
    if image_size not in table:
        raise ValueError(
            f"no default channel_mult for image_size {image_size} (defaults exist for "
            f"{sorted(table)}); pass --channel_mult explicitly, e.g. 1,2,2,4"
        )
    return table[image_size]


def create_model(
    image_size: int,
    num_channels: int,
    num_res_blocks: int,
    channel_mult: str = "",
    learn_sigma: bool = False,
    class_cond: bool = False,
    use_checkpoint: bool = False,
    attention_resolutions: str = "16",
    num_heads: int = 1,
    num_head_channels: int = -1,
    num_heads_upsample: int = -1,
    use_scale_shift_norm: bool = False,
    dropout: float = 0,
    resblock_updown: bool = False,
    use_fp16: bool = False,
    use_new_attention_order: bool = False,
) -> UNetModel:
    """Build the U-Net; ``attention_resolutions`` are pixel resolutions ("32,16,8")."""
    mult = default_channel_mult(image_size) if channel_mult == "" else tuple(
        int(m) for m in str(channel_mult).split(",")
    )
    attention_ds = tuple(image_size // int(r) for r in str(attention_resolutions).split(",") if r.strip())
    return UNetModel(
        image_size=image_size,
        in_channels=3,
        model_channels=num_channels,
        out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks,
        attention_resolutions=attention_ds,
        dropout=dropout,
        channel_mult=mult,
        num_classes=NUM_CLASSES if class_cond else None,
        use_checkpoint=use_checkpoint,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
    )


def create_gaussian_diffusion(
    *,
    steps: int = 1000,
    learn_sigma: bool = False,
    sigma_small: bool = False,
    noise_schedule: str = "linear",
    use_kl: bool = False,
    predict_xstart: bool = False,
    rescale_timesteps: bool = False,
    rescale_learned_sigmas: bool = False,
    timestep_respacing: str = "",
) -> SpacedDiffusion:
    """Always a SpacedDiffusion (identity spacing when ``timestep_respacing`` is empty)."""
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if learn_sigma:
        var_type = gd.ModelVarType.LEARNED_RANGE
    else:
        var_type = gd.ModelVarType.FIXED_SMALL if sigma_small else gd.ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, timestep_respacing or [steps]),
        betas=gd.get_named_beta_schedule(noise_schedule, steps),
        model_mean_type=gd.ModelMeanType.START_X if predict_xstart else gd.ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
    )


def str2bool(v: Any) -> bool:
    """argparse type for yes/no flags (a plain ``type=bool`` would read "False" as True)."""
    if isinstance(v, bool):
        return v
    s = str(v).lower()
    if s in ("yes", "true", "t", "y", "1"):
        return True
    if s in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (true/false, yes/no, 1/0), got {v!r}")
