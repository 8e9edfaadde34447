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
clients, an aggregation rule (:class:`WeightedAverage`, a robust one, or :class:`SecureAggregation`) says
how a client encodes its update and how the server combines them, :class:`DifferentialPrivacy` clips
updates and noises the average, and a :class:`NormBound` is the server's own clipping. A paradigm
(``mpisim/fedavg.py``) moves the bytes; everything here is tested on its own.

* Client drift (:func:`client_drift`; the name is from Karimireddy et al. 2020, "SCAFFOLD"): how far the
  round's clients end from their average after local training, measured by the server from the updates it
  receives; it grows as the clients' data get less IID. Secure aggregation hides the individual updates, so
  there it is not measured.
* Server-side defences against Byzantine clients: each header is checked against what the server knows
  (:func:`check_header`: the example count comes from the partition, not from the client), each update's
  L2 norm is bounded by the server (:class:`NormBound`), and robust rules replace the average:
  coordinate-wise median and trimmed mean (Yin et al. 2018, "Byzantine-Robust Distributed Learning:
  Towards Optimal Statistical Rates"), Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning
  with Adversaries: Byzantine Tolerant Gradient Descent"), chosen by :func:`parse_aggregate`.
  :class:`Attack` is what a misbehaving client does, so that each defence can be watched at work.
* Privacy accounting (:func:`dp_epsilon`): the epsilon of DP-FedAvg's rounds, each a Poisson-sampled
  Gaussian mechanism, from Google's ``dp-accounting`` library (its RDP accountant; Mironov 2017,
  "Renyi Differential Privacy"), imported only when it is needed.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import numbers
import os
import zlib
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from ..data.partition import data_rng
from .checkpoint import atomic_write_bytes
from .shamir import PRIME, random_below, reconstruct
from .shamir import share as shamir_share

__all__ = ["AGGREGATES", "ATTACKS", "FIXED_POINT_BITS", "Attack", "ClientSampler", "CoordinateMedian",
           "DifferentialPrivacy", "Krum", "NormBound", "SecureAggregation", "Strategy", "TrimmedMean",
           "WeightedAverage", "aggregate_problem", "check_claim", "check_header", "check_report", "check_update",
           "choose_attackers", "client_drift", "clip_update", "coordinate_median", "dequantize", "dp_epsilon",
           "draw_partition", "gaussian_noise", "krum_scores", "krum_select", "make_strategy", "mask",
           "num_clients_per_round", "pair_seed", "parse_aggregate", "parse_attack", "plot_partition", "quantize",
           "sample_clients", "secure_sum", "trimmed_mean", "update_norm", "weighted_average"]

FIXED_POINT_BITS = 32                     # quantize: x -> round(x * 2**32)
_SCALE = float(2 ** FIXED_POINT_BITS)
_QMAX = float(2 ** 62)                    # largest |quantized value|: leaves headroom for a sum
_SECAGG = zlib.crc32(b"secagg")           # spawn-key purpose of the pairwise mask streams
_SHARE_PAD = zlib.crc32(b"secagg-share")  # ... and of the pads that encrypt a key's shares for their holders
_GENERATOR = 3                            # Diffie-Hellman in the integers mod PRIME (a stand-in group)
_M64 = (1 << 64) - 1


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


# ---- the server's defences: claims, norms, robust aggregation ---------------------------------

def check_claim(examples: float, *, expected_examples: int) -> str | None:
    """None when a client's claimed example count is the one the server knows, else why not.

    The server computes the partition from the seed as every rank does, so a client's example count is
    known, not taken on trust: a claim that differs (NaN and Inf included) is refused."""
    expected_examples = _check_int(expected_examples, "expected_examples", 0)
    if not examples == expected_examples:                # NaN compares unequal
        return f"claims {float(examples):g} examples, its partition holds {expected_examples}"
    return None


