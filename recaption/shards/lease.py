"""One writer per output folder: an exclusive lease, taken before anything is written.

``OUTPUT/_lease.json`` names its holder (host, pid, start time, a random id) and a heartbeat a
background thread renews every ``timeout / 4`` seconds. It is created atomically (``O_EXCL`` on
disk, a conditional PUT ``If-None-Match: *`` on S3), so of two runs started together exactly one
gets it; the other is refused at once (:class:`LeaseHeldError`, exit code 2) naming the holder.

A lease is stale when its heartbeat is older than the timeout (a killed run, a lost node), or at
once when its holder is a process on this host that no longer exists ("this host": same host name,
kernel boot and pid namespace, so a container sharing the host's name never judges another's
pid). A stale lease is taken over with a log line; two runs racing to take over the same stale
lease are decided by another atomic create (``_lease.json.takeover-<id>``), so again exactly one
wins.

Leases are re-entrant within a process: ``recaption run`` holds its folder and every stage folder,
and the runners it calls find them held already. The exports (``export-pixart``,
``export-captions``) hold their destination the same way.

A run that stalled past the timeout (a long pause, a suspended process, a node that could not reach
the store) may find its lease taken over. It must then write nothing more: each shard reads the
lease file once before it commits (:meth:`LeaseToken.verify`, also in Ray workers, which get the
token with the shard) and is dropped, not committed, if the id on record is no longer its own; the
run stops with :class:`LeaseLostError` naming the new holder. The heartbeat thread noticing the
same stops the run at the next shard.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from recaption import io
from recaption.errors import RecaptionError

log = logging.getLogger("recaption")

LEASE_FILE = "_lease.json"
TIMEOUT_ENV = "RECAPTION_LEASE_TIMEOUT"
DEFAULT_TIMEOUT = 120.0  # seconds without a heartbeat before a lease is stale


class LeaseHeldError(RecaptionError):
    """Another live run writes to this output folder."""


class LeaseLostError(LeaseHeldError):
    """This run's lease was taken over (or removed): it must stop writing."""


def lost_message(folder: str, url: str, current: LeaseInfo | None) -> str:
    """Why a run stops after losing its lease, naming the run that holds it now."""
    if current is None:
        return (
            f"{folder}: this run lost its lease ({url} was removed, by hand or by a run that took "
            "it over and finished); stopped so that no two runs write here"
        )
    return (
        f"{folder}: this run lost its lease to another run, {current.describe()} (this run's "
        "heartbeat was not renewed in time: a paused or suspended process, or a store it could not "
        "reach); stopped so that no two runs write here. That run owns the folder now: wait for it, "
        "then rerun to resume"
    )


class OutputNotWritableError(RecaptionError):
    """The output folder cannot be written (read-only, no permission, no such bucket)."""


def lease_timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, "") or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT


def machine_id() -> str:
    """This kernel boot and pid namespace (Linux), or "" where unknown.

    A host name alone does not say whether a pid can be checked here: containers sharing the
    host's network (``docker --net=host``, Kubernetes ``hostNetwork``) share its name but not its
    process ids, and two machines may carry the same name.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LeaseToken:
    """Which lease a writer holds: enough for any process (a Ray worker) to check, with one small
    read, that the lease on record is still this run's before it commits a shard."""

    folder: str
    url: str
    id: str

    def verify(self) -> None:
        """Raise :class:`LeaseLostError` (naming the holder now) unless the lease is still ours."""
        current = LeaseInfo.read(self.url)
        if current is None or current.id != self.id:
            raise LeaseLostError(lost_message(self.folder, self.url, current))

    def lost_error(self) -> LeaseLostError | None:
        """The error :meth:`verify` would raise, or None (also when the store cannot be read: a
        failure's own error then stands)."""
        try:
            self.verify()
        except LeaseLostError as e:
            return e
        except Exception:
            return None
        return None


@dataclass(frozen=True)
class LeaseInfo:
    """What a lease file says."""

    id: str
    host: str
    pid: int
    started: float
    heartbeat: float
    command: str = ""
    machine: str = ""  # :func:`machine_id` of the holder

    @classmethod
    def read(cls, url: str) -> LeaseInfo | None:
        try:
            d = json.loads(io.read_text(url))
            return cls(
                id=str(d["id"]),
                host=str(d["host"]),
                pid=int(d["pid"]),
                started=float(d["started"]),
                heartbeat=float(d["heartbeat"]),
                command=str(d.get("command", "")),
                machine=str(d.get("machine", "")),
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            # half a lease (a writer killed mid-write on a filesystem without atomic create)
            return cls(id="?", host="?", pid=-1, started=0.0, heartbeat=io.modified(url))

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, indent=1, sort_keys=True).encode()

    def stale_reason(self, timeout: float, now: float | None = None) -> str | None:
        """Why this lease no longer protects a live run, or None if it does."""
        now = time.time() if now is None else now
        if self.same_machine() and self.pid > 0 and not _pid_alive(self.pid):
            return f"its process {self.pid} on this host is gone"
        age = now - self.heartbeat
        if age > timeout:
            return f"no heartbeat for {age:.0f}s (timeout {timeout:.0f}s)"
        return None

    def same_machine(self) -> bool:
        """Whether the holder's pid means a process here (same host, boot and pid namespace)."""
        if self.host != socket.gethostname():
            return False
        here = machine_id()
        return not (self.machine and here and self.machine != here)

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        what = f" ({self.command})" if self.command else ""
        return (
            f"pid {self.pid} on {self.host}{what}, started {started}, "
            f"last heartbeat {max(0.0, now - self.heartbeat):.0f}s ago"
        )


