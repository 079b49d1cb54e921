#!/usr/bin/env bash
# Builds ringlb's kind node image on this machine, with nothing pulled from a container
# registry: a debootstrapped Debian bookworm (systemd, Debian's containerd/runc/CNI plugins)
# plus Kubernetes, etcd, crictl and CoreDNS compiled here from the Go module proxy, and the
# images kubeadm asks for (and the default CNI's) preloaded into the node's containerd.
#
# Built directly with docker (build, run, commit) rather than `kind build node-image`: that
# command fetches etcd, CoreDNS, kindnetd and local-path-provisioner from registries inside
# its build container (`ctr content fetch`), which cannot work without a registry.
#
# Cached outside the checkout, keyed by every input (this script, hack/node-image/,
# hack/k8s, hack/etcd, hack/pause):
#   docker image  ringlb/kind-node:<k8s version>-<key>
#   tarball       ${RINGLB_CACHE:-/var/cache/ringlb}/node-image/kind-node-<key>.tar (docker load
#                 when dockerd's own storage was wiped)
#
# Usage: scripts/node-image.sh [build]      build (or load) the image, print its name
#        scripts/node-image.sh --print      print the name only (nothing is built)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${RINGLB_CACHE:-/var/cache/ringlb}"
HERE="$ROOT/hack/node-image"
MIRROR="${RINGLB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="${RINGLB_GOFLAGS:--p=2 -buildvcs=false}"

# what the node runs (systemd as PID 1, containerd, runc, CNI plugins, kubeadm's tools)
NODE_PKGS=systemd,systemd-sysv,containerd,runc,containernetworking-plugins,iptables,conntrack,iproute2,ethtool,socat,util-linux,mount,kmod,ca-certificates,procps,libseccomp2
# base of the images inside the node (kube-proxy and the CNI need iptables)
IMG_PKGS=iptables,conntrack,iproute2,kmod,ca-certificates

K8S_VERSION="$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$ROOT/hack/k8s/go.mod")"
ETCD_VERSION="$(awk '$1=="require" && $2=="go.etcd.io/etcd/server/v3" {print $3}' "$ROOT/hack/etcd/go.mod")"
CRICTL_VERSION="$(awk '$1=="require" && $2=="sigs.k8s.io/cri-tools" {print $3}' "$HERE/crictl/go.mod")"
COREDNS_VERSION="$(awk '$1=="require" && $2=="github.com/coredns/coredns" {print $3}' "$HERE/coredns/go.mod")"
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
NET_IMAGE=docker.io/ringlb/kind-net:v1

log() { echo "node-image: $*" >&2; }
die() { echo "node-image: ERROR: $*" >&2; exit 1; }

input_key() {
  {
    echo "$NODE_PKGS $IMG_PKGS $SUITE"
    (cd "$ROOT" && find hack/node-image hack/k8s hack/etcd hack/pause scripts/node-image.sh -type f | LC_ALL=C sort | xargs sha256sum)
  } | sha256sum | cut -c1-12
}
KEY="$(input_key)"
IMAGE="${RINGLB_KIND_NODE_IMAGE_NAME:-ringlb/kind-node:$K8S_VERSION-$KEY}"
TARBALL="$CACHE/node-image/kind-node-$KEY.tar"

# ---------------------------------------------------------------- binaries (cached by version)
go_build() { # NAME VERSION MODULE-DIR PACKAGE [LDFLAGS]
  local name=$1 ver=$2 dir=$3 pkg=$4 ld=${5:-}
  local out="$CACHE/$name/$ver/bin/$name"
  [[ -x $out ]] && { log "$name $ver: cached"; return 0; }
  log "$name $ver: compiling ..."
  local t0=$SECONDS tmp="$out.tmp.$$"
  mkdir -p "$(dirname "$out")"
  (cd "$dir" && go mod download && go build -trimpath -ldflags "-s -w $ld" -o "$tmp" "$pkg")
  mv "$tmp" "$out"
  log "$name $ver: compiled in $((SECONDS - t0))s"
}

binaries() {
  "$ROOT/scripts/k8s-build.sh" all
  local dirs; mapfile -t dirs < <("$ROOT/scripts/k8s-build.sh" --print-dirs)
  K8S_BIN=${dirs[0]} ETCD_BIN=${dirs[1]}
  go_build crictl "$CRICTL_VERSION" "$HERE/crictl" sigs.k8s.io/cri-tools/cmd/crictl \
    "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
  go_build coredns "$COREDNS_VERSION" "$HERE/coredns" . \
    "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
  CRICTL_BIN="$CACHE/crictl/$CRICTL_VERSION/bin" COREDNS_BIN="$CACHE/coredns/$COREDNS_VERSION/bin"
}

