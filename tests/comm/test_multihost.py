"""mpisim across two hosts with a real MPI: two network namespaces joined by a veth pair stand for two
machines, and MPICH's launcher reaches the second one through a wrapper around ``ip netns exec`` (where it
would use ssh). The ranks' traffic must cross the veth link over TCP, not shared memory: the test reads the
link's byte counter. Skipped where namespaces cannot be made (not root, no ``ip``)."""
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.mpirun import ROOT, mpiexec

HOSTS = ("10.77.0.1", "10.77.0.2")
# MPICH's defaults would see one kernel and use shared memory: NOLOCAL makes every rank remote, UCX_TLS keeps
# UCX (the mpich wheel's network module) to TCP, as between two machines
TCP_ENV = {"MPIR_CVAR_NOLOCAL": "1", "UCX_TLS": "tcp,self"}

WRAPPER = """#!/bin/sh
# called by mpiexec as ssh would be: [options] HOST COMMAND...; runs COMMAND in HOST's network namespace
while [ "${{1#-}}" != "$1" ]; do shift; done
host=$1; shift
case $host in {a}) ns={na};; {b}) ns={nb};; *) echo "no namespace for host $host" >&2; exit 1;; esac
exec ip netns exec "$ns" sh -c "$*"
"""


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_hosts(tmp_path):
    """Two network namespaces with a veth pair between them; yields (namespace A, veth in A, launcher wrapper)."""
    if shutil.which("ip") is None:
        pytest.skip("the ip command (iproute2) is not installed: cannot make network namespaces")
    tag = uuid.uuid4().hex[:6]
    na, nb, va, vb = f"mpisim{tag}a", f"mpisim{tag}b", f"vm{tag}a", f"vm{tag}b"
    made = _ip("netns", "add", na)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here ({made.stderr.strip() or 'ip netns add failed'}): "
                    f"needs root or CAP_NET_ADMIN")
    try:
        _ip("netns", "add", nb).check_returncode()
        for cmd in (["link", "add", va, "type", "veth", "peer", "name", vb], ["link", "set", va, "netns", na],
                    ["link", "set", vb, "netns", nb], ["-n", na, "addr", "add", f"{HOSTS[0]}/24", "dev", va],
                    ["-n", nb, "addr", "add", f"{HOSTS[1]}/24", "dev", vb], ["-n", na, "link", "set", va, "up"],
                    ["-n", nb, "link", "set", vb, "up"], ["-n", na, "link", "set", "lo", "up"],
                    ["-n", nb, "link", "set", "lo", "up"]):
            r = _ip(*cmd)
            if r.returncode != 0:
                pytest.skip(f"cannot set up the veth pair: ip {' '.join(cmd)}: {r.stderr.strip()}")
        wrapper = tmp_path / "netns-launcher"
        wrapper.write_text(WRAPPER.format(a=HOSTS[0], b=HOSTS[1], na=na, nb=nb))
        wrapper.chmod(0o755)
        yield na, va, wrapper
    finally:
        _ip("netns", "delete", na)
        _ip("netns", "delete", nb)


def _tx_bytes(ns: str, dev: str) -> int:
    out = json.loads(_ip("-n", ns, "-s", "-j", "link", "show", dev).stdout)
    return int(out[0]["stats64"]["tx"]["bytes"])


def _across(ns: str, wrapper: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``mpiexec`` in namespace ``ns`` with one rank on each host, each rank in its own namespace."""
    env = [x for k, v in {**TCP_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}.items()
           for x in ("-genv", k, v)]
    cmd = ["ip", "netns", "exec", ns, mpiexec(), "-launcher", "ssh", "-launcher-exec", str(wrapper),
           "-hosts", ",".join(HOSTS), "-n", "2", "-ppn", "1", *env, sys.executable, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(300)
def test_allreduce_training_across_two_hosts_over_tcp(two_hosts, tmp_path):
    ns, dev, wrapper = two_hosts
    metrics = tmp_path / "hosts.jsonl"
    before = _tx_bytes(ns, dev)
    r = _across(ns, wrapper, "-m", "mpisim.allreduce", "--epochs", "2", "--algorithm", "ring",
                "--metrics", str(metrics))
    assert r.returncode == 0, r.stderr[-2000:]
    sent = _tx_bytes(ns, dev) - before
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    payload = sum(rec["payload_bytes"] for rec in records)          # both ranks' gradient bytes
    assert payload > 1_000_000
    assert sent >= payload / 2, f"only {sent} bytes crossed the link for {payload} payload bytes: shared memory?"
    assert "matches the formula" in r.stdout
    # the same run on 2 simulated ranks computes the same thing, bit for bit
    sim = tmp_path / "sim.jsonl"
    s = subprocess.run([sys.executable, "-m", "mpisim.allreduce", "--sim", "2", "--epochs", "2", "--algorithm", "ring",
                        "--metrics", str(sim), "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert s.returncode == 0, s.stderr
    simulated = [json.loads(line) for line in sim.read_text().splitlines()]
    assert [rec["test_loss"] for rec in records] == [rec["test_loss"] for rec in simulated]
    assert [rec["payload_bytes"] for rec in records] == [rec["payload_bytes"] for rec in simulated]
