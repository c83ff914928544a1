"""experiments/*/ddpm.json: every file validates and carries the published per-dataset values."""
from __future__ import annotations

import json

import pytest

from conftest import CELEBAMASK64, FACES_CKPT, REPO, require
from ddpmseg.common.config import load_config

# The datasets; experiments/shapes64 is the offline demo's generated dataset (tests/test_demo.py).
EXPERIMENTS = sorted(p for p in (REPO / "experiments").glob("*/ddpm.json") if p.parent.name != "shapes64")

# dataset: (number_class, ignore_label, training_number, testing_number, model_path), from the
# original experiments/<ds>/ddpm.json (fact sheet, section 2).
ORIGINAL = {
    "bedroom_28": (29, 0, 40, 20, "checkpoints/ddpm/lsun_bedroom.pt"),
    "ffhq_34": (34, 255, 20, 20, "checkpoints/ddpm/ffhq.pt"),
    "cat_15": (15, 255, 30, 20, "checkpoints/ddpm/lsun_cat.pt"),
    "horse_21": (21, 255, 30, 30, "checkpoints/ddpm/lsun_horse.pt"),
    "celeba_19": (19, 255, 20, 500, "checkpoints/ddpm/ffhq.pt"),
    "ade_bedroom_30": (30, 255, 50, 650, "checkpoints/ddpm/lsun_bedroom.pt"),
}


def load(ds: str) -> dict:
    return load_config(str(REPO / "experiments" / ds / "ddpm.json"))


def test_every_dataset_has_an_experiment():
    assert [p.parent.name for p in EXPERIMENTS] == sorted([*ORIGINAL, "celebamask64"])
    assert sorted(p.parent.name for p in (REPO / "experiments").glob("*/etf.json")) == sorted([*ORIGINAL,
                                                                                            "celebamask64"])


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.parent.name)
def test_etf_config_is_ddpm_plus_the_etf_method(path):
    """etf.json = the dataset's ddpm.json + ETF regularizer (alpha 1, beta 0.4) + soft voting."""
    ddpm, etf = load_config(str(path)), load_config(str(path.with_name("etf.json")))
    changed = {k for k in ddpm if ddpm[k] != etf[k]}
    assert changed == {"exp_dir", "regularizer", "voting", "report_all_votings"}
    assert (etf["regularizer"], etf["etf_alpha"], etf["etf_beta"], etf["voting"]) == ("etf", 1.0, 0.4, "soft")
    assert etf["exp_dir"] == f"pixel_classifiers/{path.parent.name}/etf"


# model_type: (feature channels, input_activations), from the original experiments/*/<type>.json.
BACKBONES = {"mae": (12288, False), "swav": (6720, True), "swav_w2": (13440, True)}
# The MAE/SwAV checkpoint stem each dataset uses (fact sheet, section 2).
BACKBONE_STEMS = {"bedroom_28": "lsun_bedroom", "ffhq_34": "ffhq", "cat_15": "lsun_cat", "horse_21": "lsun_horse",
                  "celeba_19": "ffhq", "ade_bedroom_30": "lsun_bedroom"}


@pytest.mark.parametrize("kind", BACKBONES)
@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.parent.name)
def test_backbone_config_is_ddpm_with_the_published_backbone(path, kind):
    """<kind>.json = the dataset's ddpm.json with the backbone's checkpoint, feature size and hooks."""
    ds = path.parent.name
    ddpm, cfg = load_config(str(path)), load_config(str(path.with_name(f"{kind}.json")))
    dim, inputs = BACKBONES[kind]
    assert cfg["model_type"] == kind and cfg["exp_dir"] == f"pixel_classifiers/{ds}/{kind}"
    assert cfg["dim"] == [ddpm["dim"][0], ddpm["dim"][0], dim]
    assert cfg["steps"] == cfg["blocks"] == [] and cfg["input_activations"] is inputs
    if ds == "celebamask64":  # no MAE/SwAV was trained on these faces: the untrained control
        assert cfg["random_weights"] is True and cfg["model_path"] == ""
    else:
        assert cfg["random_weights"] is False
        assert cfg["model_path"] == f"checkpoints/{kind}/{BACKBONE_STEMS[ds]}.pth"
    changed = {k for k in ddpm if ddpm[k] != cfg[k]}
    assert changed <= {"exp_dir", "model_type", "model_path", "random_weights", "dim", "steps", "blocks",
                       "input_activations"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.parent.name)
