#!/usr/bin/env bash
# Builds the images lorasweep-coordinator:dev and lorasweep-worker:dev (and, with --cuda,
# lorasweep-worker:dev-cuda) from binaries compiled on the host.
#
#   docker/build.sh                    # cargo build --release, then the two CPU images
#   docker/build.sh --bin-dir DIR      # take lorasweep, lorasweep-coordinator, lorasweep-worker from DIR
#   docker/build.sh --cuda [DIR]       # also the CUDA worker from scripts/build-cuda.sh's output
#                                      # (default target/cuda-dist); built, not run, without a GPU
#   docker/build.sh --tag TAG          # instead of dev
#
# The binaries are stripped into a build context under target/docker-context, so the image
# build sends ~100 MB, not the whole repository, and needs no network (`--network none`). The
# base image debian:bookworm-slim is pulled where a registry is reachable; where none is,
# docker/base.sh makes it from Debian's mirror, which this script runs when the image is missing
# and cannot be pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin_dir="" cuda_dir="" tag=dev
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir=$2; shift 2 ;;
        --cuda) if [ $# -gt 1 ] && [ "${2#--}" = "$2" ]; then cuda_dir=$2; shift 2; else cuda_dir=$root/target/cuda-dist; shift; fi ;;
        --tag) tag=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "docker/build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

docker info >/dev/null 2>&1 || {
    echo "docker/build.sh: no Docker engine answers on ${DOCKER_HOST:-unix:///var/run/docker.sock}; start dockerd (e.g. \`dockerd --bridge=none &\`)" >&2
    exit 1
}

if [ -z "$bin_dir" ]; then
    cargo build --release --locked --bin lorasweep --bin lorasweep-coordinator --bin lorasweep-worker
    bin_dir=$root/target/release
fi
for b in lorasweep lorasweep-coordinator lorasweep-worker; do
    [ -x "$bin_dir/$b" ] || { echo "docker/build.sh: $bin_dir/$b is missing; build it first (cargo build --release)" >&2; exit 1; }
    if ldd "$bin_dir/$b" 2>/dev/null | grep -q libcuda; then
        echo "docker/build.sh: $bin_dir/$b is a CUDA build (links libcuda); the CPU images need a CPU build (use --cuda for the GPU image)" >&2
        exit 1
    fi
done

if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    # Bounded: where no registry answers, a pull may hang rather than fail.
    timeout 60 docker pull debian:bookworm-slim >/dev/null 2>&1 || bash docker/base.sh
fi

ctx=$root/target/docker-context
rm -rf "$ctx" && mkdir -p "$ctx/bin" "$ctx/cuda/lib"
for b in lorasweep lorasweep-coordinator lorasweep-worker; do
    strip -o "$ctx/bin/$b" "$bin_dir/$b"
done
cp -r docker/demo "$ctx/demo"
build() { # target image
    docker build --network none --quiet -f docker/Dockerfile --target "$1" -t "$2" "$ctx" >/dev/null
    echo "built $2 ($(docker image inspect -f '{{.Size}}' "$2" | awk '{printf "%.0f MB", $1/1e6}'))"
}
build coordinator "lorasweep-coordinator:$tag"
build worker "lorasweep-worker:$tag"
# The images these tags pointed at before are untagged now; remove them (only ours: by label).
docker image prune -f --filter label=org.opencontainers.image.title=lorasweep >/dev/null
if [ -n "$cuda_dir" ]; then
    for b in lorasweep lorasweep-worker; do
        [ -x "$cuda_dir/$b" ] || { echo "docker/build.sh: $cuda_dir/$b is missing; run scripts/build-cuda.sh first" >&2; exit 1; }
        strip -o "$ctx/cuda/$b" "$cuda_dir/$b"
    done
    cp "$cuda_dir"/lib/*.so* "$ctx/cuda/lib/"
    build worker-cuda "lorasweep-worker:$tag-cuda"
fi
