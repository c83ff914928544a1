"""PixelEnsemble: each member is exactly the original pixel_classifier MLP, forward and training.

Equivalence claims ("the batched member computes what nn.Sequential computes") are checked in
float64: the two paths use different kernels (baddbmm vs addmm) whose rounding differs by CPU,
but in float64 that rounding is ~1e-16 relative, so the tolerances below hold on any machine.
"""
import pytest
import torch
import torch.nn as nn

from ddpmseg.classifier.ensemble import PixelEnsemble, hidden_sizes
from ddpmseg.classifier.train import member_generator


class OriginalClassifier(nn.Module):
    """The original src/pixel_classifier.py architecture (ReLU before BatchNorm1d)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        h1, h2 = (128, 32) if num_classes < 30 else (256, 128)
        self.layers = nn.Sequential(
            nn.Linear(dim, h1), nn.ReLU(), nn.BatchNorm1d(h1),
            nn.Linear(h1, h2), nn.ReLU(), nn.BatchNorm1d(h2),
            nn.Linear(h2, num_classes))

    def forward(self, x):
        return self.layers(x)


# Float64 forward of these tiny MLPs: each output sums <= 256 products of O(1) terms, so the two
# paths' rounding differs by well under 1e-12; 1e-10 leaves a margin and still catches any real
# difference (a wrong BN statistic or a transposed weight moves outputs by >= 1e-3).
FORWARD_ATOL = 1e-10


def make_ensemble(M, C, K, seed=0, dtype=torch.float64):
    return PixelEnsemble(M, C, K, generators=[member_generator(seed, m) for m in range(M)]).to(dtype)


@torch.no_grad()
def perturb_bn(ens, seed=1):
    """Non-default BN affine params and running stats, so eval mode is a real test."""
    g = torch.Generator().manual_seed(seed)
    for j in range(2):
        ens.bn_weight[j].copy_(1 + 0.3 * torch.randn(ens.bn_weight[j].shape, generator=g))
        ens.bn_bias[j].copy_(0.3 * torch.randn(ens.bn_bias[j].shape, generator=g))
        rm, rv = getattr(ens, f"running_mean{j}"), getattr(ens, f"running_var{j}")
        rm.copy_(0.05 * torch.randn(rm.shape, generator=g))
        rv.copy_(0.01 + 0.02 * torch.rand(rv.shape, generator=g))
    for b in ens.biases:
        b.copy_(0.01 * torch.randn(b.shape, generator=g))


def reference_members(ens):
    refs = []
    for m in range(ens.num_members):
        ref = OriginalClassifier(ens.dim, ens.num_classes).to(ens.weights[0].dtype)
        ref.load_state_dict(ens.member_state_dict(m), strict=True)
        refs.append(ref)
    return refs


def assert_member_equals_reference(ens, m, ref, atol=FORWARD_ATOL):
    sd = ens.member_state_dict(m)
    ref_sd = ref.state_dict()
    assert sd.keys() == ref_sd.keys()
    for k, v in ref_sd.items():
        if k.endswith("num_batches_tracked"):
            assert int(sd[k]) == int(v), k
        else:
            assert torch.allclose(sd[k], v, atol=atol), (k, (sd[k] - v).abs().max())


def test_hidden_sizes():
    assert hidden_sizes(15) == hidden_sizes(29) == (128, 32)
    assert hidden_sizes(30) == hidden_sizes(34) == (256, 128)


@pytest.mark.parametrize("K", [5, 30])
def test_member_forward_equals_original_module(K):
    M, C, B = 3, 24, 40
    ens = make_ensemble(M, C, K)
    perturb_bn(ens)
    refs = reference_members(ens)
    x = torch.randn(M, B, C, dtype=torch.float64) * 2
    # Train mode: batch statistics, and the running stats move identically.
    ens.train()
    out = ens(x)
    assert out.shape == (M, B, K)
    for m, ref in enumerate(refs):
        ref.train()
        assert torch.allclose(ref(x[m]), out[m], atol=FORWARD_ATOL)
        assert_member_equals_reference(ens, m, ref)
    # Eval mode: running statistics.
    ens.eval()
    out = ens(x)
    for m, ref in enumerate(refs):
        ref.eval()
        assert torch.allclose(ref(x[m]), out[m], atol=FORWARD_ATOL)
    assert int(ens.num_batches_tracked[0]) == 1  # eval forward does not count


@pytest.mark.parametrize("K", [6, 30])
def test_adam_training_equals_original_per_member(K):
    """One Adam over the stacked params, loss = sum of per-member mean CE == M separate trainings.

    Why the tolerance holds on any CPU: the paths' gradients differ only by float64 rounding,
    |dg| <~ 1e-15. Adam's step lr * m/(sqrt(v) + eps) changes by at most lr/eps per unit of
    gradient (its steepest point, g ~ 0), so after S steps the weights differ by at most
    S * lr * 1e-15 / eps = 6 * 1e-3 * 1e-15 / 1e-8 = 6e-10. (In float32 the same bound is
    ~1e-4, which is what broke this test on AVX512 kernels.)"""
    M, C, B, steps = 3, 20, 32, 6
    torch.manual_seed(0)
    ens = make_ensemble(M, C, K, seed=3)
    refs = reference_members(ens)
    ref_opts = [torch.optim.Adam(r.parameters(), lr=1e-3) for r in refs]
    opt = torch.optim.Adam(ens.parameters(), lr=1e-3)
    ce = nn.CrossEntropyLoss()
    ens.train()
    for r in refs:
        r.train()
    for _ in range(steps):
        x = torch.randn(M, B, C, dtype=torch.float64)
        y = torch.randint(0, K, (M, B))
        for m, (r, o) in enumerate(zip(refs, ref_opts)):
            o.zero_grad()
            ce(r(x[m]), y[m]).backward()
            o.step()
        logits = ens(x)
        loss = sum(ce(logits[m], y[m]) for m in range(M))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m, r in enumerate(refs):
        assert_member_equals_reference(ens, m, r, atol=1e-8)  # the 6e-10 bound above, with margin
        assert int(ens.num_batches_tracked[m]) == steps
    # And the members really moved away from their initialisation.
    assert not torch.allclose(ens.member_state_dict(0)["layers.6.weight"],
                              make_ensemble(M, C, K, seed=3).member_state_dict(0)["layers.6.weight"], atol=1e-4)


def test_init_statistics():
    ens = PixelEnsemble(2, 512, 5, generators=[member_generator(0, m) for m in range(2)])
    w = ens.weights[0].detach()  # 2 x 512 x 128 = 131k draws
    assert abs(w.std().item() - 0.02) < 0.0003
    assert abs(w.mean().item()) < 0.0003
    for w in ens.weights:
        assert abs(w.std().item() - 0.02) < 0.004
    assert all(torch.count_nonzero(b) == 0 for b in ens.biases)
    assert all(torch.equal(w, torch.ones_like(w)) for w in ens.bn_weight)
    assert all(torch.count_nonzero(b) == 0 for b in ens.bn_bias)
    for j in range(2):
        assert torch.count_nonzero(getattr(ens, f"running_mean{j}")) == 0
        assert torch.equal(getattr(ens, f"running_var{j}"), torch.ones_like(getattr(ens, f"running_var{j}")))


def test_member_generators_make_members_distinct_and_reproducible():
    a, b = make_ensemble(3, 16, 4, seed=7), make_ensemble(3, 16, 4, seed=7)
    for wa, wb in zip(a.weights, b.weights):
        assert torch.equal(wa, wb)
        assert not torch.equal(wa[0], wa[1]) and not torch.equal(wa[1], wa[2])
    # A member's init depends only on its own generator, not on how many members are built.
    single = PixelEnsemble(1, 16, 4, generators=[member_generator(7, 2)])
    for ws, wa in zip(single.weights, a.weights):
        assert torch.equal(ws[0], wa[2])
    other = make_ensemble(3, 16, 4, seed=8)
    assert not torch.equal(other.weights[0], a.weights[0])


def test_load_member_accepts_dataparallel_prefix():
    src = make_ensemble(2, 12, 5, seed=1)
    perturb_bn(src)
    src.num_batches_tracked.fill_(17)
    dst = make_ensemble(3, 12, 5, seed=2)
    sd = {f"module.{k}": v for k, v in src.member_state_dict(1).items()}
    dst.load_member(2, sd)
    got, want = dst.member_state_dict(2), src.member_state_dict(1)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # Untouched members stay as they were.
    fresh = make_ensemble(3, 12, 5, seed=2)
    assert torch.equal(dst.member_state_dict(0)["layers.0.weight"], fresh.member_state_dict(0)["layers.0.weight"])
    x = torch.randn(9, 12, dtype=torch.float64)
    src.eval(), dst.eval()
    assert torch.allclose(dst(x)[2], src(x)[1], atol=FORWARD_ATOL)
    # Also loads a real nn.Sequential's state (no prefix).
    ref = OriginalClassifier(12, 5).double().eval()
    dst.load_member(0, ref.state_dict())
    assert torch.allclose(dst(x)[0], ref(x), atol=FORWARD_ATOL)


def test_load_member_rejects_wrong_shapes_and_missing_keys():
    ens = make_ensemble(2, 24, 5)
    with pytest.raises(ValueError, match="dim 24 and 5 classes"):
        ens.load_member(0, OriginalClassifier(20, 5).state_dict())
    with pytest.raises(ValueError, match="dim 24 and 5 classes"):
        ens.load_member(0, OriginalClassifier(24, 7).state_dict())
    with pytest.raises(ValueError, match="dim 24 and 5 classes"):
        ens.load_member(0, OriginalClassifier(24, 30).state_dict())  # the wide MLP
    sd = OriginalClassifier(24, 5).state_dict()
    del sd["layers.5.running_var"]
    with pytest.raises(ValueError, match="layers.5.running_var"):
        ens.load_member(0, sd)


@pytest.mark.parametrize("train", [True, False])
def test_shared_input_equals_repeated_input(train):
    M, B, C = 4, 10, 14
    a, b = make_ensemble(M, C, 5), make_ensemble(M, C, 5)
    perturb_bn(a), perturb_bn(b)
    a.train(train), b.train(train)
    x = torch.randn(B, C, dtype=torch.float64)
    out_shared = a(x)
    out_rep = b(x.expand(M, B, C).contiguous())
    assert out_shared.shape == (M, B, 5)
    assert torch.allclose(out_shared, out_rep, atol=FORWARD_ATOL)  # matmul vs baddbmm, float64
    for j in range(2):
        assert torch.allclose(getattr(a, f"running_mean{j}"), getattr(b, f"running_mean{j}"), atol=FORWARD_ATOL)


def test_dropout_is_inverted_dropout_in_training_and_off_in_eval():
    """The regularised fork's Dropout(p) after each hidden ReLU: zeros with probability p, survivors
    scaled by 1/(1-p) so the expectation is unchanged; eval mode is the plain MLP."""
    M, B, C, p = 3, 4000, 8, 0.4
    ens = PixelEnsemble(M, C, 5, dropout=p)
    ens.dropout_generators = [torch.Generator().manual_seed(m) for m in range(M)]
    h = torch.rand(M, B, 16) + 0.5
    ens.train()
    out = ens._drop(h)
    zero = out == 0
    assert abs(zero.float().mean().item() - p) < 0.02
    assert torch.allclose(out[~zero], (h / (1 - p))[~zero])
    assert not torch.equal(zero[0], zero[1])  # each member draws its own mask
    ens.eval()
    assert torch.equal(ens._drop(h), h)
    plain = PixelEnsemble(M, C, 5)
    plain.load_state_dict(ens.state_dict())
    x = torch.randn(M, 10, C)
    assert torch.equal(ens(x), plain.eval()(x))


class GivenMaskDropout(nn.Module):
    """nn.Dropout(p) in training mode with the keep-mask given: nn.Dropout draws its masks from
    the global stream with bernoulli_, so the ensemble's seeded masks are handed over explicitly."""

    def __init__(self, p: float, mask: torch.Tensor):
        super().__init__()
        self.p, self.mask = p, mask

    def forward(self, x):
        return x * self.mask / (1 - self.p)


