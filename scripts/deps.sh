#!/usr/bin/env bash
# Installs what voxio needs, idempotently: each step checks first and does nothing when
# everything is already there. Sourced by scripts/serve and scripts/test; run directly by the
# Dockerfile, so the image and CI install the same Debian packages:
#   scripts/deps.sh image-build     - the builder stage: build packages, Node for the client
#   scripts/deps.sh image-runtime   - the runtime stage: RUN_PACKAGES only, apt lists removed
# Functions:
#   deps_build  - Debian packages the Rust build links against, and the run-time ones
#   deps_run    - the page's Socket.IO client bundle (npm)
#   deps_test   - everything the test suite drives: Node clients, Python clients, redis-server,
#                 nginx, debootstrap
set -euo pipefail

VOXIO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Debian packages needed to build voxio (C libraries for -sys crates, pkg-config).
BUILD_PACKAGES=(pkg-config libpocketsphinx-dev libssl-dev)
# Debian packages voxio needs at run time: the libraries the binary links (pocketsphinx,
# OpenSSL), the speech model, the speech programs (flite is the default voice, espeak-ng the
# other; both run as processes), and CA certificates for remote providers.
RUN_PACKAGES=(libpocketsphinx3 pocketsphinx-en-us flite espeak-ng libssl3 ca-certificates)
# Debian packages the tests need besides those.
TEST_PACKAGES=(nodejs npm redis-server python3-venv sox chromium nginx-light debootstrap)

_apt_updated=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  # A tool already on PATH from elsewhere (node, redis-server) counts as installed.
  local still=()
  for pkg in "${missing[@]}"; do
    case "$pkg" in
      nodejs) command -v node >/dev/null || still+=("$pkg") ;;
      npm) command -v npm >/dev/null || still+=("$pkg") ;;
      redis-server) command -v redis-server >/dev/null || still+=("$pkg") ;;
      python3-venv) python3 -m venv --help >/dev/null 2>&1 || still+=("$pkg") ;;
      chromium) command -v chromium >/dev/null || still+=("$pkg") ;;
      nginx-light) command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || still+=("$pkg") ;;
      *) still+=("$pkg") ;;
    esac
  done
  [ ${#still[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ "$_apt_updated" -eq 0 ]; then
    $sudo apt-get update -qq
    _apt_updated=1
  fi
  echo "deps: installing Debian packages: ${still[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${still[@]}"
}

deps_build() {
  command -v cargo >/dev/null || { echo "deps: cargo not found; install Rust (rustup) first" >&2; exit 1; }
  apt_install "${BUILD_PACKAGES[@]}" "${RUN_PACKAGES[@]}"
}

# What the page needs at run time: the official Socket.IO client bundle, from npm.
deps_run() {
  apt_install nodejs npm
  npm_install "$VOXIO_ROOT/client"
}

# npm packages of a folder with a package-lock.json, installed only when the lock changed.
npm_install() {
  local dir="$1"
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.package-lock.json" 2>/dev/null; then
    echo "deps: npm ci in ${dir#"$VOXIO_ROOT"/}"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

deps_test() {
  deps_build
  deps_run
  apt_install "${TEST_PACKAGES[@]}"
  npm_install "$VOXIO_ROOT/tests/interop"
  npm_install "$VOXIO_ROOT/tests/browser"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    image-build)
      apt_install "${BUILD_PACKAGES[@]}" nodejs npm
      ;;
    image-runtime)
      apt_install "${RUN_PACKAGES[@]}"
      apt-get clean
      rm -rf /var/lib/apt/lists/*
      ;;
    run-packages)
      echo "${RUN_PACKAGES[@]}"
      ;;
    *)
      echo "usage: $0 image-build|image-runtime|run-packages" >&2
      exit 2
      ;;
  esac
fi
