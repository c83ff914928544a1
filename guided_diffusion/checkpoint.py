"""Load official guided-diffusion checkpoints (plain float32 state dicts) with clear errors.

The most common failure in practice is a checkpoint loaded with flags other than its
training flags (ddpm-segmentation issues #9, #30, #31). The architecture flags that shape
parameters can be read back from the state dict itself, so a mismatch error names them.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import torch

from .script_util import create_model_and_diffusion, merged_flags

SHOW = 5  # how many keys of each kind a mismatch message lists


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not match the model flags."""


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a name -> tensor dict on the CPU."""
    if os.path.isdir(path):
        inside = sorted(n for n in os.listdir(path) if n.endswith((".pt", ".pth")))[:5]
        raise CheckpointError(f"model_path {path} is a folder, not a checkpoint file: name the .pt file itself"
                              + (f" (it holds {', '.join(inside)})" if inside else " (it holds no .pt file)"))
    if not os.path.isfile(path):
        raise CheckpointError(
            f"checkpoint not found: {path}. Download it (e.g. bash checkpoints/ddpm/download_checkpoint.sh "
            f"lsun_bedroom) or fix model_path"
        )
    size = os.path.getsize(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged pickle can fail with almost any exception type
        raise CheckpointError(
            f"{path} ({size:,} bytes) cannot be read as a PyTorch checkpoint: it is truncated, corrupt or "
            f"not a checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}). Re-download it "
            f"(the download scripts resume partial files)"
        ) from None
    # Our trainer and OpenAI's save a plain dict; accept the common wrappers too.
    if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        for key in ("state_dict", "model", "ema"):
            if isinstance(obj.get(key), Mapping) and _is_tensor_dict(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj) or not obj:
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict of name -> tensor; "
            f"expected an official guided-diffusion .pt file"
        )
    bad = [k for k, v in obj.items() if not v.is_floating_point()]
    if bad:
        raise CheckpointError(f"{path}: non-floating-point parameters {bad[:SHOW]}; not a U-Net checkpoint")
    return dict(obj)


def _is_tensor_dict(obj: Mapping) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def infer_flags(state_dict: Mapping[str, torch.Tensor], image_size: int | None = None) -> dict[str, Any]:
    """Read back the architecture flags that determine parameter names and shapes.

    ``attention_resolutions`` needs the image size (it is stored as rates); heads and dropout
    have no parameters and cannot be inferred.
    """
    sd, flags = state_dict, {}
    if "time_embed.0.weight" in sd:
        flags["num_channels"] = sd["time_embed.0.weight"].shape[1]
    if "out.2.weight" in sd:
        flags["learn_sigma"] = sd["out.2.weight"].shape[0] == 6
    flags["class_cond"] = "label_emb.weight" in sd
    emb = [k for k in sd if re.fullmatch(r"input_blocks\.\d+\.0\.emb_layers\.1\.weight", k)]
    if emb:
        k = emb[0]
        out_ch = sd[k.replace("emb_layers.1.weight", "out_layers.3.weight")].shape[0]
        flags["use_scale_shift_norm"] = sd[k].shape[0] == 2 * out_ch
    n_out = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"output_blocks\.(\d+)\.", k))), default=-1)
    up_blocks = sorted({int(m.group(1)) for k in sd
                        if (m := re.match(r"output_blocks\.(\d+)\.\d+\.(?:conv|in_layers|h_upd)", k))
                        and _is_upsampler(sd, k)})
    if n_out and up_blocks:
        per_level = up_blocks[0] + 1
        flags["num_res_blocks"] = per_level - 1
        flags["resblock_updown"] = not any(re.match(r"input_blocks\.\d+\.0\.op\.", k) for k in sd)
        mc = flags.get("num_channels")
        levels = n_out // per_level
        if mc:
            widths = [sd[f"output_blocks.{i * per_level}.0.out_layers.3.weight"].shape[0]
                      for i in range(levels)]
            flags["channel_mult"] = ",".join(str(w // mc) for w in reversed(widths))
        # Attention in input block i <=> its level's rate ds; rates from the block's position.
        attn_ds, ds, idx = set(), 1, 1
        for level in range(levels):
            for _ in range(per_level - 1):
                if f"input_blocks.{idx}.1.qkv.weight" in sd:
                    attn_ds.add(ds)
                idx += 1
            if level != levels - 1:
                idx, ds = idx + 1, ds * 2
        if image_size:
            flags["attention_resolutions"] = ",".join(str(image_size // d) for d in sorted(attn_ds))
    return flags


def _is_upsampler(sd: Mapping[str, torch.Tensor], key: str) -> bool:
    """Is the child named by ``key`` the trailing upsampler of an output block?"""
    m = re.match(r"(output_blocks\.\d+)\.(\d+)\.", key)
    block, child = m.group(1), int(m.group(2))
    if ".conv." in key:
        return True
    # An up-ResBlock is a ResBlock child after index 0 whose conv keeps its width (no skip conv).
    return child > 0 and f"{block}.{child}.skip_connection.weight" not in sd and \
        f"{block}.{child}.qkv.weight" not in sd


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                     flags: Mapping[str, Any] | None = None, source: str = "checkpoint") -> None:
    """Raise one CheckpointError naming mismatched keys and the flags most likely wrong."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k}: checkpoint {list(got[k])} vs model {list(expected[k])}"
              for k in expected if k in got and got[k] != expected[k]]
    if not (missing or unexpected or shapes):
        return
    lines = [f"{source} does not match the model built from the given flags "
             f"({len(got)} tensors in the checkpoint, {len(expected)} in the model)."]
    for title, items in (("missing from checkpoint", missing), ("unexpected in checkpoint", unexpected),
                         ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - SHOW} more)" if len(items) > SHOW else ""
            lines.append(f"  {title} ({len(items)}): " + "; ".join(items[:SHOW]) + more)
    given = merged_flags(flags)
    inferred = infer_flags(state_dict, image_size=given.get("image_size"))
    wrong = [f"--{k} {v} (you gave {given[k]})" for k, v in inferred.items()
             if k in given and _norm(k, given[k], given.get("image_size")) != _norm(k, v, given.get("image_size"))]
    if wrong:
        lines.append("  likely wrong flags; the checkpoint was built with: " + ", ".join(wrong))
    else:
        lines.append("  check the architecture flags (num_channels, num_res_blocks, channel_mult, "
                     "attention_resolutions, learn_sigma, resblock_updown, use_scale_shift_norm)")
    raise CheckpointError("\n".join(lines))


