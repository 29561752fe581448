# Multi-stage image for mvserve (CPU by default).
#   docker build -t mvserve .
# CUDA: CUDA base images (the build one must have nvcc: a -devel image), the `cuda` cargo feature,
# and the GPU's compute capability (no GPU is visible while building; 80 = A100, and its PTX also
# runs on newer GPUs such as H100 = 90, L4 = 89):
#   docker build --build-arg BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#                --build-arg RUN_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#                --build-arg FEATURES=cuda --build-arg CUDA_COMPUTE_CAP=80 -t mvserve:cuda .
#   docker run --gpus all -e MVSERVE_DEVICE=cuda mvserve:cuda serve ...
# The CUDA images have no Rust toolchain: the build stage installs one with rustup when cargo is
# missing. A binary built with FEATURES=cuda needs the NVIDIA driver (libcuda) at start-up.
# Smallest image (no ffmpeg: MP4/MOV/AVI H.264 and GIF still decode in process; other formats are
# refused as unsupported_media):
#   docker build --build-arg FFMPEG=0 -t mvserve:slim .
# The image runs as the unprivileged user mvserve (uid/gid 10001, matching deploy/k8s); mounted
# volumes must be writable by it (docker volumes created from the image are).
ARG BUILD_IMAGE=rust:1-bookworm
ARG RUN_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
# nasm lets openh264 build its assembly (about 1.7x faster H.264 decoding).
RUN apt-get update && apt-get install -y --no-install-recommends nasm curl ca-certificates build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/root/.cargo/bin:${PATH}
RUN command -v cargo >/dev/null || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
WORKDIR /src
COPY . .
ARG FEATURES=""
# Read by candle's kernel build (only with FEATURES=cuda), which otherwise asks nvidia-smi.
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
# The release profile keeps line tables (debug = 1) for profiling: 180 MB. The image gets the
# binary without them (26 MB; symbols stay, so panics still name functions).
RUN cargo build --release --locked ${FEATURES:+--features ${FEATURES}} \
    && strip --strip-debug target/release/mvserve

FROM ${RUN_IMAGE}
ARG FFMPEG=1
# ffmpeg decodes what the in-process decoders do not (VP8/VP9/AV1, HEVC, MPEG-4 part 2).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates $([ "$FFMPEG" = 1 ] && echo ffmpeg) \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mvserve \
    && useradd --system --uid 10001 --gid mvserve --home-dir /data --shell /usr/sbin/nologin mvserve \
    && mkdir -p /data /models /adapters \
    && chown mvserve:mvserve /data /models /adapters
COPY --from=build /src/target/release/mvserve /usr/local/bin/mvserve
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mvserve" \
      org.opencontainers.image.description="Multi-tenant text-to-video retrieval: one frozen CLIP backbone, one MV-Adapter per task" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.documentation="README.md, docs/ and GET /openapi.json"
ENV HF_HOME=/models \
    MVSERVE_DATA_DIR=/data \
    MVSERVE_ADAPTERS_DIR=/adapters
USER 10001:10001
WORKDIR /data
VOLUME ["/models", "/data", "/adapters"]
EXPOSE 8080 50051
# /healthz answers as soon as the port is bound. No curl in the image: bash's /dev/tcp speaks
# the one request. MVSERVE_PORT, when set, is the port to ask.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${MVSERVE_PORT:-8080} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# SIGTERM drains in-flight requests (--drain-timeout-s) before the process stops.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mvserve"]
CMD ["--help"]
