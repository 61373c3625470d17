#!/usr/bin/env bash
# A Python base image made from Debian packages alone, for machines that can reach
# Debian's archive but no container registry (so `python:3.11-slim-bookworm` cannot be
# pulled): debootstrap bookworm (its python3 is 3.11, like the slim image's) with venv,
# pip and Python's headers, `python` on the PATH, committed to buildah's local storage.
# Usage: deploy/image/base.sh IMAGE [MIRROR]. Does nothing when IMAGE already exists.
set -euo pipefail
image="${1:?usage: base.sh IMAGE [MIRROR]}"
mirror="${2:-http://deb.debian.org/debian}"

if buildah inspect --type image "$image" >/dev/null 2>&1; then
    echo "$image: present, not rebuilt (buildah rmi $image to rebuild)"
    exit 0
fi
for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (make image-tools installs it)" >&2; exit 1; }
done

started=$(date +%s)
ctr=$(buildah from scratch)
# Whatever happens below, no half-made working container is left in storage.
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
root=$(buildah mount "$ctr")
# minbase: essential packages and apt only. python3-dev: the official image ships Python's
# headers, and the image's C++ builds (quantized kernels, torch.compile's CPU kernels)
# include Python.h. python-is-python3 puts `python` on the PATH, as the official image has
# it (the Dockerfile's RUN and CMD steps call `python`).
debootstrap --variant=minbase \
    --include=python3,python3-dev,python3-venv,python3-pip,python-is-python3,ca-certificates \
    bookworm "$root" "$mirror"
# The package cache and lists are the build's, not the image's (the Dockerfile runs
# apt-get update itself); the official slim image ships without them too.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*
buildah umount "$ctr" >/dev/null
buildah config --env LANG=C.UTF-8 --cmd python3 \
    --label org.opencontainers.image.description="Debian bookworm + python3 (debootstrap)" \
    "$ctr"
buildah commit --quiet --rm "$ctr" "$image" >/dev/null
trap - EXIT
echo "$image: built from Debian bookworm ($mirror) in $(( $(date +%s) - started )) s"
