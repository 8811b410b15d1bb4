"""Each listener's network over the simulated span: wifi, 5G, 4G, 3G, tunnels, offline.

A schedule is a run of spells, each one kind of network with its own downlink rate and
round-trip time, drawn from a Markov chain: home or office wifi for hours, mobile
networks for minutes, a tunnel (no network) for tens of seconds to a few minutes on the
move, and for travellers one long offline period (a flight, no data abroad) per day.
The schedule depends only on the listener's seed, so where a play happens (online or
offline) is part of the ground truth, not of timing luck.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from ingest.client.population import ListenerProfile

__all__ = ["NetworkKind", "NetworkSchedule", "NetworkSpell", "generate_schedule"]

DAY_SECONDS = 86_400.0
# Schedules run past the simulated span so plays that started just before its end finish on a network.
TAIL_SECONDS = 6 * 3600.0


class NetworkKind(StrEnum):
    """What a device is connected through."""

    WIFI = "wifi"
    FIVE_G = "5g"
    FOUR_G = "4g"
    THREE_G = "3g"
    TUNNEL = "tunnel"
    OFFLINE = "offline"


_MOBILE = (NetworkKind.FIVE_G, NetworkKind.FOUR_G, NetworkKind.THREE_G)
# Median downlink (kbit/s), its spread (sigma of a log-normal), round-trip time (ms).
_LINKS: dict[NetworkKind, tuple[float, float, float]] = {
    NetworkKind.FIVE_G: (60_000, 0.7, 25),
    NetworkKind.FOUR_G: (15_000, 0.7, 45),
    NetworkKind.THREE_G: (900, 0.5, 180),
}
# Median dwell time in seconds per kind (log-normal, sigma 0.6).
_DWELL_SECONDS: dict[NetworkKind, float] = {
    NetworkKind.WIFI: 2.5 * 3600,
    NetworkKind.FIVE_G: 20 * 60,
    NetworkKind.FOUR_G: 20 * 60,
    NetworkKind.THREE_G: 8 * 60,
}


@dataclass(frozen=True)
class NetworkSpell:
    """One network from ``start`` to ``end`` (simulated epoch seconds)."""

    kind: NetworkKind
    start: float
    end: float
    downlink_kbps: float
    rtt_ms: float

    @property
    def online(self) -> bool:
        """Whether bytes can flow."""
        return self.kind not in (NetworkKind.TUNNEL, NetworkKind.OFFLINE)


class NetworkSchedule:
    """Contiguous spells; ``at(t)`` is the network at ``t`` (the last spell lasts forever)."""

    def __init__(self, spells: Sequence[NetworkSpell]) -> None:
        if not spells:
            raise ValueError("a schedule needs at least one spell")
        for before, after in itertools.pairwise(spells):
            if before.end != after.start:
                raise ValueError(f"spells must be contiguous: {before} then {after}")
        self.spells = tuple(spells)
        self._starts = [spell.start for spell in self.spells]

    def at(self, moment: float) -> NetworkSpell:
        """The spell in force at ``moment``."""
        return self.spells[max(0, bisect.bisect_right(self._starts, moment) - 1)]

    def next_online(self, moment: float) -> float:
        """``moment`` if the network is up then, else when it next comes up."""
        index = max(0, bisect.bisect_right(self._starts, moment) - 1)
        for spell in self.spells[index:]:
            if spell.online:
                return max(moment, spell.start)
        return max(moment, self.spells[-1].end)

    def offline_from(self, start: float, end: float) -> float | None:
        """When a long offline period begins within ``(start, end)``, if one does."""
        for spell in self.spells[max(0, bisect.bisect_right(self._starts, start) - 1) :]:
            if spell.start >= end:
                return None
            if spell.kind is NetworkKind.OFFLINE and spell.start > start:
                return spell.start
        return None


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0, sigma))


def _spell(
    kind: NetworkKind, start: float, end: float, profile: ListenerProfile, rng: random.Random
) -> NetworkSpell:
    if kind is NetworkKind.WIFI:
        # Mostly the listener's own broadband; sometimes a café's or an office's.
        return NetworkSpell(
            kind, start, end, _lognormal(rng, profile.home_wifi_kbps, 0.3), _lognormal(rng, 15, 0.4)
        )
    if kind in _LINKS:
        median, sigma, rtt_ms = _LINKS[kind]
        return NetworkSpell(
            kind, start, end, max(150.0, _lognormal(rng, median, sigma)), _lognormal(rng, rtt_ms, 0.3)
        )
    return NetworkSpell(kind, start, end, 0.0, 0.0)


def _mobile_kind(profile: ListenerProfile, rng: random.Random) -> NetworkKind:
    draw = rng.random()
    if draw < 0.12:
        return NetworkKind.THREE_G  # a coverage hole
    if profile.has_5g and draw < 0.75:
        return NetworkKind.FIVE_G
    return NetworkKind.FOUR_G


def _next_kind(kind: NetworkKind, profile: ListenerProfile, rng: random.Random) -> NetworkKind:
    if kind is NetworkKind.WIFI:
        return _mobile_kind(profile, rng)
    draw = rng.random()
    if kind in _MOBILE and draw < 0.22:
        return NetworkKind.TUNNEL
    if draw < 0.6:
        return NetworkKind.WIFI
    return _mobile_kind(profile, rng)


def generate_schedule(
    profile: ListenerProfile, rng: random.Random, start: float, end: float
) -> NetworkSchedule:
    """The listener's networks from ``start`` to a little past ``end``."""
    horizon = end + TAIL_SECONDS
    offline: tuple[float, float] | None = None
    if profile.traveller and rng.random() < min(1.0, (end - start) / DAY_SECONDS):
        length = rng.uniform(2 * 3600, 8 * 3600)
        offline_start = rng.uniform(start, max(start, end - length / 2))
        offline = (offline_start, offline_start + length)
    spells: list[NetworkSpell] = []
    kind = NetworkKind.WIFI if rng.random() < 0.6 else _mobile_kind(profile, rng)
    moment = start
    previous_mobile = _mobile_kind(profile, rng)
    while moment < horizon:
        if offline is not None and offline[0] <= moment < offline[1]:
            spells.append(NetworkSpell(NetworkKind.OFFLINE, moment, offline[1], 0.0, 0.0))
            moment, kind = offline[1], NetworkKind.WIFI  # landed: the hotel's or the home wifi
            continue
        if kind is NetworkKind.TUNNEL:
            dwell = rng.uniform(20, 180)
        else:
            dwell = _lognormal(rng, _DWELL_SECONDS[kind], 0.6)
        stop = moment + dwell
        if offline is not None and moment < offline[0] < stop:
            stop = offline[0]
        spells.append(_spell(kind, moment, stop, profile, rng))
        moment = stop
        if kind in _MOBILE:
            previous_mobile = kind
        # Out of a tunnel onto the network the listener was on before it.
        kind = previous_mobile if kind is NetworkKind.TUNNEL else _next_kind(kind, profile, rng)
    return NetworkSchedule(spells)
