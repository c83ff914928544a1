"""train_ensemble: original checkpoint format, early stopping, member independence, resume; and the
loop's units (batch source, early stopping, budget caps, snapshot/restore, settings) on their own."""
import dataclasses
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ddpmseg.classifier.train as train_mod
from ddpmseg.common.config import DEFAULTS, REQUIRED, ConfigError
from ddpmseg.classifier.ensemble import PixelEnsemble
from ddpmseg.features.store import FeatureStore
from ddpmseg.classifier.train import EnsembleSettings, LabelledPixels, load_ensemble, model_path, train_ensemble

H = W = 16
K = 4
SHAPES = [(24, 8, 8), (16, 16, 16)]  # dim 40


def make_data(seed=0, keep=0.85):
    """3 images of random activations; labels are a fixed linear rule of each pixel's upsampled
    features (so they are learnable only if pixels are read at the right place); ~15% of the
    pixels are left out of training, like ignore_label pixels."""
    g = torch.Generator().manual_seed(seed)
    store = FeatureStore(3, SHAPES, (H, W))
    for i in range(3):
        store.put(i, [torch.randn(c, h, w, generator=g) for c, h, w in SHAPES])
    proj = torch.randn(K, store.dim, generator=g)
    index, labels = [], []
    for i in range(3):
        f = store.image_features(i).reshape(store.dim, -1)
        lab = (proj @ f).argmax(0)
        idx = torch.nonzero(torch.rand(H * W, generator=g) < keep).squeeze(1)
        index.append(idx + i * H * W)
        labels.append(lab[idx])
    return store, LabelledPixels(torch.cat(index), torch.cat(labels), (H, W))


def make_cfg(**kw):
    """The config defaults (the original method) with a tiny problem's sizes."""
    cfg = {k: d for k, (_, d) in DEFAULTS.items() if d is not REQUIRED}
    cfg.update(batch_size=32, seed=0, number_class=K, early_stop_after_epoch=1, early_stop_patience=2, max_epochs=6)
    cfg.update(kw)
    return cfg


def make_settings(**kw):
    """EnsembleSettings of ``make_cfg(**kw)``."""
    return EnsembleSettings.from_config(make_cfg(**kw))


def quiet(_msg):
    pass


class OriginalClassifier(nn.Module):
    def __init__(self, dim, num_classes):
        super().__init__()
        h1, h2 = (128, 32) if num_classes < 30 else (256, 128)
        self.layers = nn.Sequential(nn.Linear(dim, h1), nn.ReLU(), nn.BatchNorm1d(h1), nn.Linear(h1, h2), nn.ReLU(),
                                    nn.BatchNorm1d(h2), nn.Linear(h2, num_classes))

    def forward(self, x):
        return self.layers(x)


def load_sd(exp_dir, m):
    return torch.load(model_path(exp_dir, m), weights_only=True)["model_state_dict"]


# Why the tolerances of same-weights claims hold on any CPU:
# - the same computation replayed (a resumed run, a rerun) uses the same kernels on the same
#   shapes in the same order, so it is bit-identical: atol=0;
# - a member trained alone vs beside others uses batched matmuls of another batch count, whose
#   rounding may differ by CPU. Those runs are made in float64 (|dg| <~ 1e-15); Adam's step moves
#   by at most lr/eps per unit of gradient, so S steps differ by <= S * 1e-3 * 1e-15 / 1e-8 =
#   S * 1e-10 (<= 1.2e-8 for the <= 120 steps here): SAME_MEMBER_ATOL = 1e-7. In float32 the
#   same bound is ~1e-2, larger than the differences the claims are about.
SAME_MEMBER_ATOL = 1e-7


def assert_same_weights(sd_a, sd_b, atol):
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.allclose(sd_a[k].float(), sd_b[k].float(), atol=atol), (k, (sd_a[k] - sd_b[k]).abs().max())


@pytest.fixture(scope="module")
def data():
    return make_data()


def all_features(store, pixels):
    img, ys, xs = pixels.coords(torch.arange(len(pixels.labels)))
    return store.pixels(img, ys, xs)


def test_coords_inverts_flat_index():
    px = LabelledPixels(torch.tensor([0, 5, 23, 24, 3 * 24 + 4 * 6 - 1]), torch.zeros(5, dtype=torch.long), (4, 6))
    img, ys, xs = px.coords(torch.arange(5))
    assert img.tolist() == [0, 0, 0, 1, 3]
    assert ys.tolist() == [0, 0, 3, 0, 3]
    assert xs.tolist() == [0, 5, 5, 0, 5]


def test_original_checkpoint_format_and_learning(data, tmp_path):
    store, px = data
    cfg = make_settings()
    stats = train_ensemble(store, px, cfg, str(tmp_path), [0, 1, 2], log=quiet)
    assert set(stats) == {0, 1, 2}
    assert not (tmp_path / train_mod.STATE_FILE).exists()
    expected_keys = {f"module.{k}" for k in OriginalClassifier(store.dim, K).state_dict()}
    assert "module.layers.0.weight" in expected_keys
    x = all_features(store, px)
    for m in range(3):
        ckpt = torch.load(model_path(str(tmp_path), m), weights_only=True)
        sd = ckpt["model_state_dict"]
        assert set(sd) == expected_keys
        assert sd["module.layers.0.weight"].shape == (128, store.dim)  # nn.Linear [out, in] layout
        assert sd["module.layers.6.weight"].shape == (K, 32)
        # Loads strictly into the original's nn.DataParallel(pixel_classifier).
        ref = nn.DataParallel(OriginalClassifier(store.dim, K))
        ref.load_state_dict(sd, strict=True)
        ref.eval()
        with torch.no_grad():
            acc = (ref(x).argmax(1) == px.labels).float().mean().item()
        assert acc > 0.85, f"member {m} did not learn the labels: accuracy {acc:.2f}"
    # Members are different models (own init and own shuffling).
    assert not torch.allclose(load_sd(tmp_path, 0)["module.layers.0.weight"],
                              load_sd(tmp_path, 1)["module.layers.0.weight"], atol=1e-3)


def original_stopping(losses, n_batches, after, patience, max_epochs):
    """train_interpreter.py's loop on one member's per-iteration batch losses."""
    best, count, it = 1e7, 0, 0
    for epoch in range(max_epochs):
        for _ in range(n_batches):
            loss = losses[it]
            it += 1
            if epoch > after:
                if loss < best:
                    best, count = loss, 0
                else:
                    count += 1
                if count > patience:
                    return it, "early_stop", best
    return it, "max_epochs", best


