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
