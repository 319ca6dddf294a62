#!/usr/bin/env bash
# Build the cloudsigma-ccm image from the Containerfile with buildah, on a base assembled from Debian packages, and
# print the image reference. Everything is cached under ${CCM_TEST_CACHE:-$HOME/.cache/cloudsigma-ccm}/image/:
#
#   base-<key>.tar    Debian bookworm (minbase + python3.11, python3.11-venv, ca-certificates) built by mmdebstrap
#                     from this machine's apt sources; <key> covers the suite, package list and architecture.
#                     CCM_IMAGE_REFRESH_BASE=1 builds it again (e.g. for security updates).
#   storage-<driver>/ buildah's image store with the base image localhost/cloudsigma-ccm-base:bookworm-<key> and
#                     the --layers cache of the Containerfile steps (the builder stage is tagged
#                     localhost/cloudsigma-ccm-builder:cache so pruning keeps it), so a warm build only redoes the
#                     steps after the first changed file. Driver: overlay when the kernel has it (a layer costs
#                     nothing), else vfs (every layer a full copy: about 5x slower); CCM_IMAGE_STORAGE_DRIVER
#                     chooses. No daemon either way; builds run with --isolation chroot.
#
# Usage: scripts/build-image.sh [image-ref]     (default localhost/cloudsigma-ccm:dev)
# Other tools use the same store with: $(scripts/build-image.sh --storage-options)
# Requires (Debian packages): buildah, mmdebstrap, flock (util-linux). Build output goes to stderr.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${CCM_TEST_CACHE:-${HOME}/.cache/cloudsigma-ccm}/image"
driver="${CCM_IMAGE_STORAGE_DRIVER:-}"
if [[ -z "${driver}" ]]; then
    driver=vfs
    if grep -qw overlay /proc/filesystems 2>/dev/null && [[ "$(stat -f -c %T "${cache%/image}" 2>/dev/null || true)" != overlayfs ]]; then
        driver=overlay
    fi
fi
storage=(--root "${cache}/storage-${driver}" --runroot "${cache}/run-${driver}" --storage-driver "${driver}")

if [[ "${1:-}" == "--storage-options" ]]; then
    echo "${storage[*]}"
    exit 0
fi
image="${1:-localhost/cloudsigma-ccm:dev}"

suite=bookworm
packages=python3.11,python3.11-venv,ca-certificates
arch="$(dpkg --print-architecture)"
key="$(printf '%s\n' "${suite}" "${packages}" "${arch}" | sha256sum | cut -c1-12)"
base_tar="${cache}/base-${key}.tar"
base_ref="localhost/cloudsigma-ccm-base:${suite}-${key}"

log() { printf '[build-image] %s\n' "$*" >&2; }

for tool in buildah mmdebstrap flock; do
    command -v "${tool}" >/dev/null 2>&1 || { log "ERROR: '${tool}' not found (Debian package ${tool/flock/util-linux})"; exit 1; }
done

mkdir -p "${cache}"
exec 9>"${cache}/.lock"
flock 9  # worktrees and CI jobs sharing the cache take turns

if [[ -n "${CCM_IMAGE_REFRESH_BASE:-}" ]]; then
    rm -f "${base_tar}"
    buildah "${storage[@]}" rmi --force "${base_ref}" >/dev/null 2>&1 || true
fi

if [[ ! -f "${base_tar}" ]]; then
    # The Debian apt sources of this (bookworm) machine name the mirror; mmdebstrap reads sources files as such.
    # Third-party repositories (signed by other keys) stay out of the base.
    sources=()
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -s "${f}" ]] && grep -q "${suite}" "${f}" && grep -q debian-archive-keyring "${f}" && sources+=("${f}")
    done
    if ((${#sources[@]} == 0)) && [[ -s /etc/apt/sources.list ]] && grep -q "^deb .*${suite}" /etc/apt/sources.list; then
        sources+=(/etc/apt/sources.list)
    fi
    ((${#sources[@]})) || { log "ERROR: no apt sources for ${suite} in /etc/apt"; exit 1; }
    log "assembling the ${suite} base from Debian packages (${packages}) into ${base_tar}"
    tmp="$(mktemp -d "${cache}/.base.XXXXXX")"
    trap 'rm -rf "${tmp}"' EXIT
    mmdebstrap --quiet --variant=minbase --include="${packages}" --architectures="${arch}" \
        "${suite}" "${tmp}/rootfs.tar" "${sources[@]}" >&2
    mv -f "${tmp}/rootfs.tar" "${base_tar}"
    buildah "${storage[@]}" rmi --force "${base_ref}" >/dev/null 2>&1 || true
fi

if ! buildah "${storage[@]}" inspect --type image "${base_ref}" >/dev/null 2>&1; then
    log "importing ${base_tar} as ${base_ref}"
    ctx="$(mktemp -d "${cache}/.ctx.XXXXXX")"
    ln "${base_tar}" "${ctx}/rootfs.tar" 2>/dev/null || cp "${base_tar}" "${ctx}/rootfs.tar"
    printf 'FROM scratch\nADD rootfs.tar /\n' > "${ctx}/Containerfile"
    buildah "${storage[@]}" build --quiet --isolation chroot -t "${base_ref}" "${ctx}" >&2
    rm -rf "${ctx}"
fi

# pip inside the build trusts what pip on this machine trusts (a TLS-intercepting proxy's CA) and uses its index.
pip_args=()
if [[ -n "${PIP_CERT:-}" && -r "${PIP_CERT}" ]]; then
    pip_args+=(--volume "$(readlink -f "${PIP_CERT}"):/run/ccm-build/pip-ca.crt:ro" --build-arg PIP_CERT=/run/ccm-build/pip-ca.crt)
fi
[[ -n "${PIP_INDEX_URL:-}" ]] && pip_args+=(--build-arg "PIP_INDEX_URL=${PIP_INDEX_URL}")

build=(buildah "${storage[@]}" build --isolation chroot --layers --build-arg "BASE=${base_ref}" "${pip_args[@]}"
       -f "${repo_root}/Containerfile")
log "building ${image} (base ${base_ref}, ${driver} storage)"
# The builder stage gets a tag of its own: its layers are the cache, and untagged they would be pruned below.
"${build[@]}" --target builder -t localhost/cloudsigma-ccm-builder:cache "${repo_root}" >&2
"${build[@]}" -t "${image}" "${repo_root}" >&2
# Superseded images and the layers only they used; everything the current images stand on stays.
buildah "${storage[@]}" rmi --prune >/dev/null 2>&1 || true
echo "${image}"
