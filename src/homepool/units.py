"""Sizes for people: `human(1536)` is '1.5 KiB'; `parse_size('500G')` is 500 GiB."""

from __future__ import annotations

import re

_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def human(n: int | float) -> str:
    n = float(n)
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_size(text: str) -> int:
    """'500G', '1.5T', '64M', '4096' (bytes); binary units, an optional 'iB'/'B' suffix."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a size (examples: 500G, 1.5T, 64M)")
    return int(float(m.group(1)) * _SUFFIX[m.group(2).upper()])
