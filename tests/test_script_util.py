"""guided_diffusion.script_util: the one merge of model flags with their defaults."""
from guided_diffusion.script_util import merged_flags, model_and_diffusion_defaults, unknown_flags


def test_later_layers_win_and_none_is_no_layer():
    flags = merged_flags({"image_size": 128, "num_channels": 64}, None, {"num_channels": 32})
    assert flags == {**model_and_diffusion_defaults(), "image_size": 128, "num_channels": 32}
    assert merged_flags() == model_and_diffusion_defaults()


def test_merging_leaves_its_inputs_alone():
    layer = {"image_size": 128}
    merged_flags(layer)["image_size"] = 256
    assert layer == {"image_size": 128}
    assert merged_flags()["image_size"] == model_and_diffusion_defaults()["image_size"]


def test_unknown_flags_are_named_sorted():
    assert unknown_flags({"image_size": 64, "width": 3, "depth": 2}) == ["depth", "width"]
    assert unknown_flags(model_and_diffusion_defaults()) == []
