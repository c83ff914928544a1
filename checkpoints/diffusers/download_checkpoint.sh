#!/usr/bin/env bash
# Download one of the hub's EMA DDPMs of Ho et al. (google/ddpm-ema-NAME-256, diffusers UNet2DModel +
# DDPMScheduler) to checkpoints/diffusers/ddpm-ema-NAME-256/, the model_path of model_type "diffusers".
# Usage: checkpoints/diffusers/download_checkpoint.sh NAME   (NAME: bedroom, cat, church, celebahq)
# Resumable: an interrupted download stays in ddpm-ema-NAME-256.part/ and a rerun continues it.
# Atomic: ddpm-ema-NAME-256/ appears only once every file is complete.
# DDPMSEG_HUB_BASE overrides the hub (see scripts/download_models.sh).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../../scripts/download_lib.sh"
source "$here/../../scripts/download_models.sh"
pick_name "bedroom cat church celebahq" "$@"
download_hub_folder "google/ddpm-ema-$1-256" "$here/ddpm-ema-$1-256" \
  config.json scheduler_config.json diffusion_pytorch_model.bin
