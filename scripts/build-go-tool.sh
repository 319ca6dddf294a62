#!/usr/bin/env bash
# Build one Go command from the Go module proxy (`go install <package>@<version>`) into a cache directory, only when
# the binary for that version is missing, and print its path:
#
#   ${CCM_TEST_CACHE:-$HOME/.cache/cloudsigma-ccm}/bin/<name>-<version>[-<tags>]
#
# Usage: build-go-tool.sh <name> <package> <version> [<build tags>]   (the build-<name>.sh scripts pin them)
#
# The module's checksums are verified against the Go checksum database like any `go install`. Quiet on a cache
# hit; the only stdout output is the path. Build output goes to stderr. Concurrent runs of the same build wait on
# a lock instead of building twice (the cold builds of Helm and promtool take minutes).
set -euo pipefail

if [[ $# -lt 3 || $# -gt 4 ]]; then
    echo "usage: build-go-tool.sh <name> <package> <version> [<build tags>]" >&2
    exit 2
fi
name="$1" package="$2" version="$3" tags="${4:-}"
cache="${CCM_TEST_CACHE:-${HOME}/.cache/cloudsigma-ccm}"
bin="${cache}/bin/${name}-${version}${tags:+-${tags//,/-}}"

if [[ ! -x "${bin}" ]]; then
    if ! command -v go >/dev/null 2>&1; then
        if [[ -x /usr/local/go/bin/go ]]; then
            PATH="${PATH}:/usr/local/go/bin"
        else
            echo "build-go-tool.sh: no 'go' on PATH" >&2
            exit 1
        fi
    fi
    mkdir -p "${cache}/bin"
    exec 9>"${cache}/bin/.${name}.lock"
    flock 9
    if [[ ! -x "${bin}" ]]; then
        # Build into a private temp dir and rename into place, so no run ever sees a partial file.
        tmpdir="$(mktemp -d "${cache}/bin/.${name}.XXXXXX")"
        trap 'rm -rf "${tmpdir}"' EXIT
        echo "build-go-tool.sh: building ${name} ${version} (${package}${tags:+, tags ${tags}}) into ${bin}" >&2
        start=${SECONDS}
        GOTOOLCHAIN=local GOBIN="${tmpdir}" CGO_ENABLED=0 \
            go install -trimpath -ldflags='-s -w' ${tags:+-tags "${tags}"} "${package}@${version}" >&2
        mv -f "${tmpdir}/$(basename "${package}")" "${bin}"
        echo "build-go-tool.sh: built ${name} ${version} in $((SECONDS - start)) s" >&2
    fi
fi

echo "${bin}"
