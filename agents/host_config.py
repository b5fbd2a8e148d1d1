"""The host agent's config table, apart from its collector so that loading the config loads no psutil."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from agents.runner_config import AgentConfig

# File systems that hold no user data; their "usage" would only add noise.
PSEUDO_FS = (
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
)

# Loopback, and virtual interfaces whose traffic also crosses a real one (Docker, libvirt, CNI).
VIRTUAL_NICS = ("lo", "veth*", "docker*", "br-*", "virbr*", "cni*", "flannel*", "cali*", "vxlan*")


class HostAgentConfig(AgentConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    per_core: Annotated[bool, Meta(description="also publish cpu.core.percent for every core")] = True
    mounts: Annotated[
        list[str],
        Meta(
            description="mounts to watch; empty: every real (non-pseudo) file system",
            examples=[["/", "/var/lib/docker"]],
        ),
    ] = msgspec.field(default_factory=list)
    ignore_fs_types: Annotated[
        list[str], Meta(description="file system types never watched", examples=[["nfs", "cifs"]])
    ] = msgspec.field(default_factory=lambda: list(PSEUDO_FS))
    ignore_interfaces: Annotated[
        list[str],
        Meta(
            description="network interfaces (shell patterns) left out of net.* rates; the defaults "
            "are loopback and the virtual ones whose traffic the real interface already carries"
        ),
    ] = msgspec.field(default_factory=lambda: list(VIRTUAL_NICS))
