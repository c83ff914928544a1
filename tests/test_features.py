"""Pixel features equal the original ddpm-segmentation feature collection."""
import pytest
import torch
import torch.nn.functional as F

from conftest import backbone_config, load_fixture, manifest, on_parity_grid
from ddpmseg.common.config import ConfigError, load_config
from ddpmseg.common.model_flags import resolve_model_flags
from ddpmseg.common.seeding import stream_generator, stream_seed
from ddpmseg.features import ddpm as ddpm_module
from ddpmseg.features.ddpm import FeatureExtractorDDPM, collect_features, shared_noise
from ddpmseg.features.noise_draws import NoiseDraw, extra_draws
from ddpmseg.features.registry import Layer
from ddpmseg.features.store import FeatureStore
from guided_diffusion.checkpoint import CheckpointError, load_model_and_diffusion

CONFIG = "experiments/celebamask64/ddpm.json"


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
                                         r"0..11; pick 'blocks' among them"):
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
    assert torch.allclose(feat[0, 3, 0], torch.linspace(-1, 1, 6))
    assert torch.allclose(feat[1, 4, :, 0], torch.linspace(-1, 1, 4))


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


def _image(size: int, n: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(5), dtype=dtype) * 2 - 1


def _full_forward_maps(model, diffusion, blocks, steps, x, noise):
    """The hooked blocks' outputs of one full forward of the S noised copies of ``x`` (noise [S*N, ...]),
    split step-major into [N, C, h, w] maps: the extraction written out."""
    acts = []
    hooks = [model.output_blocks[b].register_forward_hook(lambda m, i, o: acts.append(o)) for b in sorted(blocks)]
    S, n = len(steps), len(x)
    tt = torch.tensor(steps).repeat_interleave(n)
    with torch.no_grad():
        model(diffusion.q_sample(x.repeat(S, 1, 1, 1), tt, noise=noise), diffusion._scale_timesteps(tt))
    for h in hooks:
        h.remove()
    return [a[s * n:(s + 1) * n] for s in range(S) for a in acts]


@pytest.mark.parametrize("mode", ["nearest", "bicubic", "bilinear", None])
def test_collect_features_upsamples_every_map_with_its_mode(mode):
    """Each activation's sample ``sample_idx``, resized to dim[:2] by F.interpolate (align_corners False where
    the mode has corners), stacked along channels; no "upsample_mode" means bilinear."""
    g = torch.Generator().manual_seed(0)
    acts = [torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 2, 6, 4, generator=g)]
    args = {"dim": [7, 9, 6]} if mode is None else {"dim": [7, 9, 6], "upsample_mode": mode}
    by_hand = mode or "bilinear"
    corners = None if by_hand == "nearest" else False
    want = torch.cat([F.interpolate(a[1:2], size=(7, 9), mode=by_hand, align_corners=corners)[0] for a in acts])
    assert torch.equal(collect_features(args, acts, sample_idx=1), want)


def test_shared_noise_is_one_standard_normal_image_from_a_generator_seeded_with_the_seed():
    assert torch.equal(shared_noise(5, 8), torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5)))


def test_extractor_built_from_model_path_loads_that_checkpoint(tiny64_checkpoint, tiny_model_and_diffusion):
    flags = manifest("tiny64")["flags"]
    # use_fp16 is ignored on the CPU (the U-Net runs in float32); the loader reads the device to decide that.
    ext = FeatureExtractorDDPM(model_path=str(tiny64_checkpoint), steps=[50], blocks=[4, 6],
                               **dict(flags, use_fp16=True))
    model, diffusion = tiny_model_and_diffusion("tiny64")
    ref = FeatureExtractorDDPM(steps=[50], blocks=[4, 6], model=model, diffusion=diffusion)
    x, noise = _image(16), shared_noise(0, 16)
    got, want = ext(x, noise=noise), ref(x, noise=noise)
    assert len(got) == 2 and all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(ValueError, match=r"^give model_path \(with the model flags\) or model and diffusion$"):
        FeatureExtractorDDPM()


