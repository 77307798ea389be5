#!/usr/bin/env bash
# /var/holoscan/tools: entrypoint of the nsn2n-denoise MONAI Application Package (MAP spec 1.0).
#
# Mirrors the "self-describing" tools script that `monai-deploy package` (holoscan-cli 4.2.0) puts into
# every MAP, without its jq dependency (JSON is read with python3) and with a working signal hand-off:
#
#   tools show [app|pkg]  print the manifests (/etc/holoscan/app.json, /etc/holoscan/pkg.json)
#   tools env             print the MAP environment (HOLOSCAN_*, and NSN2N_* parameter overrides)
#   tools extract         copy app/config/models/docs into what is mounted under /var/run/holoscan/export
#   tools help            usage
#   tools [ARGS...]       anything else: run the app.json "command" with ARGS appended; exit with its code
#
# Every root path can be overridden through the environment (tests point them at a temporary folder):
# HOLOSCAN_APP_MANIFEST_PATH, HOLOSCAN_PKG_MANIFEST_PATH, HOLOSCAN_APPLICATION, HOLOSCAN_CONFIG_PATH,
# HOLOSCAN_MODEL_PATH, HOLOSCAN_DOCS_PATH (or HOLOSCAN_DOCS), HOLOSCAN_EXPORT_ROOT.
set -uo pipefail

export HOLOSCAN_APPLICATION="${HOLOSCAN_APPLICATION:-/opt/holoscan/app}"
export HOLOSCAN_INPUT_PATH="${HOLOSCAN_INPUT_PATH:-/var/holoscan/input}"
export HOLOSCAN_OUTPUT_PATH="${HOLOSCAN_OUTPUT_PATH:-/var/holoscan/output}"
export HOLOSCAN_WORKDIR="${HOLOSCAN_WORKDIR:-/var/holoscan}"
export HOLOSCAN_MODEL_PATH="${HOLOSCAN_MODEL_PATH:-/opt/holoscan/models}"
export HOLOSCAN_CONFIG_PATH="${HOLOSCAN_CONFIG_PATH:-/var/holoscan/app.yaml}"
export HOLOSCAN_APP_MANIFEST_PATH="${HOLOSCAN_APP_MANIFEST_PATH:-/etc/holoscan/app.json}"
export HOLOSCAN_PKG_MANIFEST_PATH="${HOLOSCAN_PKG_MANIFEST_PATH:-/etc/holoscan/pkg.json}"
export HOLOSCAN_DOCS_PATH="${HOLOSCAN_DOCS_PATH:-${HOLOSCAN_DOCS:-/opt/holoscan/docs}}"
export HOLOSCAN_DOCS="${HOLOSCAN_DOCS:-${HOLOSCAN_DOCS_PATH}}"
export HOLOSCAN_LOGS_PATH="${HOLOSCAN_LOGS_PATH:-${HOLOSCAN_LOGS:-/var/holoscan/logs}}"
export HOLOSCAN_LOGS="${HOLOSCAN_LOGS:-${HOLOSCAN_LOGS_PATH}}"
HOLOSCAN_EXPORT_ROOT="${HOLOSCAN_EXPORT_ROOT:-/var/run/holoscan/export}"
# Holoscan wants a stack of at least 32 MiB (docker run --ulimit stack=67108864 sets it from outside).
MIN_STACK_KIB=32768

log() {
    printf '%s [%s] %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S')" "$1" "${*:2}" >&2
}

info() { log INFO "$@"; }
error() { log ERROR "$@"; }

# Print a JSON file pretty-printed (python3, else jq, else as is).
print_json() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -m json.tool "$1"
    elif command -v jq >/dev/null 2>&1; then
        jq . "$1"
    else
        cat "$1"
    fi
}

show_manifest() {
    local name="$1" path="$2"
    if [[ ! -f "$path" ]]; then
        error "$path does not exist"
        return 1
    fi
    echo "============================== ${name} =============================="
    print_json "$path"
}

cmd_show() {
    local what="${1:-all}" status=0
    case "$what" in
        all | "*")
            show_manifest app.json "$HOLOSCAN_APP_MANIFEST_PATH" || status=1
            show_manifest pkg.json "$HOLOSCAN_PKG_MANIFEST_PATH" || status=1
            ;;
        app) show_manifest app.json "$HOLOSCAN_APP_MANIFEST_PATH" || status=1 ;;
        pkg) show_manifest pkg.json "$HOLOSCAN_PKG_MANIFEST_PATH" || status=1 ;;
        *)
            error "unknown manifest '$what': use 'show', 'show app' or 'show pkg'"
            return 2
            ;;
    esac
    return "$status"
}

cmd_env() {
    env | grep -E '^(HOLOSCAN|NSN2N)_' | LC_ALL=C sort || true
}

# copy_tree SRC DEST: copy the contents of folder SRC into folder DEST (created if needed).
copy_tree() {
    local src="$1" dest="$2"
    if [[ ! -d "$src" ]]; then
        info "'$src' not found: nothing to copy to $dest"
        return 0
    fi
    mkdir -p "$dest" && cp -R "$src/." "$dest/"
}

# copy_file SRC DEST_DIR
copy_file() {
    local src="$1" dest="$2"
    if [[ ! -f "$src" ]]; then
        info "'$src' not found: not copied to $dest"
        return 0
    fi
    mkdir -p "$dest" && cp "$src" "$dest/"
}

