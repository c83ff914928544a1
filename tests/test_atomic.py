"""ddpmseg.common.atomic: writes land whole or not at all."""
import json
import os

import pytest
import torch

from conftest import strict_json
from ddpmseg.common.atomic import atomic_write, torch_save_atomic, write_json_atomic, write_text_atomic


def test_json_and_text_atomic(tmp_path):
    path = tmp_path / "sub" / "m.json"
    write_json_atomic(str(path), {"miou": 0.5, "per_class": [1, 2]})
    text = path.read_text()
    assert text.endswith("}\n") and json.loads(text) == {"miou": 0.5, "per_class": [1, 2]}
    assert text == json.dumps({"miou": 0.5, "per_class": [1, 2]}, indent=1) + "\n"
    write_text_atomic(str(tmp_path / "r.md"), "héllo\n")
    assert (tmp_path / "r.md").read_text(encoding="utf-8") == "héllo\n"
    assert sorted(os.listdir(tmp_path / "sub")) == ["m.json"]


def test_existing_file_survives_failed_write(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    write_json_atomic(str(path), {"old": True})

    def fail(f):
        f.write(b"{\"new\": ")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(str(path), fail)
    assert json.loads(path.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["m.json"]


def test_torch_save_atomic_round_trip(tmp_path):
    path = tmp_path / "m.pth"
    torch_save_atomic({"w": torch.ones(2)}, str(path))
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["m.pth"]


def test_non_finite_numbers_are_written_as_null(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(str(path), {"best_batch_loss": float("inf"), "x": [float("nan"), -float("inf"), 1.5],
                                  "nested": {"t": (2.0, float("inf"))}})
    assert strict_json(path.read_text()) == {"best_batch_loss": None, "x": [None, None, 1.5],
                                             "nested": {"t": [2.0, None]}}
    with pytest.raises(ValueError, match="not JSON: Infinity"):
        strict_json(json.dumps({"a": float("inf")}))  # the parser itself refuses what Python would write
