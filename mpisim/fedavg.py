"""``mpisim.fedavg``: federated averaging (HW "Q4", "Q5"; McMahan et al. 2017, "Communication-Efficient
Learning of Deep Networks from Decentralized Data").

Rank 0 is the server; K clients (``--clients``) each own a part of the training set and are spread over
the other ranks (client c lives on rank 1 + c mod (N-1)), so 100 clients run on 3 processes. Each round
the server samples m = max(1, round(C K)) clients (``--fraction C``), sends each the global model, each
trains E local epochs (``--local-epochs``) with batch B (``--local-batch``; ``inf`` = the client's whole
data, so E=1, B=inf is FedSGD) from a fresh optimizer, and returns its update (local minus global model)
with its example count. The server averages the updates weighted by the counts and evaluates the model.
The averaging is the pure function :func:`mpisim.train.federated.weighted_average`; a client whose update
has the wrong size or non-finite values is rejected with a logged reason, not averaged in.

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

    python -m mpisim.fedavg --sim 3                                   # 100 clients on 3 simulated ranks
    python -m mpisim.fedavg --sim 3 --partition shards --plot-partition parts.png
    mpiexec -n 3 python -m mpisim.fedavg --local-epochs 1 --local-batch inf   # FedSGD
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .data import dirichlet_partition, iid_partition, label_histogram, shard_partition
from .data.partition import data_rng
from .train import add_training_args, build_dataset, build_model, build_optimizer, build_schedule, gather_batch
from .train.distributed import (Formula, Meter, ParadigmError, Reporter, add_cluster_args, check_cluster_args,
                                comm_report, paradigm_main, stop_here, maybe_fail, paradigm_config, share_resume)
from .train.federated import (check_update, clip_update, dequantize, gaussian_noise, mask, quantize, sample_clients,
                              secure_sum, weighted_average, plot_partition)
from .train.loop import data_fingerprint, save_state
from .train.options import _int_at_least, check_training_args, prepare_output_file

PROG = "python -m mpisim.fedavg"
PARTITIONS = ("iid", "shards", "dirichlet")
TAG_MODEL, TAG_HEADER, TAG_UPDATE = 301, 302, 303
# the header a client sends before its update: examples, elements that follow, status, loss sum, correct
HEADER = 5
OK, FAILED = 0, 1
BAD_KINDS = ("nan", "size")


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


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Federated averaging over K clients on N-1 client ranks.",
                                epilog=__doc__.rsplit("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(p, epochs=30, lr=0.05, optimizer="sgd", unit="round")
    add_cluster_args(p)
    g = p.add_argument_group("federated")
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
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.batchnorm:
        p.error("--batchnorm is not supported by fedavg (averaging running statistics of non-IID clients "
                "is its own research topic: FedBN); use mpisim.allreduce")
    check_training_args(p, args)
    check_cluster_args(p, args)
    if args.fraction > 1:
        p.error(f"--fraction must be in (0, 1], got {args.fraction}")
    if not 0 <= args.dp_noise < float("inf"):
        p.error(f"--dp-noise must be a finite number >= 0, got {args.dp_noise}")
    if args.dp_noise and args.dp_clip is None:
        p.error("--dp-noise needs --dp-clip S (the noise is scaled to the clipping norm)")
    if args.plot_partition:
        if not args.plot_partition.lower().endswith(".png"):
            p.error(f"--plot-partition writes a PNG: give a file name ending in .png, not {args.plot_partition}")
        import importlib.util
        if importlib.util.find_spec("matplotlib") is None:
            p.error("--plot-partition needs matplotlib: pip install matplotlib")
        prepare_output_file(p, "--plot-partition", args.plot_partition)
    if args.bad_client and args.bad_client[0] >= args.clients:
        p.error(f"--bad-client {args.bad_client[0]}: clients are 0..{args.clients - 1}")
    if args.inject_fault and args.inject_fault[2] == "nan":
        p.error("--inject-fault ...:nan is for the trainers with one loss per step; for a client with a NaN "
                "update use --bad-client CLIENT:nan")
    if args.sim is not None and args.sim < 2:
        p.error("fedavg needs at least 2 ranks: the server and one rank of clients (--sim 2 or more)")


def make_partition(args: argparse.Namespace, labels: np.ndarray) -> list[np.ndarray]:
    """Every rank computes the same partition from the seed."""
    if args.partition == "iid":
        return iid_partition(len(labels), args.clients, seed=args.seed)
    if args.partition == "shards":
        return shard_partition(labels, args.clients, shards_per_client=args.shards_per_client, seed=args.seed)
    return dirichlet_partition(labels, args.clients, alpha=args.alpha, seed=args.seed)


def host(client: int, N: int) -> int:
    return 1 + client % (N - 1)


# -- a client ----------------------------------------------------------------------------------------------
def train_client(args, model, opt, lr: float, x, y, part: np.ndarray, rnd: int, c: int, xbuf) -> tuple[float, int, int]:
    """E local epochs on the client's examples from the current model; returns (loss sum, correct, seen)."""
    opt.state = {k: np.zeros_like(v) for k, v in opt.state.items()}   # a fresh optimizer every round
    opt.steps, opt.lr = 0, lr
    B = len(part) if args.local_batch == 0 else args.local_batch
    loss_sum, correct, seen = 0.0, 0, 0
    for e in range(args.local_epochs):
        order = part[data_rng(args.seed, "client", rnd, c, e).permutation(len(part))]
        model.seed_dropout(rnd, c, e)
        for s in range(0, len(order), B):
            idx = order[s:s + B]
            xb = gather_batch(x, idx, xbuf)
            with np.errstate(all="ignore"):
                loss, k = model.train_step(xb, y[idx])
            opt.step()
            loss_sum, correct, seen = loss_sum + loss * len(idx), correct + k, seen + len(idx)
    return loss_sum, correct, seen


