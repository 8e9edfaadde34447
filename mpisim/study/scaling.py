"""Scaling: strong (fixed global batch) and weak (fixed per-rank batch) scaling of data-parallel SGD, under
mpiexec and on simulated ranks with a network model; where the time goes and the bandwidth the gradient
allreduce achieved."""
from __future__ import annotations

import statistics

from ..comm.network import parse_network
from . import Study, StudyError, cores, fmt, mpi_job, pct, shape, simulate

QUESTION = ("How much faster does data-parallel training get with more workers, at a fixed global batch (strong "
            "scaling) and at a fixed batch per worker (weak scaling), where does the time go, and what bandwidth "
            "does the gradient allreduce achieve?")

NETWORK = "10gbe,compute=10GFLOP/s"


def run(study: Study) -> None:
    quick = study.quick
    mpi_ranks = [1, 2] if quick else [1, 2, 4]
    sim_ranks = [1, 2, 4, 8] if quick else [1, 2, 4, 8, 16, 32, 64]
    size, features, hidden = (4000, 128, "256,128") if quick else (20000, 256, "512,256")
    global_batch, per_rank = (256, 64) if quick else (512, 128)
    epochs = 2
    data = ["--dataset", "synthetic", "--synthetic-size", str(size), "--synthetic-features", str(features),
            "--hidden", hidden, "--optimizer", "sgd", "--lr", "0.05"]
    got = shape("allreduce", ["--sim", "1", *data])
    n_train, params = got["num_train"], got["params"]
    have = cores()
    study.setting(f"`mpisim.allreduce` (DDP-style data parallelism: one allreduce of the flat gradient per step, "
                  f"algorithm auto) on the synthetic dataset of {size:,} examples ({n_train:,} for training, "
                  f"{features} features), MLP {got['sizes']} ({params:,} parameters, a "
                  f"{params * 4 / 2**20:.2f} MiB gradient), plain SGD.")
    study.setting(f"Strong scaling: global batch {global_batch} split over the workers (`--batch-size {global_batch}`). "
                  f"Weak scaling: {per_rank} examples per worker per step (`--per-rank-batch {per_rank}`), so the global "
                  f"batch grows with the workers and an epoch has fewer steps.")
    study.setting(f"Real processes: `mpiexec -n N` with N = {', '.join(map(str, mpi_ranks))}, one BLAS thread per rank, "
                  f"{epochs} epochs, the last one timed (the first pays for warm-up); this machine has {have} "
                  f"core{'s' if have != 1 else ''}"
                  + (f", so {max(mpi_ranks)} ranks are oversubscribed: ranks beyond {have} share cores, and their "
                     f"figures show the sharing, not the algorithm." if max(mpi_ranks) > have else "."))
    net = parse_network(NETWORK)
    alpha, beta, gamma = net.seconds
    study.setting(f"Simulated ranks: `--sim N --network {NETWORK}` with N up to {max(sim_ranks)}: each rank on its own "
                  f"node of a {net.description} network (alpha {alpha * 1e6:g} us per message, {1 / beta / 1e9:g} GB/s, "
                  f"reductions at {1 / gamma / 1e9:g} GB/s), computing the model's FLOPs at 10 GFLOP/s, so the virtual "
                  f"times are exact and repeatable; 1 epoch each.")
    study.setting("Compute, communication and idle seconds per rank, and the allreduce's algbw and busbw (bytes over "
                  "seconds of the gradient allreduces; busbw = algbw x 2(p-1)/p, NCCL's definition), come from each "
                  "run's trace (`--trace`).")
    steps = len(mpi_ranks) * 2 + len(sim_ranks) * 2
    k = 0
    results: dict[str, list[dict]] = {}
    per_rank_split: dict[str, tuple[int, list[dict]]] = {}
    for where, ranks in (("mpiexec", mpi_ranks), ("sim", sim_ranks)):
        for mode in ("strong", "weak"):
            rows = []
            for N in ranks:
                k += 1
                study.progress(k, steps, f"{where} {mode} scaling, {N} rank{'s' if N > 1 else ''}")
                batch = ["--batch-size", str(global_batch)] if mode == "strong" else ["--per-rank-batch", str(per_rank)]
                tag = f"{where}-{mode}-{N}"
                if where == "mpiexec":
                    got = mpi_job(study, N, "mpisim.allreduce", [*data, *batch, "--epochs", str(epochs)], tag=tag,
                                  trace=True, timeout=900)
                    last = got["records"][-1]
                    seconds = last["seconds"]
                else:
                    got = simulate(study, "allreduce", ["--sim", str(N), "--network", NETWORK, *data, *batch,
                                                        "--epochs", "1"], tag=tag, trace=True)
                    last = got["records"][-1]
                    seconds = last["virtual_s"]
                B = global_batch if mode == "strong" else per_rank * N
                rows.append(_figures(N, B, n_train, seconds, got["trace"], epochs if where == "mpiexec" else 1))
                if mode == "strong":
                    per_rank_split[where] = (N, got["trace"])
            base = rows[0]
            for r in rows:
                if mode == "strong":
                    r["speedup"] = base["seconds"] / r["seconds"]
                else:                                    # the same work per rank and step: throughput ratio
                    r["speedup"] = r["samples_per_s"] / base["samples_per_s"]
                r["efficiency"] = r["speedup"] / r["ranks"]
            results[f"{where}-{mode}"] = rows
            _table(study, where, mode, rows, have)
    study.data["results"] = results
    for where, (N, totals) in per_rank_split.items():
        clock = "wall" if where == "mpiexec" else "virtual"

        def row(label, ts):
            c, m, i, r = (statistics.mean(t[k] for t in ts) for k in ("compute", "comm", "idle", "run"))
            return [label, c, m, i, r, pct(m / r if r else None, 0)]
        if N <= 8:
            rows = [row(str(r), [t]) for r, t in enumerate(totals)]
        else:                                       # many ranks: the spread, not a page of rows
            by_comm = sorted(range(N), key=lambda r: totals[r]["comm"])
            rows = [row(f"least communication (rank {by_comm[0]})", [totals[by_comm[0]]]),
                    row(f"mean of {N}", totals),
                    row(f"most communication (rank {by_comm[-1]})", [totals[by_comm[-1]]])]
        study.table(f"Each rank's time, strong scaling on {N} {'MPI' if where == 'mpiexec' else 'simulated'} ranks "
                    f"({clock} seconds over the whole run)",
                    ["rank", "compute s", "comm s", "idle s", "run s", "comm share"], rows)
    _plot(study, results)
    _conclude(study, results, have)


