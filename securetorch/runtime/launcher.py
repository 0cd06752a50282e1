"""Fast starts for a ``LocalCluster``'s parties: a launcher forks them from a warm interpreter.

A party is a fresh process, but a fresh interpreter spends seconds of CPU importing torch,
transformers and securetorch before it serves; a test suite or a notebook that opens many
local clusters pays that three times per cluster. On Linux the driver therefore starts, once
per driver process, a *launcher*: an interpreter that has imported the party code and
compiled the numba loops (``ring.compile_kernels``), nothing else (no thread, no
ZeroMQ context, no accelerator, no secret), and that forks each party from that state in
milliseconds. The fork is a separate process with its own memory,
exactly as isolated from the driver and from the other parties as a spawned one.

What crosses the launcher's socket (a ``socketpair`` only this driver holds): small JSON
messages. ``{"start": id, "threads": n}`` comes with four descriptors (``SCM_RIGHTS``): the
read end of the party's stdin pipe, the write end of its endpoints pipe, and the driver's
stdout and stderr; the launcher answers ``{"started": pid, "id": id}`` (or ``{"failed":
why, "id": id}``), later ``{"exited": pid, "code": returncode}`` (``subprocess``'s
convention: minus the signal number for a killed child); ``{"kill": pid}`` has it kill a
child it has not reaped yet (so never a process that reused the number). No pickle, no code
and no credential cross it: the driver writes down the party's own stdin its setup (the
driver's environment, ``sys.path`` and directory, as they are at the party's start) and then
its credential, as for a spawned party (``party.serve_local``). What a module reads once at
import (an ``OMP_NUM_THREADS``, a ``HF_HOME``, its own source) is as it was when the
launcher started, the driver's first ``LocalCluster``.

Lifetimes: each party gets ``SIGKILL`` when the launcher dies (``PR_SET_PDEATHSIG``); the
launcher kills its children and exits when the driver has gone: its end of the socket
closes (a child forked from the driver drops its copy) or, within half a second, the
launcher finds itself re-parented. Elsewhere than Linux (``fork`` after importing torch is
not safe on macOS) each party is a fresh interpreter.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
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

from securetorch import ring
from securetorch.errors import PartyError
from securetorch.runtime.libc import die_with_parent
from securetorch.runtime.party import serve_local

FORKS = sys.platform.startswith("linux")
"""Whether local parties are forked from a launcher (Linux) or started as fresh interpreters."""

# How a LocalCluster starts a fresh party interpreter, and the launcher (``-m
# securetorch.runtime.party`` would load the module twice: the package imports it first).
_PARTY_MAIN = "import sys; from securetorch.runtime.party import main; main(sys.argv[1:])"
_LAUNCHER_MAIN = "import sys; from securetorch.runtime.launcher import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"
_MESSAGE_BYTES = 4096  # one small JSON object per message
_ANSWER_SECONDS = 60.0  # for the launcher to answer a fork request
_PARENT_CHECK_SECONDS = 0.5  # how often the launcher checks that its driver is alive
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
        try:
            return _launcher(env).start(threads, env, write_end), read_end
        except _Gone:  # it died since its last fork: once more, with a new one
            return _launcher(env).start(threads, env, write_end), read_end
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)


class _Gone(PartyError):
    """The launcher was gone before it got the request."""


class ForkedParty:
    """A party forked by the launcher, as the driver sees it: ``Popen``'s ``pid``, ``stdin``,
    ``returncode``, ``poll``, ``wait`` and ``kill`` (its exit code comes from the launcher,
    its parent, which also does the killing: only it knows that the pid is still its child's)."""

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
            self._launcher.kill(self.pid)


class Launcher:
    """The driver's end of its launcher process: requests forks and kills, and collects the
    answers and exit codes (a reader thread files the launcher's messages)."""

    def __init__(self, env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER_MAIN, str(theirs.fileno()), str(os.getpid())],
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
        self._waiting: set[int] = set()  # request ids whose answer someone waits for
        self._answers: dict[int, dict[str, Any]] = {}
        self._exits: dict[int, int] = {}
        self._alive = True
        self._ids = itertools.count()
        self._reader = threading.Thread(target=self._read, name="securetorch-launcher", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._alive

    def start(self, threads: int, env: dict[str, str], endpoints: int) -> ForkedParty:
        """Fork a party whose endpoints pipe is ``endpoints`` (a write end; the caller closes
        its copy). Its first line on stdin sets it up as the driver is now: environment,
        import path and directory (a line of any length, which the launcher never sees)."""
        request = next(self._ids)
        stdin_read, stdin_write = os.pipe()
        stdin = os.fdopen(stdin_write, "wb")
        with self._changed:
            self._waiting.add(request)
        try:
            try:
                message = json.dumps({"start": request, "threads": threads}).encode()
                socket.send_fds(self._socket, [message], [stdin_read, endpoints, 1, 2])  # its stdout, stderr: ours
            except OSError as exc:
                with self._changed:
                    self._alive = False  # so that the next request starts another
                raise _Gone(f"the party launcher has gone ({exc})") from exc
            finally:
                os.close(stdin_read)
            with self._changed:
                self._changed.wait_for(lambda: request in self._answers or not self._alive, _ANSWER_SECONDS)
                answer = self._answers.pop(request, {})
            if "started" not in answer:
                code = self._process.poll()
                why = answer.get("failed") or (f"it exited (code {code})" if code is not None else "no answer")
                raise PartyError(f"the party launcher could not start a party: {why}")
            party = ForkedParty(self, int(answer["started"]), stdin)
            setup = {"env": env, "path": _path(env), "cwd": os.getcwd()}
            stdin.write((json.dumps(setup) + "\n").encode())
            stdin.flush()
            return party
        except BaseException:
            stdin.close()  # a party that was forked reads the end of its stdin, and exits
            raise
        finally:
            with self._changed:
                self._waiting.discard(request)
                self._answers.pop(request, None)

    def kill(self, pid: int) -> None:
        """SIGKILL the party ``pid`` (the launcher sends it only while ``pid`` is its unreaped
        child, so never to a process that has reused the number)."""
        with contextlib.suppress(OSError):  # a launcher that has gone took its parties with it
            self._socket.send(json.dumps({"kill": pid}).encode())

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        """``pid``'s exit code once the launcher has reaped it (waiting up to ``timeout``
        seconds; ``None``: forever), else ``None``."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or not self._alive, timeout)
            if pid in self._exits:
                return self._exits[pid]
            return None if self._alive else -signal.SIGKILL  # the launcher died, and its parties with it

    def close(self) -> None:
        """Stop the launcher (it kills any party it still has)."""
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._reader.join(5)
        self._socket.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def forget(self) -> None:
        """In a child forked from the driver: drop this process's copy of the socket, so
        that the launcher still sees the driver's end close when the driver exits."""
        self._socket.close()

    def _read(self) -> None:
        try:
            while message := self._socket.recv(_MESSAGE_BYTES):
                answer = json.loads(message)
                with self._changed:
                    if "exited" in answer:
                        self._exits[int(answer["exited"])] = int(answer["code"])
                    elif answer.get("id") in self._waiting:  # else its requester gave up
                        self._answers[int(answer["id"])] = answer
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
            if launcher is not None:
                launcher.close()
            launcher = _LAUNCHERS[os.getpid()] = Launcher(env)
        return launcher


def _forget_launchers() -> None:
    for launcher in _LAUNCHERS.values():
        launcher.forget()
    _LAUNCHERS.clear()


os.register_at_fork(after_in_child=_forget_launchers)


@atexit.register
def close_launcher() -> None:
    """Stop this driver process's launcher, if it has one (at interpreter exit: after the
    clusters have closed, whose module registers its own exit handler after this one)."""
    with _LAUNCHERS_LOCK:
        launcher = _LAUNCHERS.pop(os.getpid(), None)
    if launcher is not None:
        launcher.close()


# ----------------------------------------------------------------------------- launcher side


def serve(fd: int, driver: int) -> None:
    """The launcher's loop: fork a party per request on the socket ``fd`` and kill one on
    request, report each child's exit, and when the driver (pid ``driver``) has gone (the
    socket's end, or this process re-parented) kill the children left and exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the driver's to handle
    ring.compile_kernels()  # once here, not in every party
    control = socket.socket(fileno=fd)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_write)
    children: set[int] = set()
    try:
        while os.getppid() == driver:
            ready, _, _ = select.select([control, wake_read], [], [], _PARENT_CHECK_SECONDS)
            if wake_read in ready:
                os.read(wake_read, 4096)
            for pid, code in _reap(children):
                control.send(json.dumps({"exited": pid, "code": code}).encode())
            if control not in ready:
                continue
            message, fds, _, _ = socket.recv_fds(control, _MESSAGE_BYTES, _FDS)
            if not message:
                break  # the driver has gone
            request = json.loads(message)
            if "kill" in request:
                if request["kill"] in children:  # unreaped, so the pid is still this child's
                    os.kill(request["kill"], signal.SIGKILL)
                continue
            try:
                if len(fds) != _FDS:
                    raise ValueError("a request without its four descriptors")
                pid = _fork(int(request["threads"]), fds, (control.fileno(), wake_read, wake_write))
            except (OSError, ValueError) as exc:  # that party fails, the others serve on
                answer = {"failed": f"{type(exc).__name__}: {exc}", "id": request["start"]}
            else:
                children.add(pid)
                answer = {"started": pid, "id": request["start"]}
            finally:
                for f in fds:
                    os.close(f)
            control.send(json.dumps(answer).encode())
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


def _fork(threads: int, fds: list[int], own: tuple[int, ...]) -> int:
    """Fork a party; in the parent, return its pid (the caller closes the passed descriptors)."""
    launcher = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        die_with_parent()
        if os.getppid() != launcher:  # it died before the line above
            os._exit(1)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for f in own:
            os.close(f)
        stdin, endpoints, stdout, stderr = fds
        for source, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(source, target)
            os.close(source)
        sys.stdin = open(0, closefd=False)  # the setup line, then the party's two lines
        setup = json.loads(sys.stdin.readline())
        os.chdir(setup["cwd"])
        os.environ.clear()
        os.environ.update(setup["env"])
        sys.path[:] = [*setup["path"], *(p for p in sys.path if p not in setup["path"])]
        serve_local(threads, endpoints)
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    return 0  # not reached: the child exits above
