"""The FedAvg strategy: pure NumPy functions, no messages.

* Client sampling and the example-weighted average of FedAvg, McMahan et al. 2017,
  "Communication-Efficient Learning of Deep Networks from Decentralized Data".
* Update checks, L2 clipping and Gaussian noise for DP-FedAvg, McMahan et al. 2018,
  "Learning Differentially Private Recurrent Language Models".
* Secure aggregation with pairwise additive masks, Bonawitz et al. 2017, "Practical Secure
  Aggregation for Privacy-Preserving Machine Learning": updates are quantized to fixed point and
  masked in the integers mod 2**64, where the masks cancel exactly (float masks cannot).

Strategies (Flower's split of configure and aggregate from the runtime that moves the bytes) are
objects composed once at start-up by :func:`make_strategy`: a :class:`ClientSampler` picks each round's
clients, an aggregation rule (:class:`WeightedAverage` or :class:`SecureAggregation`) says how a client
encodes its update and how the server combines them, and :class:`DifferentialPrivacy` clips updates and
noises the average. A paradigm (``mpisim/fedavg.py``) moves the bytes; everything here is tested on its own.

* Client drift (:func:`client_drift`; the name is from Karimireddy et al. 2020, "SCAFFOLD"): how far the
  round's clients end from their average after local training, measured by the server from the updates it
  receives; it grows as the clients' data get less IID. Secure aggregation hides the individual updates, so
  there it is not measured.
"""
from __future__ import annotations

import io
import math
import numbers
import os
import zlib
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from ..data.partition import data_rng
from .checkpoint import atomic_write_bytes

__all__ = ["FIXED_POINT_BITS", "ClientSampler", "DifferentialPrivacy", "SecureAggregation", "Strategy",
           "WeightedAverage", "check_update", "client_drift", "clip_update", "dequantize", "draw_partition",
           "gaussian_noise", "make_strategy", "mask", "num_clients_per_round", "pair_seed", "plot_partition",
           "quantize", "sample_clients", "secure_sum", "weighted_average"]

FIXED_POINT_BITS = 32                     # quantize: x -> round(x * 2**32)
_SCALE = float(2 ** FIXED_POINT_BITS)
_QMAX = float(2 ** 62)                    # largest |quantized value|: leaves headroom for a sum
_SECAGG = zlib.crc32(b"secagg")           # spawn-key purpose of the pairwise mask streams


