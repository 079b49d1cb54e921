#!/usr/bin/env bash
# A real single-node Kubernetes (v1.34, built from source by scripts/k8s-build.sh)
# on this machine, with no container registry: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, a dedicated containerd, kubelet and
# kube-proxy run as plain processes; all state lives in <repo>/.local-cluster/.
#
# Usage: scripts/local-cluster.sh up|down|status|diagnose|kubeconfig|bin-dir|load-images IMG...|docker
#   up           install prerequisites (apt), build binaries (cached), start everything,
#                wait for a Ready node; idempotent
#   down         stop every process `up` started (PID files), remove pods, mounts,
#                network leftovers and the state dir
#   status       show the processes and the node
#   diagnose     status plus pods, events, operator and component logs (for failed runs)
#   kubeconfig   print the admin kubeconfig path
#   bin-dir      print the dir holding the matching kubectl (v1.34) for PATH
#   load-images  docker save IMG... | ctr import into the cluster's containerd
#   docker       make sure dockerd runs (started by us => stopped by `down`)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${RINGLB_STATE:-$ROOT/.local-cluster}"
CACHE="${RINGLB_CACHE:-/var/cache/ringlb}"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
PKI="$STATE/pki"
CFG="$STATE/config"

NODE_NAME="${RINGLB_NODE_NAME:-ringlb-node}"
# The node / apiserver-advertise address lives on a link of our own (dummy or bridge),
# so that nothing targets the machine's external address.
NODE_IP="${RINGLB_NODE_IP:-10.245.0.1}"
NODE_IF=rlb-node0
CNI_BRIDGE=rlb-cni0
CNI_NAME=ringlb
POD_CIDR="${RINGLB_POD_CIDR:-10.244.0.0/24}"
SERVICE_CIDR="${RINGLB_SERVICE_CIDR:-10.96.0.0/16}"
API_SERVICE_IP=10.96.0.1
API_PORT=6443
PAUSE_IMAGE=ringlb/pause:3.10
CTR_SOCK="$STATE/containerd/containerd.sock"
KUBECONFIG_ADMIN="$STATE/admin.kubeconfig"
APT_PKGS=(docker.io containerd runc containernetworking-plugins openssl debootstrap
          iptables conntrack gcc libc6-dev ca-certificates iproute2 util-linux curl)

log() { echo "local-cluster: $*" >&2; }
die() { echo "local-cluster: ERROR: $*" >&2; exit 1; }

bin_dirs() {
  local dirs
  mapfile -t dirs < <("$ROOT/scripts/k8s-build.sh" --print-dirs)
  K8S_BIN="${dirs[0]}"; ETCD_BIN="${dirs[1]}"
}

kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
ctr_() { ctr -a "$CTR_SOCK" -n k8s.io "$@"; }

# ---------------------------------------------------------------- processes
pid_of() { [[ -s "$PIDS/$1.pid" ]] && cat "$PIDS/$1.pid"; }

