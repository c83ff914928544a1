#!/usr/bin/env bash
# Download one of the paper's pretrained DDPM (guided-diffusion U-Net) checkpoints to checkpoints/ddpm/<name>.pt.
# Usage: checkpoints/ddpm/download_checkpoint.sh NAME   (from any directory)
# Resumable: an interrupted download stays in <name>.pt.part and a rerun continues it.
# Atomic: <name>.pt appears only once the transfer is complete.
# DDPMSEG_DOWNLOAD_BASE overrides the server (see scripts/download_lib.sh).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../../scripts/download_lib.sh"
download_checkpoint ddpm pt "$here" "$@"
