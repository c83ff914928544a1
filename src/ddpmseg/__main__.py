"""``python -m ddpmseg`` (and ``torchrun -m ddpmseg``): the ``ddpmseg`` command."""
import sys

from ddpmseg.commands import main

sys.exit(main())
