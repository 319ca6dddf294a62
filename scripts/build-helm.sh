#!/usr/bin/env bash
# Build the real Helm (helm.sh/helm/v4, from the Go module proxy) into the per-machine cache and print its path.
# The tests lint and render deploy/helm/cloudsigma-ccm with it. See build-go-tool.sh. Cold (empty Go module and
# build caches), measured on a shared 2-core machine under load: 6 min 55 s wall, 3 min 27 s user CPU.
set -euo pipefail
HELM_VERSION="v4.3.2"  # the newest v4 that builds with the Go of these machines (1.26) without a toolchain switch
exec bash "$(dirname "${BASH_SOURCE[0]}")/build-go-tool.sh" helm helm.sh/helm/v4/cmd/helm "${HELM_VERSION}"
