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

Topologies (``nodes=4x8`` or ``ppn=8``): world rank w sits on node w // ppn (the block placement
mpiexec uses by default). A message between two ranks of one node takes the intra-node link
(``alpha``, ``beta``, or ``intra=LINK``); one between nodes the inter-node link (``inter=LINK``,
or ``inter-alpha``/``inter-beta``). ``oversub=S`` is an S:1 oversubscribed fabric: its core
gives each node 1/S of its link's bandwidth when all nodes send at once (a collective's case),
so an inter-node byte costs S*beta_inter. With ``contention`` a node's ranks also share its
inter-node uplink and downlink (one message at a time each, as NCCL's and Horovod's nodes with one
NIC), and an intra-node message queues on its receiver's link as on a flat network. A rank's port
still sends one message at a time. (Hockney 1994; Thakur, Rabenseifner and Gropp 2005; the node
and link model of NCCL's and Horovod's hierarchical collectives.)

Spec syntax (``--network``): a preset name, ``key=value`` pairs, or a preset followed by pairs
that override it, comma separated::

    10gbe        alpha=5us,beta=1GB/s,gamma=0.2ns       wan,contention,compute=wall
    gpu-rdma     nodes=4x8,intra=shm,inter=100gbe-rdma  ppn=16,inter=10gbe,oversub=4,contention
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from fractions import Fraction

__all__ = ["LINKS", "Links", "Network", "PRESETS", "TICK", "parse_network", "format_seconds", "format_rate"]

TICK = 1e-15  # seconds per tick: virtual clocks count femtoseconds

_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "ps": 1e-12}
_PREFIX = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 2.0 ** 10, "Mi": 2.0 ** 20, "Gi": 2.0 ** 30, "Ti": 2.0 ** 40}
_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