def _norm(key: str, value: Any, image_size: int | None) -> Any:
    """Compare flags by meaning: "" and the default channel_mult are the same architecture."""
    if key == "channel_mult":
        from .script_util import default_channel_mult
        if value == "" and image_size:
            try:
                return tuple(int(m) for m in default_channel_mult(image_size))
            except ValueError:
                return value
        return tuple(int(m) for m in str(value).split(","))
    if key == "attention_resolutions":
        return tuple(sorted(int(r) for r in str(value).split(",") if r.strip()))
    return value


def sidecar_flags(model_path: str) -> dict[str, Any]:
    """The "flags" of ``<checkpoint>.json`` beside ``model_path`` ({} if there is none): our
    trainer writes one for every model and EMA file, so a checkpoint carries its architecture."""
    sidecar = os.path.splitext(model_path)[0] + ".json"
    if not os.path.isfile(sidecar):
        return {}
    try:
        with open(sidecar) as f:
            return dict(json.load(f).get("flags", {}))
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{sidecar} (the flags of {model_path}) is not a JSON object with \"flags\": {e}") from None


def _create(flags: Mapping[str, Any]):
    """create_model_and_diffusion, with flags it cannot build from (e.g. a width GroupNorm cannot split)
    reported as a CheckpointError instead of a traceback from deep inside the U-Net."""
    try:
        return create_model_and_diffusion(**flags)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot build a U-Net from these model flags: {e}") from None


def load_model_and_diffusion(model_path: str | None, flags: Mapping[str, Any], device: str | torch.device = "cpu",
                             seed: int = 0):
    """Build from ``flags``, load ``model_path`` strictly, move to ``device``, eval mode.

    ``model_path`` None keeps the random initial weights, drawn from ``seed`` (the global RNG
    is left as it was): the untrained-U-Net control.

    ``use_fp16`` converts the torso to float16 only on CUDA: CPU float16 convolutions are
    slow and gain nothing, so on CPU the model runs in float32 (and says so).
    """
    flags = dict(flags)
    if model_path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, diffusion = _create(flags)
    else:
        state_dict = read_state_dict(model_path)
        model, diffusion = _create(flags)
        check_state_dict(model, state_dict, flags, source=model_path)
        model.load_state_dict(state_dict, strict=True)
    model.to(device)
    if flags.get("use_fp16") and torch.device(device).type == "cuda":
        model.convert_to_fp16()
    elif flags.get("use_fp16"):
        print("note: use_fp16 ignored on CPU; the U-Net runs in float32")
    return model.eval(), diffusion
