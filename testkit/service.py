"""Run the real ``journeys`` CLI as a child process on 127.0.0.1, for crash and restart tests and bench/faults.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from testkit.net import HOST, free_port


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JOURNEYS_") and k not in ("CLICKHOUSE_URL", "DATABASE_URL")
    }
    env["JOURNEYS_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def journeys(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=cli_env(data_dir, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def create_project(data_dir: Path, name: str) -> dict[str, str]:
    done = journeys(data_dir, "project", "create", name, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class Service:
    """``journeys up`` in a child process; ``kill()`` is a real SIGKILL, ``stop()`` a SIGTERM."""

    def __init__(self, data_dir: Path, **env: str):
        self.data_dir = data_dir
        self.collector_port = free_port()
        self.query_port = free_port()
        self.env = cli_env(
            data_dir,
            JOURNEYS_COLLECTOR_PORT=str(self.collector_port),
            JOURNEYS_QUERY_PORT=str(self.query_port),
            **env,
        )
        self.log = data_dir / f"service-{self.collector_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def collector(self) -> str:
        return f"http://{HOST}:{self.collector_port}"

    @property
    def query(self) -> str:
        return f"http://{HOST}:{self.query_port}"

    def start(self, timeout: float = 60) -> "Service":
        # A port free_port() found free can be taken before the child binds it (another test's listener, or
        # the source port of an outgoing connection): then the child exits on EADDRINUSE, and new ports are
        # tried. Anything else that stops it is the test's failure.
        for _ in range(3):
            began = self.log.stat().st_size if self.log.exists() else 0
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "cli.main", "up"], env=self.env, stdout=log, stderr=log
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if b"journeys is up" in self.log.read_bytes()[began:]:
                    return self
                time.sleep(0.05)
            else:
                raise AssertionError(f"service did not come up in {timeout}s:\n{self.log.read_text()}")
            if b"address already in use" not in self.log.read_bytes()[began:]:
                raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.log.read_text()}")
            self.collector_port, self.query_port = free_port(), free_port()
            self.env.update(JOURNEYS_COLLECTOR_PORT=str(self.collector_port), JOURNEYS_QUERY_PORT=str(self.query_port))
        raise AssertionError(f"service could not bind its ports three times:\n{self.log.read_text()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def stop_leftover_postgres(data_dir: Path) -> None:
    """A SIGKILLed service cannot release the embedded PostgreSQL it shared; stop it at test end."""
    pgdata = str((data_dir / "postgres").resolve())
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("name") == "postgres" and pgdata in " ".join(cmdline):
            proc.terminate()
            try:
                proc.wait(10)
            except psutil.TimeoutExpired:
                proc.kill()
