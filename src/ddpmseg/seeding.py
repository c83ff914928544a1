"""Independent, reproducible random streams derived from the one seed a run is given."""
from __future__ import annotations

import numpy as np
import torch


def derived_seed(*keys: int) -> int:
    """A 32-bit seed for the stream named by ``keys`` (e.g. seed, image, copy).

    SeedSequence mixes the keys, so neighbouring keys give unrelated streams (unlike seed + i).
    """
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def generator(*keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded with ``derived_seed(*keys)``."""
    return torch.Generator().manual_seed(derived_seed(*keys))
