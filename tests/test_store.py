"""Lazy per-pixel bilinear upsampling equals full upsampling (align_corners=False)."""
import pytest
import torch
import torch.nn.functional as F

from ddpmseg.features.store import FeatureStore, upsample_pixels


@pytest.mark.parametrize("in_hw,out_hw", [((8, 8), (32, 32)), ((16, 16), (64, 64)), ((32, 32), (32, 32)),
                                          ((5, 7), (23, 11)), ((64, 64), (16, 16))])
def test_upsample_pixels_equals_interpolate(in_hw, out_hw):
    torch.manual_seed(0)
    maps = [torch.randn(3, *in_hw), torch.randn(2, in_hw[0] * 2, in_hw[1] * 2)]
    full = torch.cat([F.interpolate(m[None], size=out_hw, mode="bilinear", align_corners=False)[0]
                      for m in maps])
    ys, xs = torch.meshgrid(torch.arange(out_hw[0]), torch.arange(out_hw[1]), indexing="ij")
    lazy = upsample_pixels(maps, ys.reshape(-1), xs.reshape(-1), out_hw)
    assert torch.allclose(lazy.T.reshape(full.shape), full, atol=1e-5)


@pytest.mark.parametrize("location", [None, "disk"])
def test_store_equals_full_upsampling_to_fp16_precision(tmp_path, location):
    """The original's X for random pixels, up to rounding the native maps and the blend to fp16."""
    torch.manual_seed(1)
    # The 4th layer shares the 1st's neighbours; the 5th's 5x7 -> 32x32 weights are not exact in fp16.
    shapes = [(16, 8, 8), (8, 16, 16), (4, 32, 32), (6, 8, 8), (3, 5, 7)]
    images = [[torch.randn(c, h, w) * 3 for c, h, w in shapes] for _ in range(3)]
    store = FeatureStore(3, shapes, (32, 32), location=str(tmp_path / "s") if location else None)
    for i, acts in enumerate(images):
        store.put(i, acts)
    img = torch.randint(0, 3, (500,))
    ys, xs = torch.randint(0, 32, (500,)), torch.randint(0, 32, (500,))
    got = store.pixels(img, ys, xs).double()

    def upsampled(maps: list[torch.Tensor]) -> torch.Tensor:  # the original's per-image X [C, 32, 32], float64
        return torch.cat([F.interpolate(a.double()[None], size=(32, 32), mode="bilinear", align_corners=False)[0]
                          for a in maps])
    for i, acts in enumerate(images):
        sel = img == i
        ref = upsampled(acts)[:, ys[sel], xs[sel]].T
        assert (got[sel] - ref).abs().max() <= 2 ** -10 * 3 * 4  # fp16 relative precision of |x| <~ 12
        # Against the exact blend of the fp16-rounded maps: the weights rounded to fp16 move it by at most
        # 2^-11 * sum_k w_k |x_k| (the blend of |x|), the blend's one rounding to fp16 by 2^-11 * |blend|;
        # 1.01 covers the float32 sum of 4 terms.
        ref16 = upsampled([a.half() for a in acts])[:, ys[sel], xs[sel]].T
        abs16 = upsampled([a.half().abs() for a in acts])[:, ys[sel], xs[sel]].T
        assert ((got[sel] - ref16).abs() <= 1.01 * 2 ** -11 * (ref16.abs() + abs16)).all()
    assert store.dim == 37 and store.nbytes == 3 * (16 * 64 + 8 * 256 + 4 * 1024 + 6 * 64 + 3 * 35) * 2
    store.close()
    if location:
        assert not (tmp_path / "s").exists()


def test_store_rejects_wrong_layer_count():
    store = FeatureStore(1, [(2, 4, 4)], (8, 8))
    with pytest.raises(ValueError, match="expected 1 activation maps"):
        store.put(0, [torch.zeros(2, 4, 4)] * 2)


def test_put_takes_batched_maps_and_image_features_is_the_full_upsampling(tmp_path):
    """put() accepts the U-Net's [1, C, h, w] hook outputs as well as [C, h, w]; image_features(i) is the
    original's per-image X [dim, H, W] of the fp16-rounded maps, rounded to fp16. A disk store writes its memmaps inside
    its folder, which may already exist (a resumed run's)."""
    torch.manual_seed(2)
    shapes = [(3, 4, 4), (2, 8, 8)]
    acts = [[torch.randn(1, c, h, w) for c, h, w in shapes] for _ in range(2)]
    (tmp_path / "s").mkdir()
    store = FeatureStore(2, shapes, (16, 16), location=str(tmp_path / "s"))
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["layer_00.npy", "layer_01.npy"]
    store.put(0, acts[0])
    store.put(1, [a[0] for a in acts[1]])
    for i in range(2):
        full = torch.cat([F.interpolate(a.half().double(), size=(16, 16), mode="bilinear", align_corners=False)[0]
                          for a in acts[i]])
        # Dyadic weights (x2, x4) are exact in fp16: the blend's one rounding to fp16 is all that differs.
        assert ((store.image_features(i).double() - full).abs() <= 2 ** -11 * full.abs()).all()
    store.close()
