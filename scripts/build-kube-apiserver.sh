#!/usr/bin/env bash
# Build the test kube-apiserver (upstream kube-apiserver + embedded etcd, tests/kube-apiserver/)
# into a cache directory, only when the binary for the current pin is missing, and print its path.
#
#   ${CCM_TEST_CACHE:-$HOME/.cache/cloudsigma-ccm}/bin/kube-apiserver-<k8s version>-<hash>
#
# <hash> covers go.mod, go.sum and main.go, so any change to the pin or the wrapper rebuilds.
# The Go module and build caches are the defaults (GOMODCACHE/GOCACHE): keep them between CI runs.
# Quiet on a cache hit; the only stdout output is the path. Build output goes to stderr.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${repo_root}/tests/kube-apiserver"
cache="${CCM_TEST_CACHE:-${HOME}/.cache/cloudsigma-ccm}"

if ! command -v go >/dev/null 2>&1; then
    if [[ -x /usr/local/go/bin/go ]]; then
        PATH="${PATH}:/usr/local/go/bin"
    else
        echo "build-kube-apiserver.sh: no 'go' on PATH" >&2
        exit 1
    fi
fi

k8s_version="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "${src}/go.mod")"
if [[ -z "${k8s_version}" ]]; then
    echo "build-kube-apiserver.sh: no k8s.io/kubernetes requirement in ${src}/go.mod" >&2
    exit 1
fi
hash="$(cat "${src}/go.mod" "${src}/go.sum" "${src}/main.go" | sha256sum | cut -c1-12)"
bin="${cache}/bin/kube-apiserver-${k8s_version}-${hash}"

if [[ ! -x "${bin}" ]]; then
    mkdir -p "${cache}/bin"
    # Build into a private temp dir and rename into place, so concurrent runs never see a partial file.
    tmpdir="$(mktemp -d "${cache}/bin/.build.XXXXXX")"
    trap 'rm -rf "${tmpdir}"' EXIT
    echo "build-kube-apiserver.sh: building kube-apiserver ${k8s_version} into ${bin} (slow on a cold cache)" >&2
    (
        cd "${src}"
        GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags='-s -w' \
            -o "${tmpdir}/kube-apiserver" .
    ) >&2
    mv -f "${tmpdir}/kube-apiserver" "${bin}"
fi

echo "${bin}"
