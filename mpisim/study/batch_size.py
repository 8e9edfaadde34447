"""Batch size: time per epoch, throughput and accuracy after a fixed number of epochs, batch 16 to 2048."""
from __future__ import annotations

import statistics

from . import Study, fmt, pct, shape, simulate

QUESTION = ("How do the time per epoch, the throughput and the test accuracy after a fixed number of epochs "
            "change with the batch size?")


def run(study: Study) -> None:
    quick = study.quick
    batches = [16, 128, 1024] if quick else [16, 32, 64, 128, 256, 512, 1024, 2048]
    seeds = [0] if quick else [0, 1, 2]
    epochs = 2 if quick else 8
    size = 6000 if quick else 30000
    lr = 0.05
    common = ["--dataset", "synthetic", "--synthetic-size", str(size), "--hidden", "256,128", "--optimizer", "sgd",
              "--lr", str(lr), "--epochs", str(epochs)]
    got = shape("centralized", common)
    n_train = got["num_train"]
    study.setting(f"`python -m mpisim.centralized` (one process, one BLAS thread) on the synthetic dataset of "
                  f"{size:,} examples ({n_train:,} for training, 64 features, 10 classes), MLP {got['sizes']} "
                  f"({got['params']:,} parameters), plain SGD with lr {lr:g} for every batch size, {epochs} epochs, "
                  f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}.")
    study.setting("Time per epoch is the median over the epochs after the first (which pays for warm-up); "
                  "accuracy is the test accuracy after the last epoch" + (", mean over the seeds (min-max in the "
                  "table)." if len(seeds) > 1 else "."))
    rows, points = [], []
    runs = len(batches) * len(seeds)
    k = 0
    for B in batches:
        accs, secs, rates = [], [], []
        for seed in seeds:
            k += 1
            study.progress(k, runs, f"batch {B}, seed {seed}")
            recs = simulate(study, "centralized", [*common, "--batch-size", str(B), "--seed", str(seed)],
                            tag=f"b{B}s{seed}")["records"]
            later = recs[1:] or recs
            secs.append(statistics.median(r["seconds"] for r in later))
            rates.append(statistics.median(r["samples_per_s"] for r in later))
            accs.append(recs[-1]["test_acc"])
        steps = -(-n_train // B)
        acc = statistics.mean(accs)
        points.append({"batch": B, "steps": steps, "seconds": statistics.median(secs),
                       "samples_per_s": statistics.median(rates), "acc": acc, "acc_min": min(accs), "acc_max": max(accs)})
        rows.append([B, steps, statistics.median(secs), statistics.median(rates), pct(acc),
                     f"{pct(min(accs))}-{pct(max(accs))}" if len(accs) > 1 else "-"])
    study.data["points"] = points
    study.table(f"Batch size against time and accuracy ({epochs} epochs)",
                ["batch", "steps per epoch", "s per epoch", "samples/s", "test accuracy", "range over seeds"], rows)
    _plot(study, points, epochs)
    _conclude(study, points, epochs, lr)


def _plot(study: Study, points: list[dict], epochs: int) -> None:
    import matplotlib.pyplot as plt
    B = [p["batch"] for p in points]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(B, [p["samples_per_s"] for p in points], "o-", color="tab:blue", label="samples/s")
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("batch size")
    a.set_ylabel("training samples per second")
    a2 = a.twinx()
    a2.plot(B, [p["seconds"] for p in points], "s--", color="tab:orange", label="seconds per epoch")
    a2.set_yscale("log")
    a2.set_ylabel("seconds per epoch")
    lines = a.get_lines() + a2.get_lines()
    a.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    a.set_title("throughput and time per epoch")
    b.plot(B, [100 * p["acc"] for p in points], "o-", color="tab:green", label=f"test accuracy after {epochs} epochs")
    b.fill_between(B, [100 * p["acc_min"] for p in points], [100 * p["acc_max"] for p in points], color="tab:green",
                   alpha=0.2, label="range over seeds")
    b.set_xscale("log", base=2)
    b.set_xlabel("batch size")
    b.set_ylabel("test accuracy (%)")
    b.set_title(f"accuracy after {epochs} epochs, same learning rate")
    b.legend()
    for ax in (a, b):
        ax.set_xticks(B, [str(x) for x in B])
    fig.tight_layout()
    study.figure(fig, "curves", "Left: throughput and time per epoch against the batch size. Right: test accuracy "
                                "after a fixed number of epochs at one learning rate.")


def _conclude(study: Study, points: list[dict], epochs: int, lr: float) -> None:
    first, last = points[0], points[-1]
    speed = first["seconds"] / last["seconds"]
    study.conclude(f"An epoch takes {fmt(first['seconds'])} s at batch {first['batch']} and {fmt(last['seconds'])} s "
                   f"at batch {last['batch']} ({speed:.1f}x {'faster' if speed >= 1 else 'slower'}); throughput goes "
                   f"from {fmt(first['samples_per_s'])} to {fmt(last['samples_per_s'])} samples/s."
                   + (" A step has a fixed cost (Python, the optimizer's pass over the parameters, many small matrix "
                      "products) that an epoch pays once per batch, and larger matrix products use the CPU better."
                      if speed > 1.1 else ""))
    best = max(points, key=lambda p: p["acc"])
    gain = [p for p in points if p["seconds"] <= 1.1 * last["seconds"]]
    study.conclude(f"After {epochs} epochs at lr {lr:g}, the best test accuracy is {pct(best['acc'])} at batch "
                   f"{best['batch']}; batch {last['batch']} reaches {pct(last['acc'])}"
                   + (f", {100 * (best['acc'] - last['acc']):.1f} points less" if best is not last else "")
                   + f". The same number of epochs is {first['steps']:,} steps at batch {first['batch']} but "
                   f"{last['steps']:,} at batch {last['batch']}: with an unchanged learning rate a large batch "
                   f"takes far fewer, not larger, steps (the large-batch study scales the learning rate to make up "
                   f"for it).")
    if len(gain) > 1:
        knee = gain[0]
        drop = knee["acc"] - last["acc"]
        study.conclude(f"The time per epoch stops falling near batch {knee['batch']} (within 10% of the largest "
                       f"batch's), so beyond it a larger batch buys little speed here"
                       + (f" and costs accuracy ({pct(knee['acc'])} at batch {knee['batch']}, {pct(last['acc'])} at "
                          f"{last['batch']})." if drop > 0.01 else "."))
    study.data["speedup_largest_over_smallest"] = speed
