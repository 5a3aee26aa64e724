#!/usr/bin/env bash
# Builds the operator image and the CPU trainer image (`make images` runs this).
#
# With a Docker engine that answers, `docker build`. Without one, buildah, on a base image
# made from Debian packages: debootstrap lays out a bookworm root file system (Python 3.11,
# python3-venv, ca-certificates plus this machine's CA bundle, so pip in the build trusts
# what this machine trusts) and `podman import` turns it into an image. No registry is
# needed for any of it: this is also the air-gapped build path (README, "Building the
# images without Docker").
#
# An image is rebuilt only when what goes into it changes: its Dockerfile, the build
# arguments, the base image, the dependency files or the source tree. Their hash is a
# label on the image, compared before building.
#
# Environment: OPERATOR_IMAGE, TRAINER_CPU_IMAGE (the tags), and optionally BASE_IMAGE
# (skip debootstrap and build on this image), DEBIAN_MIRROR, TORCH_CPU_WHEELS (a folder
# holding the CPU torch wheel; default: the find-links folder of `pip config list`),
# CONTAINER_ENGINE (docker or buildah; default: docker when `docker info` answers).
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${OPERATOR_IMAGE:?name the operator image's tag}" "${TRAINER_CPU_IMAGE:?name the CPU trainer image's tag}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_PACKAGES="python3,python-is-python3,python3-venv,ca-certificates"
HASH_LABEL="io.kubetune.source-hash"
PYTHON="${PYTHON:-python3}"

say() { echo "images: $*" >&2; }

if [ -z "${CONTAINER_ENGINE:-}" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then CONTAINER_ENGINE=docker; else CONTAINER_ENGINE=buildah; fi
fi
case "$CONTAINER_ENGINE" in
docker) INSPECT=(docker image inspect) ;;
buildah)
    for tool in buildah podman; do
        command -v "$tool" >/dev/null || { say "no Docker engine answers and $tool is not installed (make container-tools)"; exit 1; }
    done
    INSPECT=(podman image inspect)
    ;;
*) say "CONTAINER_ENGINE must be docker or buildah, not $CONTAINER_ENGINE"; exit 1 ;;
esac

# The hash of the files a build reads and of the arguments it is given.
content_hash() {
    local dockerfile=$1; shift
    local trees=(pyproject.toml README.md trainer-image/constraints.txt operator/kubetune)
    [[ $dockerfile == trainer-image/* ]] && trees+=(trainer-image/kubetune_trainer)
    {
        sha256sum "$dockerfile"
        find "${trees[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
        printf '%s\n' "$@"
    } | sha256sum | cut -d' ' -f1
}

label_of() {
    "${INSPECT[@]}" --format "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$1" 2>/dev/null || true
}

# The bookworm base image, made with debootstrap and imported (needs root).
make_base_image() {
    local image=$1 root
    if podman image exists "$image"; then return; fi
    [ "$(id -u)" = 0 ] || { say "debootstrap needs root to make $image; run as root or set BASE_IMAGE"; exit 1; }
    command -v debootstrap >/dev/null || { say "debootstrap is not installed (make container-tools)"; exit 1; }
    root=$(mktemp -d "${TMPDIR:-/tmp}/kubetune-base.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    say "making $image with debootstrap from $DEBIAN_MIRROR (a few minutes, once)"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$root" "$DEBIAN_MIRROR" >&2
    # This machine's CA bundle joins the image's trust store, where pip and Python look.
    cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/ca-certificates/build-machine.crt"
    chroot "$root" update-ca-certificates >/dev/null
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
    tar -C "$root" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' \
        - "$image" >/dev/null
    rm -rf "$root"
    trap - EXIT
}

# build DOCKERFILE TAG BUILD-ARG... : builds unless the image already carries this content's hash.
build() {
    local dockerfile=$1 tag=$2; shift 2
    local args=("$@") hash base_id=""
    if [ "$CONTAINER_ENGINE" = buildah ]; then base_id=$(podman image inspect --format '{{.Id}}' "$BASE_IMAGE"); fi
    hash=$(content_hash "$dockerfile" "${args[@]}" "$base_id")
    if [ "$(label_of "$tag")" = "$hash" ]; then
        say "$tag is up to date"
        return
    fi
    say "building $tag with $CONTAINER_ENGINE"
    local flags=(-f "$dockerfile" -t "$tag" --label "$HASH_LABEL=$hash")
    for arg in "${args[@]}"; do flags+=(--build-arg "$arg"); done
    if [ "$CONTAINER_ENGINE" = docker ]; then
        docker build "${flags[@]}" .
    else
        local volumes=()
        [ -n "$WHEELS" ] && volumes=(--volume "$WHEELS:$WHEELS:ro")
        # --format docker: the OCI format has no SHELL, and the trainer's RUNs want pipefail.
        buildah bud --layers --format docker --network host --runtime "$(command -v runc)" \
            "${volumes[@]}" "${flags[@]}" .
    fi
}

WHEELS=""
OPERATOR_ARGS=()
TRAINER_ARGS=(VARIANT=cpu)
if [ "$CONTAINER_ENGINE" = buildah ]; then
    BASE_IMAGE="${BASE_IMAGE:-localhost/kubetune-base:bookworm}"
    make_base_image "$BASE_IMAGE"
    WHEELS="${TORCH_CPU_WHEELS-$("$PYTHON" -m pip config list 2>/dev/null | sed -n "s/^[^=]*find-links='\([^' ]*\)'$/\1/p" | head -n1)}"
    OPERATOR_ARGS+=("PYTHON_IMAGE=$BASE_IMAGE")
    TRAINER_ARGS+=("BASE_IMAGE=$BASE_IMAGE")
    if [ -n "$WHEELS" ] && compgen -G "$WHEELS/torch-*+cpu-*.whl" >/dev/null; then
        TRAINER_ARGS+=("TORCH_CPU_WHEELS=$WHEELS")
    else
        WHEELS=""
    fi
elif [ -n "${BASE_IMAGE:-}" ]; then
    OPERATOR_ARGS+=("PYTHON_IMAGE=$BASE_IMAGE")
    TRAINER_ARGS+=("BASE_IMAGE=$BASE_IMAGE")
fi

build operator/Dockerfile "$OPERATOR_IMAGE" "${OPERATOR_ARGS[@]}"
build trainer-image/Dockerfile "$TRAINER_CPU_IMAGE" "${TRAINER_ARGS[@]}"
