#!/usr/bin/env bash
# Makes the `debian:bookworm-slim` base image locally, for machines that reach Debian's package
# mirror but no container registry: debootstrap a minbase bookworm into a folder, trim it the way
# the official slim image is trimmed (no docs, man pages or locales), and `docker import` it
# under the official name, so docker/Dockerfile builds unchanged offline. Where a registry is
# reachable this script is not needed: `docker build` pulls the real image.
#
#   docker/base.sh            # no-op if debian:bookworm-slim is already present
#   docker/base.sh --force    # rebuild it
#
# Needs root, debootstrap and a Docker engine. Takes ~2-4 min (download + unpack).
set -euo pipefail
image=debian:bookworm-slim
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ "${1:-}" != "--force" ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image is present ($(docker image inspect -f '{{.Size}}' "$image") bytes); --force rebuilds it"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "docker/base.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "docker/base.sh: no Docker engine answers on ${DOCKER_HOST:-/var/run/docker.sock}" >&2; exit 1; }

root=$(mktemp -d /tmp/lorasweep-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror"
# What the slim image leaves out (its Dockerfile keeps /usr/share/doc/*/copyright only).
find "$root/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
rm -rf "$root/usr/share/man"/* "$root/usr/share/info"/* "$root/var/cache/apt"/*.bin \
    "$root/var/lib/apt/lists"/* "$root/var/log"/*.log
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
tar -C "$root" --numeric-owner -c . | docker import --change 'CMD ["bash"]' - "$image"
echo "made $image: $(docker image inspect -f '{{.Size}}' "$image") bytes"