@dataclass(frozen=True)
class Network:
    """alpha (per message), beta and gamma (per byte) in ticks; see the module docstring.

    With a topology (``ppn`` > 0) alpha and beta are the intra-node link and ``inter_alpha``,
    ``inter_beta`` the inter-node one; ``nodes`` > 0 fixes the number of nodes (``nodes=4x8``).
    """

    alpha: int
    beta: int
    gamma: int
    contention: bool = False
    compute: str = "none"          # none | wall | rate
    flops: float = 0.0             # FLOP/s when compute == "rate"
    name: str = "custom"
    # what a preset stands for, as the report prints it (not part of the model: equality and spec() ignore it)
    description: str = field(default="", compare=False, repr=False)
    ppn: int = 0                   # ranks per node; 0: no topology (one link between any two ranks)
    nodes: int = 0                 # nodes, when the spec fixes them (nodes=4x8); 0: as many as the ranks fill
    inter_alpha: int = 0           # the inter-node link (ticks per message, per byte), with a topology
    inter_beta: int = 0
    oversub: int = 1               # S:1 oversubscribed fabric: an inter-node byte costs S * inter_beta

    def __post_init__(self):
        for k in ("alpha", "beta", "gamma", "inter_alpha", "inter_beta", "ppn", "nodes"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"network {k} must be a whole number >= 0, got {v!r}")
        if self.compute not in ("none", "wall", "rate"):
            raise ValueError(f"network compute must be none, wall or a rate, got {self.compute!r}")
        if self.compute == "rate" and not (0 < self.flops < float("inf")):
            raise ValueError(f"network compute rate must be a finite FLOP/s > 0, got {self.flops!r}")
        if not isinstance(self.oversub, int) or isinstance(self.oversub, bool) or self.oversub < 1:
            raise ValueError(f"network oversub must be a whole number >= 1, got {self.oversub!r}")
        if self.nodes and not self.ppn:
            raise ValueError("network nodes needs ranks per node (ppn) too")
        if not self.ppn and (self.inter_alpha or self.inter_beta or self.oversub != 1):
            raise ValueError("network inter_alpha, inter_beta and oversub need a topology (ppn > 0)")

    # -- the links ---------------------------------------------------------------------------------
    @property
    def topology(self) -> bool:
        """True when the model has nodes (intra- and inter-node links)."""
        return self.ppn > 0

    @property
    def inter(self) -> tuple[int, int]:
        """(alpha, beta) in ticks of an inter-node message, oversubscription included (the one link if flat)."""
        return (self.inter_alpha, self.inter_beta * self.oversub) if self.ppn else (self.alpha, self.beta)

    @property
    def worst(self) -> tuple[int, int]:
        """(alpha, beta) of the slower link, term by term: what a one-link formula charges every message."""
        ea, eb = self.inter
        return max(self.alpha, ea), max(self.beta, eb)

    def message(self, nbytes: int) -> int:
        """Ticks a message of ``nbytes`` takes on the flat (or intra-node) link: alpha + n*beta."""
        return self.alpha + nbytes * self.beta

    def node_of(self, rank: int) -> int:
        """The node of world rank ``rank`` (0 without a topology)."""
        return rank // self.ppn if self.ppn else 0

    def ranks_per_node(self, size: int) -> int:
        """Ranks on each node of a cluster of ``size`` ranks (``size`` itself without a topology, or when
        the ranks fill less than one node)."""
        return min(self.ppn, size) if self.ppn else size

    def send_ticks(self, src: int, dst: int, nbytes: int) -> int:
        """Ticks the sender (world rank ``src``) is busy putting ``nbytes`` for ``dst`` on the wire."""
        ppn = self.ppn
        if ppn and src // ppn != dst // ppn:
            return self.inter_alpha + nbytes * self.inter_beta * self.oversub
        return self.alpha + nbytes * self.beta

    def check_size(self, size: int) -> None:
        """ValueError if this model cannot describe a cluster of ``size`` ranks (a flat network can)."""
        if self.nodes and size != self.nodes * self.ppn:
            raise ValueError(f"--network nodes={self.nodes}x{self.ppn} describes {self.nodes * self.ppn} ranks, "
                             f"not {size}: give nodes=NxM with N*M = {size}, or ppn=M with M dividing {size}")
        if self.ppn and size > self.ppn and size % self.ppn:
            raise ValueError(f"--network: {self.ppn} ranks per node do not divide {size} ranks: give a rank "
                             f"count that is a multiple of {self.ppn} (or at most {self.ppn}), or another ppn")

    def links(self, size: int) -> "Links":
        """The state of the links of one cluster of ``size`` ranks under this model (see :class:`Links`)."""
        self.check_size(size)
        return Links(self, size)

    def time(self, a, b, c, *inter) -> Fraction:
        """The ticks of one cost form, exact (byte counts may be fractions).

        ``(a, b, c)``: a messages and b bytes on the slower link (:attr:`worst`; the one link if flat), c
        bytes reduced. ``(a, b, c, ae, be)``: a and b on the intra-node link, ae and be on the inter-node one.
        """
        if inter or self.ppn == 0:
            ae, be = inter or (0, 0)
            ea, eb = self.inter
            return (a * self.alpha + Fraction(b) * self.beta + Fraction(c) * self.gamma
                    + ae * ea + Fraction(be) * eb)
        wa, wb = self.worst
        return a * wa + Fraction(b) * wb + Fraction(c) * self.gamma

    @property
    def seconds(self) -> tuple[float, float, float]:
        """(alpha in s, beta in s/byte, gamma in s/byte); the intra-node link's with a topology."""
        return self.alpha * TICK, self.beta * TICK, self.gamma * TICK

    def spec(self) -> str:
        """This model in the ``--network`` syntax (parses back to an equal model, name aside)."""
        parts = [f"alpha={format_seconds(self.alpha * TICK, spec=True)}",
                 f"beta={format_rate(self.beta, spec=True)}", f"gamma={format_rate(self.gamma, spec=True)}"]
        if self.ppn:
            parts.append(f"nodes={self.nodes}x{self.ppn}" if self.nodes else f"ppn={self.ppn}")
            parts += [f"inter-alpha={format_seconds(self.inter_alpha * TICK, spec=True)}",
                      f"inter-beta={format_rate(self.inter_beta, spec=True)}"]
            if self.oversub != 1:
                parts.append(f"oversub={self.oversub}")
        if self.contention:
            parts.append("contention")
        if self.compute == "wall":
            parts.append("compute=wall")
        elif self.compute == "rate":
            parts.append(f"compute={_g(self.flops / 1e9, 12)}GFLOP/s")
        return ",".join(parts)

    def __str__(self) -> str:
        a, b, g = self.seconds
        link = f"alpha {format_seconds(a)}, beta {format_rate(self.beta)} ({_g(b * 1e9)} ns/B)"
        if self.ppn:
            nodes = f"{self.nodes} nodes of {self.ppn} ranks" if self.nodes else f"{self.ppn} ranks per node"
            ia, ib = self.inter_alpha * TICK, self.inter_beta * TICK
            inter = f"alpha {format_seconds(ia)}, beta {format_rate(self.inter_beta)} ({_g(ib * 1e9)} ns/B)"
            if self.oversub != 1:
                inter += f", {self.oversub}:1 oversubscribed"
            text = f"{self.name}: {nodes}; intra-node {link}; inter-node {inter}; gamma {format_rate(self.gamma)}"
        else:
            text = f"{self.name}: {link}, gamma {format_rate(self.gamma)}"
        text += f" ({_g(g * 1e9)} ns/B)"
        if self.contention:
            text += ", link contention"
        if self.compute != "none":
            text += f", compute {'wall' if self.compute == 'wall' else f'{_g(self.flops / 1e9)} GFLOP/s'}"
        return text