running() { # NAME: true if the recorded PID is alive and is still our program
  local pid; pid="$(pid_of "$1" 2>/dev/null)" || return 1
  [[ -n "$pid" && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' < /proc/$pid/cmdline | grep -q -- "${2:-$1}"
}

start() { # NAME CMD...   (no-op if already running; restart if $CONF is newer than the pid file)
  local name=$1; shift
  if running "$name" "$(basename "$1")"; then
    if [[ -n "${CONF:-}" && "$CONF" -nt "$PIDS/$name.pid" ]]; then
      log "$name: $CONF changed, restarting"; stop "$name" 20 "$(basename "$1")"
    else
      log "$name already running (pid $(pid_of "$name"))"; return 0
    fi
  fi
  mkdir -p "$LOGS" "$PIDS"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name.pid"
  log "started $name (pid $!, log $LOGS/$name.log)"
}

stop() { # NAME [TIMEOUT]
  local name=$1 t=${2:-20} pid i
  pid="$(pid_of "$name" 2>/dev/null)" || return 0
  if running "$name" "${3:-$name}"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < t * 5; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then log "$name did not stop, SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$PIDS/$name.pid"
}

wait_for() { # DESCRIPTION TIMEOUT CMD...
  local what=$1 t=$2 i; shift 2
  for ((i = 0; i < t; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  die "timed out after ${t}s waiting for $what (logs in $LOGS)"
}

# ---------------------------------------------------------------- prerequisites
prereqs() {
  local missing=() p
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing missing apt packages: ${missing[*]}"
    [[ $EUID == 0 ]] || die "need root to apt-get install ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$CACHE/apt-install.log" 2>&1; then
      apt-get update -qq >/dev/null 2>&1 || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$CACHE/apt-install.log" 2>&1 \
        || { tail -20 "$CACHE/apt-install.log" >&2; die "apt-get install failed"; }
    fi
  fi
  command -v go >/dev/null || die "go is required to build Kubernetes (scripts/k8s-build.sh)"
  [[ -d /sys/fs/cgroup/memory || -f /sys/fs/cgroup/cgroup.controllers ]] || die "no usable cgroup hierarchy"
}

ensure_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  running dockerd dockerd && { wait_for dockerd 60 docker info; return 0; }
  [[ -S /var/run/docker.sock ]] && ! docker info >/dev/null 2>&1 && rm -f /var/run/docker.sock
  # a stale pid file left by a crashed dockerd blocks a new one
  if [[ -s /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then rm -f /var/run/docker.pid; fi
  start dockerd dockerd
  wait_for dockerd 60 docker info
}

# ---------------------------------------------------------------- pki
ssl_cert() { # NAME CN O SANS(comma list or "") USAGE(client|server|both)
  local name=$1 cn=$2 o=$3 sans=$4 usage=$5 subj ext
  [[ -s "$PKI/$name.crt" ]] && return 0
  subj="/CN=$cn"; [[ -n "$o" ]] && subj="/O=$o$subj"
  case $usage in
    client) ext="extendedKeyUsage=clientAuth" ;;
    server) ext="extendedKeyUsage=serverAuth" ;;
    both) ext="extendedKeyUsage=serverAuth,clientAuth" ;;
  esac
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "$ext"
    [[ -n "$sans" ]] && echo "subjectAltName=$sans"
  } > "$PKI/$name.ext"
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  local ca=${SIGN_CA:-ca}
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

kubeconfig_for() { # NAME (uses $PKI/NAME.crt/key)
  local name=$1 out="$STATE/$1.kubeconfig"
  [[ -s "$out" ]] && return 0
  cat > "$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ringlb-local
  cluster:
    certificate-authority-data: $(base64 -w0 < "$PKI/ca.crt")
    server: https://127.0.0.1:$API_PORT
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 < "$PKI/$name.crt")
    client-key-data: $(base64 -w0 < "$PKI/$name.key")
contexts:
- name: ringlb-local
  context: {cluster: ringlb-local, user: $name, namespace: default}
current-context: ringlb-local
EOF
  chmod 600 "$out"
}

ssl_ca() { # NAME CN
  [[ -s "$PKI/$1.crt" ]] && return 0
  openssl genrsa -out "$PKI/$1.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$PKI/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/$1.crt" 2>/dev/null
}

gen_pki() {
  mkdir -p "$PKI"; chmod 700 "$PKI"
  ssl_ca ca ringlb-local-ca
  ssl_ca front-proxy-ca ringlb-local-front-proxy-ca
  SIGN_CA=front-proxy-ca ssl_cert front-proxy-client front-proxy-client "" "" client
  [[ -s "$PKI/sa.key" ]] || { openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null; openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null; }
  ssl_cert apiserver kube-apiserver "" \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$API_SERVICE_IP,IP:$NODE_IP" server
  ssl_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters "" client
  ssl_cert admin kubernetes-admin system:masters "" client
  ssl_cert controller-manager system:kube-controller-manager "" "" client
  ssl_cert scheduler system:kube-scheduler "" "" client
  ssl_cert kube-proxy system:kube-proxy "" "" client
  ssl_cert kubelet "system:node:$NODE_NAME" system:nodes "" client
  ssl_cert kubelet-server "$NODE_NAME" "" "DNS:$NODE_NAME,DNS:localhost,IP:$NODE_IP,IP:127.0.0.1" server
  local k; for k in admin controller-manager scheduler kube-proxy kubelet; do kubeconfig_for $k; done
}

# ---------------------------------------------------------------- host network
host_net() {
  mount --make-rshared / 2>/dev/null || true
  sysctl -qw net.ipv4.ip_forward=1
  modprobe br_netfilter 2>/dev/null || true
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] && sysctl -qw net.bridge.bridge-nf-call-iptables=1
  if ! ip link show "$NODE_IF" >/dev/null 2>&1; then
    # a dummy link, or an empty bridge on kernels without the dummy driver
    ip link add "$NODE_IF" type dummy 2>/dev/null || ip link add "$NODE_IF" type bridge
  fi
  ip addr show dev "$NODE_IF" | grep -q " $NODE_IP/" || ip addr add "$NODE_IP/32" dev "$NODE_IF"
  ip link set "$NODE_IF" up
  # Docker sets the FORWARD policy to DROP: accept pod traffic explicitly.
  local dir
  for dir in -s -d; do
    iptables -C FORWARD $dir "$POD_CIDR" -m comment --comment ringlb-local -j ACCEPT 2>/dev/null \
      || iptables -I FORWARD 1 $dir "$POD_CIDR" -m comment --comment ringlb-local -j ACCEPT
  done
}

