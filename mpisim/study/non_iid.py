"""Non-IID data in FedAvg: test accuracy, client drift and weight divergence from centralized SGD on IID,
label-shard and Dirichlet partitions.

Partitions as in McMahan et al. 2017 (label-sorted shards) and Hsu, Qi and Brown 2019 (Dirichlet); the
weight divergence and the label skew (an earth mover's distance between label distributions) as in Zhao et
al. 2018, "Federated Learning with Non-IID Data"; client drift as Karimireddy et al. 2020 (SCAFFOLD) name it.
To read the models after every round, each run is continued one round (or E epochs) at a time from its
checkpoint (``--checkpoint DIR --resume`` with a larger ``--rounds``/``--epochs``), which gives the same models
and records as an uninterrupted run.
"""
from __future__ import annotations

import math
import statistics

import numpy as np

from . import Study, StudyError, fmt, pct, simulate

TITLE = "Non-IID data in FedAvg"           # the report's heading (Study.write uses it when it reads TITLE)
QUESTION = ("How much test accuracy does FedAvg lose when the clients' data are not IID, and do the client "
            "drift and the weight divergence from centralized SGD grow as the data get less IID?")

# (key, label, fedavg options): IID first, then by construction less and less IID
PARTITIONS = [("iid", "IID", ["--partition", "iid"]),
              ("dir10", "Dirichlet α=10", ["--partition", "dirichlet", "--alpha", "10"]),
              ("dir0.5", "Dirichlet α=0.5", ["--partition", "dirichlet", "--alpha", "0.5"]),
              ("dir0.1", "Dirichlet α=0.1", ["--partition", "dirichlet", "--alpha", "0.1"]),
              ("shards", "label shards", ["--partition", "shards", "--shards-per-client", "2"])]
ALPHA = {"iid": math.inf, "dir10": 10.0, "dir0.5": 0.5, "dir0.1": 0.1}
TARGETS = (0.90, 0.95)


# -- the measures (pure) ----------------------------------------------------------------------------------
def label_skew(hist: np.ndarray) -> float:
    """Zhao et al.'s earth mover's distance of a partition: sum_k (n_k / n) sum_i |p_k(i) - p(i)|, with p_k
    client k's label distribution and p the whole training set's ((clients, classes) counts; 0 to 2)."""
    hist = np.asarray(hist, dtype=np.float64)
    n_k = hist.sum(axis=1)
    if hist.ndim != 2 or (n_k <= 0).any():
        raise ValueError("hist must be (clients, classes) counts with every client holding an example")
    p = hist.sum(axis=0) / hist.sum()
    return float(np.sum(n_k / n_k.sum() * np.abs(hist / n_k[:, None] - p).sum(axis=1)))


