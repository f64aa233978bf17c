# shellcheck shell=bash
# Shared helpers for scripts/test and scripts/try: logging, bounded waiting and
# phase timing. Sourced, never executed; expects `set -euo pipefail` from the
# caller.

# How messages name the script: scripts/test, scripts/try.
SCRIPT_NAME=scripts/${0##*/}

log() { printf '==> %s\n' "$*" >&2; }

die() {
    printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
    exit 1
}

# wait_until SECONDS WHAT CMD...: poll CMD every 0.2 s until it succeeds.
# A bounded loop instead of a fixed sleep: returns as soon as the component is
# ready, and fails (status 1) after SECONDS with WHAT in the message.
wait_until() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            printf '%s: timed out after %ss waiting for %s\n' "$SCRIPT_NAME" "$timeout" "$what" >&2
            return 1
        fi
        sleep 0.2
    done
}

# Print the last lines of a log file to stderr, to explain a failed start.
show_log_tail() {
    local file=$1
    if [[ -f $file ]]; then
        printf -- '--- last lines of %s ---\n' "$file" >&2
        tail -n 30 "$file" >&2
        printf -- '--- end of %s ---\n' "$file" >&2
    fi
}

# 32 random bytes as 64 hex characters (rpc secrets).
random_hex32() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

# Phase timing: `phase NAME COMMAND...` runs COMMAND and records its elapsed
# seconds, so a fresh-machine run can be compared with a warm one. COMMAND runs
# as a plain statement (not inside `||` or `if`), so `set -e` still stops the
# script at the first failing line; the EXIT trap (timings_on_exit) then marks
# the phase that was running as failed and prints the summary.
PHASE_NAMES=()
PHASE_SECONDS=()
CURRENT_PHASE=
CURRENT_PHASE_START=

record_phase() {
    PHASE_NAMES+=("$CURRENT_PHASE$1")
    PHASE_SECONDS+=("$(awk -v a="$CURRENT_PHASE_START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')")
    CURRENT_PHASE=
}

phase() {
    CURRENT_PHASE=$1
    CURRENT_PHASE_START=$EPOCHREALTIME
    shift
    log "phase: $CURRENT_PHASE"
    "$@"
    record_phase ""
}

timings_on_exit() {
    local status=$?
    if [[ -n $CURRENT_PHASE ]]; then
        record_phase " (FAILED)"
    fi
    print_timings
    return "$status"
}

print_timings() {
    local i total=0
    printf '\n%-30s %8s\n' 'phase' 'seconds' >&2
    for i in "${!PHASE_NAMES[@]}"; do
        printf '%-30s %8s\n' "${PHASE_NAMES[$i]}" "${PHASE_SECONDS[$i]}" >&2
        total=$(awk -v a="$total" -v b="${PHASE_SECONDS[$i]}" 'BEGIN { printf "%.1f", a + b }')
    done
    printf '%-30s %8s\n' 'total' "$total" >&2
}
