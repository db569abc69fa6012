"""File sizes as people read them, shared by save errors and ``runner inspect`` so both print the same text."""

from __future__ import annotations

_DECIMAL_UNITS = (("kB", 1e3), ("MB", 1e6), ("GB", 1e9))
_LARGEST_UNIT = ("TB", 1e12)


def format_size(size_bytes: int) -> str:
    """Format ``size_bytes`` in decimal units with one decimal: ``512 B``, ``2.0 kB``, ``600.0 kB``, ``4.2 MB``."""
    if size_bytes < 1000:
        return f"{size_bytes} B"
    for unit, scale in _DECIMAL_UNITS:
        # Choose the unit after rounding, so 999,960 bytes reads 1.0 MB and not 1000.0 kB.
        if round(size_bytes / scale, 1) < 1000:
            return f"{size_bytes / scale:.1f} {unit}"
    unit, scale = _LARGEST_UNIT
    return f"{size_bytes / scale:.1f} {unit}"
