"""ddpmseg.common.config: validation, error messages, overrides, loading and saving."""
from __future__ import annotations

import json

import pytest

from ddpmseg.common import config
from ddpmseg.common.config import REQUIRED, ConfigError, load_config, parse_override, save_config, validate


def minimal() -> dict:
    """The required keys only, for a 3-class problem."""
    return {
        "exp_dir": "runs/x",
        "category": "toy_3",
        "number_class": 3,
        "training_path": "data/train",
        "testing_path": "data/test",
        "model_path": "ckpt.pt",
        "dim": [64, 64, 384],
        "training_number": 2,
        "testing_number": 2,
        "class_names": ["background", "a", "b"],
        "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
    }


def with_(**changes) -> dict:
    return {**minimal(), **changes}


def write_json(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def test_minimal_config_gets_the_documented_defaults():
    cfg = validate(minimal())
    assert set(cfg) == set(config.DEFAULTS)
    # The variants are off by default: a config without them is the original method.
    assert (cfg["regularizer"], cfg["voting"], cfg["optimizer"], cfg["dropout"], cfg["augmentation_copies"],
            cfg["tta"]) == ("none", "hard", "adam", 0.0, 0, [])
    assert cfg["ignore_label"] == 255
    assert cfg["steps"] == [50, 150, 250] and cfg["blocks"] == [5, 6, 7, 8, 12]
    assert cfg["model_num"] == 10 and cfg["batch_size"] == 64 and cfg["seed"] == 0
    assert cfg["learning_rate"] == 1e-3 and cfg["model_flags"] == {}


def test_defaults_are_fresh_copies():
    a = validate(minimal())
    a["steps"].append(999)
    assert validate(minimal())["steps"] == [50, 150, 250]


def test_unknown_key_is_named_with_the_close_match():
    with pytest.raises(ConfigError) as e:
        validate(with_(numbr_class=3))
    assert "'numbr_class'" in str(e.value)
    assert "did you mean 'number_class'" in str(e.value)


def test_unknown_key_without_a_close_match_lists_known_keys():
    with pytest.raises(ConfigError, match="unknown key.*'zzz'.*Known keys: .*exp_dir"):
        validate(with_(zzz=1))


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("number_class", "3", "int"),
        ("number_class", True, "int"),
        ("number_class", 3.0, "int"),
        ("training_number", None, "int"),
        ("learning_rate", True, "float"),
        ("learning_rate", "0.1", "float"),
        ("share_noise", 1, "bool"),
        ("ignore_label", "255", "int or null"),
        ("exp_dir", 5, "str"),
        ("steps", "50,150", "list"),
        ("model_flags", [], "dict"),
    ],
)
def test_wrong_type_names_the_key_and_the_types(key, value, expected):
    with pytest.raises(ConfigError) as e:
        validate(with_(**{key: value}))
    msg = str(e.value)
    assert f"'{key}'" in msg
    assert f"must be {expected}," in msg
    assert repr(value) in msg


@pytest.mark.parametrize("key", [k for k, (_, d) in config.DEFAULTS.items() if d is REQUIRED])
def test_missing_required_key_is_named(key):
    cfg = minimal()
    del cfg[key]
    with pytest.raises(ConfigError, match=f"required key '{key}' is missing"):
        validate(cfg)


def test_int_is_accepted_where_a_float_is_expected():
    cfg = validate(with_(learning_rate=1, uncertainty_top_fraction=1))
    assert cfg["learning_rate"] == 1.0 and type(cfg["learning_rate"]) is float
    assert type(cfg["uncertainty_top_fraction"]) is float


def test_ignore_label_may_be_null():
    assert validate(with_(ignore_label=None))["ignore_label"] is None


