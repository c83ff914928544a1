"""Random streams: every random stream of a run is its own, and every draw in the package uses it."""
from __future__ import annotations

import ast
import itertools
import pathlib

import numpy as np
import pytest

from ddpmseg.common.seeding import (MEMBER_LIMIT, MEMBER_PARTS, STREAMS, member_key, member_seed, seed_of, stream_key,
                             stream_seed)

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "ddpmseg"
SEEDS = (0, 1, 2, 7, 123, 2**31 - 1)


def canonical(key: tuple[int, ...]) -> tuple[int, ...]:
    """SeedSequence pads a key with zeros, so keys equal up to trailing zeros are one stream."""
    key = list(key)
    while key and key[-1] == 0:
        key.pop()
    return tuple(key)


def members(seed: int, count: int, parts=tuple(MEMBER_PARTS)) -> list[tuple[int, ...]]:
    return [member_key(seed, m, p) for m in range(count) for p in parts]


def classifier_run(seed: int, model_num: int, images: int = 20, copies: int = 4, tests: int = 50, views: int = 4,
                   folds: int = 4) -> dict[str, list[tuple[int, ...]]]:
    """Every key a train_interpreter run can draw from (ETF, decoupled trunk, augmentation, test-time
    views, DDPS with its fold ensembles, random weights), plus select_features' probes and suggest."""
    fold_seeds = [stream_seed("fold_seed", seed, f) for f in range(folds)]
    return {
        "members": members(seed, model_num),
        "fold ensembles": [k for s in fold_seeds for k in members(s, model_num)],
        "etf": [stream_key("etf_frame", seed)],
        "folds": [stream_key("fold_order", seed)] + [stream_key("fold_seed", seed, f) for f in range(folds)],
        "copies": [stream_key("augment_copy", seed, i, k) for i in range(images) for k in range(1, copies + 1)],
        "views": [stream_key("test_view", seed, i, j) for i in range(tests) for j in range(views)],
        "refiner": [stream_key("refiner_training", seed)] + [stream_key("refine_noise", seed, i) for i in range(tests)],
        "weights": [stream_key("unet_init", seed), stream_key("backbone_init", seed)],
        "noise": [stream_key("feature_noise", seed)] + [stream_key("noise_draw", seed, k) for k in range(1, 8)],
        "suggest": [stream_key("suggest_order", seed), stream_key("active_learning_start", seed)],
    }


def ddpm_runs(seed: int, steps: int = 60, batch: int = 16, ranks: int = 2) -> dict[str, list[tuple[int, ...]]]:
    """train_ddpm (with its sample grids), ddpmseg sample / generate_dataset.py, train_deeplab, the demo data."""
    per_step = ("ddpm_flip", "ddpm_timesteps", "ddpm_noise")
    return {
        "ddpm": [stream_key("ddpm_init", seed)] + [stream_key("ddpm_data_order", seed, e) for e in range(steps)]
        + [stream_key(n, seed, s) for n in per_step for s in range(steps)]
        + [stream_key("ddpm_crop", seed, s, p) for s in range(steps) for p in range(batch)]
        + [stream_key("ddpm_dropout", seed, s, r) for s in range(steps) for r in range(ranks)],
        "sampling": [stream_key("sample_batch", seed, b) for b in range(steps)],
        "deeplab": [stream_key("deeplab_head", seed)]
        + [stream_key(n, seed, e) for n in ("deeplab_shuffle", "deeplab_dropout") for e in range(steps)]
        + [stream_key("deeplab_rank_dropout", seed, e, r) for e in range(steps) for r in range(ranks)],
        "procedural": [stream_key("procedural_image", seed, s, i) for s in range(3) for i in range(steps)],
        "latent noise": [stream_key("latent_noise", seed)],
    }


@pytest.mark.parametrize("model_num", [1, 8, 10, 20])
@pytest.mark.parametrize("seed", SEEDS)
def test_all_streams_of_a_run_are_distinct(seed, model_num):
    keys = {**classifier_run(seed, model_num), **ddpm_runs(seed)}
    flat = [(what, canonical(k)) for what, ks in keys.items() for k in ks]
    seen: dict[tuple[int, ...], str] = {}
    for what, k in flat:
        assert k not in seen, f"seed {seed}, {model_num} members: {what} key {k} is also a {seen[k]} key"
        seen[k] = what
    # The derived 32-bit seeds too (a hash collision would join two streams); and none is the seed
    # itself, which the original's global RNG and shared noise take.
    seeds = [seed_of(k) for _, k in flat]
    assert len(set(seeds)) == len(seeds)
    assert seed not in seeds


def test_the_published_streams_keep_their_keys():
    """Members and the ETF frame draw what every published ensemble in the README was trained with."""
    ss = lambda *k: int(np.random.SeedSequence(list(k)).generate_state(1)[0])  # noqa: E731
    for seed, m in itertools.product((0, 3), (0, 7, 9)):
        assert member_seed(seed, m) == ss(seed, m)
        assert member_seed(seed, m, "member_dropout") == ss(seed, m, 1)
        assert member_seed(seed, m, "trunk") == ss(seed, m, 2)
        assert member_seed(seed, m, "trunk_dropout") == ss(seed, m, 3)
    assert stream_seed("etf_frame", 5) == ss(5, 1_000_003)


def test_the_table_keeps_ids_apart():
    ids = [s.id for s in STREAMS.values()]
    assert len(set(ids)) == len(ids)
    assert min(ids) >= MEMBER_LIMIT and max(ids) < 2**32  # a larger int would spill into two key words
    assert min(p for p in MEMBER_PARTS.values() if p) >= 1 and MEMBER_PARTS["member"] == 0


def test_keys_are_checked():
    with pytest.raises(TypeError, match="takes the indices"):
        stream_key("test_view", 0, 1)
    with pytest.raises(ValueError, match=">= 0"):
        stream_key("refine_noise", 0, -1)
    with pytest.raises(ValueError, match="outside"):
        member_key(0, MEMBER_LIMIT)
    with pytest.raises(KeyError):
        stream_key("no_such_stream", 0)


# Where a seed reaches an RNG without going through the table, and why that is right.
RAW_SEEDING = {
    ("features/ddpm.py", "shared_noise"): "the original's noise tensor, seeded with the seed itself",
    ("ddpm/train.py", "__getitem__"): "its crop seed comes from the ddpm_crop stream",
    ("data/augment.py", "augment_pair"): "its seed comes from the augment_copy stream",
    ("data/augment.py", "tta_view"): "its seed comes from the test_view stream",
}
SEEDING_CALLS = {"manual_seed", "default_rng", "SeedSequence"}


def test_every_draw_takes_its_stream_from_the_table():
    """Each seeding call in the package is given a table seed (stream_seed / member_seed / a table
    generator) or is one of the RAW_SEEDING places."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "seeding.py":
            continue
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for call in ast.walk(func):
                if not (isinstance(call, ast.Call) and isinstance(call.func, (ast.Attribute, ast.Name))):
                    continue
                name = call.func.attr if isinstance(call.func, ast.Attribute) else call.func.id
                if name not in SEEDING_CALLS:
                    continue
                arg = ast.unparse(call.args[0]) if call.args else ""
                if "stream_seed(" in arg or "member_seed(" in arg or (path.relative_to(SRC).as_posix(), func.name) in RAW_SEEDING:
                    continue
                offenders.append(f"{path.relative_to(SRC)}:{call.lineno} {func.name}: {name}({arg})")
    assert not offenders, "seeded outside ddpmseg.common.seeding's table:\n" + "\n".join(offenders)
