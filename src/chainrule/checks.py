"""Checks of the arguments the engine is given: a layer's size, a learning rate, a flag.

A wrong argument is refused where it is given, in one line that names the class or function, the
argument, what was expected and the value (Keras' "expected a positive integer. Received:
units=0"), not later as a shape error deep inside a forward pass. Bools are not numbers here
(`True` as a layer size would be 1), and NumPy's scalars are (they come out of arrays).
"""

from __future__ import annotations

import numpy as np


def positive_int(where: str, name: str, value) -> int:
    """`value` as an int, if it is an integer > 0 (NumPy's too): 2.5, "3" and True are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def flag(where: str, name: str, value) -> bool:
    """`value` as a bool, if it is True or False (NumPy's too): the string "no" counts as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: {name} must be True or False, got {value!r}")
    return bool(value)


def is_real(value) -> bool:
    """Whether `value` is a real number: an int or a float, NumPy's too; not a bool, nor a string."""
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def number(where: str, name: str, value, ok, expected: str) -> float:
    """`value` as a float, if it is a real number for which `ok(value)` holds (NaN never does)."""
    if not is_real(value) or not ok(value):
        raise ValueError(f"{where}: {name} must be {expected}, got {value!r}")
    return float(value)
