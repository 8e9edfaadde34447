"""Large batches: the accuracy lost at a fixed learning rate, and what scaling the rate (with warmup) recovers."""
from __future__ import annotations

import statistics

from ..nn.schedule import scaled_lr
from . import Study, pct, shape, simulate

QUESTION = ("Why do large global batches lose accuracy after a fixed number of epochs, and how much of it do "
            "linear or square-root learning-rate scaling, with and without warmup, win back?")

# (label, extra options); at the base batch linear and sqrt scaling leave the rate as it is
METHODS = [("base lr", []), ("linear", ["--lr-scaling", "linear"]), ("sqrt", ["--lr-scaling", "sqrt"]),
           ("linear + warmup", ["--lr-scaling", "linear", "--warmup", "WARMUP"])]


def run(study: Study) -> None:
    quick = study.quick
    batches = [64, 8192] if quick else [64, 128, 256, 512, 1024, 2048, 4096, 8192]
    seeds = [0] if quick else [0, 1, 2]
    ranks, epochs, warmup, size, lr, base = (2 if quick else 4), 10, 5, 40000, 0.015, 64
    common = ["--sim", str(ranks), "--dataset", "synthetic", "--synthetic-size", str(size), "--hidden", "128,64",
              "--optimizer", "momentum", "--lr", str(lr), "--epochs", str(epochs)]
    got = shape("allreduce", common)
    n_train = got["num_train"]
    study.setting(f"`python -m mpisim.allreduce --sim {ranks}` (data-parallel SGD on {ranks} simulated ranks: the "
                  f"global batch split over them, one gradient allreduce per step) on the synthetic dataset of "
                  f"{size:,} examples ({n_train:,} for training, 64 features, 10 classes), MLP {got['sizes']}, "
                  f"SGD with momentum 0.9, {epochs} epochs, seed{'s' if len(seeds) > 1 else ''} "
                  f"{', '.join(map(str, seeds))}.")
    study.setting(f"The base learning rate {lr:g} suits the base batch {base}. `--lr-scaling linear --base-batch {base}` "
                  f"multiplies it by B/{base} (Goyal et al. 2017), `sqrt` by sqrt(B/{base}); `--warmup {warmup}` "
                  f"raises the rate linearly from the base rate {lr:g} to the scaled one over the first {warmup} "
                  f"epochs (their gradual warmup). At the base batch every rule is the base run itself.")
    study.setting("Accuracy is the test accuracy after the last epoch" +
                  (", the mean over the seeds." if len(seeds) > 1 else "."))
    # at the base batch every rule is the base run: the rate is not scaled, and warmup starts from it
    todo = [(B, m, opts) for B in batches for m, opts in METHODS if B != base or m == "base lr"]
    acc: dict[tuple[int, str], list[float]] = {}
    curves: dict[str, list[float]] = {}
    k = 0
    for B, m, opts in todo:
        for seed in seeds:
            k += 1
            study.progress(k, len(todo) * len(seeds), f"batch {B}, {m}, seed {seed}")
            args = [*common, *(o.replace("WARMUP", str(warmup)) for o in opts), "--batch-size", str(B),
                    "--seed", str(seed)]
            if opts:
                args += ["--base-batch", str(base)]
            recs = simulate(study, "allreduce", args, tag=f"b{B}-{len(opts)}-{m[:3]}-s{seed}")["records"]
            acc.setdefault((B, m), []).append(recs[-1]["test_acc"])
            if B == batches[-1] and seed == seeds[0]:
                curves[m] = [r["test_acc"] for r in recs]
    for m, _ in METHODS[1:]:                           # at the base batch these are the base run itself
        acc[(base, m)] = acc[(base, "base lr")]
    mean = {key: statistics.mean(v) for key, v in acc.items()}

    steps = {B: -(-n_train // B) * epochs for B in batches}
    rows = [[B, steps[B], *(pct(mean[(B, m)]) for m, _ in METHODS),
             f"{scaled_lr(lr, 'linear', B, base):.3g} / {scaled_lr(lr, 'sqrt', B, base):.3g}"] for B in batches]
    study.table(f"Test accuracy after {epochs} epochs", ["global batch", "steps", *(m for m, _ in METHODS),
                                                         "lr linear / sqrt"], rows)
    study.data["accuracy"] = {f"{B}:{m}": mean[(B, m)] for B in batches for m, _ in METHODS}
    _plot(study, batches, mean, curves, epochs, warmup)
    _conclude(study, batches, mean, acc, base, epochs, steps)


def _plot(study: Study, batches, mean, curves, epochs, warmup) -> None:
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for (m, _), style in zip(METHODS, ("o-", "s--", "^:", "D-")):
        a.plot(batches, [100 * mean[(B, m)] for B in batches], style, label=m)
    a.set_xscale("log", base=2)
    a.set_xticks(batches, [str(B) for B in batches])
    a.set_xlabel("global batch size")
    a.set_ylabel(f"test accuracy after {epochs} epochs (%)")
    a.set_title("accuracy against the global batch")
    a.legend()
    x = list(range(1, epochs + 1))
    for (m, _), style in zip(METHODS, ("o-", "s--", "^:", "D-")):
        if m in curves:
            b.plot(x, [100 * v for v in curves[m]], style, label=m)
    b.axvspan(0.5, warmup + 0.5, color="grey", alpha=0.15, label=f"warmup ({warmup} epochs)")
    b.set_xticks(x)
    b.set_xlabel("epoch")
    b.set_ylabel("test accuracy (%)")
    b.set_title(f"global batch {batches[-1]}, epoch by epoch (first seed)")
    b.legend()
    fig.tight_layout()
    study.figure(fig, "accuracy", "Left: test accuracy against the global batch for each learning-rate rule. Right: "
                                  "the largest batch epoch by epoch.")


def _conclude(study: Study, batches, mean, acc, base, epochs, steps) -> None:
    small, big = batches[0], batches[-1]
    ref = mean[(small, "base lr")]
    lost = ref - mean[(big, "base lr")]
    study.data["lost"] = lost
    text = (f"At the base learning rate, accuracy after {epochs} epochs goes from {pct(ref)} at batch {small} to "
            f"{pct(mean[(big, 'base lr')])} at batch {big}: {100 * lost:.1f} points {'lost' if lost > 0 else 'gained'}.")
    if lost <= 0:
        study.conclude(text + " Here the largest batch lost nothing, so there is nothing to recover.")
        return
    study.conclude(text + f" The same {epochs} epochs are {steps[small]:,} steps at batch {small} but {steps[big]:,} at "
                   f"batch {big}, each taken with the same learning rate, so the model travels much less far from its "
                   f"initialization.")
    for m in ("linear", "sqrt", "linear + warmup"):
        rec = (mean[(big, m)] - mean[(big, "base lr")]) / lost
        study.data[f"recovered:{m}"] = rec
        verdict = ("more than all of it" if rec > 1 else "all of it" if rec >= 0.995 else f"{100 * rec:.0f}% of it"
                   if rec > 0 else "none of it and ends below the base rate")
        study.conclude(f"{m.capitalize()} at batch {big} reaches {pct(mean[(big, m)])}: it recovers {verdict}.")
    lin, warm = mean[(big, "linear")], mean[(big, "linear + warmup")]
    runs_lin, runs_warm = acc[(big, "linear")], acc[(big, "linear + warmup")]
    seeds = f" (seeds: {', '.join(pct(v) for v in runs_lin)} without, {', '.join(pct(v) for v in runs_warm)} with)" \
        if len(runs_lin) > 1 else ""
    if warm - lin > 0.02:
        study.conclude(f"Warmup matters at the largest batch: linear scaling alone multiplies the rate by "
                       f"{big // base}x from the first step, while the model is still far from any minimum, and "
                       f"reaches {pct(lin)}; raising the rate gradually over the first epochs reaches {pct(warm)}"
                       f"{seeds}.")
    elif lin - warm > 0.02:
        study.conclude(f"Warmup cost accuracy at the largest batch here: {pct(warm)} with it, {pct(lin)} without{seeds}.")
    else:
        study.conclude(f"Warmup made no difference of more than 2 points at the largest batch here ({pct(warm)} with "
                       f"it, {pct(lin)} without{seeds}).")