extract_one() {
    local what="$1" dest="$2"
    if [[ ! -w "$dest" ]]; then
        error "cannot write to $dest: create the folder on the host first, writable by this container's user"
        return 1
    fi
    info "extracting $what to $dest"
    case "$what" in
        app) copy_tree "$HOLOSCAN_APPLICATION" "$dest" ;;
        config)
            copy_file "$HOLOSCAN_APP_MANIFEST_PATH" "$dest" \
                && copy_file "$HOLOSCAN_PKG_MANIFEST_PATH" "$dest" \
                && copy_file "$HOLOSCAN_CONFIG_PATH" "$dest"
            ;;
        models) copy_tree "$HOLOSCAN_MODEL_PATH" "$dest" ;;
        docs) copy_tree "$HOLOSCAN_DOCS_PATH" "$dest" ;;
    esac
}

cmd_extract() {
    local root="$HOLOSCAN_EXPORT_ROOT" part found=0 status=0
    if [[ ! -d "$root" ]]; then
        error "no volume mounted at $root: mount a host folder there, or one of its app/, config/, models/, docs/"
        return 1
    fi
    # Each mounted subfolder gets its part; with none mounted, the root gets all four.
    for part in app config models docs; do
        if [[ -d "$root/$part" ]]; then
            found=1
            extract_one "$part" "$root/$part" || status=1
        fi
    done
    if ((!found)); then
        if [[ ! -w "$root" ]]; then
            error "cannot write to $root: create the folder on the host first, writable by this container's user"
            return 1
        fi
        for part in app config models docs; do
            mkdir -p "$root/$part" || return 1
            extract_one "$part" "$root/$part" || status=1
        done
    fi
    return "$status"
}

cmd_help() {
    cat <<EOF
USAGE: /var/holoscan/tools [command] [arguments]...
nsn2n-denoise MONAI Application Package (MAP spec 1.0). Commands:
  (none) or app arguments   run the application: the app.json "command" plus the given arguments,
                            e.g. '-l DEBUG'; input ${HOLOSCAN_INPUT_PATH}, output ${HOLOSCAN_OUTPUT_PATH}
  show [app|pkg]            print app.json and/or pkg.json
  env                       print the HOLOSCAN_* environment and NSN2N_* parameter overrides
  extract                   copy files out of the package, into what is mounted under ${HOLOSCAN_EXPORT_ROOT}:
      ${HOLOSCAN_EXPORT_ROOT}/app      the application (${HOLOSCAN_APPLICATION})
      ${HOLOSCAN_EXPORT_ROOT}/config   app.json, pkg.json and the application configuration (app.yaml)
      ${HOLOSCAN_EXPORT_ROOT}/models   the models (${HOLOSCAN_MODEL_PATH})
      ${HOLOSCAN_EXPORT_ROOT}/docs     README and licences (${HOLOSCAN_DOCS_PATH})
      ${HOLOSCAN_EXPORT_ROOT}          all of the above (when no subfolder is mounted)
    Create the host folder first, writable by the container user (uid 1000 unless run with --user).
  help                      this text
Application parameters: environment variables NSN2N_<KEY>, e.g. -e NSN2N_MAX_STEPS=500 (see app.yaml).
EOF
}

# read_command: print the app.json "command" (a string holding a JSON array) one argument per NUL.
read_command() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$HOLOSCAN_APP_MANIFEST_PATH" <<'PY'
import json
import sys

with open(sys.argv[1], encoding="utf-8") as f:
    command = json.load(f)["command"]
argv = json.loads(command) if isinstance(command, str) else command
if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
    raise SystemExit(f"app.json command must be a non-empty JSON array of strings, got {command!r}")
sys.stdout.write("\0".join(argv) + "\0")
PY
    elif command -v jq >/dev/null 2>&1; then
        jq -j '.command | (if type == "string" then fromjson else . end) | map(. + "\u0000") | add' \
            "$HOLOSCAN_APP_MANIFEST_PATH"
    else
        error "neither python3 nor jq is available to read $HOLOSCAN_APP_MANIFEST_PATH"
        return 1
    fi
}

raise_stack_limit() {
    local soft
    soft="$(ulimit -S -s)"
    if [[ "$soft" != unlimited ]] && ((soft < MIN_STACK_KIB)); then
        ulimit -S -s "$MIN_STACK_KIB" 2>/dev/null \
            || info "stack limit ${soft} KiB is below ${MIN_STACK_KIB} KiB; run with --ulimit stack=67108864"
    fi
}

child=""
# Called through `trap` only.
# shellcheck disable=SC2317
forward_signal() {
    if [[ -n "$child" ]]; then
        kill "-$1" "$child" 2>/dev/null || true
    fi
}

cmd_run() {
    local -a argv=()
    local status
    if [[ ! -f "$HOLOSCAN_APP_MANIFEST_PATH" ]]; then
        error "application manifest $HOLOSCAN_APP_MANIFEST_PATH not found"
        return 1
    fi
    mapfile -d '' -t argv < <(read_command)
    if ((${#argv[@]} == 0)); then
        error "failed to read the command from $HOLOSCAN_APP_MANIFEST_PATH"
        return 1
    fi
    raise_stack_limit
    info "launching application: ${argv[*]} $*"
    # Run in the background and wait, so that SIGTERM/SIGINT sent to this script (PID 1 in the container,
    # which ignores signals it does not handle) reach the application.
    trap 'forward_signal TERM' TERM
    trap 'forward_signal INT' INT
    "${argv[@]}" "$@" <&0 &
    child=$!
    wait "$child"
    status=$?
    # `wait` returns early (status > 128) when a trapped signal arrives; wait again for the real exit code.
    while kill -0 "$child" 2>/dev/null; do
        wait "$child"
        status=$?
    done
    info "application exited with ${status}"
    return "$status"
}

main() {
    local command="${1:-}"
    case "$command" in
        show) shift; cmd_show "$@" ;;
        env) cmd_env ;;
        extract) cmd_extract ;;
        help) cmd_help ;;
        *) cmd_run "$@" ;;
    esac
}

main "$@"
exit $?
