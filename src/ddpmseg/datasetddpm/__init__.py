"""DatasetDDPM: samples labelled by a trained interpreter run (``labelling``), then DeepLab trained on
them (``deeplab``)."""
