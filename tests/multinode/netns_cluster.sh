# A test cluster on one machine (sourced by multinode_test.sh): N network namespaces ("nodes")
# joined through a bridge in a switch namespace, addresses of their own (198.18.0.0/24, the
# block set aside for network tests), and an rsh agent (netns-rsh) through which Open MPI starts
# its daemons inside them. Each node also gets its own hostname and mount namespace when a
# process starts there, so a node can be given a different view of a path (a missing or
# different model directory). Traffic stays on the links made here: nothing is routed out.
#
#   cluster_up WORK N      make the nodes; writes WORK/hostfile (node 0: 1 slot; others: CLUSTER_SLOTS)
#   cluster_down           kill every process in the nodes and delete them (also on EXIT)
#   on_node K CMD...       run CMD inside node K
#   link_down K / link_up K            cut / restore node K's cable at the switch
#   link_degrade K         make node K's link slow and lossy (both directions); link_drops K
# After cluster_up: CLUSTER_NETWORK (the subnet), CLUSTER_ADDR[K], FLOTILLA_NETNS_MAP (read by
# netns-rsh), FLOTILLA_NETNS_VIEW (optional "ADDR:TARGET:SOURCE;..." bind mounts per node).

CLUSTER_NETWORK=198.18.0.0/24
CLUSTER_SLOTS=${CLUSTER_SLOTS:-2}
cluster_id=""
cluster_nodes=0
declare -a CLUSTER_ADDR=()

cluster_skip() {  # exits 77, which CTest reports as skipped
  echo "SKIP: $*"
  exit 77
}

cluster_up() {
  local work=$1 n=$2 k
  command -v ip >/dev/null || cluster_skip "iproute2 ('ip') is not installed"
  command -v unshare >/dev/null || cluster_skip "util-linux 'unshare' is not installed"
  cluster_id=fl$(printf '%04x' $(( (RANDOM << 1 ^ $$) & 0xffff )))
  ip netns add "$cluster_id-sw" 2>/dev/null ||
    cluster_skip "network namespaces cannot be created here (ip netns add needs CAP_SYS_ADMIN)"
  trap cluster_down EXIT
  ip -n "$cluster_id-sw" link add br0 type bridge || return 1
  ip -n "$cluster_id-sw" link set br0 up || return 1
  : >"$work/hostfile"
  FLOTILLA_NETNS_MAP=$work/netns.map
  : >"$FLOTILLA_NETNS_MAP"
  for k in $(seq 0 $((n - 1))); do
    local ns=$cluster_id-n$k addr=198.18.0.$((k + 1))
    ip netns add "$ns" || return 1
    ip link add "${cluster_id}a$k" type veth peer name "${cluster_id}b$k" || return 1
    ip link set "${cluster_id}a$k" netns "$ns" name eth0 || return 1
    ip link set "${cluster_id}b$k" netns "$cluster_id-sw" || return 1
    ip -n "$cluster_id-sw" link set "${cluster_id}b$k" master br0 up || return 1
    ip -n "$ns" addr add "$addr/24" dev eth0 || return 1
    ip -n "$ns" link set eth0 up || return 1
    ip -n "$ns" link set lo up || return 1
    CLUSTER_ADDR[$k]=$addr
    echo "$addr $ns" >>"$FLOTILLA_NETNS_MAP"
    # Node 0 is the head node: one slot (the coordinator, or worker rank 0).
    echo "$addr slots=$([ "$k" -eq 0 ] && echo 1 || echo "$CLUSTER_SLOTS")" >>"$work/hostfile"
  done
  cluster_nodes=$n
  export FLOTILLA_NETNS_MAP
  export FLOTILLA_NETNS_VIEW=${FLOTILLA_NETNS_VIEW:-}
}

cluster_down() {
  [ -n "$cluster_id" ] || return 0
  local ns pid
  for ns in $(ip netns list | awk '{print $1}' | grep "^$cluster_id-"); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
  done
  sleep 0.2
  for ns in $(ip netns list | awk '{print $1}' | grep "^$cluster_id-"); do
    ip netns del "$ns" 2>/dev/null
  done
  cluster_id=""
}

on_node() {  # on_node K CMD...
  local k=$1
  shift
  ip netns exec "$cluster_id-n$k" "$@"
}

# Processes still alive inside the nodes (after a job should have ended).
cluster_pids() {
  local k
  for k in $(seq 0 $((cluster_nodes - 1))); do ip netns pids "$cluster_id-n$k" 2>/dev/null; done
}

link_down() { ip -n "$cluster_id-sw" link set "${cluster_id}b$1" down; }
link_up() { ip -n "$cluster_id-sw" link set "${cluster_id}b$1" up; }
# Makes node K's link slow and lossy in both directions: tc netem (delay, jitter, random loss)
# where the kernel has it, else a token bucket (tbf: a 2 Mbit/s link whose short queue drops what
# overflows it). Prints which, and link_drops K prints the packets dropped so far.
link_degrade() {
  local k=$1 dev
  for side in "n$k eth0" "sw ${cluster_id}b$k"; do
    set -- $side
    if ip netns exec "$cluster_id-$1" tc qdisc replace dev "$2" root netem delay 20ms 5ms \
      loss 1% 2>/dev/null; then
      dev=netem
    else
      ip netns exec "$cluster_id-$1" tc qdisc replace dev "$2" root tbf rate 2mbit burst 4kb \
        limit 6kb || return 1
      dev=tbf
    fi
  done
  [ "$dev" = netem ] && echo "netem: 20 ms +- 5 ms delay, 1% loss each way" ||
    echo "tbf (this kernel has no netem): 2 Mbit/s each way, 6 KB queue, overflow dropped"
}
link_drops() {
  local k=$1
  { ip netns exec "$cluster_id-n$k" tc -s qdisc show dev eth0
    ip netns exec "$cluster_id-sw" tc -s qdisc show dev "${cluster_id}b$k"; } |
    grep -o 'dropped [0-9]*' | awk '{n += $2} END {print n + 0}'
}