def _not_writable(folder: str, e: OSError) -> OutputNotWritableError:
    reason = e.strerror or str(e)
    if isinstance(e, io.BucketMissingError):
        return OutputNotWritableError(str(e))
    if e.errno in (errno.EEXIST, errno.ENOTDIR) and "://" not in folder:
        # from makedirs: a file where a folder must be (the output itself, or a folder above it)
        blocker = os.path.abspath(folder)
        while not os.path.isfile(blocker) and os.path.dirname(blocker) != blocker:
            blocker = os.path.dirname(blocker)
        reason = f"{blocker} is a file, not a folder"
    return OutputNotWritableError(f"{folder}: cannot write to this output folder ({reason})")


class Lease:
    """An exclusive lease on one output folder; use :func:`hold` rather than this directly."""

    def __init__(self, folder: str, *, timeout: float | None = None, command: str = "") -> None:
        self.folder = folder
        self.url = io.join(folder, LEASE_FILE)
        self.timeout = lease_timeout() if timeout is None else timeout
        self.command = command
        now = time.time()
        self.info = LeaseInfo(
            id=uuid.uuid4().hex,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=now,
            heartbeat=now,
            command=command,
            machine=machine_id(),
        )
        self.lost = False
        self.lost_to: LeaseInfo | None = None  # who holds it now, once lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking it -------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lease or raise :class:`LeaseHeldError`; a stale one is taken over."""
        try:
            io.makedirs(self.folder)
            for _ in range(3):
                if io.create_exclusive(self.url, self.info.to_json()):
                    break
                held = LeaseInfo.read(self.url)
                if held is None:
                    continue  # released between our create and our read: try again
                reason = held.stale_reason(self.timeout)
                if reason is None:
                    raise LeaseHeldError(
                        f"{self.folder} is being written by another run: {held.describe()}. "
                        "Wait for it to finish (a run in progress is never disturbed); if no such run "
                        "is alive, it is taken over automatically "
                        f"{self.timeout:.0f}s after its last heartbeat, or delete {self.url} once you "
                        "have checked"
                    )
                if self._take_over(held, reason):
                    break
            else:
                raise LeaseHeldError(f"{self.folder}: could not take its lease ({self.url}); try again")
            # Checked after taking our own, so of two runs starting together on nested folders at
            # least one sees the other (both may be refused; neither ever gets through unseen).
            self._refuse_if_nested()
        except OSError as e:
            if isinstance(e, io.BucketMissingError | PermissionError) or e.errno in (
                errno.EACCES,
                errno.EROFS,
                errno.EPERM,
                errno.ENOTDIR,
                errno.EEXIST,  # only makedirs raises it here (create_exclusive returns False)
                errno.ENOSPC,
            ):
                raise _not_writable(self.folder, e) from None
            raise
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.folder}", daemon=True)
        self._thread.start()

    def _nested_leases(self) -> list[tuple[str, LeaseInfo]]:
        """Live leases of other processes on a folder above this one or inside it."""
        fs, path = io.fs_path(self.folder)
        path = path.rstrip("/")
        urls: list[str] = []
        parent = posixpath.dirname(path)
        while parent and parent != path:
            urls.append(io.to_url(fs, posixpath.join(parent, LEASE_FILE)))
            path, parent = parent, posixpath.dirname(parent)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            urls += [u for u in io.walk_files(self.folder) if io.basename(u) == LEASE_FILE and u != self.url]
        out = []
        for url in urls:
            try:
                info = LeaseInfo.read(url)
            except OSError:  # a folder above we may not read (another user's, a bucket's root)
                continue
            if info is None or (info.same_machine() and info.pid == self.info.pid):
                continue  # this process's own (``recaption run`` holds its folder and its stages')
            if info.stale_reason(self.timeout) is None:
                out.append((url, info))
        return out

    def _refuse_if_nested(self) -> None:
        """A run writing into a folder inside another live run's (or around it) is refused too:
        its sweep of leftovers would delete the other's temporary files and abort its uploads."""
        nested = self._nested_leases()
        if not nested:
            return
        url, info = nested[0]
        with contextlib.suppress(Exception):
            io.remove(self.url)
        where = posixpath.dirname(url) if "://" in url else os.path.dirname(url)
        inside = _key(where).startswith(_key(self.folder) + "/")
        raise LeaseHeldError(
            f"{self.folder} {'contains' if inside else 'is inside'} {where}, which is being written by "
            f"another run: {info.describe()}. Choose an output folder that neither contains nor is "
            "inside another run's, or wait for that run to finish"
        )

    def _take_over(self, held: LeaseInfo, reason: str) -> bool:
        token = f"{self.url}.takeover-{held.id}"
        if not io.create_exclusive(token, self.info.to_json()):
            t = LeaseInfo.read(token)
            if t is not None and t.stale_reason(self.timeout) is not None:
                io.remove(token)  # a taker that died mid-takeover
            return False
        try:
            current = LeaseInfo.read(self.url)
            if current is not None and current.id != held.id:
                return False  # someone else renewed or replaced it meanwhile
            log.warning("%s: taking over a stale lease (%s): %s", self.folder, reason, held.describe())
            io.write_bytes_atomic(self.url, self.info.to_json())
            return True
        finally:
            io.remove(token)

    # -- keeping it ------------------------------------------------------------------------------
    def _beat(self) -> None:
        interval = max(0.05, self.timeout / 4)
        while not self._stop.wait(interval):
            try:
                current = LeaseInfo.read(self.url)
                if current is None or current.id != self.info.id:
                    self.lost_to, self.lost = current, True
                    log.error(
                        "%s: this run lost its lease (%s); stopping after the shard in hand",
                        self.folder,
                        "removed" if current is None else f"taken by {current.describe()}",
                    )
                    return
                self.info = LeaseInfo(**{**self.info.__dict__, "heartbeat": time.time()})
                io.write_bytes_atomic(self.url, self.info.to_json())
            except Exception as e:  # a blip of the store: the next beat tries again
                log.debug("%s: lease heartbeat failed: %s", self.folder, e)

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the heartbeat found this lease taken over (no I/O)."""
        if self.lost:
            raise LeaseLostError(lost_message(self.folder, self.url, self.lost_to))

    def token(self) -> LeaseToken:
        """What a worker needs to verify this lease before committing (picklable, tiny)."""
        return LeaseToken(folder=self.folder, url=self.url, id=self.info.id)

    def verify(self) -> None:
        """:meth:`check`, then read the lease file: raise unless it is still this run's."""
        self.check()
        try:
            self.token().verify()
        except LeaseLostError:
            self.lost_to, self.lost = LeaseInfo.read(self.url), True
            raise

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            current = LeaseInfo.read(self.url)
            if current is not None and current.id == self.info.id:
                io.remove(self.url)