def run_clients(t, args, ds, model, opt, parts, sampled, rnd, lr, meter, x, xbuf) -> None:
    """A client rank: receive the model for each of its sampled clients, train them, send the updates."""
    mine = [c for c in sampled if host(int(c), t.size) == t.rank]
    glob = np.empty_like(model.params)
    for _ in mine:                                    # all models first: the server's sends never wait on us
        with meter.comm("payload"):
            t.recv(glob, 0, TAG_MODEL)
    header = np.zeros(HEADER, dtype=np.float64)
    for c in mine:
        c = int(c)
        model.params[...] = glob
        with meter.computing():
            loss_sum, correct, seen = train_client(args, model, opt, lr, x, ds.y_train, parts[c], rnd, c, xbuf)
            t.compute(model.train_flops(seen))        # virtual time, with --network ...,compute=RATE
            upd = model.params - glob                                    # the update: local - global
            n_c = len(parts[c])
            if args.bad_client and args.bad_client[0] == c:
                if args.bad_client[1] == "nan":
                    upd[::7] = np.nan
                else:
                    upd = upd[:-1].copy()
            finite = bool(np.isfinite(upd).all())
            if args.dp_clip is not None and finite:
                clip_update(upd, args.dp_clip)
            if args.secure_agg:
                if finite:
                    upd = mask(quantize(upd.astype(np.float64) * (1 if args.dp_clip else n_c)), c, sampled.tolist(),
                               seed=args.seed, round=rnd)
                else:
                    upd = np.zeros(0, dtype=np.int64)                    # cannot be masked: report the failure
        header[:] = (n_c, upd.size, FAILED if args.secure_agg and not finite else OK, loss_sum, correct)
        with meter.comm("control"):
            t.send(header, 0, TAG_HEADER)
        with meter.comm("payload"):
            t.send(np.ascontiguousarray(upd), 0, TAG_UPDATE)


