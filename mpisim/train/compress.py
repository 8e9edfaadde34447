"""Gradient compression: what a rank sends instead of its float32 gradient, and how the sum is rebuilt.

A data-parallel step sums every rank's gradient with one allreduce of b·P bytes (b = 4). A compressor
replaces that allreduce by one that sends fewer bytes and still leaves every rank with bit-identical
values, as PyTorch DDP's communication hooks (``fp16_compress_hook``, ``powerSGD_hook``), Horovod's
``Compression.fp16`` and 1-bit Adam do. Each scheme is registered once (:data:`SCHEMES`: its name, its
parameter, what it sends in closed form) and built from a spec string by :func:`make_compressor`:

========================  =====================================================  ==========================
scheme                    what every rank sends                                  bytes, all ranks, one call
========================  =====================================================  ==========================
``none``                  the float32 vector (the paradigm's plain allreduce)    the allreduce's, b·n
``fp16``, ``bf16``        16-bit blocks around a ring; every hop decodes, adds   2(N-1)·2n (ring, 2 bytes)
                          in float32, re-encodes (Micikevicius et al. 2018)
``topk:RATIO``            the k = ceil(RATIO·n) largest |x| and their int32      allgather of N x 8k
                          indices (Aji & Heafield 2017; Lin et al. 2018)
``randomk:RATIO``         k values at indices drawn from (seed, key, step, rank)  allgather of N x 8k
                          (Stich et al. 2018)
``signsgd``               one bit per element and one float32 scale              allgather of N x 4(ceil(n/32)+1)
                          (Bernstein et al. 2018)
``powersgd:RANK``         P = M·Q and Q = Mᵀ·P̂ per weight matrix, biases whole   allreduce of R·Σrows + P_1d,
                          (Vogels et al. 2019)                                   then of R·Σcols (4 bytes)
========================  =====================================================  ==========================

Sparse vectors do not add up in place (each rank picks other indices), so topk, randomk and signsgd
allgather one packed buffer per rank and every rank adds the N decoded vectors in rank order:
bit-identical everywhere. fp16 is divided by N before it is encoded (a sum of N gradients can pass
fp16's 65,504) and multiplied back after.

**Error feedback** (Seide et al. 2014, "1-bit SGD"; Karimireddy et al. 2019, "Error Feedback Fixes
SignSGD"): with ``error_feedback=True`` a rank keeps e (float32, one per key: a bucket), compresses
x + e instead of x, and keeps e = (x + e) - decompress(what it sent). What a biased scheme leaves out
is not lost, only late. For fp16 and bf16 e is the rounding of the rank's own first encoding (the
roundings of later hops are of partial sums of several ranks; nobody keeps those). PowerSGD has it
built in (always on, as in the paper); ``none`` has nothing to correct (refused).

The API the paradigms call: ``compressor.allreduce(t, g, key=, algorithm=, meter=, layout=)`` sums
``g`` over the ranks in place; ``traffic(n, N, layout)`` is the exact (messages, bytes) all ranks send in
one call, which the transport's counters must equal; ``ratio`` compares that with the uncompressed
allreduce. A parameter server's pushes use ``encode(x, key=) -> uint8 payload`` of ``payload_bytes(n)``
and ``decode(payload, n)`` (every scheme but powersgd, whose compression needs the collective).

State (error-feedback residuals, PowerSGD's Q, randomk's step count) lives in the compressor, per key,
and is not checkpointed: a resumed run starts it afresh.
"""
from __future__ import annotations

import contextlib
import math
import zlib
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Sequence

import numpy as np

import argparse

from ..comm import ALLREDUCE_ALGORITHMS, allgather, allreduce
from ..comm.plan import allreduce_init
from ..comm._common import block_offsets
from ..comm.allgather import choose_allgather, ring_allgather
from ..comm.costs import allreduce_formula, allreduce_traffic, traffic as collective_traffic
from ..nn.precision import bf16_decode, bf16_encode, fp16_decode, fp16_encode

__all__ = ["Compressor", "SCHEMES", "Scheme", "add_compress_args", "check_compress_args", "make_compressor",
           "parse_spec", "sub_layout"]

Slice = tuple[int, str, int, tuple]          # (layer, name, offset, shape), as MLP.slices lays them out
TAG_RING = 521                               # the 16-bit ring's messages
_RANDOMK, _POWERSGD = 11, 12                 # SeedSequence purposes


# -- the registry ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scheme:
    """One compression scheme, registered once: everything that describes it."""
    name: str
    param: str | None                        # its parameter in a spec (name:PARAM), None: it takes none
    parse: Callable[[str], Any] | None       # the parameter from its text; ValueError saying what is wrong
    make: Callable[..., "Compressor"]        # make(value, error_feedback=, seed=, layout=)
    description: str
    sends: str                               # what all ranks send in one call, in closed form (text)
    algorithms: tuple[str, ...]              # the allreduce algorithms (--algorithm) it can run on
    feedback: str                            # "optional", "built in" or "nothing to correct"
    point_to_point: bool = True              # encode/decode for a parameter server's pushes

    @property
    def usage(self) -> str:
        return self.name + (f":{self.param}" if self.param else "")


