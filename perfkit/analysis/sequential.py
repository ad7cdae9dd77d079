"""Measuring until the answer is in: a group-sequential plan whose looks keep the error rate what it says.

Looking at the data after every batch and stopping at the first "p < 0.05" calls a difference that isn't there
far more often than 5% of the time (with five looks, about 14%). Here the looks are fixed before any data: after
``first_n`` repetitions of each candidate, then every ``step_n`` more, up to ``max_n``. Each look tests at α/K, K
the number of planned looks (Bonferroni over the looks), so stopping at whichever look answers keeps the chance
of any false call at most α; stopping early because the time budget is spent can only lower it.
"""

from __future__ import annotations

from dataclasses import dataclass

from perfkit.analysis import stats

ANSWERED, BUDGET, LAST_LOOK = "answered", "budget", "last look"  # why measuring stopped


@dataclass(frozen=True)
class Looks:
    """The planned looks: after ``first_n`` repetitions of every candidate, then every ``step_n`` more (default
    ``first_n``), up to ``max_n``; ``alpha``: the error rate over all looks together."""

    first_n: int
    max_n: int | None = None
    step_n: int | None = None
    alpha: float = 1 - stats.CONFIDENCE

    @property
    def ns(self) -> list[int]:
        """The repetitions per candidate at each planned look."""
        last = max(self.first_n, self.max_n or self.first_n)
        step = max(1, self.step_n or self.first_n)
        out = list(range(self.first_n, last + 1, step))
        return out if out[-1] == last else out + [last]

    @property
    def k(self) -> int:
        return len(self.ns)

    @property
    def confidence(self) -> float:
        """The confidence every look (and the final claim) is tested at: 1 − α/K."""
        return 1 - self.alpha / self.k

    def sentence(self, taken: list[int], stopped: str, what: str = "runs of each") -> str:
        """How the measuring went, in words: the looks taken of the ones planned, the level each was tested at and
        why it stopped."""
        if self.k == 1:
            return ""
        why = {ANSWERED: "the answer was in", BUDGET: "the time budget was spent",
               LAST_LOOK: "the last planned look was reached"}.get(stopped, stopped)
        done = ", ".join(str(n) for n in taken) or "none"
        return (f"Measured until answered: looks after {done} {what} (planned: "
                f"{', '.join(str(n) for n in self.ns)}); each look is tested at {100 * self.confidence:.3g}% "
                f"so that stopping at any of the {self.k} planned looks keeps the chance of a false call ≤ "
                f"{100 * self.alpha:g}%. It stopped because {why}.")
