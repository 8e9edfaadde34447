"""``mpisim.fedavg``: federated averaging (McMahan et al. 2017, "Communication-Efficient
Learning of Deep Networks from Decentralized Data").

Rank 0 is the server; K clients (``--clients``) each own a part of the training set and are spread over
the other ranks (client c lives on rank 1 + c mod (N-1)), so 100 clients run on 3 processes. Each round
the server samples m = max(1, round(C K)) clients (``--fraction C``), sends each the global model, each
trains E local epochs (``--local-epochs``) with batch B (``--local-batch``; ``inf`` = the client's whole
data, so E=1, B=inf is FedSGD) from a fresh optimizer, and returns its update (local minus global model)
with its example count. The server averages the updates weighted by the counts and evaluates the model.
How clients are sampled and how updates combine is a strategy composed at start-up
(:func:`mpisim.train.federated.make_strategy`); a client whose update has the wrong size or non-finite
values is rejected with a logged reason, not averaged in.

Nothing a client says is taken on trust. The server computes the partition from the seed as every rank
does, so it knows each client's example count: a header that claims another (NaN and Inf included), or
reports an impossible loss or correct count, is rejected with the reason (``rejected`` in the round's
record). The averaging weights are the partition's counts.

* ``--dp-clip S``: the server clips every update it accepts to S as well (server-side clipping: a client
  that skips its own clipping gains nothing). Without it, ``--max-update-norm M`` makes the server clip each
  update above L2 norm M down to M (clipped, not rejected: an honest client with a large early update still
  counts, and an attacker's pull is at most n_k M / sum n). Each round's record lists the clipped clients
  and their norms (``clipped``).
* ``--aggregate mean|median|trimmed-mean:BETA|krum:F|multi-krum:F,M``: how the server combines the accepted
  updates: FedAvg's weighted mean (the default), the coordinate-wise median or BETA-trimmed mean (Yin et al.
  2018), Krum or Multi-Krum for F Byzantine clients (Blanchard et al. 2017; m > 2F+2 clients per round).
  These need the individual updates, so they are refused with --secure-agg.
* ``--bad-client C:KIND`` makes client C attack, ``--bad-clients FRACTION:KIND`` a seeded random fraction
  of the clients: ``nan`` (non-finite values), ``size`` (one element short), ``scale:FACTOR`` (its update
  times FACTOR), ``examples:N`` (claims N examples), ``signflip`` (minus its update), ``noise:STD`` (Gaussian
  noise in place of its update), ``labelflip`` (trains on labels c -> classes-1-c). An attacker skips its
  own DP clipping. Each round's record lists the sampled attackers (``attackers``: known from the command
  line, for analysis; the server does not use it). ``python scripts/byzantine_table.py`` tabulates attacks
  against aggregators.

Every rank draws the round's sample from the seed, so no message announces it; the result does not
depend on the number of ranks (the server receives the updates in client order).

* ``--partition iid|shards|dirichlet``: who holds which examples (``--shards-per-client``, ``--alpha``);
  ``--plot-partition FILE.png`` draws the label distribution per client.
* ``--secure-agg``: pairwise additive masks (Bonawitz et al. 2017) on fixed-point updates mod 2^64: the
  server sees only masked vectors, and their sum is exactly the sum of the updates. Each client also sends
  Shamir shares of its mask key, encrypted for the other sampled clients: when a client drops out or is
  rejected, a majority of survivors open their shares of its key and the server removes its masks, so the
  round completes with the survivors' exact sum (``recovered`` in the record). At least 2 clients a round.
* ``--dp-clip S --dp-noise z``: each update is clipped to L2 norm S, the updates are averaged with equal
  weights and Gaussian noise of std z S / m is added (McMahan et al. 2018, DP-FedAvg). After every round the
  privacy spent so far, epsilon at ``--dp-delta`` (default 1e-5), is in the round's record and printed
  below its progress line: Google's dp-accounting library (its RDP accountant) composes one Poisson-sampled
  Gaussian mechanism per round, at sampling rate m / K (:func:`mpisim.train.federated.dp_epsilon`).
  Without noise epsilon is infinite (null in the metrics file).
* Client drift, ``drift`` in each round's record (and summed up at the end): the mean over the round's
  accepted clients of ||w_k - w_avg|| / ||w_avg||, their models after local training against their
  average (:func:`mpisim.train.federated.client_drift`), computed by the server from the updates it
  received (under --dp-clip the clipped ones, before the noise). ``None`` under --secure-agg, which hides
  the individual updates, and in a round that kept the old model.

    python -m mpisim.fedavg --sim 3                                   # 100 clients on 3 simulated ranks
    python -m mpisim.fedavg --sim 3 --partition shards --plot-partition parts.png
    mpiexec -n 3 python -m mpisim.fedavg --local-epochs 1 --local-batch inf   # FedSGD
    python -m mpisim.fedavg --sim 3 --bad-clients 0.1:noise:1 --aggregate median  # 10 attackers, robust
    python -m mpisim.fedavg --sim 3 --dp-clip 1 --dp-noise 1          # DP-FedAvg, epsilon every round
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from dataclasses import dataclass

import numpy as np

from .data import dirichlet_partition, iid_partition, label_histogram, shard_partition
from .data.partition import data_rng
from .train import gather_batch
from .train.distributed import Formula, ParadigmError
from .train.federated import (ATTACKS, AGGREGATES, Attack, add_wrapping, aggregate_problem, check_claim,
                              check_report, choose_attackers, key_shares, make_strategy, num_clients_per_round,
                              open_share, parse_aggregate, parse_attack, plot_partition, rebuild_key, secagg_threshold,
                              unmask_correction)
from .train.options import _float_between, _int_at_least, prepare_output_file
from .train.runtime import Paradigm, Payload, Role, Run
from .train.metrics import plural

PROG = "python -m mpisim.fedavg"
PARTITIONS = ("iid", "shards", "dirichlet")
TAG_MODEL, TAG_HEADER, TAG_UPDATE = 301, 302, 303
TAG_SHARES, TAG_RECOVER = 304, 305      # secure aggregation: key shares in, share requests out and answers in
# the header a client sends before its update: examples, elements that follow, status, loss sum, correct
HEADER = 5
OK, FAILED, DROPPED = 0, 1, 2
DEFAULT_DELTA = 1e-5                    # --dp-delta: below 1 / K for K up to 100,000 clients
ATTACK_KINDS = ", ".join(k if v is None else f"{k}:{v}" for k, (v, _) in ATTACKS.items())


@dataclass(frozen=True)
class Options:
    clients: int = 100                  # K
    fraction: float = 0.1               # C: m = max(1, round(C K)) clients per round
    local_epochs: int = 5               # E
    local_batch: int = 10               # B; 0: the client's whole data (FedSGD with E = 1)
    partition: str = "iid"              # iid | shards | dirichlet
    shards_per_client: int = 2
    alpha: float = 0.5                  # Dirichlet concentration
    plot_partition: str | None = None
    secure_agg: bool = False
    dp_clip: float | None = None
    dp_noise: float = 0.0
    dp_delta: float | None = None       # the delta of the epsilon reported under --dp-clip (None: DEFAULT_DELTA)
    aggregate: str = "mean"             # mean | median | trimmed-mean:BETA | krum:F | multi-krum:F,M
    max_update_norm: float | None = None   # without --dp-clip: the server clips each update to this L2 norm
    bad_client: tuple[int, str] | None = None      # (client, attack: nan | size | scale:FACTOR | ...)
    bad_clients: tuple[float, str] | None = None   # (fraction of the clients, attack)


def _local_batch(text: str) -> int:
    if text.strip().lower() in ("inf", "full"):
        return 0
    return _int_at_least(1, "a positive integer or inf")(text)


def _bad_client(text: str) -> tuple[int, str]:
    c, _, kind = text.partition(":")
    try:
        c = int(c)
        if c < 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CLIENT:KIND with CLIENT a client number and KIND one of "
                                         f"{ATTACK_KINDS}, got {text!r}") from None
    return c, _attack(kind)


def _bad_clients(text: str) -> tuple[float, str]:
    f, _, kind = text.partition(":")
    try:
        f = float(f)
        if not 0 < f <= 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FRACTION:KIND with FRACTION in (0, 1] and KIND one of "
                                         f"{ATTACK_KINDS}, got {text!r}") from None
    return f, _attack(kind)


def _attack(kind: str) -> str:
    try:
        parse_attack(kind)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return kind


def _aggregate(text: str) -> str:
    try:
        parse_aggregate(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def attackers(o: Options, seed: int) -> dict[int, Attack]:
    """Client -> its attack, from --bad-clients (a seeded random fraction) and --bad-client (which wins)."""
    out = {}
    if o.bad_clients:
        attack = parse_attack(o.bad_clients[1])
        out = {int(c): attack for c in choose_attackers(o.clients, o.bad_clients[0], seed=seed)}
    if o.bad_client:
        out[o.bad_client[0]] = parse_attack(o.bad_client[1])
    return out


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):        # ValueError: sys.modules holds None for it
        return False


_positive_float = _float_between(0, float("inf"), "a finite number > 0")
# a norm or a delta that is subnormal (below 2.2e-308) would read as 0 once the ranks flush subnormals
_positive_normal = _float_between(sys.float_info.min, float("inf"), "a finite number > 0 (at least 2.3e-308)")
NOISE_RANGE = (1e-6, 1e6)               # --dp-noise z other than 0: where the accountant computes, and z means something


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("federated", "each round's --metrics record has drift, the client drift: the mean "
                                          "over the round's clients\nof ||w_k - w_avg|| / ||w_avg|| after local "
                                          "training (null with --secure-agg, which hides\nthe individual updates); "
                                          "rejected (client and reason); clipped (client and norm, with\n--dp-clip or "
                                          "--max-update-norm); attackers (with --bad-client[s]); epsilon and delta\n"
                                          "(with --dp-clip; epsilon null without --dp-noise: no guarantee)")
    g.add_argument("--clients", type=_int_at_least(1, "a positive integer"), default=100, metavar="K",
                   help="number of clients (default 100)")
    g.add_argument("--fraction", type=_positive_float, default=0.1, metavar="C",
                   help="fraction of clients sampled per round, in (0, 1] (default 0.1)")
    g.add_argument("--local-epochs", type=_int_at_least(1, "a positive integer"), default=5, metavar="E",
                   help="local epochs per round (default 5)")
    g.add_argument("--local-batch", type=_local_batch, default=10, metavar="B",
                   help="local batch size, or inf for the client's whole data (default 10)")
    g.add_argument("--partition", choices=PARTITIONS, default="iid", help="(default iid)")
    g.add_argument("--shards-per-client", type=_int_at_least(1, "a positive integer"), default=2,
                   help="--partition shards: label-sorted shards per client (default 2)")
    g.add_argument("--alpha", type=_positive_float, default=0.5,
                   help="--partition dirichlet: concentration; small is skewed (default 0.5)")
    g.add_argument("--plot-partition", metavar="FILE.png", default=None,
                   help="draw the label distribution per client as a heatmap")
    g.add_argument("--secure-agg", action="store_true", help="pairwise-masked secure aggregation (Bonawitz et al.)")
    g.add_argument("--dp-clip", type=_positive_normal, default=None, metavar="S", help="clip each update to L2 norm S")
    g.add_argument("--dp-noise", type=float, default=0.0, metavar="z",
                   help=f"with --dp-clip: Gaussian noise multiplier, std z*S on the sum: 0 or {NOISE_RANGE[0]:g} to "
                        f"{NOISE_RANGE[1]:g} (default 0)")
    g.add_argument("--dp-delta", type=_float_between(sys.float_info.min, 1, "a number in (0, 1), at least 2.3e-308"),
                   default=None, metavar="DELTA",
                   help=f"with --dp-clip: report after each round the epsilon spent at this delta (default "
                        f"{DEFAULT_DELTA:g}; dp-accounting's RDP accountant, sampling rate m/K)")
    g.add_argument("--aggregate", type=_aggregate, default="mean", metavar="RULE",
                   help="how the server combines the updates: " + ", ".join(AGGREGATES) + " (coordinate-wise "
                        "median and trimmed mean, Yin et al. 2018; Krum, Blanchard et al. 2017; default mean)")
    g.add_argument("--max-update-norm", type=_positive_normal, default=None, metavar="M",
                   help="the server clips each update above L2 norm M down to M (default off; with --dp-clip S "
                        "the server clips to S)")
    g.add_argument("--bad-client", type=_bad_client, default=None, metavar="CLIENT:KIND",
                   help="make CLIENT attack, to see the server's defences: " + "; ".join(
                       f"{k if v is None else f'{k}:{v}'}: {what}" for k, (v, what) in ATTACKS.items()))
    g.add_argument("--bad-clients", type=_bad_clients, default=None, metavar="FRACTION:KIND",
                   help="make a seeded random FRACTION of the clients attack (KIND as for --bad-client)")


def check(p: argparse.ArgumentParser, train, o: Options) -> None:
    if o.fraction > 1:
        p.error(f"--fraction must be in (0, 1], got {o.fraction}")
    if not 0 <= o.dp_noise < float("inf"):
        p.error(f"--dp-noise must be a finite number >= 0, got {o.dp_noise}")
    if o.dp_noise and o.dp_clip is None:
        p.error("--dp-noise needs --dp-clip S (the noise is scaled to the clipping norm)")
    if o.dp_noise and not NOISE_RANGE[0] <= o.dp_noise <= NOISE_RANGE[1]:
        p.error(f"--dp-noise must be 0 or between {NOISE_RANGE[0]:g} and {NOISE_RANGE[1]:g} (the range the privacy "
                f"accountant computes), got {o.dp_noise:g}")
    if o.plot_partition == "":
        p.error("--plot-partition needs a file name")
    if o.plot_partition:
        if not o.plot_partition.lower().endswith(".png"):
            p.error(f"--plot-partition writes a PNG: give a file name ending in .png, not {o.plot_partition}")
        if importlib.util.find_spec("matplotlib") is None:
            p.error("--plot-partition needs matplotlib: pip install matplotlib")
        prepare_output_file(p, "--plot-partition", o.plot_partition)
    if o.bad_client and o.bad_client[0] >= o.clients:
        p.error(f"--bad-client {o.bad_client[0]}: clients are 0..{o.clients - 1}")
    if o.bad_clients:
        try:
            choose_attackers(o.clients, o.bad_clients[0], seed=0)
        except ValueError as e:
            p.error(f"--bad-clients {o.bad_clients[0]:g}: {e}")
    if o.secure_agg and num_clients_per_round(o.clients, o.fraction) < 2:
        p.error(f"--secure-agg needs at least 2 clients per round, but --clients {o.clients} --fraction "
                f"{o.fraction:g} samples {num_clients_per_round(o.clients, o.fraction)}: the masked sum of one client "
                f"is its update in the clear")
    if o.secure_agg and o.aggregate != "mean":
        p.error(f"--aggregate {o.aggregate} needs each client's update, but --secure-agg shows the server only "
                f"their masked sum: drop one of them")
    if o.secure_agg and o.max_update_norm is not None:
        p.error("--max-update-norm needs each client's update to measure its norm, but --secure-agg shows the "
                "server only their masked sum: drop one of them")
    if o.dp_clip is not None and o.max_update_norm is not None:
        p.error("--max-update-norm with --dp-clip: the server already clips every update to the --dp-clip norm; "
                "give one of them")
    problem = aggregate_problem(parse_aggregate(o.aggregate), num_clients_per_round(o.clients, o.fraction))
    if problem:
        p.error(f"--aggregate {problem}")
    if o.dp_noise and o.aggregate != "mean":
        p.error(f"--dp-noise with --aggregate {o.aggregate}: the noise and its epsilon are calibrated to the mean "
                f"of the clipped updates; use --aggregate mean, or --dp-clip without --dp-noise")
    if o.dp_delta is not None and o.dp_clip is None:
        p.error("--dp-delta is the delta of the epsilon reported under --dp-clip S --dp-noise z: add them")
    if o.dp_noise and not _importable("dp_accounting"):
        p.error("--dp-noise reports the privacy spent (epsilon) with Google's dp-accounting library: "
                "pip install dp-accounting")
    if train.inject_fault and train.inject_fault[2] == "nan":
        p.error("--inject-fault ...:nan is for the trainers with one loss per step; for a client with a NaN "
                "update use --bad-client CLIENT:nan")


def check_world(train, o: Options, N: int) -> str | None:
    if N < 2:
        return (f"fedavg needs at least 2 ranks (the server and one rank of clients), got {N}: "
                f"mpiexec -n 3 {PROG} or --sim 3")
    return None


def make_partition(o: Options, labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """Every rank computes the same partition from the seed."""
    if o.partition == "iid":
        return iid_partition(len(labels), o.clients, seed=seed)
    if o.partition == "shards":
        return shard_partition(labels, o.clients, shards_per_client=o.shards_per_client, seed=seed)
    return dirichlet_partition(labels, o.clients, alpha=o.alpha, seed=seed)


def host(client: int, N: int) -> int:
    return 1 + client % (N - 1)


# -- the roles ---------------------------------------------------------------------------------------------
class Federated(Role):
    """What the server and the client ranks share: the partition, the strategy, the closed forms."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        o, tr, ds = run.opts, run.train, run.ds
        if o.clients > ds.num_train:
            run.refuse(f"--clients {o.clients} is more than the {ds.num_train} training examples")
        self.parts = make_partition(o, ds.y_train, tr.seed)      # the same on every rank: the server knows it
        self.strategy = make_strategy(num_clients=o.clients, fraction=o.fraction, seed=tr.seed,
                                      secure_agg=o.secure_agg, dp_clip=o.dp_clip, dp_noise=o.dp_noise,
                                      aggregate=o.aggregate, max_update_norm=o.max_update_norm)
        self.attacks = attackers(o, tr.seed)
        self.delta = DEFAULT_DELTA if o.dp_delta is None else o.dp_delta
        self.m = self.strategy.sampler.per_round()
        self.title = (f"FedAvg, {o.partition}, K={o.clients}, C={o.fraction:g}, E={o.local_epochs}, {ds.name}"
                      + ("" if o.aggregate == "mean" else f", {o.aggregate}"))

    def payload(self) -> Payload:
        """R rounds, m sampled clients each: the model down, the update up (int64 when masked)."""
        run, o, N = self.run, self.run.opts, self.run.size
        P, b, R, m = run.model.num_params, run.model.params.itemsize, run.epochs_run, self.m
        b_up = 8 if o.secure_agg else b
        first = run.state.start_epoch
        gone = [a for a in self.attacks.values() if a.kind == "dropout"]    # their updates are empty messages
        D = sum(int(c) in self.attacks and self.attacks[int(c)].kind == "dropout"
                for r in range(first, first + R) for c in self.strategy.sampler.sample(r)) if gone else 0
        down, up = R * m * P * b, (R * m - D) * P * b_up
        up_text = ("(R·m - D)·" if D else "R·m·") + ("8·P (int64 masked)" if o.secure_agg else "b·P") + \
            (f", D = {D} dropped" if D else "")
        formulas = {"server": Formula(f"R·m·b·P (receives {up_text})", R * m, down, R * m, up),
                    "clients": Formula(up_text + " (receive R·m·b·P)", R * m, up, R * m, down)}
        legend = (f"communication in this run: P = {P:,} parameters, b = {b} bytes, N = {N} ranks, R = {R} rounds, "
                  f"m = {m} clients per round, K = {o.clients} clients. Payload: the model to each sampled client, "
                  f"its update back; control: a {HEADER * 8}-byte header per update")
        return Payload({"server": [0], "clients": list(range(1, N))}, formulas, legend)


