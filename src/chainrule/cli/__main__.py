"""`python -m chainrule.cli`: the same entry point as the `chainrule` script."""

import sys

from chainrule.cli import main

sys.exit(main())
