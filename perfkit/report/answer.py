"""A report's first screen: the answer to its study's question in at most three sentences, each number linked to
the row of the figure that carries it; the caveat-laden detail follows."""

from __future__ import annotations

MAX_SENTENCES = 3


def answer_block(sentences: list[str], failures: str = "") -> str:
    """Markdown: the answer (at most :data:`MAX_SENTENCES` sentences, empty ones dropped), then a line saying where
    each number comes from. With no answer, what failed (``failures``: the run's failed requests, by class) says
    why; empty when there is neither."""
    said = [s.strip() for s in sentences if s and s.strip()][:MAX_SENTENCES]
    if not said:
        return (f"### The answer\n\nThis run can't answer the question: {failures.strip()}\n\n" if failures.strip()
                else "")
    return ("### The answer\n\n" + " ".join(said) + "\n\n*Each number links to its figure in the table at the end "
            "(its CI, its n and how it is measured); the detail is below.*\n\n")