def sequential_with_dropout(ens, m, masks, p, after_bn):
    """Member m as nn.Sequential with dropout after each hidden ReLU, before or after its BatchNorm."""
    ref = OriginalClassifier(ens.dim, ens.num_classes).to(torch.float64)
    ref.load_state_dict(ens.member_state_dict(m), strict=True)
    lin0, relu0, bn0, lin1, relu1, bn1, lin2 = ref.layers
    d0, d1 = GivenMaskDropout(p, masks[0]), GivenMaskDropout(p, masks[1])
    order = ([lin0, relu0, bn0, d0, lin1, relu1, bn1, d1, lin2] if after_bn
             else [lin0, relu0, d0, bn0, lin1, relu1, d1, bn1, lin2])
    return nn.Sequential(*order).train()


@pytest.mark.parametrize("position", ["before_bn", "after_bn"])
def test_dropout_position_computes_what_the_sequential_module_computes(position):
    """after_bn == nn.Sequential(Linear, ReLU, BN, Dropout, Linear, ReLU, BN, Dropout, Linear), and
    before_bn (the default) is still Linear, ReLU, Dropout, BN, ...: logits, the BN running statistics
    (which is where the two placements differ most) and the gradients. Float64 with FORWARD_ATOL, as
    above: both paths compute the same sums in another kernel order, ~1e-16 relative apart."""
    M, B, C, K, p = 3, 50, 12, 5, 0.4
    ens = make_ensemble(M, C, K, seed=4)
    if position == "before_bn":
        assert PixelEnsemble(1, C, K, dropout=p).dropout_after_bn is False  # the published default
    ens.dropout, ens.dropout_after_bn = p, position == "after_bn"
    fresh = PixelEnsemble(M, C, K, dropout=p, dropout_position=position)
    assert fresh.dropout_after_bn == ens.dropout_after_bn
    ens.dropout_generators = [torch.Generator().manual_seed(10 + m) for m in range(M)]
    # The masks the ensemble will draw: member m's stream gives layer 0's [B, 128] then layer 1's [B, 32].
    replay = [torch.Generator().manual_seed(10 + m) for m in range(M)]
    masks = [[(torch.rand(B, h, generator=g) >= p).double() for h in hidden_sizes(K)] for g in replay]
    refs = [sequential_with_dropout(ens, m, masks[m], p, position == "after_bn") for m in range(M)]
    x = torch.randn(M, B, C, dtype=torch.float64)
    ens.train()
    out = ens(x)
    out.square().sum().backward()
    for m, ref in enumerate(refs):
        want = ref(x[m])
        assert torch.allclose(out[m], want, atol=FORWARD_ATOL)
        want.square().sum().backward()
        bns = [layer for layer in ref if isinstance(layer, nn.BatchNorm1d)]
        for j, bn in enumerate(bns):
            assert torch.allclose(getattr(ens, f"running_mean{j}")[m], bn.running_mean, atol=FORWARD_ATOL)
            assert torch.allclose(getattr(ens, f"running_var{j}")[m], bn.running_var, atol=FORWARD_ATOL)
        linears = [layer for layer in ref if isinstance(layer, nn.Linear)]
        for j, lin in enumerate(linears):
            assert torch.allclose(ens.weights[j].grad[m], lin.weight.grad.T, atol=FORWARD_ATOL)
    # The two placements really differ (else this test could not tell them apart).
    other = sequential_with_dropout(ens, 0, masks[0], p, position != "after_bn")
    assert not torch.allclose(other(x[0]), out[0].detach(), atol=1e-3)


