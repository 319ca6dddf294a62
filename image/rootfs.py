"""Assemble the final image's root filesystem (distroless-style) inside the builder stage of the Containerfile.

Run as ``python3.11 rootfs.py /rootfs`` in the builder, after /opt/venv is complete. It copies only:

- the interpreter (/usr/bin/python3.11) and its standard library, minus what a daemon without a terminal has no
  use for: ensurepip, venv, distutils, lib2to3, idlelib, pydoc_data, tkinter, turtledemo, test, and the modules
  that only pull in libraries (curses, readline, dbm, sqlite3, nis, crypt);
- every shared library the interpreter, the standard library's extension modules and the venv's extension
  modules load (asked of the dynamic loader with ``ldd``), plus libgcc_s (glibc loads it on thread exit);
- the CA bundle and OpenSSL configuration at the paths OpenSSL looks in (/usr/lib/ssl -> /etc/ssl);
- the venv (/opt/venv), /etc/passwd and /etc/group with root and nonroot (65532), /tmp and /home/nonroot;
- for every Debian package a file came from: its copyright file and its dpkg status entry under
  /var/lib/dpkg/status.d/ (the distroless convention image scanners read), so the image can be audited.

Symbolic links on the way (the merged-/usr links /lib -> usr/lib, the soname links, /usr/lib/ssl/cert.pem ->
/etc/ssl/certs/ca-certificates.crt) are reproduced as links, and their targets copied. No shell, no package
manager, no pip and no compiler reach the result.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
VENV = Path("/opt/venv")
STDLIB_DROP = ("ensurepip", "venv", "distutils", "lib2to3", "idlelib", "pydoc_data", "tkinter", "turtledemo", "test",
               "curses", "dbm", "sqlite3")
DYNLOAD_DROP = re.compile(r"^(_curses|_curses_panel|readline|_dbm|_gdbm|_sqlite3|nis|_crypt|_tkinter)\.")
EXTRA_LIBRARIES = ("libgcc_s.so.1",)
FILES = ("/usr/lib/ssl/cert.pem", "/usr/lib/ssl/openssl.cnf", "/etc/ssl/certs/ca-certificates.crt")
NONROOT = 65532


class Rootfs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources: set[Path] = set()  # files copied from the builder, for the package manifest

    def at(self, path: Path) -> Path:
        return self.root / path.relative_to("/")

    def add(self, path: Path) -> None:
        """Make ``path`` exist in the rootfs as it does here: directories on the way, links and their targets."""
        parent = Path("/")
        for part in path.parts[1:-1]:
            parent = self._component(parent / part)
        self._component(parent / path.name, leaf=True)

    def _component(self, path: Path, *, leaf: bool = False) -> Path:
        """Reproduce one path component; return the real directory to continue from."""
        target = self.at(path)
        if path.is_symlink():
            link = os.readlink(path)
            if not target.is_symlink():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(link)
            resolved = (path.parent / link) if not os.path.isabs(link) else Path(link)
            self.add(Path(os.path.normpath(resolved)))
            return Path(os.path.realpath(path))
        if path.is_dir():
            if not target.is_dir():
                target.mkdir(parents=True)
                shutil.copystat(path, target)
            return path
        if leaf and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            self.sources.add(path)
        return path

    def add_tree(self, tree: Path, *, drop: tuple[str, ...] = ()) -> None:
        self.add(tree)
        for dirpath, dirnames, filenames in os.walk(tree):
            here = Path(dirpath)
            if here == tree:
                dirnames[:] = [d for d in dirnames if d not in drop]
            if here.name == "lib-dynload":
                filenames = [f for f in filenames if not DYNLOAD_DROP.match(f)]
            for name in dirnames + filenames:
                path = here / name
                if path.is_symlink() or path.is_file():
                    self.add(path)
                else:
                    self._component(path)


def is_elf(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"\x7fELF"


def shared_libraries(binaries: list[Path]) -> set[Path]:
    """What the dynamic loader maps for these binaries (ldd lists the whole closure, and the loader itself)."""
    found: set[Path] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if "not found" in line:
                raise SystemExit(f"rootfs.py: {binary}: {line.strip()}")
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                found.add(Path(match.group(1)))
    for name in EXTRA_LIBRARIES:
        cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
        match = re.search(rf"^\s*{re.escape(name)} \(.*\) => (\S+)$", cache, re.MULTILINE)
        if not match:
            raise SystemExit(f"rootfs.py: {name} not found")
        found.add(Path(match.group(1)))
    return found


def owning_packages(paths: set[Path]) -> set[str]:
    """Debian packages that installed these files (dpkg knows a file by the path its package ships it at)."""
    candidates: set[str] = set()
    for path in paths:
        candidates.update({str(path), os.path.realpath(path)})
        real = Path(os.path.realpath(path))
        if real.parts[1:2] == ("usr",):  # merged /usr: the package may ship /lib/... for /usr/lib/...
            candidates.add(str(Path("/", *real.parts[2:])))
    out = subprocess.run(["dpkg-query", "-S", *sorted(candidates)], capture_output=True, text=True,
                         check=False).stdout
    packages: set[str] = set()
    for line in out.splitlines():
        owners, _, _ = line.partition(": ")
        packages.update(p.strip().split(":")[0] for p in owners.split(",") if "diversion" not in line)
    return packages


def write_accounts(fs: Rootfs) -> None:
    etc = fs.root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(f"root:x:0:0:root:/root:/sbin/nologin\n"
                                f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n")
    (etc / "group").write_text(f"root:x:0:\nnonroot:x:{NONROOT}:\n")
    home = fs.root / "home" / "nonroot"
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, NONROOT, NONROOT)
    home.chmod(0o700)
    tmp = fs.root / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)


def write_package_manifest(fs: Rootfs, packages: set[str]) -> None:
    status_dir = fs.root / "var" / "lib" / "dpkg" / "status.d"
    status_dir.mkdir(parents=True, exist_ok=True)
    for package in sorted(packages):
        status = subprocess.run(["dpkg-query", "-s", package], capture_output=True, text=True, check=True).stdout
        (status_dir / package).write_text(status)
        copyright_file = Path("/usr/share/doc") / package / "copyright"
        if copyright_file.exists():
            fs.add(copyright_file)


def main(root: Path) -> None:
    fs = Rootfs(root)
    root.mkdir(parents=True, exist_ok=True)
    fs.add(PYTHON)
    fs.add_tree(STDLIB, drop=STDLIB_DROP)
    fs.add_tree(VENV)
    binaries = [PYTHON] + [p for tree in (fs.at(STDLIB / "lib-dynload"), fs.at(VENV)) for p in tree.rglob("*.so*")
                           if p.is_file() and is_elf(p)]
    for library in sorted(shared_libraries(binaries)):
        fs.add(library)
    for name in FILES:
        fs.add(Path(name))
    write_accounts(fs)
    write_package_manifest(fs, owning_packages({p for p in fs.sources
                                                if not p.is_relative_to(VENV) and p.suffix != ".pyc"}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