class Links:
    """When each contended link of one simulated cluster is next free: O(p) state, one per run.

    ``arrival(src, dst, sent_at, nbytes)`` is called when ``dst`` matches a message from ``src`` (world
    ranks) sent at virtual time ``sent_at``; it returns the arrival time and books the links the message
    used. Without contention a message arrives alpha + n*beta after it was sent (its link's alpha and
    beta). With it, a rank's incoming link carries one intra-node message at a time, and a node's
    inter-node uplink and downlink one inter-node message each at a time, in the order the receivers
    match them (the model depends only on the order of calls).
    """

    def __init__(self, net: Network, size: int):
        self.net = net
        self.ppn = net.ppn
        self.rx_free = [0] * size if net.contention else None
        nodes = -(-size // net.ppn) if net.ppn else 0
        self.up_free = [0] * nodes if net.contention else None     # per node: its inter-node uplink
        self.down_free = [0] * nodes if net.contention else None   # and downlink

    def arrival(self, src: int, dst: int, sent_at: int, nbytes: int) -> int:
        t = self.net.send_ticks(src, dst, nbytes)     # the link's alpha + n*beta
        if self.rx_free is None:
            return sent_at + t
        ppn = self.ppn
        if ppn and src // ppn != dst // ppn:
            a, b = src // ppn, dst // ppn
            arrival = max(sent_at, self.up_free[a], self.down_free[b]) + t
            self.up_free[a] = self.down_free[b] = arrival
            return arrival
        arrival = max(sent_at, self.rx_free[dst]) + t
        self.rx_free[dst] = arrival
        return arrival


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


def _cluster(name: str, ppn: int, intra: Network, inter: Network, description: str, *, oversub: int = 1,
             gamma_rate: float = 5e9) -> Network:
    return Network(intra.alpha, intra.beta, _ticks(1 / gamma_rate), name=name, description=description, ppn=ppn,
                   inter_alpha=inter.alpha, inter_beta=inter.beta, oversub=oversub)


# Round textbook figures; gamma is one core adding float32 vectors (about 5 GB/s of input), a GPU's for
# gpu-rdma. The report and --network list them in this order; a preset is one line here. The flat ones
# are also the links a topology names (intra=..., inter=...).
_LINKS = (
    _net("shm", 0.5e-6, 10e9, "ranks of one node, shared memory"),
    _net("nvlink", 1e-6, 100e9, "GPUs of one node, NVLink-like (100 GB/s per GPU)"),
    _net("10gbe", 10e-6, 1.25e9, "10 Gbit/s Ethernet, TCP"),
    _net("100gbe-rdma", 2e-6, 12.5e9, "100 Gbit/s with RDMA"),     # RoCE / InfiniBand
    _net("wan", 30e-3, 12.5e6, "100 Mbit/s wide-area link"),       # 30 ms one way
)
LINKS = {net.name: net for net in _LINKS}
PRESETS = {net.name: net for net in (*_LINKS,
    _cluster("gpu-rdma", 8, LINKS["nvlink"], LINKS["100gbe-rdma"], "nodes of 8 GPUs on NVLink-like links, "
             "100 Gbit/s RDMA between nodes", gamma_rate=200e9),
    _cluster("cpu-ethernet", 16, LINKS["shm"], LINKS["10gbe"], "nodes of 16 cores on shared memory, 10 Gbit/s "
             "Ethernet between nodes, 4:1 oversubscribed core", oversub=4),
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


_KEYS = ("alpha", "beta", "gamma", "contention", "compute", "nodes", "ppn", "intra", "inter", "inter-alpha",
         "inter-beta", "oversub")
_LAYOUT = {"contention", "compute", "flops", "nodes", "ppn"}   # keys that leave a preset's links as they are


def _link(value: str, key: str) -> Network:
    if value not in LINKS:
        raise ValueError(f"--network: unknown link {value!r} for {key}; links: {', '.join(LINKS)}")
    return LINKS[value]


def _whole(value: str, key: str, example: str) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", value.strip()) or int(value) < 1:
        raise ValueError(f"--network: {key} takes a whole number >= 1, e.g. {key}={example}; got {value!r}")
    return int(value)


def parse_network(text: str) -> Network:
    """Parse a ``--network`` spec (see the module docstring); ValueError saying what is wrong."""
    if isinstance(text, Network):
        return text
    items = [s.strip() for s in str(text).split(",")]
    if not text or not all(items):
        raise ValueError(f"--network: empty item in {text!r}; expected e.g. 10gbe or alpha=5us,beta=1GB/s")
    net, given, seen = None, {}, set()
    if "=" not in items[0] and items[0] != "contention":
        if items[0] not in PRESETS:
            raise ValueError(f"--network: unknown preset {items[0]!r}; choose one of {', '.join(PRESETS)} "
                             "or give alpha=...,beta=...,gamma=...")
        net = PRESETS[items.pop(0)]
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip()
        if key in seen:
            raise ValueError(f"--network: {key} given twice in {text!r}")
        seen.add(key)
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
        elif key == "nodes":
            m = re.fullmatch(r"([0-9]{1,6})x([0-9]{1,6})", value.strip())
            if not m or min(int(m.group(1)), int(m.group(2))) < 1:
                raise ValueError(f"--network: nodes takes NODESxRANKS, e.g. nodes=4x8 (4 nodes of 8 ranks; or "
                                 f"ppn=8 for any number of nodes); got {value!r}")
            given["nodes"], given["ppn"] = int(m.group(1)), int(m.group(2))
        elif key == "ppn":
            if "nodes" in seen:
                raise ValueError("--network: give nodes=NxM or ppn=M, not both")
            given["ppn"], given["nodes"] = _whole(value, key, "8"), 0
        elif key == "oversub":
            given[key] = _whole(value.strip().removesuffix(":1"), key, "4 (4:1)")
        elif key in ("intra", "inter"):
            link = _link(value.strip(), key)
            pre = "" if key == "intra" else "inter_"
            given.setdefault(pre + "alpha", link.alpha)   # alpha=... or inter-alpha=... beside it wins
            given.setdefault(pre + "beta", link.beta)
        elif key in ("inter-alpha", "inter-beta"):
            field_ = key.replace("-", "_")
            given[field_] = parse_time(value, key) if key == "inter-alpha" else parse_per_byte(value, key)
        else:
            raise ValueError(f"--network: unknown key {key!r} in {text!r}; keys: {', '.join(_KEYS)}")
    if "nodes" in seen and "ppn" in seen:
        raise ValueError("--network: give nodes=NxM or ppn=M, not both")
    ppn = given.get("ppn", net.ppn if net is not None else 0)
    if ppn and not (net is not None and net.ppn) and not {"inter", "inter-alpha", "inter-beta"} & seen:
        lead = f" (the leading {net.name} is the link inside a node)" if net is not None else ""
        raise ValueError(f"--network: nodes need the inter-node link between them{lead}: inter=LINK ({', '.join(LINKS)}) "
                         "or inter-alpha=...,inter-beta=...")
    half = {"inter-alpha", "inter-beta"} & seen
    if len(half) == 1 and "inter" not in seen and not (net is not None and net.ppn):
        other = ({"inter-alpha", "inter-beta"} - half).pop()
        raise ValueError(f"--network: {half.pop()} without {other}: give both, or inter=LINK "
                         f"({', '.join(LINKS)}) with the one to change")
    if not ppn and {"inter", "inter-alpha", "inter-beta", "oversub", "intra"} & seen:
        raise ValueError("--network: intra, inter and oversub describe nodes: give nodes=NxM (e.g. 4x8) or ppn=M too")
    if net is None:
        if ppn and not {"alpha", "beta"} & set(given):     # nodes without intra=...: shared memory
            given["alpha"], given["beta"] = LINKS["shm"].alpha, LINKS["shm"].beta
        missing = [k for k in ("alpha", "beta") if k not in given]
        if missing:
            raise ValueError(f"--network: {' and '.join(missing)} missing in {text!r} (or start with a preset: "
                             f"{', '.join(PRESETS)})")
        net = Network(given.pop("alpha"), given.pop("beta"), given.pop("gamma", PRESETS["shm"].gamma))
    if given:
        same = set(given) <= _LAYOUT   # still the preset's links
        net = replace(net, name=net.name if same else "custom", description=net.description if same else "",
                      **given)
    return net
