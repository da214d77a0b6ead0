"""One writer per run directory: an OS file lock on ``RUN_DIR/.lock`` (``layout.RunLayout.lock``).

Two processes writing one run directory mix their records: one process's judgments can sit beside the
other's responses under the same ids (with vLLM on GPUs, or after a changed setting, their texts differ).
Every command that writes a run (``run``, ``eval``, ``pairs --write``) therefore holds ``run_lock`` while
it writes; read-only commands (``report``, ``plan``) take no lock.

How it works:

* ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the lock file. The kernel drops the lock when the holding
  process ends in any way (SIGKILL and crashes included), so a killed holder never blocks the next run.
* The holder writes its record into the file: pid, host, start time, command (one JSON line). A second
  writer that finds the lock held stops at once with a ``RunLocked`` error naming that holder and what
  to do. A clean release empties the file; a record still there when the lock is free was left by a
  holder that died, and the new holder takes over (``RunLockHandle.took_over`` names it).
* Network filesystems (NFS, Lustre, GPFS, CIFS, FUSE mounts) may not carry ``flock`` to other hosts.
  There the record is a second check: a record left by a process on *another host* is not taken over
  (that process may still be writing, unseen by the lock) and the error says how to clear it after
  checking; a record of this host is checked by pid (and the process's start time, so a reused pid
  does not count). Where the filesystem refuses ``flock`` altogether, the record alone decides, with a
  warning. ``docs/artifacts.md`` ("One writer at a time") describes this for users.

Taking the lock also sweeps the run directory of what interrupted writers left (``files.remove_temporaries``:
``*.tmp``, ``model.tmp<pid>``, ``tmp-checkpoint-*``): only the lock's holder may write there, so nothing
else can be mid-write. The lock is re-entrant within a process: a command that holds it may call code that asks for it again.
The lock file's descriptor is not inherited by child processes (Python opens files close-on-exec).

Assumptions: Linux or another POSIX system with ``fcntl.flock``; ``/proc/self/mountinfo`` for the
filesystem type (without it, the filesystem counts as local).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from metareward.errors import InputError
from metareward.files import disk_error, remove_temporaries
from metareward.layout import RunLayout

log = logging.getLogger("metareward.runlock")

NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "9p", "afs",
    "ocfs2", "gfs2", "pvfs2", "orangefs", "wekafs", "panfs",
})
"""Filesystem types whose locks may not be coherent across hosts (plus every ``fuse.*`` type)."""

MOUNTINFO = Path("/proc/self/mountinfo")


class RunLocked(InputError):
    """Another process writes this run directory (or may: see the module docstring)."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a run directory's lock."""

    pid: int
    host: str
    started: str  # UTC, "YYYY-MM-DD HH:MM:SS UTC"
    command: str  # the metareward subcommand: "run", "eval", "pairs"
    pid_start: float | None = None  # the process's start time (psutil), to tell a reused pid apart

    def describe(self) -> str:
        return f"`metareward {self.command}` (pid {self.pid} on {self.host}, started {self.started})"

    @classmethod
    def current(cls, command: str) -> Holder:
        return cls(pid=os.getpid(), host=socket.gethostname(),
                   started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), command=command,
                   pid_start=_process_start(os.getpid()))


@dataclass(frozen=True)
class RunLockHandle:
    """What ``run_lock`` yields: the run's lock file, this process's record, the record of a holder that
    died without releasing the lock and was taken over (else None), and the temporaries swept."""

    path: Path
    holder: Holder
    took_over: Holder | None
    swept: tuple[Path, ...] = ()  # temporaries of interrupted writers removed on taking the lock


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - no such process, no psutil, no permission: unknown
        return None


def read_holder(path: Path) -> Holder | None:
    """The record in lock file ``path``; None when the file is missing, empty (released) or unreadable."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not text:
        return None
    try:
        data = json.loads(text)
        return Holder(pid=int(data["pid"]), host=str(data["host"]), started=str(data["started"]),
                      command=str(data.get("command", "run")), pid_start=data.get("pid_start"))
    except (ValueError, KeyError, TypeError):
        return None


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (``ext4``, ``nfs4``, ``tmpfs`` ...), from the longest
    mount point above it in ``/proc/self/mountinfo``; ``""`` when unknown."""
    target = os.path.realpath(path)
    best, fstype = "", ""
    try:
        lines = MOUNTINFO.read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, right.split()[0]
    return fstype