def test_fresh_noise_is_drawn_for_every_step_from_the_generator(tiny_model_and_diffusion):
    """Without shared noise, each step's N noise images come from the extractor's generator in step order,
    in the image's dtype: float64 here, so the hand-written forward is the same computation, bit for bit
    (one forward of the same batch)."""
    model, diffusion = tiny_model_and_diffusion("tiny64")
    model.double()  # the torso follows its convolutions' dtype; the timestep embedding is cast to it
    steps, blocks = [50, 400], [4, 6]
    ext = FeatureExtractorDDPM(steps=steps, blocks=blocks, model=model, diffusion=diffusion,
                               generator=torch.Generator().manual_seed(7))
    x = _image(16, n=2, dtype=torch.float64)
    got = ext(x)
    g = torch.Generator().manual_seed(7)
    noise = torch.cat([torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in steps])
    ext._active = False  # the extractor's hooks stay idle; ours record the full forward
    want = _full_forward_maps(model, diffusion, blocks, steps, x, noise)
    assert len(got) == len(want) == 4
    assert all(a.dtype == torch.float64 and torch.equal(a, b) for a, b in zip(got, want))  # shapes [2, C, h, w] too


def test_float16_activations_come_back_as_float32(tiny_model_and_diffusion):
    """A float16 torso (convert_to_fp16, as use_fp16 does on CUDA; CPU runs it too) gives float32 maps holding
    the float16 values exactly."""
    model, diffusion = tiny_model_and_diffusion("tiny64")
    model.convert_to_fp16()
    raw = []
    for b in (4, 6):  # registered first, so they fire before the extractor's last hook stops the forward
        model.output_blocks[b].register_forward_hook(lambda m, i, o: raw.append(o))
    ext = FeatureExtractorDDPM(steps=[50], blocks=[4, 6], model=model, diffusion=diffusion)
    got = ext(_image(16), noise=shared_noise(0, 16))
    assert [r.dtype for r in raw] == [torch.float16] * 2
    assert all(a.dtype == torch.float32 and torch.equal(a, r.float()) for a, r in zip(got, raw, strict=True))


