"""ddpmseg.common.report: colours, comparison images, npy round trip, no partial files."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from ddpmseg.common import atomic
from ddpmseg.common.atomic import write_json_atomic
from ddpmseg.common.report import class_legend, colorize_mask, ignore_colour, save_prediction, to_uint8_image


def _palette():
    """celebamask64's class colours, as its experiment config states them (tests/test_experiments.py
    checks they are the dataset's)."""
    with open(REPO / "experiments" / "celebamask64" / "ddpm.json") as f:
        return json.load(f)["palette"]


def test_colorize_celebamask64_palette():
    pal = _palette()
    mask = np.array([[0, 1, 18], [13, 255, -1]])
    rgb = colorize_mask(torch.from_numpy(mask), pal)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[0, 0].tolist() == pal[0] == [255, 255, 255]
    assert rgb[0, 1].tolist() == pal[1] and rgb[0, 2].tolist() == pal[18]
    assert rgb[1, 0].tolist() == pal[13]
    # ids that are no class (255, -1) get the ignore colour, which no celebamask64 class has
    assert rgb[1, 1].tolist() == rgb[1, 2].tolist() == [224, 224, 192] and [224, 224, 192] not in pal
    # a palette that already holds VOC's void colour gets the next candidate, never a class colour
    taken = [[224, 224, 192], [0, 0, 0]]
    assert colorize_mask(np.array([[255]]), taken)[0, 0].tolist() == [255, 0, 255] == list(ignore_colour(taken))


def test_to_uint8_image_truncates_and_clamps():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]).view(3, 1, 2)
    out = to_uint8_image(x)
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    # channel-last: pixel (0,0) gets channel values x[0,0,0], x[1,0,0], x[2,0,0]
    assert out[0, 0].tolist() == [0, 127, 255] and out[0, 1].tolist() == [0, 254, 255]


def test_save_prediction_files(tmp_path):
    pal = _palette()
    h = w = 8
    pred = torch.zeros(1, h, w, dtype=torch.int64)
    pred[0, :, 4:] = 13
    gt = np.zeros((h, w), np.int64)
    gt[:4] = 255
    image = torch.full((3, h, w), -1.0)
    image[0] = 1.0  # pure red
    save_prediction(str(tmp_path), "x", pred, image=image, gt=gt, palette=pal)

    saved = np.load(tmp_path / "predictions" / "x.npy")
    assert saved.dtype == np.uint8 and saved.shape == (h, w)
    assert np.array_equal(saved, pred[0].numpy())

    vis = np.asarray(Image.open(tmp_path / "visualizations" / "x.png").convert("RGB"))
    assert vis[0, 0].tolist() == pal[0] and vis[0, 5].tolist() == pal[13]

    cmp_ = np.asarray(Image.open(tmp_path / "visualizations" / "x_compare.png").convert("RGB"))
    assert cmp_.shape == (h, 3 * w + 4, 3)
    assert cmp_[3, 3].tolist() == [255, 0, 0]                  # image panel
    assert cmp_[3, w].tolist() == [255, 255, 255]              # gap
    assert cmp_[0, w + 2].tolist() == [224, 224, 192]          # GT 255 -> the ignore colour
    assert cmp_[6, w + 2].tolist() == pal[0]                   # GT class 0
    assert cmp_[5, 2 * w + 4 + 1].tolist() == pal[0]           # prediction, left half
    assert cmp_[5, 3 * w + 3].tolist() == pal[13]              # prediction, right edge
    assert not [n for d in ("predictions", "visualizations")
                for n in os.listdir(tmp_path / d) if n.endswith(".tmp")]


def test_refined_prediction_is_shown_after_the_one_it_started_from(tmp_path):
    pal = _palette()
    before, after = np.full((4, 4), 2), np.full((4, 4), 5)
    save_prediction(str(tmp_path), "r", after, image=torch.zeros(3, 4, 4), gt=np.zeros((4, 4), np.int64),
                    palette=pal, before=before)
    assert np.array_equal(np.load(tmp_path / "predictions" / "r.npy"), after)
    cmp_ = np.asarray(Image.open(tmp_path / "visualizations" / "r_compare.png").convert("RGB"))
    assert cmp_.shape == (4, 4 * 4 + 3 * 2, 3)
    assert cmp_[1, 2 * 6 + 1].tolist() == pal[2] and cmp_[1, 3 * 6 + 1].tolist() == pal[5]


def test_npy_dtype_for_many_classes(tmp_path):
    pal = [[0, 0, 0]] * 300
    pred = np.full((4, 4), 299)
    save_prediction(str(tmp_path), "big", pred, palette=pal)
    saved = np.load(tmp_path / "predictions" / "big.npy")
    assert saved.dtype == np.int16 and (saved == 299).all()
    assert not (tmp_path / "visualizations" / "big_compare.png").exists()


def test_failed_rename_leaves_nothing(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_json_atomic(str(tmp_path / "m.json"), {"a": 1})
    with pytest.raises(OSError, match="disk gone"):
        save_prediction(str(tmp_path), "x", np.zeros((4, 4), int), palette=[[0, 0, 0]] * 2)
    assert os.listdir(tmp_path) == ["predictions"]
    assert os.listdir(tmp_path / "predictions") == []


def test_compare_figure_has_column_titles_and_a_legend_of_the_classes_shown(tmp_path):
    pal = _palette()
    names = [f"class{i}" for i in range(len(pal))]
    pred, gt = np.full((64, 64), 13), np.zeros((64, 64), np.int64)
    save_prediction(str(tmp_path), "t", pred, image=torch.zeros(3, 64, 64), gt=gt, palette=pal, class_names=names)
    fig = np.asarray(Image.open(tmp_path / "visualizations" / "t_compare.png").convert("RGB"))
    title_px, panels_px = 14, 64
    assert fig.shape[1] == 3 * 64 + 4 and fig.shape[0] > title_px + panels_px
    band = fig[:title_px]
    for x0 in (0, 66, 132):  # each column has dark title text above it
        assert (band[:, x0:x0 + 64].sum(-1) < 200).any()
    assert fig[title_px + 10, 140].tolist() == pal[13]  # the panels moved down by the title line
    legend = fig[title_px + panels_px:]
    colours = {tuple(c) for c in legend.reshape(-1, 3).tolist()}
    assert tuple(pal[0]) in colours and tuple(pal[13]) in colours  # swatches of the two classes shown
    assert not any(tuple(pal[c]) in colours for c in (1, 2, 5))    # and of no other class


def test_ignored_pixels_are_named_in_the_legend_in_their_own_colour(tmp_path):
    pal = [[0, 0, 0], [128, 0, 0]]
    gt = np.zeros((64, 64), np.int64)
    gt[:, :8] = 255  # a VOC border
    gt[20:40, 20:40] = 1
    assert class_legend([gt], pal, ["background", "cat"]) == [
        ("background", [0, 0, 0]), ("cat", [128, 0, 0]), ("ignored (255)", (224, 224, 192))]
    save_prediction(str(tmp_path), "v", gt.clip(0, 1), image=torch.zeros(3, 64, 64), gt=gt, palette=pal,
                    class_names=["background", "cat"])
    fig = np.asarray(Image.open(tmp_path / "visualizations" / "v_compare.png").convert("RGB"))
    title_px, panels_px = 14, 64
    assert fig[title_px + 5, 66 + 2].tolist() == [224, 224, 192]  # the border in the ground-truth panel
    legend = fig[title_px + panels_px:]
    assert (legend.reshape(-1, 3) == (224, 224, 192)).all(-1).any()  # and its swatch in the legend
