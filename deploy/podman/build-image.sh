#!/usr/bin/env bash
# Build runwatch's image with podman from deploy/Dockerfile, where no registry can be pulled:
# the Dockerfile's base (ARG BASE) is a local Debian bookworm image with python3, venv and
# CA certificates, made with debootstrap from Debian's mirror.
#
#   deploy/podman/build-image.sh            -> localhost/runwatch:local
#   RUNWATCH_IMAGE=localhost/runwatch:x RUNWATCH_BASE=docker.io/library/python:3.11-slim-bookworm \
#     deploy/podman/build-image.sh          (a machine that can pull: no local base needed)
#
# Caching, so that a rebuild costs only what changed:
#   - the base image is made only when `podman image exists` says it is missing;
#   - its root filesystem is kept as a tarball in $RUNWATCH_CACHE (~/.cache/runwatch), so a
#     machine whose podman storage was wiped re-imports it in seconds instead of running
#     debootstrap again (delete the tarball to pick up Debian security updates);
#   - podman's layer cache keeps the dependency layer until requirements.lock changes.
# Needs root for debootstrap (first run only). Prints the build's timings at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
IMAGE=${RUNWATCH_IMAGE:-localhost/runwatch:local}
BASE=${RUNWATCH_BASE:-localhost/runwatch-base:bookworm}
CACHE=${RUNWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/runwatch}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
TARBALL=$CACHE/debian-bookworm-python3.tar
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/podman/containers.conf}

log() { printf 'build-image: %s\n' "$*" >&2; }

bootstrap_rootfs() {
  # Debian minbase + python3, python3-venv (the Dockerfile makes a venv) and ca-certificates,
  # upgraded from bookworm-updates and bookworm-security, without apt's caches and docs.
  command -v debootstrap >/dev/null || { log "debootstrap is not installed"; exit 3; }
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { log "debootstrap failed; see $CACHE/debootstrap.log"; exit 1; }
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF
  { chroot "$rootfs" apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get -y -qq dist-upgrade; } \
    >>"$CACHE/debootstrap.log" 2>&1 || { log "apt upgrade failed; see $CACHE/debootstrap.log"; exit 1; }
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/etc/resolv.conf
  tar -C "$rootfs" -cf "$TARBALL.$$" . && mv "$TARBALL.$$" "$TARBALL"
  rm -rf "$rootfs"
}

ensure_base() {
  if [[ $BASE != localhost/runwatch-base:* ]] || podman image exists "$BASE"; then
    return
  fi
  mkdir -p "$CACHE"
  if [ ! -s "$TARBALL" ]; then
    log "bootstrapping Debian bookworm into $TARBALL (about a minute, once)"
    bootstrap_rootfs
  fi
  log "importing $TARBALL as $BASE"
  podman import --quiet --change 'CMD ["python3"]' "$TARBALL" "$BASE" >/dev/null
}

started=$SECONDS
ensure_base
base_done=$SECONDS
# --format docker: the OCI format has no HEALTHCHECK. The host's CA bundle is mounted into
# the RUN steps (never into the image) for networks whose HTTPS goes through a proxy.
ca=()
if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
  ca=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi
previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
podman build --format docker --network host "${ca[@]}" --build-arg "BASE=$BASE" \
  -f "$ROOT/deploy/Dockerfile" --ignorefile "$ROOT/deploy/Dockerfile.dockerignore" \
  -t "$IMAGE" "$ROOT"
# The image this tag named before is now untagged: drop it (kept if a container still uses
# it). The build stages' intermediate images stay: they are podman's layer cache.
current=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
log "built $IMAGE (base $((base_done - started)) s, image $((SECONDS - base_done)) s)"
