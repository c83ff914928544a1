#!/usr/bin/env bash
# Download one of the paper's pretrained MAE (ViT-L/8, 256 px) checkpoints to checkpoints/mae/<name>.pth.
# Usage: checkpoints/mae/download_checkpoint.sh NAME   (from any directory)
# Resumable: an interrupted download stays in <name>.pth.part and a rerun continues it.
# Atomic: <name>.pth appears only once the transfer is complete.
# DDPMSEG_DOWNLOAD_BASE overrides the server (see scripts/download_lib.sh).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../../scripts/download_lib.sh"
download_checkpoint mae pth "$here" "$@"
