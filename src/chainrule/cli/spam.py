"""`chainrule spam ...` (interim: the spam app still registers its own commands)."""

from chainrule.apps.spam import add_commands

__all__ = ["add_commands"]
