#!/usr/bin/env bash
# Prepares the real Keycloak used by the integration tests (tests/realenv/keycloak.py) and prints its home.
#
#   scripts/fetch-keycloak.sh            # idempotent; every step runs only when its result is missing
#
# Steps, all under ${CCM_TEST_CACHE:-$HOME/.cache/cloudsigma-ccm}/keycloak-<version>/:
#   1. download org.keycloak:keycloak-quarkus-dist:<version>:tar.gz through mvn (Maven Central) and unpack it;
#   2. `kc.sh build` with the features the tests need (legacy token exchange + fine-grained admin permissions v1),
#      so that `kc.sh start --optimized` skips the ~45 s Quarkus augmentation at every start
#      (`start-dev` cannot use a prebuilt server: "You can not 'build' the server in development mode");
#   3. a warm-up run that leaves a template database (schema + master realm + bootstrap admin, saves ~10 s per
#      fresh instance) and a class-data-sharing archive for the JVM (saves a few seconds per start) in .ccm-warm/.
#
# The Java used is recorded in <home>/.ccm-java-home; the Python side starts Keycloak with that JAVA_HOME.
# Override the choice with KEYCLOAK_JAVA_HOME. Requires: mvn, tar, curl, flock.
set -euo pipefail

KEYCLOAK_VERSION="26.7.3"
KEYCLOAK_FEATURES="token-exchange,admin-fine-grained-authz:v1"
BUILD_OPTIONS=(--db=dev-file --health-enabled=true "--features=${KEYCLOAK_FEATURES}")
DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
# Keycloak 26.x runs on OpenJDK 17, 21 and 25.
SUPPORTED_JAVA=(17 21 25)

cache="${CCM_TEST_CACHE:-$HOME/.cache/cloudsigma-ccm}"
home="${cache}/keycloak-${KEYCLOAK_VERSION}"

