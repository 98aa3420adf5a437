#!/usr/bin/env bash
# scontrol that answers at once when no SLURM controller is listening.
#
# Every `snakemake` start imports the slurm executor plugin, which runs `scontrol show config`
# (plugin 2.8.0, for its help text). With slurm-client and a slurm.conf installed but no slurmctld
# running (the test cluster of `make setup` when it is stopped), scontrol retries the connection
# once a second for MessageTimeout (10) attempts: ~9 s per start. This wrapper first tries the
# controller's TCP port (SlurmctldHost / SlurmctldPort of $SLURM_CONF or /etc/slurm/slurm.conf);
# if none answers it fails as scontrol would, without the wait. Otherwise, or without a readable
# slurm.conf (configless sites), it runs the real scontrol unchanged.
# `make setup` installs it as .venv/bin/scontrol: first on PATH once the venv is activated, and in
# the Makefile's own snakemake calls.
set -u
self=$(cd "$(dirname "$0")" && pwd -P)/$(basename "$0")
real=""
IFS=: read -ra dirs <<<"${PATH:-}"
for d in "${dirs[@]}"; do
	c="$d/scontrol"
	if [ -n "$d" ] && [ -x "$c" ] && [ "$(cd "$d" && pwd -P)/scontrol" != "$self" ]; then
		real=$c
		break
	fi
done
[ -n "$real" ] || { echo "scontrol: not installed (only qcbench's wrapper is on PATH)" >&2; exit 127; }

case "${1:-}" in
-V | --version | --help | -h | version | help) exec "$real" "$@" ;;
esac
case "${*}" in
"show hostnames"* | "show hostlist"*) exec "$real" "$@" ;;
esac

conf=${SLURM_CONF:-/etc/slurm/slurm.conf}
if [ -r "$conf" ]; then
	hosts=$(sed -n -E 's/^[[:space:]]*(SlurmctldHost|ControlMachine)[[:space:]]*=[[:space:]]*([^[:space:]#]+).*/\2/Ip' "$conf")
	port=$(sed -n -E 's/^[[:space:]]*SlurmctldPort[[:space:]]*=[[:space:]]*([0-9]+).*/\1/Ip' "$conf" | head -n 1)
	port=${port:-6817}
	if [ -n "$hosts" ]; then
		for h in $hosts; do
			case $h in *"("*")"*) h=${h#*(} && h=${h%)*} ;; esac # name(address): the address
			if timeout 2 bash -c "exec 3<>/dev/tcp/$h/$port" 2>/dev/null; then
				exec "$real" "$@"
			fi
		done
		echo "scontrol: no SLURM controller listens at $(echo $hosts) port $port ($conf); not waiting for it" >&2
		exit 1
	fi
fi
exec "$real" "$@"
