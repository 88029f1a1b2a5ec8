#!/usr/bin/env python3
"""Runs the Dockerfile's runtime stage in a Debian bookworm root without a Docker engine, then
starts the image's entrypoint there and checks it serves.

    runtime_stage.py REPO ROOT

ROOT is a fresh `debootstrap --variant=minbase bookworm` tree (made by tests/image/run.sh).
The stage's instructions are taken from REPO/Dockerfile as written:
  SHELL, RUN      -> run in the root with chroot, under the stage's shell
  COPY            -> from the repo; `--from=build` paths map /src/... to the repo's own build
                     output (cargo build --release --locked, npm ci in client/)
  ENV, WORKDIR, USER, EXPOSE, STOPSIGNAL, HEALTHCHECK, ENTRYPOINT -> recorded and used
Any other instruction fails the test, so the Dockerfile cannot grow a step this test skips.

Then: the ENTRYPOINT starts in the root as the stage's USER with the stage's ENV (plus a PIN
and a free port), /healthz, /readyz, the page and the client bundle must answer 200 from the
host, the HEALTHCHECK command must exit 0 inside the root, the process must run as the
stage's numeric user, and SIGTERM must end it with exit status 0.
"""

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

STAGE = "runtime"


def instructions(dockerfile):
    """(instruction, argument text) of every line, continuation lines joined."""
    lines, current = [], ""
    with open(dockerfile) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                current += line[:-1] + " "
                continue
            current += line
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def stage(dockerfile, name):
    steps, inside = [], False
    for word, rest in instructions(dockerfile):
        if word == "FROM":
            inside = rest.split()[-1] == name and " AS " in f" {rest.upper()} "
            if inside:
                base = rest.split()[0]
                if base != "debian:bookworm-slim":
                    sys.exit(f"the {name} stage is FROM {base}, this test emulates debian:bookworm-slim")
            continue
        if inside:
            steps.append((word, rest))
    if not steps:
        sys.exit(f"no stage named {name!r} in {dockerfile}")
    return steps


def exec_form(text):
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def main():
    repo, root = map(os.path.abspath, sys.argv[1:3])
    build_map = {
        "/src/target/release/voxio": os.path.join(repo, "target/release/voxio"),
        "/src/client/": os.path.join(repo, "client/"),
        # scripts/deps.sh models, which the build stage runs, installs into the repo's models/.
        "/src/models": os.path.join(repo, "models"),
    }
    shell = ["/bin/sh", "-c"]
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    workdir, user, entrypoint, health = "/", "0:0", None, None

    def in_root(path):
        return os.path.join(root, path.lstrip("/"))

    def chroot(argv, **kwargs):
        return subprocess.run(
            ["chroot", root, "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in env.items()], *argv],
            **kwargs,
        )

    for word, rest in stage(os.path.join(repo, "Dockerfile"), STAGE):
        print(f"image: {word} {rest[:100]}", flush=True)
        if word == "SHELL":
            shell = exec_form(rest)
        elif word == "RUN":
            chroot([*shell, f"cd {shlex.quote(workdir)} && {rest}"], check=True)
        elif word == "COPY":
            args = shlex.split(rest)
            source_stage = None
            if args[0].startswith("--from="):
                source_stage = args.pop(0).split("=", 1)[1]
            *sources, dest = args
            for src in sources:
                if source_stage == "build":
                    host = next(
                        (h + src[len(p):] for p, h in build_map.items() if src.startswith(p)), None
                    )
                    if host is None:
                        sys.exit(f"COPY --from=build {src}: no host path for it in this test")
                elif source_stage is None:
                    host = os.path.join(repo, src)
                else:
                    sys.exit(f"COPY --from={source_stage}: unknown stage")
                target = in_root(dest if dest.startswith("/") else os.path.join(workdir, dest))
                if os.path.isdir(host):
                    shutil.copytree(host, target, dirs_exist_ok=True)
                else:
                    if dest.endswith("/"):
                        target = os.path.join(target, os.path.basename(host))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copy2(host, target)
        elif word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
        elif word == "WORKDIR":
            workdir = rest
            os.makedirs(in_root(workdir), exist_ok=True)
        elif word == "USER":
            user = rest if ":" in rest else f"{rest}:{rest}"
            if not user.replace(":", "").isdigit():
                sys.exit(f"USER {rest}: use a numeric uid:gid")
        elif word == "HEALTHCHECK":
            health = exec_form(rest[rest.index("CMD") + 3:].strip())
        elif word == "ENTRYPOINT":
            entrypoint = exec_form(rest)
        elif word in ("EXPOSE", "STOPSIGNAL"):
            pass
        else:
            sys.exit(f"instruction {word} is not handled by this test")

    assert entrypoint and health, "the stage has an ENTRYPOINT and a HEALTHCHECK"
    port = free_port()
    env.update(VOXIO_BIND=f"127.0.0.1:{port}", VOXIO_PIN="482915", NO_COLOR="1")
    uid, gid = user.split(":")
    log = open(os.path.join(root, "..", "voxio-image.log"), "w")
    proc = subprocess.Popen(
        ["chroot", f"--userspec={uid}:{gid}", root, "/usr/bin/env", "-i",
         *[f"{k}={v}" for k, v in env.items()], "sh", "-c",
         f"cd {shlex.quote(workdir)} && exec " + " ".join(map(shlex.quote, entrypoint))],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = get(base + "/healthz", timeout=1)
                break
            except OSError:
                code = proc.poll()
                if code is not None or time.monotonic() > deadline:
                    log.flush()
                    print(open(log.name).read())
                    why = f"exited with status {code}" if code is not None else "30 s passed"
                    sys.exit(f"voxio did not serve /healthz in the image root: {why}")
                time.sleep(0.2)
        assert (status, body) == (200, b"ok"), (status, body)
        status, body = get(base + "/readyz")
        ready = json.loads(body)
        assert status == 200 and ready["ready"] and ready["stt"]["decoders"] >= 1, ready
        # The speech models baked into the image loaded.
        assert ready["models"] and all(m["loaded"] for m in ready["models"]), ready["models"]
        status, page = get(base + "/")
        assert status == 200 and b"<html" in page.lower(), "the page"
        status, bundle = get(base + "/socket.io/socket.io.js")
        assert status == 200 and len(bundle) > 10_000, "the client bundle is baked in"
        checked = chroot([*health], capture_output=True, text=True)
        assert checked.returncode == 0, f"HEALTHCHECK exited {checked.returncode}: {checked.stderr}"
        with open(f"/proc/{proc.pid}/status") as f:
            uids = next(line.split()[1:] for line in f if line.startswith("Uid:"))
        assert uids[0] == uid, f"runs as uid {uids[0]}, not {uid}"
        print(f"image: /healthz, /readyz ({ready['stt']['decoders']} decoders, models "
              f"{', '.join(m['name'] for m in ready['models'])}), page, bundle, "
              f"HEALTHCHECK ok; uid {uids[0]}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.close()
    assert code == 0, f"SIGTERM exit status {code}"
    print("image: SIGTERM -> exit 0", flush=True)
    if env.get("VOXIO_LOG_FORMAT") == "json":
        with open(log.name) as f:
            lines = [line for line in f if line.strip()]
        for line in lines:
            record = json.loads(line)
            assert "level" in record and "fields" in record, line
        assert any("drained" in json.dumps(json.loads(l)) for l in lines), "the drain was logged"
        print(f"image: {len(lines)} log lines, each a JSON object", flush=True)


if __name__ == "__main__":
    main()