def check_report(loss_sum: float, correct: float, *, examples: int, local_epochs: int) -> str | None:
    """None when a client's training report is possible, else why not: the loss sum must be finite and
    >= 0, the correct count an integer in [0, examples * local_epochs] (each example is seen once per
    local epoch)."""
    examples = _check_int(examples, "examples", 0)
    local_epochs = _check_int(local_epochs, "local_epochs", 1)
    if not (math.isfinite(loss_sum) and loss_sum >= 0):
        return f"reports a loss sum of {float(loss_sum):g}"
    seen = examples * local_epochs
    if not (math.isfinite(correct) and 0 <= correct <= seen and correct == int(correct)):
        return f"reports {float(correct):g} correct predictions of {seen}"
    return None


def check_header(examples: float, loss_sum: float, correct: float, *, expected_examples: int,
                 local_epochs: int) -> str | None:
    """None when a client's header agrees with what the server knows (:func:`check_claim`) and reports a
    possible training (:func:`check_report`), else why not (for a log line)."""
    return (check_claim(examples, expected_examples=expected_examples)
            or check_report(loss_sum, correct, examples=expected_examples, local_epochs=local_epochs))


def update_norm(update: np.ndarray) -> float:
    """The L2 norm of ``update``, summed in float64."""
    return math.sqrt(float(np.square(update, dtype=np.float64).sum()))


@dataclass(frozen=True)
class NormBound:
    """The server's bound on each received update: one above ``max_norm`` (L2) is scaled down to it in place.

    Server-side clipping: under ``--dp-clip S`` the clients clip to S already, and the server clips again,
    so a client that skips its own clipping gains nothing. An update a client clipped itself can come out
    a rounding above S (float32: a relative 2**-23 at most); the server leaves anything within 4 machine
    epsilons of the bound alone, so an honest run is unchanged bit for bit."""
    max_norm: float
    option: str = "--max-update-norm"           # what set the bound (for messages)

    def __post_init__(self) -> None:
        if not (isinstance(self.max_norm, numbers.Real) and 0 < self.max_norm < math.inf):
            raise ValueError(f"max_norm must be finite and > 0, got {self.max_norm!r}")

    def apply(self, update: np.ndarray) -> float | None:
        """Clip a finite floating-point ``update`` in place; its norm before if it was clipped, else None."""
        norm = update_norm(update)
        if norm <= self.max_norm * (1 + 4 * float(np.finfo(update.dtype).eps)):
            return None
        update *= update.dtype.type(self.max_norm / norm)          # keep the dtype (NumPy 2 promotion)
        return norm


def _stacked(updates: Sequence[np.ndarray]) -> np.ndarray:
    """The updates as rows of one (k, P) float64 array, after checking they are alike."""
    if len(updates) == 0:
        raise ValueError("updates must not be empty")
    first = updates[0]
    if not isinstance(first, np.ndarray) or first.ndim != 1 or not np.issubdtype(first.dtype, np.floating):
        raise ValueError(f"updates must be 1-D floating-point numpy arrays, got {first!r:.60}")
    for k, u in enumerate(updates):
        if not isinstance(u, np.ndarray) or u.shape != first.shape or u.dtype != first.dtype:
            what = f"{u.shape} {u.dtype}" if isinstance(u, np.ndarray) else type(u).__name__
            raise ValueError(f"updates[{k}] is {what}, updates[0] is {first.shape} {first.dtype}")
    return np.stack([u.astype(np.float64) for u in updates])          # (k, P)


def coordinate_median(updates: Sequence[np.ndarray]) -> np.ndarray:
    """The coordinate-wise median of the updates, in float64 (Yin et al. 2018): each coordinate is the
    median of the k clients' values (the mean of the middle two for even k), so fewer than half of the
    clients cannot move it outside the range of the honest values."""
    return np.median(_stacked(updates), axis=0)


