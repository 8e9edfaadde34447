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

Every rank draws the round's sample from the seed, so no message announces it; the result does not
depend on the number of ranks (the server receives the updates in client order).

* ``--partition iid|shards|dirichlet``: who holds which examples (``--shards-per-client``, ``--alpha``);
  ``--plot-partition FILE.png`` draws the label distribution per client.
* ``--secure-agg``: pairwise additive masks (Bonawitz et al. 2017) on fixed-point updates mod 2^64: the
  server sees only masked vectors, and their sum is exactly the sum of the updates. A rejected client
  leaves masks that do not cancel, so that round keeps the old model (the paper's recovery of a dropped
  client's masks by secret sharing is not implemented).
* ``--dp-clip S --dp-noise z``: each update is clipped to L2 norm S, the updates are averaged with equal
  weights and Gaussian noise of std z S / m is added (McMahan et al. 2018, DP-FedAvg).
* Client drift, ``drift`` in each round's record (and summed up at the end): the mean over the round's
  accepted clients of ||w_k - w_avg|| / ||w_avg||, their models after local training against their
  average (:func:`mpisim.train.federated.client_drift`), computed by the server from the updates it
  received (under --dp-clip the clipped ones, before the noise). ``None`` under --secure-agg, which hides
  the individual updates, and in a round that kept the old model.

    python -m mpisim.fedavg --sim 3                                   # 100 clients on 3 simulated ranks
    python -m mpisim.fedavg --sim 3 --partition shards --plot-partition parts.png
    mpiexec -n 3 python -m mpisim.fedavg --local-epochs 1 --local-batch inf   # FedSGD
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import dataclass

import numpy as np

from .data import dirichlet_partition, iid_partition, label_histogram, shard_partition
from .data.partition import data_rng
from .train import gather_batch
from .train.distributed import Formula
from .train.federated import make_strategy, plot_partition
from .train.options import _float_between, _int_at_least, prepare_output_file
from .train.runtime import Paradigm, Payload, Role, Run
from .train.metrics import plural

PROG = "python -m mpisim.fedavg"
PARTITIONS = ("iid", "shards", "dirichlet")
TAG_MODEL, TAG_HEADER, TAG_UPDATE = 301, 302, 303
# the header a client sends before its update: examples, elements that follow, status, loss sum, correct
HEADER = 5
OK, FAILED = 0, 1
BAD_KINDS = ("nan", "size")


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
    bad_client: tuple[int, str] | None = None   # (client, nan | size)


def _local_batch(text: str) -> int:
    if text.strip().lower() in ("inf", "full"):
        return 0
    return _int_at_least(1, "a positive integer or inf")(text)


def _bad_client(text: str) -> tuple[int, str]:
    try:
        c, kind = text.split(":")
        c = int(c)
        if c < 0 or kind not in BAD_KINDS:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CLIENT:KIND with KIND one of {', '.join(BAD_KINDS)}, "
                                         f"got {text!r}") from None
    return c, kind


_positive_float = _float_between(0, float("inf"), "a finite number > 0")


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("federated", "each round's --metrics record has drift, the client drift: the mean "
                                          "over the round's clients\nof ||w_k - w_avg|| / ||w_avg|| after local "
                                          "training (null with --secure-agg, which hides\nthe individual updates)")
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
    g.add_argument("--dp-clip", type=_positive_float, default=None, metavar="S", help="clip each update to L2 norm S")
    g.add_argument("--dp-noise", type=float, default=0.0, metavar="z",
                   help="with --dp-clip: Gaussian noise multiplier, std z*S on the sum (default 0)")
    g.add_argument("--bad-client", type=_bad_client, default=None, metavar="CLIENT:KIND",
                   help="make CLIENT return a bad update (nan: non-finite values, size: one element short), "
                        "to see the server reject it")


