#!/usr/bin/env bash
# Build the real promtool (github.com/prometheus/prometheus, from the Go module proxy) into the per-machine cache
# and print its path. The tests check and unit-test deploy/monitoring's rules with it. See build-go-tool.sh.
set -euo pipefail
PROMTOOL_VERSION="v0.316.0"  # Prometheus 3.16's Go module version
exec bash "$(dirname "${BASH_SOURCE[0]}")/build-go-tool.sh" promtool \
    github.com/prometheus/prometheus/cmd/promtool "${PROMTOOL_VERSION}"
