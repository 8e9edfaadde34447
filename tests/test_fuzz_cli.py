"""Fuzzing the command lines: odd values for each tool's options (empty, 0, -1, 1e308, inf, nan, text, huge
integers, directories, FIFOs) end with exit 0, 1 or 2, never a traceback and never a hang.

Each example is one ``python -m ...`` in a subprocess with a timeout, from a fresh folder (a relative path a
run creates lands there), on a tiny problem so that a command line that is valid runs in a second or two.
Hypothesis draws the tool and one or two (option, value) pairs; the options come from each tool's own parser,
so a new option is fuzzed without touching this file. The budget is fixed and the draws derandomized: the
same examples on every machine. HYPOTHESIS_FUZZ_EXAMPLES=500 runs a longer search by hand.
"""
import os
import subprocess
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.mpirun import ROOT

TINY = ["--dataset", "synthetic", "--synthetic-size", "60", "--synthetic-features", "8", "--hidden", "6",
        "--quiet"]
TOOLS = {      # module: (what comes before the fuzzed options, the base options the fuzzed ones may override)
    "mpisim.centralized": ([], [*TINY, "--epochs", "1"]),
    "mpisim.allreduce": (["--sim", "2"], [*TINY, "--epochs", "1"]),
    "mpisim.fedavg": (["--sim", "3"], [*TINY, "--rounds", "1", "--clients", "4", "--local-epochs", "1"]),
    "mpisim.paramserver": (["--sim", "3"], [*TINY, "--epochs", "1"]),
    "mpisim.study": (["taylor", "--quick"], ["--quiet"]),
}
# the rank count is the base's (a run of many simulated ranks is slow, not wrong); -h prints help
SKIP = {"--sim", "-h", "--help"}
# how long a run is is the user's to choose: a huge count here is a long run, not an error
LENGTH = {"--epochs", "--rounds", "--local-epochs"}

HUGE = "99999999999999999999"
VALUES = ["", "0", "-1", "1", "2", "1e308", "inf", "-inf", "nan", "text", HUGE, "-0.5", "0.5", "1:1e9",
          "1:2:raise", "0:1:nan", "{dir}", "{file}", "{fifo}", "{fifo}.png", "{fifo}.json", "{dir}/new.png",
          "{dir}/sub/new.json", "/proc/no/such"]


def _options(module: str) -> tuple[list[str], list[str]]:
    """(options that take a value, flags) of the tool's parser."""
    import importlib
    mod = importlib.import_module(module if module != "mpisim.study" else "mpisim.study.__main__")
    parser = mod.PARADIGM.build_parser() if hasattr(mod, "PARADIGM") else mod.build_parser()
    valued, flags = [], []
    for a in parser._actions:
        names = [s for s in a.option_strings if s.startswith("--")]
        if not names or names[-1] in SKIP:
            continue
        (flags if a.nargs == 0 else valued).append(names[-1])
    return valued, flags


OPTIONS = {m: _options(m) for m in TOOLS}
# every (tool, option) pair once: a tool with more options gets more of the draws
PAIRS = [(m, opt) for m, (valued, flags) in OPTIONS.items() for opt in [*valued, *flags]]


def _value(opt: str):
    pool = [v for v in VALUES if not (opt in LENGTH and v in (HUGE, "1e308", "inf"))]
    return st.sampled_from(pool)


@st.composite
def command_lines(draw):
    module, opt = draw(st.sampled_from(PAIRS))
    valued, flags = OPTIONS[module]
    pairs = [(opt, None if opt in flags else draw(_value(opt)))]
    if draw(st.booleans()):                                   # a second option of the same tool
        other = draw(st.sampled_from([*valued, *flags]))
        pairs.append((other, None if other in flags else draw(_value(other))))
    positional = None
    if module == "mpisim.study" and draw(st.booleans()):     # an odd study name
        positional = draw(st.sampled_from(VALUES))
    return module, pairs, positional


def _argv(module, pairs, positional, where: str) -> list[str]:
    before, base = TOOLS[module]
    if positional is not None:
        before = [positional.format(dir=where, file=f"{where}/plain", fifo=f"{where}/pipe"), *before[1:]]
    argv = ["-m", module, *before, *base]
    if module == "mpisim.study":
        argv += ["--out", f"{where}/out"]                 # the fuzzed --out, if any, comes later and wins
    for opt, value in pairs:
        argv.append(opt)
        if value is not None:
            argv.append(value.format(dir=where, file=f"{where}/plain", fifo=f"{where}/pipe"))
    return argv


EXAMPLES = int(os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES", "25"))


@pytest.mark.timeout(60 * max(EXAMPLES, 10))
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(command_lines())
def test_odd_option_values_end_with_exit_0_1_or_2_and_no_traceback(case):
    module, pairs, positional = case
    with tempfile.TemporaryDirectory() as where:
        open(f"{where}/plain", "w").close()
        for suffix in ("", ".png", ".json"):
            os.mkfifo(f"{where}/pipe{suffix}")
        argv = _argv(module, pairs, positional, where)
        try:
            res = subprocess.run([sys.executable, *argv], cwd=where, capture_output=True, text=True, timeout=60,
                                 env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
        except subprocess.TimeoutExpired:
            pytest.fail(f"no answer within 60 s (a hang?): python {' '.join(argv)}")
        shown = f"python {' '.join(argv)}\nexit {res.returncode}\n{res.stderr[-3000:]}"
        assert res.returncode in (0, 1, 2), shown
        injected = "fault injected on rank" in res.stderr          # --inject-fault ...:raise: a crash on purpose
        assert "Traceback" not in res.stderr or injected, shown
        if any(value == "" for _, value in pairs):                 # an empty value is never silently ignored
            assert res.returncode == 2, shown
        if res.returncode == 2:                                    # a usage error: one line
            assert len(res.stderr.strip().splitlines()) == 1, shown
        if res.returncode == 1:                                    # a runtime error says what, on its last line
            assert "error" in res.stderr.strip().splitlines()[-1], shown
        for suffix in ("", ".png", ".json"):                       # a FIFO is never replaced or written
            assert not os.path.isfile(f"{where}/pipe{suffix}"), shown
