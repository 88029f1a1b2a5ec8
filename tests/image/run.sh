#!/usr/bin/env bash
# Proves the Docker image without a Docker engine (none runs on these machines):
#   1. the Dockerfile passes hadolint (from PyPI, pinned in requirements.txt);
#   2. the build stage's command, `cargo build --release --locked --bin voxio`, and the client
#      bundle (npm ci in client/, done by scripts/deps.sh);
#   3. a clean Debian bookworm root made with debootstrap (the pristine tree is cached as a
#      tarball under target/image/ and unpacked fresh every run), in which
#      runtime_stage.py runs the Dockerfile's runtime stage step by step, starts the
#      entrypoint as the image's user and checks it serves (see that file).
# The root-only steps (debootstrap, chroot, mount) go through sudo when not run as root.
# Run by scripts/test.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WORK="$REPO/target/image"
VENV="$HERE/.venv"
MIRROR="${VOXIO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

echo "image: hadolint Dockerfile"
if ! cmp -s "$HERE/requirements.txt" "$VENV/.requirements.txt"; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$HERE/requirements.txt"
  cp "$HERE/requirements.txt" "$VENV/.requirements.txt"
fi
"$VENV/bin/hadolint" "$REPO/Dockerfile"

echo "image: cargo build --release --locked --bin voxio"
(cd "$REPO" && cargo build --release --locked --bin voxio)

mkdir -p "$WORK"
PRISTINE="$WORK/bookworm-minbase.tar"
if [ ! -s "$PRISTINE" ]; then
  echo "image: debootstrap bookworm (once; cached as $PRISTINE)"
  $SUDO rm -rf "$WORK/pristine"
  $SUDO debootstrap --variant=minbase bookworm "$WORK/pristine" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  $SUDO tar -C "$WORK/pristine" -cf "$PRISTINE.part" . && $SUDO mv "$PRISTINE.part" "$PRISTINE"
  $SUDO rm -rf "$WORK/pristine"
fi

ROOT="$WORK/root"
cleanup() {
  $SUDO umount "$ROOT/proc" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
# Never delete through a mount that is still there. (The host's /dev is not bind-mounted: the
# device nodes debootstrap made in the root are enough, and a root left behind by a killed run
# must be safe to delete with rm -rf.)
if mountpoint -q "$ROOT/proc" 2>/dev/null; then
  echo "image: $ROOT/proc is still mounted; not removing $ROOT" >&2
  exit 1
fi
$SUDO rm -rf --one-file-system "$ROOT"
$SUDO mkdir -p "$ROOT"
$SUDO tar -C "$ROOT" -xf "$PRISTINE"
$SUDO cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
$SUDO mount -t proc proc "$ROOT/proc"
$SUDO python3 "$HERE/runtime_stage.py" "$REPO" "$ROOT"
