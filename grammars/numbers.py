"""Integer ranges as GBNF: the decimal integers in [lo, hi], exactly, as alternatives of digit classes (no leading
zeros), so `minimum`/`maximum` on integers are enforced by the grammar, not checked afterwards."""

from __future__ import annotations


def _digits_between(a: str, b: str) -> list[str]:
    """GBNF alternatives for the digit strings of equal length from a to b inclusive."""
    if not a:
        return [""]
    rest = len(a) - 1
    tail = f" [0-9]{{{rest}}}" if rest else ""
    if a[0] == b[0]:
        return [f'"{a[0]}" {s}'.rstrip() for s in _digits_between(a[1:], b[1:])]
    if a[1:] == "0" * rest and b[1:] == "9" * rest:
        return [f"[{a[0]}-{b[0]}]{tail}"]
    out = [f'"{a[0]}" {s}'.rstrip() for s in _digits_between(a[1:], "9" * rest)]
    if int(a[0]) + 1 <= int(b[0]) - 1:
        out.append(f"[{int(a[0]) + 1}-{int(b[0]) - 1}]{tail}")
    out += [f'"{b[0]}" {s}'.rstrip() for s in _digits_between("0" * rest, b[1:])]
    return out


def _nonneg_range(lo: int, hi: int | None) -> list[str]:
    """Alternatives for the decimal integers in [lo, hi] (hi None: unbounded), no leading zeros."""
    if hi is None:
        width = len(str(lo))
        return _nonneg_range(lo, 10**width - 1) + [f"[1-9] [0-9]{{{width}}} [0-9]*"]
    out: list[str] = []
    for width in range(len(str(lo)), len(str(hi)) + 1):
        a = lo if width == len(str(lo)) else 10 ** (width - 1)
        b = hi if width == len(str(hi)) else 10**width - 1
        out += _digits_between(str(a), str(b))
    return out


def int_range(lo: int | None, hi: int | None) -> str:
    """GBNF body for the integers in [lo, hi]; either bound may be None."""
    alts: list[str] = []
    if lo is None or lo < 0:  # negatives: magnitudes in [max(1, -hi), -lo]
        mag_lo = 1 if hi is None or hi >= 0 else -hi
        mag_hi = None if lo is None else -lo
        if mag_hi is None or mag_lo <= mag_hi:
            alts += [f'"-" {a}' if " " not in a else f'"-" ({a})' for a in _nonneg_range(mag_lo, mag_hi)]
    if hi is None or hi >= 0:
        start = 0 if lo is None else max(lo, 0)
        if hi is None or start <= hi:
            alts += _nonneg_range(start, hi)
    return " | ".join(f"({a})" if " " in a else a for a in alts)
