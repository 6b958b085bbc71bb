"""Child processes of the benchmark (mock upstreams, gunicorn, LiteLLM Proxy) and what they cost in memory.

Each child runs in its own session, so stopping it stops its whole group (gunicorn's workers, LiteLLM's
uvicorn workers) and nothing else. Every started process is registered and stopped at exit, even on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of a GET, or None when nothing answers (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # 127.0.0.1 only
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: if the benchmark is killed outright, its servers go too."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Child:
    """One started process (and its process group), with its output in a log file."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path, log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_http(self, url: str, timeout: float) -> float:
        """Seconds from launch to the first 200 on `url`; raises with the log's tail if it never comes."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if http_status(url, timeout=1.0) == 200:
                return time.perf_counter() - self.started_at
            if not self.alive():
                break
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not answer 200 on {url} (exit code {self.proc.poll()}).\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the group (gunicorn then drains and flushes), SIGKILL what is left after `grace` seconds."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # The leader may be gone while its workers linger: the group id is still ours to clean up.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._log.close()


class Children:
    """Every process the benchmark started; stop_all() is safe to call twice."""

    def __init__(self, cwd: Path, log_dir: Path) -> None:
        self.cwd = cwd
        self.log_dir = log_dir
        self.started: list[Child] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, env=env, cwd=self.cwd, log_dir=self.log_dir)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()


# --- memory ---------------------------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (via /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in (task / "children").read_text().split())
    return out


def _kib_field(path: Path, name: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(frozen=True)
class Memory:
    processes: int
    rss_mb: float
    pss_mb: float | None  # None when smaps_rollup is not readable

    def as_dict(self) -> dict[str, float | int | None]:
        return {"processes": self.processes, "rss_mb": self.rss_mb, "pss_mb": self.pss_mb}


def memory_of_tree(pid: int) -> Memory:
    """Sum of VmRSS (and Pss, which splits shared pages fairly between forked workers) over a process tree."""
    pids = descendants(pid)
    rss = pss = 0
    pss_known = True
    for p in pids:
        rss += _kib_field(Path(f"/proc/{p}/status"), "VmRSS") or 0
        value = _kib_field(Path(f"/proc/{p}/smaps_rollup"), "Pss")
        if value is None:
            pss_known = False
        else:
            pss += value
    return Memory(len(pids), round(rss / 1024, 1), round(pss / 1024, 1) if pss_known else None)


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def cpu_seconds_of_tree(pid: int) -> float:
    """User + system CPU time used so far by a process tree (from /proc/<pid>/stat), in seconds.

    CPU per request is the figure a busy machine disturbs least: latency waits for the other tenants' work,
    CPU time does not.
    """
    ticks = 0
    for p in descendants(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{p}/stat").read_text()
            # The command name may contain spaces: fields are counted after its closing parenthesis.
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def supervised(children: Children, run_dir: Path, keep: bool) -> Iterator[None]:
    """Run a benchmark's body: on a failure, show the log of any child that died early; in every case stop
    every child and remove the run directory (unless `keep`)."""
    import shutil
    import sys

    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException:
        for child in children.started:
            if not child.alive():
                print(f"--- {child.name} exited early; its log ends:\n{child.tail()}", file=sys.stderr)
        raise
    finally:
        children.stop_all()
        if keep:
            print(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
