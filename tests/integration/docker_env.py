"""A real Docker engine for tests: a busybox image built locally (no registry) and labelled containers.

The image is a root file system holding Debian's busybox-static and its applets, imported with
`docker import`; every container runs with `--network none` and the label `jarvis-test`, and
is removed when its test ends.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import require

IMAGE = "jarvis-test/busybox:1"
IMAGE_2 = "jarvis-test/busybox:2"  # the same file system under another tag: a "new version"
TEST_LABEL = "jarvis-test"
BUSYBOX_PATHS = (Path("/bin/busybox"), Path("/usr/bin/busybox"))


class DockerCommandError(RuntimeError):
    """A docker CLI command failed; the message carries its stderr."""


def busybox_binary() -> Path | None:
    return next((path for path in BUSYBOX_PATHS if path.is_file()), None)


def docker_available() -> bool:
    """The docker CLI is installed and its engine answers."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def require_docker() -> None:
    """Skip (fail under CI=true) without a Docker engine or busybox-static to build the image."""
    require(docker_available(), "no Docker engine reachable (install docker.io and start dockerd)")
    require(busybox_binary() is not None, "busybox-static is not installed (/bin/busybox)")


def _rootfs_tar(busybox: Path) -> bytes:
    """A tar of a minimal root file system: busybox and a symlink per applet in /bin."""
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    return buffer.getvalue()


def ensure_image() -> None:
    """Build the test image (both tags) unless the engine has it already."""
    present = subprocess.run(["docker", "image", "inspect", IMAGE, IMAGE_2], capture_output=True)
    if present.returncode == 0:
        return
    busybox = busybox_binary()
    assert busybox is not None
    subprocess.run(
        ["docker", "import", "-", IMAGE], input=_rootfs_tar(busybox), capture_output=True, check=True
    )
    subprocess.run(["docker", "tag", IMAGE, IMAGE_2], capture_output=True, check=True)


async def docker(*args: str, check: bool = True) -> str:
    """Run the docker CLI without blocking the event loop; its stdout, stripped."""
    process = await asyncio.create_subprocess_exec(
        "docker", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if check and process.returncode != 0:
        raise DockerCommandError(f"docker {' '.join(args)}: {err.decode(errors='replace').strip()}")
    return out.decode().strip()


class Containers:
    """Starts labelled test containers with unique names and removes them all at the end."""

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.prefix = f"jt-{self.run_id}-"

    @property
    def label(self) -> str:
        """The `key=value` label every container of this test carries (for filter_labels)."""
        return f"{TEST_LABEL}={self.run_id}"

    def name(self, role: str) -> str:
        return f"{self.prefix}{role}"

    async def run(
        self,
        role: str,
        *command: str,
        options: Sequence[str] = (),
        image: str = IMAGE,
        name: str | None = None,
    ) -> str:
        """`docker run -d [options] image command` named after `role` (or exactly `name`); its id."""
        name = name or self.name(role)
        return await docker(
            "run", "-d", "--network", "none", "--label", self.label, "--name", name, *options, image, *command
        )

    async def remove_all(self) -> None:
        ids = (await docker("ps", "-aq", "--filter", f"label={self.label}")).split()
        if ids:
            await docker("rm", "-f", "-v", *ids, check=False)


@pytest.fixture
async def containers() -> AsyncIterator[Containers]:
    """A Docker engine with the test image, and a fresh set of labelled containers per test."""
    require_docker()
    await asyncio.to_thread(ensure_image)
    made = Containers()
    try:
        yield made
    finally:
        await made.remove_all()


class EngineProxy:
    """A unix socket that forwards to the real engine, and can go down and come back like a
    restarting dockerd: `stop()` refuses new connections and cuts the open ones."""

    def __init__(self, path: Path, engine: str = "/var/run/docker.sock") -> None:
        self.path = path
        self.engine = engine
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._forward, path=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            engine_reader, engine_writer = await asyncio.open_unix_connection(self.engine)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, engine_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, engine_writer), pipe(engine_reader, writer))
        self._writers -= {writer, engine_writer}
