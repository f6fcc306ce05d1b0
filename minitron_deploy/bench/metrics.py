"""Serving metrics from timed generations: one :class:`Timing` per repetition, medians reported."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Timing:
    """One timed generation of ``batch`` requests, each ``osl`` tokens long.

    ``ttft_s``: start to the first output token of every request (the batched prefill);
    ``e2e_s``: start to the last token. ``output_tokens`` is what the backend returned.
    """

    batch: int
    osl: int
    ttft_s: float
    e2e_s: float
    output_tokens: int

    def check(self) -> None:
        """Refuse inconsistent timings (a backend bug, not a user error)."""
        if self.output_tokens != self.batch * self.osl:
            raise AssertionError(f"backend returned {self.output_tokens} tokens, "
                                 f"expected batch x osl = {self.batch * self.osl}")
        if not 0 < self.ttft_s <= self.e2e_s:
            raise AssertionError(f"inconsistent timing: ttft {self.ttft_s} s, e2e {self.e2e_s} s")


@dataclass(frozen=True)
class Metrics:
    """Per-repetition metrics (or the median of each over repetitions).

    ``itl_ms`` is the mean gap between output tokens after the first; ``per_user_tok_s`` its
    inverse (the decode speed one request sees); ``output_tok_s`` counts all requests'
    tokens over the whole run, prefill included.
    """

    output_tok_s: float
    requests_s: float
    ttft_ms: float
    itl_ms: float | None
    per_user_tok_s: float | None
    e2e_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def metrics_of(t: Timing) -> Metrics:
    t.check()
    itl = (t.e2e_s - t.ttft_s) / (t.osl - 1) if t.osl > 1 else None
    return Metrics(output_tok_s=t.output_tokens / t.e2e_s, requests_s=t.batch / t.e2e_s,
                   ttft_ms=1e3 * t.ttft_s, itl_ms=None if itl is None else 1e3 * itl,
                   per_user_tok_s=None if not itl else 1.0 / itl, e2e_s=t.e2e_s)


def median_metrics(timings: list[Timing]) -> Metrics:
    """The median of every metric over the repetitions (each metric on its own)."""
    if not timings:
        raise ValueError("no timed repetitions")
    per_rep = [metrics_of(t).as_dict() for t in timings]

    def med(key):
        values = [m[key] for m in per_rep]
        return None if None in values else statistics.median(values)

    return Metrics(**{key: med(key) for key in per_rep[0]})
