"""Fast starts for a ``LocalCluster``'s parties: a launcher forks them from a warm interpreter.

A party is a fresh process, but a fresh interpreter spends seconds of CPU importing torch,
transformers and securetorch before it serves; a test suite or a notebook that opens many
local clusters pays that three times per cluster. On Linux the driver therefore starts, once
per driver process, a *launcher*: an interpreter that has imported the party code and
nothing else (no thread, no ZeroMQ context, no accelerator, no secret), and that forks each
party from that state in milliseconds. The fork is a separate process with its own memory,
exactly as isolated from the driver and from the other parties as a spawned one.

What crosses the launcher's socket (a ``socketpair`` only this driver holds): one JSON
request per party, ``{"threads", "env", "path", "cwd"}``, with four descriptors passed
alongside (``SCM_RIGHTS``): the read end of the party's stdin pipe, the write end of its
endpoints pipe, and the driver's current stdout and stderr; the launcher answers
``{"started": pid}`` and, when a child exits, ``{"exited": pid, "code": returncode}``
(``subprocess``'s convention: minus the signal number for a killed child). No pickle and no
code cross it, and no credential: the driver writes the party's credential to the party's
stdin pipe itself, as for a spawned party (``party.serve_local``).

Lifetimes: each party gets ``SIGKILL`` when the launcher dies (``PR_SET_PDEATHSIG``); the
launcher kills its children and exits when the driver's end of the socket closes, which
happens when the driver exits, however it exits. Elsewhere than Linux (``fork`` after
importing torch is not safe on macOS) each party is a fresh interpreter.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
from typing import IO, Any, Protocol

from securetorch.errors import PartyError
from securetorch.runtime.party import serve_local

FORKS = sys.platform.startswith("linux")
"""Whether local parties are forked from a launcher (Linux) or started as fresh interpreters."""

# How a LocalCluster starts a fresh party interpreter, and the launcher (``-m
# securetorch.runtime.party`` would load the module twice: the package imports it first).
_PARTY_MAIN = "import sys; from securetorch.runtime.party import main; main(sys.argv[1:])"
_LAUNCHER_MAIN = "import sys; from securetorch.runtime.launcher import serve; serve(int(sys.argv[1]))"
_MESSAGE_BYTES = 1 << 20  # a request: the driver's environment and sys.path as JSON
_FDS = 4  # stdin read end, endpoints write end, stdout, stderr


class PartyProcess(Protocol):
    """What ``LocalCluster`` needs of a party's process (``subprocess.Popen`` has it)."""

    pid: int
    returncode: int | None
    stdin: IO[bytes] | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


def start_party(threads: int, env: dict[str, str]) -> tuple[PartyProcess, int]:
    """A local party's process with a pipe on its stdin (``.stdin``) and the read end of the
    pipe on which it reports its endpoints (``party.serve_local``): forked by this driver's
    launcher on Linux, else a fresh interpreter. ``env`` is its environment (its
    ``PYTHONPATH`` also becomes its ``sys.path``); it starts in this process's directory."""
    read_end, write_end = os.pipe()
    try:
        if not FORKS:
            cmd = [sys.executable, "-c", _PARTY_MAIN, "--local", "--endpoints-fd", str(write_end), "--threads", str(threads)]  # fmt: skip
            return subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env, pass_fds=(write_end,)), read_end
        return _launcher(env).start(threads, env, write_end), read_end
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)