def _trimmed(beta: float, k: int) -> int:
    """floor(beta k), with beta as written (0.29 x 100 is 29, though the double 0.29 is a hair below)."""
    return math.floor(round(beta * k, 9))


def trimmed_mean(updates: Sequence[np.ndarray], beta: float) -> np.ndarray:
    """The coordinate-wise beta-trimmed mean, in float64 (Yin et al. 2018): in each coordinate the
    floor(beta k) largest and smallest of the k values are dropped and the rest averaged."""
    if not (isinstance(beta, numbers.Real) and 0 <= beta < 0.5):
        raise ValueError(f"beta must be in [0, 0.5), got {beta!r}")
    U = _stacked(updates)
    k = _trimmed(beta, len(U))
    if k == 0:
        return U.mean(axis=0)
    return np.sort(U, axis=0)[k:len(U) - k].mean(axis=0)


def krum_scores(updates: Sequence[np.ndarray], f: int) -> np.ndarray:
    """Krum's score of each update (Blanchard et al. 2017): the sum of its squared L2 distances to its
    k - f - 2 nearest other updates (k updates, f of them possibly Byzantine), in float64.

    The neighbour count is kept within [1, k - 1], so a round left with k <= f + 2 updates (after
    rejections) still scores them; the guarantee of the paper needs k > 2 f + 2."""
    f = _check_int(f, "f", 0)
    U = _stacked(updates)
    k = len(U)
    if k == 1:
        return np.zeros(1)
    d = np.stack([np.square(U - U[i]).sum(axis=1) for i in range(k)])    # (k, k) squared distances
    near = min(max(k - f - 2, 1), k - 1)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :near].sum(axis=1)


def krum_select(updates: Sequence[np.ndarray], f: int, m: int = 1) -> np.ndarray:
    """The indices of the ``m`` updates with the lowest Krum scores, best first (ties: the lower index);
    Krum is m = 1, Multi-Krum m > 1 (at most the number of updates)."""
    scores = krum_scores(updates, f)
    m = min(_check_int(m, "m", 1), len(scores))
    return np.argsort(scores, kind="stable")[:m]


# ---- attacks: what a misbehaving client does --------------------------------------------------

# kind -> (what its value is, or None, and what it does); the order is the one --help lists
ATTACKS = {
    "nan": (None, "non-finite values in its update"),
    "size": (None, "an update one element short"),
    "scale": ("FACTOR", "its update times FACTOR"),
    "examples": ("N", "claims N examples in its header, and weighs its update by N under --secure-agg"),
    "signflip": (None, "minus its update"),
    "noise": ("STD", "Gaussian noise of std STD in place of its update"),
    "labelflip": (None, "trains on flipped labels, class c as classes-1-c, and sends that update"),
    "dropout": (None, "masks its update, then fails before sending it (under --secure-agg the others' shares of "
                      "its mask key let the server remove its masks)"),
}