def test_legacy_max_training_is_accepted_and_dropped():
    cfg = validate(with_(max_training=30))
    assert "max_training" not in cfg


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"model_type": "vit"}, "'model_type' must be one of"),
        ({"model_type": "mae"}, "'mae' hooks fixed layers and adds no noise: set \"steps\": \\[\\]"),
        ({"model_type": "swav", "steps": [], "blocks": []}, "captures block inputs, as published"),
        ({"model_type": "mae", "steps": [], "blocks": [], "input_activations": True}, "captures block outputs"),
        ({"random_weights": True}, "set \"model_path\": \"\" \\(or drop random_weights\\)"),
        ({"model_path": ""}, "'model_path' is empty: name the ddpm checkpoint, or set \"random_weights\": true"),
        ({"model_type": "rgb_xy", "model_path": "", "random_weights": True}, "'rgb_xy' has no weights"),
        ({"upsample_mode": "nearest"}, "'upsample_mode' must be one of"),
        ({"feature_store": "gpu"}, "'feature_store' must be one of"),
        ({"dim": [64, 64]}, "'dim' must be a list of 3 integers"),
        ({"dim": [64, 64, 1.5]}, "'dim' must be a list of 3 integers"),
        ({"dim": [64, 32, 384]}, "'dim' must be square"),
        ({"steps": [50, True]}, "'steps' must be a list of integers"),
        ({"blocks": ["5"]}, "'blocks' must be a list of integers"),
        ({"number_class": 1, "class_names": ["a"], "palette": [[0, 0, 0]]}, "'number_class' must be >= 2"),
        ({"model_num": 0}, "'model_num' must be >= 1"),
        ({"uncertainty_top_fraction": 0.0}, "'uncertainty_top_fraction' must be in"),
        ({"uncertainty_top_fraction": 1.5}, "'uncertainty_top_fraction' must be in"),
        ({"regularizer": "center"}, "'regularizer' must be one of \\['none', 'etf', 'etf_decoupled'\\]"),
        ({"voting": "mean"}, "'voting' must be one of"),
        ({"optimizer": "sgd"}, "'optimizer' must be one of"),
        ({"epoch_pixels": "some"}, "'epoch_pixels' must be one of"),
        ({"dropout": 1.0}, "'dropout' must be in"),
        ({"augmentation_p": -0.1}, "'augmentation_p' must be in"),
        ({"etf_beta": -1}, "'etf_beta' must be >= 0"),
        ({"augmentation_copies": -1}, "'augmentation_copies' must be >= 0"),
        ({"tta": ["hflip", "vflip"]}, "'tta' must list distinct views from"),
        ({"tta": ["hflip", "hflip"]}, "'tta' must list distinct views from"),
        ({"tta": [1]}, "'tta' must list distinct views from"),
        ({"refine": {"steps": 3}}, "'refine': 'method' must be one of \\['ddps'\\]"),
        ({"refine": {"method": "ddps", "seed": 1}}, "the run's seed seeds the refiner"),
        ({"refine": {"method": "ddps", "stepz": 1}}, "unknown key\\(s\\) \\['stepz'\\]"),
        ({"refine": {"method": "ddps", "hflip": 1}}, "'hflip' must be bool"),
        ({"refine": {"method": "ddps", "steps": 20}}, "do not fit in"),
    ],
)
def test_value_checks(changes, match):
    with pytest.raises(ConfigError, match=match):
        validate(with_(**changes))


def test_refine_is_completed_with_the_refiner_defaults():
    assert validate(minimal())["refine"] == {}
    cfg = validate(with_(refine={"method": "ddps", "steps": 3, "learning_rate": 1}))
    assert cfg["refine"]["steps"] == 3 and cfg["refine"]["learning_rate"] == 1.0
    assert cfg["refine"]["num_timesteps"] == 20 and "seed" not in cfg["refine"]


@pytest.mark.parametrize("kind, inputs", [("mae", False), ("swav", True), ("swav_w2", True)])
def test_comparison_backbones_validate_with_their_published_hooks(kind, inputs):
    cfg = validate(with_(model_type=kind, steps=[], blocks=[], input_activations=inputs, model_path="",
                         random_weights=True))
    assert (cfg["model_type"], cfg["random_weights"]) == (kind, True)


@pytest.mark.parametrize("names", [["background", "a"], ["background", "a", "b", "c"], ["background", "a", 2]])
def test_class_names_must_be_one_string_per_class(names):
    with pytest.raises(ConfigError, match="'class_names' must list 3 names"):
        validate(with_(class_names=names))


@pytest.mark.parametrize(
    "palette",
    [
        [[0, 0, 0], [255, 0, 0]],  # too few colours
        [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]],  # too many
        [[0, 0, 0], [255, 0, 0], [0, 255]],  # not a triple
        [[0, 0, 0], [256, 0, 0], [0, 255, 0]],  # out of range
        [[0, 0, 0], [-1, 0, 0], [0, 255, 0]],
        [[0, 0, 0], [0.5, 0, 0], [0, 255, 0]],  # not an integer
        [[0, 0, 0], [True, 0, 0], [0, 255, 0]],  # bool is not a colour value
        [0, 0, 0, 255, 0, 0, 0, 255, 0],  # flat, as in the original data_util
    ],
)
def test_palette_must_be_one_rgb_triple_per_class(palette):
    with pytest.raises(ConfigError, match="'palette' must be 3 \\[r, g, b\\] triples"):
        validate(with_(palette=palette))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("exp_dir=runs/x", ("exp_dir", "runs/x")),
        ("steps=[50, 150]", ("steps", [50, 150])),
        ("learning_rate=0.01", ("learning_rate", 0.01)),
        ("model_num=3", ("model_num", 3)),
        ("share_noise=false", ("share_noise", False)),
        ("ignore_label=null", ("ignore_label", None)),
        ('category="123"', ("category", "123")),
        ("model_path=a=b.pt", ("model_path", "a=b.pt")),
        (" seed =7", ("seed", 7)),
        ("exp_dir=", ("exp_dir", "")),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_parse_override_without_equals_sign():
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_override("exp_dir")


