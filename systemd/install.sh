#!/bin/sh
# Installs, upgrades or removes cht-rapidpro-worker as a systemd service. Run as root from a
# checkout of the project:
#   systemd/install.sh install     first install: code, venv, configuration, credentials, unit
#   systemd/install.sh upgrade     new code beside the old one; switched unless `check` finds it fatal
#   systemd/install.sh rollback    back to the previous release
#   systemd/install.sh uninstall   stop and remove the service and code (add --purge for /etc too)
# Layout: /opt/cht-rapidpro-worker/releases/<version>-<time>/ (code + venv built from
# requirements.lock), /opt/cht-rapidpro-worker/current -> the release in service,
# /etc/cht-rapidpro-worker/worker.env (settings, no secrets), /etc/cht-rapidpro-worker/credentials/
# (one file per secret, root only, 0600, handed to the service with LoadCredential=).
set -eu
# What this script creates must be readable by the service: DynamicUser= runs it as a uid that
# shares no group with root, so only the "other" permission bits count. A root shell's umask of
# 077 (a common hardening default) would make the release 0700 and the service fail to exec it;
# the secrets get 0600 of their own below.
umask 022

NAME=cht-rapidpro-worker
PREFIX=${PREFIX:-/opt/$NAME}
ETC=${ETC:-/etc/$NAME}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
SRC=$(cd "$(dirname "$0")/.." && pwd)
CREDENTIALS="couch-url couch-secret rapidpro-token rapidpro-incoming-key"

say() { printf '%s: %s\n' "$NAME" "$*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it writes $PREFIX, $ETC and $UNIT_DIR)"
command -v systemctl >/dev/null || die "systemctl not found: this script is for systemd hosts"

new_release() {
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/pyproject.toml")
  release="$PREFIX/releases/$version-$(date -u +%Y%m%dT%H%M%SZ)"
  say "building $release"
  mkdir -p "$release"
  chmod 0755 "$PREFIX" "$PREFIX/releases"  # also repairs a tree an earlier install made 0700
  cp -R "$SRC/README.md" "$SRC/pyproject.toml" "$SRC/requirements.lock" "$SRC/.env.example" \
        "$SRC/config" "$SRC/transitions" "$SRC/worker" "$SRC/scripts" "$SRC/systemd" "$release/"
  "$release/scripts/install-venv.sh" "$release/venv" >&2
  "$release/venv/bin/python" -m compileall -q "$release" >/dev/null  # the service may not write .pyc
  # A checkout cloned under umask 077 has 0600 files, and cp keeps them so: readable by all, written by root.
  chmod -R u+rwX,go+rX,go-w "$release"
  if ! service_can_run "$release"; then
    rm -rf "$release"  # never left for `rollback` to pick
    die "the service's user cannot run $release: is it, or a folder above it, unreadable to others?"
  fi
  echo "$release"
}

service_can_run() {
  # Import the code as an unprivileged user with no groups, as the DynamicUser= service will.
  if command -v setpriv >/dev/null; then
    (cd / && setpriv --reuid=65534 --regid=65534 --clear-groups "$1/venv/bin/$NAME" --version >/dev/null)
  else
    say "setpriv not found (util-linux): not checking that the service's user can read $1"
  fi
}

write_config() {
  install -d -m 0755 "$ETC"
  install -d -m 0700 "$ETC/credentials"
  if [ ! -f "$ETC/worker.env" ]; then
    # Settings only: COUCH_URL (it holds a password) belongs in credentials/couch-url.
    { echo "# Settings for $NAME (secrets go in $ETC/credentials/, not here)."
      sed -e 's/^COUCH_URL=/#COUCH_URL=/' "$SRC/.env.example"; } > "$ETC/worker.env"
    chmod 0644 "$ETC/worker.env"
    say "wrote $ETC/worker.env (review it)"
  fi
  for name in $CREDENTIALS; do
    file="$ETC/credentials/$name"
    if [ ! -f "$file" ]; then
      (umask 077 && : > "$file")
    fi
    chmod 0600 "$file"
    chown root:root "$file"
    if [ ! -s "$file" ] && [ -t 0 ]; then
      printf '%s (empty to leave unset): ' "$name" >&2
      stty -echo 2>/dev/null || true
      read -r value || value=""
      stty echo 2>/dev/null || true
      echo >&2
      [ -n "$value" ] && (umask 077 && printf '%s\n' "$value" > "$file")
    fi
  done
}

check_release() {
  # The same view of the configuration the service gets: worker.env plus the credential files.
  # Only a fatal line (the daemon cannot work: CouchDB, rights, the token) stops an install or an
  # upgrade; a problem on RapidPro's side (the relay flow not imported yet, a channel asleep) is
  # printed but does not: the daemon sends meanwhile (README, "What check says").
  CREDENTIALS_DIRECTORY="$ETC/credentials" "$1/venv/bin/$NAME" check --for-install --env-file "$ETC/worker.env"
}

switch_to() {
  ln -sfn "$1" "$PREFIX/current.new" && mv -T "$PREFIX/current.new" "$PREFIX/current"
}

prune() {  # keep the release in service and the one before it
  ls -1dt "$PREFIX"/releases/* 2>/dev/null | tail -n +3 | while read -r old; do
    [ "$(readlink -f "$PREFIX/current")" = "$old" ] || rm -rf "$old"
  done
}

case "${1:-}" in
  install)
    write_config
    release=$(new_release)
    switch_to "$release"
    install -m 0644 "$SRC/systemd/$NAME.service" "$UNIT_DIR/$NAME.service"
    systemctl daemon-reload
    if check_release "$release"; then
      systemctl enable --now "$NAME"
      say "running: systemctl status $NAME; journalctl -fu $NAME"
      say "problems listed above (if any) do not stop it but need fixing; \`$NAME check\` lists them again"
    else
      systemctl enable "$NAME"
      say "installed but not started: fix the fatal lines above (worker.env, credentials/), then"
      say "  systemctl start $NAME"
    fi
    ;;
  upgrade)
    [ -L "$PREFIX/current" ] || die "not installed; use: $0 install"
    release=$(new_release)
    if ! check_release "$release"; then
      rm -rf "$release"  # else `rollback` would switch to it: the newest release not in service
      die "check found a fatal problem: still running $(readlink -f "$PREFIX/current")"
    fi
    install -m 0644 "$SRC/systemd/$NAME.service" "$UNIT_DIR/$NAME.service"
    systemctl daemon-reload
    switch_to "$release"
    systemctl restart "$NAME"
    prune
    say "upgraded to $release"
    ;;
  rollback)
    previous=$(ls -1dt "$PREFIX"/releases/* | grep -vx "$(readlink -f "$PREFIX/current")" | head -n 1)
    [ -n "$previous" ] || die "no previous release"
    switch_to "$previous"
    systemctl restart "$NAME"
    say "rolled back to $previous"
    ;;
  uninstall)
    systemctl disable --now "$NAME" 2>/dev/null || true
    rm -f "$UNIT_DIR/$NAME.service"
    systemctl daemon-reload
    rm -rf "$PREFIX"
    if [ "${2:-}" = "--purge" ]; then
      rm -rf "$ETC"
      say "removed $PREFIX and $ETC"
    else
      say "removed $PREFIX; kept $ETC (use --purge to remove it)"
    fi
    say "the worker's CouchDB database (medic-rapidpro by default) is left in place"
    ;;
  *)
    sed -n '2,11p' "$0" >&2
    exit 2
    ;;
esac
