#!/usr/bin/env bash
# Builds the Dockerfile as IMAGE:VERSION and IMAGE:latest: with `docker build` where a
# Docker daemon answers, else with buildah (no daemon: `--isolation chroot`).
# Usage: deploy/image/build.sh IMAGE VERSION; optional inputs in the environment:
#   PYTHON_IMAGE     the base image (the Dockerfile's default when empty)
#   IMAGE_CA         a CA bundle (PEM) pip trusts in the build: passed as the secret `ca`
#   IMAGE_WHEELS     a wheel directory pip reads first: passed as the build context `wheels`
#   IMAGE_BUILD_ARGS more arguments for the builder (e.g. --build-arg TORCH_INDEX_URL=...)
# Neither input is written into a layer: a secret and a bind-mounted context are only
# visible to the RUN step that mounts them.
set -euo pipefail
image="${1:?usage: build.sh IMAGE VERSION}"
version="${2:?usage: build.sh IMAGE VERSION}"
cd "$(dirname "$0")/../.."

args=(--tag "$image:$version" --tag "$image:latest")
[ -n "${PYTHON_IMAGE:-}" ] && args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
if [ -n "${IMAGE_CA:-}" ]; then
    [ -s "$IMAGE_CA" ] || { echo "error: IMAGE_CA=$IMAGE_CA is not a readable file" >&2; exit 1; }
    args+=(--secret "id=ca,src=$IMAGE_CA")
fi
if [ -n "${IMAGE_WHEELS:-}" ]; then
    [ -d "$IMAGE_WHEELS" ] || { echo "error: IMAGE_WHEELS=$IMAGE_WHEELS is not a directory" >&2; exit 1; }
    args+=(--build-context "wheels=$IMAGE_WHEELS")
fi
# Word splitting is the point: IMAGE_BUILD_ARGS holds several arguments.
# shellcheck disable=SC2206
args+=(${IMAGE_BUILD_ARGS:-})

started=$(date +%s)
if docker info >/dev/null 2>&1; then
    echo "building $image:$version with docker build"
    DOCKER_BUILDKIT=1 docker build "${args[@]}" .
    size=$(docker image inspect --format '{{.Size}}' "$image:$version")
else
    command -v buildah >/dev/null || {
        echo "error: no Docker daemon answers and buildah is missing (make image-tools)" >&2
        exit 1; }
    echo "building $image:$version with buildah bud --isolation chroot (no Docker daemon)"
    # docker format: the OCI image config has no HEALTHCHECK, so buildah would drop it.
    before=$(buildah containers --quiet)
    buildah bud --isolation chroot --format docker --layers=false "${args[@]}" .
    # Stages' leftovers: the final image is tagged, nothing else of this build is needed
    # (buildah 1.28 leaves the working container of a stage a --build-context replaced).
    for ctr in $(buildah containers --quiet); do
        grep -qx "$ctr" <<<"$before" || buildah rm "$ctr" >/dev/null
    done
    buildah rmi --prune >/dev/null 2>&1 || true
    # awk reads to the end: head would close the pipe early, and pipefail fail the build.
    size=$(buildah images --format '{{.Size}}' --filter "reference=$image:$version" \
        | awk 'NR == 1')
fi
echo "built $image:$version ($size) in $(( $(date +%s) - started )) s"
