"""State shared by every balancer process through one memory-mapped file.

gunicorn runs several worker processes; a membership pushed to one of them must be in force in
all of them before the push is acknowledged, and a replica ejected by one must be skipped by all.
A worker therefore reads the shared revision (one 8-byte load from the map) before each routing
decision and reloads the routing table from disk only when that revision moved. The map also
holds per-member health flags and per-worker in-flight counters (each worker writes only its own
row, so no cross-process atomics are needed; readers sum the rows).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ringlb_ring.naming import MAX_REPLICAS

MAX_WORKERS = 32
_REVISION = struct.Struct("<Q")
_PID = struct.Struct("<i")
_DRAINING_AT = DRAINING_AT = 8
_REPLACED_AGE_AT = 16
_HEALTH_AT = HEALTH_AT = 64
_PIDS_AT = _HEALTH_AT + MAX_REPLICAS
_INFLIGHT_AT = _PIDS_AT + 4 * MAX_WORKERS
_ROW = 4 * MAX_REPLICAS
_SIZE = _INFLIGHT_AT + _ROW * MAX_WORKERS

HEALTHY = 0
# Why a member is ejected, as stored in its health byte (0: healthy).
EJECTION_CODES = {"connection": 1, "5xx": 2, "heartbeat": 3}
EJECTION_REASONS = {code: reason for reason, code in EJECTION_CODES.items()}


class SharedState:
    """One process's view of the shared map in ``state_dir``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "shared.bin"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _SIZE:
                os.ftruncate(fd, _SIZE)
            self.map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)
        self._lock_path = self.dir / "lock"
        self._row_pid = -1
        self._row = -1
        self.inflight = memoryview(self.map).cast("B")[_INFLIGHT_AT:].cast("i")
        # The hot path reads these without a method call: the revision, and health bytes at
        # ``HEALTH_AT + index`` (non-zero: ejected).
        self.revision_view = memoryview(self.map).cast("B")[:8].cast("Q")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialize writers (membership pushes, health updates, row claims) across processes.

        POSIX record locks, not ``flock``: they belong to the process, so a worker forked while
        the master's health thread holds the lock does not inherit it.
        """
        with open(self._lock_path, "a") as lock:
            fcntl.lockf(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(lock, fcntl.LOCK_UN)

    @property
    def revision(self) -> int:
        return _REVISION.unpack_from(self.map, 0)[0]

    @revision.setter
    def revision(self, value: int) -> None:
        _REVISION.pack_into(self.map, 0, value)

    @property
    def draining(self) -> bool:
        """Set by the first worker that receives SIGTERM, read by all: once any worker's
        ``/readyz`` says 503, every worker ends each connection after its answer, including a
        sibling whose own SIGTERM has not been handled yet (a busy or descheduled loop)."""
        return self.map[_DRAINING_AT] != 0

    @draining.setter
    def draining(self, value: bool) -> None:
        self.map[_DRAINING_AT] = 1 if value else 0

    @property
    def replaced_age(self) -> int:
        """The last worker age gunicorn's master gave out before its last reload (SIGHUP).

        A worker of that age or younger that gets SIGTERM is being replaced, not shut down with
        the balancer, so its drain must not mark the balancer (its new siblings) as draining.
        Ages, not a count read by the worker: the master assigns a worker's age before it forks
        it, so a worker still booting when the reload came is known to be old."""
        return _REVISION.unpack_from(self.map, _REPLACED_AGE_AT)[0]

    @replaced_age.setter
    def replaced_age(self, value: int) -> None:
        _REVISION.pack_into(self.map, _REPLACED_AGE_AT, value)

    def ejected(self, index: int) -> bool:
        return self.map[_HEALTH_AT + index] != HEALTHY

    def ejection_reason(self, index: int) -> str | None:
        return EJECTION_REASONS.get(self.map[_HEALTH_AT + index])

    def set_health(self, index: int, reason: str | None) -> None:
        """``reason`` is a key of ``EJECTION_CODES``; ``None`` marks the member healthy."""
        self.map[_HEALTH_AT + index] = HEALTHY if reason is None else EJECTION_CODES[reason]

    def health_flags(self, count: int) -> bytes:
        return self.map[_HEALTH_AT : _HEALTH_AT + count]

    def write_health_flags(self, flags: bytes) -> None:
        self.map[_HEALTH_AT : _HEALTH_AT + len(flags)] = flags

    def row(self) -> int:
        """This process's in-flight row, claimed on first use (and again after a fork)."""
        pid = os.getpid()
        if self._row_pid != pid:
            self._row = self._claim_row(pid)
            self._row_pid = pid
            self.clear_row()
        return self._row

    def slot(self, index: int) -> int:
        """Position in ``inflight`` of this process's counter for member ``index``."""
        return self.row() * MAX_REPLICAS + index

    def clear_row(self) -> None:
        base = self.row() * MAX_REPLICAS
        self.inflight[base : base + MAX_REPLICAS] = memoryview(bytes(4 * MAX_REPLICAS)).cast("i")

    def _claim_row(self, pid: int) -> int:
        with self.locked():
            for row in range(MAX_WORKERS):
                owner = _PID.unpack_from(self.map, _PIDS_AT + 4 * row)[0]
                if owner == pid or owner == 0 or not _alive(owner):
                    _PID.pack_into(self.map, _PIDS_AT + 4 * row, pid)
                    return row
        raise RuntimeError(f"more than {MAX_WORKERS} balancer processes share {self.dir}")

    def total_inflight(self, count: int) -> list[int]:
        """In-flight requests per member index, summed over every process."""
        totals = [0] * count
        inflight = self.inflight
        for row in range(MAX_WORKERS):
            base = row * MAX_REPLICAS
            for i in range(count):
                totals[i] += inflight[base + i]
        return totals


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
