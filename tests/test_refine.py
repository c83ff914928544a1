"""The DDPS-style refiner on a synthetic task it can only solve by using all of its inputs.

Each image is a background with coloured rectangles; the class of a pixel follows from its colour,
except that classes 2 and 3 share one colour, so only the first prediction tells them apart. The
first prediction is the truth with wrong rectangles and 10 % pixel noise. A refiner that is the
identity, or ignores the image, or ignores the first prediction fails one of the tests below.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ddpmseg.classifier.refine import (CategoricalSchedule, MaskDenoiser, RefineSettings, _random_batch, hflip_sample,
                                       load_refiner, refine, refine_settings, save_refiner, train_refiner)

K, SIZE, IGNORE = 4, 24, 255
# Classes 2 and 3 look the same: telling them apart needs the first prediction.
COLOURS = torch.tensor([[-0.6, -0.6, -0.6], [0.8, -0.4, -0.4], [-0.4, -0.2, 0.8], [-0.4, -0.2, 0.8]])
FLIP_PAIRS = [[2, 3]]  # lets the hflip path run; a wrong swap would teach contradictory 2/3 labels
# Small and fast, yet enough to learn the task: about 10 s of training on one CPU core.
FAST = RefineSettings(iterations=200, width=16, batch_size=8, steps=3)


def _rect(g: torch.Generator, lo: int, hi: int) -> tuple[slice, slice]:
    h, w = torch.randint(lo, hi, (2,), generator=g).tolist()
    y = torch.randint(0, SIZE - h, (1,), generator=g).item()
    x = torch.randint(0, SIZE - w, (1,), generator=g).item()
    return slice(y, y + h), slice(x, x + w)


def make_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images [n, 3, S, S] in [-1, 1], first_probs [n, K, S, S], labels [n, S, S])."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    first = torch.zeros_like(labels)
    for i in range(n):
        for _ in range(3):
            labels[i][_rect(g, SIZE // 5, SIZE // 2)] = torch.randint(1, K, (1,), generator=g).item()
        first[i] = labels[i]
        for _ in range(2):  # whole regions given a wrong class, as a segmenter's blunders
            r = _rect(g, SIZE // 8, SIZE // 4)
            first[i][r] = (first[i][r] + torch.randint(1, K, (1,), generator=g)) % K
    noisy = torch.rand(first.shape, generator=g) < 0.1
    first = torch.where(noisy, (first + torch.randint(1, K, first.shape, generator=g)) % K, first)
    images = COLOURS[labels].permute(0, 3, 1, 2) + 0.15 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    probs = torch.full((n, K, SIZE, SIZE), 0.3 / (K - 1)).scatter_(1, first[:, None], 0.7)
    return images.clamp(-1, 1), probs, labels


def accuracy(probs: torch.Tensor, labels: torch.Tensor, where: torch.Tensor | None = None) -> float:
    hit = probs.argmax(1) == labels
    return hit[where].float().mean().item() if where is not None else hit.float().mean().item()


@pytest.fixture(scope="module")
def trained():
    images, probs, labels = make_task(32, seed=1)
    labels[:, 0, :] = IGNORE  # a row of unlabelled pixels: the loss must skip them
    model, stats = train_refiner(images, probs, labels, K, IGNORE, FAST, flip_pairs=FLIP_PAIRS, log=lambda _: None)
    return model, stats


@pytest.fixture(scope="module")
def held_out():
    return make_task(16, seed=2)


def run(model: MaskDenoiser, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    return refine(model, images, probs, FAST, torch.Generator().manual_seed(0))[0]


def test_refiner_fixes_the_first_prediction(trained, held_out):
    model, stats = trained
    images, probs, labels = held_out
    refined, masks = refine(model, images, probs, FAST, torch.Generator().manual_seed(0))
    assert stats["iterations"] == FAST.iterations and stats["seconds"] > 0 and stats["final_loss"] < 0.5
    assert refined.shape == probs.shape and torch.allclose(refined.sum(1), torch.ones(1))
    assert len(masks) == FAST.steps and torch.equal(masks[-1], refined.argmax(1))
    first, after = accuracy(probs, labels), accuracy(refined, labels)
    # Observed (9 seeds): 0.85-0.86 -> 0.96-0.97. An identity refiner stays at the first accuracy.
    assert first < 0.9 and after > first + 0.08, (first, after)


def test_refiner_uses_the_image(trained, held_out):
    model, _ = trained
    images, probs, labels = held_out
    right = accuracy(run(model, images, probs), labels)
    # Observed (9 seeds): >= 0.96 with the right images, 0.37-0.77 with another sample's image or none.
    for wrong in (images.roll(1, dims=0), torch.zeros_like(images)):
        assert accuracy(run(model, wrong, probs), labels) < right - 0.15


def test_refiner_uses_the_first_prediction(trained, held_out):
    model, _ = trained
    images, probs, labels = held_out
    twins = (labels == 2) | (labels == 3)  # only the first prediction tells these apart
    assert accuracy(run(model, images, probs), labels, twins) > 0.8  # observed 0.85-0.90
    # Swap what the first prediction says about 2 and 3: the refiner must follow it (observed 0.05-0.11).
    swapped = probs[:, [0, 1, 3, 2]]
    assert accuracy(run(model, images, swapped), labels, twins) < 0.4
    # No first prediction at all: 2 vs 3 becomes a guess (observed 0.35-0.65).
    assert accuracy(run(model, images, torch.full_like(probs, 1 / K)), labels, twins) < 0.75


def test_schedule_endpoints_and_q_sample():
    sched = CategoricalSchedule(20)
    a = sched.alpha_bar
    assert a[0].item() == pytest.approx(0.99999) and a[-1].item() == pytest.approx(0.000009)
    assert (a[1:] < a[:-1]).all()
    assert a[9].item() == pytest.approx(0.526, abs=1e-3)  # DDPS's middle re-noise level at T=20
    x0 = torch.randint(0, 5, (4, 100, 100), generator=torch.Generator().manual_seed(0))
    steps = torch.tensor([0, 5, 10, 19])
    x_t = sched.q_sample(x0, steps, 5, torch.Generator().manual_seed(1))
    assert x_t.dtype == torch.long and x_t.min() >= 0 and x_t.max() < 5
    for n, s in enumerate(steps):
        # A redrawn pixel lands on its old class 1/K of the time.
        expect = a[s].item() + (1 - a[s].item()) / 5
        assert (x_t[n] == x0[n]).float().mean().item() == pytest.approx(expect, abs=0.02)
    again = sched.q_sample(x0, steps, 5, torch.Generator().manual_seed(1))
    assert torch.equal(x_t, again)


def test_step_schedule():
    default = RefineSettings()
    assert default.first_step() == 9 and default.step_schedule() == [9, 7, 4, 2, 0]
    for steps, start in [(1, 9), (3, 9), (10, 9), (5, 19), (2, 1), (1, 0)]:
        sched = RefineSettings(steps=steps, start_step=start).step_schedule()
        assert len(sched) == steps and sched[0] == start and all(isinstance(s, int) for s in sched)
        assert all(a > b for a, b in zip(sched, sched[1:]))
        assert steps == 1 or sched[-1] == 0


@pytest.mark.parametrize("bad", [dict(steps=0), dict(start_step=20), dict(start_step=-1), dict(steps=11),
                                 dict(steps=4, start_step=2), dict(num_timesteps=1), dict(width=4),
                                 dict(embed_dim=0), dict(iterations=0), dict(batch_size=0),
                                 dict(learning_rate=0.0), dict(weight_decay=-0.1), dict(hflip="yes"),
                                 dict(prior_residual=1)])
def test_validate_rejects_nonsense(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        RefineSettings(**bad).validate()


def test_validate_accepts_defaults():
    RefineSettings().validate()
    RefineSettings(num_timesteps=2, steps=2, start_step=1).validate()


def test_hflip_swaps_paired_classes_in_labels_and_probs():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 5, 6, generator=g)
    probs = torch.rand(2, 6, 5, 6, generator=g)
    labels = torch.randint(0, 6, (2, 5, 6), generator=g)
    labels[0, 0, 0] = IGNORE
    pairs = [[4, 5], [1, 2]]
    f_img, f_probs, f_lab = hflip_sample(image, probs, labels, pairs)
    assert torch.equal(f_img, image.flip(-1))
    mirrored = labels.flip(-1)
    swap = torch.tensor([0, 2, 1, 3, 5, 4])
    assert torch.equal(f_lab[mirrored != IGNORE], swap[mirrored[mirrored != IGNORE]])
    assert f_lab[0, 0, -1] == IGNORE  # unlabelled stays unlabelled, just mirrored
    for c in range(6):
        assert torch.equal(f_probs[:, c], probs[:, swap[c]].flip(-1))
    # Mirroring twice is the identity; a single (unbatched) sample works too.
    assert all(torch.equal(a, b) for a, b in zip(hflip_sample(f_img, f_probs, f_lab, pairs), (image, probs, labels)))
    one = hflip_sample(image[0], probs[0], labels[0], pairs)
    assert torch.equal(one[1], f_probs[0]) and torch.equal(one[2], f_lab[0])


def test_save_load_round_trip(trained, held_out, tmp_path):
    model, _ = trained
    images, probs, _ = held_out
    path = str(tmp_path / "refiner.pt")
    save_refiner(model, FAST, K, path)
    loaded, settings = load_refiner(path)
    assert settings == FAST
    assert torch.equal(run(loaded, images[:4], probs[:4]), run(model, images[:4], probs[:4]))
    # DDPS's plain head comes back plain (an untrained plain head does not return the first prediction).
    plain = replace(FAST, prior_residual=False)
    model = MaskDenoiser(K, plain.width, plain.embed_dim, prior_residual=False,
                         generator=torch.Generator().manual_seed(0))
    save_refiner(model, plain, K, path)
    loaded, _ = load_refiner(path)
    assert loaded.prior_residual is False
    assert torch.equal(run(loaded, images[:4], probs[:4]), run(model, images[:4], probs[:4]))
    # On the device asked for (the meta device stands in for a GPU).
    assert {p.device.type for p in load_refiner(path, device="meta")[0].parameters()} == {"meta"}


def test_load_refiner_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_refiner(str(tmp_path / "missing.pt"))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a refiner checkpoint"):
        load_refiner(str(tmp_path / "other.pt"))
    torch.save({"format": "ddpmseg-refiner-v1", "settings": {}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="damaged refiner checkpoint"):
        load_refiner(str(tmp_path / "partial.pt"))
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable refiner checkpoint"):
        load_refiner(str(tmp_path / "text.pt"))
    # A file that needs code to unpickle is refused unread (weights_only): its code never runs.
    torch.save(Code(), tmp_path / "code.pt")
    with pytest.raises(ValueError, match="not a readable refiner checkpoint"):
        load_refiner(str(tmp_path / "code.pt"))


class Code:
    """Unpickling this needs code (this class), which a weights_only load refuses."""


def test_untrained_refiner_returns_the_first_prediction(held_out):
    images, probs, _ = held_out
    model = MaskDenoiser(K, width=8, embed_dim=4, generator=torch.Generator().manual_seed(0))
    refined, _ = refine(model, images, probs, FAST)
    assert torch.equal(refined.argmax(1), probs.argmax(1))


def test_training_is_deterministic_and_leaves_global_rng_alone():
    images, probs, labels = make_task(4, seed=3)
    # DDPS's plain head here, so that path trains too.
    tiny = RefineSettings(iterations=3, width=8, embed_dim=4, batch_size=2, prior_residual=False)

    def weights(settings: RefineSettings) -> dict[str, torch.Tensor]:
        model, _ = train_refiner(images, probs, labels, K, IGNORE, settings, FLIP_PAIRS, log=lambda _: None)
        return model.state_dict()

    state = torch.random.get_rng_state()
    a, b = weights(tiny), weights(tiny)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = weights(replace(tiny, seed=1))
    assert not all(torch.equal(a[k], other[k]) for k in a)


def test_refine_is_deterministic_per_generator(trained, held_out):
    model, _ = trained
    images, probs, _ = held_out
    out = lambda seed: refine(model, images[:4], probs[:4], FAST, torch.Generator().manual_seed(seed))[0]  # noqa: E731
    assert torch.equal(out(5), out(5))
    assert torch.equal(refine(model, images[:4], probs[:4], FAST)[0], refine(model, images[:4], probs[:4], FAST)[0])


def test_denoiser_handles_odd_sizes():
    model = MaskDenoiser(3, width=8, embed_dim=4, generator=torch.Generator().manual_seed(0))
    x_t = torch.zeros(2, 13, 10, dtype=torch.long)
    logits = model(x_t, torch.zeros(2, 3, 13, 10), torch.full((2, 3, 13, 10), 1 / 3), torch.tensor([0, 19]))
    assert logits.shape == (2, 3, 13, 10)


def test_train_rejects_bad_inputs():
    images, probs, labels = make_task(2, seed=4)
    one_update = replace(FAST, iterations=1)

    def train(images=images, probs=probs, labels=labels, flip_pairs=()):
        return train_refiner(images, probs, labels, K, IGNORE, one_update, flip_pairs=flip_pairs, log=lambda _: None)

    train(flip_pairs=[[0, 3]])  # the first and the last class ids pair like any others
    for pairs in ([[2, 4]], [[-1, 2]], [[1, 2, 3]], [[1, 2], [2, 3]]):  # out of range, not a pair, not distinct
        with pytest.raises(ValueError, match=r"flip_pairs must be \[a, b\] pairs of distinct class ids in \[0, 3\]"):
            train(flip_pairs=pairs)
    for bad in ({"probs": probs[:, :3]}, {"images": images[:, :1]}):  # 3 classes of probabilities; a grey image
        with pytest.raises(ValueError, match="shapes disagree"):
            train(**bad)
    with pytest.raises(ValueError, match="labels hold 7"):
        train(labels=labels.index_fill(1, torch.tensor([0]), 7))
    one_bad = labels.clone()
    one_bad[0, 0, 0] = K  # the first id past the classes
    with pytest.raises(ValueError, match=r"labels hold 4, neither a class id in \[0, 3\] nor ignore_index=255"):
        train(labels=one_bad)


def test_random_batches_draw_every_sample_and_flip_half_with_their_classes():
    # Sample i: image 10 i + its column (left 0, right 1), labels 2 | 1, first probabilities one-hot on them.
    n = 4
    images = (10 * torch.arange(n).view(n, 1, 1, 1) + torch.tensor([0.0, 1.0])).expand(n, 3, 2, 2)
    labels = torch.tensor([[2, 1], [2, 1]]).expand(n, 2, 2)
    probs = F.one_hot(labels, K).permute(0, 3, 1, 2).float()
    gen, seen, flips = torch.Generator().manual_seed(0), set(), []
    for _ in range(100):
        img, p, lab = _random_batch(images, probs, labels, FAST, FLIP_PAIRS, gen)
        assert len(img) == n  # batch_size 8, but only 4 samples
        for j in range(n):
            seen.add(int(img[j, 0].min()) // 10)
            flips.append(bool(img[j, 0, 0, 0] > img[j, 0, 0, 1]))
            # Mirrored: the columns trade places and classes 2 and 3 trade ids (FLIP_PAIRS): 2 | 1 -> 1 | 3.
            want = torch.tensor([[1, 3], [1, 3]] if flips[-1] else [[2, 1], [2, 1]])
            assert torch.equal(lab[j], want) and torch.equal(p[j].argmax(0), want)
    assert seen == set(range(n))
    assert 0.4 < sum(flips) / len(flips) < 0.6  # 400 fair coin flips: 0.5, standard deviation 0.025


def test_training_follows_the_settings_with_a_cosine_decay(monkeypatch):
    images, probs, labels = make_task(4, seed=3)
    settings = RefineSettings(iterations=4, width=8, embed_dim=4, batch_size=2, learning_rate=0.01, weight_decay=0.3,
                              prior_residual=False)
    made = []

    class Recording(torch.optim.AdamW):
        """AdamW that records its arguments and the learning rate of each update."""
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            made.append((kwargs, []))

        def step(self, closure=None):
            made[-1][1].append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    model, _ = train_refiner(images, probs, labels, K, IGNORE, settings, log=lambda _: None)
    ((kwargs, rates),) = made
    assert kwargs == {"lr": 0.01, "weight_decay": 0.3}
    # Update i at 0.01 x (1 + cos(pi i / 4)) / 2: from the peak down towards zero.
    assert rates == pytest.approx([0.01 * (1 + math.cos(math.pi * i / 4)) / 2 for i in range(4)], abs=1e-15)
    assert model.prior_residual is False


def test_refine_settings_of_a_config_value():
    assert refine_settings({}, seed=3) is None  # no "refine": no refinement
    assert refine_settings({"method": "ddps", "iterations": 20, "width": 8}, seed=3) == RefineSettings(
        iterations=20, width=8, seed=3)


def test_each_step_renoises_the_previous_steps_estimate(held_out):
    """Step k's noised mask is q_sample of step k-1's estimate (step 0's: the first prediction), drawn
    from a generator replayed from the same seed: seen by a forward pre-hook on the denoiser."""
    images, probs, _ = held_out
    images, probs = images[:4], probs[:4]
    settings = replace(FAST, prior_residual=False)  # a random plain head moves the estimate at every step
    model = MaskDenoiser(K, width=8, embed_dim=4, prior_residual=False, generator=torch.Generator().manual_seed(0))
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    _, masks = refine(model, images, probs, settings, torch.Generator().manual_seed(7))
    schedule, replay = CategoricalSchedule(settings.num_timesteps), torch.Generator().manual_seed(7)
    estimates = [probs.argmax(1), *masks[:-1]]
    # The estimates move from step to step, so a step fed an older one would noise another mask.
    assert all(not torch.equal(a, b) for a, b in zip(estimates, estimates[1:]))
    assert len(seen) == len(settings.step_schedule()) == 3
    for x_t, estimate, s in zip(seen, estimates, settings.step_schedule()):
        step = torch.full((len(images),), s, dtype=torch.long)
        assert torch.equal(x_t, schedule.q_sample(estimate, step, K, replay))


def test_training_draws_every_noise_step_including_the_first(monkeypatch):
    """Steps are drawn uniformly from [0, num_timesteps): with a two-step schedule, 8 updates of batch 2
    draw both 0 and 1 (a fixed seed; a uniform draw misses one with probability 2 x 2^-16)."""
    from ddpmseg.classifier.refine import MaskDenoiser
    seen, forward = [], MaskDenoiser.forward

    def recording(self, x_t, img, probs, step):
        seen.extend(step.tolist())
        return forward(self, x_t, img, probs, step)

    monkeypatch.setattr(MaskDenoiser, "forward", recording)
    images, probs, labels = make_task(2, seed=5)
    train_refiner(images, probs, labels, K, IGNORE,
                  replace(FAST, iterations=8, batch_size=2, num_timesteps=2, steps=1, start_step=1), log=lambda _: None)
    assert len(seen) == 16 and set(seen) == {0, 1}
