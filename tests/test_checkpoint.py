"""Loading official-format checkpoints: happy path, and one readable error per failure."""
import pytest
import torch

from conftest import FACES_CKPT, manifest, require, rule_weights
from guided_diffusion.checkpoint import (CheckpointError, check_state_dict, infer_flags,
                                         load_model_and_diffusion, read_state_dict)
from guided_diffusion.script_util import create_model_and_diffusion


@pytest.fixture
def tiny64_file(tmp_path):
    m = manifest("tiny64")
    path = tmp_path / "tiny64.pt"
    torch.save(rule_weights(m["keys"]), path)
    return path, m["flags"]


def test_load_roundtrip_matches_rule_weights(tiny64_file):
    path, flags = tiny64_file
    model, diffusion = load_model_and_diffusion(str(path), flags)
    assert not model.training
    ref = rule_weights(manifest("tiny64")["keys"])
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    assert diffusion.num_timesteps == 1000


def test_no_checkpoint_gives_seeded_random_weights_and_keeps_the_global_rng():
    flags = manifest("tiny64")["flags"]
    state = torch.random.get_rng_state()
    a, _ = load_model_and_diffusion(None, flags, seed=1)
    b, _ = load_model_and_diffusion(None, flags, seed=1)
    c, _ = load_model_and_diffusion(None, flags, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not a.training
    key = "input_blocks.1.0.in_layers.2.weight"
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])


@pytest.mark.parametrize("name", ["lsun_256", "tiny256", "tiny64", "tiny64_heads"])
def test_infer_flags_reads_architecture_back(name):
    m = manifest(name)
    sd = {k: torch.empty(s, device="meta") for k, s in m["keys"].items()}
    inferred = infer_flags(sd, image_size=m["flags"]["image_size"])
    mult = {256: "1,1,2,2,4,4", 64: "1,2,3,4"}[m["flags"]["image_size"]]
    expected = {**{k: m["flags"][k] for k in ("num_channels", "learn_sigma", "class_cond",
                                               "use_scale_shift_norm", "num_res_blocks", "resblock_updown")},
                "channel_mult": mult,
                "attention_resolutions": ",".join(sorted(m["flags"]["attention_resolutions"].split(","), key=int, reverse=True))}
    assert inferred == expected


def test_wrong_flags_give_one_readable_error(tiny64_file):
    path, flags = tiny64_file
    wrong = dict(flags, num_channels=64, learn_sigma=False)
    with pytest.raises(CheckpointError) as e:
        load_model_and_diffusion(str(path), wrong)
    msg = str(e.value)
    print(msg)  # shown with -s: this is what a user sees
    assert "does not match the model" in msg
    assert "shape mismatch" in msg and "time_embed.0.weight" in msg
    assert "--num_channels 32 (you gave 64)" in msg
    assert "--learn_sigma True (you gave False)" in msg
    assert len(msg.splitlines()) <= 6


def test_wrong_structure_flags_are_named(tiny64_file):
    path, flags = tiny64_file
    for key, value, hint in [("num_res_blocks", 3, "--num_res_blocks 2"),
                             ("resblock_updown", False, "--resblock_updown True"),
                             ("attention_resolutions", "32,16,8", "--attention_resolutions 16,8"),
                             ("use_scale_shift_norm", False, "--use_scale_shift_norm True")]:
        model, _ = create_model_and_diffusion(**dict(flags, **{key: value}))
        with pytest.raises(CheckpointError, match="missing from checkpoint|unexpected|shape") as e:
            check_state_dict(model, read_state_dict(str(path)), dict(flags, **{key: value}))
        assert hint in str(e.value), (key, str(e.value))


def test_missing_truncated_and_foreign_files(tmp_path, tiny64_file):
    path, flags = tiny64_file
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_state_dict(str(tmp_path / "nope.pt"))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a checkpoint"):
        read_state_dict(str(truncated))
    text = tmp_path / "notes.pt"
    text.write_text("hello, I am not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read as a PyTorch checkpoint"):
        read_state_dict(str(text))
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_state_dict(str(tensor))


def test_wrapped_state_dict_is_unwrapped(tmp_path, tiny64_file):
    path, flags = tiny64_file
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": torch.load(path, weights_only=True), "step": 3}, wrapped)
    assert set(read_state_dict(str(wrapped))) == set(manifest("tiny64")["keys"])


def test_faces_reference_checkpoint_loads_with_its_flags():
    import json
    path = require(FACES_CKPT)
    flags = json.loads(path.with_suffix(".json").read_text())["flags"]
    model, _ = load_model_and_diffusion(str(path), flags)
    assert model.out_channels == 6
