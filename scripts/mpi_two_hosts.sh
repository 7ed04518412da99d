#!/usr/bin/env bash
# "Two machines" on one box: two network namespaces joined by a veth pair, addresses from
# 198.18.0.0/15 (RFC 2544 benchmarking, never routed out), one MPI rank in each, talking TCP
# only over that link, as two hosts on a LAN would. Needs root (ip netns) and the MPI build.
#
#   scripts/mpi_two_hosts.sh                         # the tiny fixture, 6 steps, into /tmp
#   scripts/mpi_two_hosts.sh --rate 1gbit            # the link shaped to 1 Gbit/s (tc tbf)
#   scripts/mpi_two_hosts.sh -- finetune --config X.yml ...   # any lora arguments
#
# No sshd: mpirun starts the remote rank through an rsh-agent stand-in that enters the other
# namespace (with its own hostname, since Open MPI tells hosts apart by name). The data,
# model and binary paths must be the same on both "hosts" (they share this filesystem).
# Pitfalls this avoids: --bind-to none (each namespace would otherwise pin its rank to core
# 0), interfaces named by CIDR (the veth has a different name in each namespace), hostnames
# without '_'. Everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=""
if [ "${1:-}" = "--rate" ]; then rate=$2; shift 2; fi
[ "${1:-}" = "--" ] && shift
bin=${LORA_MPI_BINARY:-$PWD/.build-mpi/release/lora}
[ "$(id -u)" -eq 0 ] || { echo "mpi_two_hosts.sh: needs root (ip netns)" >&2; exit 1; }
[ -x "$bin" ] || { echo "mpi_two_hosts.sh: $bin missing; build it: swift build -c release --traits MPI --scratch-path .build-mpi --product lora" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "mpi_two_hosts.sh: mpirun missing; scripts/install_deps.sh installs openmpi-bin" >&2; exit 1; }

work=$(mktemp -d /tmp/lora-2hosts.XXXXXX)
cleanup() { ip netns del lora_h1 2>/dev/null || true; ip netns del lora_h2 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cleanup; work=$(mktemp -d /tmp/lora-2hosts.XXXXXX)

ip netns add lora_h1; ip netns add lora_h2
ip link add veth_h1 type veth peer name veth_h2
ip link set veth_h1 netns lora_h1; ip link set veth_h2 netns lora_h2
ip -n lora_h1 addr add 198.18.0.1/24 dev veth_h1; ip -n lora_h2 addr add 198.18.0.2/24 dev veth_h2
for n in 1 2; do ip -n lora_h$n link set lo up; ip -n lora_h$n link set veth_h$n up; done
if [ -n "$rate" ]; then
  for n in 1 2; do ip netns exec lora_h$n tc qdisc add dev veth_h$n root tbf rate "$rate" burst 256kb latency 50ms; done
fi

# rsh-agent stand-in: `agent HOST CMD...` runs CMD in HOST's namespace under HOST's name.
cat > "$work/nsagent.sh" <<'AGENT'
#!/bin/sh
host=$1; shift
case "$host" in 198.18.0.1|lora-h1) n=1 ;; 198.18.0.2|lora-h2) n=2 ;; *) echo "nsagent: unknown host $host" >&2; exit 1 ;; esac
exec ip netns exec lora_h$n unshare --uts sh -c "hostname lora-h$n; $*"
AGENT
chmod +x "$work/nsagent.sh"

fixture=0
if [ $# -eq 0 ]; then
  fixture=1
  f=$PWD/Tests/Fixtures
  set -- finetune --base-model "$f/tiny-gqa" --data-path "$f/records.json" --output-dir "$work/out" \
    --batch-size 4 --micro-batch-size 1 --val-set-size 2 --max-steps 6 --logging-steps 1 --cutoff-len 64 \
    --load-8bit false --threads 1
fi
ip netns exec lora_h1 unshare --uts sh -c 'hostname lora-h1; exec "$@"' sh \
  mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 --host 198.18.0.1:1,198.18.0.2:1 --display-map \
    --mca plm_rsh_agent "$work/nsagent.sh" --mca btl tcp,self \
    --mca btl_tcp_if_include 198.18.0.0/24 --mca oob_tcp_if_include 198.18.0.0/24 \
    "$bin" "$@"
if [ $fixture = 1 ]; then
  # The same run in one process must give the same adapter, bit for bit.
  "$bin" "$@" >/dev/null 2>&1 --output-dir "$work/single"
  cmp "$work/out/adapter_model.safetensors" "$work/single/adapter_model.safetensors"
  echo "mpi_two_hosts.sh: 2 hosts give the single-process adapter bit for bit"
fi
