"""The Containerfile builds a small, non-root image whose entrypoint is the console script.

A tiny parser of Containerfile instructions (continuations, comments, ARG defaults in FROM, ENV/LABEL
key=value lists) feeds checks that return problems; each check is run on the real file (no problems) and on
a bad example (the problem is found), so a check cannot pass by accident.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ccm.config import Settings

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "Containerfile"
DOCKERIGNORE = REPO / ".dockerignore"

COMPILER_PACKAGES = ("gcc", "g++", "clang", "build-essential", "make", "cmake", "python3-dev", "libc6-dev",
                     "libc-dev", "cargo", "rustc")
SLIM_PYTHON_311 = re.compile(
    r"^(?:[\w.-]+(?::\d+)?/)*python:3\.11(?:\.\d+)?-slim(?:-[a-z]+)?(?:@sha256:[0-9a-f]{64})?$")


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


# ------------------------------------------------------------------------------------------------ checks


def check_stages(cf: Containerfile) -> list[str]:
    problems = []
    if len(cf.stages) < 2:
        problems.append(f"{len(cf.stages)} FROM stage(s); want a builder and a final stage")
    if not SLIM_PYTHON_311.match(cf.final.base):
        problems.append(f"final base {cf.final.base!r} is not a slim Python 3.11 image")
    if len(cf.stages) >= 2 and cf.stages[0].base != cf.final.base:
        problems.append("builder and final stage use different bases (the venv's interpreter symlink breaks)")
    return problems


def check_final_copies_only_the_venv(cf: Containerfile) -> list[str]:
    problems = []
    if cf.final.all("ADD"):
        problems.append("ADD in the final stage")
    copies = cf.final.all("COPY")
    for ins in copies:
        words = ins.args.split()
        if not any(w.startswith("--from=") for w in words):
            problems.append(f"final stage copies from the build context: COPY {ins.args}")
        elif [w for w in words if not w.startswith("--")] != ["/opt/venv", "/opt/venv"]:
            problems.append(f"final stage copies more than the venv: COPY {ins.args}")
    if not copies:
        problems.append("final stage does not copy the venv")
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
        return [f"ENTRYPOINT {entries[-1].args!r} is not exec form"]
    if value != [f"/opt/venv/bin/{script}"]:
        return [f"ENTRYPOINT {value!r} is not the console script /opt/venv/bin/{script}"]
    return []


def check_no_compilers(stage: Stage) -> list[str]:
    problems = []
    for ins in stage.all("RUN"):
        words = set(re.split(r"[\s;&|]+", ins.args))
        found = sorted(words.intersection(COMPILER_PACKAGES))
        if found:
            problems.append(f"final stage installs or runs {found}: RUN {ins.args}")
    return problems


def check_pip_cache(cf: Containerfile) -> list[str]:
    problems = []
    for stage in cf.stages:
        cache_off = stage.env().get("PIP_NO_CACHE_DIR", "").lower() in ("1", "true", "yes", "on")
        for ins in stage.all("RUN"):
            if not re.search(r"\bpip3?\b", ins.args):
                continue
            if not (cache_off or "--no-cache-dir" in ins.args or "rm -rf /root/.cache" in ins.args):
                problems.append(f"pip runs with its cache on: RUN {ins.args}")
    if cf.final.env().get("PIP_NO_CACHE_DIR") != "1":
        problems.append("final stage does not set PIP_NO_CACHE_DIR=1")
    return problems


def check_apt_lists(cf: Containerfile) -> list[str]:
    problems = []
    for stage in cf.stages:
        for ins in stage.all("RUN"):
            if re.search(r"\bapt(-get)?\s+(-\S+\s+)*(install|update)\b", ins.args):
                if "rm -rf /var/lib/apt/lists/*" not in ins.args:
                    problems.append(f"apt lists left in the layer: RUN {ins.args}")
                if " install" in ins.args and "--no-install-recommends" not in ins.args:
                    problems.append(f"apt installs recommends: RUN {ins.args}")
    return problems


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
RUN pip install .
FROM python:3.12-slim
# comment
RUN apt-get update && apt-get install -y \\
    gcc build-essential
COPY . /app
USER nobody
ENTRYPOINT cloudsigma-ccm
"""