@dataclass(frozen=True)
class Attack:
    """What a Byzantine client does (``kind`` one of :data:`ATTACKS`, ``value`` its number). An attacker
    also skips its own DP clipping: only the server's bound holds it."""
    kind: str
    value: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack {self.kind!r}: one of {', '.join(ATTACKS)}")
        if (ATTACKS[self.kind][0] is None) != (self.value is None):
            raise ValueError(f"attack {self.kind} takes {'no value' if ATTACKS[self.kind][0] is None else 'a value'}")

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"

    @property
    def flips_labels(self) -> bool:
        return self.kind == "labelflip"

    def claimed_examples(self, examples: int) -> float:
        """The example count the client's header claims."""
        return self.value if self.kind == "examples" else examples

    def corrupt(self, update: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The vector the client sends instead of its honest ``update`` (which may be modified)."""
        if self.kind == "nan":
            update[::7] = np.nan
        elif self.kind == "size":
            update = update[:-1].copy()
        elif self.kind == "signflip":
            np.negative(update, out=update)
        with np.errstate(over="ignore", invalid="ignore"):   # a huge value may overflow: the server rejects it
            if self.kind == "scale":
                update *= update.dtype.type(self.value)
            elif self.kind == "noise":
                update = gaussian_noise(update.size, self.value, rng, update.dtype)
        return update


def parse_attack(text: str) -> Attack:
    """``KIND`` or ``KIND:VALUE`` (see :data:`ATTACKS`) as an :class:`Attack`; ValueError says what is wrong.
    ``examples:N`` takes any number (NaN, Inf and negative ones included: they are what a server must
    survive); ``scale:FACTOR`` a finite one; ``noise:STD`` a finite one >= 0."""
    kind, _, value = str(text).partition(":")
    kinds = ", ".join(k if v is None else f"{k}:{v}" for k, (v, _) in ATTACKS.items())
    if kind not in ATTACKS:
        raise ValueError(f"expected an attack, one of {kinds}; got {text!r}")
    what = ATTACKS[kind][0]
    if what is None:
        if value or ":" in text:
            raise ValueError(f"attack {kind} takes no value, got {text!r}")
        return Attack(kind)
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"attack {kind} needs a number: {kind}:{what}, got {text!r}") from None
    if kind == "scale" and not math.isfinite(v):
        raise ValueError(f"scale:FACTOR needs a finite FACTOR, got {value}")
    if kind == "noise" and not 0 <= v < math.inf:
        raise ValueError(f"noise:STD needs a finite STD >= 0, got {value}")
    return Attack(kind, v)


def choose_attackers(num_clients: int, fraction: float, *, seed: int) -> np.ndarray:
    """The sorted ids of round(fraction * num_clients) clients, drawn from ``data_rng(seed, "attackers")``
    (the same on every rank); ValueError when that is no client."""
    num_clients = _check_int(num_clients, "num_clients", 1)
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    count = round(float(fraction) * num_clients)
    if count < 1:
        raise ValueError(f"a fraction of {fraction:g} of {num_clients} clients is no client")
    return np.sort(data_rng(seed, "attackers").choice(num_clients, size=count, replace=False)).astype(np.int64)


# ---- privacy accounting: Google's dp-accounting ------------------------------------------------

def _dp_accounting():
    try:
        import dp_accounting
        from dp_accounting import rdp
    except ImportError as e:
        raise ImportError(f"privacy accounting needs Google's dp-accounting library (pip install dp-accounting): "
                          f"{e}") from None
    return dp_accounting, rdp


@contextlib.contextmanager
def _absl_quiet():
    """The RDP accountant logs a warning for each fractional order whose series does not converge (it leaves
    that order out, as it should); those lines would bury the run's own."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def dp_epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """The epsilon of ``rounds`` rounds of DP-FedAvg at ``delta``: each round a Gaussian mechanism of noise
    multiplier z (std z S on the sum of updates clipped to S) on a Poisson sample of the clients at
    ``sampling_rate`` q, composed with dp-accounting's RDP accountant (add-or-remove-one neighbouring:
    user-level privacy, as in McMahan et al. 2018). 0 for no rounds; inf without noise (z = 0).

    FedAvg here samples exactly m = q K clients, not a Poisson number of them; accounting it as Poisson
    sampling at q = m / K is the usual approximation (the server's mean also divides by the accepted m,
    not by a fixed q K)."""
    if not (isinstance(noise_multiplier, numbers.Real) and 0 <= noise_multiplier < math.inf):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier!r}")
    if not (isinstance(sampling_rate, numbers.Real) and 0 < sampling_rate <= 1):
        raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
    rounds = _check_int(rounds, "rounds", 0)
    if not (isinstance(delta, numbers.Real) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    dp, rdp = _dp_accounting()
    event = dp.PoissonSampledDpEvent(float(sampling_rate), dp.GaussianDpEvent(float(noise_multiplier)))
    accountant = rdp.RdpAccountant()
    try:
        with _absl_quiet(), np.errstate(all="ignore"):
            accountant.compose(event, rounds)
            return float(accountant.get_epsilon(float(delta)))
    except ArithmeticError as e:           # the library's own arithmetic fails for extreme noise (1e-300, 1e300)
        raise ValueError(f"dp-accounting cannot compute epsilon for noise multiplier {noise_multiplier:g}, sampling "
                         f"rate {sampling_rate:g}, {rounds} rounds, delta {delta:g}: {type(e).__name__}: {e}") from None


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


def mask_key(seed: int, round: int, client: int) -> int:
    """Client ``client``'s secret mask key of ``round``, in [2, PRIME - 1).

    In the real protocol a client draws it at random and tells no one; this simulation derives it from the
    run seed, so it protects nothing from anyone who knows that seed (what is simulated is the protocol:
    the key agreement, the Shamir shares and the recovery from them)."""
    rng = data_rng(_check_int(seed, "seed", 0), "secagg-key", _check_int(round, "round", 0),
                   _check_int(client, "client", 0))
    return 2 + random_below(rng, PRIME - 3)


def public_key(seed: int, round: int, client: int) -> int:
    """What ``client`` advertises in ``round``: g**key mod PRIME."""
    return pow(_GENERATOR, mask_key(seed, round, client), PRIME)


def agreed_secret(key: int, other_public: int) -> int:
    """Diffie-Hellman: the secret two clients agree on, from one's key and the other's public key."""
    return pow(other_public, key, PRIME)


def _pair(secret: int, round: int, i: int, j: int, purpose: int = _SECAGG) -> np.random.SeedSequence:
    return np.random.SeedSequence(secret, spawn_key=(purpose, round, min(i, j), max(i, j)))


def pair_seed(seed: int, round: int, i: int, j: int) -> np.random.SeedSequence:
    """The mask seed shared by clients ``i < j`` in ``round``: from the secret they agree on (Diffie-Hellman
    on their mask keys), which the server does not learn unless it rebuilds a key from its Shamir shares."""
    seed = _check_int(seed, "seed", 0)
    round = _check_int(round, "round", 0)
    if not _check_int(i, "i", 0) < _check_int(j, "j", 0):
        raise ValueError(f"pair_seed needs i < j, got i={i}, j={j}")
    return _pair(agreed_secret(mask_key(seed, round, i), public_key(seed, round, j)), round, i, j)


def secagg_threshold(m: int) -> int:
    """Shares needed to rebuild a mask key when ``m`` clients are sampled: a majority, and at least 2, so
    that a recovered sum is never one client's update alone (Bonawitz et al.'s t > m/2)."""
    return max(2, m // 2 + 1)


def _pad(secret: int, round: int, i: int, j: int) -> tuple[int, int]:
    lo, hi = np.random.default_rng(_pair(secret, round, i, j, _SHARE_PAD)).bit_generator.random_raw(2)
    return int(lo), int(hi)


def key_shares(seed: int, round: int, client: int, sampled: Sequence[int]) -> np.ndarray:
    """Client ``client``'s mask key cut into Shamir shares, one for each sampled client (share k for
    ``sampled[k]``, at x = k + 1; any :func:`secagg_threshold` of them rebuild the key), each encrypted for
    its holder with a pad from the secret the two agree on: an (m, 2) uint64 array the server stores and
    cannot read."""
    ids = [int(c) for c in sampled]
    key = mask_key(seed, round, client)
    shares = shamir_share(key, len(ids), secagg_threshold(len(ids)), data_rng(seed, "secagg-shares", round, client))
    out = np.zeros((len(ids), 2), dtype=np.uint64)
    for k, (j, (_, y)) in enumerate(zip(ids, shares)):
        lo, hi = _pad(agreed_secret(key, public_key(seed, round, j)), round, client, j)
        out[k] = ((y & _M64) ^ lo, (y >> 64) ^ hi)
    return out


def open_share(cipher: np.ndarray, seed: int, round: int, owner: int, holder: int) -> tuple[int, int]:
    """What ``holder`` does when the server asks for its share of ``owner``'s key: decrypts ``cipher`` (its row
    of ``owner``'s :func:`key_shares`) with the pad of the secret the two agree on; returns (lo, hi) words."""
    lo, hi = _pad(agreed_secret(mask_key(seed, round, holder), public_key(seed, round, owner)), round, owner, holder)
    return int(cipher[0]) ^ lo, int(cipher[1]) ^ hi