# -- the server --------------------------------------------------------------------------------------------
def serve_round(t, args, model, sampled, rnd: int, meter, say) -> dict:
    """Send the model to every sampled client, collect and check the updates, average the good ones."""
    P = model.num_params
    for c in sampled:
        with meter.comm("payload"):
            t.send(model.params, host(int(c), t.size), TAG_MODEL)
    header = np.zeros(HEADER, dtype=np.float64)
    updates, counts, rejected = [], [], []
    loss_sum = correct = seen = 0.0
    want = np.int64 if args.secure_agg else model.dtype
    for c in sampled:
        c = int(c)
        with meter.comm("control"):
            t.recv(header, host(c, t.size), TAG_HEADER)
        n_c, size, status = int(header[0]), int(header[1]), int(header[2])
        loss_sum, correct, seen = loss_sum + header[3], correct + header[4], seen + max(n_c, 0) * args.local_epochs
        buf = np.empty(max(size, 0), dtype=want)
        with meter.comm("payload"):
            t.recv(buf, host(c, t.size), TAG_UPDATE)                     # received even if rejected: drained
        reason = None
        if status == FAILED:
            reason = "reported a non-finite update (it cannot be masked)"
        elif n_c <= 0:
            reason = f"claims {n_c} examples"
        elif args.secure_agg:
            reason = None if size == P else f"update has {size:,} elements, expected {P:,}"
        else:
            problem = check_update(buf, size=P, dtype=model.dtype)
            reason = problem and f"update {problem}"
        if reason:
            rejected.append({"client": c, "reason": reason})
            say(f"    round {rnd + 1}: client {c} rejected: {reason}")
        else:
            updates.append(buf)
            counts.append(n_c)
    with meter.computing():
        if args.secure_agg and rejected:
            say(f"    round {rnd + 1}: secure aggregation cannot unmask the sum without every sampled client; "
                f"the model is kept as it was")
        elif updates:
            if args.secure_agg:
                total = dequantize(secure_sum(updates), np.float64)
                avg = total / (len(updates) if args.dp_clip else sum(counts))
            elif args.dp_clip is not None:
                avg = weighted_average(updates, [1] * len(updates)).astype(np.float64)
            else:
                avg = weighted_average(updates, counts)
            if args.dp_clip is not None and args.dp_noise > 0:
                rng = data_rng(args.seed, "dp-noise", rnd)
                avg = avg + gaussian_noise(P, args.dp_noise * args.dp_clip / len(updates), rng, np.float64)
            model.params += avg.astype(model.dtype, copy=False)
        else:
            say(f"    round {rnd + 1}: every client was rejected; the model is kept as it was")
    return {"loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "clients": len(sampled),
            "accepted": len(updates) if not (args.secure_agg and rejected) else 0, "rejected": rejected}


