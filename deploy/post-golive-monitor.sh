#!/usr/bin/env bash
# The runbook's post-go-live monitor, kept working on top of jarvis-monitor:
#   --once                 collect and evaluate once, print a table; exit 0/1/2/3 (Nagios)
#   --report [YYYY-MM-DD]  write the daily report now (default: today so far)
#   --continuous [SECONDS] run the whole stack in the foreground (agents every SECONDS, default 300;
#                          the evaluator, Slack, reports) until Ctrl-C or SIGTERM: `up --interval`
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
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
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
    # exec: systemd's SIGTERM (and Ctrl-C) reach `up` itself, which stops every part cleanly
    exec "$monitor" up --interval "${every}s"
    ;;
-h | --help) usage ;;
*) echo "post-golive-monitor: unknown option '$1'" >&2; usage ;;
esac
