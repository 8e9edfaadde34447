"""Activation functions: time per element forward and backward, the memory each layer keeps for backward,
and the MLP trained with each one (time per epoch, test accuracy)."""
from __future__ import annotations

import statistics
import time

import numpy as np

from . import Study, StudyError, fmt, pct, simulate
from ..data import load_dataset
from ..nn import ACTIVATIONS, LeakyReLU, flush_denormals

QUESTION = ("What does each activation function (ReLU, LeakyReLU, Sigmoid, Tanh, GELU) cost in time per element, "
            "forward and backward, and in memory kept for backward, and does the choice change the training time "
            "and the test accuracy of the MLP?")

COLS = 1000                 # the benchmark's arrays are (n / COLS, COLS): a batch of rows, as the MLP's are
SCALE_N = 100_000           # elements of the input-scale sweep (and of the headline figures)
WHAT = {"input": "its input", "output": "its output", "other": "a separate array"}     # what a kept array is


def time_calls(fn, *, before=None, target: float = 0.1, min_calls: int = 5, max_calls: int = 500,
               warmup: int = 2) -> float:
    """Median seconds of one call of ``fn()``: ``warmup`` untimed calls, then each call timed on its own
    (``before()``, untimed, runs ahead of each) until about ``target`` seconds are spent, ``min_calls`` to
    ``max_calls`` calls. The cost of reading the clock is subtracted."""
    for _ in range(warmup):
        if before:
            before()
        fn()
    clock = statistics.median(-(time.perf_counter() - time.perf_counter()) for _ in range(51))
    times: list[float] = []
    spent = 0.0
    while len(times) < min_calls or (spent < target and len(times) < max_calls):
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return max(statistics.median(times) - clock, 1e-9)


def layer_memory(cls, x: np.ndarray) -> dict:
    """What a layer of class ``cls`` holds on to after ``forward(x)``, measured on the object: ``kept`` lists
    the arrays its attributes refer to for backward (name, bytes, and whether it is the input, its own output
    or another array), ``own_fwd``/``own_bwd`` the bytes of the buffers it allocated after forward and after
    forward plus backward (backward's scratch)."""
    layer = cls()
    y = layer.forward(x, train=True)
    kept = []
    for name, v in vars(layer).items():
        if isinstance(v, np.ndarray):
            what = ("input" if np.shares_memory(v, x) else "output" if np.shares_memory(v, y) else "other")
            kept.append({"name": name, "bytes": v.nbytes, "what": what})
    own_fwd = sum(b.nbytes for b in layer._bufs.values())
    layer.backward(np.ones_like(x))
    own_bwd = sum(b.nbytes for b in layer._bufs.values())
    return {"kept": kept, "own_fwd": own_fwd, "own_bwd": own_bwd}


def input_rms(model, x: np.ndarray) -> float:
    """Root mean square of the values the model's activation layers get on ``x`` (an eval forward)."""
    acts = tuple(ACTIVATIONS.values())
    h, sq, n = np.ascontiguousarray(x, dtype=model.dtype), 0.0, 0
    for layer in model.layers:
        if isinstance(layer, acts):
            sq += float(np.square(h, dtype=np.float64).sum())
            n += h.size
        h = layer.forward(h, train=False)
    return (sq / n) ** 0.5 if n else float("nan")


def replay_seconds(model, x: np.ndarray, batch: int, *, repeats: int, rng: np.random.Generator) -> float:
    """Seconds the model's activation layers take for one epoch's forwards and backwards, replayed on fresh
    layers with the very inputs the model gives them on ``x`` (eval forward), in batches of ``batch`` rows;
    dY is normal, a fresh copy per call (untimed). Median over ``repeats`` passes."""
    acts = tuple(ACTIVATIONS.values())
    h, work = np.ascontiguousarray(x, dtype=model.dtype), []
    for layer in model.layers:
        if isinstance(layer, acts):
            fresh = LeakyReLU(layer.slope) if isinstance(layer, LeakyReLU) else type(layer)()
            work.append((fresh, h.copy()))
        h = layer.forward(h, train=False)
    passes = []
    for _ in range(repeats + 1):                # the first pass warms up
        total = 0.0
        for layer, inp in work:
            for s in range(0, len(inp), batch):
                xb = inp[s:s + batch]
                dy = rng.standard_normal(xb.shape, dtype=np.float32).astype(model.dtype, copy=False)
                t0 = time.perf_counter()
                layer.forward(xb, train=True)
                layer.backward(dy)
                total += time.perf_counter() - t0
        passes.append(total)
    return statistics.median(passes[1:])


