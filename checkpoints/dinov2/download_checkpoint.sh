#!/usr/bin/env bash
# Download one of the official DINOv2 checkpoints (torch.hub layout) to
# checkpoints/dinov2/dinov2_NAME_pretrain.pth, the model_path of model_type "dinov2" with "dinov2_arch": NAME.
# Usage: checkpoints/dinov2/download_checkpoint.sh NAME   (NAME: vits14, vitb14, vitl14, vitg14)
# Resumable: an interrupted download stays in dinov2_NAME_pretrain.pth.part and a rerun continues it.
# Atomic: dinov2_NAME_pretrain.pth appears only once the transfer is complete.
# DDPMSEG_DINOV2_BASE overrides the server (tests serve files from 127.0.0.1).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../../scripts/download_lib.sh"
source "$here/../../scripts/download_models.sh"
pick_name "vits14 vitb14 vitl14 vitg14" "$@"
base=${DDPMSEG_DINOV2_BASE:-https://dl.fbaipublicfiles.com/dinov2}
dest=$here/dinov2_$1_pretrain.pth
if [ -f "$dest" ]; then
  echo "$dest already exists; not downloading again"
  exit 0
fi
fetch "${base%/}/dinov2_$1/dinov2_$1_pretrain.pth" "$dest"
echo "saved $dest (use it as model_path)"
