"""Device budgets: a fraction of the full encoder's MACs, or absolute MACs with a unit. A leaf.

One parser, :func:`parse_budget`, serves ``device_budget``, ``search_budgets`` and the model's
``budget()``, so every budget reads the same and every error names both forms.
"""

import math
import re
from dataclasses import dataclass
from typing import Optional

_MAC_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}
_BUDGET_STRING = re.compile(r"^\s*(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)\s*([KMG]?)\s*MACs\s*$")
BUDGET_FORMS = ("a fraction of the full encoder's MACs as a number in (0, 1] (e.g. 0.5), or "
                "absolute MACs as a string with a unit (e.g. \"400K MACs\", \"1.2M MACs\", "
                "\"378880 MACs\"; units K, M, G)")


def is_finite_number(value):
    """An int or float, not a bool, neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_fraction(value):
    """A finite number in (0, 1]."""
    return is_finite_number(value) and 0 < value <= 1


@dataclass(frozen=True)
class Budget:
    """A per-device compute budget: exactly one of ``fraction`` (of the full encoder's MACs) or
    ``macs`` (absolute multiply-accumulates)."""

    fraction: Optional[float] = None
    macs: Optional[float] = None

    def to_macs(self, full_macs):
        """The budget in MACs, given the full encoder's MACs."""
        return self.fraction * full_macs if self.fraction is not None else self.macs

    def __str__(self):
        return (f"{self.fraction:g} of the full encoder" if self.fraction is not None
                else f"{self.macs:,.0f} MACs")


def parse_budget(key, value):
    """``value`` of config key ``key`` as a :class:`Budget`.

    A number is a fraction in (0, 1]; absolute MACs are a string with a unit, so that 1.5 (a typo
    for 0.15? 1.5 MACs?) is an error rather than a guess. Raises ValueError naming the key, the
    value and both allowed forms.
    """
    error = ValueError(f"config key `{key}` = {value!r} is invalid: expected {BUDGET_FORMS}")
    if isinstance(value, str):
        match = _BUDGET_STRING.match(value)
        if not match:
            raise error
        macs = float(match.group(1)) * _MAC_UNITS[match.group(2)]
        if not (math.isfinite(macs) and macs > 0):
            raise error
        return Budget(macs=macs)
    if not is_fraction(value):
        raise error
    return Budget(fraction=float(value))


def is_budget(value):
    """Whether ``value`` parses as a budget (either form)."""
    try:
        parse_budget("budget", value)
    except ValueError:
        return False
    return True


__all__ = ["BUDGET_FORMS", "Budget", "is_budget", "is_finite_number", "is_fraction",
           "parse_budget"]
