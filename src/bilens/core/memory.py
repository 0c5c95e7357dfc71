"""Memory budgets: the one knob (`memory="4GiB"`) that bounds how much work bilens does at once."""

from __future__ import annotations

import re

from bilens.core.errors import BilensError

DEFAULT_MEMORY = "4GiB"


def parse_memory(memory: str | int | float) -> int:
    """Bytes from `"4GiB"`, `"512MB"`, `"1e9"` or a number.

    Args:
        memory: a size with an optional unit (B, KB, MB, GB, KiB, MiB, GiB).

    Returns:
        The size in bytes.
    """
    if isinstance(memory, (int, float)) and not isinstance(memory, bool):
        if memory <= 0:
            raise BilensError(f"memory: expected a positive size, got {memory!r}")
        return int(memory)
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(memory))
    if m is None or m.group(2).lower() not in units:
        raise BilensError(f"memory: cannot read {memory!r}; write e.g. '4GiB', '512MB' or a "
                          f"number of bytes")
    try:
        value = float(m.group(1)) * units[m.group(2).lower()]
    except ValueError:
        raise BilensError(f"memory: cannot read {memory!r}; write e.g. '4GiB'") from None
    if value <= 0:
        raise BilensError(f"memory: expected a positive size, got {memory!r}")
    return int(value)
