"""Distributed evaluation: every rank scores a shard of the test set and a reduce sums the counts, against
rank 0 scoring it alone."""
from __future__ import annotations

import statistics

from . import Study, StudyError, cores, fmt, mpi_job, pct, simulate

TITLE = "Distributed evaluation"
QUESTION = ("Does scoring the test set on every rank (each its shard, the counts summed by a reduce) give the same "
            "accuracy as rank 0 alone, and how much time does it save?")


def run(study: Study) -> None:
    quick = study.quick
    ranks = [1, 2] if quick else [1, 2, 4]
    size, epochs = (10000, 2) if quick else (60000, 3)
    features, hidden = 256, "512,256"
    data = ["--dataset", "synthetic", "--synthetic-size", str(size), "--synthetic-features", str(features),
            "--hidden", hidden, "--batch-size", "512", "--optimizer", "adam", "--epochs", str(epochs)]
    have = cores()
    study.setting(f"`mpisim.allreduce --eval rank0` against `--eval distributed` under `mpiexec -n N` (N = "
                  f"{', '.join(map(str, ranks))}; one BLAS thread per rank; {have} core{'s' if have != 1 else ''} here"
                  + (f", so {max(ranks)} ranks share cores" if max(ranks) > have else "") + f"), on the synthetic "
                  f"dataset of {size:,} examples ({size // 5:,} in the test set, {features} features), MLP "
                  f"{features}-{hidden.replace(',', '-')}-10, {epochs} epochs, batch 512.")
    study.setting("With `--eval distributed`, after each epoch every rank scores its share of the test set, a run of "
                  "whole 1,024-row evaluation batches (the rows each forward pass sees on rank 0 alone; the model is "
                  "already on every rank in data parallelism, the paradigms whose ranks hold other models first "
                  "broadcast rank 0's), and one reduce of (loss sum, correct, count) gives rank 0 the totals. The time is each record's `eval_s` (rank 0's wall time from the start of the evaluation to "
                  "its result), the median over the epochs after the first (which pays for warm-up).")
    study.setting("The same comparison then runs on simulated ranks (`--sim 4`) for the other paradigms, where rank 0's "
                  "model must be broadcast first: accuracy only (simulated ranks share one thread, so their wall time "
                  "says nothing about parallel speed).")
    rows, timing = [], {}
    steps = 2 * len(ranks) + 4
    k = 0
    for N in ranks:
        got = {}
        for mode in ("rank0", "distributed"):
            k += 1
            study.progress(k, steps, f"mpiexec -n {N}, --eval {mode}")
            got[mode] = mpi_job(study, N, "mpisim.allreduce", [*data, "--eval", mode], tag=f"{mode}-{N}",
                                timeout=900)["records"]
        a, b = got["rank0"], got["distributed"]
        if len(a) != epochs or len(b) != epochs:
            raise StudyError(f"mpiexec -n {N}: expected {epochs} records from each run, got {len(a)} and {len(b)}")
        same = all(x["test_acc"] == y["test_acc"] for x, y in zip(a, b))
        dloss = max(abs(x["test_loss"] - y["test_loss"]) for x, y in zip(a, b))
        t0 = statistics.median(r["eval_s"] for r in a[1:])      # the first epoch's evaluation pays for warm-up
        t1 = statistics.median(r["eval_s"] for r in b[1:])
        timing[N] = (t0, t1)
        rows.append([N, pct(a[-1]["test_acc"], 2), pct(b[-1]["test_acc"], 2), "yes" if same else "NO", f"{dloss:.1e}",
                     t0 * 1e3, t1 * 1e3, f"{t0 / t1:.2f}x"])
        study.data.setdefault("mpiexec", []).append({"ranks": N, "same_accuracy": same, "max_loss_difference": dloss,
                                                      "rank0_s": t0, "distributed_s": t1})
    study.table("Evaluation under mpiexec (accuracy after the last epoch; evaluation time per epoch)",
                ["ranks", "rank 0 alone", "distributed", "same accuracy every epoch", "max loss difference",
                 "rank 0 ms", "distributed ms", "speedup"], rows,
                note=_loss_note(max(r["max_loss_difference"] for r in study.data["mpiexec"])))
    others = [("paramserver", []), ("fedavg", []), ("gossip", []), ("pipeline", [])]
    small = ["--dataset", "digits"]
    srows = []
    for name, extra in others:
        k += 1
        study.progress(k, steps, f"{name} --sim 4, both evaluations")
        unit = ["--rounds", "2"] if name == "fedavg" else ["--epochs", "2"]
        acc = {}
        for mode in ("rank0", "distributed"):
            acc[mode] = simulate(study, name, ["--sim", "4", *small, *unit, *extra, "--eval", mode],
                                 tag=f"{name}-{mode}")["records"]
        same = (len(acc["rank0"]) == len(acc["distributed"]) == 2 and
                all(x["test_acc"] == y["test_acc"] for x, y in zip(acc["rank0"], acc["distributed"])))
        srows.append([name, pct(acc["rank0"][-1]["test_acc"], 2), pct(acc["distributed"][-1]["test_acc"], 2),
                      "yes" if same else "NO"])
        study.data.setdefault("sim", []).append({"paradigm": name, "same_accuracy": same})
    study.table("Other paradigms on 4 simulated ranks (digits, 2 epochs or rounds)",
                ["paradigm", "rank 0 alone", "distributed", "same accuracy every epoch"], srows)
    if not all(r["same_accuracy"] for r in study.data["mpiexec"] + study.data["sim"]):
        raise StudyError("distributed evaluation disagreed with rank 0's: see the tables above")
    _plot(study, timing)
    _conclude(study, timing, have)


