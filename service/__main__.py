"""`python -m bnsweep`: the command line, as the `bnsweep` script runs it."""

import sys

from bnsweep.cli import main

sys.exit(main())
