"""Run locks: at most one live process works on a run folder.

Reads and writes ``WORK_DIR/lock``, one line: ``<pid> <host> <token> <role> <process id>``.
``ablate run`` takes the lock (role ``launcher``) before it launches a run and writes the token
into ``run.json``; the worker that trains the run finds that token there and adopts the lock
(role ``worker``, its own pid), so the lock names the process that actually trains, even after
the ``ablate run`` that started it died. A lock held by a launcher means the run waits for its
worker to start: it is queued.

A holder is *live* when its process runs on this host: its pid exists, is no zombie, and is the
same process that took the lock, as told by the boot id and the process start time of
``/proc`` (the process id field): a pid reused after a reboot or a wrap-around is not the
holder. On another host (a Slurm node) the pid cannot be seen, so there the holder is live while
its heartbeat keeps the file's mtime fresh. A lock that is not live is *stale* and may be taken
over. Check-and-set happens under ``flock`` on the run folder, so two processes never both take
one lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = "lock"
HEARTBEAT_S = 60.0  # how often a worker touches its lock
STALE_AFTER_S = 600.0  # a lock from another host without a heartbeat for this long is stale
LAUNCHER, WORKER = "launcher", "worker"


class LockHeld(Exception):
    """The run is locked by a live process; ``holder`` says which."""

    def __init__(self, holder: Holder):
        super().__init__(f"locked by {holder}")
        self.holder = holder


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as written in the lock file."""

    pid: int
    host: str
    token: str
    role: str  # LAUNCHER (the run waits for its worker) or WORKER
    process: str | None  # boot id and start time of the pid; None in locks of older ablate versions
    age_s: float  # seconds since the file was last written or touched

    def alive(self) -> bool:
        if self.host == socket.gethostname():
            return pid_alive(self.pid) and (self.process is None or process_id(self.pid) == self.process)
        return self.age_s < STALE_AFTER_S

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (zombies count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def process_id(pid: int) -> str | None:
    """``<boot id>:<start time>`` of a process: unique for its lifetime, across pid reuse and reboots.

    None where ``/proc`` does not tell (not Linux, or the process is gone).
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        with open(f"/proc/{pid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]  # field 22, starttime, after pid and comm
    except (OSError, IndexError):
        return None
    return f"{boot[:8]}:{start}"


def live_holder(work_dir: str | os.PathLike) -> Holder | None:
    """The live process that holds a run folder's lock, or None; reads only, takes nothing."""
    holder = RunLock(work_dir, token="").holder()
    return holder if holder is not None and holder.alive() else None


def new_token() -> str:
    """A token naming one launch of one run (written to the lock and to ``run.json``)."""
    return uuid.uuid4().hex[:16]


class RunLock:
    """The lock of one run folder, taken on behalf of ``token``.

    Args:
        work_dir: the run folder.
        token: names this launch; a process holding the same token may adopt the lock.
        role: what the taking process does: :data:`LAUNCHER` or :data:`WORKER`.
    """

    def __init__(self, work_dir: str | os.PathLike, token: str, role: str = WORKER):
        self.work_dir = Path(work_dir)
        self.path = self.work_dir / LOCK_FILE
        self.token = token
        self.role = role

    def holder(self) -> Holder | None:
        """The current holder, or None when there is no (readable) lock."""
        try:
            fields = self.path.read_text().split()
            age = time.time() - self.path.stat().st_mtime
            pid, host, token = int(fields[0]), fields[1], fields[2]
        except (OSError, ValueError, IndexError):
            return None
        role = fields[3] if len(fields) > 3 else WORKER
        process = fields[4] if len(fields) > 4 and fields[4] != "-" else None
        return Holder(pid, host, token, role, process, age)

    def acquire(self, force: bool = False) -> Holder | None:
        """Take the lock for this process.

        Args:
            force: take it even from a holder that looks alive (``ablate run --steal-locks``).

        Returns:
            The holder that was taken over (warn about it), or None.

        Raises:
            LockHeld: a live process with another token holds the lock, and ``force`` is off.
        """
        with self._guard():
            holder = self.holder()
            if holder is not None and holder.token != self.token and holder.alive() and not force:
                raise LockHeld(holder)
            self._write()
            return holder if holder is not None and holder.token != self.token else None

    def release(self) -> None:
        """Remove the lock if it still carries this token."""
        with contextlib.suppress(OSError), self._guard():
            holder = self.holder()
            if holder is not None and holder.token == self.token:
                self.path.unlink(missing_ok=True)

    def touch(self) -> None:
        """Refresh the heartbeat (the file's mtime)."""
        with contextlib.suppress(OSError):
            os.utime(self.path)

    def heartbeat(self) -> threading.Event:
        """Touch the lock every :data:`HEARTBEAT_S` seconds in a daemon thread; set the event to stop."""
        stop = threading.Event()

        def beat():
            while not stop.wait(HEARTBEAT_S):
                self.touch()

        threading.Thread(target=beat, name="ablate-lock-heartbeat", daemon=True).start()
        return stop

    def _write(self) -> None:
        pid = os.getpid()
        tmp = self.path.with_name(f".{LOCK_FILE}.{pid}.tmp")
        tmp.write_text(f"{pid} {socket.gethostname()} {self.token} {self.role} {process_id(pid) or '-'}\n")
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def _guard(self):
        """Serialise check-and-set between processes with ``flock`` on the run folder."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.work_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
