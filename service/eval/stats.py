"""Counts, rates and 95% Wilson score intervals: every rate in a report carries the counts behind it."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054
"""Two-sided 95% normal quantile."""


def wilson_interval(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when there is nothing to estimate from."""
    if total < 0 or successes < 0 or successes > total:
        raise ValueError(f"expected 0 <= successes <= total, got successes={successes}, total={total}")
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """`k` of `n`, with its 95% Wilson interval."""

    k: int
    n: int

    @property
    def rate(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n)

    def as_dict(self) -> dict:
        low, high = self.ci
        rate = self.rate
        return {"k": self.k, "n": self.n, "rate": None if rate is None else round(rate, 4),
                "ci95": [round(low, 4), round(high, 4)]}  # fmt: skip

    def __str__(self) -> str:
        if not self.n:
            return "n/a (0)"
        low, high = self.ci
        return f"{self.rate:.1%} ({self.k}/{self.n}, {low:.0%}-{high:.0%})"


def rate_of(flags: list[bool]) -> Rate:
    return Rate(sum(1 for f in flags if f), len(flags))
