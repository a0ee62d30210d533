#!/usr/bin/env bash
# Deploy one image tag of the backend to this EC2 host beside the running release, then move
# the traffic to it; or move it back (rollback). Nothing is restarted as a whole.
#
#   deploy_backend.sh [--dry-run] IMAGE_TAG     deploy IMAGE_TAG (the previous tag: a rollback)
#   deploy_backend.sh [--dry-run] --rollback    back to the previous release
#
# Two release slots, blue and green, are the compose projects one-system-blue and
# one-system-green (docker-compose.app.yml); nginx (docker-compose.prod.yml, the edge) sends the
# traffic to the live one, named in its upstream file. A deploy:
#   1. checks the app's env file (no database password, a DB_SECRET_ID), takes the deploy lock
#      (the reconcile timer takes it too), logs in to ECR, pulls the image and pins it by digest;
#   2. runs `alembic upgrade head` in a one-off container of the NEW image, with lock_timeout and
#      statement_timeout set and the whole step under `timeout` (a failure stops here, the
#      running release untouched). Migrations must let the previous release run (expand now,
#      contract a release later): `make migrations-check` checks that before a merge;
#   3. starts the new release (API and worker) in the idle slot, beside the live one;
#   4. waits until its API answers /health and its worker passes `python -m app.worker --check`;
#   5. rewrites nginx's upstream file and reloads nginx (`nginx -s reload`: the old workers finish
#      their requests to the old slot, the new ones send everything to the new slot), and
#      records the release in the release file;
#   6. waits DRAIN_SECONDS for requests in flight, then stops the old slot (its uvicorn finishes
#      what it still serves) and prunes images other than these two releases.
# A failure or INT/TERM before the old slot is stopped moves everything back: nginx to the old
# slot, the release file as it was, the new slot stopped. A rollback is the same move with the
# previous release's image and no migration; it refuses when the database is ahead of what that
# release can run (its own alembic head, or the head of the release it is rolled back from,
# whose migrations were checked against it).
#
# Settings (environment; defaults fit deploy/systemd/one-system-backend.service):
#   ECR_REGISTRY, AWS_REGION  default to the values in the release file
#   APP_DIR=/opt/one-system  CONFIG_DIR=/etc/one-system  RELEASE_ENV=$CONFIG_DIR/release.env
#   APP_ENV=$CONFIG_DIR/backend.env (the env_file of docker-compose.app.yml)
#   UPSTREAM_FILE=/var/lib/one-system/nginx/upstream.conf
#   UPSTREAM_BLUE="app-blue:8000 resolve"  UPSTREAM_GREEN="app-green:8000 resolve"
#   SERVICE=one-system-backend (started, never restarted, on the first release only)
#   HEALTH_TIMEOUT=180 (s until a release counts as failed)  HEALTH_INTERVAL=5
#   DRAIN_SECONDS=35 (> nginx's proxy_read_timeout of 30 s)  MIGRATE_TIMEOUT=900 (s)
#   MIGRATION_LOCK_TIMEOUT=5s  MIGRATION_STATEMENT_TIMEOUT=10min
#   LOCK_FILE=/run/lock/one-system-deploy.lock
set -euo pipefail

APP_DIR="${APP_DIR:-/opt/one-system}"
CONFIG_DIR="${CONFIG_DIR:-/etc/one-system}"
RELEASE_ENV="${RELEASE_ENV:-$CONFIG_DIR/release.env}"
APP_ENV="${APP_ENV:-$CONFIG_DIR/backend.env}"
UPSTREAM_FILE="${UPSTREAM_FILE:-/var/lib/one-system/nginx/upstream.conf}"
UPSTREAM_BLUE="${UPSTREAM_BLUE:-app-blue:8000 resolve}"
UPSTREAM_GREEN="${UPSTREAM_GREEN:-app-green:8000 resolve}"
SERVICE="${SERVICE:-one-system-backend}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-180}"
HEALTH_INTERVAL="${HEALTH_INTERVAL:-5}"
DRAIN_SECONDS="${DRAIN_SECONDS:-35}"
MIGRATE_TIMEOUT="${MIGRATE_TIMEOUT:-900}"
MIGRATION_LOCK_TIMEOUT="${MIGRATION_LOCK_TIMEOUT:-5s}"
MIGRATION_STATEMENT_TIMEOUT="${MIGRATION_STATEMENT_TIMEOUT:-10min}"
LOCK_FILE="${LOCK_FILE:-/run/lock/one-system-deploy.lock}"
IMAGE_NAME="one-system-backend"
EDGE_COMPOSE="$APP_DIR/docker-compose.prod.yml"
APP_COMPOSE="$APP_DIR/docker-compose.app.yml"
# Inside a slot's app container: exits non-zero unless the URL answers 2xx (no curl in the image).
PROBE='import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)'

