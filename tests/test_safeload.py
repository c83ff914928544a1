"""Safe loading: files of a run folder load with weights_only; a file that needs pickled code is
refused with one line, and its code never runs."""
import os
import shutil

import pytest
import torch

from ddpmseg.commands import evaluate
import ddpmseg.classifier.train as train_mod
from ddpmseg.common.safeload import load_plain
from guided_diffusion.checkpoint import CheckpointError
from test_train import make_data, make_settings, quiet


class Payload:
    """Unpickling this calls os.mkdir(marker): proof of whether pickled code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_plain_file_loads(tmp_path):
    torch.save({"w": torch.ones(2), "stats": {"epochs": 3, "stopped": "early_stop"}}, tmp_path / "f.pt")
    assert load_plain(str(tmp_path / "f.pt"), "an ensemble member")["stats"]["epochs"] == 3


def test_evaluate_refuses_a_member_with_pickled_code(tiny_interpreter_run, tmp_path, capsys):
    run = tmp_path / "received"
    shutil.copytree(tiny_interpreter_run, run)
    marker = tmp_path / "code_ran"
    member = torch.load(run / "model_1.pth", weights_only=True)
    torch.save({**member, "extra": Payload(str(marker))}, run / "model_1.pth")
    out = tmp_path / "eval"
    assert evaluate.main(["--run", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "model_1.pth is refused" in err[0]
    assert "posix.mkdir" in err[0] or "os.mkdir" in err[0]
    assert not marker.exists()  # the payload never ran
    assert not (out / "metrics.json").exists()


def test_training_refuses_a_snapshot_with_pickled_code(tmp_path):
    store, px = make_data()
    marker = tmp_path / "code_ran"
    torch.save({"members": [0], "num_pixels": len(px.labels), "x": Payload(str(marker))},
               tmp_path / train_mod.STATE_FILE)
    with pytest.raises(CheckpointError, match="train_state.pt is refused"):
        train_mod.train_ensemble(store, px, make_settings(), str(tmp_path), [0], log=quiet)
    assert not marker.exists()
    assert not os.path.exists(train_mod.model_path(str(tmp_path), 0))


def test_a_truncated_member_is_one_clear_error(tmp_path):
    torch.save({"w": torch.ones(100)}, tmp_path / "model_0.pth")
    data = (tmp_path / "model_0.pth").read_bytes()
    (tmp_path / "model_0.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read as an ensemble member"):
        load_plain(str(tmp_path / "model_0.pth"), "an ensemble member")