SCHEMES: dict[str, Scheme] = {}


def register(scheme: Scheme) -> Scheme:
    if scheme.name in SCHEMES:
        raise ValueError(f"compression scheme {scheme.name!r} is already registered")
    SCHEMES[scheme.name] = scheme
    return scheme


def parse_spec(spec: str) -> tuple[Scheme, Any]:
    """``"topk:0.01"`` -> (the topk scheme, Fraction(1, 100)); ValueError naming what is wrong."""
    name, sep, arg = str(spec).partition(":")
    scheme = SCHEMES.get(name.strip())
    if scheme is None:
        raise ValueError(f"unknown compression scheme {name!r}; choose one of "
                         + ", ".join(s.usage for s in SCHEMES.values()))
    if scheme.param is None:
        if sep:
            raise ValueError(f"{scheme.name} takes no parameter, got {spec!r}")
        return scheme, None
    if not arg.strip():
        raise ValueError(f"{scheme.name} needs its parameter: {scheme.usage}")
    return scheme, scheme.parse(arg.strip())


def make_compressor(spec: str, *, error_feedback: bool = False, seed: int = 0,
                    layout: Sequence[Slice] | None = None) -> "Compressor":
    """The compressor ``spec`` names (``none``, ``fp16``, ``bf16``, ``topk:RATIO``, ``randomk:RATIO``,
    ``signsgd``, ``powersgd:RANK``). ``layout``: the model's slices (layer, name, offset, shape) in the
    vector it reduces (powersgd needs it, and checks RANK against every matrix). ValueError if the spec,
    the parameter or the layout cannot work."""
    scheme, value = parse_spec(spec)
    if error_feedback and scheme.feedback == "nothing to correct":
        raise ValueError(f"error feedback corrects what a scheme leaves out; {scheme.name} leaves nothing out")
    c = scheme.make(value, error_feedback=error_feedback, seed=seed, layout=layout)
    c.scheme, c.spec = scheme, str(spec).strip()
    return c


def sub_layout(layout: Sequence[Slice], lo: int, hi: int) -> list[Slice]:
    """The slices of ``layout`` inside [lo, hi), their offsets made relative to ``lo`` (a bucket's layout);
    ValueError if a slice straddles a bound (buckets are whole layers)."""
    out = []
    for li, name, off, shape in layout:
        end = off + int(np.prod(shape))
        if lo <= off and end <= hi:
            out.append((li, name, off - lo, tuple(shape)))
        elif off < hi and end > lo:
            raise ValueError(f"{name} of layer {li} ({off}..{end}) straddles the range {lo}..{hi}")
    return out


def _ratio_param(text: str) -> Fraction:
    try:
        approx = float(text)             # first: Fraction('1e-99999999') would build a 10^99999999 integer
    except ValueError:
        raise ValueError(f"RATIO must be a number in (0, 1], got {text!r}") from None
    if not 0 < approx <= 1:              # nan and inf too
        raise ValueError(f"RATIO must be in (0, 1], got {text}")
    try:
        if len(text) > 32:
            raise ValueError
        v = Fraction(text)               # exact: ceil(0.1 * 30) is 3, not 4
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"RATIO must be a number in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise ValueError(f"RATIO must be in (0, 1], got {text}")
    return v


def _rank_param(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"RANK must be an integer >= 1, got {text!r}") from None
    if v < 1:
        raise ValueError(f"RANK must be an integer >= 1, got {v}")
    return v


def _key_code(key: Any) -> int:
    """A number for ``key`` that is the same in every process (str hashes are salted per process)."""
    return zlib.crc32(repr(key).encode())


