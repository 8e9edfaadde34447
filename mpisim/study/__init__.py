"""The course experiments, one command each: ``python -m mpisim.study NAME [--quick] [--out DIR]``.

A study is one module here with ``QUESTION`` (the question it answers, one sentence) and ``run(study)``,
which measures, then reports through the :class:`Study` it is given: ``setting`` (what was run, on what),
``table`` (printed, and a Markdown table in the report), ``figure`` (a PNG beside the report), ``text`` and
``conclude`` (sentences made from the study's own numbers), and ``data`` (the figures a test checks, also
written as NAME.json). ``Study.write`` then writes ``NAME.md``: the command on its first line, the question
first, the setting, the results and the conclusions.

The helpers below run what the studies measure: a paradigm in this process on simulated ranks
(:func:`simulate`) or as a real MPI job (:func:`mpi_job`), and read back its per-epoch records and trace.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

__all__ = ["STUDIES", "Study", "StudyError", "simulate", "mpi_job", "mpiexec_path", "load_study", "fmt", "pct", "shape",
           "cores"]

# name: (module, what it measures, in a line for --list)
STUDIES: dict[str, tuple[str, str]] = {
    "batch-size": ("batch_size", "time per epoch, samples/s and accuracy for batch 16 to 2048"),
    "scaling": ("scaling", "strong and weak scaling at 1, 2, 4 MPI ranks and up to 64 simulated ranks; "
                           "compute, communication, idle; algbw and busbw"),
    "large-batch": ("large_batch", "accuracy of global batches 64 to 8192: base lr, linear and sqrt scaling, "
                                   "warmup"),
    "non-iid": ("non_iid", "FedAvg on IID, label-shard and Dirichlet partitions: accuracy, client drift, "
                           "weight divergence"),
    "taylor": ("taylor", "a Taylor series summed over ranks with reduce: speedup, overhead, error"),
    "activations": ("activations", "ReLU, LeakyReLU, Sigmoid, Tanh, GELU: time per element, memory, training"),
    "blas": ("blas", "matmul and inversion: naive Python, NumPy at 1 and all threads, Numba; GFLOP/s"),
    "eval": ("evaluation", "distributed evaluation against rank 0 alone: accuracy and time"),
}


class StudyError(Exception):
    """A study cannot go on (a run failed, a tool is missing): one line for the user, exit 1."""


def load_study(name: str):
    """The module of study ``name`` (a key of :data:`STUDIES`)."""
    return importlib.import_module(f"mpisim.study.{STUDIES[name][0]}")


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: integers with thousands separators, floats to ``digits`` significant digits."""
    if v is None:
        return "-"
    if isinstance(v, bool) or isinstance(v, str):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if v != v:
        return "nan"
    if v == 0:
        return "0"
    if abs(v) >= 10 ** digits:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def pct(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


class Study:
    """What a study reports, collected as it runs, printed as it comes, and written at the end."""

    def __init__(self, name: str, *, quick: bool, out: str | Path, command: str, quiet: bool = False) -> None:
        self.name, self.quick, self.out, self.command, self.quiet = name, quick, Path(out), command, quiet
        self.module = load_study(name)
        self.question = self.module.QUESTION
        self.parts: list[str] = []                  # the results section, Markdown blocks in order
        self.settings: list[str] = []
        self.conclusions: list[str] = []
        self.figures: list[Path] = []
        self.tables: list[dict] = []
        self.data: dict[str, Any] = {}
        self.started = time.perf_counter()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"mpisim-study-{name}-"))

    # -- what the study says --------------------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        if not self.quiet:
            print(text, flush=True)

    def progress(self, step: int, steps: int, what: str) -> None:
        """A progress line on stderr: ``[name] step/steps what``, with the time so far."""
        if not self.quiet:
            print(f"[{self.name}] {step}/{steps} {what}  ({time.perf_counter() - self.started:.0f} s)",
                  file=sys.stderr, flush=True)

    def setting(self, text: str) -> None:
        """A paragraph (or bullet) of the setting: what was run, how, on what."""
        self.settings.append(text)
        self.say(text)

    def heading(self, text: str) -> None:
        self.parts.append(f"### {text}")
        self.say(f"\n{text}")

    def text(self, text: str) -> None:
        self.parts.append(text)
        self.say(text)

    def table(self, title: str, headers: list[str], rows: list[list[Any]], *, note: str | None = None,
              key: str | None = None) -> None:
        """Print a table and add it to the report; ``key``: also keep its rows in ``data[key]`` (raw values)."""
        cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
        self.tables.append({"title": title, "headers": headers, "rows": cells})
        if key:
            self.data[key] = [dict(zip(headers, row)) for row in rows]
        width = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
        lines = [title, "  ".join(f"{h:>{w}}" for h, w in zip(headers, width)),
                 "  ".join("-" * w for w in width)]
        lines += ["  ".join(f"{c:>{w}}" for c, w in zip(r, width)) for r in cells]
        self.say("\n" + "\n".join(lines) + (f"\n{note}" if note else ""))
        def esc(c) -> str:
            return str(c).replace("|", "\\|")
        md = [f"**{title}**", "", "| " + " | ".join(map(esc, headers)) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
        md += ["| " + " | ".join(map(esc, r)) + " |" for r in cells]
        if note:
            md += ["", note]
        self.parts.append("\n".join(md))

    def figure(self, fig, stem: str, caption: str) -> Path:
        """Save a matplotlib figure as NAME-stem.png in the output folder (atomically) and close it."""
        import matplotlib.pyplot as plt
        from ..train.checkpoint import atomic_write_bytes
        path = self.out / f"{self.name}-{stem}.png"
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(path, buf.getvalue())
        self.figures.append(path)
        self.parts.append(f"![{caption}]({path.name})\n\n*{caption}*")
        self.say(f"plot written to {path}")
        return path

    def conclude(self, text: str) -> None:
        """A conclusion, made from the study's numbers (or qualitative and robust to a rerun)."""
        self.conclusions.append(text)

    # -- running ----------------------------------------------------------------------------------------------
    def path(self, name: str) -> str:
        """A scratch file for a run's metrics or trace (removed at the end)."""
        return str(self.tmp / name)

    def write(self) -> Path:
        from ..train.checkpoint import atomic_write_bytes
        took = time.perf_counter() - self.started
        mins, secs = divmod(round(took), 60)
        head = (f"`{self.command}` (ran {f'{mins} min {secs} s' if mins else f'{secs} s'} on {machine()}; "
                f"{time.strftime('%Y-%m-%d')})")
        title = getattr(self.module, "TITLE", None) or self.name.replace("-", " ").capitalize()
        md = [head, "", f"# {title}", "", f"**{self.question}**", "", "## Setting", "",
              *(f"- {s}" for s in self.settings), "", "## Results", ""]
        for part in self.parts:
            md += [part, ""]
        md += ["## Conclusions", "", *(f"- {c}" for c in self.conclusions), ""]
        path = self.out / f"{self.name}.md"
        atomic_write_bytes(path, "\n".join(md).encode())
        atomic_write_bytes(self.out / f"{self.name}.json",
                           json.dumps({"command": self.command, "question": self.question, "quick": self.quick,
                                       "seconds": took, "tables": self.tables, "data": self.data},
                                      indent=1, default=float).encode())
        self.say("\nConclusions:\n" + "\n".join(f"- {c}" for c in self.conclusions))
        self.say(f"\nreport written to {path} ({len(self.figures)} plot{'s' if len(self.figures) != 1 else ''})")
        return path

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cores()} cores ({cpu}), Python {platform.python_version()}"


