"""`python -m vitc.cli ...` (how torchrun, srun and child processes start vitc)."""

import sys

from vitc.cli import main

sys.exit(main())
