"""Config keys that only some backbone families read: set under any other model_type they would be
ignored without a word, so each family's check_config refuses the ones it does not read."""
from __future__ import annotations

from ..common.config import DEFAULTS, ConfigError

FAMILY_KEYS = ("hook_layers", "prompt", "prompt_embedding", "dinov2_arch", "input_size")


def reject_unread_keys(cfg: dict, where: str, model_type: str, reads: tuple[str, ...]) -> None:
    """ConfigError naming the keys of FAMILY_KEYS outside ``reads`` that ``cfg`` sets away from their default."""
    unread = [k for k in FAMILY_KEYS if k not in reads and cfg[k] != DEFAULTS[k][1]]
    if unread:
        raise ConfigError(f"{where}: model_type '{model_type}' does not read {', '.join(map(repr, unread))}: "
                          f"drop {'it' if len(unread) == 1 else 'them'}")
