"""Our own implementation of OpenAI's guided-diffusion U-Net and Gaussian diffusion.

Checkpoint-compatible with the official releases (same state-dict names and shapes) and
numerically equal to them (see tests/test_unet.py and the fixtures in tests/fixtures).
"""