host_net_cleanup() {
  local dir
  for dir in -s -d; do
    while iptables -D FORWARD $dir "$POD_CIDR" -m comment --comment ringlb-local -j ACCEPT 2>/dev/null; do :; done
  done
  # CNI bridge/ipMasq and portmap leftovers of our network
  local rule chain pat='name: \"'"$CNI_NAME"'\"'
  while read -r rule; do
    eval "iptables -t nat ${rule/-A/-D}" 2>/dev/null || true
  done < <(iptables -t nat -S POSTROUTING 2>/dev/null | grep -F -- "$pat" || true)
  for chain in $(iptables -t nat -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^CNI-/ {print $2}'); do
    # only chains no longer referenced by anything else of another CNI user
    iptables -t nat -S 2>/dev/null | grep -- "-j $chain\$" | grep -vq "^-A CNI-" && continue
    iptables -t nat -F "$chain" 2>/dev/null || true
  done
  for chain in $(iptables -t nat -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^CNI-/ {print $2}'); do
    iptables -t nat -S 2>/dev/null | grep -- "-j $chain\$" | grep -vq "^-A CNI-" && continue
    iptables -t nat -X "$chain" 2>/dev/null || true
  done
  # what kubelet leaves (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT) and
  # anything kube-proxy --cleanup missed
  local ipt table
  for ipt in iptables ip6tables; do
    command -v $ipt >/dev/null || continue
    for table in filter nat mangle; do
      while read -r rule; do
        eval "$ipt -t $table ${rule/-A/-D}" 2>/dev/null || true
      done < <($ipt -t $table -S 2>/dev/null | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j KUBE-' || true)
      for chain in $($ipt -t $table -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^KUBE-/ {print $2}'); do
        $ipt -t $table -F "$chain" 2>/dev/null || true
      done
      for chain in $($ipt -t $table -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^KUBE-/ {print $2}'); do
        $ipt -t $table -X "$chain" 2>/dev/null || true
      done
    done
  done
  ip link del "$CNI_BRIDGE" 2>/dev/null || true
  ip link del "$NODE_IF" 2>/dev/null || true
  rm -f /var/lib/cni/results/"$CNI_NAME"-* 2>/dev/null || true
  rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
}

# ---------------------------------------------------------------- images
pause_image() {
  docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1 && return 0
  log "building $PAUSE_IMAGE from hack/pause"
  local ctx; ctx="$(mktemp -d)"
  cc -Os -static -Wall -o "$ctx/pause" "$ROOT/hack/pause/pause.c"
  strip "$ctx/pause"
  cp "$ROOT/hack/pause/Dockerfile" "$ctx/"
  docker build -q -t "$PAUSE_IMAGE" "$ctx" >"$LOGS/pause-build.log" 2>&1 \
    || { cat "$LOGS/pause-build.log" >&2; die "building $PAUSE_IMAGE failed"; }
  rm -rf "$ctx"
}

load_images() { # IMG...
  [[ -S "$CTR_SOCK" ]] || die "the cluster's containerd is not running (scripts/local-cluster.sh up)"
  local img
  for img in "$@"; do
    docker image inspect "$img" >/dev/null 2>&1 || die "no docker image $img"
    log "loading $img into the cluster's containerd"
    docker save "$img" | ctr_ images import --all-platforms - >/dev/null
  done
}

# ---------------------------------------------------------------- components
put() { # FILE: write stdin to FILE only if the content differs (kube-proxy exits on a change)
  local tmp="$1.tmp.$$"
  cat > "$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

has_cap_sys_resource() { # bit 24 of the effective capability set
  local eff; eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
  (( (16#$eff >> 24) & 1 ))
}

write_configs() {
  # Without CAP_SYS_RESOURCE (as in this sandbox VM) runc cannot lower
  # oom_score_adj (pause wants -998) and every sandbox fails with
  # "can't get final child's PID from pipe": clamp to containerd's own value.
  local restrict_oom=false
  has_cap_sys_resource || restrict_oom=true
  mkdir -p "$CFG" "$STATE/cni/net.d" "$STATE/containerd" "$STATE/kubelet"
  put "$CFG/containerd.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$CTR_SOCK"
[ttrpc]
  address = "$STATE/containerd/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  restrict_oom_score_adj = $restrict_oom
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
  put "$STATE/cni/net.d/10-$CNI_NAME.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$STATE/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  put "$CFG/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $STATE/scheduler.kubeconfig
leaderElection:
  leaderElect: false
EOF
  put "$CFG/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
tlsCertFile: $PKI/kubelet-server.crt
tlsPrivateKeyFile: $PKI/kubelet-server.key
address: $NODE_IP
healthzBindAddress: 127.0.0.1
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://$CTR_SOCK
podCIDR: $POD_CIDR
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
rotateCertificates: false
serverTLSBootstrap: false
EOF
  put "$CFG/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/kube-proxy.kubeconfig
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
nodePortAddresses: ["$NODE_IP/32"]
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
EOF
}

apiserver_ready() {
  curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$API_PORT/readyz" | grep -q ok
}

start_control_plane() {
  mkdir -p "$STATE/etcd"; chmod 700 "$STATE/etcd"
  start etcd "$ETCD_BIN/etcd" --name default --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster default=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
    --unsafe-no-fsync --quota-backend-bytes 2147483648 --log-level warn
  wait_for etcd 60 curl -fsS http://127.0.0.1:2381/health

  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port=$API_PORT --advertise-address="$NODE_IP" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true --profiling=false --v=1
  wait_for kube-apiserver 120 apiserver_ready

  start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" --allocate-node-cidrs=false \
    --profiling=false --v=1

  CONF="$CFG/scheduler.yaml" start kube-scheduler "$K8S_BIN/kube-scheduler" --config="$CFG/scheduler.yaml" \
    --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --profiling=false --v=1
}

start_node() {
  CONF="$CFG/containerd.toml" start containerd containerd --config "$CFG/containerd.toml"
  wait_for containerd 60 ctr -a "$CTR_SOCK" version
  ctr_ images ls -q 2>/dev/null | grep -qx "docker.io/$PAUSE_IMAGE" || load_images "$PAUSE_IMAGE"

  CONF="$CFG/kubelet.yaml" start kubelet "$K8S_BIN/kubelet" --config="$CFG/kubelet.yaml" \
    --kubeconfig="$STATE/kubelet.kubeconfig" --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" --root-dir="$STATE/kubelet" --v=1

  CONF="$CFG/kube-proxy.yaml" start kube-proxy "$K8S_BIN/kube-proxy" --config="$CFG/kube-proxy.yaml" --v=1
}

node_ready() {
  [[ "$(kubectl get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

cmd_up() {
  local t0=$SECONDS
  mkdir -p "$CACHE" "$STATE" "$LOGS" "$PIDS"
  prereqs
  bin_dirs
  log "binaries (cached after the first build) ..."
  "$ROOT/scripts/k8s-build.sh" all
  ensure_docker
  pause_image
  gen_pki
  write_configs
  host_net
  start_control_plane
  start_node
  wait_for "node $NODE_NAME Ready" 180 node_ready
  wait_for "service account default/default" 120 kubectl -n default get serviceaccount default
  mkdir -p "$STATE/bin"; ln -sf "$K8S_BIN/kubectl" "$STATE/bin/kubectl"
  log "cluster up in $((SECONDS - t0))s; kubectl: $STATE/bin/kubectl"
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
  echo "export PATH=$STATE/bin:\$PATH"
}

# ---------------------------------------------------------------- down
remove_pods() {
  [[ -S "$CTR_SOCK" ]] || return 0
  ctr -a "$CTR_SOCK" version >/dev/null 2>&1 || return 0
  local c netns=() ns
  # remember the pod network namespaces before the sandboxes go
  for c in $(ctr_ containers ls -q 2>/dev/null); do
    ns="$(ctr_ containers info "$c" 2>/dev/null | grep -o '"/var/run/netns/[^"]*"\|"/run/netns/[^"]*"' | tr -d '"' | head -1 || true)"
    [[ -n "$ns" ]] && netns+=("$ns")
  done
  for c in $(ctr_ containers ls -q 2>/dev/null); do rm -f /var/lib/cni/results/*-"$c"-* 2>/dev/null || true; done
  for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true; done
  sleep 1
  for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$c" >/dev/null 2>&1 || true; done
  for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
  # shims of our containerd that outlived their tasks (matched by its socket address)
  local pid
  for pid in $(pgrep -f "containerd-shim.*-address $CTR_SOCK\$" || true); do kill -KILL "$pid" 2>/dev/null || true; done
  for ns in $(printf '%s\n' "${netns[@]}" | sort -u); do
    umount "$ns" 2>/dev/null || true; rm -f "$ns"
  done
}

drain_pods() { # let the kubelet tear pods down properly (CNI DEL, hostports) first
  running kubelet kubelet && apiserver_ready 2>/dev/null || return 0
  log "deleting all pods"
  kubectl delete pods --all-namespaces --all --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  local i
  for ((i = 0; i < 15; i++)); do
    [[ -z "$(ctr_ tasks ls -q 2>/dev/null)" ]] && break
    sleep 1
  done
}

unmount_state() {
  local m
  for m in $(awk -v s="$STATE/" 'index($2, s) == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

cmd_down() {
  [[ -d "$STATE" ]] || { log "nothing to do ($STATE does not exist)"; return 0; }
  bin_dirs
  drain_pods || true
  stop kube-proxy 10
  [[ -x "$K8S_BIN/kube-proxy" ]] && "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  stop kubelet 20
  remove_pods
  stop containerd 20
  stop kube-scheduler 10
  stop kube-controller-manager 10
  stop kube-apiserver 20
  stop etcd 20
  stop dockerd 30
  host_net_cleanup
  unmount_state
  if awk -v s="$STATE/" 'index($2, s) == 1 {f=1} END {exit !f}' /proc/self/mounts; then
    die "mounts remain under $STATE; not removing it"
  fi
  rm -rf --one-file-system "$STATE"
  log "down: stopped and removed $STATE"
}

cmd_status() {
  local n pid
  for n in dockerd etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    pid="$(pid_of $n 2>/dev/null || true)"
    if running "$n" "$n"; then printf '%-24s running (pid %s)\n' "$n" "$pid"
    else printf '%-24s stopped\n' "$n"; fi
  done
  if [[ -s "$KUBECONFIG_ADMIN" ]]; then
    bin_dirs
    kubectl get nodes -o wide 2>/dev/null || true
  fi
}

# What a failed CI run needs to be understood: cluster state, operator logs, component logs.
cmd_diagnose() {
  cmd_status
  [[ -s "$KUBECONFIG_ADMIN" ]] || return 0
  bin_dirs
  export KUBECONFIG="$KUBECONFIG_ADMIN"
  kubectl get lbrs,pods,deploy,svc -A -o wide 2>&1 || true
  kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -40 || true
  kubectl -n ringlb-system logs deploy/ringlb-operator --tail=60 2>&1 || true
  local f
  for f in "$LOGS"/*.log; do
    [[ -e "$f" ]] || continue
    echo "--- tail of $f"
    tail -n 15 "$f"
  done
}

case "${1:-}" in
  up) cmd_up ;;
  diagnose) cmd_diagnose ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kubeconfig) echo "$KUBECONFIG_ADMIN" ;;
  bin-dir) echo "$STATE/bin" ;;
  load-images) shift; (($#)) || die "usage: $0 load-images IMG..."; load_images "$@" ;;
  docker) mkdir -p "$STATE" "$LOGS" "$PIDS"; ensure_docker ;;
  *) echo "usage: $0 up|down|status|diagnose|kubeconfig|bin-dir|load-images IMG...|docker" >&2; exit 2 ;;
esac
