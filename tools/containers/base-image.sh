#!/bin/sh
# A local Debian base with Python, for building the project's images where no registry can be
# pulled from (the tests here): debootstrap from the Debian mirror apt already uses, then imported.
# The Dockerfile's default base stays python:3.11-slim for users; this one is passed as PYTHON_IMAGE.
#
#   tools/containers/base-image.sh [IMAGE]     (default localhost/predictor-python:3.11-bookworm)
#
# The host's extra CA certificates go in too: a build's pip and apt then trust what the host trusts.
set -eu
image=${1:-localhost/predictor-python:3.11-bookworm}
engine=$(command -v podman || command -v docker)
if "$engine" image exists "$image" 2>/dev/null || "$engine" image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$root" "$mirror" >/dev/null
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
fi
# pip in a build trusts the system bundle, where those certificates now are.
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
tar -C "$root" -c . | "$engine" import --change 'CMD ["python3"]' - "$image" >/dev/null
echo "$image"
