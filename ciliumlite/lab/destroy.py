"""Remove a lab left running with ``Lab.keep()`` (``ciliumlite lab destroy <prefix>``)."""

from __future__ import annotations

import json
import os
import shutil
import signal

from ciliumlite.bpf import fs
from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import ValidationError
from ciliumlite.datapath import registry
from ciliumlite.lab.lab import MANIFEST_DIR


def kept_labs() -> list[str]:
    """Prefixes of labs left running."""
    try:
        return sorted(n.removesuffix(".json") for n in os.listdir(MANIFEST_DIR) if n.endswith(".json"))
    except FileNotFoundError:
        return []


def destroy(prefix: str) -> list[str]:
    """Remove everything the manifest of ``prefix`` lists; returns what was removed."""
    path = os.path.join(MANIFEST_DIR, f"{prefix}.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ValidationError(f"no kept lab {prefix!r} (kept: {', '.join(kept_labs()) or 'none'})") from None
    done = []
    for pid in manifest.get("pids", []):  # processes the lab itself started, by pid
        try:
            os.kill(int(pid), signal.SIGKILL)
            done.append(f"process {pid}")
        except ProcessLookupError:
            pass
    for name in manifest.get("nodes", []):
        registry.withdraw(name)
    for pin_dir in manifest.get("pin_dirs", []):
        if os.path.isdir(pin_dir):
            fs.remove_pin_dir(pin_dir)
            done.append(pin_dir)
        parent = os.path.dirname(pin_dir)
        if parent != fs.BPFFS and os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
    for ns in manifest.get("netns", []):
        if ns.startswith(prefix + "-"):
            nsmod.remove(ns)
            done.append(f"netns {ns}")
    for cg in manifest.get("cgroups", []):
        if os.path.isdir(cg):
            fs.remove_cgroup(cg, kill_pids=fs.cgroup_pids(cg))
            done.append(cg)
    if manifest.get("workdir", "").startswith("/tmp/"):
        shutil.rmtree(manifest["workdir"], ignore_errors=True)
    os.unlink(path)
    return done