def check(p: argparse.ArgumentParser, train, o: Options) -> None:
    if o.fraction > 1:
        p.error(f"--fraction must be in (0, 1], got {o.fraction}")
    if not 0 <= o.dp_noise < float("inf"):
        p.error(f"--dp-noise must be a finite number >= 0, got {o.dp_noise}")
    if o.dp_noise and o.dp_clip is None:
        p.error("--dp-noise needs --dp-clip S (the noise is scaled to the clipping norm)")
    if o.plot_partition:
        if not o.plot_partition.lower().endswith(".png"):
            p.error(f"--plot-partition writes a PNG: give a file name ending in .png, not {o.plot_partition}")
        if importlib.util.find_spec("matplotlib") is None:
            p.error("--plot-partition needs matplotlib: pip install matplotlib")
        prepare_output_file(p, "--plot-partition", o.plot_partition)
    if o.bad_client and o.bad_client[0] >= o.clients:
        p.error(f"--bad-client {o.bad_client[0]}: clients are 0..{o.clients - 1}")
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
        self.parts = make_partition(o, ds.y_train, tr.seed)
        self.strategy = make_strategy(num_clients=o.clients, fraction=o.fraction, seed=tr.seed,
                                      secure_agg=o.secure_agg, dp_clip=o.dp_clip, dp_noise=o.dp_noise)
        self.m = self.strategy.sampler.per_round()
        self.title = (f"FedAvg, {o.partition}, K={o.clients}, C={o.fraction:g}, E={o.local_epochs}, {ds.name}")

    def payload(self) -> Payload:
        """R rounds, m sampled clients each: the model down, the update up (int64 when masked)."""
        run, o, N = self.run, self.run.opts, self.run.size
        P, b, R, m = run.model.num_params, run.model.params.itemsize, run.epochs_run, self.m
        b_up = 8 if o.secure_agg else b
        down, up = R * m * P * b, R * m * P * b_up
        up_text = "R·m·8·P (int64 masked)" if o.secure_agg else "R·m·b·P"
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
        updates, counts, rejected, sums = self.collect(sampled, rnd)
        kept = not updates or (self.strategy.rule.all_or_nothing and bool(rejected))
        drift = None if kept else self.strategy.drift(updates, counts, run.model.params)   # a measurement only
        with run.meter.computing():
            if self.strategy.rule.all_or_nothing and rejected:
                run.say(f"    round {rnd + 1}: secure aggregation cannot unmask the sum without every sampled "
                        f"client; the model is kept as it was")
            elif updates:
                run.model.params += self.strategy.aggregate(updates, counts, rnd).astype(run.model.dtype, copy=False)
            else:
                run.say(f"    round {rnd + 1}: every client was rejected; the model is kept as it was")
        now = run.meter.snapshot()
        accepted = 0 if self.strategy.rule.all_or_nothing and rejected else len(updates)
        return {"loss": sums[0] / max(sums[2], 1), "train_acc": sums[1] / max(sums[2], 1), "clients": len(sampled),
                "accepted": accepted, "rejected": rejected, "drift": drift, "lr": run.lr_at(rnd),
                "seconds": run.elapsed(),
                "server_payload_bytes": int(now["payload_bytes"] - run.before["payload_bytes"]),
                "server_payload_messages": int(now["payload_messages"] - run.before["payload_messages"])}

    def epilogue(self) -> str | None:
        """The client drift over the run (each round's is in its record)."""
        if self.run.opts.secure_agg:
            return "client drift: not measured (secure aggregation shows the server only masked updates)"
        got = [(r["round"], r["drift"]) for r in self.run.rep.log.records if r.get("drift") is not None]
        if not got:
            return None
        mean = sum(d for _, d in got) / len(got)
        return (f"client drift, mean over each round's clients of ||w_k - w_avg|| / ||w_avg|| after local "
                f"training: {got[0][1]:.3g} in round {got[0][0]}, {got[-1][1]:.3g} in round {got[-1][0]}, "
                f"{mean:.3g} on average over {plural(len(got), 'round')}")

    def collect(self, sampled: np.ndarray, rnd: int):
        """Each sampled client's header and update, in client order, checked: (updates, counts, rejected,
        [loss sum, correct, seen])."""
        run, t, P = self.run, self.run.t, self.run.model.num_params
        header = np.zeros(HEADER, dtype=np.float64)
        updates, counts, rejected = [], [], []
        sums = [0.0, 0.0, 0.0]
        want = self.strategy.rule.wire_dtype(run.model.dtype)
        for c in map(int, sampled):
            with run.meter.comm("control"):
                t.recv(header, host(c, t.size), TAG_HEADER)
            n_c, size, status = int(header[0]), int(header[1]), int(header[2])
            sums = [sums[0] + header[3], sums[1] + header[4], sums[2] + max(n_c, 0) * run.opts.local_epochs]
            buf = np.empty(max(size, 0), dtype=want)
            with run.meter.comm("payload"):
                t.recv(buf, host(c, t.size), TAG_UPDATE)                 # received even if rejected: drained
            if status == FAILED:
                reason = "reported a non-finite update (it cannot be masked)"
            elif n_c <= 0:
                reason = f"claims {n_c} examples"
            else:
                reason = self.strategy.rule.check(buf, P, run.model.dtype)
            if reason:
                rejected.append({"client": c, "reason": reason})
                run.say(f"    round {rnd + 1}: client {c} rejected: {reason}")
            else:
                updates.append(buf)
                counts.append(n_c)
        return updates, counts, rejected, sums


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
        for c in mine:
            with run.meter.computing():
                loss_sum, correct, msg, ok = self.train_client(c, sampled, rnd, lr)
            header[:] = (len(self.parts[c]), msg.size, OK if ok or not run.opts.secure_agg else FAILED,
                         loss_sum, correct)
            with run.meter.comm("control"):
                t.send(header, 0, TAG_HEADER)
            with run.meter.comm("payload"):
                t.send(np.ascontiguousarray(msg), 0, TAG_UPDATE)

    def train_client(self, c: int, sampled: np.ndarray, rnd: int, lr: float):
        """E local epochs of client ``c`` from the global model, from a fresh optimizer; returns (loss sum,
        correct, the message for the server, whether the update could be encoded)."""
        run, o, model, opt = self.run, self.run.opts, self.run.model, self.run.opt
        part = self.parts[c]
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
                with np.errstate(all="ignore"):
                    loss, k = model.train_step(xb, run.ds.y_train[idx])
                opt.step()
                loss_sum, correct, seen = loss_sum + loss * len(idx), correct + k, seen + len(idx)
        run.t.compute(model.train_flops(seen))       # virtual time, with --network ...,compute=RATE
        upd = model.params - self.glob                 # the update: local - global
        if o.bad_client and o.bad_client[0] == c:
            if o.bad_client[1] == "nan":
                upd[::7] = np.nan
            else:
                upd = upd[:-1].copy()
        msg, ok = self.strategy.client_message(upd, len(part), c, sampled, rnd)
        return loss_sum, correct, msg, ok


PARADIGM = Paradigm(name="fedavg", doc=__doc__, setup=lambda run: (Server if run.rank == 0 else Clients)(run),
                    options=Options, add_args=add_args, check=check, check_world=check_world, default_ranks=3,
                    no_batchnorm="averaging running statistics of non-IID clients is its own research topic "
                                 "(FedBN); use mpisim.allreduce",
                    unit="round", defaults=dict(epochs=30, lr=0.05, optimizer="sgd"),
                    description="Federated averaging over K clients on N-1 ranks: IID or not, secure aggregation, DP.")
build_parser, main = PARADIGM.build_parser, PARADIGM.main


if __name__ == "__main__":
    sys.exit(main())
