"""A throwaway PostgreSQL server of a test's own, to freeze and thaw (``pause``/``resume``).

The shared CI server (``scripts/ci-services.sh``, ``TEST_POSTGRES_URL``) serves every test
at once: a test that SIGSTOPs it would stall all the others. A fault test starts one of
these instead, the way the CI script starts its own: ``initdb`` into a temporary folder
(as the ``postgres`` user when run as root, since the server refuses to run as root),
loopback only, on a free port, ``fsync`` off. ``pause()`` SIGSTOPs every process of the
server (postmaster and backends, as a frozen VM or ``docker pause`` would): it still
accepts TCP connections (the kernel answers) but never replies, which no socket timeout
of the client notices. ``resume()`` SIGCONTs them.

``ThrowawayPostgres.unavailable()`` says why one cannot be started here (no binaries, or
root without a ``postgres`` user), for a test's skip reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .proxy import free_port


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class ThrowawayPostgres:
    """``with ThrowawayPostgres() as pg: pg.url``; the data folder is removed on exit."""

    def __init__(self) -> None:
        why, found = self.unavailable(), _pg_bin()
        if why or found is None:
            raise RuntimeError(why)
        self._bin = found
        self._dir = Path(tempfile.mkdtemp(prefix="atlas-pg-"))
        self._data = self._dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._paused: list[int] = []

    @staticmethod
    def unavailable() -> str | None:
        """Why no throwaway server can run here, or None."""
        if _pg_bin() is None:
            return "no PostgreSQL binaries (initdb): install Debian's postgresql (scripts/ci-services.sh does)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root without a 'postgres' user to run the server as"
        return None

    def _run(self, *args: str) -> None:
        cmd = [str(self._bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self) -> ThrowawayPostgres:
        if os.geteuid() == 0:
            shutil.chown(self._dir, "postgres")
        self._run("initdb", "-D", str(self._data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        opts = f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self._data), "-o", opts, "-l", str(self._dir / "log"), "-w", "-t", "60",
                  "start")
        return self

    def _pids(self) -> list[int]:
        """The postmaster and its children (backends, background workers)."""
        postmaster = int((self._data / "postmaster.pid").read_text().split()[0])
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                # The parent pid is the 2nd field after the ``(comm)``, which may hold spaces.
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == postmaster:
                children.append(int(entry.name))
        return [postmaster, *children]

    def pause(self) -> None:
        """SIGSTOP the whole server: connections are accepted, nothing is answered."""
        pids = self._pids()
        for pid in pids:  # the postmaster first: it forks no new backend once stopped
            os.kill(pid, signal.SIGSTOP)
        self._paused = pids

    def resume(self) -> None:
        for pid in reversed(self._paused):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self._paused = []

    def stop(self) -> None:
        self.resume()
        try:
            self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop")
        except (subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
