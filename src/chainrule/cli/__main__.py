"""`python -m chainrule.cli ...`: the `chainrule` command, without the installed script."""

import sys

from chainrule.cli import main

sys.exit(main())
