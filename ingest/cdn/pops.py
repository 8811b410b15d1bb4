"""Points of presence: where the CDN stub serves from, and which territory goes where.

Each PoP adds its backbone round-trip time to every response and, on a cache miss, the
round trip to the origin. A client is routed by territory, as GeoDNS would route it;
a territory no PoP claims goes to ``DEFAULT_POP``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_POP", "DEFAULT_POPS", "PointOfPresence", "pop_for_territory", "pops_by_name"]


@dataclass(frozen=True)
class PointOfPresence:
    """One edge site: its name, round trip to its region's clients, and to the origin."""

    name: str
    city: str
    rtt_ms: float
    origin_rtt_ms: float
    territories: frozenset[str]

    def __post_init__(self) -> None:
        if not self.name or self.rtt_ms < 0 or self.origin_rtt_ms < 0:
            raise ValueError(f"a PoP needs a name and non-negative round-trip times: {self!r}")


# The origin sits in the US east; PoPs further from it pay a longer round trip on a miss.
DEFAULT_POPS: tuple[PointOfPresence, ...] = (
    PointOfPresence("sto", "Stockholm", 6, 95, frozenset({"SE", "NO", "FI", "DK", "IS", "EE"})),
    PointOfPresence("lon", "London", 8, 75, frozenset({"GB", "IE"})),
    PointOfPresence(
        "fra", "Frankfurt", 9, 85, frozenset({"DE", "FR", "NL", "BE", "AT", "CH", "ES", "IT", "PL", "PT"})
    ),
    PointOfPresence("iad", "Ashburn", 10, 8, frozenset({"US", "CA"})),
    PointOfPresence("dfw", "Dallas", 12, 35, frozenset({"MX"})),
    PointOfPresence("gru", "São Paulo", 14, 120, frozenset({"BR", "AR", "CL", "CO"})),
    PointOfPresence("nrt", "Tokyo", 10, 160, frozenset({"JP", "KR"})),
    PointOfPresence("bom", "Mumbai", 18, 190, frozenset({"IN"})),
    PointOfPresence("syd", "Sydney", 12, 200, frozenset({"AU", "NZ"})),
)
DEFAULT_POP = "iad"


def pops_by_name(pops: Sequence[PointOfPresence]) -> dict[str, PointOfPresence]:
    """PoPs keyed by name; ``ValueError`` if two share a name or a territory."""
    by_name: dict[str, PointOfPresence] = {}
    claimed: dict[str, str] = {}
    for pop in pops:
        if pop.name in by_name:
            raise ValueError(f"two PoPs are named {pop.name!r}")
        by_name[pop.name] = pop
        for territory in pop.territories:
            if territory in claimed:
                raise ValueError(f"territory {territory} is claimed by {claimed[territory]} and {pop.name}")
            claimed[territory] = pop.name
    return by_name


def pop_for_territory(
    pops: Mapping[str, PointOfPresence], territory: str | None, default: str = DEFAULT_POP
) -> PointOfPresence:
    """The PoP that serves ``territory``, else the default one."""
    if territory:
        for pop in pops.values():
            if territory in pop.territories:
                return pop
    return pops[default]