log() { printf '[fetch-keycloak] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

java_major() {  # java_major JAVA_HOME -> prints the feature version (17, 21, 25, ...) or nothing
  local java="$1/bin/java"
  [[ -x "$java" ]] || return 0
  "$java" -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java\.specification\.version/ {print $2; exit}'
}

pick_java_home() {
  local candidates=() c major s
  [[ -n "${KEYCLOAK_JAVA_HOME:-}" ]] && candidates+=("$KEYCLOAK_JAVA_HOME")
  [[ -n "${JAVA_HOME:-}" ]] && candidates+=("$JAVA_HOME")
  if command -v java >/dev/null 2>&1; then
    candidates+=("$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")")
  fi
  for c in /usr/lib/jvm/*; do [[ -d "$c" ]] && candidates+=("$c"); done
  for c in "${candidates[@]}"; do
    major="$(java_major "$c")"
    for s in "${SUPPORTED_JAVA[@]}"; do
      if [[ "$major" == "$s" ]]; then
        readlink -f "$c"
        return 0
      fi
    done
  done
  return 1
}

mkdir -p "$cache"
exec 9>"${cache}/keycloak-${KEYCLOAK_VERSION}.lock"
flock 9  # concurrent test sessions / CI jobs sharing the cache wait for each other

java_home="$(pick_java_home)" || die "no OpenJDK ${SUPPORTED_JAVA[*]} found (set KEYCLOAK_JAVA_HOME)"
export JAVA_HOME="$java_home"

# 1. Download and unpack.
if [[ ! -x "${home}/bin/kc.sh" ]]; then
  command -v mvn >/dev/null 2>&1 || die "mvn is needed to download Keycloak"
  staging="$(mktemp -d "${cache}/.keycloak-${KEYCLOAK_VERSION}.XXXXXX")"
  trap 'rm -rf "$staging"' EXIT
  log "downloading org.keycloak:keycloak-quarkus-dist:${KEYCLOAK_VERSION}:tar.gz"
  started=$SECONDS
  (cd "$staging" && mvn -B -q -Dstyle.color=never "${DEPENDENCY_PLUGIN}:copy" \
      "-Dartifact=org.keycloak:keycloak-quarkus-dist:${KEYCLOAK_VERSION}:tar.gz" \
      "-DoutputDirectory=${staging}") >&2
  tar -xzf "${staging}/keycloak-quarkus-dist-${KEYCLOAK_VERSION}.tar.gz" -C "$staging"
  [[ -x "${staging}/keycloak-${KEYCLOAK_VERSION}/bin/kc.sh" ]] || die "unexpected archive layout"
  rm -rf "$home"
  mv "${staging}/keycloak-${KEYCLOAK_VERSION}" "$home"
  rm -rf "$staging"
  trap - EXIT
  log "downloaded and unpacked in $((SECONDS - started)) s"
fi

# 2. Build (Quarkus augmentation) once for the options the tests use.
build_stamp="java=$(java_major "$java_home") ${BUILD_OPTIONS[*]}"
if [[ "$(cat "${home}/.ccm-build" 2>/dev/null || true)" != "$build_stamp" ]]; then
  log "building Keycloak (${BUILD_OPTIONS[*]}) with ${java_home}"
  rm -f "${home}/.ccm-build"
  rm -rf "${home}/.ccm-warm"
  started=$SECONDS
  if ! JAVA_OPTS_APPEND="" "${home}/bin/kc.sh" build "${BUILD_OPTIONS[@]}" >"${home}/.ccm-build.log" 2>&1; then
    tail -n 40 "${home}/.ccm-build.log" >&2
    die "kc.sh build failed (log: ${home}/.ccm-build.log)"
  fi
  printf '%s\n' "$build_stamp" >"${home}/.ccm-build"
  log "built in $((SECONDS - started)) s"
fi
printf '%s\n' "$java_home" >"${home}/.ccm-java-home"

# 3. Warm-up: template database and class-data-sharing archive.
warm="${home}/.ccm-warm"
if [[ ! -f "${warm}/ready" ]]; then
  log "warm-up run (template database + CDS archive)"
  rm -rf "$warm"
  scratch="$(mktemp -d "${home}/.ccm-warmup.XXXXXX")"
  kc_pid=""
  cleanup_warmup() {
    if [[ -n "$kc_pid" ]] && kill -0 "$kc_pid" 2>/dev/null; then
      kill -TERM "$kc_pid" 2>/dev/null || true
      sleep 5
      kill -KILL -- "-$kc_pid" 2>/dev/null || true
    fi
    rm -rf "$scratch"
  }
  trap cleanup_warmup EXIT
  admin_password="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
  printf 'admin\n%s\n' "$admin_password" >"${scratch}/bootstrap-admin"
  started=$SECONDS
  # Same JVM options as tests/realenv/keycloak.py (the CDS archive must match them), ports chosen by the kernel.
  JAVA_OPTS="-XX:MetaspaceSize=96M -XX:MaxMetaspaceSize=256m -Dfile.encoding=UTF-8 -XX:+ExitOnOutOfMemoryError \
-Djava.security.egd=file:/dev/urandom -Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
-XX:ArchiveClassesAtExit=${scratch}/keycloak.jsa -Dkc.db-url-path=${scratch} \
-Dquarkus.transaction-manager.object-store.directory=${scratch}/transaction-logs" \
  KC_BOOTSTRAP_ADMIN_USERNAME=admin KC_BOOTSTRAP_ADMIN_PASSWORD="$admin_password" \
    setsid "${home}/bin/kc.sh" start --optimized --http-enabled=true --http-host=127.0.0.1 --http-port=0 \
      --http-management-port=0 --hostname-strict=false --cache=local >"${scratch}/keycloak.log" 2>&1 &
  kc_pid=$!
  http_port="" ; mgmt_port="" ; ready=""
  for _ in $(seq 1 1500); do
    kill -0 "$kc_pid" 2>/dev/null || break
    if [[ -z "$mgmt_port" ]]; then
      line="$(grep -m1 -o 'Listening on: http://127.0.0.1:[0-9]*\. Management interface listening on http://127.0.0.1:[0-9]*' \
        "${scratch}/keycloak.log" || true)"
      if [[ -n "$line" ]]; then
        http_port="$(sed -E 's/^Listening on: http:\/\/127\.0\.0\.1:([0-9]+).*/\1/' <<<"$line")"
        mgmt_port="$(sed -E 's/.*listening on http:\/\/127\.0\.0\.1:([0-9]+)$/\1/' <<<"$line")"
      fi
    elif curl -sf -m 2 "http://127.0.0.1:${mgmt_port}/health/ready" >/dev/null 2>&1; then
      ready=1
      break
    fi
    sleep 0.2
  done
  if [[ -z "$ready" ]]; then
    tail -n 40 "${scratch}/keycloak.log" >&2
    die "warm-up Keycloak did not become ready"
  fi
  # Exercise the token endpoint and the admin API once so their classes land in the CDS archive too.
  curl -sf -m 30 -o /dev/null -d grant_type=password -d client_id=admin-cli -d username=admin \
    --data-urlencode "password=${admin_password}" \
    "http://127.0.0.1:${http_port}/realms/master/protocol/openid-connect/token" || true
  kill -TERM "$kc_pid"
  wait "$kc_pid" || true
  kc_pid=""
  [[ -f "${scratch}/data/h2/keycloakdb.mv.db" ]] || die "warm-up left no database in ${scratch}"
  mkdir -p "${scratch}/template"
  mv "${scratch}/data/h2/keycloakdb.mv.db" "${scratch}/template/keycloakdb.mv.db"
  mv "${scratch}/bootstrap-admin" "${scratch}/template/bootstrap-admin"
  if [[ -f "${scratch}/keycloak.jsa" ]]; then
    mv "${scratch}/keycloak.jsa" "${scratch}/template/keycloak.jsa"
  else
    log "warning: the JVM wrote no CDS archive; starts will be a little slower"
  fi
  printf '%s\n' "$java_home" >"${scratch}/template/java-home"
  touch "${scratch}/template/ready"
  mv "${scratch}/template" "$warm"
  rm -rf "$scratch"
  trap - EXIT
  log "warm-up done in $((SECONDS - started)) s"
fi

printf '%s\n' "$home"
