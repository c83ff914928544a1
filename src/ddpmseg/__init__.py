"""ddpm-seg: label-efficient semantic segmentation with frozen diffusion-model features."""
