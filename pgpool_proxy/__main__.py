"""`python -m pgpool_proxy`: the command line."""

import sys

from .cli import main

sys.exit(main())