def divergence(w: np.ndarray, w_ref: np.ndarray) -> float:
    """||w - w_ref|| / ||w_ref||, in float64."""
    w, w_ref = np.asarray(w, dtype=np.float64), np.asarray(w_ref, dtype=np.float64)
    return float(np.linalg.norm(w - w_ref) / np.linalg.norm(w_ref))


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (ties get their mean rank); None when either side is constant."""
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):                      # ties: the mean of their ranks
            r[v == value] = r[v == value].mean()
        return r
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("spearman needs two sequences of the same length, at least 2")
    a, b = ranks(x), ranks(y)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return None if den == 0 else float((a * b).sum() / den)


def rounds_to(curve, target: float) -> int | None:
    """The first round (from 1) whose accuracy is at least ``target``, or None."""
    return next((i + 1 for i, a in enumerate(curve) if a >= target), None)


# -- running --------------------------------------------------------------------------------------------------
def _chain(study: Study, paradigm: str, argv: list[str], flag: str, stages: list[int], tag: str):
    """Run ``paradigm`` to ``flag`` = each of ``stages`` in turn, continuing from its checkpoint; returns the
    model after every stage (float64) and the records of the whole run."""
    ck, models, out = study.path(f"{tag}-ck"), [], None
    for k, n in enumerate(stages):
        out = simulate(study, paradigm, [*argv, flag, str(n), "--checkpoint", ck, *(["--resume"] if k else [])],
                       tag=f"{tag}-{n}")
        models.append(out["result"]["model"].params.astype(np.float64))
    return models, out["records"]


def _partition_hist(argv: list[str]) -> np.ndarray:
    """The (clients, classes) counts of the partition fedavg builds from ``argv`` (its own code)."""
    from .. import fedavg
    from ..data import label_histogram
    from ..train.loop import build_dataset
    cfg = fedavg.PARADIGM.parse([*argv, "--quiet"])
    ds = build_dataset(cfg.train)
    hist = label_histogram(ds.y_train, fedavg.make_partition(cfg.opts, ds.y_train, cfg.train.seed), ds.num_classes)
    if hist.sum() != ds.num_train:
        raise StudyError(f"the {cfg.opts.partition} partition holds {hist.sum()} of {ds.num_train} examples")
    return hist


def run(study: Study) -> None:
    quick = study.quick
    R, E = (8, 2) if quick else (30, 5)
    seeds = [0] if quick else list(range(10))
    K, B, lr, hidden = 10, 10, 0.05, "128,64"
    model = ["--dataset", "digits", "--hidden", hidden, "--optimizer", "sgd", "--lr", str(lr)]
    fed = ["--sim", "3", *model, "--clients", str(K), "--fraction", "1", "--local-epochs", str(E),
           "--local-batch", str(B)]
    seed_text = f"seeds {seeds[0]} to {seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"
    study.setting(f"`python -m mpisim.fedavg --sim 3` (the server and {K} clients on 2 client ranks, simulated in "
                  f"one process; the result does not depend on the number of ranks) on scikit-learn's digits "
                  f"(1,437 training / 360 test examples, 64 features, 10 classes), MLP 64-{hidden.replace(',', '-')}"
                  f"-10, every client in every round (C=1), E={E} local epochs of plain SGD with batch B={B} and "
                  f"lr {lr:g}, {R} rounds; {seed_text} "
                  f"(the seed fixes the initialization, the partition and the shuffles).")
    study.setting("Partitions of the training set over the clients: IID (a random split), Dirichlet with α = 10, "
                  "0.5, 0.1 (each class split in Dir(α) proportions; small α is skewed) and label shards (sorted "
                  "by label, cut into 2K shards, 2 per client, as McMahan et al.). Label skew: Zhao et al.'s earth "
                  "mover's distance Σ_k (n_k/n) Σ_i |p_k(i) − p(i)| between each client's label distribution and "
                  "the whole set's (0 for identical distributions, at most 2).")
    study.setting("Client drift, from fedavg's per-round records (`drift`): the mean over the round's clients of "
                  "||w_k − w_avg|| / ||w_avg||, w_k a client's model after local training and w_avg their "
                  "example-weighted average, computed by the server from the updates it receives (not available "
                  "under --secure-agg, which hides them).")
    study.setting(f"Weight divergence (Zhao et al. 2018): ||w_FedAvg − w_SGD|| / ||w_SGD|| after the same number "
                  f"of passes over the training data, where w_SGD is `python -m mpisim.centralized` from the same "
                  f"initialization (same seed and model) with the same batch ({B}), lr and optimizer: after round r "
                  f"FedAvg's clients have together made r·E = {E}r passes, so round r is compared with SGD after "
                  f"{E}r epochs. Every run is continued round by round (E epochs at a time for SGD) from its "
                  f"checkpoint to read the model after each round.")
    steps, k = len(seeds) * (1 + len(PARTITIONS)), 0
    runs: dict[str, list[dict]] = {key: [] for key, _, _ in PARTITIONS}
    central: list[dict] = []
    hists: dict[str, list[np.ndarray]] = {key: [] for key, _, _ in PARTITIONS}
    for seed in seeds:
        k += 1
        study.progress(k, steps, f"centralized SGD, {R * E} epochs, seed {seed}")
        sgd, recs = _chain(study, "centralized", [*model, "--batch-size", str(B), "--seed", str(seed)], "--epochs",
                           [E * r for r in range(1, R + 1)], f"sgd-s{seed}")
        central.append({"acc": [recs[E * r - 1]["test_acc"] for r in range(1, R + 1)]})
        for key, label, opts in PARTITIONS:
            k += 1
            study.progress(k, steps, f"FedAvg, {label}, seed {seed}")
            argv = [*fed, *opts, "--seed", str(seed)]
            hists[key].append(_partition_hist([*argv, "--rounds", str(R)]))
            models, recs = _chain(study, "fedavg", argv, "--rounds", list(range(1, R + 1)), f"{key}-s{seed}")
            drift = [r.get("drift") for r in recs]
            if len(recs) != R or any(d is None or not math.isfinite(d) for d in drift):
                raise StudyError(f"fedavg's records for {label}, seed {seed} lack a finite drift in some round")
            runs[key].append({"acc": [r["test_acc"] for r in recs], "drift": drift,
                              "div": [divergence(w, s) for w, s in zip(models, sgd)]})
    points = _summarize(runs, central, hists, R)
    study.data.update(rounds=R, local_epochs=E, clients=K, seeds=seeds, partitions=points,
                      centralized_acc=[statistics.mean(c["acc"][r] for c in central) for r in range(R)])
    _tables(study, points, central, R, E, len(seeds))
    _plots(study, points, central, {key: h[0] for key, h in hists.items()}, R, E, seeds[0])
    _conclude(study, points, central, R, E, len(seeds))


def _mean_curve(runs: list[dict], what: str) -> list[float]:
    return [statistics.mean(r[what][i] for r in runs) for i in range(len(runs[0][what]))]


def _summarize(runs, central, hists, R) -> list[dict]:
    points = []
    for key, label, _ in PARTITIONS:
        rs, hs = runs[key], hists[key]
        acc, drift, div = (_mean_curve(rs, w) for w in ("acc", "drift", "div"))
        finals = [r["acc"][-1] for r in rs]
        sizes = np.concatenate([h.sum(axis=1) for h in hs])
        points.append({"key": key, "label": label, "alpha": ALPHA[key] if key in ALPHA and key != "iid" else None,
                       "skew": statistics.mean(label_skew(h) for h in hs),
                       "classes_per_client": statistics.mean(float((h > 0).sum(axis=1).mean()) for h in hs),
                       "min_examples": int(sizes.min()), "max_examples": int(sizes.max()),
                       "final_acc": acc[-1], "best_acc": max(acc), "final_min": min(finals), "final_max": max(finals),
                       "finals": finals, **{f"rounds_to_{round(100 * t)}": rounds_to(acc, t) for t in TARGETS},
                       "drift_first": drift[0], "drift_last": drift[-1], "drift_mean": statistics.mean(drift),
                       "div_first": div[0], "div_final": div[-1],
                       "curves": {"test_acc": acc, "drift": drift, "divergence": div}})
    iid = points[0]
    for p in points:
        p["loss_vs_iid"] = iid["final_acc"] - p["final_acc"]
    return points


def _tables(study: Study, points, central, R, E, nseeds) -> None:
    over = f", mean over {nseeds} seeds" if nseeds > 1 else ""
    study.table("The partitions" + (" (examples per client: over all seeds)" if nseeds > 1 else ""),
                ["partition", "examples per client", "classes per client", "label skew (EMD)"],
                [[p["label"], f"{p['min_examples']}-{p['max_examples']}", p["classes_per_client"], p["skew"]]
                 for p in points], key="partitions_table")
    sgd = [statistics.mean(c["acc"][r] for c in central) for r in range(R)]
    rows = [[p["label"], pct(p["final_acc"]), pct(p["best_acc"]),
             f"{pct(p['final_min'])}-{pct(p['final_max'])}" if nseeds > 1 else "-",
             "-" if p["key"] == "iid" else f"{-100 * p['loss_vs_iid']:+.1f}",
             *(p[f"rounds_to_{round(100 * t)}"] or f"> {R}" for t in TARGETS)] for p in points]
    rows.append([f"centralized SGD, {E} epochs per round", pct(sgd[-1]), pct(max(sgd)), "-", "-",
                 *(rounds_to(sgd, t) or f"> {R}" for t in TARGETS)])
    study.table(f"Test accuracy after {R} rounds ({R * E} passes over the data{over})",
                ["partition", "final", "best", "final, range over seeds", "points vs IID",
                 *(f"rounds to {round(100 * t)}%" for t in TARGETS)], rows, key="accuracy")
    study.table(f"Client drift and weight divergence from centralized SGD{over}",
                ["partition", "drift, round 1", f"drift, round {R}", "drift, mean over rounds",
                 "divergence, round 1", f"divergence, round {R}", "divergence / IID's"],
                [[p["label"], p["drift_first"], p["drift_last"], p["drift_mean"], p["div_first"], p["div_final"],
                  f"{p['div_final'] / points[0]['div_final']:.2f}x"] for p in points], key="drift")
    skew = [p["skew"] for p in points]
    corr = {"drift": spearman(skew, [p["drift_mean"] for p in points]),
            "divergence": spearman(skew, [p["div_final"] for p in points]),
            "accuracy loss": spearman(skew, [p["loss_vs_iid"] for p in points])}
    dirichlet = [p for p in points if p["key"] in ALPHA]
    alpha = [ALPHA[p["key"]] for p in dirichlet]
    by_alpha = {"drift": spearman(alpha, [p["drift_mean"] for p in dirichlet]),
                "divergence": spearman(alpha, [p["div_final"] for p in dirichlet]),
                "accuracy loss": spearman(alpha, [p["loss_vs_iid"] for p in dirichlet])}
    study.data["spearman_skew"], study.data["spearman_alpha"] = corr, by_alpha
    study.table("Spearman rank correlation", ["figure", f"with the label skew ({len(points)} partitions)",
                                              f"with α ({len(dirichlet)} partitions, IID as α = ∞)"],
                [[f"{name}{' (mean over rounds)' if name == 'drift' else ''}"
                  f"{f' (round {R})' if name == 'divergence' else ''}",
                  "-" if corr[name] is None else f"{corr[name]:+.2f}",
                  "-" if by_alpha[name] is None else f"{by_alpha[name]:+.2f}"] for name in corr],
                note="+1: the figure rises in the same order as the other; -1: in the opposite order.")


def _plots(study: Study, points, central, hists, R, E, seed) -> None:
    import matplotlib.pyplot as plt
    from ..train.federated import draw_partition
    x = list(range(1, R + 1))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for c, p in zip(colors, points):
        ax.plot(x, [100 * a for a in p["curves"]["test_acc"]], "o-", ms=3, color=c, label=p["label"])
    sgd = [statistics.mean(cc["acc"][r] for cc in central) for r in range(R)]
    ax.plot(x, [100 * a for a in sgd], "k--", label=f"centralized SGD ({E} epochs per round)")
    ax.set(xlabel="round", ylabel="test accuracy (%)", title="FedAvg test accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    study.figure(fig, "accuracy", "Test accuracy of the averaged model after each round, one line per partition"
                                  " (mean over the seeds), and centralized SGD after the same number of passes.")

    fig, axes = plt.subplots(1, len(points), figsize=(3.3 * len(points), 3.6), sharey=True)
    vmax = max(int(h.max()) for h in hists.values())
    for ax, p in zip(axes, points):
        im = draw_partition(ax, hists[p["key"]], title=f"{p['label']}\nEMD {label_skew(hists[p['key']]):.2f}",
                            colorbar=False)
        im.set_clim(0, vmax)
        if ax is not axes[0]:
            ax.set_ylabel("")
    fig.colorbar(im, ax=list(axes), label="examples", fraction=0.02, pad=0.01)
    study.figure(fig, "partitions", f"Examples of each class held by each client (seed {seed}), one panel per "
                                    f"partition, with its label skew.")

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for c, p in zip(colors, points):
        a.plot(x, p["curves"]["drift"], "o-", ms=3, color=c, label=p["label"])
        b.plot(x, p["curves"]["divergence"], "o-", ms=3, color=c, label=p["label"])
    a.set(xlabel="round", ylabel="mean ||w_k − w_avg|| / ||w_avg||", title="client drift after local training")
    b.set(xlabel="round", ylabel="||w_FedAvg − w_SGD|| / ||w_SGD||",
          title=f"weight divergence from SGD ({E} epochs per round)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    a.legend()
    fig.tight_layout()
    study.figure(fig, "drift", "Left: client drift per round. Right: weight divergence of FedAvg's model from "
                               "centralized SGD's after the same number of passes (means over the seeds).")


def _order(points, what: str) -> str:
    return ", ".join(f"{p['label']} {fmt(p[what])}" for p in points)


def _rho_words(rho: float | None, what: str) -> str:
    if rho is None:
        return f"{what} does not vary"
    if rho >= 0.7:
        return f"{what} grows as the data get less IID (ρ = {rho:+.2f})"
    if rho <= -0.7:
        return f"{what} falls as the data get less IID (ρ = {rho:+.2f})"
    return f"{what} shows no consistent order with the label skew (ρ = {rho:+.2f})"


def _conclude(study: Study, points, central, R, E, nseeds) -> None:
    iid, rest = points[0], points[1:]
    sgd = statistics.mean(c["acc"][-1] for c in central)
    worst = max(rest, key=lambda p: p["loss_vs_iid"])
    losses = "; ".join(f"{p['label']} " + (f"matches it ({pct(p['final_acc'])})" if abs(p["loss_vs_iid"]) < 5e-4
                                            else f"{'loses' if p['loss_vs_iid'] > 0 else 'gains'} "
                                                 f"{abs(100 * p['loss_vs_iid']):.1f} points ({pct(p['final_acc'])})")
                       for p in rest)
    study.conclude(f"After {R} rounds ({R * E} passes over the data) IID FedAvg reaches {pct(iid['final_acc'])} "
                   f"test accuracy (centralized SGD after as many passes: {pct(sgd)}). Against IID, {losses}."
                   + (f" The largest loss is that of {worst['label']}." if worst["loss_vs_iid"] >= 5e-4 else ""))
    t = TARGETS[0]
    k = f"rounds_to_{round(100 * t)}"
    study.conclude(f"Rounds to reach {pct(t, 0)}: " + ", ".join(
        f"{p['label']} {p[k] if p[k] else f'not within {R}'}" for p in points) + ".")
    if nseeds > 1:
        below = [sum(f < g for f, g in zip(p["finals"], iid["finals"])) for p in rest]
        study.conclude("Per seed, the final accuracy is below IID's in " + ", ".join(
            f"{n} of {nseeds} seeds for {p['label']}" for n, p in zip(below, rest)) + ".")
    rho = study.data["spearman_skew"]
    rho_a = study.data["spearman_alpha"]
    most = max(points, key=lambda p: p["skew"])
    study.conclude(f"Client drift, mean over the rounds: {_order(points, 'drift_mean')}; {most['label']} (the "
                   f"largest label skew, {most['skew']:.2f}) drifts {most['drift_mean'] / iid['drift_mean']:.2f}x "
                   f"as far as IID. Over the {len(points)} partitions, {_rho_words(rho['drift'], 'drift')}"
                   + ("" if rho_a["drift"] is None else
                      f"; over α (IID as α = ∞) the rank correlation is {rho_a['drift']:+.2f}") + ".")
    near = next((p for p in rest if p["key"] == "dir10"), None)
    if near and abs(near["drift_mean"] / iid["drift_mean"] - 1) < 0.05:
        study.conclude(f"Dirichlet α=10 is within {100 * abs(near['drift_mean'] / iid['drift_mean'] - 1):.1f}% of "
                       f"IID's drift and {100 * abs(near['div_final'] / iid['div_final'] - 1):.1f}% of its "
                       f"divergence: at α=10 the clients' label mixes are nearly the population's (label skew "
                       f"{near['skew']:.2f} against IID's {iid['skew']:.2f}), so the two may swap places in a rerun.")
    falls = [p for p in points if p["drift_last"] < p["drift_first"]]
    every = len(falls) == len(points)
    where = "every partition" if every else f"{len(falls)} of {len(points)} partitions"
    study.conclude(f"Drift falls from round 1 to round {R} in {where} "
                   f"({most['label']}: {fmt(most['drift_first'])} to {fmt(most['drift_last'])})"
                   + (": as the model settles, the clients' models end closer to their average" if every else "")
                   + f". In round {R} the order is "
                   f"{_order(sorted(points, key=lambda p: p['drift_last']), 'drift_last')}.")
    study.conclude(f"Weight divergence from SGD in round {R}: {_order(points, 'div_final')}; "
                   f"{_rho_words(rho['divergence'], 'divergence')}, and that of {most['label']} is "
                   f"{most['div_final'] / iid['div_final']:.2f}x IID's. IID's own {fmt(iid['div_final'])} is what "
                   f"averaging models after {E} local epochs (and another order of the examples) gives without "
                   f"any skew.")
    curve = most["curves"]["divergence"]
    peak = int(np.argmax(curve))
    shape = (f"rises to a peak in round {peak + 1} ({fmt(curve[peak])}) and then "
             + ("eases off" if curve[-1] < curve[peak] else "stays") if 0 < peak < R - 1 else
             "grows through the run" if peak == R - 1 else "is largest in round 1 and then eases off")
    first, last = most["div_first"] / iid["div_first"], most["div_final"] / iid["div_final"]
    study.conclude(f"Over the rounds the divergence of {most['label']} {shape} (round 1: {fmt(curve[0])}, round "
                   f"{R}: {fmt(curve[-1])}); its ratio to IID's goes from {first:.2f}x in round 1 to {last:.2f}x in "
                   f"round {R}: the gap between the most skewed partition and IID "
                   + ("widens as the rounds add up." if last > first * 1.02 else
                      "narrows over the rounds." if last < first / 1.02 else "stays about the same."))
    if rho["accuracy loss"] is not None and rho["accuracy loss"] >= 0.7 and rho["drift"] and rho["drift"] >= 0.7:
        study.conclude(f"The accuracy lost against IID follows the same order (ρ = {rho['accuracy loss']:+.2f} with "
                       f"the label skew): a client that holds few classes takes its local epochs toward a model of "
                       f"those classes, the average of such models is not where SGD on all the data goes, and the "
                       f"averaged model is worse for it.")
    else:
        r, d = rho["accuracy loss"], rho["drift"]
        study.conclude(f"The accuracy lost against IID has rank correlation {'-' if r is None else f'{r:+.2f}'} with "
                       f"the label skew here, and the drift {'-' if d is None else f'{d:+.2f}'}: in this run the label "
                       f"skew does not order them consistently (a correlation of 0.7 or more would).")
