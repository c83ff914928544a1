#!/usr/bin/env bash
# Download a Stable Diffusion pipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) to
# checkpoints/stable_diffusion/NAME/, the model_path of model_type "stable_diffusion".
# Usage: checkpoints/stable_diffusion/download_checkpoint.sh NAME
#   NAME: sd15 (stable-diffusion-v1-5/stable-diffusion-v1-5, what Diffusion Hyperfeatures use) or
#         sd21 (stabilityai/stable-diffusion-2-1, DIFT's). About 5 GB each (float32 weights).
# Resumable: an interrupted download stays in NAME.part/ and a rerun continues it.
# Atomic: NAME/ appears only once every file is complete.
# DDPMSEG_HUB_BASE overrides the hub (see scripts/download_models.sh).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../../scripts/download_lib.sh"
source "$here/../../scripts/download_models.sh"
pick_name "sd15 sd21" "$@"
case $1 in
  sd15) repo=stable-diffusion-v1-5/stable-diffusion-v1-5 ;;
  sd21) repo=stabilityai/stable-diffusion-2-1 ;;
esac
download_hub_folder "$repo" "$here/$1" \
  model_index.json scheduler/scheduler_config.json \
  tokenizer/vocab.json tokenizer/merges.txt tokenizer/tokenizer_config.json tokenizer/special_tokens_map.json \
  text_encoder/config.json text_encoder/model.safetensors \
  unet/config.json unet/diffusion_pytorch_model.safetensors \
  vae/config.json vae/diffusion_pytorch_model.safetensors
