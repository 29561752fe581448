# Multi-stage image for mvserve (CPU by default).
#   docker build -t mvserve .
# A CUDA build swaps the base images and enables the `cuda` cargo feature once it exists (issue 7):
#   docker build --build-arg BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#                --build-arg RUN_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 --build-arg FEATURES=cuda -t mvserve:cuda .
# (That variant needs a Rust toolchain in the build image; the default build image has one.)
ARG BUILD_IMAGE=rust:1-bookworm
ARG RUN_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
# nasm lets openh264 build its assembly (about 1.7x faster H.264 decoding).
RUN apt-get update && apt-get install -y --no-install-recommends nasm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG FEATURES=""
RUN cargo build --release --locked ${FEATURES:+--features ${FEATURES}}

FROM ${RUN_IMAGE}
# ffmpeg decodes what the in-process decoders do not (VP8/VP9/AV1, HEVC, MPEG-4 part 2).
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/mvserve /usr/local/bin/mvserve
ENV HF_HOME=/models
VOLUME ["/models", "/data"]
ENTRYPOINT ["mvserve"]
CMD ["--help"]