@pytest.mark.parametrize("input_activations", [False, True])
@pytest.mark.parametrize("name", ["tiny64", "tiny64_heads"])  # ResBlocks that resample (resblock_updown) / not
def test_layers_are_the_channels_and_strides_of_the_real_maps(tiny_model_and_diffusion, name, input_activations):
    model, diffusion = tiny_model_and_diffusion(name)
    steps, blocks = [50, 400], list(range(len(model.output_blocks)))
    ext = FeatureExtractorDDPM(steps=steps, blocks=blocks[::-1], model=model, diffusion=diffusion,
                               input_activations=input_activations)
    maps = ext(_image(16), noise=shared_noise(0, 16))
    assert all(16 % m.shape[-1] == 0 and m.shape[-1] == m.shape[-2] for m in maps)
    want = [Layer(f"step {t}, block {b}", m.shape[1], 16 // m.shape[-1])
            for (t, b), m in zip([(t, b) for t in steps for b in blocks], maps, strict=True)]
    assert ext.layers() == want
    assert all(type(layer.channels) is int and type(layer.stride) is int for layer in ext.layers())  # 4, not 4.0
    # the U-Net really has several resolutions, and block inputs differ from outputs
    assert len({layer.stride for layer in want}) == 4


def test_candidate_grid_defaults_sorting_and_errors():
    cfg, flags = backbone_config(model_type="ddpm"), manifest("tiny64")["flags"]
    grid = FeatureExtractorDDPM.candidate_grid
    assert grid(cfg, flags) == ([10, 25, 50, 100, 150, 250, 500, 800], list(range(12)))
    # DEFAULT_STEP_FRACTIONS of another diffusion length
    assert grid(cfg, dict(flags, diffusion_steps=400)) == ([4, 10, 20, 40, 60, 100, 200, 320], list(range(12)))
    assert grid(cfg, flags, [400, 50, 7], [6, 0, 4]) == ([7, 50, 400], [0, 4, 6])
    with pytest.raises(ConfigError, match=r"steps \[1000\] do not exist: this diffusion has 1000 steps, so --steps "
                                          r"must lie in 0\.\.999"):
        grid(cfg, flags, [50, 1000])
    with pytest.raises(ConfigError, match=r"blocks \[12\] do not exist: this U-Net has decoder blocks "
                                          r"\(output_blocks\) 0\.\.11; pick --blocks among them"):
        grid(cfg, flags, None, [4, 12])
    with pytest.raises(ConfigError, match=r"steps \[400\] .* has 200 steps, so 'steps' must lie in 0\.\.199"):
        grid(cfg, dict(flags, diffusion_steps=200), [400], [4], names=("'steps'", "'blocks'"))
    with pytest.raises(ConfigError, match=r"blocks \[-1\] .* 0\.\.11; pick 'blocks' among them"):
        grid(cfg, flags, [50], [-1], names=("'steps'", "'blocks'"))
    with pytest.raises(CheckpointError, match=r"cannot build a U-Net from these model flags: no default channel_mult "
                                              r"for image_size 48"):
        grid(cfg, dict(flags, image_size=48))


def _ddpm_config(**keys) -> dict:
    return load_config(CONFIG, {"steps": [400, 50], "blocks": [6, 4], "seed": 3, "dim": [64, 64, 1], **keys})


def test_from_config_loads_the_checkpoint_with_the_shared_noise_and_config_keys(
        tiny64_checkpoint, tiny_model_and_diffusion):
    cfg = _ddpm_config(model_path=str(tiny64_checkpoint), share_noise=True, input_activations=True, noise_draws=2)
    # use_fp16 is ignored on the CPU (the U-Net runs in float32); the loader reads the device to decide that.
    flags = dict(resolve_model_flags(cfg), use_fp16=True)
    ext = FeatureExtractorDDPM.from_config(cfg, flags, torch.device("cpu"), lambda m: None)
    assert ext.image_size == 64 and ext.input_size() == (64, 64)
    assert torch.equal(ext.noise, shared_noise(3, 64))
    (draw,) = ext.extra_draws  # noise_draws - 1, from the noise_draw stream, one shared image each
    assert torch.equal(draw.shared, torch.randn(1, 3, 64, 64, generator=stream_generator("noise_draw", 3, 1)))
    model, diffusion = tiny_model_and_diffusion("tiny64")  # the checkpoint's weights
    ref = FeatureExtractorDDPM(steps=[400, 50], blocks=[6, 4], input_activations=True, model=model,
                               diffusion=diffusion, noise=shared_noise(3, 64),
                               extra_draws=extra_draws(3, 2, (1, 3, 64, 64)))
    x = _image(64)
    got, want = ext(x), ref(x)
    assert len(got) == len(want) == 4 and all(torch.equal(a, b) for a, b in zip(got, want))
    assert got[0].shape[1] == model.output_blocks[4][0].in_layers[0].num_channels  # block inputs (input_activations)


def test_from_config_without_checkpoint_or_shared_noise_draws_from_the_seed_streams():
    cfg = _ddpm_config(model_path="", random_weights=True, share_noise=False, noise_draws=2)
    flags = resolve_model_flags(cfg)
    ext = FeatureExtractorDDPM.from_config(cfg, flags, torch.device("cpu"), lambda m: None)
    assert ext.noise is None and ext.image_size == 64 and ext.input_activations is False
    (draw,) = ext.extra_draws
    assert draw.shared is None
    model, diffusion = load_model_and_diffusion(None, flags, seed=stream_seed("unet_init", 3))
    ref = FeatureExtractorDDPM(steps=[400, 50], blocks=[6, 4], model=model, diffusion=diffusion,
                               generator=stream_generator("feature_noise", 3),
                               extra_draws=[NoiseDraw(None, stream_generator("noise_draw", 3, 1))])
    x = _image(16)  # fresh noise fits any image size
    got, want = ext(x), ref(x)
    assert len(got) == len(want) == 4 and all(torch.equal(a, b) for a, b in zip(got, want))


def test_from_config_draws_the_shared_noise_on_its_own_device(monkeypatch):
    """A CUDA generator's stream differs from the CPU one's: shared noise drawn on the CPU and moved to a GPU
    would change every feature there without an error. There is no GPU here, so the device each noise
    function is called with is checked instead."""
    calls = []
    for name in ("shared_noise", "extra_draws"):
        real = getattr(ddpm_module, name)

        def spy(*args, _real=real, _name=name):
            calls.append((_name, args[-1]))  # the device: the last positional argument of both
            return _real(*args)
        monkeypatch.setattr(ddpm_module, name, spy)
    device = torch.device("cpu")
    cfg = _ddpm_config(model_path="", random_weights=True, share_noise=True, noise_draws=2)
    FeatureExtractorDDPM.from_config(cfg, resolve_model_flags(cfg), device, lambda m: None)
    assert calls == [("shared_noise", device), ("extra_draws", device)]


@pytest.mark.parametrize("keys, error", [
    ({"steps": [50, 1000]}, r"steps \[1000\] do not exist: this diffusion has 1000 steps, so 'steps' must lie in "
                            r"0\.\.999"),
    ({"blocks": [4, 12]}, r"blocks \[12\] do not exist: this U-Net has decoder blocks \(output_blocks\) 0\.\.11; pick "
                          r"'blocks' among them"),
])
def test_from_config_checks_steps_and_blocks_before_loading(tiny64_checkpoint, monkeypatch, keys, error):
    cfg = _ddpm_config(model_path=str(tiny64_checkpoint), **keys)
    flags = resolve_model_flags(cfg)

    def no_loading(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the steps and blocks were checked")

    monkeypatch.setattr(ddpm_module, "load_model_and_diffusion", no_loading)
    with pytest.raises(ConfigError, match=error):
        FeatureExtractorDDPM.from_config(cfg, flags, torch.device("cpu"), lambda m: None)


def test_input_size_of_an_extractor_built_from_a_model_is_an_error(tiny_model_and_diffusion):
    model, diffusion = tiny_model_and_diffusion("tiny64")
    ext = FeatureExtractorDDPM(steps=[50], blocks=[4], model=model, diffusion=diffusion)
    with pytest.raises(ValueError, match=r"^an extractor built from a model has no input size of its own; the "
                                         r"images set it$"):
        ext.input_size()


def _plain_forward(model, diffusion, x):
    t = torch.tensor([50])
    with torch.no_grad():
        return model(diffusion.q_sample(x, t, noise=shared_noise(1, 16)), t)


def test_the_hooked_model_still_runs_plain_forwards(tiny_model_and_diffusion):
    """Between extractions the U-Net may sample (DatasetDDPM): its hooks then record nothing and stop nothing."""
    model, diffusion = tiny_model_and_diffusion("tiny64")
    x = _image(16)
    ref = _plain_forward(model, diffusion, x)
    ext = FeatureExtractorDDPM(steps=[50], blocks=[4, 6], model=model, diffusion=diffusion)
    assert torch.equal(_plain_forward(model, diffusion, x), ref) and ext._acts == []
    maps = ext(x, noise=shared_noise(0, 16))
    assert torch.equal(_plain_forward(model, diffusion, x), ref)
    # the extraction's two maps (one step, one image: the maps are the whole activations), nothing since
    assert len(ext._acts) == 2 and all(torch.equal(a, b) for a, b in zip(ext._acts, maps))


def test_the_forward_stops_after_the_last_hooked_block(tiny_model_and_diffusion):
    model, diffusion = tiny_model_and_diffusion("tiny64")
    ran = []
    model.output_blocks[7].register_forward_pre_hook(lambda m, i: ran.append(7))
    model.out.register_forward_pre_hook(lambda m, i: ran.append("out"))
    ext = FeatureExtractorDDPM(steps=[50], blocks=[6, 4], model=model, diffusion=diffusion)
    assert len(ext(_image(16), noise=shared_noise(0, 16))) == 2
    assert ran == []


def test_close_removes_the_hooks(tiny_model_and_diffusion):
    model, diffusion = tiny_model_and_diffusion("tiny64")
    ext = FeatureExtractorDDPM(steps=[50], blocks=[4, 6], model=model, diffusion=diffusion)
    ext.close()
    assert ext._handles == [] and not any(b._forward_hooks for b in model.output_blocks)
    ext._active = True  # even while extracting, the model's forwards no longer reach the extractor
    _plain_forward(model, diffusion, _image(16))
    assert ext._acts == []
    ext.close()  # closing twice is harmless
