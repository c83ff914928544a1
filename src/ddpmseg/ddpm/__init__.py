"""A DDPM of our own: training (``train``), drawing samples (``sampling``) and saving many, sharded
and resumable (``generate``)."""
