#!/usr/bin/env bash
# Download one of the paper's pretrained SwAV (ResNet-50-w2) checkpoints to checkpoints/swav_w2/<name>.pth.
# Usage: checkpoints/swav_w2/download_checkpoint.sh NAME   (from any directory)
# Resumable: an interrupted download stays in <name>.pth.part and a rerun continues it.
# Atomic: <name>.pth appears only once the transfer is complete.
# DDPMSEG_DOWNLOAD_BASE overrides the server (see scripts/download_lib.sh).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../../scripts/download_lib.sh"
download_checkpoint swav_w2 pth "$here" "$@"
