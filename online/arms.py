"""A/B arms: which users get which serving settings, decided by a stable hash of the user id.

An arm has a share of the traffic, a re-ranking strength and optionally candidate sources switched off for
its users (``off=vae+transformer``). A user's draw is ``blake2b(salt + ":" + user)`` mapped to [0, 1), cut by
the cumulative arm weights: the same arm in every process and run (Python's ``hash`` is salted per
process); a new ``salt`` reshuffles everyone. Arms and salt are declared in ``TAILCAST_ARMS``.

>>> arms = parse_arms("control:0.5:0.0,tail:0.5:0.3")
>>> arms[1]
ArmConfig(name='tail', weight=0.5, rerank_strength=0.3, off=frozenset())
>>> sorted(parse_arms("online-only:1:0:off=transformer+vae")[0].off)
['transformer', 'vae']
>>> assigner = ArmAssigner.from_configs(arms)
>>> assigner.assign("user-42") == assigner.assign("user-42")
True
>>> arms.salt, parse_arms("salt=exp-7, control:1:0").salt
('tailcast', 'exp-7')
>>> parse_arms("control:0.5:0.0,tail:x:0.3")
Traceback (most recent call last):
...
online.arms.ArmSpecError: arm 'tail:x:0.3': weight 'x' is not a number
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from online.base import SOURCES

__all__ = ["DEFAULT_SALT", "ArmAssigner", "ArmConfig", "ArmSpecError", "Arms", "parse_arms"]

#: The assignment salt when ``TAILCAST_ARMS`` names none.
DEFAULT_SALT = "tailcast"


class ArmSpecError(ValueError):
    """An arm specification (or weight table) is malformed; the message names the bad part."""


@dataclass(frozen=True, slots=True)
class ArmConfig:
    """One arm: its name, its share of traffic (relative weight), its re-ranking strength and the
    candidate sources switched off for its users (``online.base.SOURCES``; the models still learn)."""

    name: str
    weight: float
    rerank_strength: float
    off: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.name:
            raise ArmSpecError("arm name must not be empty")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ArmSpecError(f"arm {self.name!r}: weight must be a finite number >= 0, got {self.weight}")
        if not 0.0 <= self.rerank_strength <= 1.0:
            raise ArmSpecError(
                f"arm {self.name!r}: rerank_strength must be in [0, 1], got {self.rerank_strength}"
            )
        unknown = sorted(set(self.off) - set(SOURCES))
        if unknown:
            raise ArmSpecError(f"arm {self.name!r}: unknown source(s) {unknown} to switch off; sources: "
                               f"{', '.join(SOURCES)}")


class Arms(tuple):
    """The configured arms (a tuple of :class:`ArmConfig`) and the salt that assigns users to them."""

    salt: str

    def __new__(cls, arms: Sequence[ArmConfig], salt: str = DEFAULT_SALT) -> Arms:
        self = super().__new__(cls, arms)
        self.salt = salt
        return self

    def __reduce__(self):
        return (Arms, (tuple(self), self.salt))


def parse_arms(spec: str) -> Arms:
    """Parse ``"[salt=NAME,]name:weight:strength[:off=SOURCE+SOURCE],..."`` (e.g. ``TAILCAST_ARMS``)."""
    arms: list[ArmConfig] = []
    salt = None
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ArmSpecError(f"empty arm in {spec!r} (expected name:weight:strength, comma-separated)")
        if part.startswith("salt="):
            if salt is not None:
                raise ArmSpecError(f"more than one salt in {spec!r}")
            salt = part[len("salt="):].strip()
            if not salt:
                raise ArmSpecError(f"empty salt in {spec!r}")
            continue
        fields = [f.strip() for f in part.split(":")]
        if len(fields) not in (3, 4):
            raise ArmSpecError(f"arm {part!r}: expected name:weight:strength[:off=SOURCE+...], got "
                               f"{len(fields)} field(s)")
        name, weight_s, strength_s = fields[:3]
        off: frozenset[str] = frozenset()
        if len(fields) == 4:
            if not fields[3].startswith("off="):
                raise ArmSpecError(f"arm {part!r}: a fourth field must be off=SOURCE+SOURCE, got {fields[3]!r}")
            off = frozenset(x.strip() for x in fields[3][len("off="):].split("+"))
        try:
            weight = float(weight_s)
        except ValueError:
            raise ArmSpecError(f"arm {part!r}: weight {weight_s!r} is not a number") from None
        try:
            strength = float(strength_s)
        except ValueError:
            raise ArmSpecError(f"arm {part!r}: rerank strength {strength_s!r} is not a number") from None
        arms.append(ArmConfig(name, weight, strength, off))
    names = [a.name for a in arms]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ArmSpecError(f"duplicate arm name(s) {dupes} in {spec!r}")
    if not sum(a.weight for a in arms) > 0:
        raise ArmSpecError(f"arm weights in {spec!r} sum to 0: no arm would get traffic")
    return Arms(arms, DEFAULT_SALT if salt is None else salt)


class ArmAssigner:
    """Deterministic user -> arm assignment proportional to the arm weights."""

    def __init__(self, arms: Mapping[str, float], *, salt: str = DEFAULT_SALT) -> None:
        if not arms:
            raise ArmSpecError("at least one arm is needed")
        for name, w in arms.items():
            if not (math.isfinite(w) and w >= 0):
                raise ArmSpecError(f"arm {name!r}: weight must be a finite number >= 0, got {w}")
        total = float(sum(arms.values()))
        if not total > 0:
            raise ArmSpecError("arm weights sum to 0: no arm would get traffic")
        self.salt = salt
        self.names: tuple[str, ...] = tuple(arms)
        self.weights: tuple[float, ...] = tuple(float(arms[n]) / total for n in self.names)
        cum, acc = [], 0.0
        for w in self.weights:
            acc += w
            cum.append(acc)
        cum[-1] = 1.0
        self._cum = cum

    @classmethod
    def from_configs(cls, arms: Sequence[ArmConfig], *, salt: str | None = None) -> ArmAssigner:
        """The assigner of ``arms``, with their salt (:class:`Arms`) unless ``salt`` is given."""
        if salt is None:
            salt = arms.salt if isinstance(arms, Arms) else DEFAULT_SALT
        return cls({a.name: a.weight for a in arms}, salt=salt)

    def position(self, user: str) -> float:
        """The user's stable uniform draw in [0, 1)."""
        digest = hashlib.blake2b(f"{self.salt}:{user}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64

    def assign(self, user: str) -> str:
        i = bisect.bisect_right(self._cum, self.position(user))
        # arms of weight 0 own an empty interval; min() guards the float edge at 1.0
        return self.names[min(i, len(self.names) - 1)]