# -- the base class --------------------------------------------------------------------------------------
class Compressor:
    """A compression scheme with its per-key state. Subclasses implement :meth:`allreduce`, :meth:`traffic`
    and :meth:`formula`; the point-to-point ones :meth:`encode`, :meth:`decode` and :meth:`payload_bytes`."""

    scheme: Scheme
    spec: str
    ppn = 0  # ranks per node of the transport it runs on: the hierarchical allreduce's formulas need it

    def __init__(self, *, error_feedback: bool = False, seed: int = 0, layout: Sequence[Slice] | None = None):
        self.error_feedback, self.seed = error_feedback, seed
        self.layout = None if layout is None else list(layout)
        self.residuals: dict[Any, np.ndarray] = {}       # key -> e, float32 (error feedback)

    @property
    def name(self) -> str:
        return self.scheme.name

    @property
    def stateful(self) -> bool:
        """True when a call depends on earlier ones (error feedback, a warm start, a step count)."""
        return self.error_feedback

    def describe(self) -> str:
        fb = {"optional": " with error feedback" if self.error_feedback else "",
              "built in": " (error feedback built in)"}.get(self.scheme.feedback, "")
        return self.spec + fb

    def check_algorithm(self, algorithm: str) -> None:
        """ValueError unless this scheme can run on allreduce ``algorithm``."""
        if algorithm not in self.scheme.algorithms:
            raise ValueError(f"{self.name} cannot run on allreduce algorithm {algorithm!r} ({self.scheme.sends}): "
                             f"use {' or '.join(self.scheme.algorithms)}")

    # -- the collective ----------------------------------------------------------------------------------
    def allreduce(self, t, g: np.ndarray, *, key: Any = 0, algorithm: str = "auto", meter=None,
                  layout: Sequence[Slice] | None = None) -> None:
        """Replace ``g`` (1-D, float32 or float64) by its sum over the ranks, as well as the scheme allows,
        bit-identical on every rank. ``key`` names the vector (a bucket) whose state this call uses;
        ``meter`` (a :class:`~mpisim.train.distributed.Meter`) counts the messages as payload and the local
        work as computation; ``layout``: the slices of ``g`` (default: the constructor's)."""
        raise NotImplementedError

    def traffic(self, n: int, N: int, layout: Sequence[Slice] | None = None, *, algorithm: str = "auto",
                itemsize: int = 4) -> tuple[int, int]:
        """(messages, bytes) all ``N`` ranks send together in one :meth:`allreduce` of ``n`` elements,
        exact (``itemsize``: bytes per element of the uncompressed vector, for ``none``)."""
        raise NotImplementedError

    def formula(self, n: int, N: int, layout: Sequence[Slice] | None = None, *, algorithm: str = "auto",
                itemsize: int = 4) -> str:
        """The bytes of :meth:`traffic` as text in N and P (the vector's elements)."""
        raise NotImplementedError

    def ratio(self, n: int, N: int, layout: Sequence[Slice] | None = None, *, algorithm: str = "auto",
              itemsize: int = 4) -> float:
        """Bytes the uncompressed allreduce (the same ``algorithm``, ``itemsize`` bytes per element) sends,
        over the bytes this scheme sends; 1.0 when neither sends anything (one rank)."""
        plain = allreduce_traffic(algorithm, n, itemsize, N, ppn=self.ppn)[1]
        sent = self.traffic(n, N, layout, algorithm=algorithm, itemsize=itemsize)[1]
        return plain / sent if sent else 1.0

    # -- point to point ----------------------------------------------------------------------------------
    def encode(self, x: np.ndarray, *, key: Any = 0, rank: int = 0) -> np.ndarray:
        """``x`` compressed into a uint8 payload of :meth:`payload_bytes` bytes (with error feedback: x + e,
        and e updated). ``rank`` seeds randomk's draw."""
        raise ValueError(f"{self.name} has no point-to-point form: " + self._why_not_p2p())

    def decode(self, payload: np.ndarray, n: int) -> np.ndarray:
        """A payload of :meth:`encode` -> the float32 vector of ``n`` elements it stands for."""
        raise ValueError(f"{self.name} has no point-to-point form: " + self._why_not_p2p())

    def payload_bytes(self, n: int) -> int:
        """The size of :meth:`encode`'s payload for ``n`` elements."""
        raise ValueError(f"{self.name} has no point-to-point form: " + self._why_not_p2p())

    def _why_not_p2p(self) -> str:
        return "it needs a collective"

    # -- shared pieces -----------------------------------------------------------------------------------
    def residual(self, key: Any = 0) -> np.ndarray | None:
        """The error-feedback residual e of ``key`` (None before the first call or without feedback)."""
        return self.residuals.get(key)

    def _input(self, g: np.ndarray, key: Any) -> np.ndarray:
        """A float32 copy of ``g``, plus the residual of ``key`` with error feedback."""
        x = np.array(g, dtype=np.float32, copy=True).reshape(-1)
        e = self.residuals.get(key) if self.error_feedback else None
        if e is not None:
            if e.size != x.size:
                raise ValueError(f"{self.name}: key {key!r} had {e.size} elements, now {x.size}")
            x += e
        return x

    def _keep(self, key: Any, x: np.ndarray, sent: np.ndarray) -> None:
        """Error feedback: e = x - what was sent of it."""
        if self.error_feedback:
            self.residuals[key] = x - sent

    def _payload(self, payload: np.ndarray, n: int) -> np.ndarray:
        """A received payload as uint8, checked against the size ``n`` elements give (nothing trusted)."""
        p = np.ascontiguousarray(payload).reshape(-1).view(np.uint8)
        if p.size != self.payload_bytes(n):
            raise ValueError(f"{self.name}: a payload of {p.size} bytes, but {n} elements make "
                             f"{self.payload_bytes(n)}")
        return p


def _comm(meter):
    return meter.comm("payload") if meter is not None else contextlib.nullcontext()


def _work(meter):
    return meter.computing() if meter is not None else contextlib.nullcontext()


