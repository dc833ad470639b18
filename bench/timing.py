"""Timing two sides fairly: interleaved rounds, the median ratio and its spread.

Each round runs every side once, in turn (the order flips every round, so
neither side always runs on a warm or a cold machine); a round's ratio is
peer time / our time. The median of the rounds' ratios is quoted, with the
lowest and highest as the spread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """(result, wall-clock seconds) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def interleaved(sides: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each side's times over ``rounds`` rounds; a side is a call returning the seconds it measured."""
    names = list(sides)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            out[n].append(sides[n]())
    return out


def ratios(peer: list[float], ours: list[float]) -> list[float]:
    """Per-round peer / ours."""
    return [p / o for p, o in zip(peer, ours)]


def spread(values: list[float], fmt: str = ".2f", unit: str = "x") -> str:
    """``median (lowest-highest)``, e.g. ``2.61x (2.40-2.75x)``."""
    return (f"{statistics.median(values):{fmt}}{unit} "
            f"({min(values):{fmt}}-{max(values):{fmt}}{unit})")