_HELD: dict[str, tuple[Lease, int]] = {}
_HELD_LOCK = threading.Lock()


def _key(folder: str) -> str:
    return io.normalize(folder).rstrip("/")


def held(folder: str) -> Lease | None:
    """The lease this process holds on ``folder``, if any."""
    with _HELD_LOCK:
        entry = _HELD.get(_key(folder))
    return entry[0] if entry else None


@contextlib.contextmanager
def hold(folders: list[str] | str, *, command: str = "") -> Iterator[list[Lease]]:
    """Hold the leases of ``folders`` (in order) for the block; all or none.

    Folders this process already holds are not taken again (``recaption run`` holds its stage
    folders before the runners ask for them).
    """
    if isinstance(folders, str):
        folders = [folders]
    taken: list[Lease] = []
    mine: list[Lease] = []
    try:
        for folder in folders:
            k = _key(folder)
            with _HELD_LOCK:
                if k in _HELD:
                    lease, n = _HELD[k]
                    _HELD[k] = (lease, n + 1)
                    mine.append(lease)
                    taken.append(lease)
                    continue
            lease = Lease(folder, command=command)
            lease.acquire()
            with _HELD_LOCK:
                _HELD[k] = (lease, 1)
            mine.append(lease)
            taken.append(lease)
        yield mine
    finally:
        for lease in reversed(taken):
            k = _key(lease.folder)
            with _HELD_LOCK:
                _, n = _HELD[k]
                if n > 1:
                    _HELD[k] = (lease, n - 1)
                    continue
                del _HELD[k]
            lease.release()


def current_lease(folder: str) -> dict[str, Any] | None:
    """For ``recaption status``: who holds ``folder``'s lease and whether it is live."""
    info = LeaseInfo.read(io.join(folder, LEASE_FILE))
    if info is None:
        return None
    reason = info.stale_reason(lease_timeout())
    return {
        "host": info.host,
        "pid": info.pid,
        "started": info.started,
        "heartbeat_age_seconds": round(max(0.0, time.time() - info.heartbeat), 1),
        "live": reason is None,
        "stale_reason": reason,
    }


def check_all(leases: list[Lease]) -> None:
    for lease in leases:
        lease.check()
