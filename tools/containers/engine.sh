#!/bin/sh
# Makes a container engine usable on a machine without Docker: Debian's podman, as root, with the
# runc runtime (crun refuses hybrid cgroups) and ulimits no higher than the host's (a sandbox cannot
# raise them). Leaves an existing containers.conf, and a machine with docker, as they are.
set -eu
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    exit 0
fi
if ! command -v podman >/dev/null 2>&1 || ! command -v podman-compose >/dev/null 2>&1 \
    || ! command -v debootstrap >/dev/null 2>&1; then
    apt-get install -y -q podman podman-compose debootstrap runc \
        || { apt-get update -q && apt-get install -y -q podman podman-compose debootstrap runc; }
fi
conf=/etc/containers/containers.conf
if [ ! -e "$conf" ]; then
    mkdir -p /etc/containers
    cat > "$conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
fi
