"""Three nats-servers on loopback as one JetStream cluster, from deploy/nats-cluster/ as shipped:
only the ports, the stores and (for tests that do not test permissions) the users are the test's."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bus.server import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CLUSTER = DEPLOY / "nats-cluster"
NODES = ("nats-1", "nats-2", "nats-3")
AUTHORIZATION = "nats-authorization.conf"
# the route ports the shipped files name, node by node
SHIPPED_ROUTES = (6222, 6223, 6224)
START_TIMEOUT = 30.0


@dataclass
class Node:
    name: str  # the file's stem: nats-1
    server_name: str  # what the server calls itself (and JetStream names as a leader)
    conf: Path
    client_port: int
    http_port: int
    route_port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Cluster:
    """The three nodes' configs written under `directory`, laid out as deploy/ is."""

    directory: Path
    binary: str
    authorization: bool = True
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        cluster_dir = self.directory / "nats-cluster"
        cluster_dir.mkdir(parents=True)
        routes = [free_port() for _ in NODES]
        common = (CLUSTER / "common.conf").read_text()
        if self.authorization:
            shutil.copy(DEPLOY / AUTHORIZATION, self.directory / AUTHORIZATION)
        else:
            common, count = re.subn(rf'^include "\.\./{AUTHORIZATION}"$', "", common, flags=re.MULTILINE)
            assert count == 1, f"common.conf includes {AUTHORIZATION} {count} times, not once"
        (cluster_dir / "common.conf").write_text(common)
        for name, route_port in zip(NODES, routes, strict=True):
            self.nodes.append(self._write(cluster_dir, name, route_port, routes))

    def _write(self, cluster_dir: Path, name: str, route_port: int, routes: list[int]) -> Node:
        client_port, http_port = free_port(), free_port()
        text = (CLUSTER / f"{name}.conf").read_text()
        store = self.directory / "store" / name
        moves = [
            (r'^listen: "0\.0\.0\.0:\d+"$', f'listen: "127.0.0.1:{client_port}"'),
            (r'^http: "127\.0\.0\.1:\d+"$', f'http: "127.0.0.1:{http_port}"'),
            (r"^(\s+)store_dir: .*$", rf'\g<1>store_dir: "{store}"'),
            (r'^(\s+)listen: "127\.0\.0\.1:\d+"$', rf'\g<1>listen: "127.0.0.1:{route_port}"'),
        ]
        for shipped, port in zip(SHIPPED_ROUTES, routes, strict=True):
            moves.append((rf"nats-route://127\.0\.0\.1:{shipped}\b", f"nats-route://127.0.0.1:{port}"))
        for pattern, replacement in moves:
            text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
            assert count == 1, f"deploy/nats-cluster/{name}.conf has {count} lines matching {pattern}"
        match = re.search(r'^server_name: "([^"]+)"$', text, flags=re.MULTILINE)
        assert match, f"deploy/nats-cluster/{name}.conf names no server"
        conf = cluster_dir / f"{name}.conf"
        conf.write_text(text)
        return Node(name, match[1], conf, client_port, http_port, route_port, self.directory / f"{name}.log")

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, node: Node) -> None:
        with node.log.open("ab") as out:
            node.process = subprocess.Popen(
                [self.binary, "-c", str(node.conf)], stdout=out, stderr=subprocess.STDOUT
            )

    def start_all(self) -> None:
        for node in self.nodes:
            self.start(node)

    def kill(self, node: Node) -> None:
        """SIGKILL, as a crash or a pulled plug: nothing flushed, nothing handed over."""
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.running:
                assert node.process is not None
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()

    def node_named(self, server_name: str) -> Node:
        return next(node for node in self.nodes if node.server_name == server_name)

    def jsz(self, node: Node) -> dict[str, object]:
        """The node's /jsz (JetStream's view: the meta leader, the cluster size)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/jsz", timeout=2) as response:
            result: dict[str, object] = json.load(response)
            return result

    def meta_leader(self, node: Node) -> str | None:
        """The JetStream meta leader as `node` sees it, once it sees the whole cluster."""
        try:
            meta = self.jsz(node).get("meta_cluster")
        except (OSError, urllib.error.URLError, ValueError):
            return None
        if not isinstance(meta, dict):
            return None
        leader = meta.get("leader")
        return str(leader) if leader and meta.get("cluster_size") == len(self.nodes) else None

    async def wait_formed(self, timeout: float = START_TIMEOUT) -> str:
        """Wait until every running node names the same meta leader; return its server name."""
        deadline = time.monotonic() + timeout
        running = [node for node in self.nodes if node.running]
        while True:
            leaders = {await asyncio.to_thread(self.meta_leader, node) for node in running}
            if len(leaders) == 1 and None not in leaders:
                return str(leaders.pop())
            failed = [node.name for node in self.nodes if node.process is not None and not node.running]
            if failed or time.monotonic() > deadline:
                raise AssertionError(
                    f"the cluster did not form within {timeout:g}s (leaders seen {leaders}, "
                    f"exited {failed}):\n{self.logs()}"
                )
            await asyncio.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(
            f"--- {node.name}\n{node.log.read_text(errors='replace')[-4000:]}"
            for node in self.nodes
            if node.log.exists()
        )

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)
