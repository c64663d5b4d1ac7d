"""``python -m gainx`` (also what ``torchrun -m gainx train ...`` runs)."""

import sys

from gainx.cli import main

sys.exit(main())
