#!/usr/bin/env bash
# ONLY for machines that cannot reach Docker Hub (sandboxes, air-gapped CI) but do reach a
# Debian mirror and have a local Rust toolchain installed by rustup. Everyone else: skip this,
# `docker build` pulls the real images.
#
# Makes local stand-ins for the two base images docker/Dockerfile names, under the same tags:
#   debian:bookworm-slim        a debootstrap --variant=minbase bookworm rootfs
#   rust:1.95-slim-bookworm     that rootfs + gcc/libc6-dev/ca-certificates + the host's Rust
#                               toolchain laid out like the official image
#                               (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo),
#                               trusting the host's extra CAs (/usr/local/share/ca-certificates)
# With them present locally (and the Dockerfile's base images thus "already pulled"), the
# Dockerfile builds unchanged.
#
# Needs: root, debootstrap, a running docker engine. Usage:
#   sudo docker/offline-base-images.sh            # both images
#   RUST_TOOLCHAIN=~/.rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu docker/offline-base-images.sh
set -euo pipefail

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
RUST_VERSION=${RUST_VERSION:-1.95.0}
RUST_TAG=${RUST_TAG:-rust:1.95-slim-bookworm}
TRIPLE=x86_64-unknown-linux-gnu
RUST_TOOLCHAIN=${RUST_TOOLCHAIN:-${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$RUST_VERSION-$TRIPLE}
WORK=${WORK:-$(mktemp -d /tmp/floatzip-offline-base.XXXXXX)}
DOCKER=${DOCKER:-docker}

log() { printf '==> %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap needs it)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "apt-get install debootstrap" >&2; exit 1; }
[ -x "$RUST_TOOLCHAIN/bin/rustc" ] || { echo "no toolchain at $RUST_TOOLCHAIN (set RUST_TOOLCHAIN)" >&2; exit 1; }
"$RUST_TOOLCHAIN/bin/rustc" --version | grep -q "^rustc $RUST_VERSION " \
  || { echo "$RUST_TOOLCHAIN is not rustc $RUST_VERSION" >&2; exit 1; }

# ---- debian:bookworm-slim -----------------------------------------------------------------
if ! $DOCKER image inspect debian:bookworm-slim >/dev/null 2>&1; then
  log "debootstrap bookworm into $WORK/rootfs"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -30 "$WORK/debootstrap.log" >&2; exit 1; }
  # Same apt sources as the official image (deb822), nothing cached.
  rm -f "$WORK/rootfs/etc/apt/sources.list"
  cat >"$WORK/rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/archives/"*.deb \
         "$WORK/rootfs/var/log/"*.log "$WORK/rootfs/etc/hostname" "$WORK/rootfs/etc/resolv.conf"
  log "import debian:bookworm-slim"
  tar --numeric-owner -C "$WORK/rootfs" -c . \
    | $DOCKER import --change 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
else
  log "debian:bookworm-slim already present"
fi

# ---- rust:1.95-slim-bookworm --------------------------------------------------------------
if ! $DOCKER image inspect "$RUST_TAG" >/dev/null 2>&1; then
  ctx="$WORK/rust-context"
  mkdir -p "$ctx/rustup/toolchains"
  log "copy toolchain $RUST_TOOLCHAIN (without its HTML docs)"
  tc="$ctx/rustup/toolchains/$RUST_VERSION-$TRIPLE"
  cp -a "$(readlink -f "$RUST_TOOLCHAIN")" "$tc"
  rm -rf "$tc/share/doc/rust/html"
  # CAs this machine trusts on top of Debian's (e.g. a TLS-inspecting egress proxy in front of
  # crates.io): the build stage downloads crates, so it must trust them too. Certificates only;
  # they stay in this local stand-in image and never reach the floatzip image.
  mkdir -p "$ctx/extra-ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/extra-ca/" 2>/dev/null || true
  printf 'version = "12"\ndefault_toolchain = "%s-%s"\nprofile = "minimal"\n' \
    "$RUST_VERSION" "$TRIPLE" >"$ctx/rustup/settings.toml"
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM debian:bookworm-slim
# What the official rust:*-slim-bookworm image installs besides the toolchain.
RUN apt-get update \\
 && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \\
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$RUST_VERSION
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY rustup /usr/local/rustup
# No rustup proxies: link the toolchain's own binaries into CARGO_HOME/bin.
RUN mkdir -p /usr/local/cargo/bin \\
 && for b in /usr/local/rustup/toolchains/$RUST_VERSION-$TRIPLE/bin/*; do \\
      ln -s "\$b" /usr/local/cargo/bin/; \\
    done \\
 && chmod -R a+w /usr/local/cargo \\
 && cargo --version && rustc --version
DOCKERFILE
  log "build $RUST_TAG"
  $DOCKER build --network host -t "$RUST_TAG" "$ctx"
else
  log "$RUST_TAG already present"
fi

rm -rf "$WORK"
$DOCKER image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^(debian:bookworm-slim|rust:)'
