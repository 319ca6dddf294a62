#!/usr/bin/env bash
# Fetch MetalLB's own CRDs (IPAddressPool, L2Advertisement) from its Go module (go.universe.tf/metallb, through the
# Go module proxy, checksums verified against the Go checksum database like any `go mod download`) into a cache
# directory, only when missing, and print that directory. The load-balancer tests install these real CRDs.
#
#   ${CCM_TEST_CACHE:-$HOME/.cache/cloudsigma-ccm}/metallb-<version>/metallb.io_{ipaddresspools,l2advertisements}.yaml
set -euo pipefail

METALLB_VERSION="v0.16.2"  # the MetalLB release the load-balancer controller is tested against (README)
cache="${CCM_TEST_CACHE:-${HOME}/.cache/cloudsigma-ccm}"
dir="${cache}/metallb-${METALLB_VERSION}"
files=(metallb.io_ipaddresspools.yaml metallb.io_l2advertisements.yaml)

if [[ ! -f "${dir}/${files[-1]}" ]]; then
    if ! command -v go >/dev/null 2>&1; then
        if [[ -x /usr/local/go/bin/go ]]; then
            PATH="${PATH}:/usr/local/go/bin"
        else
            echo "fetch-metallb-crds.sh: no 'go' on PATH" >&2
            exit 1
        fi
    fi
    mkdir -p "${cache}"
    tmpdir="$(mktemp -d "${cache}/.metallb.XXXXXX")"
    trap 'chmod -R u+w "${tmpdir}" 2>/dev/null; rm -rf "${tmpdir}"' EXIT
    echo "fetch-metallb-crds.sh: downloading go.universe.tf/metallb@${METALLB_VERSION}" >&2
    module="$(cd "${tmpdir}" && GOTOOLCHAIN=local GOFLAGS=-mod=mod GOMODCACHE="${tmpdir}/mod" \
        go mod download -json "go.universe.tf/metallb@${METALLB_VERSION}" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    mkdir -p "${tmpdir}/out"
    for f in "${files[@]}"; do
        cp "${module}/config/crd/bases/${f}" "${tmpdir}/out/${f}"
    done
    rm -rf "${dir}"
    mv "${tmpdir}/out" "${dir}"
fi

echo "${dir}"
