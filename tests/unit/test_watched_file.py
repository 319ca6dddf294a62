"""WatchedFile: rotation by rewrite and by the ..data symlink swap Kubernetes uses for Secret volumes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from credentials.files import WatchedFile


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def secret_volume(root: Path, key: str, value: str, generation: int) -> Path:
    """Lay out a volume as the kubelet does: <root>/..<ts>/<key>, ..data -> ..<ts>, <key> -> ..data/<key>."""
    data_dir = root / f"..2026_12_01_{generation}"
    data_dir.mkdir()
    (data_dir / key).write_text(value + "\n")
    tmp = root / "..data_tmp"
    tmp.symlink_to(data_dir.name)
    os.replace(tmp, root / "..data")  # the atomic swap
    link = root / key
    if not link.is_symlink():
        link.symlink_to(f"..data/{key}")
    return link


def test_symlink_swap_is_followed(tmp_path: Path) -> None:
    clock = Clock()
    reloaded: list[int] = []
    path = secret_volume(tmp_path, "client-secret", "first-secret", 1)
    watched = WatchedFile(path, what="client secret", clock=clock, on_reload=lambda f: reloaded.append(f.version))
    assert watched.read_text() == "first-secret"
    secret_volume(tmp_path, "client-secret", "second-secret", 2)
    assert watched.read_text() == "first-secret"  # within the check interval: no stat
    clock.now += 1.5
    assert watched.changed()
    assert watched.read_text() == "second-secret"
    assert reloaded == [2]


def test_rewrite_is_followed_and_unreadable_keeps_last_good(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "token"
    path.write_text("one-token")
    watched = WatchedFile(path, clock=clock, check_interval=0)
    assert watched.read_text() == "one-token"
    path.write_text("two-token-longer")
    assert watched.read_text() == "two-token-longer"
    path.unlink()
    assert watched.read_text() == "two-token-longer"
    assert watched.version == 2


def test_never_readable_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        WatchedFile(tmp_path / "missing").read_text()
