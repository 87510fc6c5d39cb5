"""A local multi-node Ray cluster from the `ray` command line, for tests, benchmarks and trying
`--address` on one machine (on real machines run the same `ray start` commands on each host).

    with LocalCluster(nodes=[1, 1]) as cluster:          # head + one more node, 1 CPU each
        run(..., config with ray.address=cluster.address, env=cluster.env)

Each node is `ray start --block` in its own short temp dir; stopping a node ends, by pid, the
processes it started (never `ray stop`, which would end every Ray cluster on the machine).
`ray start --head` turns token authentication on, so every process of the cluster (nodes and
drivers) gets the same RAY_AUTH_TOKEN through `env`.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RayNode:
    """One `ray start --block` node; `stop()` kills it and everything it started."""

    def __init__(self, env: dict, *args: str, object_store_bytes: int = 150_000_000):
        # Short temp dirs: Ray's Unix socket paths inside them must stay under 108 bytes.
        self.folder = tempfile.mkdtemp(prefix="svdray-")
        self.log_path = os.path.join(self.folder, "node.log")
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        command = [ray_cli, "start", "--block", "--disable-usage-stats", f"--temp-dir={self.folder}",
                   f"--object-store-memory={object_store_bytes}", *args]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)

    def wait_started(self, timeout: float = 180) -> str:
        """The node's log once it says it started; raises with the log if it died or timed out."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with open(self.log_path) as log:
                text = log.read()
            if "Ray runtime started" in text:
                return text
            if self.process.poll() is not None:
                raise RuntimeError(f"ray node failed to start:\n{text[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"ray node did not start in {timeout:.0f} s")

    def raylet(self):
        """The node's raylet process (psutil.Process)."""
        import psutil

        return next(p for p in psutil.Process(self.process.pid).children(recursive=True) if p.name() == "raylet")

    def stop(self) -> None:
        import psutil

        try:
            top = psutil.Process(self.process.pid)
            family = top.children(recursive=True) + [top]
        except psutil.NoSuchProcess:
            family = []
        for process in family:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


class LocalCluster:
    """A head node plus more nodes, `nodes` giving each one's CPUs; extra nodes also get a custom
    resource `node_<i>` so work can be pinned to them."""

    def __init__(self, nodes: list[int]):
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        self.nodes: list[RayNode] = []
        try:
            head = RayNode(self.env, "--head", f"--port={free_port()}", f"--num-cpus={nodes[0]}",
                           "--include-dashboard=false")
            self.nodes.append(head)
            self.address = re.search(r"ray start --address='([^']+)'", head.wait_started()).group(1)
            for index, cpus in enumerate(nodes[1:], start=1):
                node = RayNode(self.env, f"--address={self.address}", f"--num-cpus={cpus}",
                               f'--resources={{"node_{index}": 1}}')
                self.nodes.append(node)
                node.wait_started()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.nodes = []

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