def test_load_config_applies_overrides_and_validates(tmp_path):
    path = write_json(tmp_path / "c.json", with_(max_training=30))
    cfg = load_config(path, {"model_num": 2, "steps": [50]})
    assert cfg["model_num"] == 2 and cfg["steps"] == [50] and cfg["exp_dir"] == "runs/x"
    with pytest.raises(ConfigError, match=r"c\.json: unknown key.*did you mean 'model_num'"):
        load_config(path, {"model_nums": 2})
    with pytest.raises(ConfigError, match="'model_num' must be int"):
        load_config(path, dict([parse_override("model_num=two")]))


def test_base_config_is_merged_with_the_file_winning(tmp_path):
    (tmp_path / "sub").mkdir()
    write_json(tmp_path / "ddpm.json", with_(model_num=3))
    write_json(tmp_path / "sub" / "mid.json", {"base": "../ddpm.json", "voting": "soft", "model_num": 4})
    path = write_json(tmp_path / "sub" / "etf.json", {"base": "mid.json", "regularizer": "etf", "model_num": 5})
    cfg = load_config(path, {"seed": 2})
    assert (cfg["regularizer"], cfg["voting"], cfg["model_num"], cfg["seed"]) == ("etf", "soft", 5, 2)
    assert "base" not in cfg and cfg["exp_dir"] == "runs/x"


def test_base_config_errors(tmp_path):
    path = write_json(tmp_path / "a.json", {"base": "missing.json"})
    with pytest.raises(ConfigError, match=r"experiment config not found: .*missing.json \(the base of .*a.json\)"):
        load_config(path)
    write_json(tmp_path / "b.json", {"base": "c.json"})
    write_json(tmp_path / "c.json", {"base": "b.json"})
    with pytest.raises(ConfigError, match="'base' chain loops: .*b.json -> .*c.json -> .*b.json"):
        load_config(str(tmp_path / "b.json"))
    with pytest.raises(ConfigError, match="'base' must be the path of another config, got 3"):
        load_config(write_json(tmp_path / "d.json", {"base": 3}))


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="experiment config not found: .*nope.json"):
        load_config(str(tmp_path / "nope.json"))


def test_load_config_invalid_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"exp_dir": "runs/x",}')
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_config(str(path))


def test_load_config_top_level_must_be_an_object(tmp_path):
    path = write_json(tmp_path / "list.json", [minimal()])
    with pytest.raises(ConfigError, match="top level must be a JSON object"):
        load_config(path)


def test_save_config_round_trip(tmp_path):
    cfg = validate(with_(ignore_label=None, model_flags={"image_size": 64, "use_fp16": False}))
    path = tmp_path / "config.json"
    path.write_text("old contents")
    save_config(cfg, str(path))
    assert load_config(str(path)) == cfg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_save_config_failure_keeps_the_previous_file(tmp_path):
    path = tmp_path / "config.json"
    save_config(validate(minimal()), str(path))
    before = path.read_text()
    with pytest.raises(TypeError):
        save_config(with_(exp_dir=object()), str(path))  # not JSON-serializable: fails mid-write
    assert path.read_text() == before


@pytest.mark.parametrize("side,want", [(256, 20.0), (128, 5.0), (64, 1.25), (32, 1.0)])
def test_min_region_pixels_auto_is_the_originals_20_pixels_scaled_by_area(side, want):
    """20 pixels at 256 x 256 (the original's images) scales with the image area, floored at one pixel
    (below that no region is small enough to drop); these are exact in binary floating point."""
    cfg = validate(with_(dim=[side, side, 384], min_region_pixels="auto"))
    assert cfg["min_region_pixels"] == want
    assert validate(with_(dim=[side, side, 384], min_region_pixels=7))["min_region_pixels"] == 7.0


def test_min_region_pixels_of_the_published_256_px_configs_stays_20():
    import glob

    published = [p for p in glob.glob("experiments/*/*.json") if load_config(p)["dim"][0] == 256]
    datasets = ("ade_bedroom_30", "bedroom_28", "cat_15", "celeba_19", "ffhq_34", "horse_21")
    assert {f"experiments/{d}/{k}.json" for d in datasets for k in ("ddpm", "etf", "mae", "swav")} <= set(published)
    for path in published:
        assert load_config(path)["min_region_pixels"] == 20.0, path
    assert load_config("experiments/celebamask64/ddpm.json")["min_region_pixels"] == 0  # the default
    assert validate(minimal())["min_region_pixels"] == 0


@pytest.mark.parametrize("value", ["scaled", -1, True])
def test_min_region_pixels_rejects_what_is_not_auto_or_a_count(value):
    with pytest.raises(ConfigError, match="min_region_pixels"):
        validate(with_(min_region_pixels=value))
