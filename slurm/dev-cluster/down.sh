#!/usr/bin/env bash
# Stop the dev cluster started by up.sh (by the PIDs it recorded) and delete its state directory. Idempotent.
#
#   slurm/dev-cluster/down.sh [STATE_DIR]      # default $XTF_SLURM_DIR or /tmp/xtf-slurm
set -uo pipefail

S=$(realpath -m "${1:-${XTF_SLURM_DIR:-/tmp/xtf-slurm}}")
[ -d "$S" ] || { echo "[dev-cluster] nothing at $S"; exit 0; }
[ -f "$S/etc/slurm.conf" ] || [ -d "$S/pids" ] || { echo "[dev-cluster] $S is not a dev-cluster state dir" >&2; exit 1; }
export SLURM_CONF="$S/etc/slurm.conf"

# Jobs first, while slurmd is alive to kill their steps.
if [ -s "$S/pids/slurmctld" ] && kill -0 "$(cat "$S/pids/slurmctld")" 2>/dev/null; then
  scancel --user="$(id -un)" >/dev/null 2>&1
  for _ in $(seq 40); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.25; done
fi
stop() {  # stop NAME...: TERM them together, wait (KILL after 15 s), forget their PIDs
  local pids=() name pid
  for name in "$@"; do
    [ -s "$S/pids/$name" ] && pid=$(cat "$S/pids/$name") && kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$S/pids/$name"
  done
  for _ in $(seq 150); do
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && break 1; pid=; done
    [ -z "${pid:-}" ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
}
stop slurmd slurmctld   # in dependency order: they report to slurmdbd, which needs MariaDB; all use munged
stop slurmdbd
stop munged mariadbd
rm -rf "$S"
echo "[dev-cluster] down: $S removed"
