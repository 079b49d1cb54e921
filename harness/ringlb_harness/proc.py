"""/proc readers for tests and scripts: no extra tool, Linux only.

``cpu_seconds(root)`` is what the overhead bench divides by requests; ``rss_bytes`` is what the
streaming tests bound; ``pids_listening`` and ``descendants`` find a balancer's processes,
``tagged`` a whole ``ringlb dev`` stack.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (field 3, the state, is index 0)."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def state(pid: int) -> str:
    """The one-letter process state (R, S, T, Z...); "Z" also when the process is gone."""
    try:
        return _stat(pid)[0]
    except OSError:
        return "Z"


def start_ticks(pid: int) -> int | None:
    """Start time (field 22): with the PID it names one process, never a later one reusing it."""
    try:
        return int(_stat(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int, ticks: int | None = None) -> bool:
    """Running (not a zombie); with ``ticks`` from ``start_ticks``, and still the same process."""
    try:
        fields = _stat(pid)
    except OSError:
        return False
    return fields[0] != "Z" and (ticks is None or int(fields[19]) == ticks)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (a gunicorn master's workers, a supervisor's processes)."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            kids += map(int, Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
        except OSError:
            continue
    return kids


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren...)."""
    found: set[int] = set()
    for child in children(pid):
        if child not in found:
            found |= {child} | descendants(child)
    return found


def tagged(name: str, value: str) -> set[int]:
    """Every live process whose environment has ``name=value``: a stack started with a tag of
    its own is found whole, orphans reparented away from its tree included."""
    wanted = f"{name}={value}".encode()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if wanted in fh.read().split(b"\0") and alive(int(entry)):
                    found.add(int(entry))
        except OSError:
            continue
    return found


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def cpu_seconds(pid_tree_root: int) -> float:
    """utime + stime (all threads) of ``pid_tree_root`` and every live process below it, in
    seconds. Processes that already exited are not counted (their time went to the parent's
    cutime only once reaped), so read it before and after a round of a long-lived tree."""
    total = 0
    for pid in {pid_tree_root} | descendants(pid_tree_root):
        try:
            fields = _stat(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _socket_inodes(port: int, states: set[str], local: bool = True) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address = fields[1] if local else fields[2]
            if fields[3] in states and int(address.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def _holders(inodes: set[str]) -> set[int]:
    pids: set[int] = set()
    if not inodes:
        return pids
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    pids.add(int(pid))
                    break
        except OSError:
            continue
    return pids


def pids_listening(port: int) -> set[int]:
    """Every process holding a listening TCP socket on ``port`` (gunicorn's master and its
    workers)."""
    return _holders(_socket_inodes(port, {"0A"}))


def established_to(port: int) -> int:
    """How many ESTABLISHED TCP sockets on this host have ``port`` as their remote port
    (connections *to* a server on that port, seen from the client side)."""
    return len(_socket_inodes(port, {"01"}, local=False))


def established_on(port: int) -> int:
    """How many ESTABLISHED TCP sockets have ``port`` as their local port (a server's accepted
    connections)."""
    return len(_socket_inodes(port, {"01"}))
