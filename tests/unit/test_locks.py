"""requirements/*.txt: hashed locks that match pyproject.toml, and runtime dependencies that are used at run time.

The locks are checked against the dependency metadata of the packages installed in this environment (which
``make setup`` installed from requirements/dev.txt): a dependency added to or removed from pyproject.toml
without ``make lock`` leaves a lock that is not exactly the closure of pyproject's requirements, and fails here.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCKS = REPO / "requirements"
PACKAGES = ("ccm", "credentials", "cloudsigma")
# Runtime dependencies that no module imports yet, each with the reason it stays. authlib: the design's
# dependency list names it for the JOSE/OAuth mechanics of the credential providers (issue 16 gives it that job).
NOT_YET_IMPORTED = {"authlib"}


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: Marker | None
    hashes: frozenset[str]

    def applies(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def parse_lock(text: str) -> dict[str, Pin]:
    """``name==version [; marker] --hash=sha256:... ...`` entries of a pip requirements file."""
    pins: dict[str, Pin] = {}
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    logical = re.sub(r"\\\n", " ", "\n".join(lines))
    for line in logical.splitlines():
        line = line.strip()
        if not line:
            continue
        hashes = frozenset(re.findall(r"--hash=(sha256:[0-9a-f]{64})", line))
        spec = re.sub(r"--hash=\S+", "", line).strip()
        req = Requirement(spec)
        (specifier,) = req.specifier
        assert specifier.operator == "==", f"not an exact pin: {line}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{name} pinned twice"
        pins[name] = Pin(name, specifier.version, req.marker, hashes)
    return pins


def lock(name: str) -> dict[str, Pin]:
    return parse_lock((LOCKS / f"{name}.txt").read_text())


def requirements(key: str) -> list[Requirement]:
    project = PYPROJECT["project"]
    raw = {"runtime": project["dependencies"], "dev": project["optional-dependencies"]["dev"],
           "build": PYPROJECT["build-system"]["requires"]}[key]
    return [Requirement(r) for r in raw]


def closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the roots need in this environment, from the installed packages' metadata."""
    seen: set[str] = set()
    todo = [r for r in roots if r.marker is None or r.marker.evaluate()]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue  # declared but not installed: the name alone must still be in the lock
        for raw in needs:
            dep = Requirement(raw)
            extras = req.extras or {""}
            if dep.marker is None or any(dep.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(dep)
    return seen


def applicable(pins: dict[str, Pin]) -> set[str]:
    return {name for name, pin in pins.items() if pin.applies()}


def assert_same(lock_name: str, pinned: set[str], needed: set[str]) -> None:
    assert not needed - pinned, f"missing from requirements/{lock_name}.txt (make lock): {sorted(needed - pinned)}"
    assert not pinned - needed, f"left over in requirements/{lock_name}.txt (make lock): {sorted(pinned - needed)}"


# ------------------------------------------------------------------------------------------------ the locks


@pytest.mark.parametrize("name", ["runtime", "build", "dev"])
def test_every_pin_is_exact_and_hashed(name: str) -> None:
    pins = lock(name)
    assert pins
    for pin in pins.values():
        assert pin.hashes, f"{name}.txt: {pin.name} has no --hash"


@pytest.mark.parametrize("name", ["runtime", "build"])
def test_lock_is_exactly_the_closure_of_pyproject(name: str) -> None:
    """Nothing missing (pip --require-hashes would refuse the install) and nothing left over."""
    pins = lock(name)
    assert_same(name, applicable(pins), closure(requirements(name)))
    for req in requirements(name):
        pin = pins[canonicalize_name(req.name)]
        assert req.specifier.contains(Version(pin.version)), f"{pin.name}=={pin.version} outside {req.specifier}"


def test_dev_lock_pins_what_the_image_ships() -> None:
    """Developers and CI test exactly the versions (and files) the image installs."""
    dev = lock("dev")
    for name in ("runtime", "build"):
        for pin in lock(name).values():
            assert pin.name in dev, f"{pin.name} of {name}.txt missing from dev.txt"
            assert (dev[pin.name].version, dev[pin.name].hashes) == (pin.version, pin.hashes), pin.name
    expected = closure(requirements("runtime") + requirements("build") + requirements("dev")
                       + [Requirement("editables")])
    assert_same("dev", applicable(dev), expected)
    for req in requirements("dev"):
        assert req.specifier.contains(Version(dev[canonicalize_name(req.name)].version)), req


def test_installed_environment_is_the_dev_lock() -> None:
    """`make setup` installed the dev lock: the environment the tests run in is the locked one."""
    for pin in lock("dev").values():
        if pin.applies():
            assert md.version(pin.name) == pin.version, pin.name


def test_runtime_lock_holds_no_dev_tools() -> None:
    runtime = lock("runtime")
    assert not {"pytest", "hypothesis", "matplotlib", "mypy", "ruff", "uv", "hatchling"} & set(runtime)
    dev_roots = {canonicalize_name(r.name) for r in requirements("dev")}
    assert not (dev_roots - closure(requirements("runtime"))) & set(runtime)


def test_parse_lock_reads_markers_and_continuations() -> None:
    pins = parse_lock("# header\na==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via b\n"
                      "c==2 ; sys_platform == 'nonexistent' \\\n    --hash=sha256:" + "1" * 64 + " \\\n"
                      "    --hash=sha256:" + "2" * 64 + "\n")
    assert pins["a"].version == "1.0" and len(pins["a"].hashes) == 1 and pins["a"].applies()
    assert len(pins["c"].hashes) == 2 and not pins["c"].applies()
    with pytest.raises(AssertionError, match="not an exact pin"):
        parse_lock("a>=1 --hash=sha256:" + "0" * 64 + "\n")


# ------------------------------------------------------------------------------------------------ used at run time


def imported_distributions() -> set[str]:
    """Distributions whose top-level modules the shipped packages import."""
    owners = md.packages_distributions()
    found: set[str] = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    found.update(canonicalize_name(d) for d in owners.get(module.split(".")[0], []))
    return found


def test_every_runtime_dependency_is_imported() -> None:
    declared = {canonicalize_name(r.name) for r in requirements("runtime")}
    unused = declared - imported_distributions()
    assert unused <= NOT_YET_IMPORTED, f"runtime dependencies nothing imports: {sorted(unused - NOT_YET_IMPORTED)}"
