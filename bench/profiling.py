"""Sampling the daemon with py-spy (``pip install py-spy``) and summarising the collapsed stacks."""

from __future__ import annotations

import gzip
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?):(?P<line>\d+)\)$")
PROJECT_DIRS = ("ccm/", "cloudsigma/", "credentials/")
#: Leaf frames that are waiting, not computing (py-spy does not recognise every wait as idle).
IDLE_LEAVES = (("select", "selectors.py"), ("_worker", "concurrent/futures/thread.py"), ("wait", "threading.py"))


def py_spy_binary() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    if local.is_file():
        return str(local)
    return shutil.which("py-spy")


class PySpy:
    """``py-spy record --format raw`` attached to a pid until :meth:`stop` (SIGINT makes it write)."""

    def __init__(self, pid: int, output: Path, rate: int = 100) -> None:
        binary = py_spy_binary()
        if binary is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.output = output
        self.log = output.with_suffix(".py-spy.log")
        self._log_fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking",
             "--output", str(output)],
            stdout=self._log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log_fh.close()


@dataclass(frozen=True)
class Frame:
    func: str
    file: str
    line: int

    def short(self, root: str) -> str:
        path = self.file
        if root and path.startswith(root):
            path = path[len(root):].lstrip("/")
        for marker in ("site-packages/", "lib/python3"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        return f"{self.func} ({path}:{self.line})"

    @property
    def idle(self) -> bool:
        # As a *leaf*, these frames sit in C code that waits: epoll_wait, an executor thread's queue.get, a lock.
        return any(self.func.endswith(func) and self.file.endswith(file) for func, file in IDLE_LEAVES)

    @property
    def in_project(self) -> bool:
        return any(f"/{d}" in self.file or self.file.startswith(d) for d in PROJECT_DIRS) and "site-packages" \
            not in self.file


def _frame(text: str) -> Frame:
    m = _FRAME_RE.match(text.strip())
    if not m:
        return Frame(text.strip(), "", 0)
    return Frame(m.group("func"), m.group("file"), int(m.group("line")))


def summarise(collapsed: Path, root: str, top: int = 25) -> dict[str, Any]:
    """Top frames by self and inclusive samples, and the project's own functions by inclusive samples.

    Samples whose leaf frame is waiting (epoll, an idle executor thread) are counted as idle and left out, so
    percentages are of the samples where the daemon was computing."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    project_incl: Counter[str] = Counter()
    project_self: Counter[str] = Counter()
    total = idle = 0
    data = collapsed.read_bytes()
    if collapsed.suffix == ".gz":
        data = gzip.decompress(data)
    for raw in data.decode(errors="replace").splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        frames = [f for f in frames if f.line or f.file]  # drop py-spy's process/thread pseudo-frames
        if not frames:
            continue
        leaf = frames[-1]
        if leaf.idle:
            idle += count
            continue
        total += count
        self_counts[leaf.short(root)] += count
        seen: set[str] = set()
        seen_project: set[str] = set()
        for f in frames:
            key = f.short(root)
            if key not in seen:
                incl_counts[key] += count
                seen.add(key)
            if f.in_project:
                pkey = f"{f.func} ({f.short(root).rsplit('(', 1)[1]}"
                if pkey not in seen_project:
                    project_incl[pkey] += count
                    seen_project.add(pkey)
        project_leaf = next((f for f in reversed(frames) if f.in_project), None)
        if project_leaf is not None:
            project_self[project_leaf.short(root)] += count

    def table(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": k, "samples": v, "percent": round(100.0 * v / total, 1) if total else 0.0}
                for k, v in counter.most_common(top)]

    return {
        "samples": total,
        "idle_samples": idle,
        "top_self": table(self_counts),
        "top_inclusive": table(incl_counts),
        "project_inclusive": table(project_incl),
        "project_attributed_self": table(project_self),
    }


def format_summary(summary: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", f"active samples: {summary['samples']} (waiting, left out: {summary['idle_samples']}); "
             "percentages are of the active samples", ""]
    for key, heading in (("top_self", "Top frames by self samples (where the CPU was)"),
                         ("project_attributed_self", "Self samples attributed to the innermost project frame"),
                         ("project_inclusive", "Project functions by inclusive samples"),
                         ("top_inclusive", "All frames by inclusive samples")):
        lines.append(f"## {heading}")
        for row in summary[key]:
            lines.append(f"{row['percent']:6.1f}%  {row['samples']:7d}  {row['frame']}")
        lines.append("")
    return "\n".join(lines)