class ForkedParty:
    """A party forked by the launcher, as the driver sees it: ``Popen``'s ``pid``, ``stdin``,
    ``returncode``, ``poll``, ``wait`` and ``kill`` (its exit code comes from the launcher,
    its parent)."""

    def __init__(self, launcher: Launcher, pid: int, stdin: IO[bytes]) -> None:
        self._launcher = launcher
        self.pid = pid
        self.stdin: IO[bytes] | None = stdin
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._launcher.exit_code(self.pid, 0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._launcher.exit_code(self.pid, timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"securetorch party {self.pid}", timeout or 0.0)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:  # it exited in between and the launcher reaped it
                pass


class Launcher:
    """The driver's end of its launcher process: requests forks and collects exit codes (a
    reader thread files the launcher's messages)."""

    def __init__(self, env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER_MAIN, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                env=env,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._socket = ours
        self._changed = threading.Condition()
        self._started: list[dict[str, Any]] = []
        self._exits: dict[int, int] = {}
        self._alive = True
        self._requests = threading.Lock()  # one fork request at a time
        self._reader = threading.Thread(target=self._read, name="securetorch-launcher", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._alive

    def start(self, threads: int, env: dict[str, str], endpoints: int) -> ForkedParty:
        """Fork a party whose endpoints pipe is ``endpoints`` (a write end; the caller closes
        its copy)."""
        stdin_read, stdin_write = os.pipe()
        try:
            request = {"threads": threads, "env": env, "path": _path(env), "cwd": os.getcwd()}
            with self._requests:
                socket.send_fds(
                    self._socket,
                    [json.dumps(request).encode()],
                    [stdin_read, endpoints, 1, 2],  # its stdout and stderr: this process's, as a spawned child's
                )
                reply = self._next_started()
        except BaseException:
            os.close(stdin_write)
            raise
        finally:
            os.close(stdin_read)
        if "started" not in reply:
            os.close(stdin_write)
            why = reply.get("failed") or f"it exited (code {self._process.poll()})"
            raise PartyError(f"the party launcher could not start a party: {why}")
        return ForkedParty(self, int(reply["started"]), os.fdopen(stdin_write, "wb"))

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        """``pid``'s exit code once the launcher has reaped it (waiting up to ``timeout``
        seconds; ``None``: forever), else ``None``."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or not self._alive, timeout)
            if pid in self._exits:
                return self._exits.pop(pid)  # the caller keeps it
            return None if self._alive else -signal.SIGKILL  # the launcher died, and its parties with it

    def close(self) -> None:
        """Stop the launcher (it kills any party it still has)."""
        self._socket.shutdown(socket.SHUT_RDWR)
        self._reader.join(5)
        self._socket.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _next_started(self) -> dict[str, Any]:
        with self._changed:
            self._changed.wait_for(lambda: bool(self._started) or not self._alive)
            return self._started.pop(0) if self._started else {}

    def _read(self) -> None:
        try:
            while message := self._socket.recv(_MESSAGE_BYTES):
                reply = json.loads(message)
                with self._changed:
                    if "exited" in reply:
                        self._exits[int(reply["exited"])] = int(reply["code"])
                    else:
                        self._started.append(reply)
                    self._changed.notify_all()
        except OSError:
            pass
        finally:
            with self._changed:
                self._alive = False
                self._changed.notify_all()


def _path(env: dict[str, str]) -> list[str]:
    return [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


_LAUNCHERS: dict[int, Launcher] = {}  # by the pid of the driver that started it
_LAUNCHERS_LOCK = threading.Lock()


def _launcher(env: dict[str, str]) -> Launcher:
    """This driver process's launcher, started on first use (or again if it died)."""
    with _LAUNCHERS_LOCK:
        launcher = _LAUNCHERS.get(os.getpid())
        if launcher is None or not launcher.alive:
            launcher = _LAUNCHERS[os.getpid()] = Launcher(env)
        return launcher


@atexit.register
def close_launcher() -> None:
    """Stop this driver process's launcher, if it has one (at interpreter exit: after the
    clusters have closed, whose module registers its own exit handler after this one)."""
    with _LAUNCHERS_LOCK:
        launcher = _LAUNCHERS.pop(os.getpid(), None)
    if launcher is not None:
        launcher.close()


# ----------------------------------------------------------------------------- launcher side


def serve(fd: int) -> None:
    """The launcher's loop: fork a party per request on the socket ``fd``, report each
    child's exit, and on the socket's end kill the children left and exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the driver's to handle
    control = socket.socket(fileno=fd)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_write)
    children: set[int] = set()
    try:
        while True:
            ready, _, _ = select.select([control, wake_read], [], [])
            if wake_read in ready:
                os.read(wake_read, 4096)
            for pid, code in _reap(children):
                control.send(json.dumps({"exited": pid, "code": code}).encode())
            if control in ready:
                message, fds, _, _ = socket.recv_fds(control, _MESSAGE_BYTES, _FDS)
                if not message:
                    break  # the driver has gone
                if len(fds) != _FDS:
                    for f in fds:
                        os.close(f)
                    control.send(json.dumps({"failed": "a request without its four descriptors"}).encode())
                    continue
                pid = _fork(json.loads(message), fds, (control.fileno(), wake_read, wake_write))
                children.add(pid)
                control.send(json.dumps({"started": pid}).encode())
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)  # not yet reaped, so the pid is still this child's
        for pid in children:
            os.waitpid(pid, 0)


def _reap(children: set[int]) -> list[tuple[int, int]]:
    exited = []
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            children.discard(pid)
            exited.append((pid, os.waitstatus_to_exitcode(status)))
    return exited


def _fork(request: dict[str, Any], fds: list[int], own: tuple[int, ...]) -> int:
    """Fork a party; in the parent, close the passed descriptors and return the child's pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        for f in fds:
            os.close(f)
        return pid
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for f in own:
            os.close(f)
        stdin, endpoints, stdout, stderr = fds
        for source, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(source, target)
            os.close(source)
        sys.stdin = open(0, closefd=False)  # the party reads its two lines from it
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:] = [*request["path"], *(p for p in sys.path if p not in request["path"])]
        serve_local(int(request["threads"]), endpoints)
        code = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    return 0  # not reached: the child exits above
