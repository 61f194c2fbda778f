#!/usr/bin/env bash
# Interactive worker creation (runbook: Spawning Workers / Using Wizard). Asks for the worker
# type, task id, priority and repository, each with a default (Enter takes it), shows what it
# will do, and spawns the worker with spawn-worker, which prints the new worker id.
#
#   ./scripts/wizards/create-worker.sh                     # asks
#   ./scripts/wizards/create-worker.sh --yes               # takes every default, no questions
#   ./scripts/wizards/create-worker.sh --type review-worker --task-id task-7 --priority high \
#       --repo owner/repo --yes                            # no questions at all
#
# Flags: --type T, --task-id ID, --priority critical|high|medium|low, --repo OWNER/REPO,
# --master M, --yes (no prompts; defaults for what is not given). Answers are read from stdin,
# so `printf 'review-worker\ntask-7\nhigh\nowner/repo\ny\n' | create-worker.sh` works too.
# Exit codes are spawn-worker's (4: budget, 6: invalid), 2 for a bad answer with --yes.
set -euo pipefail

# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/../lib/find-bin.sh"

SPAWN=$(find_bin spawn-worker) || exit 127
CORRAL=$(find_bin corral) || exit 127

type= task= priority= repo= master= yes=false
while [[ $# -gt 0 ]]; do
    case $1 in
        --type) type=$2; shift 2 ;;
        --task-id) task=$2; shift 2 ;;
        --priority) priority=$2; shift 2 ;;
        --repo) repo=$2; shift 2 ;;
        --master) master=$2; shift 2 ;;
        -y|--yes) yes=true; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
done

mapfile -t types < <("$CORRAL" type list --names)
if [[ ${#types[@]} -eq 0 ]]; then
    echo "error: no worker types configured (corral type set NAME --tokens N -- CMD)" >&2
    exit 6
fi
default_type=implementation-worker
printf '%s\n' "${types[@]}" | grep -qx "$default_type" || default_type=${types[0]}

# ask VAR PROMPT DEFAULT [CHOICES…]: keeps a value given by flag; with --yes takes the default.
ask() {
    local var=$1 prompt=$2 default=$3 answer
    shift 3
    local choices=("$@")
    while :; do
        answer=${!var}
        if [[ -z $answer ]]; then
            if $yes; then
                answer=$default
            else
                printf '%s [%s]: ' "$prompt" "${default:-none}" >&2
                IFS= read -r answer || answer=
                answer=${answer:-$default}
            fi
        fi
        if [[ ${#choices[@]} -eq 0 ]] || printf '%s\n' "${choices[@]}" | grep -qx -- "$answer"; then
            printf -v "$var" '%s' "$answer"
            return 0
        fi
        echo "  '$answer' is not one of: ${choices[*]}" >&2
        if $yes || [[ -n ${!var} ]]; then exit 2; fi
    done
}

ask type "Worker type (${types[*]})" "$default_type" "${types[@]}"
ask task "Task id" "task-$(date -u +%Y%m%d-%H%M%S)"
ask priority "Priority (critical, high, medium, low)" medium critical high medium low
ask repo "Repository (owner/repo, empty for none)" ""

args=(--type "$type" --task-id "$task" --priority "$priority")
[[ -n $repo ]] && args+=(--repo "$repo")
[[ -n $master ]] && args+=(--master "$master")

echo "spawn-worker ${args[*]}" >&2
if ! $yes; then
    printf 'Spawn this worker? [Y/n]: ' >&2
    IFS= read -r ok || ok=
    case ${ok:-y} in
        [Yy]*) ;;
        *) echo "nothing spawned" >&2; exit 0 ;;
    esac
fi
exec "$SPAWN" "${args[@]}"
