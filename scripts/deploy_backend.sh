#!/usr/bin/env bash
# Deploy one image tag of the backend to this EC2 host, rolling back when it does not come up.
#
#   deploy_backend.sh [--dry-run] IMAGE_TAG
#
# Steps: check the app's env file holds no database password; log in to ECR and pull the image;
# run `alembic upgrade head` in a one-off container of the NEW image, which reads the database
# secret named by DB_SECRET_ID exactly as the app does (a failure stops here, the running
# release untouched); record the new tag in the release file; restart the systemd
# unit; wait until /health answers 200. If it never does, the previous tag is written back and
# the unit restarted with it, and the script exits non-zero. Migrations are not reversed, so
# they must stay compatible with the previous release (expand first, contract a release later).
#
# Settings (environment; defaults fit the layout in deploy/systemd/one-system-backend.service):
#   ECR_REGISTRY, AWS_REGION  default to the values in the release file
#   APP_DIR=/opt/one-system  CONFIG_DIR=/etc/one-system  RELEASE_ENV=$CONFIG_DIR/release.env
#   APP_ENV=$CONFIG_DIR/backend.env (the env_file of docker-compose.prod.yml)
#   SERVICE=one-system-backend  HEALTH_URL=http://127.0.0.1/health
#   HEALTH_TIMEOUT=180 (s until a release counts as failed)  HEALTH_INTERVAL=5  CURL_MAX_TIME=5
#   LOCK_FILE=/run/lock/one-system-deploy.lock
set -euo pipefail

APP_DIR="${APP_DIR:-/opt/one-system}"
CONFIG_DIR="${CONFIG_DIR:-/etc/one-system}"
RELEASE_ENV="${RELEASE_ENV:-$CONFIG_DIR/release.env}"
APP_ENV="${APP_ENV:-$CONFIG_DIR/backend.env}"
SERVICE="${SERVICE:-one-system-backend}"
HEALTH_URL="${HEALTH_URL:-http://127.0.0.1/health}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-180}"
HEALTH_INTERVAL="${HEALTH_INTERVAL:-5}"
CURL_MAX_TIME="${CURL_MAX_TIME:-5}"
LOCK_FILE="${LOCK_FILE:-/run/lock/one-system-deploy.lock}"
IMAGE_NAME="one-system-backend"
COMPOSE_FILE="$APP_DIR/docker-compose.prod.yml"

dry_run=false
new_tag=""

log() { printf 'deploy: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    printf 'usage: %s [--dry-run] IMAGE_TAG\n' "${0##*/}" >&2
    exit 2
}

# Print the command in dry-run mode, run it otherwise.
run() {
    if "$dry_run"; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# A KEY=value line of the release file (plain values only: tags, registry, region).
release_value() {
    local key="$1"
    [[ -f "$RELEASE_ENV" ]] || return 0
    sed -n "s/^${key}=//p" "$RELEASE_ENV" | tail -n 1 | tr -d "\"'"
}

write_release() {
    local tag="$1" tmp
    if "$dry_run"; then
        printf '+ write %s with IMAGE_TAG=%s\n' "$RELEASE_ENV" "$tag"
        return 0
    fi
    tmp="$(mktemp "$RELEASE_ENV.XXXXXX")"
    printf 'ECR_REGISTRY=%s\nAWS_REGION=%s\nIMAGE_TAG=%s\n' "$ECR_REGISTRY" "$AWS_REGION" "$tag" >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$RELEASE_ENV"
}

# The app reads its database credentials from Secrets Manager (DB_SECRET_ID); a password in the
# env file would sit on disk and in `docker inspect`, and go stale at the next rotation.
check_app_env() {
    [[ -r "$APP_ENV" ]] || die "cannot read $APP_ENV (see deploy/backend.env.example)"
    if grep -Eq '^[[:space:]]*(export[[:space:]]+)?DB_PASSWORD[[:space:]]*=' "$APP_ENV"; then
        die "$APP_ENV sets DB_PASSWORD; remove it: the app reads the password from the secret named by DB_SECRET_ID"
    fi
    grep -Eq '^[[:space:]]*(export[[:space:]]+)?DB_SECRET_ID[[:space:]]*=[[:space:]]*[^[:space:]]' "$APP_ENV" ||
        die "$APP_ENV does not set DB_SECRET_ID"
}

# The worker's own health command: its last turn that reached the outbox is recent.
worker_healthy() {
    docker compose -f "$COMPOSE_FILE" exec -T worker python -m app.worker --check
}

# Healthy = the API answers /health 200 and the worker process is turning.
wait_healthy() {
    if "$dry_run"; then
        printf '+ curl --fail --max-time %q %q  # every %ss until 200, for up to %ss\n' \
            "$CURL_MAX_TIME" "$HEALTH_URL" "$HEALTH_INTERVAL" "$HEALTH_TIMEOUT"
        printf '+ docker compose -f %q exec -T worker python -m app.worker --check  # likewise\n' \
            "$COMPOSE_FILE"
        return 0
    fi
    local deadline=$((SECONDS + HEALTH_TIMEOUT))
    while true; do
        if curl --fail --silent --output /dev/null --max-time "$CURL_MAX_TIME" "$HEALTH_URL" &&
            worker_healthy; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep "$HEALTH_INTERVAL"
    done
}

restart_with() {
    local tag="$1"
    write_release "$tag"
    run systemctl restart "$SERVICE"
}

while (($#)); do
    case "$1" in
    --dry-run) dry_run=true ;;
    -h | --help) usage ;;
    -*) log "unknown option: $1" && usage ;;
    *)
        [[ -z "$new_tag" ]] || usage
        new_tag="$1"
        ;;
    esac
    shift
