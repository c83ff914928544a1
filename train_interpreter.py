"""Train and evaluate the pixel-classifier ensemble on DDPM features: `ddpmseg train`, under the original's script name.

    python train_interpreter.py --help      # the same options as `ddpmseg train --help`
"""
import sys

from ddpmseg.commands.train import main

if __name__ == "__main__":
    sys.exit(main(prog="train_interpreter.py"))
