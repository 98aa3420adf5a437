#!/usr/bin/env bash
# A single-node SLURM cluster on localhost for the tests (no systemd; run as root).
#   tests/slurm/cluster.sh conf            write /etc/slurm/slurm.conf from slurm.conf.in if absent
#   tests/slurm/cluster.sh start           start munged, slurmctld, slurmd unless running;
#                                          prints "started <daemon> <pid>" for each one it started
#   tests/slurm/cluster.sh stop [DAEMON…]  stop the named daemons (default: all three) by pid file
#   tests/slurm/cluster.sh status          sinfo / squeue
# Packages (installed by `make setup`): slurmctld slurmd slurm-client munge.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CONF="${SLURM_CONF:-/etc/slurm/slurm.conf}"
declare -A PIDFILE=([munged]=/run/munge/munged.pid [slurmctld]=/run/slurm/slurmctld.pid [slurmd]=/run/slurm/slurmd.pid)

running() { [ -s "${PIDFILE[$1]}" ] && kill -0 "$(cat "${PIDFILE[$1]}")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS COMMAND…: poll every 0.2 s
  local n=$(( $1 * 5 )); shift
  for _ in $(seq "$n"); do "$@" && return 0; sleep 0.2; done
  return 1
}

write_conf() {
  [ -s "$CONF" ] && return 0
  local ncpu mem
  ncpu=$(nproc)
  mem=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 1024 ))
  mkdir -p "$(dirname "$CONF")"
  sed -e "s/@NCPU@/$ncpu/" -e "s/@MEM@/$mem/" "$HERE/slurm.conf.in" >"$CONF"
  echo "wrote $CONF (CPUs=$ncpu RealMemory=$mem)"
}

node_idle() { sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

start() {
  for bin in munged slurmctld slurmd sinfo sbatch; do
    command -v "$bin" >/dev/null || PATH="$PATH:/usr/sbin" command -v "$bin" >/dev/null || {
      echo "missing $bin: apt-get install --no-install-recommends slurmctld slurmd slurm-client munge" >&2; exit 3; }
  done
  [ "$(id -u)" = 0 ] || { echo "cluster.sh start must run as root" >&2; exit 3; }
  write_conf >&2
  if ! running munged; then
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    wait_for 10 running munged
    echo "started munged $(cat "${PIDFILE[munged]}")"
  fi
  mkdir -p /var/spool/slurm/ctld /var/spool/slurm/d /var/log/slurm /run/slurm
  chown -R slurm:slurm /var/spool/slurm /var/log/slurm /run/slurm
  if ! running slurmctld; then
    /usr/sbin/slurmctld
    wait_for 10 running slurmctld
    echo "started slurmctld $(cat "${PIDFILE[slurmctld]}")"
  fi
  if ! running slurmd; then
    local node
    node=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' "$CONF" | head -1)
    if [ -n "$node" ] && [ "$node" != "$(hostname -s)" ]; then /usr/sbin/slurmd -N "$node"; else /usr/sbin/slurmd; fi
    wait_for 10 running slurmd
    echo "started slurmd $(cat "${PIDFILE[slurmd]}")"
  fi
  if ! wait_for 30 node_idle; then
    echo "the node did not become idle:" >&2; sinfo >&2 || true
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    exit 1
  fi
}

stop() {
  local names=("$@")
  [ ${#names[@]} -gt 0 ] || names=(slurmd slurmctld munged)
  for name in "${names[@]}"; do
    [ -n "${PIDFILE[$name]:-}" ] || { echo "unknown daemon $name" >&2; exit 2; }
    if running "$name"; then
      local pid
      pid=$(cat "${PIDFILE[$name]}")
      kill "$pid"
      wait_for 15 bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid"
      echo "stopped $name $pid"
    fi
  done
}

case "${1:-}" in
  conf) write_conf ;;
  start) start ;;
  stop) shift; stop "$@" ;;
  status) sinfo; squeue --states=all ;;
  *) sed -n '2,8p' "$0" >&2; exit 2 ;;
esac
