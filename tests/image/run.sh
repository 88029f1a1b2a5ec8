#!/usr/bin/env bash
# Proves the Docker image without a Docker engine (none runs on these machines):
#   1. the Dockerfile passes hadolint (from PyPI, pinned in requirements.txt);
#   2. the build stage's command, `cargo build --release --locked --bin voxio`, and the client
#      bundle (npm ci in client/, done by scripts/deps.sh);
#   3. a clean Debian bookworm root made with debootstrap (the pristine tree is cached as a
#      tarball under target/image/ and unpacked fresh every run), in which
#      runtime_stage.py runs the Dockerfile's runtime stage step by step, starts the
#      entrypoint as the image's user and checks it serves (see that file).
# Needs root (debootstrap, chroot, mount). Run by scripts/test.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WORK="$REPO/target/image"
VENV="$HERE/.venv"
MIRROR="${VOXIO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

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
  rm -rf "$WORK/pristine"
  debootstrap --variant=minbase bookworm "$WORK/pristine" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  tar -C "$WORK/pristine" -cf "$PRISTINE.part" . && mv "$PRISTINE.part" "$PRISTINE"
  rm -rf "$WORK/pristine"
fi

ROOT="$WORK/root"
cleanup() {
  umount "$ROOT/proc" 2>/dev/null || true
  umount "$ROOT/dev" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
rm -rf "$ROOT"
mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$PRISTINE"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mount -t proc proc "$ROOT/proc"
mount --bind /dev "$ROOT/dev"
python3 "$HERE/runtime_stage.py" "$REPO" "$ROOT"
