"""The guided-diffusion flags of a config's U-Net, from every place they can be given."""
from __future__ import annotations

from typing import Any

from guided_diffusion.checkpoint import sidecar_flags
from guided_diffusion.script_util import merged_flags, model_and_diffusion_defaults, unknown_flags

from .config import BACKBONE_CLASSES, ConfigError


def resolve_model_flags(cfg: dict, cli_flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """U-Net flags: defaults < ``<checkpoint>.json`` "flags" beside the checkpoint (written by our
    trainer) < config ``model_flags`` < flags given on the command line. ``image_size`` is the
    working resolution ``dim[0]``, as in the original. Backbones that take no such flags get {}."""
    if not BACKBONE_CLASSES[cfg["model_type"]].takes_model_flags:  # a validated cfg: the type is registered
        if cli_flags:
            takers = " or ".join(f"'{t}'" for t, cls in BACKBONE_CLASSES.items() if cls.takes_model_flags)
            raise ConfigError(f"guided-diffusion flags {sorted(cli_flags)} apply to model_type {takers} only, "
                              f"not '{cfg['model_type']}': drop them")
        return {}
    recorded = sidecar_flags(cfg["model_path"])
    flags = merged_flags(recorded, cfg["model_flags"], cli_flags)
    unknown = unknown_flags(flags)
    if unknown:
        raise ConfigError(f"unknown model flag(s) {unknown}; valid flags: {', '.join(model_and_diffusion_defaults())}")
    trained = recorded.get("image_size")
    if trained is not None and trained != cfg["dim"][0]:
        # The working resolution replaces the flag (as in the original), and the default channel_mult and
        # the attention layers follow it, so another size builds another U-Net than the one trained.
        raise ConfigError(f"'dim' {cfg['dim']} works at {cfg['dim'][0]} px, but {cfg['model_path']} was trained at "
                          f"{trained} px (image_size in its .json beside it): set \"dim\": [{trained}, {trained}, "
                          f"{cfg['dim'][2]}]")
    flags["image_size"] = cfg["dim"][0]
    return flags
