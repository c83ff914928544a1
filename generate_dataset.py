"""DatasetDDPM: sample images from a run's DDPM and label them with its trained ensemble: `ddpmseg generate`, under the original's script name.

    python generate_dataset.py --help      # the same options as `ddpmseg generate --help`
"""
import sys

from ddpmseg.commands.generate import main

if __name__ == "__main__":
    sys.exit(main(prog="generate_dataset.py"))
