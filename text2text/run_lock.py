"""One training run per MODEL_DIR: a claim file that a second run sees and refuses, and that a dead run leaves behind
harmlessly.

`MODEL_DIR/train.lock` holds the owner as JSON: host name, boot id, pid and the process's start time. A run claims
the directory by creating the file exclusively (`O_CREAT | O_EXCL`, atomic on local disks and NFS) and removes it
when it ends; while it runs, a daemon thread touches the file every `HEARTBEAT_S` seconds. An existing claim is
judged by this rule:

- same host (host name and boot id equal): live while a process with that pid and that start time exists, so a
  run killed with `kill -9` (or a reused pid) never blocks the resume of the same command;
- another host, or a host that rebooted: live while the file was touched within the last `STALE_AFTER_S`
  seconds (the lease); the clocks of the hosts and the file server must agree to within a minute or so.

A live claim raises UserError naming the directory and its owner; a dead one is taken over (one taker at a time,
through a second exclusive file). Only jax process 0 of a multi-process job claims; the others learn the outcome
from it, so every process of a refused job stops. Directories on object stores (`gs://...`) are not claimed:
they have no exclusive create. Evaluation and inference read checkpoints without claiming.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from text2text.errors import UserError

LOCK_FILE = "train.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
_TAKEOVER_STALE_S = 60.0


def _read(path: str, default: str = "") -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return default


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), None where there is no /proc entry."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split()[19] if ")" in stat else None


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "boot_id": _read("/proc/sys/kernel/random/boot_id").strip(),
            "pid": os.getpid(), "start_time": _start_time(os.getpid()), "claimed_at": time.time()}


def _pid_alive(pid: int, start_time: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return start_time is None or _start_time(pid) in (None, start_time)


def owner_is_alive(owner: dict[str, Any], mtime: float, now: float | None = None) -> bool:
    """The liveness rule of the module docstring for a claim's JSON `owner` and the claim file's mtime (seconds)."""
    me = _me()
    if owner.get("host") == me["host"] and owner.get("boot_id") == me["boot_id"] and isinstance(owner.get("pid"), int):
        return _pid_alive(owner["pid"], owner.get("start_time"))
    return (time.time() if now is None else now) - mtime < STALE_AFTER_S


def describe(owner: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("claimed_at", 0)))
    return f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, since {since}"


class RunLock:
    """A held claim on a MODEL_DIR; `release()` (also as a context manager) removes it if it is still ours."""

    def __init__(self, path: str | None):
        self.path = path
        self._content = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write_new(self) -> bool:
        """Creates the claim exclusively; False if a claim exists."""
        self._content = json.dumps(_me())
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self._content)
        return True

    def _take_over(self, stale: str) -> bool:
        """Replaces the dead claim `stale` by ours; False if another run got there first."""
        guard = self.path + ".takeover"
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            if time.time() - os.path.getmtime(guard) > _TAKEOVER_STALE_S:  # a taker died in between
                os.remove(guard)
            return False
        try:
            if _read(self.path, default=stale) != stale:
                return False
            temporary = f"{self.path}.{os.getpid()}"
            with open(temporary, "w", encoding="utf-8") as f:
                f.write(self._content)
            os.replace(temporary, self.path)
            return True
        finally:
            os.remove(guard)

    def acquire(self) -> None:
        for _ in range(3):  # a claim can vanish or be taken over between the steps below; look again
            if self._write_new():
                break
            current = _read(self.path)
            try:
                mtime = os.path.getmtime(self.path)
            except OSError:  # just released: look again
                continue
            try:
                owner = json.loads(current)
            except ValueError:  # being written, or left empty by a run killed while writing it
                owner = {}
            if owner and owner_is_alive(owner, mtime):
                raise UserError(f"MODEL_DIR {os.path.dirname(self.path)} is being trained by another run "
                                f"({describe(owner)}); wait for it to end or stop it, or use another MODEL_DIR "
                                f"(a claim left by a dead run on another host expires {STALE_AFTER_S:.0f} s after "
                                f"its last heartbeat; delete {self.path} to override)")
            if (owner or time.time() - mtime > _TAKEOVER_STALE_S) and self._take_over(current):
                logging.info("took over %s from a run that is gone (%s)", self.path, describe(owner))
                break
            time.sleep(0.1)
        else:
            raise UserError(f"MODEL_DIR {os.path.dirname(self.path)}: another run is claiming it at the same time; "
                            "run one training command per MODEL_DIR")
        self._thread = threading.Thread(target=self._heartbeat, name="text2text-run-lock", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if _read(self.path) == self._content:
                try:
                    os.utime(self.path)
                except OSError:
                    pass

    def release(self) -> None:
        self._stop.set()
        if self.path and self._content and _read(self.path) == self._content:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self._content = ""

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim(model_dir: str) -> RunLock:
    """Claims `model_dir` for this training run (jax process 0 only; every process gets the outcome).

    Raises UserError naming the directory and the owner (host, pid, since when) if a live run holds it.
    """
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    local = "://" not in str(model_dir)
    lock = RunLock(os.path.join(model_dir, LOCK_FILE) if local and jax.process_index() == 0 else None)
    error = None
    if lock.path:
        try:
            lock.acquire()
        except UserError as exc:
            error = exc
    if jax.process_count() > 1:
        refused = multihost_utils.broadcast_one_to_all(np.asarray(error is not None, np.int32))
        if error is None and int(refused):
            raise UserError(f"MODEL_DIR {model_dir} is being trained by another run (see process 0's error)")
    if error is not None:
        raise error
    return lock