def _figures(N: int, B: int, n_train: int, seconds: float, totals: list[dict], epochs: int) -> dict:
    """One run's row: time per epoch, throughput, per-rank work, and the trace's split (the last epoch's share of
    the traced window is not separable, so the split is over the whole run, per epoch)."""
    steps = -(-n_train // B)
    mean = {key: statistics.mean(t[key] for t in totals) for key in ("compute", "comm", "idle", "run")}
    gsec = sum(t["grad_s"] for t in totals)
    alg = sum(t["grad_bytes"] for t in totals) / gsec / 1e9 if gsec > 0 else None
    bus = sum(t["grad_busbytes"] for t in totals) / gsec / 1e9 if gsec > 0 else None
    return {"ranks": N, "global_batch": B, "per_rank_batch": B / N, "steps": steps, "seconds": seconds,
            "samples_per_s": n_train / seconds, "step_ms": 1e3 * seconds / steps,
            **{f"{key}_share": mean[key] / mean["run"] if mean["run"] > 0 else None for key in ("compute", "comm", "idle")},
            "algbw_GBps": alg, "busbw_GBps": bus}


def _table(study: Study, where: str, mode: str, rows: list[dict], have: int) -> None:
    clock = "wall" if where == "mpiexec" else "virtual"
    title = (f"{mode.capitalize()} scaling, {'mpiexec' if where == 'mpiexec' else 'simulated ranks, ' + NETWORK} "
             f"({clock} seconds)")
    note = None
    if where == "mpiexec" and any(r["ranks"] > have for r in rows):
        note = f"Rows with more ranks than the {have} cores are oversubscribed."
    study.table(title, ["ranks", "global batch", "per rank", "steps/epoch", "s/epoch", "samples/s", "ms/step",
                        "speedup", "efficiency", "compute", "comm", "idle", "algbw GB/s", "busbw GB/s"],
                [[r["ranks"], r["global_batch"], fmt(r["per_rank_batch"]), r["steps"], r["seconds"], r["samples_per_s"],
                  r["step_ms"], f"{r['speedup']:.2f}x", pct(r["efficiency"], 0), pct(r["compute_share"], 0),
                  pct(r["comm_share"], 0), pct(r["idle_share"], 0), r["algbw_GBps"], r["busbw_GBps"]] for r in rows],
                note=note)


def _plot(study: Study, results: dict[str, list[dict]]) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    a, b, c = axes
    top = max(r["ranks"] for rows in results.values() for r in rows)
    for key, style in (("mpiexec-strong", "o-"), ("mpiexec-weak", "s-"), ("sim-strong", "o--"), ("sim-weak", "s--")):
        rows = results[key]
        a.plot([r["ranks"] for r in rows], [r["speedup"] for r in rows], style, label=key.replace("-", ", "))
    a.plot([1, top], [1, top], ":", color="grey", label="ideal")
    b_rows = results["sim-strong"]
    N = [r["ranks"] for r in b_rows]
    bottom = [0.0] * len(N)
    for part, color in (("compute", "tab:blue"), ("comm", "tab:red"), ("idle", "tab:grey")):
        vals = [100 * (r[f"{part}_share"] or 0.0) for r in b_rows]
        b.bar([str(n) for n in N], vals, bottom=bottom, color=color, label=part)
        bottom = [x + y for x, y in zip(bottom, vals)]
    for i, r in enumerate(b_rows):
        b.text(i, 101, f"{fmt(r['seconds'] * 1e3)} ms", ha="center", va="bottom", fontsize=7)
    b.set_ylim(0, 112)
    b.set_xlabel("simulated ranks")
    b.set_ylabel("share of an epoch (%)")
    b.set_title("strong scaling, simulated: where an epoch goes")
    b.legend(loc="lower left", fontsize=8)
    for key, style in (("sim-strong", "o--"), ("mpiexec-strong", "o-")):
        rows = [r for r in results[key] if r["busbw_GBps"]]
        c.plot([r["ranks"] for r in rows], [r["busbw_GBps"] for r in rows], style, label=f"busbw, {key.split('-')[0]}")
        c.plot([r["ranks"] for r in rows], [r["algbw_GBps"] for r in rows], style.replace("o", "x"),
               label=f"algbw, {key.split('-')[0]}")
    for ax in (a, c):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator([n for n in (1, 2, 4, 8, 16, 32, 64) if n <= top]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0f}"))
        ax.set_xlabel("ranks")
    a.set_yscale("log", base=2)
    a.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    a.set_ylabel("speedup over 1 rank")
    a.set_title("speedup (strong: time per epoch; weak: throughput)")
    a.legend(fontsize=8)
    c.set_ylabel("GB/s")
    c.set_title("gradient allreduce bandwidth")
    c.legend(fontsize=8)
    fig.tight_layout()
    study.figure(fig, "speedup", "Left: speedup against ranks. Middle: an epoch's virtual time split into compute, "
                                 "communication and idle (simulated, strong scaling). Right: the bandwidth the "
                                 "gradient allreduce achieved.")


def _conclude(study: Study, results: dict[str, list[dict]], have: int) -> None:
    ms, mw = results["mpiexec-strong"], results["mpiexec-weak"]
    fit = [r for r in ms if r["ranks"] <= have]
    best = fit[-1]
    study.conclude(f"Under mpiexec, strong scaling reaches {best['speedup']:.2f}x on {best['ranks']} ranks "
                   f"({pct(best['efficiency'], 0)} efficiency) and weak scaling {mw[len(fit) - 1]['speedup']:.2f}x "
                   f"throughput; communication takes {pct(best['comm_share'], 0)} of a rank's time at "
                   f"{best['ranks']} ranks.")
    over = [r for r in ms if r["ranks"] > have]
    if over:
        r = over[-1]
        study.conclude(f"With {r['ranks']} ranks on {have} cores the strong-scaling speedup is {r['speedup']:.2f}x: the "
                       f"ranks share cores, so this row measures the oversubscription, not the algorithm.")
    ss, sw = results["sim-strong"], results["sim-weak"]
    peak = max(ss, key=lambda r: r["speedup"])
    last = ss[-1]
    study.conclude((f"Simulated, strong scaling peaks at {peak['speedup']:.1f}x on {peak['ranks']} ranks; at "
                    f"{last['ranks']} ranks it is {last['speedup']:.1f}x" if peak is not last else
                    f"Simulated, strong scaling reaches {last['speedup']:.1f}x on {last['ranks']} ranks") + f", with communication "
                   f"{pct(last['comm_share'], 0)} of the time: each rank's share of the fixed batch shrinks "
                   f"({fmt(last['per_rank_batch'])} examples), but every step still allreduces the whole gradient.")
    wl, w2 = sw[-1], sw[1] if len(sw) > 1 else sw[-1]
    study.conclude(f"Weak scaling keeps each rank's work per step fixed ({fmt(wl['per_rank_batch'])} examples), and "
                   f"throughput grows {wl['speedup']:.1f}x on {wl['ranks']} simulated ranks "
                   f"({pct(wl['efficiency'], 0)} efficiency). Only the allreduce grows: its share of the time goes "
                   f"from {pct(w2['comm_share'], 0)} on {w2['ranks']} ranks to {pct(wl['comm_share'], 0)} on "
                   f"{wl['ranks']}. Its bandwidth term hardly changes with p (a ring or Rabenseifner's allreduce sends "
                   f"2(p-1)/p of the gradient per rank), while its latency term grows with the number of its steps.")
    bw = [r for r in ss if r["busbw_GBps"]]
    if bw:
        link = 1 / parse_network(NETWORK).seconds[1] / 1e9
        study.conclude(f"The gradient allreduce's bus bandwidth on the simulated links is {fmt(bw[0]['busbw_GBps'])} GB/s "
                       f"at {bw[0]['ranks']} ranks and {fmt(bw[-1]['busbw_GBps'])} GB/s at {bw[-1]['ranks']}, against the "
                       f"link's {link:g} GB/s: "
                       + ("the rest is the per-message latency and the reduction arithmetic." if bw[-1]["busbw_GBps"] < link
                          else "at or above the link's rate."))
    if not all(r["per_rank_batch"] == sw[0]["per_rank_batch"] for r in sw):
        raise StudyError("weak scaling did not keep the per-rank batch fixed")
