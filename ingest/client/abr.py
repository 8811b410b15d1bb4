"""Adaptive bitrate: estimate throughput, pick each segment's rendition, with hysteresis.

The estimator is Shaka Player's: two exponentially weighted moving averages of measured
throughput, weighted by transfer time, one quick and one slow, and the lower of the two
is the estimate, so it drops fast and recovers with caution. Transfers too small to
measure a rate (mostly latency) are ignored.

The policy never stalls to keep quality: below a panic level of buffer it takes the
lowest rendition; it steps down at once when the estimate no longer sustains the
current rendition or when the next segment would not arrive before the buffer runs
dry; it steps up one rendition at a time, only with a comfortable buffer, only after
holding the current one for a few segments, and only when the estimate clears the
higher rate by a margin (so it does not flap between two renditions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest.cdn.media import DEFAULT_SEGMENT_MS, RENDITIONS_KBPS

__all__ = ["AbrPolicy", "ThroughputEstimator"]


@dataclass
class _Ewma:
    half_life_seconds: float
    _estimate: float = 0.0
    _total_weight: float = 0.0

    def add(self, weight_seconds: float, value: float) -> None:
        alpha = 0.5 ** (weight_seconds / self.half_life_seconds)
        self._estimate = alpha * self._estimate + (1 - alpha) * value
        self._total_weight += weight_seconds

    def value(self) -> float:
        # Zero-initialised averages are biased low until enough weight has accrued.
        zero_factor = 1 - 0.5 ** (self._total_weight / self.half_life_seconds)
        return self._estimate / zero_factor


@dataclass
class ThroughputEstimator:
    """Throughput from measured transfers: the lower of a fast and a slow moving average."""

    default_kbps: float = 1_000.0
    fast_half_life_seconds: float = 2.0
    slow_half_life_seconds: float = 8.0
    min_sample_bytes: int = 16_000
    samples: int = 0
    _fast: _Ewma = field(init=False)
    _slow: _Ewma = field(init=False)

    def __post_init__(self) -> None:
        self._fast = _Ewma(self.fast_half_life_seconds)
        self._slow = _Ewma(self.slow_half_life_seconds)

    def sample(self, transfer_seconds: float, size_bytes: int) -> None:
        """Record ``size_bytes`` received in ``transfer_seconds`` (after the first byte)."""
        if size_bytes < self.min_sample_bytes or transfer_seconds <= 0:
            return
        kbps = size_bytes * 8 / 1000 / transfer_seconds
        # Weight by transfer time, but let a very quick transfer still count a little.
        weight = max(transfer_seconds, 0.05)
        self._fast.add(weight, kbps)
        self._slow.add(weight, kbps)
        self.samples += 1

    def estimate_kbps(self) -> float:
        """The throughput to plan with (``default_kbps`` before any sample)."""
        if self.samples == 0:
            return self.default_kbps
        return min(self._fast.value(), self._slow.value())


@dataclass(frozen=True)
class AbrPolicy:
    """Which rendition to fetch next, from the estimate, the buffer and the current rendition."""

    renditions_kbps: tuple[int, ...] = RENDITIONS_KBPS
    segment_ms: int = DEFAULT_SEGMENT_MS
    safety: float = 0.7  # plan with 70 % of the estimate: throughput varies within a segment
    startup_safety: float = 0.5
    up_margin: float = 1.3  # to step up, the estimate must clear the higher rate by 30 % more
    min_buffer_up_ms: int = 10_000
    panic_buffer_ms: int = 2_000
    hold_segments: int = 2

    def __post_init__(self) -> None:
        if not self.renditions_kbps or list(self.renditions_kbps) != sorted(set(self.renditions_kbps)):
            raise ValueError("renditions_kbps must be distinct and ascending")
        if not (0 < self.startup_safety <= 1 and 0 < self.safety <= 1 and self.up_margin >= 1):
            raise ValueError("safety factors must be in (0, 1] and up_margin at least 1")

    @property
    def lowest(self) -> int:
        """The lowest rendition: the one that never waits for quality."""
        return self.renditions_kbps[0]

    def _highest_within(self, kbps: float) -> int:
        fitting = [rate for rate in self.renditions_kbps if rate <= kbps]
        return fitting[-1] if fitting else self.lowest

    def _arrives_in_time(self, rate_kbps: int, estimate_kbps: float, buffer_ms: float) -> bool:
        """Whether a whole segment at ``rate_kbps`` arrives before ``buffer_ms`` of audio has played."""
        return self.segment_ms * rate_kbps / (estimate_kbps * self.safety) < buffer_ms * 0.8

    def _step_down_until_in_time(self, rate_kbps: int, estimate_kbps: float, buffer_ms: float) -> int:
        while rate_kbps > self.lowest and not self._arrives_in_time(rate_kbps, estimate_kbps, buffer_ms):
            rate_kbps = self.renditions_kbps[self.renditions_kbps.index(rate_kbps) - 1]
        return rate_kbps

    def choose_start(self, estimate_kbps: float, head_ms: float) -> int:
        """The rendition of a play's first ``head_ms``: cautious, since the listener is waiting.

        Its rate must be well within the estimate, and the segment after the head must
        arrive before the head has played out.
        """
        rate = self._highest_within(estimate_kbps * self.startup_safety)
        return self._step_down_until_in_time(rate, estimate_kbps, head_ms)

    def choose(
        self, current_kbps: int, estimate_kbps: float, buffer_ms: float, segments_since_switch: int
    ) -> int:
        """The rendition of the next segment, given the rendition of the last one."""
        if buffer_ms < self.panic_buffer_ms:
            return self.lowest
        sustainable = estimate_kbps * self.safety
        if current_kbps > sustainable or not self._arrives_in_time(current_kbps, estimate_kbps, buffer_ms):
            rate = self._highest_within(min(sustainable, current_kbps))
            return self._step_down_until_in_time(rate, estimate_kbps, buffer_ms)
        higher = [rate for rate in self.renditions_kbps if rate > current_kbps]
        if (
            higher
            and segments_since_switch >= self.hold_segments
            and buffer_ms >= self.min_buffer_up_ms
            and sustainable >= higher[0] * self.up_margin
            and self._arrives_in_time(higher[0], estimate_kbps, buffer_ms)
        ):
            return higher[0]
        return current_kbps
