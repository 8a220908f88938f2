"""`python -m vidsel.train ...` (and torchrun -m vidsel.train ...)."""

import sys

from vidsel.train import main

sys.exit(main())