# ---------------------------------------------------------------- Debian root filesystems
rootfs() { # NAME PACKAGES -> prints the docker image name (imported from a cached tarball)
  local name=$1 pkgs=$2 key tar img
  key=$(echo "$SUITE $pkgs" | sha256sum | cut -c1-12)
  img="ringlb/kind-$name:$key"
  if docker image inspect "$img" >/dev/null 2>&1; then echo "$img"; return 0; fi
  tar="$CACHE/node-image/$name-$key.tar"
  if [[ ! -s $tar ]]; then
    local work t0=$SECONDS
    mkdir -p "$CACHE/node-image"
    work="$(mktemp -d "$CACHE/node-image/rootfs.XXXXXX")"
    log "debootstrap $SUITE for $name ($pkgs) ..."
    debootstrap --variant=minbase --include="$pkgs" "$SUITE" "$work/rootfs" "$MIRROR" \
      > "$CACHE/node-image/debootstrap-$name.log" 2>&1 \
      || { tail -20 "$CACHE/node-image/debootstrap-$name.log" >&2; rm -rf "$work"; die "debootstrap failed"; }
    local r="$work/rootfs"
    chroot "$r" apt-get clean >/dev/null 2>&1 || true
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/usr/share/doc/* "$r"/usr/share/man/* \
           "$r"/usr/share/info/* "$r"/usr/share/locale/* "$r"/var/log/*.log "$r"/tmp/* || true
    : > "$r/etc/hostname"; rm -f "$r/etc/resolv.conf"; : > "$r/etc/machine-id"
    tar --numeric-owner -C "$r" -cf "$tar.tmp" .
    mv "$tar.tmp" "$tar"; rm -rf "$work"
    log "$name rootfs cached: $tar ($(du -h "$tar" | cut -f1)) in $((SECONDS - t0))s"
  fi
  docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$img" < "$tar" >/dev/null
  echo "$img"
}

# ---------------------------------------------------------------- images preloaded in the node
component_images() { # IMG_BASE CTX -> the image names, one a line
  local base=$1 ctx=$2 c etcd_tag
  etcd_tag=$("$K8S_BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null | grep '/etcd:' ) \
    || die "kubeadm config images list failed"
  mkdir -p "$ctx"
  for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    build_image "$ctx/$c" "registry.k8s.io/$c:$K8S_VERSION" "FROM $base" "COPY $c /usr/local/bin/$c" \
      "ENTRYPOINT [\"/usr/local/bin/$c\"]" -- "$K8S_BIN/$c"
  done
  build_image "$ctx/etcd" "$etcd_tag" "FROM $base" "COPY etcd /usr/local/bin/etcd" \
    "LABEL io.ringlb.etcd-version=$ETCD_VERSION" "ENTRYPOINT [\"/usr/local/bin/etcd\"]" -- "$ETCD_BIN/etcd"
  build_image "$ctx/coredns" "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "FROM $base" \
    "COPY coredns /coredns" "EXPOSE 53 53/udp" "ENTRYPOINT [\"/coredns\"]" -- "$COREDNS_BIN/coredns"
  build_image "$ctx/net" "$NET_IMAGE" "FROM $base" "COPY kubectl ringlb-net /usr/local/bin/" \
    "ENTRYPOINT [\"/usr/local/bin/ringlb-net\"]" -- "$K8S_BIN/kubectl" "$HERE/net/ringlb-net"
  mkdir -p "$ctx/pause"
  cc -Os -static -Wall -o "$ctx/pause/pause" "$ROOT/hack/pause/pause.c" && strip "$ctx/pause/pause"
  docker build -q -t "$PAUSE_IMAGE" -f "$ROOT/hack/pause/Dockerfile" "$ctx/pause" >/dev/null
  printf '%s\n' "registry.k8s.io/kube-apiserver:$K8S_VERSION" "registry.k8s.io/kube-controller-manager:$K8S_VERSION" \
    "registry.k8s.io/kube-scheduler:$K8S_VERSION" "registry.k8s.io/kube-proxy:$K8S_VERSION" "$etcd_tag" \
    "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "$NET_IMAGE" "$PAUSE_IMAGE"
}

build_image() { # CTX TAG DOCKERFILE-LINE... -- FILE...
  local ctx=$1 tag=$2; shift 2
  mkdir -p "$ctx"
  : > "$ctx/Dockerfile"
  while [[ $1 != -- ]]; do echo "$1" >> "$ctx/Dockerfile"; shift; done
  shift
  cp "$@" "$ctx/"
  docker build -q -t "$tag" "$ctx" >/dev/null || die "docker build $tag failed"
  log "built $tag"
}

# ---------------------------------------------------------------- the node image
build() {
  local t0=$SECONDS
  command -v debootstrap >/dev/null || die "debootstrap missing (scripts/kind-host.sh prereqs)"
  binaries
  local node_base img_base
  node_base=$(rootfs node-rootfs "$NODE_PKGS")
  img_base=$(rootfs image-base "$IMG_PKGS")
  work="$(mktemp -d "$CACHE/node-image/build.XXXXXX")"
  trap 'docker rm -f "ringlb-node-build-$KEY" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

  mapfile -t images < <(component_images "$img_base" "$work/images")

  # stage 1: the node's filesystem
  mkdir -p "$work/node/bin"
  cp "$K8S_BIN/kubeadm" "$K8S_BIN/kubelet" "$K8S_BIN/kubectl" "$CRICTL_BIN/crictl" "$work/node/bin/"
  cp -a "$HERE/files" "$work/node/files"
  cat > "$work/node/Dockerfile" <<DOCKERFILE
FROM $node_base
COPY files/ /
COPY bin/ /usr/bin/
RUN chmod 0755 /usr/local/bin/entrypoint /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl /usr/bin/crictl \
 && mkdir -p /etc/kubernetes/manifests /etc/cni/net.d /var/lib/kubelet \
 && systemctl set-default multi-user.target \
 && systemctl enable containerd.service kubelet.service \
 && systemctl mask getty@tty1.service serial-getty@.service console-getty.service getty.target \
      systemd-udevd.service systemd-udev-trigger.service systemd-modules-load.service \
      systemd-firstboot.service systemd-networkd.service systemd-resolved.service \
      systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service 2>/dev/null; \
    echo "$K8S_VERSION" > /kind/version
DOCKERFILE
  docker build -q -t "ringlb/kind-node-stage:$KEY" "$work/node" >/dev/null || die "node stage build failed"

  # stage 2: preload the images into the node's containerd (content only: containerd unpacks
  # them on first use, on the node's /var volume, where overlayfs works)
  log "preloading ${#images[@]} images into the node's containerd ..."
  docker save "${images[@]}" > "$work/images.tar"
  local c="ringlb-node-build-$KEY"
  docker rm -f "$c" >/dev/null 2>&1 || true
  docker run -d --name "$c" --entrypoint sleep "ringlb/kind-node-stage:$KEY" infinity >/dev/null
  docker cp "$work/images.tar" "$c:/images.tar"
  docker exec "$c" bash -c '
    set -e
    containerd >/tmp/containerd.log 2>&1 &
    for i in $(seq 1 50); do ctr version >/dev/null 2>&1 && break; sleep 0.2; done
    ctr -n k8s.io images import --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - < /images.tar >/dev/null
    ctr -n k8s.io images ls -q
    kill %1; wait || true
    rm -f /images.tar; rm -rf /tmp/* /var/log/*' >&2
  docker commit "$c" "ringlb/kind-node-stage:$KEY-loaded" >/dev/null
  docker rm -f "$c" >/dev/null
  # systemd halts on SIGRTMIN+3 (`docker stop`); kind starts nodes with the image's entrypoint
  mkdir -p "$work/final"
  cat > "$work/final/Dockerfile" <<DOCKERFILE
FROM ringlb/kind-node-stage:$KEY-loaded
ENV container=docker
STOPSIGNAL SIGRTMIN+3
LABEL io.ringlb.kind-node.key=$KEY io.ringlb.kubernetes=$K8S_VERSION
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
CMD []
DOCKERFILE
  docker build -q -t "$IMAGE" "$work/final" >/dev/null || die "final node image build failed"
  docker rmi "ringlb/kind-node-stage:$KEY-loaded" "ringlb/kind-node-stage:$KEY" >/dev/null 2>&1 || true
  log "built $IMAGE in $((SECONDS - t0))s; caching it as $TARBALL"
  rm -f "$CACHE"/node-image/kind-node-*.tar
  docker save "$IMAGE" > "$TARBALL.tmp" && mv "$TARBALL.tmp" "$TARBALL"
}

ensure() {
  if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE present (cached)"
  elif [[ -s $TARBALL ]]; then
    log "loading $IMAGE from $TARBALL"
    docker load -q < "$TARBALL" >/dev/null
  else
    build
  fi
  echo "$IMAGE"
}

case "${1:-build}" in
  build) ensure ;;
  --print) echo "$IMAGE" ;;
  *) echo "usage: $0 [build|--print]" >&2; exit 2 ;;
esac