def drive_early_stopping(member_losses, n_batches, after, patience, max_epochs):
    """EarlyStopping fed iteration by iteration as train_ensemble feeds it; (iterations, reason, best)
    of each member."""
    M = len(member_losses)
    rule, active, out = train_mod.EarlyStopping(M, after, patience), [True] * M, [None] * M
    for it in range(max_epochs * n_batches):
        for j in rule.update(it // n_batches, [losses[it] for losses in member_losses], active):
            active[j], out[j] = False, (it + 1, "early_stop", rule.best[j])
    return [o or (max_epochs * n_batches, "max_epochs", rule.best[j]) for j, o in enumerate(out)]


def noisy_plateaus(seed, members, iterations):
    """Per-member batch losses that fall, then flatten into noise (so members stop at different times)."""
    g = torch.Generator().manual_seed(seed)
    return [(2.0 / (1 + torch.arange(iterations) / (5 + 10 * m)) + 0.05 * torch.rand(iterations, generator=g)).tolist()
            for m in range(members)]


@pytest.mark.parametrize("after,patience", [(1, 2), (0, 0), (2, 4), (3, 50)])
def test_early_stopping_follows_the_original_rule(after, patience):
    n_batches, max_epochs = 20, 8
    member_losses = noisy_plateaus(after + patience, 4, n_batches * max_epochs)
    got = drive_early_stopping(member_losses, n_batches, after, patience, max_epochs)
    for losses, (it, reason, best) in zip(member_losses, got):
        assert (it, reason, best) == original_stopping(losses, n_batches, after, patience, max_epochs)
        # Nobody stops while the epoch index is <= early_stop_after_epoch.
        assert it > (after + 1) * n_batches + patience or reason == "max_epochs"
    if (after, patience) == (1, 2):
        assert len({it for it, _, _ in got}) > 1 and {r for _, r, _ in got} == {"early_stop"}


def test_equal_batch_loss_counts_as_no_improvement():
    n_batches = 10
    got = drive_early_stopping([[1.0] * 80, [1.0] * 80], n_batches, after=1, patience=5, max_epochs=8)
    # best = 1.0 on the first counted batch, then 6 ties > patience 5
    assert got == [(2 * n_batches + 1 + 6, "early_stop", 1.0)] * 2


def test_a_stopped_member_is_left_as_it_was():
    rule = train_mod.EarlyStopping(2, after_epoch=0, patience=0)
    assert rule.update(0, [5.0, 5.0], [True, True]) == []  # epoch 0 is not counted
    assert rule.update(1, [3.0, 4.0], [True, True]) == []
    assert rule.update(1, [3.0, 1.0], [True, True]) == [0]  # a tie: count 1 > patience 0
    assert rule.update(1, [0.5, 2.0], [False, True]) == [1]  # member 0 stopped: its 0.5 is not taken
    assert rule.best == [3.0, 1.0] and rule.count == [1, 1]


@pytest.mark.parametrize("after,patience", [(1, 2), (0, 0), (2, 4)])
def test_training_stops_each_member_by_early_stopping(data, tmp_path, monkeypatch, after, patience):
    store, px = data
    cfg = make_settings(early_stop_after_epoch=after, early_stop_patience=patience, max_epochs=8, feature_matrix="lazy")
    n_batches = len(px.labels) // cfg.batch_size
    calls = counting_pixels(store, monkeypatch)  # one store.pixels call per iteration ("lazy")
    stats = train_ensemble(store, px, cfg, str(tmp_path), [0, 1, 2], log=quiet)
    iterations = []
    for m in range(3):
        it = stats[m]["iterations"]
        assert stats[m]["stopped"] == "early_stop"
        assert stats[m]["epochs"] == -(-it // n_batches)
        assert 0 < stats[m]["best_batch_loss"] < 2
        # Nobody stops while the epoch index is <= early_stop_after_epoch.
        assert it > (after + 1) * n_batches + patience
        assert it < cfg.max_epochs * n_batches
        # The file is the member at the moment it stopped (one BN update per iteration).
        sd = load_sd(tmp_path, m)
        assert int(sd["module.layers.2.num_batches_tracked"]) == it
        assert int(sd["module.layers.5.num_batches_tracked"]) == it
        iterations.append(it)
    assert calls[0] == max(iterations)  # training ends when the last member stops
    if (after, patience) == (1, 2):
        assert len(set(iterations)) > 1  # members stop independently


def published_member(store, px, cfg, m):
    """Member ``m`` trained as train_interpreter.py trains one, written out plainly in float64: the
    original nn.Sequential, initialised from the member's generator; every epoch a fresh shuffle of
    all pixels from the same generator, drop_last batches; Adam; the original stopping rule (which
    only picks the iteration to keep: the steps before it do not depend on it)."""
    g = train_mod.member_generator(cfg.seed, m)
    net = OriginalClassifier(store.dim, K)
    net.load_state_dict(PixelEnsemble(1, store.dim, K, generators=[g]).member_state_dict(0))
    net = net.double().train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    x, y = all_features(store, px).double(), px.labels
    N, B = len(y), cfg.batch_size
    losses, weights = [], []
    for _ in range(cfg.max_epochs):
        order = torch.randperm(N, generator=g)
        for b in range(N // B):
            idx = order[b * B:(b + 1) * B]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            weights.append({f"module.{k}": v.clone() for k, v in net.state_dict().items()})
    it, reason, best = original_stopping(losses, N // B, cfg.early_stop_after_epoch, cfg.early_stop_patience,
                                         cfg.max_epochs)
    return weights[it - 1], (it, reason, best)


@pytest.mark.parametrize("patience", [2, 10_000])  # stopped early; stopped by max_epochs
def test_each_member_is_the_published_training_of_that_member(data, tmp_path, patience):
    """train_ensemble's batches, steps and stopping, composed, are the published per-member loop.
    Float64, so the two paths (batched fused Adam vs nn.Sequential and Adam) differ by rounding
    only: see SAME_MEMBER_ATOL."""
    store, px = data
    cfg = make_settings(early_stop_patience=patience, max_epochs=4)
    stats = train_ensemble(store, px, cfg, str(tmp_path), [0, 2], log=quiet, dtype=torch.float64)
    for m in (0, 2):
        sd, (it, reason, best) = published_member(store, px, cfg, m)
        assert (stats[m]["iterations"], stats[m]["stopped"]) == (it, reason)
        assert stats[m]["best_batch_loss"] == pytest.approx(best, rel=1e-12)
        assert_same_weights(load_sd(tmp_path, m), sd, atol=SAME_MEMBER_ATOL)
        assert int(sd["module.layers.2.num_batches_tracked"]) == it


def test_member_files_hold_each_members_training_curve(data, tmp_path, monkeypatch):
    """Every batch's loss and accuracy at CURVE_EVERY 1; at 7, each point is the mean of its 7 batches
    (float64: the same additions, so equal to rounding); the curve ends where the member stopped."""
    store, px = data
    cfg = make_settings(early_stop_patience=2, max_epochs=4)
    n_batches = len(px.labels) // cfg.batch_size
    curves = {}
    for every in (1, 7):
        monkeypatch.setattr(train_mod, "CURVE_EVERY", every)
        stats = train_ensemble(store, px, cfg, str(tmp_path / str(every)), [0, 2], log=quiet, dtype=torch.float64)
        curves[every] = {m: torch.load(model_path(str(tmp_path / str(every)), m), weights_only=True)["curve"]
                         for m in (0, 2)}
    for m in (0, 2):
        it, one, seven = stats[m]["iterations"], curves[1][m], curves[7][m]
        assert stats[m]["stopped"] == "early_stop" and one["every"] == 1 and seven["every"] == 7
        assert one["batch"] == list(range(1, it + 1))
        assert seven["batch"] == list(range(7, it + 1, 7)) + ([it] if it % 7 else [])
        # Early stopping's best batch loss is the lowest loss from the epoch after early_stop_after_epoch on.
        after = (cfg.early_stop_after_epoch + 1) * n_batches
        assert min(one["loss"][after:]) == stats[m]["best_batch_loss"]
        assert all(a * cfg.batch_size == pytest.approx(round(a * cfg.batch_size), abs=1e-9) and 0 <= a <= 1
                   for a in one["accuracy"])  # correct pixels out of one batch
        for key in ("loss", "accuracy"):
            groups = [one[key][start:start + 7] for start in range(0, it, 7)]
            assert seven[key] == pytest.approx([sum(g) / len(g) for g in groups], rel=1e-12)
        assert one["accuracy"][-1] > one["accuracy"][0]  # the rule behind the labels is learnable


def test_max_epochs_caps_training(data, tmp_path):
    store, px = data
    cfg = make_settings(early_stop_patience=10_000, max_epochs=3)
    n_batches = len(px.labels) // cfg.batch_size
    stats = train_ensemble(store, px, cfg, str(tmp_path), [0, 2], log=quiet)
    assert set(stats) == {0, 2}
    for m in (0, 2):
        assert stats[m]["stopped"] == "max_epochs"
        assert stats[m]["iterations"] == 3 * n_batches  # drop_last: N // batch_size batches per epoch
        assert stats[m]["epochs"] == 3
        assert int(load_sd(tmp_path, m)["module.layers.2.num_batches_tracked"]) == 3 * n_batches
    assert not os.path.exists(model_path(str(tmp_path), 1))


def test_each_member_reshuffles_every_epoch_with_drop_last(data, tmp_path, monkeypatch):
    """Like a DataLoader(shuffle=True, drop_last=True) per member: every epoch is N // B batches of
    distinct labelled pixels in a fresh order, and the members' orders differ."""
    store, px = data
    cfg = make_settings(max_epochs=3, early_stop_patience=10_000, feature_matrix="lazy")  # one store.pixels per batch
    M, B, N = 2, cfg.batch_size, len(px.labels)
    n_batches = N // B
    assert N % B  # so drop_last matters
    seen = []
    orig = store.pixels

    def pixels(img, ys, xs):
        seen.append((img * H * W + ys * W + xs).reshape(M, B))
        return orig(img, ys, xs)

    monkeypatch.setattr(store, "pixels", pixels)
    train_ensemble(store, px, cfg, str(tmp_path), [0, 1], log=quiet)
    order = torch.stack(seen, 1).reshape(M, 3, n_batches * B)  # [member, epoch, pixels in visiting order]
    labelled = set(px.index.tolist())
    for m in range(M):
        for e in range(3):
            assert len(set(order[m, e].tolist())) == n_batches * B  # no pixel twice in an epoch
            assert set(order[m, e].tolist()) <= labelled
        assert not torch.equal(order[m, 0], order[m, 1]) and not torch.equal(order[m, 1], order[m, 2])
    assert not torch.equal(order[0, 0], order[1, 0])


def test_max_steps_budget(data, tmp_path):
    store, px = data
    stats = train_ensemble(store, px, make_settings(early_stop_patience=10_000), str(tmp_path), [0, 1], log=quiet,
                           max_steps=13)
    for m in (0, 1):
        assert stats[m]["stopped"] == "max_steps" and stats[m]["iterations"] == 13
        assert int(load_sd(tmp_path, m)["module.layers.2.num_batches_tracked"]) == 13


def test_member_independent_of_its_companions(data, tmp_path):
    store, px = data
    cfg = make_settings()
    os.makedirs(tmp_path / "a"), os.makedirs(tmp_path / "b")
    f64 = torch.float64  # see SAME_MEMBER_ATOL; float64 losses also make early stopping's comparisons exact
    together = train_ensemble(store, px, cfg, str(tmp_path / "a"), [0, 1, 2], log=quiet, dtype=f64)
    alone = train_ensemble(store, px, cfg, str(tmp_path / "b"), [1], log=quiet, dtype=f64)
    assert alone[1]["iterations"] == together[1]["iterations"]
    assert alone[1]["stopped"] == together[1]["stopped"]
    assert load_sd(tmp_path / "b", 1)["module.layers.0.weight"].dtype == f64
    assert_same_weights(load_sd(tmp_path / "a", 1), load_sd(tmp_path / "b", 1), atol=SAME_MEMBER_ATOL)
    assert not os.path.exists(model_path(str(tmp_path / "b"), 0))
    # Another seed gives another member 1.
    os.makedirs(tmp_path / "c")
    train_ensemble(store, px, make_settings(seed=1), str(tmp_path / "c"), [1], log=quiet, dtype=f64)
    assert not torch.allclose(load_sd(tmp_path / "c", 1)["module.layers.0.weight"],
                              load_sd(tmp_path / "b", 1)["module.layers.0.weight"], atol=1e-3)


class Interrupted(Exception):
    pass


def counting_pixels(store, monkeypatch, fail_at=None):
    """Count store.pixels calls (one per iteration with feature_matrix "lazy"); raise on call number
    ``fail_at``."""
    calls = [0]
    orig = store.pixels

    def pixels(*args):
        calls[0] += 1
        if fail_at is not None and calls[0] == fail_at:
            raise Interrupted
        return orig(*args)

    monkeypatch.setattr(store, "pixels", pixels)
    return calls


@pytest.mark.parametrize("boundary,variant", [
    (False, {}), (True, {}),
    # Dropout masks, the decoupled trunk and AdamW's state must all resume where they were.
    (False, {"dropout": 0.4, "regularizer": "etf_decoupled", "optimizer": "adamw", "weight_decay": 1e-2}),
    # Class-balanced batches are drawn afresh every iteration: their streams must resume mid-epoch.
    (False, {"class_weighting": "balanced_sampling", "regularizer": "etf"}),
    (True, {"class_weighting": "inverse_frequency"}),
])
def test_resume_after_interruption_equals_uninterrupted(tmp_path, monkeypatch, boundary, variant):
    """Snapshot mid-epoch (epoch 2) or exactly at an epoch boundary; kill; rerun; same members."""
    store, px = make_data()
    cfg = make_settings(early_stop_after_epoch=2, early_stop_patience=3, max_epochs=6, feature_matrix="lazy", **variant)
    n_batches = len(px.labels) // cfg.batch_size
    every = n_batches if boundary else 7
    snapshot = 2 * n_batches if boundary else (2 * n_batches + 5) // 7 * 7
    assert snapshot > n_batches and (boundary or snapshot % n_batches)
    monkeypatch.setattr(train_mod, "SAVE_EVERY", every)
    full, cut = tmp_path / "full", tmp_path / "cut"
    os.makedirs(full), os.makedirs(cut)
    ref = train_ensemble(store, px, cfg, str(full), [0, 1, 2], log=quiet)

    with monkeypatch.context() as mp:
        counting_pixels(store, mp, fail_at=snapshot + 4)
        with pytest.raises(Interrupted):
            train_ensemble(store, px, cfg, str(cut), [0, 1, 2], log=quiet)
    st = torch.load(cut / train_mod.STATE_FILE, weights_only=True)
    assert st["step"] == snapshot
    assert not any(os.path.exists(model_path(str(cut), m)) for m in range(3))

    lines = []
    calls = counting_pixels(store, monkeypatch)
    resumed = train_ensemble(store, px, cfg, str(cut), [0, 1, 2], log=lines.append)
    assert any(f"resumed training of members [0, 1, 2] at iteration {snapshot}" in s for s in lines)
    assert calls[0] == max(s["iterations"] for s in ref.values()) - snapshot  # continued, not restarted
    assert not (cut / train_mod.STATE_FILE).exists()
    for m in range(3):
        assert resumed[m]["iterations"] == ref[m]["iterations"]
        assert resumed[m]["stopped"] == ref[m]["stopped"]
        assert resumed[m]["best_batch_loss"] == ref[m]["best_batch_loss"]
        assert_same_weights(load_sd(cut, m), load_sd(full, m), atol=0)  # a replay: bit-identical


def test_stale_state_for_other_members_is_ignored(tmp_path, monkeypatch):
    store, px = make_data()
    cfg = make_settings(max_epochs=3, early_stop_patience=10_000, feature_matrix="lazy")
    monkeypatch.setattr(train_mod, "SAVE_EVERY", 5)
    with monkeypatch.context() as mp:
        counting_pixels(store, mp, fail_at=12)
        with pytest.raises(Interrupted):
            train_ensemble(store, px, cfg, str(tmp_path), [0, 1], log=quiet)
    assert (tmp_path / train_mod.STATE_FILE).exists()
    lines = []
    train_ensemble(store, px, cfg, str(tmp_path), [1], log=lines.append)
    assert any("ignoring" in s for s in lines)
    os.makedirs(tmp_path / "fresh")
    train_ensemble(store, px, cfg, str(tmp_path / "fresh"), [1], log=quiet)
    assert_same_weights(load_sd(tmp_path, 1), load_sd(tmp_path / "fresh", 1), atol=0)  # same computation


def test_fewer_pixels_than_one_batch_raises(data, tmp_path):
    store, px = data
    small = LabelledPixels(px.index[:31], px.labels[:31], px.hw)
    with pytest.raises(ValueError, match="31 labelled training pixels, fewer than one batch of 32"):
        train_ensemble(store, small, make_settings(), str(tmp_path), [0], log=quiet)


def test_load_ensemble_round_trip(data, tmp_path):
    store, px = data
    train_ensemble(store, px, make_settings(max_epochs=2), str(tmp_path), [0, 1, 2], log=quiet)
    ens = load_ensemble(str(tmp_path), 3, store.dim, K)
    assert not ens.training
    x = all_features(store, px)[:200].double()
    with torch.no_grad():
        for m in range(3):
            assert_same_weights({f"module.{k}": v for k, v in ens.member_state_dict(m).items()},
                                load_sd(tmp_path, m), atol=0)
        # The loaded members compute what the original module computes with those weights; in float64
        # (batched vs nn.Linear kernels round differently by CPU, by ~1e-16 here) so 1e-10 holds anywhere.
        logits = ens.double()(x)
        for m in range(3):
            ref = nn.DataParallel(OriginalClassifier(store.dim, K))
            ref.load_state_dict(load_sd(tmp_path, m), strict=True)
            assert torch.allclose(logits[m], ref.double().eval()(x), atol=1e-10)
    with pytest.raises(ValueError, match="dim 41"):
        load_ensemble(str(tmp_path), 3, store.dim + 1, K)


# --- method variants: each must change the trained members (or, where published, provably not) ---

def train_variant(data, tmp_path, name, members=(0, 1), dtype=torch.float32, **kw):
    """Members trained for a fixed 40 iterations (no early stopping), so variants compare step for step."""
    store, px = data
    os.makedirs(tmp_path / name)
    train_ensemble(store, px, make_settings(early_stop_patience=10_000, **kw), str(tmp_path / name), list(members),
                   log=quiet, max_steps=40, dtype=dtype)
    return {m: load_sd(tmp_path / name, m) for m in members}


def differs(sd_a, sd_b):
    return any(not torch.allclose(sd_a[k].float(), sd_b[k].float(), atol=1e-6) for k in sd_a)


def test_etf_regularizer_changes_the_classifier_and_beta_zero_does_not(data, tmp_path):
    plain = train_variant(data, tmp_path, "plain")
    etf = train_variant(data, tmp_path, "etf", regularizer="etf")
    zero = train_variant(data, tmp_path, "zero", regularizer="etf", etf_beta=0.0)
    for m in (0, 1):
        assert differs(etf[m], plain[m])
        assert_same_weights(zero[m], plain[m], atol=0)  # the ETF term is the only difference
    saved = torch.load(tmp_path / "etf" / "etf_matrix.pt", weights_only=True)
    assert saved.shape == (32, K)


@pytest.mark.parametrize("mode", ["inverse_frequency", "sqrt_inverse_frequency", "balanced_sampling"])
def test_class_weighting_changes_training_and_keeps_members_independent_with_etf(data, tmp_path, mode):
    """Each mode changes the members; with the ETF regularizer, a member trained in the batched step beside
    others is the member trained alone (float64: see SAME_MEMBER_ATOL)."""
    f64 = torch.float64
    plain = train_variant(data, tmp_path, "plain", regularizer="etf", dtype=f64)
    together = train_variant(data, tmp_path, "together", members=(0, 1, 2), regularizer="etf", class_weighting=mode,
                             dtype=f64)
    alone = train_variant(data, tmp_path, "alone", members=(1,), regularizer="etf", class_weighting=mode, dtype=f64)
    assert differs(together[1], plain[1])
    assert_same_weights(together[1], alone[1], atol=SAME_MEMBER_ATOL)


def test_etf_alpha_weights_the_classifier_loss(data, tmp_path):
    etf = train_variant(data, tmp_path, "etf", regularizer="etf")
    heavier = train_variant(data, tmp_path, "alpha", regularizer="etf", etf_alpha=3.0)
    assert differs(heavier[0], etf[0])


def test_decoupled_etf_cannot_change_the_classifier(data, tmp_path):
    """The published regularizer trains its own trunk: the saved classifier equals beta = 0's exactly."""
    plain = train_variant(data, tmp_path, "plain")
    decoupled = train_variant(data, tmp_path, "decoupled", regularizer="etf_decoupled", etf_beta=5.0)
    for m in (0, 1):
        assert_same_weights(decoupled[m], plain[m], atol=0)
    assert (tmp_path / "decoupled" / "etf_matrix.pt").exists()


def test_dropout_changes_training_reproducibly_and_per_member(data, tmp_path):
    f64 = torch.float64  # alone vs together: see SAME_MEMBER_ATOL
    plain = train_variant(data, tmp_path, "plain", dtype=f64)
    drop = train_variant(data, tmp_path, "drop", members=(0, 1, 2), dropout=0.4, dtype=f64)
    again = train_variant(data, tmp_path, "again", members=(0, 1, 2), dropout=0.4, dtype=f64)
    alone = train_variant(data, tmp_path, "alone", members=(1,), dropout=0.4, dtype=f64)
    assert differs(drop[0], plain[0])
    for m in (0, 1, 2):
        assert_same_weights(drop[m], again[m], atol=0)
    assert_same_weights(alone[1], drop[1], atol=SAME_MEMBER_ATOL)  # a member's masks are its own


def test_adamw_weight_decay_changes_the_weights(data, tmp_path):
    adam = train_variant(data, tmp_path, "adam")
    adamw = train_variant(data, tmp_path, "adamw", optimizer="adamw", weight_decay=0.5)
    assert differs(adamw[0], adam[0])
    # Decoupled decay shrinks the weights; Adam's normalised step alone would not.
    assert adamw[0]["module.layers.0.weight"].norm() < adam[0]["module.layers.0.weight"].norm()


def test_epoch_size_sets_the_batches_per_epoch(data, tmp_path):
    store, px = data
    n = len(px.labels)
    stats = train_ensemble(store, px, make_settings(max_epochs=2, early_stop_patience=10_000), str(tmp_path), [0],
                           log=quiet, epoch_size=n // 2)
    assert stats[0]["stopped"] == "max_epochs" and stats[0]["iterations"] == 2 * ((n // 2) // 32)


def test_dense_feature_matrix_gives_the_lazy_rows_and_members(data, tmp_path, monkeypatch):
    """feature_matrix only changes where a batch's features come from, never their values."""
    store, px = data
    idx = torch.randperm(len(px.labels), generator=torch.Generator().manual_seed(0))[:100]
    lazy = train_mod.training_features(store, px, "lazy", quiet)(idx)
    assert torch.equal(train_mod.training_features(store, px, "dense", quiet)(idx), lazy)
    for mode in ("lazy", "dense"):
        os.makedirs(tmp_path / mode)
        train_ensemble(store, px, make_settings(feature_matrix=mode), str(tmp_path / mode), [0, 1], log=quiet)
    for m in (0, 1):
        assert_same_weights(load_sd(tmp_path / "lazy", m), load_sd(tmp_path / "dense", m), atol=0)
    # "auto" chooses by size: celebamask64's training set is dense, a bedroom_28-shaped one lazy.
    assert train_mod.wants_dense(80_782, 1152, "auto") and not train_mod.wants_dense(80_782, 1152, "lazy")
    assert not train_mod.wants_dense(40 * 256 * 256, 8448, "auto") and train_mod.wants_dense(10**9, 8448, "dense")


def test_dense_matrix_is_announced_with_its_size(data):
    """The log line a run prints when it builds the dense matrix (and only then), with its true size."""
    store, px = data
    for mode, expected in (("dense", [f"feature matrix: {len(px.labels):,} training pixels x {store.dim} upsampled "
                                      f"once, {len(px.labels) * store.dim * 4 / 2**30:.2f} GiB float32"]),
                           ("lazy", [])):
        logs = []
        train_mod.training_features(store, px, mode, logs.append)
        assert logs == expected


def test_dense_budget_boundary():
    """"auto" builds the float32 matrix while it fits DENSE_BUDGET_BYTES, itself included."""
    dim = 256  # 1 KiB of float32 per pixel row
    fits = train_mod.DENSE_BUDGET_BYTES // (4 * dim)
    assert train_mod.wants_dense(fits, dim, "auto") and not train_mod.wants_dense(fits + 1, dim, "auto")


@pytest.mark.parametrize("optimizer,expected", [("adam", 0.9), ("adamw", 1.08)])
def test_make_optimizer_takes_the_settings_rule_rate_and_decay(optimizer, expected):
    """One step from p = 1 with gradient -0.1, lr 0.1, weight decay 0.2, in float64. Adam's first step
    moves by lr against the sign of its gradient: Adam adds the decay to the gradient (-0.1 + 0.2 * 1 > 0,
    so p = 1 - 0.1); AdamW decays p by lr * 0.2 first, then steps against -0.1 (p = 0.98 + 0.1)."""
    p = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = train_mod.make_optimizer([p], make_settings(optimizer=optimizer, learning_rate=0.1, weight_decay=0.2))
    p.grad = torch.full_like(p, -0.1)
    opt.step()
    assert p.item() == pytest.approx(expected, abs=1e-6)  # Adam's eps 1e-8 moves the step by ~1e-7


# --- the training loop's units ---

@pytest.mark.parametrize("n_batches", [6, 1])  # 2 pixels left over each epoch; one batch: every step reshuffles
def test_batch_source_deals_each_members_own_shuffles_with_drop_last(n_batches):
    N, B = 50, 8
    source = train_mod.BatchSource([train_mod.member_generator(0, m) for m in (0, 3)], N, B, n_batches)
    batches = torch.stack([source.indices(step) for step in range(3 * n_batches)], 1)  # [M, steps, B]
    for j, m in enumerate((0, 3)):
        g = train_mod.member_generator(0, m)
        expected = torch.cat([torch.randperm(N, generator=g)[:n_batches * B] for _ in range(3)])
        assert torch.equal(batches[j].reshape(-1), expected)  # the member's stream, a fresh order each epoch
    assert not torch.equal(batches[0], batches[1])


# In the first epoch, mid-epoch, at an epoch boundary, just after one.
@pytest.mark.parametrize("resume_at", [3, 9, 12, 13])
def test_batch_source_restored_from_epoch_states_continues_the_same_batches(resume_at):
    N, B, n_batches = 50, 8, 6

    def source():
        return train_mod.BatchSource([train_mod.member_generator(1, m) for m in range(2)], N, B, n_batches)

    ref, first = source(), source()
    expected = [ref.indices(step) for step in range(4 * n_batches)]
    for step in range(resume_at):
        first.indices(step)
    resumed = source()
    resumed.restore(first.epoch_states)
    for step in range(resume_at, 4 * n_batches):
        assert torch.equal(resumed.indices(step), expected[step]), step


def test_budget_caps():
    assert train_mod.budget_spent(29, 30, None) is None
    assert train_mod.budget_spent(30, 30, None) == "max_epochs"
    assert train_mod.budget_spent(31, 30, None) == "max_epochs"  # resumed with a smaller budget
    assert train_mod.budget_spent(13, 30, 13) == "max_steps"
    assert train_mod.budget_spent(30, 30, 30) == "max_epochs"  # both spent: the method's own cap is named


def assert_same_tree(a, b, path="snapshot"):
    """Nested dicts/lists of tensors and plain values, equal bit for bit."""
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_restore_puts_back_everything_a_snapshot_holds(tmp_path, monkeypatch):
    """A real mid-run snapshot (dropout, the decoupled trunk, AdamW: every key non-trivial), restored
    into a freshly built state, snapshots to the same values."""
    store, px = make_data()
    cfg = make_settings(feature_matrix="lazy", dropout=0.4, regularizer="etf_decoupled", optimizer="adamw",
                        weight_decay=1e-2, early_stop_after_epoch=0, early_stop_patience=5, max_epochs=8)
    monkeypatch.setattr(train_mod, "SAVE_EVERY", 7)
    with monkeypatch.context() as mp:
        counting_pixels(store, mp, fail_at=53)
        with pytest.raises(Interrupted):
            train_ensemble(store, px, cfg, str(tmp_path), [0, 2], log=quiet)
    saved = torch.load(tmp_path / train_mod.STATE_FILE, weights_only=True)
    assert saved["step"] == 49 and saved["active"] == [False, True]  # member 0 stopped at 35, member 2 at 53

    N, n_batches = len(px.labels), len(px.labels) // cfg.batch_size
    nets = train_mod.MemberNets.build(store.dim, cfg, [0, 2], str(tmp_path), "cpu", torch.float32)
    batches = train_mod.BatchSource(nets.generators, N, cfg.batch_size, n_batches)
    state = train_mod.TrainingState([0, 2], N, nets, batches,
                                    train_mod.EarlyStopping(2, cfg.early_stop_after_epoch, cfg.early_stop_patience))
    fresh = state.snapshot()
    assert set(fresh) == set(saved)
    state.restore(saved)
    assert_same_tree(state.snapshot(), saved)


def test_settings_come_from_a_validated_config():
    from ddpmseg.common.config import load_config
    cfg = load_config("experiments/celebamask64/ddpm.json", {"learning_rate": 2, "dropout": 0.1})
    s = EnsembleSettings.from_config(cfg)
    assert (s.seed, s.number_class, s.batch_size) == (cfg["seed"], cfg["number_class"], cfg["batch_size"])
    assert s.learning_rate == 2.0 and isinstance(s.learning_rate, float) and s.dropout == 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 1


def test_settings_name_what_is_missing_or_wrong():
    cfg = make_cfg()
    del cfg["early_stop_patience"], cfg["feature_matrix"]
    with pytest.raises(ConfigError, match="ensemble settings: the config has no 'feature_matrix', "
                                          "'early_stop_patience'; build it with ddpmseg.common.config.load_config"):
        EnsembleSettings.from_config(cfg)
    with pytest.raises(ConfigError, match="ensemble settings: 'batch_size' must be int, got str '64'"):
        EnsembleSettings.from_config(make_cfg(batch_size="64"))
    with pytest.raises(ConfigError, match=r"ensemble settings: 'regularizer' must be one of \['none', 'etf', "):
        EnsembleSettings.from_config(make_cfg(regularizer="ETF"))


# --- the two steps (ddpmseg.classifier.ensemble_step): all members batched, or one at a time ---

def member_file(exp_dir, m):
    return torch.load(model_path(str(exp_dir), m), weights_only=True)


@pytest.mark.parametrize("variant", [
    {}, {"regularizer": "etf", "etf_beta": 0.5},
    {"dropout": 0.4, "dropout_position": "after_bn", "regularizer": "etf_decoupled", "optimizer": "adamw",
     "weight_decay": 1e-2}])
def test_one_member_at_a_time_trains_the_batched_members(data, tmp_path, variant):
    """Same seeds, same batches -> the same members either way, to SAME_MEMBER_ATOL (float64: the two
    steps run other kernels, whose rounding differs by ~1e-15 a step): weights, BN running statistics,
    where and why each member stopped, its best batch loss and its training curve."""
    store, px = data
    f64 = torch.float64
    stats, curves = {}, {}
    for step in ("batched", "per_member"):
        os.makedirs(tmp_path / step)
        stats[step] = train_ensemble(store, px, make_settings(ensemble_step=step, **variant), str(tmp_path / step),
                                     [0, 1, 2], log=quiet, dtype=f64)
        curves[step] = [member_file(tmp_path / step, m)["curve"] for m in range(3)]
    assert len({s["iterations"] for s in stats["batched"].values()}) > 1  # early stopping ended them apart
    for m in range(3):
        a, b = stats["batched"][m], stats["per_member"][m]
        assert (a["iterations"], a["stopped"]) == (b["iterations"], b["stopped"])
        assert a["best_batch_loss"] == pytest.approx(b["best_batch_loss"], rel=1e-12)  # float64 rounding
        assert a["ensemble_step"] == {"setting": "batched", "chosen": "batched", "reason": "set in the config"}
        assert b["ensemble_step"]["chosen"] == "per_member"
        assert member_file(tmp_path / "per_member", m)["stats"] == b  # the member's file records it too
        assert curves["batched"][m]["batch"] == curves["per_member"][m]["batch"]
        assert curves["batched"][m]["loss"] == pytest.approx(curves["per_member"][m]["loss"], rel=1e-12)
        assert_same_weights(load_sd(tmp_path / "batched", m), load_sd(tmp_path / "per_member", m),
                            atol=SAME_MEMBER_ATOL)


def test_auto_probes_then_trains_what_the_chosen_step_trains(data, tmp_path, monkeypatch):
    """With a probe (forced here: PROBE_SHARE 1 probes a run of any length), auto logs and records its
    choice and both rates, and its members are bit-identical to a run told that step: the probe trains
    throwaway copies in a folder of its own and leaves the real members' streams untouched. SAVE_EVERY 1: a
    probe that trained in the run's folder would leave snapshots there, which the real training would find."""
    from ddpmseg.classifier import ensemble_step
    monkeypatch.setattr(ensemble_step, "PROBE_SHARE", 1.0)
    monkeypatch.setattr(train_mod, "SAVE_EVERY", 1)
    store, px = data
    lines = []
    os.makedirs(tmp_path / "auto")
    stats = train_ensemble(store, px, make_settings(), str(tmp_path / "auto"), [0, 1], log=lines.append)
    record = stats[0]["ensemble_step"]
    assert record == stats[1]["ensemble_step"] and record["setting"] == "auto"
    assert set(record["probe_pixels_per_s"]) == {"batched", "per_member"} and record["probe_s"] > 0
    assert any(line.startswith(f"ensemble step: {record['chosen']} (ensemble_step auto: probe of 5 rounds")
               for line in lines)
    assert sorted(os.listdir(tmp_path / "auto")) == ["model_0.pth", "model_1.pth"]
    assert not any(train_mod.STATE_FILE in line for line in lines)  # no snapshot but the run's own
    os.makedirs(tmp_path / "told")
    train_ensemble(store, px, make_settings(ensemble_step=record["chosen"]), str(tmp_path / "told"), [0, 1], log=quiet)
    for m in (0, 1):
        assert_same_weights(load_sd(tmp_path / "auto", m), load_sd(tmp_path / "told", m), atol=0)


def test_auto_does_not_probe_a_short_training(data, tmp_path):
    """This tiny run (2 members, at least 2 epochs of 20 batches and 2 more each) is shorter than ten
    probes, so auto takes the batched step unmeasured, and says why."""
    store, px = data
    lines = []
    stats = train_ensemble(store, px, make_settings(), str(tmp_path), [0, 1], log=lines.append)
    n_batches = len(px.labels) // 32
    assert n_batches == 20
    least = 2 * ((1 + 1) * n_batches + 2)
    assert stats[0]["ensemble_step"] == {
        "setting": "auto", "chosen": "batched",
        "reason": f"no probe: its 66 member-batches would be over 10% of the at least {least} this training takes"}
    assert any(line.startswith("ensemble step: batched (ensemble_step auto: no probe") for line in lines)


def test_an_interrupted_one_member_at_a_time_run_resumes_that_way(tmp_path, monkeypatch):
    """Killed while member 1 trains alone, rerun (as ddpmseg train does) on the members without a file:
    auto follows the snapshot of member 1, continues it, and the members equal the uninterrupted run's
    bit for bit."""
    store, px = make_data()
    cfg = make_settings(ensemble_step="per_member", feature_matrix="lazy")
    monkeypatch.setattr(train_mod, "SAVE_EVERY", 7)
    full, cut = tmp_path / "full", tmp_path / "cut"
    os.makedirs(full), os.makedirs(cut)
    ref = train_ensemble(store, px, cfg, str(full), [0, 1, 2], log=quiet)
    with monkeypatch.context() as mp:
        counting_pixels(store, mp, fail_at=ref[0]["iterations"] + 30)  # one store.pixels call per iteration
        with pytest.raises(Interrupted):
            train_ensemble(store, px, cfg, str(cut), [0, 1, 2], log=quiet)
    assert torch.load(cut / train_mod.STATE_FILE, weights_only=True)["members"] == [1]
    lines = []
    resumed = train_ensemble(store, px, make_settings(feature_matrix="lazy"), str(cut), [1, 2], log=lines.append)
    assert "ensemble step: per_member (ensemble_step auto: continues the interrupted run's snapshot of member 1)" in lines
    assert any("resumed training of members [1] at iteration 28" in line for line in lines)
    for m in (1, 2):
        assert resumed[m]["iterations"] == ref[m]["iterations"]
    for m in range(3):
        assert_same_weights(load_sd(cut, m), load_sd(full, m), atol=0)  # a replay: bit-identical


# --- the glue between the loop's units, by value (each pins what a mutation run found unchecked) ---

def test_each_part_of_a_member_has_its_own_stream():
    """member_generator(seed, m, part) is the seeding table's stream of that part: the trunk's init and the
    dropout masks never replay the member's init stream."""
    from ddpmseg.common.seeding import member_seed
    draws = {part: torch.rand(4, generator=train_mod.member_generator(3, 1, part))
             for part in ("member", "trunk", "member_dropout")}
    for part, got in draws.items():
        assert torch.equal(got, torch.rand(4, generator=torch.Generator().manual_seed(member_seed(3, 1, part))))
    assert not torch.equal(draws["member"], draws["trunk"]) and not torch.equal(draws["member"], draws["member_dropout"])
    assert torch.equal(torch.rand(4, generator=train_mod.member_generator(3, 1)), draws["member"])


def test_member_losses_weigh_both_cross_entropies_by_class():
    """alpha * CE_w(logits) + beta * CE_w(features @ etf), each the batch mean of the pixels' cross-entropy
    times their class's weight, against a per-pixel sum written out in float64 (same sums: rel 1e-12)."""
    g = torch.Generator().manual_seed(5)
    M, B, D = 2, 6, 3
    logits, features = torch.randn(M, B, K, generator=g, dtype=torch.float64), torch.randn(M, B, D, generator=g,
                                                                                           dtype=torch.float64)
    etf, y = torch.randn(D, K, generator=g, dtype=torch.float64), torch.randint(0, K, (M, B), generator=g)
    weights = torch.tensor([0.5, 2.0, 1.0, 4.0], dtype=torch.float64)

    def ce_w(z):
        return torch.stack([sum(-torch.log_softmax(z[m, b], 0)[y[m, b]] * weights[y[m, b]] for b in range(B)) / B
                            for m in range(M)])

    ce, total = train_mod.member_losses(logits, features, y, etf, 0.7, 0.3, weights)
    assert torch.allclose(ce, ce_w(logits), rtol=1e-12, atol=0)
    assert torch.allclose(total, 0.7 * ce_w(logits) + 0.3 * ce_w(features @ etf), rtol=1e-12, atol=0)
    ce, total = train_mod.member_losses(logits, features, y, None, 0.7, 0.3, weights)
    assert torch.equal(ce, total)  # without a frame the loss minimised is the classifier's own


@pytest.mark.parametrize("max_steps,expected", [(None, 42), (10, 10), (1000, 42), (42, 42)])
def test_min_iterations_is_the_budget_or_the_earliest_early_stop(max_steps, expected):
    """The earliest stop: epoch early_stop_after_epoch + 1 (2 epochs of 20 batches here) plus patience 2
    batches = 42; max_steps only lowers it, max_epochs caps it."""
    s = make_settings(early_stop_after_epoch=1, early_stop_patience=2, max_epochs=6)
    assert train_mod.min_iterations(s, 20, max_steps) == expected
    assert train_mod.min_iterations(make_settings(max_epochs=1), 20, max_steps) == min(20, expected)


def test_auto_weighs_its_probe_against_the_max_steps_budget(data, tmp_path):
    """With max_steps 10 each member trains 10 iterations, so the training auto weighs its probe against
    is 2 x 10 member-batches, not the 2 x 42 of an unbudgeted run."""
    store, px = data
    stats = train_ensemble(store, px, make_settings(), str(tmp_path), [0, 1], log=quiet, max_steps=10)
    assert stats[0]["ensemble_step"]["reason"] == ("no probe: its 66 member-batches would be over 10% of the at "
                                                   "least 20 this training takes")


def test_a_curve_point_is_the_mean_of_its_window():
    curves = train_mod.TrainingCurves(2)
    curves.add([1.0, 2.0], [0.25, 0.5], [True, True])
    curves.add([3.0, 9.0], [0.75, 1.0], [True, False])  # member 1 stopped: its batch is not counted
    curves.close_point(0, 2)
    curves.close_point(1, 2)
    curves.close_point(1, 3)  # an empty window adds no point
    assert curves.points[0] == {"every": train_mod.CURVE_EVERY, "batch": [2], "loss": [2.0], "accuracy": [0.5]}
    assert curves.points[1] == {"every": train_mod.CURVE_EVERY, "batch": [2], "loss": [2.0], "accuracy": [0.5]}
    assert curves.window == [[0.0, 0.0, 0], [0.0, 0.0, 0]]


def test_a_nonfinite_loss_names_the_member_iteration_epoch_and_rate():
    from types import SimpleNamespace
    from ddpmseg.common.numerics import NumericalError
    state = SimpleNamespace(active=[True, True, False], members=[3, 7, 9], step=4)
    with pytest.raises(NumericalError) as err:
        train_mod.refuse_nonfinite([0.5, float("nan"), float("inf")], state, 1, 0.001)
    assert str(err.value) == ("ensemble training: the loss of member(s) [7] is nan at iteration 5 (epoch 1); members "
                              "finished before are kept. Lower learning_rate (now 0.001) or check the training features")
    train_mod.refuse_nonfinite([0.5, 1.0, float("nan")], state, 1, 0.001)  # a stopped member's loss is not watched


def test_training_on_a_nan_feature_stops_at_its_first_iteration(tmp_path):
    """The loop passes its own epoch and learning rate to the check, before any weight or file is written."""
    from ddpmseg.common.numerics import NumericalError
    store, px = make_data()
    store.put(0, [torch.full((c, h, w), float("nan")) for c, h, w in SHAPES])  # a third of every batch
    with pytest.raises(NumericalError, match=r"at iteration 1 \(epoch 0\).*learning_rate \(now 0.0005\)"):
        train_ensemble(store, px, make_settings(learning_rate=0.0005), str(tmp_path), [0, 1], log=quiet)
    assert os.listdir(tmp_path) == []


def test_inputs_carry_the_settings_matrix_and_weights_and_log_them(data):
    """TrainingInputs.build: the feature_matrix asked for, the class weights of the training labels in the
    members' dtype, both announced through the run's log."""
    from ddpmseg.classifier.class_balance import class_weights
    store, px = data
    lines = []
    inputs = train_mod.TrainingInputs.build(store, px, make_settings(feature_matrix="dense",
                                                                     class_weighting="inverse_frequency"),
                                            "cpu", torch.float32, None, lines.append)
    expected = class_weights(px.labels, K, "inverse_frequency")
    assert inputs.class_weights.dtype == torch.float32
    assert torch.equal(inputs.class_weights, expected.float())
    assert lines == [f"feature matrix: {len(px.labels):,} training pixels x {store.dim} upsampled once, 0.00 GiB "
                     "float32",
                     "class weights (inverse_frequency, pixel-weighted mean 1): "
                     + ", ".join(f"{w:.3g}" for w in expected.tolist())]
    lines.clear()
    train_mod.TrainingInputs.build(store, px, make_settings(feature_matrix="lazy"), "cpu", torch.float32, None,
                                   lines.append)
    assert lines == []


def test_the_dense_matrix_announces_its_size_in_gib():
    """131 072 pixels x 40 features x 4 bytes = 0.0195 GiB: the first size the line shows as other than 0.00."""
    store = FeatureStore(512, SHAPES, (H, W))  # zero activations: only the size is read
    px = LabelledPixels(torch.arange(512 * H * W), torch.zeros(512 * H * W, dtype=torch.long), (H, W))
    logs = []
    train_mod.training_features(store, px, "dense", logs.append)
    assert logs == ["feature matrix: 131,072 training pixels x 40 upsampled once, 0.02 GiB float32"]


def test_the_dense_matrix_is_built_in_chunks_of_the_lazy_rows(data, monkeypatch):
    """Every pixel's row once, DENSE_CHUNK pixels per store.pixels call (7 here, so the last chunk is short)."""
    store, px = data
    N = len(px.labels)
    lazy = train_mod.training_features(store, px, "lazy", quiet)(torch.arange(N))
    monkeypatch.setattr(train_mod, "DENSE_CHUNK", 7)
    assert N % 7
    calls = counting_pixels(store, monkeypatch)
    rows = train_mod.training_features(store, px, "dense", quiet)
    assert calls[0] == -(-N // 7)
    assert torch.equal(rows(torch.arange(N)), lazy)


def test_a_step_returns_its_epoch_and_the_members_mean_batch_loss(data, tmp_path):
    """The loss the progress bar shows: the mean of the members' batch cross-entropies of that iteration."""
    store, px = data
    s = make_settings()
    inputs = train_mod.TrainingInputs.build(store, px, s, "cpu", torch.float64, None, quiet)
    group = train_mod.GroupTraining(inputs, str(tmp_path), [0, 1, 2], None)
    idx = group.state.batches.indices(0)
    x = inputs.rows(idx.reshape(-1)).reshape(3, s.batch_size, store.dim).double()
    with torch.no_grad():
        ce = group.nets.losses(x, px.labels[idx], s)[0]
    epoch, loss = group.step()
    assert epoch == 0 and loss == pytest.approx(ce.mean().item(), rel=1e-12)  # the same forward, float64


def test_a_member_stopped_before_early_stopping_watched_has_no_best_loss(data, tmp_path):
    """max_steps 3 ends training inside epoch 0, before early stopping looks at a batch: best_batch_loss is
    None (strict JSON has no inf), and a training given no step record keeps none."""
    store, px = data
    inputs = train_mod.TrainingInputs.build(store, px, make_settings(), log=quiet)  # the defaults, as the benches
    assert (inputs.device, inputs.dtype) == ("cpu", torch.float32)
    stats = train_mod.GroupTraining(inputs, str(tmp_path), [0], 3).run(quiet, False)
    assert stats == {0: {"epochs": 1, "iterations": 3, "stopped": "max_steps", "best_batch_loss": None}}
    ckpt = member_file(tmp_path, 0)
    assert ckpt["stats"] == stats[0] and (ckpt["dim"], ckpt["number_class"]) == (store.dim, K)


def test_train_ensemble_takes_the_step_and_log_it_is_given(data, tmp_path):
    from ddpmseg.classifier.ensemble_step import StepChoice
    store, px = data
    lines = []
    told = StepChoice("batched", "per_member", "told by the caller")
    stats = train_ensemble(store, px, make_settings(ensemble_step="batched", class_weighting="inverse_frequency"),
                           str(tmp_path), [0, 1], log=lines.append, max_steps=5, step=told)
    assert stats[0]["ensemble_step"] == stats[1]["ensemble_step"] == told.record()
    assert sum(line.startswith("class weights (inverse_frequency") for line in lines) == 1
    assert "ensemble step: per_member (ensemble_step batched: told by the caller)" in lines


def test_member_nets_are_built_from_the_settings(data, tmp_path):
    """The ensemble and the decoupled trunk take the dropout and its position; the trunk is initialised
    from its own streams; the optimizer holds the ensemble and the trunk minus its last Linear (whose
    output the ETF term never reads)."""
    from ddpmseg.classifier.ensemble import PixelEnsemble
    store, _ = data
    s = make_settings(regularizer="etf_decoupled", dropout=0.3, dropout_position="after_bn")
    nets = train_mod.MemberNets.build(store.dim, s, [0, 2], str(tmp_path), "cpu", torch.float32)
    for net in (nets.ensemble, nets.trunk):
        assert net.dropout == 0.3 and net.dropout_after_bn
        assert len(net.dropout_generators) == 2
    ref = PixelEnsemble(2, store.dim, K, generators=[train_mod.member_generator(0, m, "trunk") for m in (0, 2)])
    for a, b in zip(nets.trunk.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    trained = {id(p) for group in nets.optimizer.param_groups for p in group["params"]}
    expected = {id(p) for p in nets.ensemble.parameters()} | {
        id(p) for n, p in nets.trunk.named_parameters() if not n.endswith(".2")}
    assert trained == expected and len(expected) > len(list(nets.ensemble.parameters()))
