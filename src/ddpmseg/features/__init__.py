"""Per-pixel features: the DDPM U-Net's decoder activations and the RGB+xy baseline (``ddpm``), the
comparison backbones MAE and SwAV (``backbones``) and the native-resolution store (``store``)."""