# -- none ------------------------------------------------------------------------------------------------
class NoCompression(Compressor):
    """The plain allreduce of the float vector (``algorithm="mpi"``: MPI's own, uncounted).

    Each vector (``key``: a bucket) gets a planned allreduce (:func:`mpisim.comm.allreduce_init`) on its
    first call, replayed while the same memory comes back: the same messages and bit-identical sums, without
    the per-call checks and choice of algorithm (a bucket of 4 KiB costs about a third of the plain call
    under MPI). Every rank makes its plans in the same order, as it calls them.
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.plans: dict[Any, tuple[tuple, Any]] = {}

    def allreduce(self, t, g, *, key=0, algorithm="auto", meter=None, layout=None) -> None:
        with _comm(meter):
            if algorithm == "mpi":
                t.native_allreduce(g, g)
                return
            where = (id(t), g.__array_interface__["data"][0], g.shape, g.dtype.str, g.strides, algorithm)
            held = self.plans.get(key)
            if held is None or held[0] != where:
                held = self.plans[key] = (where, allreduce_init(t, g, algorithm=algorithm, out=g, check=False))
            held[1]()

    def traffic(self, n, N, layout=None, *, algorithm="auto", itemsize=4):
        if algorithm == "mpi":
            raise ValueError("MPI's own Allreduce: its messages are MPI's, no closed form here")
        return allreduce_traffic(algorithm, n, itemsize, N, ppn=self.ppn)

    def formula(self, n, N, layout=None, *, algorithm="auto", itemsize=4):
        return allreduce_formula(algorithm, n, itemsize, N, ppn=self.ppn, n="b·P")

    def encode(self, x, *, key=0, rank=0):
        return np.array(x, dtype=np.float32).reshape(-1).view(np.uint8)

    def decode(self, payload, n):
        return self._payload(payload, n).view(np.float32).copy()

    def payload_bytes(self, n):
        return 4 * n


register(Scheme("none", None, None, lambda v, **kw: NoCompression(**kw),
                description="the plain allreduce of the float vector",
                sends="the allreduce's b·n bytes", algorithms=tuple(ALLREDUCE_ALGORITHMS) + ("mpi",),
                feedback="nothing to correct"))


# -- fp16, bf16: a ring of 16-bit hops -------------------------------------------------------------------
class HalfPrecision(Compressor):
    """The vector travels in 16 bits and is added in float32: a ring reduce-scatter whose every hop
    decodes the incoming block, adds it to its own in float32 and re-encodes it, then a ring allgather
    of the 16-bit blocks, each encoded once by the rank that reduced it; every rank decodes all blocks
    (its own too), so all end bit-identical. fp16 is divided by N first (against overflow: the sum of N
    gradients can pass 65,504) and multiplied back after. Blocks as ``numpy.array_split`` cuts them."""

    def __init__(self, fmt: str, **kw) -> None:
        super().__init__(**kw)
        self.fmt = fmt
        self.enc, self.dec = (fp16_encode, fp16_decode) if fmt == "fp16" else (bf16_encode, bf16_decode)
        self.prescale = fmt == "fp16"

    def allreduce(self, t, g, *, key=0, algorithm="auto", meter=None, layout=None) -> None:
        self.check_algorithm(algorithm)
        N, r, n = t.size, t.rank, g.size
        with _work(meter):
            x = self._input(g, key)                                   # (n,) float32: g + e
            acc = x / np.float32(N) if self.prescale else x          # float32 partial sums
            if self.error_feedback:                                   # what this rank's own encoding keeps
                self._keep(key, x, self.dec(self.enc(acc)) * np.float32(N if self.prescale else 1))
        offs = block_offsets(n, N)
        wire = np.empty(n, dtype=np.uint16)                           # the 16-bit result, block by block
        part = np.empty(max(offs[b + 1] - offs[b] for b in range(N)), dtype=np.uint16)
        right, left = (r + 1) % N, (r - 1) % N
        with _comm(meter):
            for s in range(N - 1):                                    # reduce-scatter: block r ends on rank r
                sb, rb = (r - s - 1) % N, (r - s - 2) % N
                lo, hi = offs[rb], offs[rb + 1]
                t.sendrecv(self.enc(acc[offs[sb]:offs[sb + 1]]), right, part[:hi - lo], left, TAG_RING, TAG_RING)
                acc[lo:hi] += self.dec(part[:hi - lo])                # decode, add in float32
                t.reduced(4 * (hi - lo))
            wire[offs[r]:offs[r + 1]] = self.enc(acc[offs[r]:offs[r + 1]])   # encoded once, by its reducer
            ring_allgather(t, wire, offs, TAG_RING)
        with _work(meter):
            out = self.dec(wire)                                      # every block, own too: identical
            if self.prescale:
                out *= np.float32(N)
            g[...] = out

    def traffic(self, n, N, layout=None, *, algorithm="auto", itemsize=4):
        # N(N-1) blocks each way, every block n/N elements of 2 bytes: the ring allreduce's count exactly
        return allreduce_traffic("ring", n, 2, N)

    def formula(self, n, N, layout=None, *, algorithm="auto", itemsize=4):
        return "2(N-1)·2P"

    def encode(self, x, *, key=0, rank=0):
        x = self._input(x, key)
        bits = self.enc(x)
        self._keep(key, x, self.dec(bits))
        return bits.view(np.uint8)

    def decode(self, payload, n):
        return self.dec(self._payload(payload, n).view(np.uint16))

    def payload_bytes(self, n):
        return 2 * n


for _fmt, _what in (("fp16", "IEEE half, divided by N first against overflow"),
                    ("bf16", "bfloat16, float32's range with 8 significant bits")):
    register(Scheme(_fmt, None, None, lambda v, _f=_fmt, **kw: HalfPrecision(_f, **kw),
                    description=f"a ring of 16-bit hops, added in float32 at each ({_what})",
                    sends="its own 16-bit ring", algorithms=("auto", "ring"), feedback="optional"))


# -- topk, randomk, signsgd: compressed locally, allgathered, added in rank order -------------------------
def allgather_choice(algorithm: str, per_rank_bytes: int, p: int) -> str:
    """The allgather a sparse scheme runs for ``algorithm``: ring and recursive_doubling as named; auto as
    mpisim.comm.allgather's auto chooses (MPICH's thresholds on the whole result)."""
    return algorithm if algorithm != "auto" else choose_allgather(p * per_rank_bytes, p)


class Gathered(Compressor):
    """A scheme whose compressed vectors do not add up in place: every rank encodes its own into one packed
    buffer, one allgather gives every rank all N, and each adds the N decoded vectors in rank order."""

    unit = ""                                        # the per-rank payload in closed form, as text

    def _pack(self, x: np.ndarray, key: Any, rank: int) -> np.ndarray:
        raise NotImplementedError

    def _combine(self, rows: np.ndarray, n: int) -> np.ndarray:
        """(N, payload bytes) -> the sum, adding the decoded vectors in rank order."""
        out = np.zeros(n, dtype=np.float32)
        for row in rows:
            out += self.decode(row, n)
        return out

    def encode(self, x, *, key=0, rank=0):
        x = self._input(x, key)
        payload = self._pack(x, key, rank)
        if self.error_feedback:
            self._keep(key, x, self.decode(payload, x.size))
        return payload

    def allreduce(self, t, g, *, key=0, algorithm="auto", meter=None, layout=None) -> None:
        self.check_algorithm(algorithm)
        with _work(meter):
            words = self.encode(g, key=key, rank=t.rank).view(np.int32)    # payload_bytes is a multiple of 4
        with _comm(meter):
            rows = allgather(t, words, allgather_choice(algorithm, words.nbytes, t.size), check=False)
        with _work(meter):
            g[...] = self._combine(rows.view(np.uint8), g.size)

    def traffic(self, n, N, layout=None, *, algorithm="auto", itemsize=4):
        m = self.payload_bytes(n) // 4
        return collective_traffic("allgather", allgather_choice(algorithm, 4 * m, N), N, N * m, 4)

    def formula(self, n, N, layout=None, *, algorithm="auto", itemsize=4):
        if allgather_choice(algorithm, self.payload_bytes(n), N) == "ring" or N & (N - 1) == 0:
            return f"(N-1)·N·{self.unit}"
        p2 = 1 << (N.bit_length() - 1)
        r = N - p2
        return f"(r + (p2-1)·N + r·N)·{self.unit} [p2={p2}, r={r}]"


class TopK(Gathered):
    """k = ceil(RATIO·n) values (float32) and their indices (int32), in one buffer of 8k bytes: topk the k
    largest |x| (Aji & Heafield 2017, "Sparse Communication for Distributed Gradient Descent"), randomk k
    indices drawn without replacement from a generator seeded by (seed, key, step, rank) (Stich et al.
    2018, "Sparsified SGD with Memory"). Biased (randomk is not rescaled by n/k): use error feedback."""

    unit = "8k"

    def __init__(self, ratio: Fraction, *, random: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.fraction, self.random = ratio, random
        self.steps: dict[Any, int] = {}              # randomk: calls so far, per key

    @property
    def stateful(self) -> bool:
        return self.error_feedback or self.random

    def k(self, n: int) -> int:
        return min(n, max(1, math.ceil(self.fraction * n)))

    def payload_bytes(self, n):
        return 8 * self.k(n)

    def _pack(self, x, key, rank):
        n, k = x.size, self.k(x.size)
        if self.random:
            step = self.steps.get(key, 0)
            self.steps[key] = step + 1
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, _RANDOMK, _key_code(key), step, rank]))
            idx = rng.choice(n, size=k, replace=False)
        else:
            idx = np.argpartition(np.abs(x), n - k)[n - k:]
        idx = np.sort(idx).astype(np.int32)
        buf = np.empty(2 * k, dtype=np.int32)        # [k values as float32 bits | k indices]
        buf[:k] = x[idx].view(np.int32)
        buf[k:] = idx
        return buf.view(np.uint8)

    def _unpack(self, payload, n):
        w = self._payload(payload, n).view(np.int32)
        k = w.size // 2
        vals, idx = w[:k].view(np.float32), w[k:]
        if k and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{self.name}: an index outside 0..{n - 1}")
        if k > 1 and not (np.diff(idx) > 0).all():       # the sender sorts them: a repeat would lose a value
            raise ValueError(f"{self.name}: indices not strictly increasing")
        return vals, idx

    def decode(self, payload, n):
        vals, idx = self._unpack(payload, n)
        out = np.zeros(n, dtype=np.float32)
        out[idx] = vals
        return out

    def _combine(self, rows, n):
        out = np.zeros(n, dtype=np.float32)
        for row in rows:                             # rank order: the same sums on every rank
            vals, idx = self._unpack(row, n)
            out[idx] += vals                         # a rank's indices are distinct
        return out

    def formula(self, n, N, layout=None, *, algorithm="auto", itemsize=4):
        return super().formula(n, N, layout, algorithm=algorithm) + f", k = ⌈{float(self.fraction):g}·P⌉"


for _name, _random, _how in (("topk", False, "the ceil(RATIO·n) largest |x|"),
                             ("randomk", True, "ceil(RATIO·n) values at seeded random indices")):
    register(Scheme(_name, "RATIO", _ratio_param, lambda v, _r=_random, **kw: TopK(v, random=_r, **kw),
                    description=f"{_how} with their int32 indices, allgathered (RATIO in (0, 1])",
                    sends="an allgather of sparse vectors", algorithms=("auto", "ring", "recursive_doubling"),
                    feedback="optional"))


class SignSGD(Gathered):
    """signSGD with majority vote (Bernstein et al. 2018, "signSGD: Compressed Optimisation for Non-Convex
    Problems"): every rank sends the sign of each element as one bit (``numpy.packbits``; x >= 0 is +1, so
    a zero votes +1) and one float32 scale, its mean |x|, padded to whole 4-byte words: 4(ceil(n/32)+1)
    bytes. The sum over the ranks becomes sign(Σ_r sign_r) · Σ_r scale_r: the majority's sign (0 on a tie),
    times N times the ranks' mean scale, so that it stands in for the SUM the paradigm expects (a rank's
    gradient is of its share of the global batch's mean loss). Why mean |x|: of all vectors a·sign(x), the
    one nearest to x (least squares) has a = mean |x|, so scale·sign(x) is the rank's best one-bit
    approximation of its own vector, and N of them add up to about N·mean|x| where the signs agree.
    With error feedback each rank keeps x - scale·sign(x) (Karimireddy et al. 2019, EF-SignSGD)."""

    unit = "4(⌈P/32⌉+1)"

    def payload_bytes(self, n):
        return 4 * (-(-n // 32) + 1)

    def _pack(self, x, key, rank):
        buf = np.zeros(self.payload_bytes(x.size), dtype=np.uint8)
        bits = np.packbits(x >= 0)                   # ceil(n/8) bytes, the first element in the top bit
        buf[:bits.size] = bits
        buf[-4:] = np.array([np.abs(x).sum(dtype=np.float64) / max(x.size, 1)], dtype=np.float32).view(np.uint8)
        return buf

    def _unpack(self, payload, n):
        p = self._payload(payload, n)
        scale = p[-4:].view(np.float32)[0]
        if not (np.isfinite(scale) and scale >= 0):
            raise ValueError(f"{self.name}: a scale of {scale}")
        return np.unpackbits(p[:-(-n // 8)], count=n), scale

    def decode(self, payload, n):
        bits, scale = self._unpack(payload, n)
        return (bits.astype(np.float32) * 2 - 1) * scale

    def _combine(self, rows, n):
        votes = np.zeros(n, dtype=np.int64)
        total = np.float32(0)
        for row in rows:                             # rank order: the same float32 sum on every rank
            bits, scale = self._unpack(row, n)
            votes += bits
            total += scale
        votes = 2 * votes - len(rows)                # Σ_r sign_r
        return np.sign(votes).astype(np.float32) * total


register(Scheme("signsgd", None, None, lambda v, **kw: SignSGD(**kw),
                description="a sign bit per element and a float32 scale per rank, allgathered, majority vote",
                sends="an allgather of sign bits", algorithms=("auto", "ring", "recursive_doubling"),
                feedback="optional"))


# -- PowerSGD --------------------------------------------------------------------------------------------
def orthonormalize(P: np.ndarray, eps: float = 1e-8) -> None:
    """Modified Gram-Schmidt on the columns of ``P`` (rows, R), in place; a zero column stays zero (eps).
    Plain float32 operations in a fixed order: identical data give identical bits on every rank."""
    for i in range(P.shape[1]):
        col = P[:, i]
        col /= np.sqrt(np.dot(col, col)) + np.float32(eps)
        if i + 1 < P.shape[1]:
            rest = P[:, i + 1:]
            rest -= np.outer(col, col @ rest)        # (rows,) x (R-i-1,) -> (rows, R-i-1)


class PowerSGD(Compressor):
    """Rank-R PowerSGD (Vogels, Karimireddy and Jaggi 2019, "PowerSGD: Practical Low-Rank Gradient
    Compression for Distributed Optimization"), with the sums the paradigm expects. Per weight matrix
    M (rows, cols) of the layout, M = this rank's gradient plus its error e:

    1. P = M·Q (rows, R), Q (cols, R) warm-started: the previous step's, first a seeded normal draw, the
       same on every rank; one allreduce of all P's, with the vectors (biases, BatchNorm's gamma and beta)
       appended uncompressed;
    2. P̂ = P orthonormalized (:func:`orthonormalize`, on identical data: identical on every rank);
    3. Q = Mᵀ·P̂ (cols, R), one allreduce of all Q's; the sum is approximated by P̂·Qᵀ, and Q is kept;
    4. e = M - P̂·(Mᵀ·P̂)ᵀ: what this rank's own share of the approximation leaves out (the ranks' shares add
       up to P̂·Qᵀ, so nothing is lost in total). Error feedback is always on (the paper's).

    Its matrix products are real work: each call declares 8·rows·cols·R + 2·rows·R² flops per matrix to the
    transport (four products and the Gram-Schmidt), which a simulated network with compute=RATE charges in
    virtual time (the other schemes' element-wise work is left out, as the model leaves out its activations).

    A column of Q that came back all zero (a step whose summed gradient was exactly zero) would stay zero
    forever (P = M·0); it is drawn afresh, seeded by the step, the same on every rank.

    With R = min(rows, cols) for every matrix the approximation is the exact sum (to rounding).
    """

    def __init__(self, rank: int, **kw) -> None:
        super().__init__(**kw)
        self.error_feedback = True                   # built in
        self.R = rank
        self.qs: dict[Any, list[np.ndarray]] = {}    # key -> each matrix's Q (warm start)
        self.steps: dict[Any, int] = {}               # key -> calls so far
        if self.layout is not None:
            self._check(self.layout)

    stateful = True

    def _why_not_p2p(self) -> str:
        return "its P and Q are sums over the ranks (two allreduces); a push carries one rank's vector"

    def check_algorithm(self, algorithm):
        if algorithm == "mpi":
            raise ValueError("powersgd runs mpisim's allreduce on its P's and Q's; MPI's own cannot be "
                             "counted against its formula: use another algorithm")
        super().check_algorithm(algorithm)

    def _check(self, layout) -> None:
        most = min((min(s) for *_, s in layout if len(s) == 2), default=self.R)
        for li, name, _, shape in layout:
            if len(shape) == 2 and self.R > min(shape):
                raise ValueError(f"rank {self.R} is more than the smaller side of {name} of layer {li} "
                                 f"{tuple(shape)}: use a rank of at most {most}")

    def _plan(self, n: int, layout) -> tuple[list[tuple[int, int, int]], np.ndarray]:
        """The matrices (offset, rows, cols) in ``layout`` and the positions of everything else."""
        if layout is None:
            raise ValueError("powersgd needs the layout of the vector (its weight matrices)")
        self._check(layout)
        mats, covered = [], np.zeros(n, dtype=bool)
        for _, _, off, shape in layout:
            if len(shape) == 2:
                rows, cols = shape
                if off < 0 or off + rows * cols > n:
                    raise ValueError(f"powersgd: a matrix at {off}..{off + rows * cols} outside the vector of {n}")
                mats.append((off, rows, cols))
                covered[off:off + rows * cols] = True
        return mats, np.flatnonzero(~covered)

    def allreduce(self, t, g, *, key=0, algorithm="auto", meter=None, layout=None) -> None:
        self.check_algorithm(algorithm)
        R, n = self.R, g.size
        mats, vec = self._plan(n, self.layout if layout is None else layout)
        with _work(meter):
            x = self._input(g, key)                                       # M's live in x: gradient + e
            Ms = [x[o:o + a * b].reshape(a, b) for o, a, b in mats]
            Qs = self._warm_start(key, [b for _, _, b in mats])
            pofs = np.cumsum([0] + [a * R for _, a, _ in mats])
            first = np.empty(pofs[-1] + vec.size, dtype=np.float32)       # [all P's | the vectors]
            Ps = [first[lo:hi].reshape(-1, R) for lo, hi in zip(pofs[:-1], pofs[1:])]
            for M, Q, P in zip(Ms, Qs, Ps):
                np.matmul(M, Q, out=P)                                    # (rows, cols) @ (cols, R)
            first[pofs[-1]:] = x[vec]
        with _comm(meter):
            allreduce(t, first, algorithm=algorithm, out=first, check=False)
        out = np.empty(n, dtype=np.float32)
        out[vec] = first[pofs[-1]:]
        e = np.zeros(n, dtype=np.float32)                                 # the vectors went whole
        if mats:
            with _work(meter):
                qofs = np.cumsum([0] + [b * R for _, _, b in mats])
                second = np.empty(qofs[-1], dtype=np.float32)             # all Q's
                Qn = [second[lo:hi].reshape(-1, R) for lo, hi in zip(qofs[:-1], qofs[1:])]
                for M, P, Q in zip(Ms, Ps, Qn):
                    orthonormalize(P)                                     # P̂, the same on every rank
                    np.matmul(M.T, P, out=Q)                              # (cols, rows) @ (rows, R)
                mine = second.copy()                                      # this rank's own Q's, for e
            with _comm(meter):
                allreduce(t, second, algorithm=algorithm, out=second, check=False)
            with _work(meter):
                own = [mine[lo:hi].reshape(-1, R) for lo, hi in zip(qofs[:-1], qofs[1:])]
                for (o, a, b), M, P, Q, Qr in zip(mats, Ms, Ps, Qn, own):
                    out[o:o + a * b] = (P @ Q.T).reshape(-1)              # (rows, R) @ (R, cols): the sum
                    e[o:o + a * b] = (M - P @ Qr.T).reshape(-1)           # what this rank's share left out
                self.qs[key] = [Q.copy() for Q in Qn]                     # the warm start of the next call
            t.compute(sum(8 * a * b * R + 2 * a * R * R for _, a, b in mats))
        self.residuals[key] = e
        g[...] = out

    def _warm_start(self, key: Any, cols: list[int]) -> list[np.ndarray]:
        """Each matrix's Q (cols, R): the last call's, a seeded normal draw on the first call and for any
        column that came back all zero (identical on every rank: the seed and the last Q are)."""
        step = self.steps.get(key, 0)
        self.steps[key] = step + 1
        Qs = self.qs.get(key) or [np.zeros((b, self.R), dtype=np.float32) for b in cols]
        for j, Q in enumerate(Qs):
            dead = ~Q.any(axis=0)
            if dead.any():
                rng = np.random.default_rng(np.random.SeedSequence([self.seed, _POWERSGD, _key_code(key), j, step]))
                Q[:, dead] = rng.standard_normal(Q.shape, dtype=np.float32)[:, dead]
        return Qs

    def _sizes(self, n, layout) -> tuple[int, int, bool]:
        mats, vec = self._plan(n, self.layout if layout is None else layout)
        return self.R * sum(a for _, a, _ in mats) + vec.size, self.R * sum(b for _, _, b in mats), bool(mats)

    def traffic(self, n, N, layout=None, *, algorithm="auto", itemsize=4):
        first, second, any_mats = self._sizes(n, layout)
        m1, b1 = allreduce_traffic(algorithm, first, 4, N, ppn=self.ppn)
        m2, b2 = allreduce_traffic(algorithm, second, 4, N, ppn=self.ppn) if any_mats else (0, 0)
        return m1 + m2, b1 + b2

    def formula(self, n, N, layout=None, *, algorithm="auto", itemsize=4):
        first, second, any_mats = self._sizes(n, layout)
        text = allreduce_formula(algorithm, first, 4, N, ppn=self.ppn, n="4(R·Σrows + P_1d)")
        if any_mats:
            text += " + " + allreduce_formula(algorithm, second, 4, N, ppn=self.ppn, n="4·R·Σcols")
        return text + f", R = {self.R}"


register(Scheme("powersgd", "RANK", _rank_param, lambda v, **kw: PowerSGD(v, **kw),
                description="a rank-RANK approximation P·Q^T of each weight matrix by two allreduces, biases "
                            "whole (RANK from 1 to the smallest side of a matrix)",
                sends="allreduces of its P's and Q's", algorithms=tuple(ALLREDUCE_ALGORITHMS),
                feedback="built in", point_to_point=False))


# -- the command line of the paradigms that compress ------------------------------------------------------------
def _scheme(text: str) -> str:
    """argparse type of --compress: a spec whose name and parameter parse."""
    try:
        parse_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.strip()


def add_compress_args(g, what: str, *, schemes: Sequence[str] | None = None) -> None:
    """``--compress SCHEME`` and ``--error-feedback`` in argument group ``g``; ``what`` travels compressed."""
    names = [s for s in SCHEMES.values() if schemes is None or s.name in schemes]
    g.add_argument("--compress", type=_scheme, default="none", metavar="SCHEME",
                   help=f"send {what} compressed, one of "
                        + "; ".join(f"{s.usage}: {s.description}" for s in names) + " (default none)")
    g.add_argument("--error-feedback", action="store_true",
                   help="keep what the compression leaves out and send it with the next vector "
                        "(for fp16, bf16, topk, randomk, signsgd; built into powersgd)")


def check_compress_args(p: argparse.ArgumentParser, train, o, *, point_to_point: bool = False) -> None:
    """Usage errors of ``o.compress``, ``o.error_feedback`` and ``o.algorithm`` (if the paradigm has one) for
    the run's model shapes; ``point_to_point``: the vectors travel by send/recv (a parameter server's pushes)."""
    from ..data import dataset_shape
    from ..nn import MLP
    algorithm = getattr(o, "algorithm", None)
    if point_to_point and o.compress != "none" and not parse_spec(o.compress)[0].point_to_point:
        p.error(f"--compress {o.compress} needs a collective (its P and Q are sums over the ranks): it cannot "
                f"compress a push to a server; choose fp16, bf16, topk, randomk or signsgd")
    if o.compress != "none" and algorithm == "mpi":
        p.error(f"--compress {o.compress} needs mpisim's collectives: MPI's own Allreduce (--algorithm mpi) sums "
                f"float vectors and cannot carry a compressed gradient; choose another --algorithm")
    if o.error_feedback and o.compress == "none":
        p.error("--error-feedback keeps what a compression leaves out: it needs --compress SCHEME")
    if o.compress != "none":
        features, classes = dataset_shape(train.dataset, synthetic_features=train.synthetic_features)
        layout = MLP([features, *train.hidden, classes], batchnorm=train.batchnorm).slices   # the run's shapes
        try:
            comp = make_compressor(o.compress, error_feedback=o.error_feedback, layout=layout)
            if algorithm is not None:
                comp.check_algorithm(algorithm)
        except ValueError as e:
            p.error(f"--compress {o.compress}: {e}")
