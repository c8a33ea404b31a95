"""`python -m vision_opd.cli ...` (e.g. under torchrun / accelerate launch) runs the `vision-opd` command."""

import sys

from . import main

sys.exit(main())
