#!/usr/bin/env bash
# Install what ciliumlite needs from Debian (12, bookworm) and prepare the kernel mounts.
#
#   sudo scripts/install-system-deps.sh          install what is missing, mount bpffs/cgroup2
#   scripts/install-system-deps.sh --check       only check (no root needed); exit 1 if not ready
#
# Idempotent and quiet: when everything is there it prints nothing and takes well under a second.
# It only runs `apt-get update` + `apt-get install` when a package is missing.
set -euo pipefail

PACKAGES=(
  clang llvm libbpf-dev libbpf1 bpftool linux-libc-dev  # build the BPF objects
  cmake make                                            # the build
  iproute2 ethtool tcpdump iptables nftables            # the lab: namespaces, veths, qdiscs
  iperf3 sockperf bird2 iputils-ping procps                                # traffic, latency, BGP
  etcd-server etcd-client                               # the kvstore (tests start their own, on loopback)
  podman runc containernetworking-plugins busybox-static  # a real container runtime calling the CNI plugin
)

CHECK_ONLY=0
case "${1:-}" in
  --check) CHECK_ONLY=1 ;;
  "") ;;
  -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
  *) echo "install-system-deps: unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

say() { echo "install-system-deps: $*"; }
die() { echo "install-system-deps: error: $*" >&2; exit 1; }

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# fstype of the mount at exactly $1 ("" if nothing is mounted there)
fstype_at() {
  awk -v p="$1" '$2 == p { t = $3 } END { print t }' /proc/mounts
}

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done
# `python3 -m venv` needs ensurepip; pyenv/upstream Pythons have it, Debian's needs python3-venv.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1 && ! installed python3-venv; then
  missing+=(python3-venv)
fi

need_bpffs=0
[ "$(fstype_at /sys/fs/bpf)" = "bpf" ] || need_bpffs=1

# cgroup2: unified at /sys/fs/cgroup (pure v2) or hybrid at /sys/fs/cgroup/unified.
need_cgroup2=0
if [ "$(fstype_at /sys/fs/cgroup)" != "cgroup2" ] && [ "$(fstype_at /sys/fs/cgroup/unified)" != "cgroup2" ]; then
  need_cgroup2=1
fi

if [ ${#missing[@]} -eq 0 ] && [ $need_bpffs -eq 0 ] && [ $need_cgroup2 -eq 0 ]; then
  exit 0
fi

if [ $CHECK_ONLY -eq 1 ]; then
  [ ${#missing[@]} -eq 0 ] || say "missing packages: ${missing[*]}"
  [ $need_bpffs -eq 0 ] || say "bpffs is not mounted at /sys/fs/bpf"
  [ $need_cgroup2 -eq 0 ] || say "no cgroup2 at /sys/fs/cgroup or /sys/fs/cgroup/unified"
  say "run: sudo $0"
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  die "must run as root (it installs packages and mounts bpffs/cgroup2). Run: sudo $0"
fi

if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "apt-get not found; this script supports Debian 12 (bookworm). Missing: ${missing[*]}"
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packages such as bird2 and iperf3 ship daemons; never let the install start them (they would
  # run in the root network namespace). Only add the standard policy-rc.d guard if there is none.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# temporary, from ciliumlite scripts/install-system-deps.sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  log=$(mktemp /tmp/ciliumlite-apt.XXXXXX)
  if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "apt-get failed (full log: $log)"
  fi
  rm -f "$log"
  still=()
  for p in "${missing[@]}"; do installed "$p" || still+=("$p"); done
  [ ${#still[@]} -eq 0 ] || die "still missing after apt-get install: ${still[*]}"
  say "installed ${#missing[@]} package(s)"
fi

if [ $need_bpffs -eq 1 ]; then
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf || die "could not mount bpffs at /sys/fs/bpf"
  say "mounted bpffs at /sys/fs/bpf"
fi

if [ $need_cgroup2 -eq 1 ]; then
  mkdir -p /sys/fs/cgroup/unified 2>/dev/null ||
    die "cannot create /sys/fs/cgroup/unified to mount cgroup2 (is /sys/fs/cgroup a read-only cgroup v1 mount?)"
  mount -t cgroup2 none /sys/fs/cgroup/unified || die "could not mount cgroup2 at /sys/fs/cgroup/unified"
  say "mounted cgroup2 at /sys/fs/cgroup/unified"
fi

# Sanity: what the build needs must now be there.
command -v clang >/dev/null || die "clang is still not on PATH"
[ -f /usr/include/bpf/bpf_helpers.h ] || die "/usr/include/bpf/bpf_helpers.h is still missing (libbpf-dev)"