# ------------------------------------------------------------------------------------------------ tests


def test_parser_joins_continuations_and_resolves_args() -> None:
    cf = parse("ARG BASE=python:3.11-slim\nFROM ${BASE} AS b\n# x\nRUN a \\\n  # inner\n  b\nFROM $BASE\n"
               "ENV A=1 B=\"two words\"\nENV C 3\n")
    assert [s.base for s in cf.stages] == ["python:3.11-slim", "python:3.11-slim"]
    assert cf.stages[0].alias == "b"
    assert cf.stages[0].all("RUN")[0].args.split() == ["a", "b"]
    assert cf.final.env() == {"A": "1", "B": "two words", "C": "3"}


def test_multi_stage_on_slim_python(containerfile: Containerfile) -> None:
    assert check_stages(containerfile) == []
    assert containerfile.stages[0].alias == "builder"
    assert check_stages(parse(BAD))  # one base is not slim, the bases differ


def test_builder_builds_a_wheel_into_the_venv(containerfile: Containerfile) -> None:
    runs = " ".join(i.args for i in containerfile.stages[0].all("RUN"))
    assert "pip wheel" in runs
    assert "-m venv /opt/venv" in runs
    assert re.search(r"/opt/venv/bin/pip install .*\.whl", runs)


def test_final_stage_copies_only_the_venv(containerfile: Containerfile) -> None:
    assert check_final_copies_only_the_venv(containerfile) == []
    assert check_final_copies_only_the_venv(parse(BAD)) == ["final stage copies from the build context: COPY . /app"]


def test_final_user_is_numeric_non_root(containerfile: Containerfile) -> None:
    assert check_user(containerfile) == []
    assert containerfile.final.all("USER")[-1].args == "65532:65532"
    assert check_user(parse(BAD))
    assert check_user(parse("FROM python:3.11-slim\nUSER 0:0\n")) == ["USER '0:0' is root"]
    assert check_user(parse("FROM python:3.11-slim\nUSER 65532:0\n")) == ["USER '65532:0' is root"]


def test_entrypoint_is_the_console_script_in_exec_form(containerfile: Containerfile, console_script: str) -> None:
    assert check_entrypoint(containerfile, console_script) == []
    assert check_entrypoint(parse(BAD), console_script)
    cmd = containerfile.final.all("CMD")
    assert [json.loads(c.args) for c in cmd] == [["run"]]


def test_no_compilers_in_final_stage(containerfile: Containerfile) -> None:
    assert check_no_compilers(containerfile.final) == []
    assert check_no_compilers(parse(BAD).final)


def test_pip_cache_disabled(containerfile: Containerfile) -> None:
    assert check_pip_cache(containerfile) == []
    assert check_pip_cache(parse(BAD))


def test_apt_lists_removed_when_apt_is_used(containerfile: Containerfile) -> None:
    assert check_apt_lists(containerfile) == []
    assert len(check_apt_lists(parse(BAD))) == 2
    good = "FROM python:3.11-slim\nRUN apt-get update && apt-get install -y --no-install-recommends tini \\\n" \
           " && rm -rf /var/lib/apt/lists/*\n"
    assert check_apt_lists(parse(good)) == []


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


def test_dockerignore_sends_only_the_sources(containerfile: Containerfile) -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".git/config", ".venv/bin/python", "tests/conftest.py", "deploy/base/kustomization.yaml",
                 "ccm/__pycache__/cli.cpython-311.pyc", "Containerfile", ".mypy_cache/x"):
        assert dockerignore_excludes(patterns, path), path
    sources: list[str] = []
    for ins in containerfile.stages[0].all("COPY"):
        words = [w for w in ins.args.split() if not w.startswith("--")]
        sources.extend(words[:-1])
    assert sorted(sources) == ["README.md", "ccm", "cloudsigma", "credentials", "pyproject.toml"]
    for source in sources:
        assert (REPO / source).exists(), source
        assert not dockerignore_excludes(patterns, source), source
        assert not dockerignore_excludes(patterns, f"{source}/__init__.py") or (REPO / source).is_file(), source
    project_packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"][
        "wheel"]["packages"]
    assert set(project_packages) <= set(sources)
