"""``python -m mpisim``: what can be run, one line each, with the command that runs it."""
import sys

# the paradigms, in the order they are listed; each module declares PARADIGM (mpisim.train.runtime).
# Adding a paradigm is its module, its tests, its section in docs/paradigms.md (data parallel) or
# docs/parallelism.md (model parallel) and one name here.
PARADIGMS = ("centralized", "allreduce", "paramserver", "fedavg", "localsgd", "easgd", "gossip", "pipeline", "tensor",
             "zero", "hybrid")

TOOLS = [
    ("mpisim.bench", "allreduce algorithms next to MPI's own Allreduce (OSU-style table)",
     "mpiexec -n 2 python -m mpisim.bench"),
    ("mpisim.analysis", "complexity report: every collective simulated next to its alpha-beta-gamma formula",
     "python -m mpisim.analysis --quick   (docs/complexity.md: see its first line)"),
    ("mpisim.calibrate", "measure this machine's alpha, beta, gamma and print them as a --network spec",
     "mpiexec -n 2 python -m mpisim.calibrate --validate"),
    ("mpisim.elastic", "run a training job again from its last checkpoint when it fails (up to --max-restarts)",
     "python -m mpisim.elastic --max-restarts 2 -- mpiexec -n 2 python -m mpisim.allreduce --checkpoint ck"),
    ("mpisim.study", "the course experiments, one command each: tables, plots and conclusions in NAME.md",
     "python -m mpisim.study --list   (docs/studies: the full runs)"),
    ("kernels", "grayscale and matmul backends (numpy, numba, numba_cuda, cupy): which run here",
     "python -m kernels"),
    ("kernels.bench", "the kernels' GB/s and GFLOP/s next to memcpy, BLAS and cuBLAS",
     "python -m kernels.bench"),
]


def paradigm_tools() -> list[tuple[str, str, str]]:
    """(module, what, command) of every paradigm, from its declaration."""
    import importlib
    out = []
    for name in PARADIGMS:
        par = importlib.import_module(f"mpisim.{name}").PARADIGM
        cmd = (f"mpiexec -n {par.listed_ranks} {par.prog}   (or: {par.prog} --sim {par.ranks_by_default()})"
               if par.cluster
               else par.prog)
        what = par.description.rstrip(".")
        if what.split()[0][1:].islower():           # "Data-parallel ..." reads "data-parallel ..."; "ZeRO" stays
            what = what[0].lower() + what[1:]
        out.append((f"mpisim.{name}", what, cmd))
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in ("-h", "--help"):
        modules = {name.removeprefix("mpisim."): name for name, _, _ in TOOLS}
        modules.update({name: f"mpisim.{name}" for name in PARADIGMS})
        modules.update({m: m for m in list(modules.values())})
        if argv[0].startswith("-"):
            why = f"unknown option {argv[0]} (it takes none but --help)"
        elif argv[0] in modules:
            why = f"run the tool as python -m {modules[argv[0]]}"
        else:
            why = f"unknown tool {argv[0]!r}"
        print(f"python -m mpisim: error: {why}; python -m mpisim lists the tools", file=sys.stderr)
        return 2
    print("mpisim: a simulated cluster for distributed ML on pure message passing\n")
    tools = paradigm_tools() + TOOLS
    width = max(len(name) for name, _, _ in tools)
    for name, what, cmd in tools:
        print(f"  {name:<{width}}  {what}\n  {'':<{width}}  $ {cmd}")
    print("\nLibrary: mpisim.comm (transports and collectives), mpisim.run_simulated(n, fn). "
          "Add --help to any tool for its options.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
