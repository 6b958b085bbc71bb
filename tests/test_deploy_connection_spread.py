"""Keep-alive connections are spread across gunicorn's workers, not piled onto the first one awake."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.processes import GunicornProcess

CLIENTS = 32
REQUEST = b"GET /health/liveliness HTTP/1.1\r\nHost: portal\r\nConnection: keep-alive\r\n\r\n"


def served_by(worker_pids: list[int], port: int) -> dict[int, int]:
    """How many of the connections to `port` each worker holds, read from /proc (socket inodes per process)."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            if local_port == port and state == "01":  # ESTABLISHED, on the server's side
                inodes[inode] = local_port
    counts = {}
    for pid in worker_pids:
        held = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink().as_posix()
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        counts[pid] = held
    return counts


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def wait_until_idle(pids: list[int], timeout: float = 60) -> None:
    """Until every worker has finished its start-up work (a worker still importing in the background takes
    its turns slowly, and its peers rightly take the connections meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = [cpu_seconds(pid) for pid in pids]
        time.sleep(0.5)
        if all(cpu_seconds(pid) - b < 0.03 for pid, b in zip(pids, before, strict=True)):
            return
    raise AssertionError("the workers never went idle")


def read_response(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):  # the end of a chunked body
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def test_a_burst_of_keep_alive_clients_is_spread_across_the_workers(transactional_db, tmp_path):
    with GunicornProcess(tmp_path / "gunicorn.log", workers=2) as portal:
        wait_until_idle(portal.worker_pids())
        clients = [socket.create_connection(("127.0.0.1", portal.port)) for _ in range(CLIENTS)]
        try:
            for _ in range(3):  # each client keeps its connection (and so its worker) for several requests
                for conn in clients:
                    conn.sendall(REQUEST)
                for conn in clients:
                    assert b" 200 " in read_response(conn).split(b"\r\n", 1)[0]
            counts = served_by(portal.worker_pids(), portal.port)
        finally:
            for conn in clients:
                conn.close()
    assert sum(counts.values()) == CLIENTS, counts
    assert max(counts.values()) <= 0.6 * CLIENTS, f"connections per worker: {counts}"