class Server(Federated):
    """Rank 0: sends the model to each sampled client, checks and aggregates their updates."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        o, tr, ds = run.opts, run.train, run.ds
        sizes = np.array([len(q) for q in self.parts])
        hist = label_histogram(ds.y_train, self.parts, ds.num_classes)
        N = run.size
        run.say(f"fedavg: server + {o.clients} clients on {N - 1} rank{'s' if N > 2 else ''} ({run.where()}); "
                f"{ds.describe()}")
        run.say(f"partition {o.partition}: {sizes.min()}..{sizes.max()} examples per client (median "
                f"{int(np.median(sizes))}), {np.mean((hist > 0).sum(axis=1)):.1f} classes per client on average")
        run.say(f"model {run.model.describe()}; {self.m} clients per round (C={o.fraction:g}), E={o.local_epochs}, "
                f"B={'inf' if o.local_batch == 0 else o.local_batch}, client {tr.optimizer} lr {tr.lr:g}, "
                f"{plural(tr.epochs, 'round')}" + (", secure aggregation" if o.secure_agg else "")
                + (f", DP clip {o.dp_clip:g} noise {o.dp_noise:g}" if o.dp_clip else "")
                + run.resuming())
        s = self.strategy
        if o.aggregate != "mean" or s.bound:
            run.say(f"server: {s.rule.describe()}"
                    + (f"; updates above L2 norm {s.bound.max_norm:g} clipped to it ({s.bound.option})" if s.bound
                       else ""))
        elif o.secure_agg and o.dp_clip:
            run.say("server: cannot clip (it sees only masked updates): the clipping is the clients' own")
        if s.privacy:
            run.say(f"privacy: epsilon at delta {self.delta:g} after each round, from dp-accounting's RDP accountant "
                    f"(a Poisson-sampled Gaussian mechanism per round, sampling rate m/K = {s.sampling_rate():.3g})"
                    if o.dp_noise else
                    "privacy: no noise (--dp-noise 0), so no differential-privacy guarantee: epsilon is infinite")
        if self.attacks:
            bad = sorted(self.attacks)
            kinds = sorted({str(a) for a in self.attacks.values()})
            run.say(f"attackers: {plural(len(bad), 'client')} ({', '.join(kinds)}): "
                    + ", ".join(map(str, bad[:20])) + (", ..." if len(bad) > 20 else ""))
        run.say("per round: loss and train are the sampled clients' own, on their data during local training "
                "(weighted by examples); test is the averaged model on the test set")
        if o.plot_partition:
            plot_partition(hist, o.plot_partition, title=f"{o.partition} partition of {ds.name}, {o.clients} clients")
            run.say(f"partition plot written to {o.plot_partition}")

    def epoch(self, rnd: int) -> dict:
        run, t = self.run, self.run.t
        sampled = self.strategy.sampler.sample(rnd)
        run.maybe_fail(rnd + 1, run.x_train[:0])
        for c in sampled:
            with run.meter.comm("payload"):
                t.send(run.model.params, host(int(c), t.size), TAG_MODEL)
        updates, counts, rejected, clipped, sums = self.collect(sampled, rnd)
        recovered = self.recover(sampled, rejected, updates, rnd) if run.opts.secure_agg else []
        lost = self.strategy.rule.all_or_nothing and bool(rejected) and not recovered
        kept = not updates or lost
        drift = None if kept else self.strategy.drift(updates, counts, run.model.params)   # a measurement only
        with run.meter.computing():
            if lost:
                run.say(f"    round {rnd + 1}: secure aggregation cannot unmask the sum: {len(updates)} of "
                        f"{len(sampled)} clients left, and rebuilding a missing client's masks takes the shares of "
                        f"{secagg_threshold(len(sampled))}; the model is kept as it was")
            elif updates:
                run.model.params += self.strategy.aggregate(updates, counts, rnd).astype(run.model.dtype, copy=False)
            else:
                run.say(f"    round {rnd + 1}: every client was rejected; the model is kept as it was")
        now = run.meter.snapshot()
        accepted = 0 if lost else len(updates)
        rec = {"loss": sums[0] / max(sums[2], 1), "train_acc": sums[1] / max(sums[2], 1), "clients": len(sampled),
               "accepted": accepted, "rejected": rejected, "drift": drift, "lr": run.lr_at(rnd),
               "seconds": run.elapsed(),
               "server_payload_bytes": int(now["payload_bytes"] - run.before["payload_bytes"]),
               "server_payload_messages": int(now["payload_messages"] - run.before["payload_messages"])}
        if recovered:
            rec["recovered"] = recovered
        if self.strategy.bound:
            rec["clipped"] = clipped
        if self.attacks:
            rec["attackers"] = [int(c) for c in sampled if int(c) in self.attacks]
        if self.strategy.privacy:
            try:
                rec["epsilon"] = self.strategy.epsilon(rnd + 1, self.delta)     # rounds 1..rnd+1, resumed or not
            except ValueError as e:
                raise ParadigmError(f"privacy accounting: {e}") from None
            rec["delta"] = self.delta
        return rec

    def note(self, record: dict) -> str | None:
        """The privacy spent so far, under the round's progress line."""
        if "epsilon" not in record or not self.run.opts.dp_noise:
            return None
        return (f"    privacy: epsilon {record['epsilon']:.4g} at delta {record['delta']:g} after "
                f"{plural(record['round'], 'round')}")

    def epilogue(self) -> str | None:
        """The client drift over the run (each round's is in its record), what the server refused or clipped,
        and the privacy spent."""
        records = self.run.rep.log.records
        lines = []
        if self.run.opts.secure_agg:
            lines.append("client drift: not measured (secure aggregation shows the server only masked updates)")
        got = [(r["round"], r["drift"]) for r in records if r.get("drift") is not None]
        if got and not self.run.opts.secure_agg:
            mean = sum(d for _, d in got) / len(got)
            lines.append(f"client drift, mean over each round's clients of ||w_k - w_avg|| / ||w_avg|| after local "
                         f"training: {got[0][1]:.3g} in round {got[0][0]}, {got[-1][1]:.3g} in round {got[-1][0]}, "
                         f"{mean:.3g} on average over {plural(len(got), 'round')}")
        rejected = sum(len(r.get("rejected") or []) for r in records)
        clipped = sum(len(r.get("clipped") or []) for r in records)
        if rejected or clipped:
            lines.append(f"server: {plural(rejected, 'update')} rejected"
                         + (f", {clipped} clipped to norm {self.strategy.bound.max_norm:g}" if self.strategy.bound
                            else "")
                         + f" over {plural(len(records), 'round')}")
        if records and self.run.opts.dp_noise and records[-1].get("epsilon") is not None:
            lines.append(f"privacy: epsilon {records[-1]['epsilon']:.4g} at delta {self.delta:g} after "
                         f"{plural(records[-1]['round'], 'round')} (dp-accounting, RDP)")
        return "\n".join(lines) or None

    def recover(self, sampled: np.ndarray, rejected: list[dict], updates: list[np.ndarray], rnd: int) -> list[int]:
        """Secure aggregation's dropout recovery (Bonawitz et al. 2017): the masks a missing client (dropped out,
        or rejected) shares with the survivors stay in their sum; with at least the threshold of survivors, each
        opens its share of each missing client's mask key (the server forwards the encrypted share it holds),
        the server rebuilds the keys and removes those masks, and the sum is the survivors' exact sum. Every
        rank hosting a sampled client gets one request (empty when nothing is missing or nothing can be done);
        returns the recovered clients."""
        run, t, seed = self.run, self.run.t, self.run.train.seed
        ids = [int(c) for c in sampled]
        missing = sorted({r["client"] for r in rejected})
        survivors = [c for c in ids if c not in missing]
        can = bool(missing) and bool(updates) and len(survivors) >= secagg_threshold(len(ids))
        asks: dict[int, list[tuple[int, int]]] = {host(c, t.size): [] for c in ids}
        if can:
            for j in survivors:
                asks[host(j, t.size)] += [(j, d) for d in missing]
        opened: dict[int, list[tuple[int, int, int]]] = {d: [] for d in missing}
        with run.meter.comm("control"):
            for src, pairs in sorted(asks.items()):
                rows = np.array([(j, d, *self.shares[d][ids.index(j)]) for j, d in pairs],
                                dtype=np.uint64).reshape(-1, 4)
                t.send(np.array([len(rows)], dtype=np.int64), src, TAG_RECOVER)
                if len(rows):
                    t.send(rows, src, TAG_RECOVER)
            for src, pairs in sorted(asks.items()):
                if pairs:
                    got = np.empty((len(pairs), 2), dtype=np.uint64)
                    t.recv(got, src, TAG_RECOVER)
                    for (j, d), (lo, hi) in zip(pairs, got):
                        opened[d].append((ids.index(j) + 1, int(lo), int(hi)))
        if not can:
            return []
        with run.meter.computing():
            keys = {d: rebuild_key(opened[d], len(ids)) for d in missing}
            updates[0] = add_wrapping(updates[0], unmask_correction(keys, survivors, seed, rnd, updates[0].size))
        run.say(f"    round {rnd + 1}: the masks of client{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(str, missing))} removed with the shares of {len(survivors)} survivors: the sum is "
                f"theirs")
        return missing

    def collect(self, sampled: np.ndarray, rnd: int):
        """Each sampled client's header and update, in client order, checked and bounded: (updates, counts,
        rejected, clipped, [loss sum, correct, seen]); the counts are the partition's."""
        run, t, P = self.run, self.run.t, self.run.model.num_params
        E = run.opts.local_epochs
        header = np.zeros(HEADER, dtype=np.float64)
        updates, counts, rejected, clipped = [], [], [], []
        sums = [0.0, 0.0, 0.0]
        want = self.strategy.rule.wire_dtype(run.model.dtype)
        self.shares = {}
        secure = run.opts.secure_agg
        for c in map(int, sampled):
            src = host(c, t.size)
            with run.meter.comm("control"):
                if secure:                                 # its mask key's shares, encrypted for their holders
                    self.shares[c] = np.empty((len(sampled), 2), dtype=np.uint64)
                    t.recv(self.shares[c], src, TAG_SHARES)
                t.recv(header, src, TAG_HEADER)
            size = header[1]
            if not (math.isfinite(size) and size == int(size) and 0 <= size <= P):
                raise ParadigmError(f"client {c} on rank {src} announced an update of {size:g} elements (the model "
                                    f"has {P:,}): the server cannot receive it")
            buf = np.empty(int(size), dtype=want)
            with run.meter.comm("payload"):
                t.recv(buf, src, TAG_UPDATE)                             # received even if rejected: drained
            n_c = len(self.parts[c])                   # from the partition the server computed, not from the header
            reason = check_claim(header[0], expected_examples=n_c)
            report = reason or check_report(header[3], header[4], examples=n_c, local_epochs=E)
            if report is None:                         # a header that holds up: its loss and correct count count
                sums = [sums[0] + header[3], sums[1] + header[4], sums[2] + n_c * E]
            if reason is None:                         # then the update (a diverged client: its NaNs), then the report
                if header[2] == FAILED:
                    reason = "reported an update it could not mask (non-finite, or beyond the fixed-point range)"
                elif header[2] == DROPPED:
                    reason = "dropped out after masking"
                elif header[2] != OK:
                    reason = f"sent a header with status {header[2]:g}"
                else:
                    reason = self.strategy.rule.check(buf, P, run.model.dtype) or report
            if reason:
                rejected.append({"client": c, "reason": reason})
                run.say(f"    round {rnd + 1}: client {c} rejected: {reason}")
                continue
            norm = self.strategy.receive(buf)          # the server's own clipping, if a bound is set
            if norm is not None:
                clipped.append({"client": c, "norm": norm})
            updates.append(buf)
            counts.append(n_c)
        if clipped:
            run.say(f"    round {rnd + 1}: clipped to norm {self.strategy.bound.max_norm:g}: "
                    + ", ".join(f"client {x['client']} ({x['norm']:.3g})" for x in clipped))
        return updates, counts, rejected, clipped, sums


