"""Run a server as a child process on loopback, for tests and load benchmarks.

`ServerProcess(argv)` starts the command (by default `sparsebert serve ...` with the current Python)
on a free 127.0.0.1 port, waits until GET /health answers 200, and on exit sends SIGTERM and waits for
the process, so a test sees the graceful-shutdown path a deployment sees. Standard library only.

Left out: remote hosts, TLS, anything beyond one process.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`with ServerProcess.sparsebert(model_path, "--max-queue", "64") as srv: srv.url`"""

    def __init__(self, argv: list[str], port: int, health_path: str = "/health",
                 start_timeout: float = 300.0, env: dict | None = None):
        self.argv, self.port, self.health_path = list(argv), port, health_path
        self.start_timeout = start_timeout
        self.env = env
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    @classmethod
    def sparsebert(cls, model_path: str, *options: str, **kwargs) -> "ServerProcess":
        port = free_port()
        argv = [sys.executable, "-m", "sparsebert.cli", "serve", str(model_path), "--host", "127.0.0.1",
                "--port", str(port), *options]
        return cls(argv, port, **kwargs)

    def start(self) -> "ServerProcess":
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before it was ready:\n"
                                   f"{self.log()}")
            try:
                with urllib.request.urlopen(self.url + self.health_path, timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not healthy after {self.start_timeout} s:\n{self.log()}")

    def log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-4000:]

    def terminate(self) -> None:
        """SIGTERM only (graceful shutdown starts); `wait` collects the exit status."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"server did not exit within {timeout} s of SIGTERM:\n{self.log()}") from None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.terminate()
        code = self.wait()
        return code

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()


__all__ = ["ServerProcess", "free_port"]