def rebuild_key(shares: Sequence[tuple[int, int, int]], m: int) -> int:
    """A dropped client's mask key from its holders' opened shares ``(x, lo, hi)`` (x = holder's index + 1)."""
    return reconstruct([(x, lo | (hi << 64)) for x, lo, hi in shares], secagg_threshold(m))


def unmask_correction(keys: dict[int, int], survivors: Sequence[int], seed: int, round: int, size: int) -> np.ndarray:
    """What to add (mod 2**64) to the survivors' masked sum to remove the masks they share with the dropped
    clients, whose rebuilt keys are ``keys`` ({client: key}): survivor j's vector holds +PRG(s_jd) when j < d
    and -PRG(s_jd) when j > d, for each dropped d."""
    out = np.zeros(size, dtype=np.uint64)
    for d, key in keys.items():
        for j in map(int, survivors):
            r = _prg(_pair(agreed_secret(key, public_key(seed, round, j)), round, d, j), size)
            if j < d:
                out -= r
            else:
                out += r
    return out.view(np.int64)


def add_wrapping(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b mod 2**64 for int64 vectors."""
    return (a.view(np.uint64) + b.view(np.uint64)).view(np.int64)


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

    def can_encode(self, update: np.ndarray, num_examples: int) -> bool:
        return True                 # the update travels as it is (the server checks it)

    def encode(self, update: np.ndarray, num_examples: int, client: int, sampled, round: int) -> np.ndarray:
        return update

    def check(self, received: np.ndarray, size: int, dtype) -> str | None:
        problem = check_update(received, size=size, dtype=dtype)
        return problem and f"update {problem}"

    def combine(self, updates: Sequence[np.ndarray], counts: Sequence[int], round: int) -> np.ndarray:
        """The average in float64."""
        return weighted_average(updates, [self.weight(n) for n in counts]).astype(np.float64)

    def spec(self) -> str:
        """The rule as ``--aggregate`` names it."""
        return "mean"

    def describe(self) -> str:
        return "equal-weight average" if self.equal else "example-weighted average"


@dataclass(frozen=True)
class CoordinateMedian(WeightedAverage):
    """The coordinate-wise median of the updates (:func:`coordinate_median`; the counts play no part)."""

    def combine(self, updates, counts, round):
        return coordinate_median(updates)

    def spec(self) -> str:
        return "median"

    def describe(self) -> str:
        return "coordinate-wise median"


@dataclass(frozen=True)
class TrimmedMean(WeightedAverage):
    """The coordinate-wise ``beta``-trimmed mean of the updates (:func:`trimmed_mean`; unweighted)."""
    beta: float = 0.1

    def combine(self, updates, counts, round):
        return trimmed_mean(updates, self.beta)

    def spec(self) -> str:
        return f"trimmed-mean:{self.beta:g}"

    def describe(self) -> str:
        return f"coordinate-wise trimmed mean (beta {self.beta:g})"


@dataclass(frozen=True)
class Krum(WeightedAverage):
    """Krum (``select`` 1: the update with the lowest :func:`krum_scores` for ``f`` Byzantine clients) or
    Multi-Krum (the ``select`` best, averaged with the FedAvg weights: n_k, or equal under DP)."""
    f: int = 0
    select: int = 1

    def combine(self, updates, counts, round):
        picks = krum_select(updates, self.f, self.select)
        return weighted_average([updates[i] for i in picks],
                                [self.weight(counts[i]) for i in picks]).astype(np.float64)

    def spec(self) -> str:
        return f"krum:{self.f}" if self.select == 1 else f"multi-krum:{self.f},{self.select}"

    def describe(self) -> str:
        if self.select == 1:
            return f"Krum (f={self.f})"
        return f"Multi-Krum (f={self.f}): the {self.select} best, {WeightedAverage.describe(self)}"


AGGREGATES = ("mean", "median", "trimmed-mean:BETA", "krum:F", "multi-krum:F,M")


def parse_aggregate(text: str, *, equal: bool = False) -> WeightedAverage:
    """The rule ``--aggregate`` names (one of :data:`AGGREGATES`); ValueError says what is wrong. ``equal``:
    the averages weigh every client equally (DP-FedAvg)."""
    name, _, arg = str(text).partition(":")
    usage = f"expected {', '.join(AGGREGATES[:-1])} or {AGGREGATES[-1]}; got {text!r}"
    try:
        if name in ("mean", "median") and not arg and ":" not in text:
            return WeightedAverage(equal=equal) if name == "mean" else CoordinateMedian(equal=equal)
        if name == "trimmed-mean":
            beta = float(arg)
            if not 0 < beta < 0.5:
                raise ValueError(f"trimmed-mean:BETA needs 0 < BETA < 0.5, got {arg}")
            return TrimmedMean(equal=equal, beta=beta)
        if name == "krum":
            f = int(arg)
            if f < 0:
                raise ValueError(f"krum:F needs F >= 0 (the Byzantine clients it tolerates), got {arg}")
            return Krum(equal=equal, f=f)
        if name == "multi-krum":
            f, m = (int(x) for x in arg.split(","))
            if f < 0 or m < 1:
                raise ValueError(f"multi-krum:F,M needs F >= 0 and M >= 1, got {arg}")
            return Krum(equal=equal, f=f, select=m)
    except ValueError as e:
        if str(e).startswith(("trimmed-mean:", "krum:", "multi-krum:")):
            raise
        raise ValueError(usage) from None
    raise ValueError(usage)


def aggregate_problem(rule: WeightedAverage, per_round: int) -> str | None:
    """Why ``rule`` cannot do its job with ``per_round`` clients a round (None if it can)."""
    m = _check_int(per_round, "per_round", 1)
    if isinstance(rule, TrimmedMean) and _trimmed(rule.beta, m) == 0:
        return (f"{rule.spec()} drops floor({rule.beta:g} x {m}) = 0 updates at each end with {m} clients per "
                f"round: raise BETA to at least {1 / m:.3g}")
    if isinstance(rule, Krum):
        if m <= 2 * rule.f + 2:
            return (f"{rule.spec()} needs more than 2F+2 = {2 * rule.f + 2} clients per round to tolerate F = "
                    f"{rule.f} (Blanchard et al.), but a round has {m}")
        if rule.select > m - rule.f:
            return f"{rule.spec()} averages at most m - F = {m - rule.f} updates (m = {m} clients per round)"
    return None


@dataclass(frozen=True)
class SecureAggregation(WeightedAverage):
    """Pairwise-masked secure aggregation (Bonawitz et al. 2017): each client sends
    mask(quantize(weight * update)) as int64; the server learns only the weighted sum: the masks cancel only
    together, or once the masks of the missing clients are removed (:func:`unmask_correction`, with keys rebuilt
    from their Shamir shares)."""
    seed: int = 0
    all_or_nothing = True

    def wire_dtype(self, dtype) -> np.dtype:
        return np.dtype(np.int64)

    def can_encode(self, update, num_examples):
        """Whether weight * update is finite and within the fixed-point range of :func:`quantize`."""
        with np.errstate(all="ignore"):
            x = update.astype(np.float64) * float(self.weight(num_examples))
        return bool(np.isfinite(x).all()) and (x.size == 0 or float(np.abs(x).max()) * _SCALE <= _QMAX)

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
    """Who takes part (``sampler``), how updates travel and combine (``rule``), DP (``privacy``), and the
    server's bound on each update's norm (``bound``)."""
    sampler: ClientSampler
    rule: Union[WeightedAverage, SecureAggregation]
    privacy: DifferentialPrivacy | None = None
    bound: NormBound | None = None

    def client_message(self, update: np.ndarray, num_examples: float, client: int, sampled,
                       round: int, *, clip: bool = True) -> tuple[np.ndarray, bool]:
        """What a client sends for ``update``, and whether it could be encoded (a non-finite update is
        sent as it is for the server to reject, or, when it cannot be masked, as nothing). ``clip=False``:
        skip the client's DP clipping (what a Byzantine client does)."""
        finite = bool(np.isfinite(update).all())
        if not finite:
            return (np.zeros(0, dtype=np.int64) if self.rule.all_or_nothing else update), False
        if self.privacy and clip:
            self.privacy.privatize(update)
        if not self.rule.can_encode(update, num_examples):
            return np.zeros(0, dtype=np.int64), False
        return self.rule.encode(update, num_examples, client, sampled, round), True

    def receive(self, update: np.ndarray) -> float | None:
        """The server's bound on a received update that passed its checks: clipped in place; the norm before
        when it was clipped, else None."""
        return self.bound.apply(update) if self.bound else None

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

    def sampling_rate(self) -> float:
        """q = m / K, the share of the clients a round samples."""
        return self.sampler.per_round() / self.sampler.num_clients

    def epsilon(self, rounds: int, delta: float) -> float | None:
        """The privacy spent after ``rounds`` rounds at ``delta`` (:func:`dp_epsilon`); None without DP."""
        if self.privacy is None:
            return None
        return dp_epsilon(self.privacy.noise, self.sampling_rate(), rounds, delta)

    def describe(self) -> str:
        return (self.rule.describe()
                + (f", updates clipped by the server to norm {self.bound.max_norm:g}" if self.bound else "")
                + (f", DP clip {self.privacy.clip:g} noise {self.privacy.noise:g}" if self.privacy else ""))


def make_strategy(*, num_clients: int, fraction: float, seed: int, secure_agg: bool = False,
                  dp_clip: float | None = None, dp_noise: float = 0.0, aggregate: str = "mean",
                  max_update_norm: float | None = None) -> Strategy:
    """FedAvg's strategy from its options: DP averages with equal weights; secure aggregation masks; the
    server bounds each update's norm (to ``dp_clip``, else to ``max_update_norm``) where it sees them.

    ValueError for what cannot go together: a robust rule or a norm bound needs the individual updates,
    which secure aggregation hides; ``max_update_norm`` with ``dp_clip`` (the server clips to dp_clip)."""
    equal = dp_clip is not None
    if secure_agg and aggregate != "mean":
        raise ValueError(f"aggregate {aggregate} needs each client's update; secure aggregation shows only their sum")
    if secure_agg and max_update_norm is not None:
        raise ValueError("max_update_norm needs each client's update; secure aggregation shows only their sum")
    if dp_clip is not None and max_update_norm is not None:
        raise ValueError("max_update_norm with dp_clip: the server already clips every update to dp_clip")
    rule = SecureAggregation(equal=equal, seed=seed) if secure_agg else parse_aggregate(aggregate, equal=equal)
    privacy = DifferentialPrivacy(dp_clip, dp_noise, seed) if dp_clip is not None else None
    bound = (None if secure_agg else NormBound(dp_clip, "--dp-clip") if dp_clip is not None else
             NormBound(max_update_norm) if max_update_norm is not None else None)
    return Strategy(ClientSampler(num_clients, fraction, seed), rule, privacy, bound)


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
