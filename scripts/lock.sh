#!/usr/bin/env bash
# Regenerate the hashed lock files in requirements/ from pyproject.toml (`make lock`; `make lock UPGRADE=1` moves
# every pin to the newest version the ranges allow). Existing pins are kept otherwise.
#
#   runtime.txt  [project] dependencies: what the image installs (pip --require-hashes)
#   build.txt    [build-system] requires: the build backend the image builds the wheel with
#   dev.txt      runtime + build (+ editables) + the dev extra, runtime and build pins constrained to the two files above,
#                so developers and CI test exactly the versions the image ships (make setup)
#
# uv comes from the dev lock itself (.venv). The locks resolve for Python 3.11 on Linux (the image, CI) from wheels
# only, and carry the hashes of every wheel of each pinned version (any architecture).
set -euo pipefail
cd "$(dirname "$0")/.."

uv="${UV:-.venv/bin/uv}"
python="${PYTHON_FOR_LOCK:-.venv/bin/python}"
upgrade=()
[[ -n "${UPGRADE:-}" ]] && upgrade=(--upgrade)

compile() {
    "${uv}" pip compile --quiet --generate-hashes --python-version 3.11 --python-platform linux --no-build \
        --custom-compile-command "make lock" "${upgrade[@]}" "$@"
}

build_requires() {
    "${python}" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))'
}

compile pyproject.toml -o requirements/runtime.txt
build_requires | compile - -o requirements/build.txt
# editables: what hatchling needs for the editable install of `make setup` (pip --no-build-isolation).
{ build_requires; echo editables; } | compile pyproject.toml - --extra dev \
    --constraint requirements/runtime.txt --constraint requirements/build.txt -o requirements/dev.txt
echo "lock.sh: requirements/runtime.txt, build.txt, dev.txt are up to date" >&2
