"""Train DeepLabV3 on a DDPM-generated synthetic dataset and test it on the real one (DatasetDDPM): `ddpmseg deeplab`, under the original's script name.

    python train_deeplab.py --help      # the same options as `ddpmseg deeplab --help`
"""
import sys

from ddpmseg.commands.deeplab import main

if __name__ == "__main__":
    sys.exit(main(prog="train_deeplab.py"))
