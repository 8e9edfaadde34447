"""The network model of the simulated transport: Hockney's alpha-beta, plus gamma for reductions.

A message of n bytes sent at virtual time t arrives at t + alpha + n*beta; the sender is busy
for that long too (one message at a time per port, the model of Thakur, Rabenseifner and Gropp
2005), a receive moves the receiver's clock to max(own clock, arrival), and a reduction of n
bytes costs n*gamma. Times are kept as integers in femtoseconds (``TICK``), so a run's virtual
time is an exact sum and can be compared with a closed-form cost without rounding.

``contention`` adds a per-link limit: a rank's incoming link carries one message at a time, so
messages that converge on one rank (the naive allreduce's root, a parameter server) queue
there, in the order the receiver takes them, instead of all arriving after alpha + n*beta.

``compute`` says what local computation costs in virtual time: ``none`` (only messages and
reductions count: the default, and what the cost formulas assume), ``wall`` (each rank's
measured thread CPU time between transport calls, reductions included, so gamma is not charged
again), or a rate such as ``10GFLOP/s`` (work declared with ``transport.compute(flops)``).

Spec syntax (``--network``): a preset name, ``key=value`` pairs, or a preset followed by pairs
that override it, comma separated::

    10gbe        alpha=5us,beta=1GB/s,gamma=0.2ns       wan,contention,compute=wall
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from fractions import Fraction

__all__ = ["Network", "PRESETS", "TICK", "parse_network", "format_seconds", "format_rate"]

TICK = 1e-15  # seconds per tick: virtual clocks count femtoseconds

_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "ps": 1e-12}
_PREFIX = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 2.0 ** 10, "Mi": 2.0 ** 20, "Gi": 2.0 ** 30, "Ti": 2.0 ** 40}
_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


@dataclass(frozen=True)
class Network:
    """alpha (per message), beta and gamma (per byte) in ticks; see the module docstring."""

    alpha: int
    beta: int
    gamma: int
    contention: bool = False
    compute: str = "none"          # none | wall | rate
    flops: float = 0.0             # FLOP/s when compute == "rate"
    name: str = "custom"
    # what a preset stands for, as the report prints it (not part of the model: equality and spec() ignore it)
    description: str = field(default="", compare=False, repr=False)

    def __post_init__(self):
        for k in ("alpha", "beta", "gamma"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"network {k} must be a whole number of ticks >= 0, got {v!r}")
        if self.compute not in ("none", "wall", "rate"):
            raise ValueError(f"network compute must be none, wall or a rate, got {self.compute!r}")
        if self.compute == "rate" and not (0 < self.flops < float("inf")):
            raise ValueError(f"network compute rate must be a finite FLOP/s > 0, got {self.flops!r}")

    def message(self, nbytes: int) -> int:
        """Ticks a message of ``nbytes`` takes from send to arrival: alpha + n*beta."""
        return self.alpha + nbytes * self.beta

    def time(self, a, b, c) -> Fraction:
        """a*alpha + b*beta + c*gamma in ticks, exact (b and c are byte counts, maybe fractions)."""
        return a * self.alpha + Fraction(b) * self.beta + Fraction(c) * self.gamma

    @property
    def seconds(self) -> tuple[float, float, float]:
        """(alpha in s, beta in s/byte, gamma in s/byte)."""
        return self.alpha * TICK, self.beta * TICK, self.gamma * TICK

    def spec(self) -> str:
        """This model in the ``--network`` syntax (parses back to an equal model, name aside)."""
        parts = [f"alpha={format_seconds(self.alpha * TICK, spec=True)}",
                 f"beta={format_rate(self.beta, spec=True)}", f"gamma={format_rate(self.gamma, spec=True)}"]
        if self.contention:
            parts.append("contention")
        if self.compute == "wall":
            parts.append("compute=wall")
        elif self.compute == "rate":
            parts.append(f"compute={_g(self.flops / 1e9, 12)}GFLOP/s")
        return ",".join(parts)

    def __str__(self) -> str:
        a, b, g = self.seconds
        text = (f"{self.name}: alpha {format_seconds(a)}, beta {format_rate(self.beta)} "
                f"({_g(b * 1e9)} ns/B), gamma {format_rate(self.gamma)} ({_g(g * 1e9)} ns/B)")
        if self.contention:
            text += ", link contention"
        if self.compute != "none":
            text += f", compute {'wall' if self.compute == 'wall' else f'{_g(self.flops / 1e9)} GFLOP/s'}"
        return text


def _g(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}"


def _ticks(seconds: float, what: str = "value") -> int:
    if not 0 <= seconds < 1e6:
        raise ValueError(f"{what}: {seconds!r} s is out of range (0 to a million seconds)")
    ticks = int(round(seconds / TICK))
    if seconds > 0 and ticks == 0:
        raise ValueError(f"{what}: {seconds!r} s is below the model's resolution of 1 fs")
    return ticks


def format_seconds(s: float, spec: bool = False) -> str:
    """'5 us', '1.2 ms', ... (no space and ASCII units with ``spec``)."""
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if abs(s) >= f or unit == "ns":
            return f"{_g(s / f, 12 if spec else 4)}{'' if spec else ' '}{unit}"
    raise AssertionError


def format_rate(ticks_per_byte: int, spec: bool = False) -> str:
    """A per-byte cost in ticks as a rate: '1.25 GB/s' (decimal units); zero is 'free' ('0ns' in a spec)."""
    if ticks_per_byte == 0:
        return "0ns" if spec else "free"
    rate = 1.0 / (ticks_per_byte * TICK)
    for unit, f in (("TB/s", 1e12), ("GB/s", 1e9), ("MB/s", 1e6), ("KB/s", 1e3), ("B/s", 1.0)):
        if rate >= f * (1 - 1e-9) or unit == "B/s":   # 1e15/1e6 ticks is 1 GB/s, not 1000 MB/s
            return f"{_g(rate / f, 12 if spec else 4)}{'' if spec else ' '}{unit}"
    raise AssertionError


def _net(name: str, alpha_s: float, bandwidth: float, description: str, gamma_rate: float = 5e9) -> Network:
    return Network(_ticks(alpha_s), _ticks(1 / bandwidth), _ticks(1 / gamma_rate), name=name,
                   description=description)


# Round textbook figures; gamma is one core adding float32 vectors (about 5 GB/s of input). The report
# and --network list them in this order; a preset is one line here.
PRESETS = {net.name: net for net in (
    _net("shm", 0.5e-6, 10e9, "ranks of one node, shared memory"),
    _net("10gbe", 10e-6, 1.25e9, "10 Gbit/s Ethernet, TCP"),
    _net("100gbe-rdma", 2e-6, 12.5e9, "100 Gbit/s with RDMA"),     # RoCE / InfiniBand
    _net("wan", 30e-3, 12.5e6, "100 Mbit/s wide-area link"),       # 30 ms one way
)}


def parse_time(text: str, what: str) -> int:
    """'5us', '0.5ms', '2e-6s' -> ticks."""
    m = re.fullmatch(_NUM + r"\s*(s|ms|us|µs|ns|ps)", text.strip())
    if not m:
        raise ValueError(f"{what}: expected a time with a unit (s, ms, us, ns, ps), e.g. 5us; got {text!r}")
    return _ticks(float(m.group(1)) * _TIME_UNITS[m.group(2)], what)


def parse_per_byte(text: str, what: str) -> int:
    """A rate ('1GB/s', '10Gb/s' in bits, '2GiB/s') or a time per byte ('0.8ns', '0.8ns/B') -> ticks/byte."""
    t = text.strip()
    m = re.fullmatch(_NUM + r"\s*(k|K|M|G|T|Ki|Mi|Gi|Ti|)(B|b)/s", t)
    if m:
        rate = float(m.group(1)) * _PREFIX[m.group(2)] / (8 if m.group(3) == "b" else 1)
        if rate <= 0:
            raise ValueError(f"{what}: a rate must be > 0, got {text!r}")
        return _ticks(1 / rate, what)
    m = re.fullmatch(_NUM + r"\s*(s|ms|us|µs|ns|ps)(?:/B)?", t)
    if m:
        return _ticks(float(m.group(1)) * _TIME_UNITS[m.group(2)], what)
    raise ValueError(f"{what}: expected a rate (1GB/s, 10Gb/s, 2GiB/s) or a time per byte (0.8ns); got {text!r}")


def _parse_flops(text: str) -> float:
    m = re.fullmatch(_NUM + r"\s*(k|K|M|G|T|)(?:FLOP|flop|F)/s", text.strip())
    if not m or not 0 < float(m.group(1)) * _PREFIX[m.group(2)] < float("inf"):
        raise ValueError(f"compute: expected none, wall or a rate > 0 such as 10GFLOP/s; got {text!r}")
    return float(m.group(1)) * _PREFIX[m.group(2)]


_ON = {"on": True, "true": True, "1": True, "yes": True, "off": False, "false": False, "0": False, "no": False}


def parse_network(text: str) -> Network:
    """Parse a ``--network`` spec (see the module docstring); ValueError saying what is wrong."""
    if isinstance(text, Network):
        return text
    items = [s.strip() for s in str(text).split(",")]
    if not text or not all(items):
        raise ValueError(f"--network: empty item in {text!r}; expected e.g. 10gbe or alpha=5us,beta=1GB/s")
    net, given = None, {}
    if "=" not in items[0] and items[0] != "contention":
        if items[0] not in PRESETS:
            raise ValueError(f"--network: unknown preset {items[0]!r}; choose one of {', '.join(PRESETS)} "
                             "or give alpha=...,beta=...,gamma=...")
        net = PRESETS[items.pop(0)]
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip()
        if key in given:
            raise ValueError(f"--network: {key} given twice in {text!r}")
        if key == "alpha":
            given[key] = parse_time(value, "alpha")
        elif key in ("beta", "gamma"):
            given[key] = parse_per_byte(value, key)
        elif key == "contention":
            if value and value.lower() not in _ON:
                raise ValueError(f"--network: contention takes on or off, got {value!r}")
            given[key] = _ON[value.lower()] if value else True
        elif key == "compute":
            if value in ("none", "wall"):
                given[key], given["flops"] = value, 0.0
            else:
                given[key], given["flops"] = "rate", _parse_flops(value)
        else:
            raise ValueError(f"--network: unknown key {key!r} in {text!r}; keys: alpha, beta, gamma, "
                             "contention, compute")
    if net is None:
        missing = [k for k in ("alpha", "beta") if k not in given]
        if missing:
            raise ValueError(f"--network: {' and '.join(missing)} missing in {text!r} (or start with a preset: "
                             f"{', '.join(PRESETS)})")
        net = Network(given.pop("alpha"), given.pop("beta"), given.pop("gamma", PRESETS["shm"].gamma))
    if given:
        same = set(given) <= {"contention", "compute", "flops"}   # still the preset's link
        net = replace(net, name=net.name if same else "custom", description=net.description if same else "",
                      **given)
    return net