def test_unknown_dropout_position_is_refused():
    with pytest.raises(ValueError, match="dropout_position"):
        PixelEnsemble(1, 4, 3, dropout_position="middle")


def one_member_of(ens, m):
    """Member m of ``ens`` as an ensemble of one (its 2-D path), with the same weights and dropout."""
    one = PixelEnsemble(1, ens.dim, ens.num_classes, dropout=ens.dropout,
                        dropout_position="after_bn" if ens.dropout_after_bn else "before_bn").to(torch.float64)
    one.load_member(0, ens.member_state_dict(m))
    return one


@pytest.mark.parametrize("K,p,position", [(5, 0.0, "before_bn"), (30, 0.0, "before_bn"), (5, 0.4, "before_bn"),
                                          (5, 0.4, "after_bn")])
def test_an_ensemble_of_one_computes_what_its_member_computes_beside_others(K, p, position):
    """The one-member path (addmm and the native batch_norm) against the batched path (baddbmm and the
    ensemble's own BN): logits, penultimate features, every gradient, the BN running statistics, in train
    and eval mode, with dropout masks drawn from the member's own stream. Float64 with FORWARD_ATOL: the
    same sums in another kernel order, ~1e-16 relative apart."""
    M, B, C, m = 3, 50, 12, 1
    ens = PixelEnsemble(M, C, K, generators=[member_generator(4, j) for j in range(M)], dropout=p,
                        dropout_position=position).to(torch.float64)
    perturb_bn(ens)
    one = one_member_of(ens, m)
    ens.dropout_generators = [torch.Generator().manual_seed(10 + j) for j in range(M)]
    one.dropout_generators = [torch.Generator().manual_seed(10 + m)]
    x = torch.randn(M, B, C, dtype=torch.float64)
    ens.train(), one.train()
    logits, features = ens(x, with_features=True)
    one_logits, one_features = one(x[m:m + 1], with_features=True)
    assert one_logits.shape == (1, B, K) and one_features.shape == (1, B, ens.feature_dim)
    assert torch.allclose(one_logits[0], logits[m], atol=FORWARD_ATOL)
    assert torch.allclose(one_features[0], features[m], atol=FORWARD_ATOL)
    (logits[m].square().sum() + features[m].sum()).backward()
    (one_logits[0].square().sum() + one_features[0].sum()).backward()
    for (name, p_ens), p_one in zip(ens.named_parameters(), one.parameters()):
        assert torch.allclose(p_one.grad[0], p_ens.grad[m], atol=FORWARD_ATOL), name
    assert_member_equals_reference(ens, m, reference_of(one))  # weights, running stats, batches tracked
    ens.eval(), one.eval()
    assert torch.allclose(one(x[m])[0], ens(x)[m], atol=FORWARD_ATOL)  # running stats, shared [B, C] input


def reference_of(one):
    """An ensemble of one as the original module, to compare its state dict with member_state_dict."""
    ref = OriginalClassifier(one.dim, one.num_classes).to(torch.float64)
    ref.load_state_dict(one.member_state_dict(0), strict=True)
    return ref
