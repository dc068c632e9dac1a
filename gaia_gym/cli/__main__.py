"""`python -m gaia_gym.cli` (also under `torchrun -m gaia_gym.cli train ...`)."""

import sys

from gaia_gym.cli import main

sys.exit(main())