def is_network_filesystem(path: Path) -> bool:
    fstype = filesystem_type(path)
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse")


def holder_alive(holder: Holder) -> bool | None:
    """Whether ``holder``'s process still runs: True/False on this host, None on another host (unknown)."""
    if holder.host != socket.gethostname():
        return None
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    if holder.pid_start is not None:
        started = _process_start(holder.pid)
        if started is not None and abs(started - float(holder.pid_start)) > 1.0:
            return False  # the pid was reused by a later process
    return True


def _refusal(root: Path, holder: Holder | None) -> RunLocked:
    if holder is None:
        who, stop = "another process (its record in the lock file is unreadable)", "stop it"
    else:
        here = holder.host == socket.gethostname()
        who, stop = holder.describe(), f"kill {holder.pid}" + ("" if here else f" on {holder.host}")
    return RunLocked(f"{root}: in use by {who}. Wait for it to finish, or stop it ({stop}) and rerun the "
                     "same command; two writers would mix their records in one run directory.")


def _check_record(root: Path, lock_path: Path, previous: Holder | None, locked: bool) -> Holder | None:
    """Decide about the record found in the lock file once the lock is ours (``locked``), or when the
    filesystem has no locks at all. Returns the dead holder taken over (None: the file was released);
    raises ``RunLocked`` when the recorded holder may still be writing."""
    if previous is None or (previous.pid == os.getpid() and previous.host == socket.gethostname()):
        return None
    alive = holder_alive(previous)
    if alive:
        raise _refusal(root, previous)
    if alive is None and (not locked or is_network_filesystem(lock_path)):
        raise RunLocked(
            f"{root}: the lock file names {previous.describe()}, which did not release it, and on this "
            "filesystem the lock cannot be checked across hosts. If that process no longer writes this run, "
            f"delete {lock_path} and rerun the same command.")
    return previous


def writes_into_run(run_dir: str | Path | None, out: str | Path) -> bool:
    """Whether a command that reads ``run_dir`` and writes ``out`` writes into the run directory (and so
    must hold its lock): ``out`` is inside it."""
    if run_dir is None:
        return False
    root, target = os.path.realpath(run_dir), os.path.realpath(out)
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


_held: dict[str, tuple[int, RunLockHandle]] = {}  # resolved lock path -> (depth, handle), this process


@contextlib.contextmanager
def run_lock(layout: RunLayout | str | Path, command: str = "run") -> Iterator[RunLockHandle]:
    """Hold the run directory's writer lock while the block runs; see the module docstring.

    Creates the run directory if needed. Raises ``RunLocked`` (an ``InputError``: one line, exit 2 in the
    CLI) at once when another process holds it. Released (the record emptied) when the block exits in
    any way; a killed process's lock is released by the kernel.
    """
    layout = layout if isinstance(layout, RunLayout) else RunLayout(layout)
    path = layout.lock
    key = os.path.realpath(path)
    if key in _held:
        depth, handle = _held[key]
        _held[key] = (depth + 1, handle)
        try:
            yield handle
        finally:
            depth, handle = _held.pop(key)
            if depth > 1:
                _held[key] = (depth - 1, handle)
        return
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:  # a read-only or full filesystem, no permission: one line, as every write error
        raise disk_error(path, "opening the run directory's lock file", e) from e
    try:
        locked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(layout.root, read_holder(path)) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            locked = False
            log.warning("%s: this filesystem refuses file locks (%s); relying on the holder record alone",
                        path, e.strerror)
        took_over = _check_record(layout.root, path, read_holder(path), locked)
        if took_over is not None:
            log.warning("%s: taking over the lock of %s, which ended without releasing it", layout.root,
                        took_over.describe())
        me = Holder.current(command)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(asdict(me)) + "\n").encode(), 0)
        os.fsync(fd)
        swept = tuple(remove_temporaries(layout.root))  # safe now: no other writer can be mid-write
        if swept:
            log.info("%s: removed %d temporary files of interrupted writes", layout.root, len(swept))
        handle = RunLockHandle(path, me, took_over, swept)
        _held[key] = (1, handle)
        try:
            yield handle
        finally:
            _held.pop(key, None)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released cleanly: no record left to take over
    finally:
        os.close(fd)  # releases the flock


__all__ = ["Holder", "RunLockHandle", "RunLocked", "filesystem_type", "holder_alive", "is_network_filesystem",
           "read_holder", "run_lock", "writes_into_run"]