dry_run=false
rollback=false
new_tag=""
# What the exit trap has to undo.
started_slot=""
switched=false
release_backup=""
committed=false
drain_pid=""

log() { printf 'deploy: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    printf 'usage: %s [--dry-run] IMAGE_TAG | [--dry-run] --rollback\n' "${0##*/}" >&2
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

# A KEY=value line of the release file (plain values only).
release_value() {
    local key="$1"
    [[ -f "$RELEASE_ENV" ]] || return 0
    sed -n "s/^${key}=//p" "$RELEASE_ENV" | tail -n 1 | tr -d "\"'"
}

# Replace a file atomically (same directory, then rename) with the given text.
write_file() {
    local path="$1" text="$2" tmp
    if "$dry_run"; then
        printf '+ write %s:\n%s' "$path" "$text" | sed '2,$s/^/+   /'
        return 0
    fi
    tmp="$(mktemp "$path.XXXXXX")"
    printf '%s' "$text" >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$path"
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

# A KEY=value line of the app's env file (plain values: secret ids, hosts).
app_env_value() {
    sed -nE "s/^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=[[:space:]]*//p" "$APP_ENV" |
        tail -n 1 | tr -d "\"'"
}

# The secret the migration reads: the migrator's (DDL), never given to the app's containers.
migration_secret() {
    local secret
    secret="$(app_env_value MIGRATION_DB_SECRET_ID)"
    if [[ -z "$secret" ]]; then
        log "warning: $APP_ENV sets no MIGRATION_DB_SECRET_ID; migrating with the app's own secret (docs/operations.md, Database roles)"
        secret="$(app_env_value DB_SECRET_ID)"
    fi
    printf '%s' "$secret"
}

# docker compose on one slot's project; SLOT and APP_IMAGE are what the file interpolates.
slot_compose() {
    local slot="$1" image="$2"
    shift 2
    run env SLOT="$slot" APP_IMAGE="$image" docker compose -f "$APP_COMPOSE" "$@"
}

# The first word of the last line a one-off container of IMAGE prints for an alembic command.
alembic_revision() {
    local slot="$1" image="$2" output
    shift 2
    if "$dry_run"; then
        slot_compose "$slot" "$image" run --rm --no-deps -T app alembic "$@" >&2
        printf 'REVISION'
        return 0
    fi
    output="$(slot_compose "$slot" "$image" run --rm --no-deps -T app alembic "$@")" || return 1
    output="$(printf '%s\n' "$output" | sed '/^[[:space:]]*$/d' | tail -n 1)"
    printf '%s' "${output%% *}"
}

upstream_line() {
    if [[ "$1" == blue ]]; then printf 'server %s;\n' "$UPSTREAM_BLUE"; else printf 'server %s;\n' "$UPSTREAM_GREEN"; fi
}

# Point nginx at a slot: rewrite the upstream file, test the configuration, reload gracefully.
# On the first release nginx is not running yet: the unit starts it with this file.
switch_to() {
    local slot="$1"
    log "switching nginx to slot $slot"
    write_file "$UPSTREAM_FILE" "# Written by deploy_backend.sh: the live release slot ($slot).
$(upstream_line "$slot")
"
    [[ -n "$old_slot" ]] || return 0
    run docker compose -f "$EDGE_COMPOSE" exec -T nginx nginx -t -q
    run docker compose -f "$EDGE_COMPOSE" exec -T nginx nginx -s reload
}

# Healthy = the slot's API answers /health 200 and its worker's heartbeat is recent.
slot_healthy() {
    local slot="$1" image="$2"
    slot_compose "$slot" "$image" exec -T app python -c "$PROBE" http://127.0.0.1:8000/health &&
        slot_compose "$slot" "$image" exec -T worker python -m app.worker --check
}

wait_healthy() {
    local slot="$1" image="$2"
    log "waiting up to ${HEALTH_TIMEOUT}s (every ${HEALTH_INTERVAL}s) for slot $slot: /health and the worker's --check"
    if "$dry_run"; then
        slot_healthy "$slot" "$image"
        return 0
    fi
    local deadline=$((SECONDS + HEALTH_TIMEOUT))
    until slot_healthy "$slot" "$image" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep "$HEALTH_INTERVAL"
    done
}

# Migrations in a one-off container of the new image, which reads the migrator's database secret
# (MIGRATION_DB_SECRET_ID, as DB_SECRET_ID) with the app's own code. alembic/env.py sets lock_timeout and statement_timeout from these variables,
# so a migration queued behind a lock gives up instead of queueing every request behind it;
# `timeout` bounds the whole step and removes the container if it ran out.
migrate() {
    local slot="$1" image="$2" name="one-system-migrate-$$" secret
    secret="$(migration_secret)"
    log "migrating with $image (lock_timeout $MIGRATION_LOCK_TIMEOUT, statement_timeout $MIGRATION_STATEMENT_TIMEOUT, step limit ${MIGRATE_TIMEOUT}s)"
    if run timeout --kill-after=10 "$MIGRATE_TIMEOUT" env SLOT="$slot" APP_IMAGE="$image" \
        docker compose -f "$APP_COMPOSE" run --rm --no-deps -T --name "$name" \
        -e DB_SECRET_ID="$secret" \
        -e MIGRATION_LOCK_TIMEOUT="$MIGRATION_LOCK_TIMEOUT" \
        -e MIGRATION_STATEMENT_TIMEOUT="$MIGRATION_STATEMENT_TIMEOUT" \
        app alembic upgrade head; then
        return 0
    fi
    "$dry_run" || docker rm -f "$name" >/dev/null 2>&1 || true
    return 1
}

# On any exit before the old slot is stopped: put everything back as it was.
# shellcheck disable=SC2329  # run by the EXIT trap
undo() {
    local status=$?
    trap '' INT TERM
    [[ -z "$drain_pid" ]] || kill "$drain_pid" 2>/dev/null || true
    if "$committed" || "$dry_run" || [[ -z "$started_slot" ]]; then
        exit "$status"
    fi
    log "rolling back: traffic stays on / returns to ${old_slot:-nothing}"
    if "$switched" && [[ -n "$old_slot" ]]; then
        switch_to "$old_slot" || log "error: could not switch nginx back to slot $old_slot"
    fi
    if "$switched" && [[ -n "$release_backup" ]]; then
        write_file "$RELEASE_ENV" "${release_backup%x}"
    fi
    slot_compose "$started_slot" "$new_image" down --timeout 30 ||
        log "error: could not stop slot $started_slot"
    ((status != 0)) || status=1
    exit "$status"
}

record_release() {
    local text
    text="ECR_REGISTRY=$ECR_REGISTRY
AWS_REGION=$AWS_REGION
IMAGE_TAG=$new_tag
APP_IMAGE=$new_image
SLOT=$new_slot
ALEMBIC_HEAD=$new_head
PREVIOUS_IMAGE_TAG=${old_tag:-}
PREVIOUS_APP_IMAGE=${old_image:-}
PREVIOUS_ALEMBIC_HEAD=${old_head:-}
"
    write_file "$RELEASE_ENV" "$text"
}

# Images of this repository other than the two releases kept (the live one and the previous).
prune_images() {
    local ref
    if "$dry_run"; then
        printf '+ docker image rm  # every %s image but %s and %s\n' "$IMAGE_NAME" "$new_image" "${old_image:-}"
        return 0
    fi
    while read -r ref; do
        [[ "$ref" == "$new_image" || "$ref" == "${old_image:-}" ]] && continue
        docker image rm "$ref" >/dev/null 2>&1 || log "could not remove $ref (in use?)"
    done < <(docker image ls --no-trunc --format '{{.Repository}}@{{.Digest}}' "$ECR_REGISTRY/$IMAGE_NAME")
}

parse_arguments() {
    while (($#)); do
        case "$1" in
        --dry-run) dry_run=true ;;
        --rollback) rollback=true ;;
        -h | --help) usage ;;
        -*) log "unknown option: $1" && usage ;;
        *)
            [[ -z "$new_tag" ]] || usage
            new_tag="$1"
            ;;
        esac
        shift
    done
    if "$rollback"; then
        [[ -z "$new_tag" ]] || usage
    else
        [[ -n "$new_tag" ]] || usage
        [[ "$new_tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "not a valid image tag: $new_tag"
    fi
}

# The release the move goes to: a new image (pulled, pinned by digest, migrated) or the previous.
prepare_target() {
    if "$rollback" || [[ -n "$old_tag" && "$new_tag" == "$(release_value PREVIOUS_IMAGE_TAG)" ]]; then
        rollback=true
        new_tag="$(release_value PREVIOUS_IMAGE_TAG)"
        new_image="$(release_value PREVIOUS_APP_IMAGE)"
        new_head="$(release_value PREVIOUS_ALEMBIC_HEAD)"
        [[ -n "$new_tag" && -n "$new_image" ]] || die "no previous release recorded in $RELEASE_ENV"
        local db_revision
        db_revision="$(alembic_revision "$old_slot" "$old_image" current)" ||
            die "cannot read the database's revision with $old_image; nothing changed"
        if ! "$dry_run" && [[ "$db_revision" != "$new_head" && "$db_revision" != "$old_head" ]]; then
            die "refusing to roll back to $new_tag: the database is at $db_revision, ahead of what it runs on ($new_head, or $old_head it was checked against); nothing changed"
        fi
        log "rolling back to $IMAGE_NAME:$new_tag (database at $db_revision)"
        return 0
    fi
    log "deploying $IMAGE_NAME:$new_tag (running: ${old_tag:-none})"
    if "$dry_run"; then
        printf '+ aws ecr get-login-password --region %q | docker login --username AWS --password-stdin %q\n' \
            "$AWS_REGION" "$ECR_REGISTRY"
    else
        aws ecr get-login-password --region "$AWS_REGION" |
            docker login --username AWS --password-stdin "$ECR_REGISTRY"
    fi
    local ref="$ECR_REGISTRY/$IMAGE_NAME:$new_tag"
    run docker pull "$ECR_REGISTRY/$IMAGE_NAME:$new_tag"
    if "$dry_run"; then
        run docker image inspect --format '{{index .RepoDigests 0}}' "$ref"
        new_image="$ECR_REGISTRY/$IMAGE_NAME@sha256:DIGEST"
    else
        new_image="$(docker image inspect --format '{{index .RepoDigests 0}}' "$ref")"
    fi
    new_head="$(alembic_revision "$new_slot" "$new_image" heads)" || die "cannot read the alembic head of $new_image"
    migrate "$new_slot" "$new_image" ||
        die "migration failed or timed out; nothing started, ${old_tag:-no release} keeps running"
}

main() {
    parse_arguments "$@"
    ECR_REGISTRY="${ECR_REGISTRY:-$(release_value ECR_REGISTRY)}"
    AWS_REGION="${AWS_REGION:-$(release_value AWS_REGION)}"
    [[ -n "$ECR_REGISTRY" ]] || die "ECR_REGISTRY is not set and not in $RELEASE_ENV"
    [[ -n "$AWS_REGION" ]] || die "AWS_REGION is not set and not in $RELEASE_ENV"
    # docker-compose.app.yml's env_file.
    export APP_ENV
    old_tag="$(release_value IMAGE_TAG)"
    old_image="$(release_value APP_IMAGE)"
    old_slot="$(release_value SLOT)"
    old_head="$(release_value ALEMBIC_HEAD)"
    if [[ "$old_slot" == blue ]]; then new_slot=green; else new_slot=blue; fi

    if ! "$dry_run"; then
        # One deploy at a time, and no reconcile run (the timer takes this lock) during one.
        exec 9>"$LOCK_FILE"
        flock --nonblock 9 || die "another deploy or a reconcile run holds $LOCK_FILE"
    fi
    check_app_env
    prepare_target

    trap undo EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # The file as it is (the x keeps its trailing newline through the command substitution).
    [[ -f "$RELEASE_ENV" ]] && release_backup="$(cat "$RELEASE_ENV" && printf x)"
    log "starting $new_tag in slot $new_slot beside ${old_tag:-nothing} in slot ${old_slot:-none}"
    started_slot="$new_slot"
    # The first release: the edge's network, which the slot joins (no container is started).
    [[ -n "$old_slot" ]] || run docker compose -f "$EDGE_COMPOSE" create --no-recreate
    slot_compose "$new_slot" "$new_image" up -d --no-build --remove-orphans
    if ! wait_healthy "$new_slot" "$new_image"; then
        die "$IMAGE_NAME:$new_tag did not pass /health and the worker's check within ${HEALTH_TIMEOUT}s; traffic stays on ${old_tag:-nothing}"
    fi
    # Set first: a switch that fails half way (nginx -t) is undone like a finished one.
    switched=true
    switch_to "$new_slot"
    record_release
    if [[ -z "$old_slot" ]]; then
        # The first release: the edge starts now (at boot later), never restarted by a deploy.
        run systemctl enable --now "$SERVICE"
    else
        log "draining slot $old_slot for ${DRAIN_SECONDS}s, then stopping it"
        # In the background: `wait` returns at once on INT/TERM, so the trap runs then.
        if "$dry_run"; then run sleep "$DRAIN_SECONDS"; else
            sleep "$DRAIN_SECONDS" &
            drain_pid=$!
            wait "$drain_pid"
        fi
        committed=true
        slot_compose "$old_slot" "$old_image" down --timeout 30
    fi
    committed=true
    prune_images
    if "$dry_run"; then
        log "dry run: nothing changed; nginx is reloaded, nothing restarted; a release that never turns healthy is stopped and traffic stays on ${old_tag:-nothing}"
    else
        log "$IMAGE_NAME:$new_tag is live in slot $new_slot"
    fi
}

# On one line, so that bash has read it all before it runs: a checkout that replaces this file
# during a deploy cannot change what the rest of the run executes.
main "$@"; exit
