"""Process plumbing: free ports, spawning with a log file, waiting, stopping by PID.

Why by PID and ``/proc``: the servers outlive the ``cutover services up`` process that
started them, so ``down`` usually runs in another process that cannot ``wait()`` on
them. PID 1 on these machines does not reap orphans either, so a stopped server can
linger as a zombie: a process counts as alive only when ``/proc/PID/stat`` shows it
running and its start time matches the one recorded (PIDs get reused).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from core.redaction import redact
from cutover.services._model import HOST, Record, ServiceError, ServiceInfo

#: Popen objects of servers this process started, so it can reap them properly.
_children: dict[int, subprocess.Popen[bytes]] = {}

Check = Callable[[], tuple[bool, str]]


def free_port(host: str = HOST) -> int:
    """A port the OS says is free on ``host`` now (never a standard one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_or_free(preferred: int | None, host: str = HOST) -> int:
    """``preferred`` when no socket listens on it now, else a free port.

    The probe sets ``SO_REUSEADDR`` as the servers do, so connections of a stopped
    server still in TIME_WAIT do not count as taking the port; a listener does.
    """
    if preferred:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, preferred))
                return preferred
            except OSError:
                pass
    return free_port(host)


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server in its own session, stdout and stderr appended to ``log_path``.

    Its own session keeps a Ctrl-C on the starting terminal from killing it. Secrets
    must travel in ``env``, never in ``argv`` (visible to every user in ``ps``).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {argv[0]}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    return proc


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks, or None when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X", "x"):
        return None
    return int(fields[19])


def is_alive(pid: int, ticks: int | None = None) -> bool:
    """True when ``pid`` runs and, if ``ticks`` is given, is the process recorded."""
    if pid <= 0:
        return False
    now = start_ticks(pid)
    return now is not None and (ticks is None or now == ticks)


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (no zombie left behind)."""
    proc = _children.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
        if proc.returncode is None:
            _children[pid] = proc
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_dead(pid: int, ticks: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        reap(pid)
        if not is_alive(pid, ticks):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop_pid(
    pid: int, ticks: int | None, *, sig: int = signal.SIGTERM, timeout: float = 15.0
) -> None:
    """Stop a server: ``sig``, wait up to ``timeout``, then SIGKILL; reap it.

    A process that is already gone (or whose PID now belongs to another program) is
    left alone, so stopping is safe to repeat.
    """
    if not is_alive(pid, ticks):
        reap(pid)
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        reap(pid)
        return
    if _wait_dead(pid, ticks, timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_dead(pid, ticks, 5.0):
        raise ServiceError(f"process {pid} survived SIGKILL")


def exit_code(pid: int) -> int | None:
    """The exit status of our own child ``pid`` if it has ended."""
    proc = _children.get(pid)
    return proc.poll() if proc is not None else None


def log_tail(log_path: Path, lines: int = 20, secrets: Iterable[str] = ()) -> str:
    """The last ``lines`` lines of a log, secrets and ``PWD=``-style values masked."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"
    text = "\n".join(text.splitlines()[-lines:])
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return redact(text)


def failure(
    name: str, reason: str, log_path: Path | None, secrets: Iterable[str] = ()
) -> ServiceError:
    """A ServiceError whose message ends with the last lines of the server's log."""
    message = f"{name}: {reason}"
    if log_path is not None:
        message += f"\n--- last lines of {log_path} ---\n{log_tail(log_path, 20, secrets)}"
    return ServiceError(message)


def wait_until(
    check: Check,
    *,
    name: str,
    timeout: float,
    pid: int,
    ticks: int | None,
    log_path: Path,
    secrets: Iterable[str] = (),
) -> float:
    """Poll ``check`` until it passes; fail fast if the process dies. Returns seconds."""
    began = time.monotonic()
    detail = "not checked yet"
    while True:
        if not is_alive(pid, ticks):
            code = exit_code(pid)
            how = f" with status {code}" if code is not None else ""
            reap(pid)
            raise failure(name, f"exited during start-up{how}", log_path, secrets)
        ok, detail = check()
        if ok:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise failure(
                name, f"not healthy after {timeout:.0f} s (last check: {detail})", log_path, secrets
            )
        time.sleep(0.2)


def started(
    info: ServiceInfo,
    ticks: int | None,
    check: Callable[[ServiceInfo], tuple[bool, str]],
    timeout: float,
) -> Record:
    """Wait until a just-spawned server answers ``check``; stop it if it never does.

    A server that fails to come up is never left running: its process is stopped
    before the error (with the tail of its log, secrets masked) reaches the caller.
    """
    try:
        wait_until(
            lambda: check(info),
            name=info.name,
            timeout=timeout,
            pid=info.pid,
            ticks=ticks,
            log_path=info.log_path,
            secrets=info.secrets(),
        )
    except BaseException:
        stop_pid(info.pid, ticks)
        raise
    return Record(info, ticks)