done
[[ -n "$new_tag" ]] || usage
[[ "$new_tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "not a valid image tag: $new_tag"

ECR_REGISTRY="${ECR_REGISTRY:-$(release_value ECR_REGISTRY)}"
AWS_REGION="${AWS_REGION:-$(release_value AWS_REGION)}"
[[ -n "$ECR_REGISTRY" ]] || die "ECR_REGISTRY is not set and not in $RELEASE_ENV"
[[ -n "$AWS_REGION" ]] || die "AWS_REGION is not set and not in $RELEASE_ENV"
export ECR_REGISTRY AWS_REGION
previous_tag="$(release_value IMAGE_TAG)"

if ! "$dry_run"; then
    # One deploy at a time: two would race on the release file and the restart.
    exec 9>"$LOCK_FILE"
    flock --nonblock 9 || die "another deploy holds $LOCK_FILE"
fi

check_app_env
log "deploying $IMAGE_NAME:$new_tag (running: ${previous_tag:-none})"

if "$dry_run"; then
    printf '+ aws ecr get-login-password --region %q | docker login --username AWS --password-stdin %q\n' \
        "$AWS_REGION" "$ECR_REGISTRY"
else
    aws ecr get-login-password --region "$AWS_REGION" |
        docker login --username AWS --password-stdin "$ECR_REGISTRY"
fi
run docker pull "$ECR_REGISTRY/$IMAGE_NAME:$new_tag"

# The migration container gets the app's env file and reads the secret with the app's own code,
# so a secret the new release cannot use fails here, before anything is restarted.
if ! run env IMAGE_TAG="$new_tag" docker compose -f "$COMPOSE_FILE" \
    run --rm --no-deps app alembic upgrade head; then
    die "migration failed; nothing restarted, ${previous_tag:-no release} keeps running"
fi

restart_with "$new_tag"
if wait_healthy; then
    if "$dry_run"; then
        log "dry run: nothing changed; an unhealthy release would be rolled back to ${previous_tag:-nothing (first release)}"
    else
        log "$IMAGE_NAME:$new_tag is healthy"
    fi
    exit 0
fi

log "$IMAGE_NAME:$new_tag did not pass $HEALTH_URL and the worker's check within ${HEALTH_TIMEOUT}s"
if [[ -z "$previous_tag" ]]; then
    die "no previous release to roll back to"
fi
log "rolling back to $IMAGE_NAME:$previous_tag"
restart_with "$previous_tag"
if wait_healthy; then
    die "rolled back to $previous_tag, which is healthy; $new_tag failed"
fi
log "error: rollback to $previous_tag is unhealthy too"
exit 3
