"""A directory laid out as the kubelet lays out a Secret volume, updated the way the kubelet updates it.

``<root>/..<timestamp>/<key>`` holds the data, ``<root>/..data`` is a symlink to the current timestamped directory
and ``<root>/<key>`` a symlink to ``..data/<key>``. :meth:`SecretVolume.write` creates a new timestamped directory
and swaps ``..data`` atomically (``rename`` of a new symlink over the old one), then removes the old directory:
the path a process holds keeps its name but resolves to new files — what a rotated Secret looks like in a pod.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["SecretVolume"]


class SecretVolume:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.generation = 0

    def path(self, key: str) -> Path:
        """The path a pod would be given for ``key`` (stable across updates)."""
        return self.root / key

    def write(self, items: Mapping[str, str | bytes]) -> None:
        """Replace the volume's content with ``items`` (key → content) in one atomic swap."""
        self.generation += 1
        data_dir = self.root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{self.generation:04d}"
        data_dir.mkdir()
        for key, content in items.items():
            target = data_dir / key
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
            target.chmod(0o440)
        link = self.root / "..data"
        old = os.readlink(link) if link.is_symlink() else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(data_dir.name)
        os.replace(tmp, link)
        for key in items:
            user_link = self.root / key
            if not user_link.is_symlink():
                user_link.symlink_to(f"..data/{key}")
        if old is not None:
            shutil.rmtree(self.root / old, ignore_errors=True)
