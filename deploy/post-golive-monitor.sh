#!/usr/bin/env bash
# The runbook's post-go-live monitor, kept working on top of jarvis-monitor:
#   --once                 collect and evaluate once, print a table; exit 0/1/2/3 (Nagios)
#   --report [YYYY-MM-DD]  write the daily report now (default: today so far)
#   --continuous [SECONDS] run the checks every SECONDS (default 300) until Ctrl-C
# JARVIS_MONITOR names the command (default: jarvis-monitor on PATH, else ./.venv/bin/jarvis-monitor);
# JARVIS_CONFIG names the config file, as for the command itself.
set -uo pipefail

monitor="${JARVIS_MONITOR:-}"
if [ -z "$monitor" ]; then
    if command -v jarvis-monitor >/dev/null; then
        monitor=jarvis-monitor
    else
        monitor="$(dirname "$0")/../.venv/bin/jarvis-monitor"
    fi
fi

usage() {
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

case "${1:---once}" in
--once)
    exec "$monitor" once
    ;;
--report)
    if [ -n "${2:-}" ]; then exec "$monitor" report --date "$2"; fi
    exec "$monitor" report
    ;;
--continuous)
    every="${2:-300}"
    case "$every" in '' | *[!0-9]*) echo "post-golive-monitor: --continuous takes whole seconds, not '$every'" >&2; exit 2 ;; esac
    [ "$every" -ge 1 ] || { echo "post-golive-monitor: --continuous needs at least 1 second" >&2; exit 2; }
    trap 'exit 0' INT TERM
    while :; do
        date -u '+%Y-%m-%dT%H:%M:%SZ'
        "$monitor" once
        sleep "$every" &
        wait $!
    done
    ;;
-h | --help) usage ;;
*) echo "post-golive-monitor: unknown option '$1'" >&2; usage ;;
esac