# -- one rank ----------------------------------------------------------------------------------------------
def run_rank(t, args: argparse.Namespace) -> dict | None:
    N = t.size
    if N < 2:
        raise ParadigmError(f"fedavg needs at least 2 ranks (the server and one rank of clients), got {N}: "
                            f"mpiexec -n 3 {PROG} or --sim 3")
    ds = build_dataset(args)
    if args.clients > ds.num_train:
        if t.rank == 0:
            raise ParadigmError(f"--clients {args.clients} is more than the {ds.num_train} training examples")
        return None
    parts = make_partition(args, ds.y_train)
    model = build_model(args, ds)
    opt = build_optimizer(args, model)
    lr_at = build_schedule(args)
    config = paradigm_config(args, N, paradigm="fedavg", data=data_fingerprint(ds))
    state = share_resume(t, args, model, opt, config)
    meter = Meter(t)
    m = len(sample_clients(args.clients, args.fraction, seed=args.seed, round=0))
    x = ds.x_train.astype(model.dtype, copy=False)
    biggest = max(len(q) for q in parts)
    xbuf = np.empty((biggest if args.local_batch == 0 else min(args.local_batch, biggest), ds.num_features),
                    dtype=model.dtype)
    rep = Reporter(args, model, state, unit="round") if t.rank == 0 else None
    if rep:
        sizes = np.array([len(q) for q in parts])
        hist = label_histogram(ds.y_train, parts, ds.num_classes)
        rep.say(f"fedavg: server + {args.clients} clients on {N - 1} rank{'s' if N > 2 else ''} "
                f"({'simulated' if args.sim else 'MPI'}); {ds.describe()}")
        rep.say(f"partition {args.partition}: {sizes.min()}..{sizes.max()} examples per client (median "
                f"{int(np.median(sizes))}), {np.mean((hist > 0).sum(axis=1)):.1f} classes per client on average")
        rep.say(f"model {model.describe()}; {m} clients per round (C={args.fraction:g}), E={args.local_epochs}, "
                f"B={'inf' if args.local_batch == 0 else args.local_batch}, client {args.optimizer} lr {args.lr:g}, "
                f"{args.epochs} rounds" + (", secure aggregation" if args.secure_agg else "")
                + (f", DP clip {args.dp_clip:g} noise {args.dp_noise:g}" if args.dp_clip else "")
                + (f"; resuming after round {state.start_epoch}" if state.start_epoch else ""))
        if args.plot_partition:
            plot_partition(hist, args.plot_partition, title=f"{args.partition} partition of {ds.name}, "
                                                            f"{args.clients} clients")
            rep.say(f"partition plot written to {args.plot_partition}")

    rounds_run = 0
    for rnd in range(state.start_epoch, args.epochs):
        if stop_here(args, rnd, rep, unit="round"):
            break
        t0 = time.perf_counter()
        before = meter.snapshot()
        sampled = sample_clients(args.clients, args.fraction, seed=args.seed, round=rnd)
        lr = lr_at(rnd)
        maybe_fail(args, t.rank, rnd + 1, x[:0])
        if t.rank == 0:
            values = serve_round(t, args, model, sampled, rnd, meter, rep.say)
        else:
            run_clients(t, args, ds, model, opt, parts, sampled, rnd, lr, meter, x, xbuf)
        rounds_run += 1
        if rep:
            now = meter.snapshot()
            seconds = time.perf_counter() - t0
            values.update(lr=lr, seconds=seconds, server_payload_bytes=int(now["payload_bytes"] - before["payload_bytes"]),
                          server_payload_messages=int(now["payload_messages"] - before["payload_messages"]))
            rep.record(rnd + 1, ds.x_test, ds.y_test, values, x_val=ds.x_val, y_val=ds.y_val,
                       save=lambda h, r=rnd: save_state(args.checkpoint, model, opt, epoch=r + 1, epochs=args.epochs,
                                                        config=config, history=h))

    P, b = model.num_params, model.params.itemsize
    b_up = 8 if args.secure_agg else b
    R = rounds_run
    down, up = R * m * P * b, R * m * P * b_up
    up_text = "R·m·8·P (int64 masked)" if args.secure_agg else "R·m·b·P"
    formulas = {"server": Formula(f"R·m·b·P (receives {up_text})", R * m, down, R * m, up),
                "clients": Formula(up_text + " (receive R·m·b·P)", R * m, up, R * m, down)}
    legend = (f"communication in this run: P = {P:,} parameters, b = {b} bytes, N = {N} ranks, R = {R} rounds, "
              f"m = {m} clients per round, K = {args.clients} clients. Payload: the model to each sampled client, "
              f"its update back; control: a {HEADER * 8}-byte header per update")
    report = comm_report(t, meter, {"server": [0], "clients": list(range(1, N))}, formulas, legend)
    return rep.finish(report, f"FedAvg, {args.partition}, K={args.clients}, C={args.fraction:g}, E={args.local_epochs}, {ds.name}") if rep else None


def main(argv=None) -> int:
    return paradigm_main(PROG, sys.modules[__name__], argv, default_ranks=3)


if __name__ == "__main__":
    sys.exit(main())
