# Sourced by the scripts in this folder: the datasets they accept and the U-Net flags of each.
DATASETS="bedroom_28 ffhq_34 cat_15 horse_21 celeba_19 ade_bedroom_30 celebamask64"

# model_flags <dataset>: prints the guided-diffusion flags of the checkpoint that dataset uses.
model_flags() {
  if [ "$1" = celebamask64 ]; then
    echo ""  # its config carries the flags of the 64 px faces checkpoint
  else
    # The released 256 px LSUN/FFHQ checkpoints (ddpm-segmentation's MODEL_FLAGS).
    echo "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1
      --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64
      --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"
  fi
}

# check_dataset <dataset> <usage line>: exits 2 with the usage unless the dataset is known.
check_dataset() {
  if [[ " $DATASETS " != *" $1 "* ]]; then
    echo "usage: $2   (dataset: ${DATASETS// /, })" >&2
    exit 2
  fi
}
