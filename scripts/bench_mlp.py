"""Training-step throughput of the NumPy MLP next to PyTorch on the CPU, same model, same batch.

    python scripts/bench_mlp.py                      # 784-512-256-128-10, Adam, batch 32 128 512
    python scripts/bench_mlp.py --batch 128 --optimizer sgd --dropout 0.2

One BLAS thread on both sides (OpenBLAS through threadpoolctl, torch.set_num_threads(1)). The two
contenders alternate within each repeat and each figure is the median over repeats, so machine noise
hits both alike. Also prints where the NumPy step's time goes (forward, backward, optimizer) and the
share spent in the matrix multiplies alone. PyTorch is only a reference: install it with
``pip install torch==2.13.0``; without it only the NumPy column is printed.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse        # noqa: E402
import statistics      # noqa: E402
import sys             # noqa: E402
import time            # noqa: E402

import numpy as np     # noqa: E402

from mpisim.nn import MLP, OPTIMIZERS, flush_denormals, make_optimizer, parse_hidden   # noqa: E402


def positive(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=positive, nargs="+", default=[32, 128, 512], help="batch sizes")
    p.add_argument("--hidden", default="512,256,128", help="hidden sizes (input 784, output 10)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seconds", type=float, default=0.5, help="time per contender per repeat")
    p.add_argument("--repeats", type=positive, default=5, help="median over this many alternations")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    args = p.parse_args(argv)
    try:
        args.sizes = [784, *parse_hidden(args.hidden), 10]
    except ValueError as e:
        p.error(f"--hidden: {e}")
    if not 0 <= args.dropout < 1:
        p.error("--dropout must be in [0, 1)")
    if not 0 < args.seconds < 3600:       # also refuses nan and inf, which would never end
        p.error(f"--seconds must be in (0, 3600), got {args.seconds}")
    return args


def limit_blas_threads():
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return "unknown BLAS (threadpoolctl missing)"
    threadpool_limits(1)
    info = [f"{d['internal_api']} {d.get('version') or ''} ({d['num_threads']} thread)"
            for d in threadpool_info() if d["user_api"] == "blas"]
    return ", ".join(info) or "no BLAS found"


class NumpyContender:
    def __init__(self, args, x, y):
        self.model = MLP(args.sizes, dropout=args.dropout, seed=0)
        self.opt = make_optimizer(args.optimizer, self.model.params, self.model.grads, lr=1e-3)
        self.x, self.y = x, y

    def step(self):
        self.model.train_step(self.x, self.y)
        self.opt.step()

    def breakdown(self, n: int) -> dict[str, float]:
        """Mean seconds per step in forward(+loss), backward, optimizer, and in matmuls alone."""
        m, t = self.model, {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        for _ in range(n):
            t0 = time.perf_counter()
            logits = m.forward(self.x, train=True)
            m.loss_fn.forward(logits, self.y)
            t1 = time.perf_counter()
            m.backward(m.loss_fn.backward())
            t2 = time.perf_counter()
            self.opt.step()
            t3 = time.perf_counter()
            t["forward"] += t1 - t0
            t["backward"] += t2 - t1
            t["optimizer"] += t3 - t2
        # the same GEMMs on their own (3 per layer: forward, dW, dX; no dX for the first layer)
        B = self.x.shape[0]
        mats = []
        rng = np.random.default_rng(1)
        for d_in, d_out in zip(m.sizes[:-1], m.sizes[1:]):
            X, W, Y = (rng.random(s, dtype=np.float32) for s in ((B, d_in), (d_in, d_out), (B, d_out)))
            mats.append((X, W, Y, np.empty_like(X), np.empty_like(W), np.empty_like(Y)))
        t0 = time.perf_counter()
        for _ in range(n):
            for i, (X, W, Y, dX, dW, Yo) in enumerate(mats):
                np.matmul(X, W, out=Yo)
                np.matmul(X.T, Y, out=dW)
                if i:
                    np.matmul(Y, W.T, out=dX)
        t["matmul only"] = time.perf_counter() - t0
        return {k: v / n for k, v in t.items()}


class TorchContender:
    def __init__(self, args, x, y, ref: MLP):
        import torch
        torch.set_num_threads(1)
        layers = []
        for i, (d_in, d_out) in enumerate(zip(args.sizes[:-1], args.sizes[1:])):
            lin = torch.nn.Linear(d_in, d_out)
            W = ref.layers[[j for j, L in enumerate(ref.layers) if type(L).__name__ == "Linear"][i]]
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W.params["W"].T.copy()))
                lin.bias.copy_(torch.from_numpy(W.params["b"].copy()))
            layers.append(lin)
            if i < len(args.sizes) - 2:
                layers.append(torch.nn.ReLU())
                if args.dropout:
                    layers.append(torch.nn.Dropout(args.dropout))
        self.torch = torch
        self.model = torch.nn.Sequential(*layers)
        kw = {"lr": 1e-3}
        name = args.optimizer
        if name == "adam":
            self.opt = torch.optim.Adam(self.model.parameters(), **kw)
        elif name == "adamw":
            self.opt = torch.optim.AdamW(self.model.parameters(), **kw)
        else:
            self.opt = torch.optim.SGD(self.model.parameters(), momentum=0.9 if name != "sgd" else 0.0,
                                       nesterov=name == "nesterov", **kw)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()


def steps_per_second(step, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


def main(argv=None) -> int:
    args = parse_args(argv)
    blas = limit_blas_threads()
    flush_denormals()          # as the trainers do; the thread's mode applies to PyTorch's kernels too
    torch_version = None
    if not args.no_torch:
        try:
            import torch
            torch_version = torch.__version__
        except ImportError:
            print("torch not installed (pip install torch==2.13.0): NumPy column only", file=sys.stderr)
    print(f"# model {'-'.join(map(str, args.sizes))}, relu, dropout {args.dropout}, {args.optimizer}, float32")
    print(f"# numpy {np.__version__} with {blas}; torch {torch_version or 'absent'} (1 thread)")
    print(f"# median samples/s over {args.repeats} alternating repeats of {args.seconds}s each\n")
    print(f"{'batch':>6} {'numpy/s':>10} {'torch/s':>10} {'ratio':>7}   numpy step: fwd / bwd / opt / "
          f"(matmul only) in ms")
    rng = np.random.default_rng(0)
    for B in args.batch:
        x = rng.normal(size=(B, 784)).astype(np.float32)
        y = rng.integers(0, 10, size=B).astype(np.int64)
        ours = NumpyContender(args, x, y)
        theirs = TorchContender(args, x, y, ours.model) if torch_version else None
        for c in (ours, theirs):       # warm up: compile, allocate buffers, fault pages in
            if c is not None:
                steps_per_second(c.step, 0.2)
        a, b = [], []
        for _ in range(args.repeats):
            a.append(steps_per_second(ours.step, args.seconds) * B)
            if theirs is not None:
                b.append(steps_per_second(theirs.step, args.seconds) * B)
        bd = ours.breakdown(max(5, int(20 * 128 / B)))
        na = statistics.median(a)
        tb = f"{statistics.median(b):>10.0f}" if b else f"{'-':>10}"
        ratio = f"{na / statistics.median(b):>6.2f}x" if b else f"{'-':>7}"
        print(f"{B:>6} {na:>10.0f} {tb} {ratio}   {bd['forward'] * 1e3:.2f} / {bd['backward'] * 1e3:.2f} / "
              f"{bd['optimizer'] * 1e3:.2f} / ({bd['matmul only'] * 1e3:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
