"""Numerical faults stop the run with one line naming the stage, the image or step, and what to try,
and leave nothing trained or written; the NaNs come from real inputs (a damaged checkpoint, a
learning rate that diverges), not from patched code."""
import json
import re

import pytest
import torch

from ddpmseg.commands import train_ddpm
from ddpmseg.commands import train as train_interpreter
from conftest import FAST_INTERPRETER, manifest, rule_weights, shapes64
from ddpmseg.common.numerics import NumericalError
from ddpmseg.classifier.train import model_path, train_ensemble
from test_ddpm_train import TINY
from test_train import make_data, make_settings, quiet


def checkpoint(tmp_path, change):
    """The tiny64 checkpoint (rule weights) with ``change`` applied to its state dict."""
    m = manifest("tiny64")
    sd = rule_weights(m["keys"])
    change(sd)
    torch.save(sd, tmp_path / "broken.pt")
    (tmp_path / "broken.json").write_text(json.dumps({"flags": m["flags"]}))
    return tmp_path / "broken.pt"


def interpreter(tmp_path, ckpt, capsys):
    data = shapes64() / "real"
    exp = tmp_path / "exp"
    code = train_interpreter.main(["--exp", "experiments/celebamask64/ddpm.json", "--exp_dir", str(exp),
                                   "--training_path", str(data / "train"), "--testing_path", str(data / "test"),
                                   "--model_path", str(ckpt), *FAST_INTERPRETER])
    return code, capsys.readouterr().err.strip().splitlines(), exp


def test_nan_weights_stop_feature_extraction_before_anything_is_written(tmp_path, capsys):
    def poison(sd):
        sd["input_blocks.0.0.weight"][0, 0, 0, 0] = float("inf")
    code, err, exp = interpreter(tmp_path, checkpoint(tmp_path, poison), capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: feature extraction: training image ") and "NaN/inf" in err[0]
    assert "step 50, block 4" in err[0] and "use_fp16 false" in err[0]
    assert not exp.exists()


def test_activations_beyond_float16_are_refused_not_stored_as_inf(tmp_path, capsys):
    def amplify(sd):  # finite in float32, but the first block's output (and every skip) is ~1e6 times larger
        sd["input_blocks.0.0.weight"] *= 1e6
        sd["input_blocks.0.0.bias"] *= 1e6
    code, err, exp = interpreter(tmp_path, checkpoint(tmp_path, amplify), capsys)
    assert code == 2 and len(err) == 1, err
    assert "beyond the 65504 that the float16 feature store can hold" in err[0]
    assert not exp.exists()


def test_a_diverging_ensemble_stops_at_the_first_nan_loss(tmp_path):
    store, px = make_data()
    with pytest.raises(NumericalError, match=r"ensemble training: the loss of member\(s\) \[0, 1\] is (nan|inf) "
                                             r"at iteration \d+ \(epoch \d+\).*Lower learning_rate \(now 1e\+30\)"):
        train_ensemble(store, px, make_settings(learning_rate=1e30), str(tmp_path), [0, 1], log=quiet)
    assert not any(p.name.startswith("model_") for p in tmp_path.iterdir())
    # The same data with the published learning rate trains: the fault was the rate, not the check.
    train_ensemble(store, px, make_settings(max_epochs=1), str(tmp_path), [0], log=quiet)
    assert torch.isfinite(torch.load(model_path(str(tmp_path), 0), weights_only=True)["model_state_dict"]
                          ["module.layers.0.weight"]).all()


def test_a_diverging_ddpm_stops_before_saving_nan_weights(tmp_path, capsys):
    data = str(shapes64() / "unlabeled")
    code = train_ddpm.main(["--data_dir", data, "--log_dir", str(tmp_path), *TINY, "--lr", "1e12",
                            "--max_steps", "6", "--save_interval", "1"])
    stderr = capsys.readouterr().err
    err = [line for line in re.split(r"[\r\n]", stderr) if line.startswith("error:")]  # the rest: tqdm
    assert code == 2 and len(err) == 1 and "Traceback" not in stderr, stderr
    assert err[0].startswith("error: DDPM training: the loss is ") and "Lower --lr" in err[0]
    failed = int(err[0].split("at update ")[1].split()[0])
    saved = sorted(p.name for p in tmp_path.glob("model*.pt"))
    assert saved == [f"model{s:06d}.pt" for s in range(failed)]  # every update before, none after
    for name in saved:
        w = torch.load(tmp_path / name, weights_only=True)
        assert all(torch.isfinite(v).all() for v in w.values())
    assert not list(tmp_path.glob("samples_*.png"))