class Clients(Federated):
    """A client rank: trains each of its sampled clients from the global model and sends the update."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        o = run.opts
        biggest = max(len(q) for q in self.parts)
        self.xbuf = np.empty((biggest if o.local_batch == 0 else min(o.local_batch, biggest), run.ds.num_features),
                             dtype=run.model.dtype)
        self.glob = np.empty_like(run.model.params)

    def epoch(self, rnd: int) -> None:
        run, t = self.run, self.run.t
        sampled = self.strategy.sampler.sample(rnd)
        lr = run.lr_at(rnd)
        run.maybe_fail(rnd + 1, run.x_train[:0])
        mine = [int(c) for c in sampled if host(int(c), t.size) == t.rank]
        for _ in mine:                               # all models first: the server's sends never wait on us
            with run.meter.comm("payload"):
                t.recv(self.glob, 0, TAG_MODEL)
        header = np.zeros(HEADER, dtype=np.float64)
        secure, seed = run.opts.secure_agg, run.train.seed
        for c in mine:
            with run.meter.computing():
                loss_sum, correct, msg, ok, claimed = self.train_client(c, sampled, rnd, lr)
                shares = key_shares(seed, rnd, c, sampled) if secure else None
            status = OK if ok or not secure else FAILED
            attack = self.attacks.get(c)
            if attack is not None and attack.kind == "dropout":    # masked, then gone: nothing arrives
                status, msg = DROPPED, msg[:0]
            header[:] = (claimed, msg.size, status, loss_sum, correct)
            with run.meter.comm("control"):
                if secure:
                    t.send(shares, 0, TAG_SHARES)
                t.send(header, 0, TAG_HEADER)
            with run.meter.comm("payload"):
                t.send(np.ascontiguousarray(msg), 0, TAG_UPDATE)
        if secure and mine:                           # the server's request for shares of missing clients' keys
            with run.meter.comm("control"):
                k = np.zeros(1, dtype=np.int64)
                t.recv(k, 0, TAG_RECOVER)
                if k[0]:
                    rows = np.empty((int(k[0]), 4), dtype=np.uint64)
                    t.recv(rows, 0, TAG_RECOVER)
                    out = np.array([open_share(r[2:], seed, rnd, owner=int(r[1]), holder=int(r[0])) for r in rows],
                                   dtype=np.uint64)
                    t.send(out, 0, TAG_RECOVER)

    def train_client(self, c: int, sampled: np.ndarray, rnd: int, lr: float):
        """E local epochs of client ``c`` from the global model, from a fresh optimizer; returns (loss sum,
        correct, the message for the server, whether the update could be encoded, the examples it claims).
        An attacking client (--bad-client, --bad-clients) does what its :class:`Attack` says."""
        run, o, model, opt = self.run, self.run.opts, self.run.model, self.run.opt
        part = self.parts[c]
        attack = self.attacks.get(c)
        flip = attack is not None and attack.flips_labels
        model.params[...] = self.glob
        opt.reset()
        opt.lr = lr
        B = len(part) if o.local_batch == 0 else o.local_batch
        loss_sum, correct, seen = 0.0, 0, 0
        for e in range(o.local_epochs):
            order = part[data_rng(run.train.seed, "client", rnd, c, e).permutation(len(part))]
            model.seed_dropout(rnd, c, e)
            for s in range(0, len(order), B):
                idx = order[s:s + B]
                xb = gather_batch(run.x_train, idx, self.xbuf)
                y = run.ds.y_train[idx]
                if flip:
                    y = run.ds.num_classes - 1 - y
                with np.errstate(all="ignore"):
                    loss, k = model.train_step(xb, y)
                opt.step()
                loss_sum, correct, seen = loss_sum + loss * len(idx), correct + k, seen + len(idx)
        run.t.compute(model.train_flops(seen))       # virtual time, with --network ...,compute=RATE
        upd = model.params - self.glob                 # the update: local - global
        if attack is None:
            msg, ok = self.strategy.client_message(upd, len(part), c, sampled, rnd)
            return loss_sum, correct, msg, ok, len(part)
        upd = attack.corrupt(upd, data_rng(run.train.seed, "attack", rnd, c))
        claimed = attack.claimed_examples(len(part))
        msg, ok = self.strategy.client_message(upd, claimed, c, sampled, rnd, clip=False)   # it skips clipping
        return loss_sum, correct, msg, ok, claimed


PARADIGM = Paradigm(name="fedavg", doc=__doc__, setup=lambda run: (Server if run.rank == 0 else Clients)(run),
                    options=Options, add_args=add_args, check=check, check_world=check_world, default_ranks=3,
                    no_batchnorm="averaging running statistics of non-IID clients is its own research topic "
                                 "(FedBN); use mpisim.allreduce",
                    unit="round", defaults=dict(epochs=30, lr=0.05, optimizer="sgd"),
                    description="Federated averaging over K clients on N-1 ranks: IID or not, secure aggregation, DP, "
                                "robust aggregation against attacking clients.")
build_parser, main = PARADIGM.build_parser, PARADIGM.main


if __name__ == "__main__":
    sys.exit(main())
