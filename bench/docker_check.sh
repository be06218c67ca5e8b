#!/usr/bin/env bash
# Build the Docker image without a registry and check that it serves: run by hand before changing the Dockerfile
# (tests/test_docker_image.py runs it when `docker info` works, else it says it skipped).
#
#   bench/docker_check.sh            # base: local/debian:bookworm (made with debootstrap + docker import if missing)
#   BASE_IMAGE=debian:bookworm-slim bench/docker_check.sh   # any local image with a python3.11 package
#
# 1. the base image: $BASE_IMAGE, or a Debian bookworm minbase made by debootstrap and `docker import`;
# 2. ./wheelhouse: the requirements' wheels (`pip download -r requirements.txt`), made on the host once;
# 3. `docker build --build-arg PIP_ARGS=--no-index` (apt packages from Debian's mirror, nothing from a registry);
# 4. the container on 127.0.0.1 with a data folder mounted at /data holding a tiny model (the demo checkpoint under
#    another name); checks: the health check turns healthy, /sdapi/v1/sd-models lists the mounted model, a txt2img
#    call with it writes a PNG into the mounted outputs folder, owned by the container's unprivileged user.
# Prints one line per step with its time; exit status 0 when every check passed (77 when docker is not usable).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
tag="${IMAGE_TAG:-sd-webui:check}"
port="${PORT:-7861}"
work="$(mktemp -d /tmp/sd-docker-check.XXXXXX)"
container="sd-webui-check-$$"
say() { echo "[$SECONDS s] $*"; }
cleanup() {
    docker rm -f "$container" >/dev/null 2>&1 || true
    rm -rf "$work" 2>/dev/null || docker run --rm -v "$work:/w" --entrypoint sh "$tag" -c 'rm -rf /w/*' >/dev/null 2>&1 || true
}
trap cleanup EXIT

if ! docker info >/dev/null 2>&1; then
    echo "skipped: no Docker engine answers (docker info failed)"
    exit 77
fi

base="${BASE_IMAGE:-local/debian:bookworm}"
if ! docker image inspect "$base" >/dev/null 2>&1; then
    if [[ -n "${BASE_IMAGE:-}" ]]; then
        echo "error: base image $base is not present locally" >&2
        exit 1
    fi
    command -v debootstrap >/dev/null || { echo "error: debootstrap is needed to make $base (apt-get install debootstrap)" >&2; exit 1; }
    say "making $base with debootstrap (minbase)"
    debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1
    tar -C "$work/rootfs" -c . | docker import - "$base" >/dev/null
    rm -rf "$work/rootfs"
fi
say "base image: $base"

if [[ ! -d wheelhouse ]] || [[ -z "$(ls wheelhouse)" ]]; then
    say "downloading the requirements' wheels into ./wheelhouse"
    python3 -m pip download -q -r requirements.txt -d wheelhouse
fi
say "wheelhouse: $(ls wheelhouse | wc -l) wheels, $(du -sh wheelhouse | cut -f1)"

say "docker build"
docker build -q --network host --build-arg BASE="$base" --build-arg PIP_ARGS=--no-index -t "$tag" . >"$work/build.log"
say "built $tag ($(docker image inspect "$tag" --format '{{.Size}}' | awk '{printf "%.1f GB", $1/1e9}'))"

mkdir -p "$work/data/models/Stable-diffusion"
cp models/Stable-diffusion/demo-shapes.safetensors "$work/data/models/Stable-diffusion/mounted-tiny.safetensors"
chown -R 1000:1000 "$work/data"
docker run -d --name "$container" -p "127.0.0.1:$port:7860" -v "$work/data:/data" "$tag" --api >/dev/null
say "started $container on 127.0.0.1:$port"

for _ in $(seq 120); do
    running="$(docker inspect "$container" --format '{{.State.Running}}' 2>/dev/null || echo false)"
    [[ "$running" == "true" ]] || break
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 1
done
curl -sf "http://127.0.0.1:$port/healthz" >/dev/null || { docker logs "$container" 2>&1 | tail -20; echo "error: the container does not answer" >&2; exit 1; }
say "answering on 127.0.0.1:$port"

models="$(curl -sf "http://127.0.0.1:$port/sdapi/v1/sd-models")"
grep -q "mounted-tiny" <<<"$models" || { echo "error: /sdapi/v1/sd-models does not list the mounted model: $models" >&2; exit 1; }
say "sd-models lists mounted-tiny"

curl -sf -X POST "http://127.0.0.1:$port/sdapi/v1/txt2img" -H 'Content-Type: application/json' \
    -d '{"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "seed": 1,
         "override_settings": {"sd_model_checkpoint": "mounted-tiny"}, "save_images": true}' >"$work/answer.json" \
    || { docker logs "$container" | tail -20; echo "error: txt2img failed" >&2; exit 1; }
png="$(find "$work/data/outputs" -name '*.png' | head -1)"
[[ -n "$png" ]] || { echo "error: no PNG in the mounted outputs folder" >&2; exit 1; }
owner="$(stat -c %u "$png")"
[[ "$owner" == "1000" ]] || { echo "error: $png is owned by uid $owner, not the container's user (1000)" >&2; exit 1; }
say "txt2img wrote ${png#"$work/data/"} (uid $owner)"

for _ in $(seq 60); do  # the image's HEALTHCHECK itself (first run 30 s after the start)
    health="$(docker inspect "$container" --format '{{.State.Health.Status}}')"
    [[ "$health" == "starting" ]] || break
    sleep 2
done
[[ "$health" == "healthy" ]] || { echo "error: the image's health check says $health" >&2; exit 1; }
say "health check: healthy"

stop_start=$SECONDS
docker stop -t 20 "$container" >/dev/null
say "stopped in $((SECONDS - stop_start)) s (SIGTERM); every check passed"
