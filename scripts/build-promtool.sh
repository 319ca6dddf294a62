#!/usr/bin/env bash
# Build the real promtool (github.com/prometheus/prometheus, from the Go module proxy) into the per-machine cache
# and print its path. The tests check and unit-test deploy/monitoring's rules with it. See build-go-tool.sh.
set -euo pipefail
PROMTOOL_VERSION="v0.316.0"  # Prometheus 3.16's Go module version
# Without the service-discovery plugins (AWS, Azure, GCE, Kubernetes, ...): checking and unit-testing rules needs
# none of them, and leaving them out halves the build's CPU time. Cold (empty Go module and build caches), measured
# on a shared 2-core machine under load: 8 min 38 s wall, 3 min 7 s user CPU (with the plugins: 6 min 8 s CPU).
exec bash "$(dirname "${BASH_SOURCE[0]}")/build-go-tool.sh" promtool \
    github.com/prometheus/prometheus/cmd/promtool "${PROMTOOL_VERSION}" remove_all_sd
