#!/usr/bin/env bash
# Build the real kustomize (sigs.k8s.io/kustomize/kustomize/v5, from the Go module proxy) into a cache directory,
# only when the binary for the pinned version is missing, and print its path. The tests render deploy/ with it.
#
#   ${CCM_TEST_CACHE:-$HOME/.cache/cloudsigma-ccm}/bin/kustomize-<version>
#
# The module's checksums are verified against the Go checksum database like any `go install`. Quiet on a cache
# hit; the only stdout output is the path. Build output goes to stderr.
set -euo pipefail

KUSTOMIZE_VERSION="v5.8.1"  # the newest that builds with the Go of these machines (1.26) without a toolchain switch
cache="${CCM_TEST_CACHE:-${HOME}/.cache/cloudsigma-ccm}"
bin="${cache}/bin/kustomize-${KUSTOMIZE_VERSION}"

if [[ ! -x "${bin}" ]]; then
    if ! command -v go >/dev/null 2>&1; then
        if [[ -x /usr/local/go/bin/go ]]; then
            PATH="${PATH}:/usr/local/go/bin"
        else
            echo "build-kustomize.sh: no 'go' on PATH" >&2
            exit 1
        fi
    fi
    mkdir -p "${cache}/bin"
    # Build into a private temp dir and rename into place, so concurrent runs never see a partial file.
    tmpdir="$(mktemp -d "${cache}/bin/.kustomize.XXXXXX")"
    trap 'rm -rf "${tmpdir}"' EXIT
    echo "build-kustomize.sh: building kustomize ${KUSTOMIZE_VERSION} into ${bin}" >&2
    GOTOOLCHAIN=local GOBIN="${tmpdir}" CGO_ENABLED=0 \
        go install -trimpath -ldflags='-s -w' "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}" >&2
    mv -f "${tmpdir}/kustomize" "${bin}"
fi

echo "${bin}"