def _check_int(value: int, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ---- FedAvg: who takes part, how results combine ----------------------------------------------

def num_clients_per_round(num_clients: int, fraction: float) -> int:
    """m = max(1, round(fraction * num_clients)) clients per round (Python's round: half to even)."""
    num_clients = _check_int(num_clients, "num_clients", 1)
    if (isinstance(fraction, bool) or not isinstance(fraction, numbers.Real)
            or not 0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return max(1, round(float(fraction) * num_clients))


def sample_clients(num_clients: int, fraction: float, *, seed: int, round: int) -> np.ndarray:
    """The sorted int64 ids of the m distinct clients of ``round``, from ``data_rng(seed, "clients", round)``.

    Every rank calling with the same arguments gets the same clients, with no messages.
    """
    m = num_clients_per_round(num_clients, fraction)
    rng = data_rng(seed, "clients", _check_int(round, "round", 0))
    return np.sort(rng.choice(num_clients, size=m, replace=False)).astype(np.int64)


def weighted_average(updates: Sequence[np.ndarray], num_examples: Sequence[int], *,
                     out: np.ndarray | None = None) -> np.ndarray:
    """sum_k n_k u_k / sum_k n_k, summed in float64 in the given order, in the updates' dtype.

    With ``out`` (same shape and dtype) the result is written there; ``out`` may be one of the
    updates, since it is written only after the whole sum.
    """
    if len(updates) == 0:
        raise ValueError("updates must not be empty")
    if len(updates) != len(num_examples):
        raise ValueError(f"updates and num_examples differ in length: {len(updates)} != {len(num_examples)}")
    first = updates[0]
    if not isinstance(first, np.ndarray) or not np.issubdtype(first.dtype, np.floating):
        raise ValueError(f"updates must be floating-point numpy arrays, got {first!r:.60}")
    for k, (u, n) in enumerate(zip(updates, num_examples)):
        if not isinstance(u, np.ndarray) or u.shape != first.shape or u.dtype != first.dtype:
            what = f"{u.shape} {u.dtype}" if isinstance(u, np.ndarray) else type(u).__name__
            raise ValueError(f"updates[{k}] is {what}, updates[0] is {first.shape} {first.dtype}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"num_examples[{k}] must be an integer > 0, got {n!r}")
    if out is not None and (not isinstance(out, np.ndarray) or out.shape != first.shape
                            or out.dtype != first.dtype):
        raise ValueError(f"out must be a {first.shape} {first.dtype} array")
    acc = np.zeros(first.shape, dtype=np.float64)
    tmp = np.empty_like(acc)
    for u, n in zip(updates, num_examples):
        np.multiply(u, n, out=tmp, dtype=np.float64)          # in float64, not u's float32
        acc += tmp
    acc /= float(sum(int(n) for n in num_examples))
    if out is None:
        return acc.astype(first.dtype)
    out[...] = acc
    return out


def client_drift(updates: Sequence[np.ndarray], weights: Sequence[int], params: np.ndarray) -> float:
    """mean_k ||w_k - w_avg|| / ||w_avg||: how far the clients' models end from their average, relative to it.

    w_k = params + u_k is client k's model after local training, w_avg = params + sum_k n_k u_k / sum_k n_k
    their weighted average (``weights`` n_k, as the aggregation weighs them; no DP noise), so
    ||w_k - w_avg|| = ||u_k - u_avg||. The mean is over the clients, unweighted; all in float64, nothing is
    modified. 0 exactly for a single client.
    """
    if len(updates) == 0:
        raise ValueError("updates must not be empty")
    if len(updates) != len(weights):
        raise ValueError(f"updates and weights differ in length: {len(updates)} != {len(weights)}")
    params = np.asarray(params)
    for k, (u, n) in enumerate(zip(updates, weights)):
        if not isinstance(u, np.ndarray) or u.shape != params.shape:
            what = u.shape if isinstance(u, np.ndarray) else type(u).__name__
            raise ValueError(f"updates[{k}] is {what}, params is {params.shape}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"weights[{k}] must be an integer > 0, got {n!r}")
    if len(updates) == 1:
        avg = updates[0].astype(np.float64)
    else:
        avg = np.zeros(params.shape, dtype=np.float64)
        for u, n in zip(updates, weights):
            avg += u.astype(np.float64) * int(n)
        avg /= float(sum(int(n) for n in weights))
    norm = math.sqrt(float(np.square(params.astype(np.float64) + avg).sum()))
    spread = sum(math.sqrt(float(np.square(u.astype(np.float64) - avg).sum())) for u in updates) / len(updates)
    return spread / norm if norm > 0 else (0.0 if spread == 0 else math.inf)


# ---- DP-FedAvg: reject, clip, noise ----------------------------------------------------------

def check_update(update: object, *, size: int, dtype) -> str | None:
    """None for a finite 1-D array of ``size`` ``dtype`` values, else why not (for a log line)."""
    dtype = np.dtype(dtype)
    if not isinstance(update, np.ndarray):
        return "is not a numpy array"
    if update.ndim != 1:
        return f"has shape {update.shape}, expected ({size:,},)"
    if update.size != size:
        return f"has {update.size:,} elements, expected {size:,}"
    if update.dtype != dtype:
        return f"has dtype {update.dtype}, expected {dtype}"
    if np.issubdtype(update.dtype, np.inexact):
        bad = update.size - int(np.count_nonzero(np.isfinite(update)))
        if bad:
            return f"has {bad:,} non-finite value{'s' if bad > 1 else ''} (NaN or Inf)"
    return None


def clip_update(update: np.ndarray, max_norm: float) -> float:
    """Scale ``update`` in place to L2 norm <= ``max_norm``; returns the norm before (float64)."""
    if not (isinstance(max_norm, numbers.Real) and max_norm > 0):
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}")
    if not isinstance(update, np.ndarray) or not np.issubdtype(update.dtype, np.floating):
        raise ValueError("update must be a floating-point numpy array")
    norm = math.sqrt(float(np.square(update, dtype=np.float64).sum()))
    if not math.isfinite(norm):
        raise ValueError("update has non-finite values; reject it with check_update first")
    if norm > max_norm:
        update *= update.dtype.type(max_norm / norm)          # keep the dtype (NumPy 2 promotion)
    return norm


def gaussian_noise(size: int, std: float, rng: np.random.Generator,
                   dtype=np.float32) -> np.ndarray:
    """``size`` draws of N(0, std**2) in ``dtype`` from ``rng``."""
    size = _check_int(size, "size", 0)
    if not (isinstance(std, numbers.Real) and 0 <= std < math.inf):
        raise ValueError(f"std must be finite and >= 0, got {std!r}")
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype must be floating point, got {dtype}")
    native = dtype if dtype in (np.float32, np.float64) else np.float64   # what the generator makes
    z = rng.standard_normal(size, dtype=native).astype(dtype, copy=False)
    z *= dtype.type(std)
    return z


# ---- secure aggregation: fixed point and pairwise masks mod 2**64 ----------------------------

def quantize(x: np.ndarray) -> np.ndarray:
    """round(x * 2**32) as int64, computed in float64; |x| must stay <= 2**30.

    The bound keeps each value within 2**62; a sum of quantized vectors is exact mod 2**64 and
    dequantizes correctly while its true value stays below 2**63 (|sum| < 2**31 in x units).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size and not np.isfinite(x).all():
        raise ValueError("quantize: x has non-finite values (NaN or Inf)")
    biggest = float(np.abs(x).max()) if x.size else 0.0
    if biggest * _SCALE > _QMAX:
        raise ValueError(f"quantize: largest magnitude {biggest!r} exceeds 2**30 "
                         f"(x * 2**{FIXED_POINT_BITS} would leave +-2**62 and could overflow a sum)")
    return np.rint(x * _SCALE).astype(np.int64)


def dequantize(q: np.ndarray, dtype=np.float32) -> np.ndarray:
    """q / 2**32 through float64, cast to ``dtype``."""
    q = np.asarray(q)
    if q.dtype != np.int64:
        raise ValueError(f"dequantize: q must be int64, got {q.dtype}")
    return (q.astype(np.float64) / _SCALE).astype(dtype)


def pair_seed(seed: int, round: int, i: int, j: int) -> np.random.SeedSequence:
    """The mask seed shared by clients ``i < j`` in ``round``.

    In the real protocol i and j agree on it by Diffie-Hellman key agreement and the server never
    learns it; this simulation derives it from the run seed instead, so it protects nothing from
    anyone who knows that seed.
    """
    seed = _check_int(seed, "seed", 0)
    round = _check_int(round, "round", 0)
    if not _check_int(i, "i", 0) < _check_int(j, "j", 0):
        raise ValueError(f"pair_seed needs i < j, got i={i}, j={j}")
    return np.random.SeedSequence(seed, spawn_key=(_SECAGG, round, int(i), int(j)))


def _prg(ss: np.random.SeedSequence, size: int) -> np.ndarray:
    return np.random.default_rng(ss).bit_generator.random_raw(size)   # uniform uint64


def mask(q: np.ndarray, client: int, sampled: Sequence[int], *, seed: int, round: int) -> np.ndarray:
    """q + sum_{j > client} PRG(s_cj) - sum_{j < client} PRG(s_jc) mod 2**64, as int64.

    Summed over all ``sampled`` clients the masks cancel exactly; ``q`` is not modified.
    """
    q = np.asarray(q)
    if q.dtype != np.int64:
        raise ValueError(f"mask: q must be int64 (from quantize), got {q.dtype}")
    ids, client = [_check_int(c, "sampled client", 0) for c in sampled], _check_int(client, "client", 0)
    if len(set(ids)) != len(ids):
        raise ValueError(f"sampled has repeated client ids: {ids}")
    if client not in ids:
        raise ValueError(f"client {client} is not in sampled")
    out = q.view(np.uint64).copy()                           # wrapping arithmetic mod 2**64
    for j in ids:
        if j != client:
            r = _prg(pair_seed(seed, round, min(client, j), max(client, j)), q.size).reshape(q.shape)
            if client < j:
                out += r
            else:
                out -= r
    return out.view(np.int64)


def secure_sum(masked: Sequence[np.ndarray]) -> np.ndarray:
    """The wrapping (mod 2**64) sum of the masked int64 vectors, as int64.

    Equals the sum of the unmasked vectors exactly when every sampled client's vector is here.
    """
    if len(masked) == 0:
        raise ValueError("masked must not be empty")
    first = np.asarray(masked[0])
    total = np.zeros(first.shape, dtype=np.uint64)
    for k, m in enumerate(masked):
        m = np.asarray(m)
        if m.dtype != np.int64 or m.shape != first.shape:
            raise ValueError(f"masked[{k}] is {m.shape} {m.dtype}, expected {first.shape} int64")
        total += m.view(np.uint64)
    return total.view(np.int64)


# ---- strategies: objects composed at start-up ------------------------------------------------

@dataclass(frozen=True)
class ClientSampler:
    """Each round's clients: :func:`sample_clients` of ``fraction`` of ``num_clients`` (no message needed)."""
    num_clients: int
    fraction: float
    seed: int

    def per_round(self) -> int:
        return num_clients_per_round(self.num_clients, self.fraction)

    def sample(self, round: int) -> np.ndarray:
        return sample_clients(self.num_clients, self.fraction, seed=self.seed, round=round)


@dataclass(frozen=True)
class WeightedAverage:
    """FedAvg's rule: the updates averaged with weights n_k (their example counts), or with equal weights
    (``equal``, as DP-FedAvg does, so that no client's weight depends on its data)."""
    equal: bool = False
    all_or_nothing = False          # a rejected update leaves the others' average intact

    def weight(self, num_examples: int) -> int:
        return 1 if self.equal else num_examples

    def wire_dtype(self, dtype) -> np.dtype:
        return np.dtype(dtype)

    def encode(self, update: np.ndarray, num_examples: int, client: int, sampled, round: int) -> np.ndarray:
        return update

    def check(self, received: np.ndarray, size: int, dtype) -> str | None:
        problem = check_update(received, size=size, dtype=dtype)
        return problem and f"update {problem}"

    def combine(self, updates: Sequence[np.ndarray], counts: Sequence[int], round: int) -> np.ndarray:
        """The average in float64."""
        return weighted_average(updates, [self.weight(n) for n in counts]).astype(np.float64)

    def describe(self) -> str:
        return "equal-weight average" if self.equal else "example-weighted average"


@dataclass(frozen=True)
class SecureAggregation(WeightedAverage):
    """Pairwise-masked secure aggregation (Bonawitz et al. 2017): each client sends
    mask(quantize(weight * update)) as int64; the server learns only the weighted sum, and only when every
    sampled client's vector is there (the masks cancel only together)."""
    seed: int = 0
    all_or_nothing = True

    def wire_dtype(self, dtype) -> np.dtype:
        return np.dtype(np.int64)

    def encode(self, update, num_examples, client, sampled, round):
        q = quantize(update.astype(np.float64) * self.weight(num_examples))
        return mask(q, client, list(sampled), seed=self.seed, round=round)

    def check(self, received, size, dtype):
        return None if received.size == size else f"update has {received.size:,} elements, expected {size:,}"

    def combine(self, updates, counts, round):
        return dequantize(secure_sum(updates), np.float64) / sum(self.weight(n) for n in counts)

    def describe(self) -> str:
        return "secure aggregation of the " + super().describe()


@dataclass(frozen=True)
class DifferentialPrivacy:
    """DP-FedAvg (McMahan et al. 2018): every update clipped to L2 norm ``clip`` by its client; Gaussian
    noise of std ``noise`` * ``clip`` / m added to the average of the m accepted updates."""
    clip: float
    noise: float
    seed: int

    def privatize(self, update: np.ndarray) -> None:
        clip_update(update, self.clip)

    def add_noise(self, average: np.ndarray, accepted: int, round: int) -> np.ndarray:
        if self.noise <= 0:
            return average
        rng = data_rng(self.seed, "dp-noise", round)
        return average + gaussian_noise(average.size, self.noise * self.clip / accepted, rng, np.float64)


@dataclass(frozen=True)
class Strategy:
    """Who takes part (``sampler``), how updates travel and combine (``rule``), and DP (``privacy``)."""
    sampler: ClientSampler
    rule: Union[WeightedAverage, SecureAggregation]
    privacy: DifferentialPrivacy | None = None

    def client_message(self, update: np.ndarray, num_examples: int, client: int, sampled,
                       round: int) -> tuple[np.ndarray, bool]:
        """What a client sends for ``update``, and whether it could be encoded (a non-finite update is
        sent as it is for the server to reject, or, when it cannot be masked, as nothing)."""
        finite = bool(np.isfinite(update).all())
        if not finite:
            return (np.zeros(0, dtype=np.int64) if self.rule.all_or_nothing else update), False
        if self.privacy:
            self.privacy.privatize(update)
        return self.rule.encode(update, num_examples, client, sampled, round), True

    def aggregate(self, updates: Sequence[np.ndarray], counts: Sequence[int], round: int) -> np.ndarray:
        """The update to add to the global model, in float64."""
        avg = self.rule.combine(updates, counts, round)
        return self.privacy.add_noise(avg, len(updates), round) if self.privacy else avg

    def drift(self, updates: Sequence[np.ndarray], counts: Sequence[int], params: np.ndarray) -> float | None:
        """:func:`client_drift` of the accepted updates around the global model ``params``, weighted as the
        rule weighs them (the clipped updates under DP, before the noise); None under secure aggregation,
        where the server sees only masked vectors, or without updates."""
        if self.rule.all_or_nothing or not updates:
            return None
        return client_drift(updates, [self.rule.weight(n) for n in counts], params)

    def describe(self) -> str:
        return self.rule.describe() + (f", DP clip {self.privacy.clip:g} noise {self.privacy.noise:g}"
                                       if self.privacy else "")


def make_strategy(*, num_clients: int, fraction: float, seed: int, secure_agg: bool = False,
                  dp_clip: float | None = None, dp_noise: float = 0.0) -> Strategy:
    """FedAvg's strategy from its options: DP averages with equal weights; secure aggregation masks."""
    equal = dp_clip is not None
    rule = SecureAggregation(equal=equal, seed=seed) if secure_agg else WeightedAverage(equal=equal)
    privacy = DifferentialPrivacy(dp_clip, dp_noise, seed) if dp_clip is not None else None
    return Strategy(ClientSampler(num_clients, fraction, seed), rule, privacy)


# ---- a look at the split --------------------------------------------------------------------

def draw_partition(ax, hist: np.ndarray, *, title: str = "", colorbar: bool = True, counts: bool | None = None):
    """Draw the heatmap of ``(clients, classes)`` example counts on the matplotlib axes ``ax`` (one panel of a
    bigger figure, or :func:`plot_partition`'s); ``counts``: write each cell's count (default: while there are
    at most 30 clients and classes). Returns the image."""
    hist = np.asarray(hist)
    if hist.ndim != 2 or 0 in hist.shape:
        raise ValueError(f"hist must be a non-empty (clients, classes) array, got shape {hist.shape}")
    from matplotlib.ticker import MaxNLocator

    clients, classes = hist.shape
    im = ax.imshow(hist, aspect="auto", interpolation="nearest", cmap="viridis")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label="examples")
    ax.set(xlabel="class", ylabel="client", title=title or f"{clients} clients x {classes} classes")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(classes, 20)))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(clients, 25)))
    if counts if counts is not None else (clients <= 30 and classes <= 30):      # counts in cells while readable
        light = hist.max() / 2
        for (c, k), v in np.ndenumerate(hist):
            ax.text(k, c, f"{v:g}", ha="center", va="center", fontsize=7,
                    color="black" if v > light else "white")
    return im


def plot_partition(hist: np.ndarray, path: str | os.PathLike, *, title: str = "") -> None:
    """Heatmap of ``(clients, classes)`` example counts (:func:`mpisim.data.label_histogram`), as a PNG."""
    hist = np.asarray(hist)
    if hist.ndim != 2 or 0 in hist.shape:
        raise ValueError(f"hist must be a non-empty (clients, classes) array, got shape {hist.shape}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients, classes = hist.shape
    fig, ax = plt.subplots(figsize=(min(4 + 0.45 * classes, 16), min(2 + 0.25 * clients, 14)))
    draw_partition(ax, hist, title=title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