def _pool(n: int, scale: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Distinct input arrays of n float32 elements, (n/COLS, COLS), normal with standard deviation ``scale``,
    to cycle through: the same input again and again lets the CPU's branch predictor learn it (a kernel with
    a branch per element then looks faster than it is on fresh data). 2 to 8 of them, 8 MB in all
    where they fit (the caches hold them, as they hold a layer's input fresh from the layer below)."""
    k = int(min(8, max(2, 8e6 // (4 * n))))
    out = []
    for _ in range(k):
        x = rng.standard_normal((n // COLS, COLS), dtype=np.float32)
        x *= np.float32(scale)
        out.append(x)
    return out


def bench_layer(cls, n: int, *, target: float, rng: np.random.Generator, scale: float = 1.0) -> tuple[float, float]:
    """Median ns per element of ``forward`` and of ``backward`` on n float32 elements, a different input at each
    call (see :func:`_pool`). Backward follows an untimed forward of the next input and gets a fresh copy of
    dY (it works in place), also untimed."""
    xs = _pool(n, scale, rng)
    dy0 = rng.standard_normal(xs[0].shape, dtype=np.float32)
    dy = np.empty_like(dy0)
    layer = cls()
    i = [0]

    def nxt() -> np.ndarray:
        i[0] = (i[0] + 1) % len(xs)
        return xs[i[0]]

    def before_bwd() -> None:
        layer.forward(nxt(), train=True)
        np.copyto(dy, dy0)

    fwd = time_calls(lambda: layer.forward(nxt(), train=True), target=target)
    bwd = time_calls(lambda: layer.backward(dy), before=before_bwd, target=target)
    return 1e9 * fwd / n, 1e9 * bwd / n


def bench_copy(n: int, *, target: float, rng: np.random.Generator) -> float:
    """ns per element of a float32 copy into an existing array: the memory traffic of one pass, for scale."""
    xs = _pool(n, 1.0, rng)
    y = np.empty_like(xs[0])
    i = [0]

    def copy() -> None:
        i[0] = (i[0] + 1) % len(xs)
        np.copyto(y, xs[i[0]])

    return 1e9 * time_calls(copy, target=target) / n


def run(study: Study) -> None:
    quick = study.quick
    names = list(ACTIVATIONS)
    label = {a: ACTIVATIONS[a].__name__ for a in names}
    sizes = ([10_000, 100_000, 1_000_000] if quick else
             [1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000, 10_000_000])
    target = 0.03 if quick else 0.6
    seeds = [0] if quick else [0, 1, 2, 3, 4]
    epochs = 3 if quick else 20
    hidden = [256, 256]
    batch = 64
    rounds = 1 if quick else 3

    study.setting(f"Layers {', '.join(label[a] for a in names)} from mpisim.nn, float32, on arrays of "
                  f"{', '.join(f'{n:,}' for n in sizes)} elements (rows of {COLS:,}), standard normal inputs, "
                  f"one thread (the elementwise kernels are Numba loops, Sigmoid and Tanh NumPy ufuncs).")
    study.setting("Each call is timed on its own after two warm-up calls, as many calls as fit in "
                  f"{target:g} s (at least 5), the figure is the median"
                  + ("" if rounds == 1 else f"; at each size the copy and the activations take turns, in {rounds} "
                     f"rounds of 1/{rounds} of that each, and the figure is the median of the rounds' medians")
                  + ". Calls cycle through 2 to 8 different input arrays, 8 MB in all where they fit (the same input "
                  "every time lets the branch predictor learn it). Backward follows "
                  "an untimed forward and gets a fresh copy of dY (it works in place), outside the timed part. A "
                  "float32 copy of the same arrays (np.copyto) is timed the same way as a reference: one read and "
                  "one write per element. Flush-to-zero is on, as in training (the trainers set it).")
    study.setting(f"Inputs are standard normal; a second sweep at {SCALE_N:,} elements scales them by 0.1, 1 and 10 "
                  "(an elementwise function's cost may depend on the values it gets).")
    study.setting("Memory is measured on the layer after a forward: the arrays its attributes refer to (what "
                  "backward reads) and the buffers it allocated itself, after the forward and after a backward.")
    study.setting(f"Training: `python -m mpisim.centralized --dataset digits --hidden {','.join(map(str, hidden))} "
                  f"--activation NAME --epochs {epochs} --batch-size {batch}` (Adam, lr 0.001, initializer 'auto': "
                  f"He for the ReLU family and GELU, Xavier for Sigmoid and Tanh), seed{'s' if len(seeds) > 1 else ''} "
                  f"{', '.join(map(str, seeds))}, one BLAS thread. Time per epoch is the median over the epochs after "
                  "the first; accuracy is the test accuracy after the last epoch.")

    was = flush_denormals(True)
    try:
        _measure(study, names, label, sizes, target, rounds, seeds, epochs, hidden, batch)
    finally:
        if was is not None:
            flush_denormals(was)


def _measure(study, names, label, sizes, target, rounds, seeds, epochs, hidden, batch) -> None:
    quick = study.quick
    rng = np.random.default_rng(0)
    steps = len(sizes) + len(names) * (len(seeds) + 1)
    k = 0
    timing: dict[str, dict[int, tuple[float, float]]] = {a: {} for a in names}
    copy: dict[int, float] = {}
    for n in sizes:        # round-robin: a passing load on the machine hits every activation alike
        k += 1
        study.progress(k, steps, f"copy and {len(names)} activations, {n:,} elements, {rounds} round"
                                 f"{'s' if rounds > 1 else ''}")
        got: dict[str, list] = {a: [] for a in ["copy", *names]}
        for _ in range(rounds):
            got["copy"].append(bench_copy(n, target=target / rounds, rng=rng))
            for a in names:
                got[a].append(bench_layer(ACTIVATIONS[a], n, target=target / rounds, rng=rng))
        copy[n] = statistics.median(got["copy"])
        for a in names:
            timing[a][n] = (statistics.median(f for f, _ in got[a]), statistics.median(b for _, b in got[a]))

    scales = [0.1, 1.0, 10.0]
    by_scale: dict[str, dict[float, tuple[float, float]]] = {a: {} for a in names}
    for a in names:
        k += 1
        study.progress(k, steps, f"{label[a]}, {SCALE_N:,} elements, inputs of scale {', '.join(map(str, scales))}")
        for s in scales:
            got_s = [bench_layer(ACTIVATIONS[a], SCALE_N, target=target / rounds, rng=rng, scale=s)
                     for _ in range(rounds)]
            by_scale[a][s] = (statistics.median(f for f, _ in got_s), statistics.median(b for _, b in got_s))

    x = rng.standard_normal((100, COLS), dtype=np.float32)
    memory = {a: layer_memory(ACTIVATIONS[a], x) for a in names}

    digits = load_dataset("digits")
    train: dict[str, dict] = {}
    for a in names:
        secs, accs, rms, replay, init = [], [], [], [], "-"
        for seed in seeds:
            k += 1
            study.progress(k, steps, f"training with {label[a]}, seed {seed}")
            out = simulate(study, "centralized",
                           ["--dataset", "digits", "--hidden", ",".join(map(str, hidden)), "--activation", a,
                            "--epochs", str(epochs), "--batch-size", str(batch), "--seed", str(seed)],
                           tag=f"{a}-s{seed}")
            recs = out["records"]
            if len(recs) != epochs:
                raise StudyError(f"training with {a}: {len(recs)} epoch records, expected {epochs}")
            later = recs[1:] or recs
            secs.append(statistics.median(r["seconds"] for r in later))
            accs.append(recs[-1]["test_acc"])
            model = out["result"].get("model")
            if model is None:
                raise StudyError(f"training with {a}: the run returned no model")
            init = model.init
            rms.append(input_rms(model, digits.x_train))
            replay.append(replay_seconds(model, digits.x_train, batch, repeats=3 if quick else 7, rng=rng))
        train[a] = {"seconds": statistics.median(secs), "acc": statistics.mean(accs), "acc_min": min(accs),
                    "acc_max": max(accs), "accs": accs, "n_train": len(digits.x_train), "init": init,
                    "input_rms": statistics.mean(rms), "replay_ms": 1e3 * statistics.median(replay)}

    # what the activations' own work should cost per epoch, from the benchmark at the size the MLP uses
    per_call = batch * hidden[0]
    for a in names:
        ns = _interp(sizes, [sum(timing[a][n]) for n in sizes], per_call)
        train[a]["predicted_ms"] = train[a]["n_train"] * sum(hidden) * ns / 1e6

    _report(study, names, label, sizes, timing, copy, by_scale, memory, train, seeds, epochs, per_call, batch)
    _plot(study, names, label, sizes, timing, copy, by_scale, train, epochs)
    _conclude(study, names, label, sizes, timing, copy, by_scale, memory, train, seeds)


def _interp(sizes: list[int], values: list[float], n: int) -> float:
    """Log-log interpolation of values measured at sizes (clamped at the ends)."""
    return float(np.exp(np.interp(np.log(n), np.log(sizes), np.log(values))))


def _report(study, names, label, sizes, timing, copy, by_scale, memory, train, seeds, epochs, per_call, batch) -> None:
    rows = []
    for n in sizes:
        rows.append(["copy (reference)", n, copy[n], copy[n], 2 * copy[n], 2 * copy[n] / sum(timing["relu"][n])])
        for a in names:
            f, b = timing[a][n]
            rows.append([label[a], n, f, b, f + b, (f + b) / sum(timing["relu"][n])])
    study.table("Time per element (ns), median over calls", ["activation", "elements", "forward ns/element",
                "backward ns/element", "forward + backward", "x ReLU"], rows, key="timing",
                note="The copy row is one np.copyto of the same array, in both the forward and backward columns.")

    scales = list(by_scale[names[0]])
    rows = [[label[a], *(v for s in scales for v in by_scale[a][s])] for a in names]
    study.table(f"Time per element (ns) against the scale of the inputs, {SCALE_N:,} elements",
                ["activation", *(f"{w} ns/element, std {s:g}" for s in scales for w in ("forward", "backward"))],
                rows, key="scale")
    study.data["scale"] = {a: {str(s): {"forward_ns": by_scale[a][s][0], "backward_ns": by_scale[a][s][1]}
                               for s in scales} for a in names}

    rows = []
    for a in names:
        m = memory[a]
        what = ", ".join(f"{k['name']} ({WHAT[k['what']]})" for k in m["kept"]) or "nothing"
        elems = 100 * COLS
        rows.append([label[a], what, sum(k["bytes"] for k in m["kept"]) / elems,
                     sum(k["bytes"] for k in m["kept"] if k["what"] == "other") / elems,
                     m["own_fwd"] / elems, m["own_bwd"] / elems])
    study.table("Memory per element (bytes), measured after a forward of 100,000 float32 elements",
                ["activation", "kept for backward", "kept B/element", "kept beyond input and output",
                 "own buffers after forward", "own buffers after backward"], rows, key="memory",
                note="Kept: the arrays the layer's attributes refer to after forward. Own buffers: what the layer "
                     "allocated itself (its output, backward's scratch); they are reused from step to step.")

    rows = []
    for a in names:
        t = train[a]
        rows.append([label[a], t["init"], t["seconds"] * 1e3, t["predicted_ms"], t["input_rms"], t["replay_ms"],
                     pct(t["acc"]), f"{pct(t['acc_min'])}-{pct(t['acc_max'])}" if len(seeds) > 1 else "-"])
    study.table(f"Training the MLP on digits, {epochs} epochs", ["activation", "initializer", "ms per epoch",
                "activations' ms (unit normal)", "RMS of the activations' inputs", "activations' ms (replayed)",
                "test accuracy", "range over seeds"], rows, key="training",
                note=f"Activations' ms per epoch, two estimates: (unit normal) training examples x hidden units x "
                     f"forward + backward ns/element of the benchmark at {per_call:,} elements (a batch times a "
                     f"hidden layer); (replayed) fresh layers timed in batches of {batch} rows on the very inputs the "
                     f"trained network gives its activation layers on the training set, whose RMS is given.")
    study.data["timing"] = {a: {str(n): {"forward_ns": timing[a][n][0], "backward_ns": timing[a][n][1]}
                                for n in sizes} for a in names}
    study.data["copy_ns"] = {str(n): copy[n] for n in sizes}
    study.data["memory"] = memory
    study.data["train"] = train


def _plot(study, names, label, sizes, timing, copy, by_scale, train, epochs) -> None:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharey=True)
    for i, (ax, what) in enumerate(zip(axes, ("forward", "backward"))):
        for a in names:
            ax.plot(sizes, [timing[a][n][i] for n in sizes], "o-", label=label[a])
        ax.plot(sizes, [copy[n] for n in sizes], "k--", label="copy (reference)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("elements per call")
        ax.set_title(f"{what}")
        ax.grid(True, which="both", alpha=0.3)
    c = axes[2]
    scales = list(by_scale[names[0]])
    for a in names:
        c.plot(scales, [sum(by_scale[a][s]) for s in scales], "o-", label=label[a])
    c.set_xscale("log")
    c.set_xlabel(f"standard deviation of the inputs ({SCALE_N:,} elements)")
    c.set_title("forward + backward against the input scale")
    c.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ns per element")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    study.figure(fig, "time", "Time per element of each activation's forward (left) and backward (middle) against "
                              "the array size, float32, one thread, the dashed line a plain copy; right: forward "
                              "plus backward against the scale of the inputs.")

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = range(len(names))
    a.bar(xs, [train[n]["seconds"] * 1e3 for n in names], color="tab:blue", label="measured")
    a.bar(xs, [train[n]["replay_ms"] for n in names], width=0.4, color="tab:orange",
          label="the activation layers' part (replayed)")
    a.set_ylabel("ms per epoch")
    a.set_title("training time per epoch")
    a.legend(fontsize=8)
    acc = [100 * train[n]["acc"] for n in names]
    err = [[100 * (train[n]["acc"] - train[n]["acc_min"]) for n in names],
           [100 * (train[n]["acc_max"] - train[n]["acc"]) for n in names]]
    b.bar(xs, acc, yerr=err, capsize=4, color="tab:green")
    b.set_ylim(max(0, min(100 * train[n]["acc_min"] for n in names) - 10), 100)
    b.set_ylabel("test accuracy (%)")
    b.set_title(f"test accuracy after {epochs} epochs")
    for ax in (a, b):
        ax.set_xticks(list(xs), [label[n] for n in names])
    fig.tight_layout()
    study.figure(fig, "training", "Training the MLP on digits with each activation: time per epoch and the part "
                                  "of it the activation layers take, replayed on the trained network's inputs "
                                  "(left); test accuracy with the range over seeds (right).")


def _conclude(study, names, label, sizes, timing, copy, by_scale, memory, train, seeds) -> None:
    n = SCALE_N if SCALE_N in sizes else sizes[-1]      # the headline size: cache-resident, as in the MLP
    big = sizes[-1]
    tot = {a: sum(timing[a][n]) for a in names}
    cheap, dear = min(names, key=tot.get), max(names, key=tot.get)
    order = sorted(names, key=tot.get)
    study.conclude(f"At {n:,} elements, forward plus backward costs from {fmt(tot[cheap])} ns per element "
                   f"({label[cheap]}) to {fmt(tot[dear])} ns ({label[dear]}), {tot[dear] / tot[cheap]:.1f}x more; "
                   f"from cheapest to dearest: {', '.join(f'{label[a]} {fmt(tot[a])}' for a in order)}. A copy of "
                   f"the same array takes {fmt(copy[n])} ns per element, so {label[cheap]}'s forward is "
                   f"{timing[cheap][n][0] / copy[n]:.1f}x a copy and {label[dear]}'s "
                   f"{timing[dear][n][0] / copy[n]:.1f}x.")
    ratio = {m: sum(timing[dear][m]) / sum(timing[cheap][m]) for m in sizes}
    peak = max(sizes, key=ratio.get)
    study.conclude(f"{label[dear]} over {label[cheap]} by size: "
                   + ", ".join(f"{ratio[m]:.0f}x at {m:,}" for m in sizes)
                   + (f". The gap is widest at {peak:,} elements; where the arrays outgrow the caches, "
                      f"{label[cheap]} waits on memory (a copy costs {fmt(copy[big])} ns per element at {big:,} "
                      f"against {fmt(min(copy.values()))} at best) while {label[dear]} is busy computing, so the gap "
                      f"narrows." if peak != big and ratio[big] < 0.8 * ratio[peak]
                      and copy[big] > 1.3 * min(copy.values()) else "."))
    fb = {a: timing[a][n][1] / timing[a][n][0] for a in names}
    slower = [a for a in names if fb[a] > 1]
    study.conclude(f"Backward over forward at {n:,} elements: "
                   + ", ".join(f"{label[a]} {fb[a]:.2f}x" for a in names)
                   + (f"; backward is the slower pass for {', '.join(label[a] for a in slower)}." if slower else
                      "; backward is never slower than forward here."))
    small = sizes[0]
    low = {a: min(sizes, key=lambda m: sum(timing[a][m])) for a in names}
    grow = {a: sum(timing[a][small]) / sum(timing[a][low[a]]) for a in names}
    hidden = [a for a in names if grow[a] > 1.2]
    call_us = timing[cheap][small][0] * small / 1e3
    if hidden:
        study.conclude(f"Per element, a call on {small:,} elements costs more than at the size where it is cheapest "
                       f"for " + ", ".join(f"{label[a]} ({grow[a]:.1f}x, against {low[a]:,})" for a in hidden)
                       + f": a call has a fixed cost (Python, the layer, the kernel's dispatch) that small arrays do "
                         f"not hide; a {small:,}-element {label[cheap]} forward takes {fmt(call_us)} µs in all."
                       + ("" if len(hidden) == len(names) else " The others ("
                          + ", ".join(f"{label[a]} {grow[a]:.1f}x" for a in names if a not in hidden)
                          + ") show no such excess."))
    else:
        study.conclude(f"Per element, a call on {small:,} elements costs at most {max(grow.values()):.1f}x what it "
                       f"costs at the cheapest size: the fixed cost of a call does not show at these sizes.")
    sc = list(by_scale[names[0]])
    ratio = {a: sum(by_scale[a][sc[-1]]) / sum(by_scale[a][sc[1]]) for a in names}
    varies = [a for a in names if not 0.8 <= ratio[a] <= 1.25]
    study.conclude(f"Inputs ten times larger (std {sc[-1]:g} against {sc[1]:g}, {SCALE_N:,} elements) change forward "
                   "plus backward by " + ", ".join(f"{label[a]} {ratio[a]:.2f}x" for a in names)
                   + (f": the cost of {', '.join(label[a] for a in varies)} depends on the values, so a benchmark on "
                      f"unit-variance inputs does not settle it for a network whose pre-activations are larger or "
                      f"smaller." if varies else ": within 25%, the cost does not depend on the values here."))
    kept = {a: sum(k["bytes"] for k in memory[a]["kept"]) for a in names}
    other = {a: sum(k["bytes"] for k in memory[a]["kept"] if k["what"] == "other") for a in names}
    own = {a: memory[a]["own_bwd"] for a in names}
    elems = 100 * COLS
    by_what: dict[str, list[str]] = {}
    for a in names:
        for k_ in memory[a]["kept"]:
            by_what.setdefault(k_["what"], []).append(label[a])
    parts = [f"{', '.join(v)} keep{'s' if len(v) == 1 else ''} {WHAT[w].replace('its', 'the')}"
             for w, v in by_what.items()]
    same = len(set(kept.values())) == 1
    study.conclude(f"Memory for backward: {'; '.join(parts)}"
                   + (f", {kept[names[0]] / elems:g} bytes per element each" if same else
                      ", " + ", ".join(f"{label[a]} {kept[a] / elems:g}" for a in names) + " bytes per element")
                   + (". None keeps an array beyond its input and output, and in the MLP both exist anyway (the "
                      "input is the Linear layer's output buffer, the output is what the next Linear keeps for its "
                      "own backward)" if not any(other.values()) else
                      ". Beyond input and output: " + ", ".join(f"{label[a]} {other[a] / elems:g} B/element"
                                                               for a in names if other[a]))
                   + ". The buffers a layer allocates itself, after a backward: "
                   + ", ".join(f"{label[a]} {own[a] / elems:g}" for a in names) + " bytes per element"
                   + (f" ({', '.join(label[a] for a in names if own[a] > min(own.values()))} add backward's "
                      f"scratch array)." if len(set(own.values())) > 1 else "."))

    t = {a: train[a]["seconds"] for a in names}
    fast, slow = min(names, key=t.get), max(names, key=t.get)
    diff = (t[slow] - t[fast]) * 1e3
    pred = train[slow]["predicted_ms"] - train[fast]["predicted_ms"]
    rep = train[slow]["replay_ms"] - train[fast]["replay_ms"]
    study.conclude(f"Training on digits, an epoch takes {fmt(t[fast] * 1e3)} ms with {label[fast]} and "
                   f"{fmt(t[slow] * 1e3)} ms with {label[slow]} ({t[slow] / t[fast]:.2f}x), {fmt(diff)} ms more. "
                   f"Replayed on the trained network's own inputs (RMS {train[slow]['input_rms']:.2g} for "
                   f"{label[slow]}), the activation layers alone take {fmt(rep)} ms more per epoch with {label[slow]} "
                   f"than with {label[fast]}"
                   + (f", {pct(rep / diff, 0)} of the measured difference" if diff > 0 else "")
                   + f", against {fmt(pred)} ms predicted from unit-normal inputs"
                   + (": the values a layer gets change its cost, and a benchmark on other values misjudges it."
                      if abs(rep - pred) > 0.3 * max(abs(rep), abs(pred)) and slow in varies else ".")
                   + f" Their replayed share of an epoch runs from "
                   f"{pct(min(train[a]['replay_ms'] / (t[a] * 1e3) for a in names), 0)} "
                   f"({label[min(names, key=lambda a: train[a]['replay_ms'] / t[a])]}) to "
                   f"{pct(max(train[a]['replay_ms'] / (t[a] * 1e3) for a in names), 0)} "
                   f"({label[max(names, key=lambda a: train[a]['replay_ms'] / t[a])]}).")
    acc = {a: train[a]["acc"] for a in names}
    best, worst = max(names, key=acc.get), min(names, key=acc.get)
    gap = acc[best] - acc[worst]
    if len(seeds) > 1:
        spread = max(train[a]["acc_max"] - train[a]["acc_min"] for a in names)
        apart = [a for a in names if train[a]["acc_max"] < train[best]["acc_min"]]
        verdict = (f"more than the largest spread over seeds of one activation ({100 * spread:.1f} points)"
                   if gap > spread else
                   f"no more than the largest spread over seeds of one activation ({100 * spread:.1f} points), so "
                   f"these runs do not tell the activations apart")
        verdict += (f". Every seed of {', '.join(label[a] for a in apart)} scores below every seed of {label[best]}; "
                    f"the others' ranges overlap {label[best]}'s" if apart else
                    f"; the seed ranges of all activations overlap {label[best]}'s")
        study.conclude(f"Test accuracy (mean over {len(seeds)} seeds) runs from {pct(acc[worst])} ({label[worst]}) to "
                       f"{pct(acc[best])} ({label[best]}): {100 * gap:.1f} points, {verdict}.")
    else:
        study.conclude(f"Test accuracy runs from {pct(acc[worst])} ({label[worst]}) to {pct(acc[best])} "
                       f"({label[best]}), {100 * gap:.1f} points, with one seed: the full run's seeds say whether "
                       f"that exceeds the noise.")
    study.data["cheapest"], study.data["dearest"] = cheap, dear
