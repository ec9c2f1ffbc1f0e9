"""A Redis primary, its replica and three sentinels of the test's own, on free loopback ports."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path
from typing import Any

from http_support import FreezableProxy
from redis import Redis
from support import wait_until

from faults.faultkit import REDIS_SERVER, OwnRedis, free_port

SERVICE = "phase1ha"
DOWN_AFTER_MS = 1000


class Sentinel:
    """One `redis-server --sentinel` with a config file of its own (sentinel rewrites it)."""

    def __init__(self, home: Path, primary_port: int) -> None:
        self.port = free_port()
        self.dir = home / f"sentinel-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            "sentinel resolve-hostnames no\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            # Long: sentinels "fix" a replica that replicates from another address than the
            # primary's (ours goes through the link) only after twice this.
            f"sentinel failover-timeout {SERVICE} 120000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sentinel:
        with (self.dir / "sentinel.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [REDIS_SERVER, str(self.conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def client(self) -> Redis:
        return Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)

    def master(self) -> dict[str, Any]:
        client = self.client()
        try:
            state: Any = client.sentinel_master(SERVICE)
            return dict(state)
        finally:
            client.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


class Link(FreezableProxy):
    """The replication link: a proxy the replica replicates through. `freeze()` holds what the
    primary sends; `sever()` then drops it, as a primary that dies before its replica read its
    last writes loses them."""

    def sever(self) -> None:
        with self._lock:
            opened = list(self.open)
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class SentinelSet:
    """One primary, one replica (asynchronous replication, through `link`), three sentinels
    (quorum 2)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.primary = OwnRedis(home).start()
        self.link = Link(("127.0.0.1", self.primary.port))
        self.replica = OwnRedis(
            home, extra=("--replicaof", "127.0.0.1", str(self.link.port))
        ).start()
        self.sentinels = [Sentinel(home, self.primary.port).start() for _ in range(3)]
        addresses = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        self.url = f"redis+sentinel://{addresses}/{SERVICE}/0"
        wait_until(self.ready, timeout=30, interval=0.2, what="sentinels see each other")

    def ready(self) -> bool:
        """Every sentinel knows the other two and the replica, and the replica is in sync."""
        try:
            for sentinel in self.sentinels:
                state = sentinel.master()
                if int(state.get("num-other-sentinels", 0)) < 2:
                    return False
                if int(state.get("num-slaves", 0)) < 1:
                    return False
            info: Any = self.replica.client().info("replication")
            return bool(info.get("master_link_status") == "up")
        except Exception:
            return False

    def primary_port(self) -> int | None:
        """The port the sentinels' majority names as primary now."""
        seen: dict[int, int] = {}
        for sentinel in self.sentinels:
            with contextlib.suppress(Exception):
                port = int(sentinel.master()["port"])
                seen[port] = seen.get(port, 0) + 1
        best = max(seen.items(), key=lambda item: item[1], default=None)
        return best[0] if best and best[1] >= 2 else None

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.close()
        self.replica.close()
        self.primary.close()
        self.link.sever()
        self.link.close()
