"""Pixel features equal the original ddpm-segmentation feature collection."""
import pytest
import torch

from conftest import load_fixture, on_parity_grid
from ddpmseg.features.ddpm import FeatureExtractorDDPM, collect_features, shared_noise
from ddpmseg.features.store import FeatureStore


def _extractor(build, fx, **kw):
    model, diffusion = build("tiny256")
    return FeatureExtractorDDPM(steps=fx["steps"], blocks=fx["blocks"], model=model, diffusion=diffusion, **kw)


def test_pixel_features_match_original(tiny_model_and_diffusion):
    fx = load_fixture("tiny256_pixel_features.pt")
    extractor = _extractor(tiny_model_and_diffusion, fx)
    acts = extractor(fx["image"], noise=fx["noise"])
    assert len(acts) == len(fx["steps"]) * len(fx["blocks"])
    feats = collect_features({"dim": fx["size"] + [0], "upsample_mode": fx["upsample_mode"]}, acts)
    assert list(feats.shape) == fx["features_shape"] == [1056, 32, 32]
    # every channel, at the parity grid's pixels (fixtures/README.md)
    assert (on_parity_grid(feats) - fx["features"]).abs().max() <= 1e-4


def test_store_features_match_original_to_fp16_precision(tiny_model_and_diffusion):
    """The pipeline's path (fp16 native maps + per-pixel upsampling) against the reference."""
    fx = load_fixture("tiny256_pixel_features.pt")
    acts = _extractor(tiny_model_and_diffusion, fx)(fx["image"], noise=fx["noise"])
    store = FeatureStore(1, [tuple(a.shape[1:]) for a in acts], tuple(fx["size"]))
    store.put(0, acts)
    ref = fx["features"]
    err = (on_parity_grid(store.image_features(0)) - ref).abs()
    assert err.max() <= 2 ** -10 * ref.abs().max()  # fp16 has a 10-bit mantissa


def test_block_order_and_early_exit_do_not_change_values(tiny_model_and_diffusion):
    fx = load_fixture("tiny256_pixel_features.pt")
    ref = _extractor(tiny_model_and_diffusion, fx)(fx["image"], noise=fx["noise"])
    model, diffusion = tiny_model_and_diffusion("tiny256")
    shuffled = FeatureExtractorDDPM(steps=fx["steps"], blocks=fx["blocks"][::-1], model=model, diffusion=diffusion)
    out = shuffled(fx["image"], noise=fx["noise"])
    assert len(out) == len(ref) and all(torch.equal(a, b) for a, b in zip(ref, out, strict=True))
    # The hooks stop the U-Net after the last hooked block; a full forward of a fresh copy
    # of the model gives the same maps (one step: a forward of the same batch shape, so bitwise).
    one_step = FeatureExtractorDDPM(steps=fx["steps"][:1], blocks=fx["blocks"], model=model, diffusion=diffusion)
    ref = one_step(fx["image"], noise=fx["noise"])
    fresh, _ = tiny_model_and_diffusion("tiny256")
    acts = []
    for b in sorted(fx["blocks"]):
        fresh.output_blocks[b].register_forward_hook(lambda m, i, o: acts.append(o.float()))
    t = torch.tensor([fx["steps"][0]])
    with torch.no_grad():
        fresh(diffusion.q_sample(fx["image"], t, noise=fx["noise"]), t)
    assert len(acts) == len(fx["blocks"]) and all(torch.equal(a, b) for a, b in zip(acts, ref[:len(acts)], strict=True))


def test_input_activations_hook_block_inputs(tiny_model_and_diffusion):
    fx = load_fixture("tiny256_pixel_features.pt")
    ext = _extractor(tiny_model_and_diffusion, fx, input_activations=True)
    acts = ext(fx["image"], noise=fx["noise"])
    # Block 5 of the 256 topology takes h (256 ch at 16 px for 32 channels) concatenated with a skip.
    assert acts[0].shape[1] == ext.model.output_blocks[5][0].in_layers[0].num_channels


def test_bad_blocks_and_steps_are_rejected(tiny_model_and_diffusion):
    model, diffusion = tiny_model_and_diffusion("tiny64")
    with pytest.raises(ValueError, match=r"blocks \[12\] do not exist: this U-Net has decoder blocks \(output_blocks\) "
                                         r"0..11"):
        FeatureExtractorDDPM(blocks=[4, 12], model=model, diffusion=diffusion)
    with pytest.raises(ValueError, match=r"steps \[1000\] do not exist: this diffusion has 1000 steps, so 'steps' must "
                                         r"lie in 0..999"):
        FeatureExtractorDDPM(steps=[1000], blocks=[4], model=model, diffusion=diffusion)


def test_shared_noise_is_seeded():
    assert torch.equal(shared_noise(0, 8), shared_noise(0, 8))
    assert not torch.equal(shared_noise(0, 8), shared_noise(1, 8))


def test_rgb_position_features_are_colour_then_x_then_y():
    from ddpmseg.features.rgb_xy import RGBPositionFeatures

    img = torch.rand(2, 3, 4, 6) * 2 - 1
    (feat,) = RGBPositionFeatures()(img)
    assert feat.shape == (2, 5, 4, 6) and torch.equal(feat[:, :3], img)
    assert torch.allclose(feat[0, 3, 0], torch.linspace(-1, 1, 6)) and torch.allclose(feat[1, 4, :, 0], torch.linspace(-1, 1, 4))


def test_all_steps_and_images_in_one_forward_equal_one_step_per_forward(tiny_model_and_diffusion):
    """The batched forward (3 steps x 2 images) against the original loop, one step and one image
    per forward, in float64: the same computation, so only summation order may differ (float64
    rounding, ~1e-16 per operation, stays far below 1e-10 through the U-Net's depth)."""
    fx = load_fixture("tiny256_pixel_features.pt")
    model, diffusion = tiny_model_and_diffusion("tiny256")
    model = model.double()  # the torso follows its convolutions' dtype; the timestep embedding is cast to it
    ext = FeatureExtractorDDPM(steps=fx["steps"], blocks=fx["blocks"], model=model, diffusion=diffusion)
    images = torch.cat([fx["image"], fx["image"].flip(-1)]).double()
    noise = fx["noise"].double()
    batched = ext(images, noise=noise)
    acts = []
    hooks = [model.output_blocks[b].register_forward_hook(lambda m, i, o: acts.append(o))
             for b in sorted(fx["blocks"])]
    with torch.no_grad():
        for i in range(len(images)):
            per_image = []
            for t in fx["steps"]:
                acts.clear()
                tt = torch.tensor([t])
                ext._active = False  # the extractor's own hooks stay idle; ours record full forwards
                model(diffusion.q_sample(images[i:i + 1], tt, noise=noise), diffusion._scale_timesteps(tt))
                per_image.extend(acts)
            for a, ref in zip(batched, per_image):
                assert a.dtype == torch.float64
                assert (a[i] - ref[0]).abs().max() <= 1e-10 * ref.abs().max()
    for h in hooks:
        h.remove()
    assert len(batched) == len(fx["steps"]) * len(fx["blocks"])