def _loss_note(worst: float) -> str:
    if worst == 0:
        return "The mean test losses are equal too."
    return (f"The mean test losses differ by at most {worst:.1e}: the shards' loss sums are added in another order "
            f"(float64), while the correct counts are integers.")


def _plot(study: Study, timing: dict[int, tuple[float, float]]) -> None:
    import matplotlib.pyplot as plt
    N = list(timing)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    w = 0.38
    ax.bar([i - w / 2 for i in range(len(N))], [1e3 * timing[n][0] for n in N], w, label="rank 0 alone")
    ax.bar([i + w / 2 for i in range(len(N))], [1e3 * timing[n][1] for n in N], w, label="distributed")
    ax.set_xticks(range(len(N)), [str(n) for n in N])
    ax.set_xlabel("MPI ranks")
    ax.set_ylabel("evaluation time per epoch (ms)")
    ax.set_title("scoring the test set")
    ax.legend()
    fig.tight_layout()
    study.figure(fig, "time", "Evaluation time per epoch, rank 0 alone against every rank on its shard.")


def _conclude(study: Study, timing: dict[int, tuple[float, float]], have: int) -> None:
    study.conclude("Distributed evaluation gave exactly the accuracy of rank 0 alone in every epoch of every run, under "
                   "mpiexec and on simulated ranks: the correct counts are integers, and integers add up the same in "
                   "any order.")
    one = timing[min(timing)][0]
    for n in (n for n in timing if n > 1):
        t0, t1 = timing[n]
        text = (f"On {n} ranks{f' ({have} cores: oversubscribed)' if n > have else ''} the distributed evaluation "
                f"took {fmt(t1 * 1e3)} ms against {fmt(t0 * 1e3)} ms for rank 0 alone ({t0 / t1:.2f}x "
                f"{'faster' if t1 < t0 else 'slower'})" +
                (f": each rank scores about 1/{n} of the examples, and the reduce of three numbers per set costs "
                 f"little next to that." if t1 < t0 else
                 ": scoring a share did not save more than the broadcast, the reduce and the waiting cost here."))
        if t0 > 1.3 * one:
            text += (f" Rank 0 alone took longer than in the 1-rank run ({fmt(one * 1e3)} ms): the ranks waiting for "
                     f"it poll for messages (MPI busy-waits) and take CPU time from it"
                     + (", the more so as ranks outnumber cores." if n > have else "."))
        study.conclude(text)