def test_experiment_validates_with_one_name_and_colour_per_class(path):
    cfg = load_config(str(path))
    assert cfg["category"] == path.parent.name
    assert cfg["exp_dir"] == f"pixel_classifiers/{path.parent.name}/ddpm"
    assert len(cfg["class_names"]) == len(cfg["palette"]) == cfg["number_class"]
    assert len(set(cfg["class_names"])) == cfg["number_class"]


@pytest.mark.parametrize("ds", ORIGINAL)
def test_original_datasets_keep_the_published_values(ds):
    cfg = load(ds)
    number_class, ignore_label, training_number, testing_number, model_path = ORIGINAL[ds]
    assert cfg["number_class"] == number_class
    assert cfg["ignore_label"] == ignore_label
    assert cfg["training_number"] == training_number
    assert cfg["testing_number"] == testing_number
    assert cfg["model_path"] == model_path
    assert cfg["training_path"] == f"datasets/{ds}/real/train"
    assert cfg["testing_path"] == f"datasets/{ds}/real/test"
    # 1024+512+512+512+256 channels of output blocks 5,6,7,8,12 at each of 3 timesteps
    assert cfg["dim"] == [256, 256, 2816 * 3]
    assert cfg["steps"] == [50, 150, 250] and cfg["blocks"] == [5, 6, 7, 8, 12]
    assert (cfg["model_num"], cfg["batch_size"], cfg["upsample_mode"]) == (10, 64, "bilinear")
    assert cfg["share_noise"] is True and cfg["input_activations"] is False
    assert cfg["model_flags"] == {}  # the 256-px flags come from the command line, as published


@pytest.mark.parametrize(
    "ds, index, name",
    [
        ("bedroom_28", 0, "background"),
        ("bedroom_28", 2, "bed***footboard"),
        ("bedroom_28", 28, "table staff"),
        ("ffhq_34", 1, "head"),
        ("ffhq_34", 33, "head***wrinkles"),
        ("cat_15", 14, "neck"),
        ("horse_21", 1, "person"),
        ("horse_21", 20, "leg protection"),
        ("celeba_19", 18, "u_lip"),
        ("ade_bedroom_30", 0, "wall"),
        ("ade_bedroom_30", 29, "television"),
    ],
)
def test_class_names_spot_checks(ds, index, name):
    assert load(ds)["class_names"][index] == name


def test_celeba_19_class_order():
    assert load("celeba_19")["class_names"][:5] == ["background", "cloth", "ear_r", "eye_g", "hair"]


@pytest.mark.parametrize(
    "ds, index, rgb",
    [
        ("bedroom_28", 0, [255, 255, 255]),
        ("bedroom_28", 28, [0, 0, 53]),
        ("ffhq_34", 1, [112, 130, 107]),  # int(0.4420*255), int(0.5100*255), int(0.4234*255): truncated
        ("ffhq_34", 33, [240, 171, 157]),
        ("cat_15", 14, [104, 131, 101]),
        ("horse_21", 20, [255, 47, 128]),
        ("celeba_19", 17, [248, 213, 42]),
        ("ade_bedroom_30", 0, [240, 156, 206]),
        ("ade_bedroom_30", 29, [29, 193, 187]),  # values 87..89 of the flat 150-value list
    ],
)
def test_palette_spot_checks(ds, index, rgb):
    assert load(ds)["palette"][index] == rgb


def test_celebamask64_matches_its_dataset_and_checkpoint():
    classes = json.loads((require(CELEBAMASK64) / "classes.json").read_text())
    flags = json.loads(require(FACES_CKPT.with_suffix(".json")).read_text())["flags"]
    cfg = load("celebamask64")
    assert cfg["class_names"] == classes["class_names"]
    assert cfg["palette"] == classes["palette_rgb"]
    assert cfg["number_class"] == classes["number_class"] == 19
    assert cfg["ignore_label"] is classes["ignore_label"] is None
    assert cfg["model_flags"] == flags
    assert cfg["dim"] == [flags["image_size"], flags["image_size"], 384 * 3]
    # paths are relative to the repository root, where commands run
    for key, target in [("training_path", CELEBAMASK64 / "real/train"),
                        ("testing_path", CELEBAMASK64 / "real/test"),
                        ("model_path", FACES_CKPT)]:
        assert (REPO / cfg[key]).resolve() == target.resolve()


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*/*.json")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_file_validates(path):
    """Generated configs too (best.json from scripts/best_recipe.py): each loads through its base."""
    cfg = load_config(str(path))
    assert cfg["number_class"] == load_config(str(path.with_name("ddpm.json")))["number_class"]