# -- running paradigms ----------------------------------------------------------------------------------------
def read_records(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _parsed(paradigm: str, args: list[str], extra: list[str] = ()):
    """The paradigm's module and its parsed command line ``args + extra``; a usage error is a StudyError
    naming the command (without ``extra``, the study's own output options)."""
    mod = importlib.import_module(f"mpisim.{paradigm}")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return mod, mod.PARADIGM.parse([*args, *extra])
    except SystemExit:
        raise StudyError(f"python -m mpisim.{paradigm} {shlex.join(args)}: {err.getvalue().strip()}") from None


def simulate(study: Study, paradigm: str, args: list[str], *, tag: str, trace: bool = False) -> dict:
    """Run ``python -m mpisim.<paradigm> ARGS`` in this process (``--sim N`` or a one-process trainer), quietly;
    returns {"records": per-epoch records, "result": rank 0's result (the model, the closing table...),
    "trace": per-rank totals from the trace when ``trace``}. A failure is a :class:`StudyError`."""
    from ..comm import RankError
    from ..train.distributed import run_in_process
    metrics = study.path(f"{tag}.jsonl")
    extra = ["--metrics", metrics, "--quiet"] + (["--trace", study.path(f"{tag}.json")] if trace else [])
    mod, cfg = _parsed(paradigm, args, extra)
    try:
        with threadpool_limits(limits=1):      # one BLAS thread, as each MPI rank of the studies has
            result = run_in_process(cfg.train, mod.PARADIGM.run_rank, cfg, local=not cfg.train.sim)[0]
    except Exception as e:
        cause = e.exc if isinstance(e, RankError) else e
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise StudyError(f"python -m mpisim.{paradigm} {shlex.join(args)} failed: {type(cause).__name__}: {cause}") from None
    out = {"records": read_records(metrics), "result": result}
    if trace:
        from ..trace import totals_from_doc
        with open(study.path(f"{tag}.json")) as f:
            out["trace"] = totals_from_doc(json.load(f))
    return out


def shape(paradigm: str, args: list[str]) -> dict:
    """What a run of ``python -m mpisim.<paradigm> ARGS`` trains on, without training: the training and test
    set sizes and the model (its description and parameter count)."""
    from ..train.loop import build_dataset, build_model
    tr = _parsed(paradigm, args)[1].train
    ds = build_dataset(tr)
    model = build_model(tr, ds)
    return {"num_train": ds.num_train, "num_test": len(ds.y_test), "params": model.num_params,
            "model": model.describe(), "sizes": "-".join(map(str, model.sizes))}


def mpiexec_path() -> str | None:
    """The mpiexec beside this Python (the mpich wheel's), else $MPIEXEC, else the one on PATH."""
    return os.environ.get("MPIEXEC") or shutil.which(
        "mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def mpi_job(study: Study, n: int, module: str, args: list[str], *, tag: str, timeout: float = 600,
            metrics: bool = True, trace: bool = False) -> dict:
    """Run ``mpiexec -n n python -m module ARGS`` (one BLAS thread per rank); returns {"records", "trace",
    "stdout"}. ``metrics``/``trace``: add --metrics/--trace files and read them back."""
    exe = mpiexec_path()
    if not exe:
        raise StudyError("mpiexec not found: pip install -e . brings the mpich wheel (or set MPIEXEC)")
    extra = (["--metrics", study.path(f"{tag}.jsonl"), "--quiet"] if metrics else []) + \
            (["--trace", study.path(f"{tag}.json")] if trace else [])
    cmd = [exe, "-n", str(n), sys.executable, "-m", module, *args, *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StudyError(f"mpiexec -n {n} python -m {module} {shlex.join(args)} took over {timeout:.0f} s") from None
    if r.returncode:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise StudyError(f"mpiexec -n {n} python -m {module} {shlex.join(args)} exited {r.returncode}: {tail[0]}")
    out = {"stdout": r.stdout, "records": read_records(study.path(f"{tag}.jsonl")) if metrics else []}
    if trace:
        from ..trace import totals_from_doc
        with open(study.path(f"{tag}.json")) as f:
            out["trace"] = totals_from_doc(json.load(f))
    return out


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
