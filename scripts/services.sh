#!/usr/bin/env bash
# Makes the services flock-api's development and tests need run on 127.0.0.1:
# PostgreSQL (with a `flock` database), Redis, Mosquitto and ClickHouse, and
# installs the registry tools the tests use (docker-registry, skopeo) and the
# image builder's (buildah, busybox-static).
# Installs each with apt-get when it is missing and starts it when it is down.
# Safe to run again.
set -euo pipefail

PGURL_ADMIN="postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable&connect_timeout=5"

log() { printf 'services: %s\n' "$*"; }
die() { printf 'services: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root for: $* (run as root or install sudo)"; fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

port_open() { timeout 2 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 50); do port_open "$1" && return 0; sleep 0.2; done
  return 1
}

# --- PostgreSQL -------------------------------------------------------------
postgres_up() {
  command -v pg_ctlcluster >/dev/null || apt_install postgresql postgresql-client
  local ver
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$ver" ]; then
    ver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    log "creating PostgreSQL $ver cluster main"
    as_root pg_createcluster "$ver" main >/dev/null
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL $ver"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start
    for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
    pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL did not come up on 127.0.0.1:5432"
  fi

  # flock-api's default URL and the tests connect as postgres over TCP with no
  # password. Debian's default asks for one there; on a development machine we
  # let the local postgres user in, as the CI machines already do.
  local out
  if ! out=$(PGPASSWORD= psql -w "$PGURL_ADMIN" -tAc 'select 1' 2>&1); then
    case "$out" in
      *password*|*"no pg_hba.conf entry"*)
        local hba
        hba=$(as_root runuser -u postgres -- psql -tAc 'show hba_file')
        log "allowing passwordless TCP login for user postgres from localhost in $hba"
        as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
        as_root runuser -u postgres -- psql -qtAc 'select pg_reload_conf()' >/dev/null
        sleep 0.5
        PGPASSWORD= psql -w "$PGURL_ADMIN" -tAc 'select 1' >/dev/null || die "cannot log in to PostgreSQL as postgres on 127.0.0.1"
        ;;
      *) die "PostgreSQL refuses connections: $out" ;;
    esac
  fi
  if [ "$(psql -w "$PGURL_ADMIN" -tAc "select 1 from pg_database where datname = 'flock'")" != 1 ]; then
    log "creating database flock"
    psql -w "$PGURL_ADMIN" -qc 'create database flock'
  fi
  log "PostgreSQL ready on 127.0.0.1:5432"
}

# --- Redis ------------------------------------------------------------------
redis_up() {
  command -v redis-server >/dev/null || apt_install redis-server redis-tools
  if ! port_open 6379; then
    log "starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/flock.log
    wait_port 6379 || die "Redis did not come up on 127.0.0.1:6379"
  fi
  log "Redis ready on 127.0.0.1:6379"
}

# --- Mosquitto --------------------------------------------------------------
mosquitto_up() {
  command -v mosquitto >/dev/null || apt_install mosquitto
  if ! port_open 1883; then
    log "starting Mosquitto"
    # Started as root with -d, Mosquitto exits silently when its pid and log
    # files sit in root-owned folders: hand them to the mosquitto user.
    as_root mkdir -p /run/mosquitto /var/log/mosquitto /var/lib/mosquitto
    as_root chown mosquitto: /run/mosquitto /var/log/mosquitto /var/lib/mosquitto
    local conf=/etc/mosquitto/mosquitto.conf
    if ! grep -q '^listener 1883' "$conf" 2>/dev/null; then
      conf=/etc/mosquitto/conf.d/flock-local.conf
      printf 'listener 1883 127.0.0.1\nallow_anonymous true\n' | as_root tee "$conf" >/dev/null
    fi
    as_root mosquitto -d -c "$conf"
    wait_port 1883 || die "Mosquitto did not come up on 127.0.0.1:1883 (see /var/log/mosquitto)"
  fi
  log "Mosquitto ready on 127.0.0.1:1883"
}

# --- ClickHouse -------------------------------------------------------------
# Debian's clickhouse-server is 18.16: flock-api talks to it over the native
# protocol on :9000 (its HTTP port is not used).
clickhouse_up() {
  command -v clickhouse-server >/dev/null || apt_install clickhouse-server clickhouse-client
  if ! port_open 9000; then
    log "starting ClickHouse"
    # No systemd here: run it as its own user, daemonised, with the pid file
    # and logs in folders that user owns (it cannot write root's).
    as_root mkdir -p /run/clickhouse-server /var/log/clickhouse-server /var/lib/clickhouse
    as_root chown clickhouse: /run/clickhouse-server /var/log/clickhouse-server /var/lib/clickhouse
    as_root runuser -u clickhouse -- /usr/sbin/clickhouse-server --config=/etc/clickhouse-server/config.xml \
      --daemon --pid-file=/run/clickhouse-server/clickhouse-server.pid
    # A cold start creates its system tables first, which takes a few seconds.
    for _ in $(seq 1 150); do port_open 9000 && break; sleep 0.2; done
    port_open 9000 || die "ClickHouse did not come up on 127.0.0.1:9000 (see /var/log/clickhouse-server)"
  fi
  log "ClickHouse ready on 127.0.0.1:9000"
}

# --- Image registry tools ----------------------------------------------------
# Debian's docker-registry (Distribution, the core Harbor wraps) and skopeo:
# the registry tests start their own docker-registry on a free port with a
# config of their own and drive it with skopeo, so nothing is started here.
registry_up() {
  local missing=()
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  command -v skopeo >/dev/null || missing+=(skopeo)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
    # The package's maintainer scripts may start Debian's own registry on
    # :5000 with /etc/docker/registry/config.yml; nothing here uses it.
    if [ -x /etc/init.d/docker-registry ]; then as_root /etc/init.d/docker-registry stop >/dev/null 2>&1 || true; fi
  fi
  log "docker-registry and skopeo installed (tests start their own registry)"
}

# --- Delta benchmark tools ---------------------------------------------------
# bench/deltas compares layer deltas with whole-tar bsdiff, xdelta3 and zstd
# --patch-from, and reads peak memory from GNU time. Only the bench needs
# them; `make bench-deltas` installs them.
delta_tools_up() {
  local missing=()
  command -v bsdiff >/dev/null || missing+=(bsdiff)
  command -v xdelta3 >/dev/null || missing+=(xdelta3)
  command -v zstd >/dev/null || missing+=(zstd)
  [ -x /usr/bin/time ] || missing+=(time)
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
  log "bsdiff, xdelta3, zstd and GNU time installed"
}

# --- Image builder tools -----------------------------------------------------
# The builder runs buildah as a subprocess with chroot isolation on the vfs
# storage driver: no daemon, no OCI runtime (runc/crun), no fuse-overlayfs
# and no CNI plugins are needed, only buildah (which pulls in uidmap and
# containers-common). busybox-static is the one binary the builder tests'
# base images hold, built locally since nothing is pulled from public
# registries.
builder_tools_up() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  # Debian's plain busybox package is linked dynamically: it would not run
  # in an image without its libraries.
  dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
  log "buildah $(buildah --version | awk '{print $3}') and busybox-static installed"
}

# --- SSH (remote-access tests) ----------------------------------------------
# The tunnel tests run Debian's sshd on a loopback port as a simulated
# device's SSH server (its own config and keys; the system's sshd is never
# started) and OpenSSH's client through `flock-api tunnel` as ProxyCommand.
ssh_tools_up() {
  local missing=()
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v ssh >/dev/null && command -v scp >/dev/null || missing+=(openssh-client)
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
  # sshd refuses to start as root without its privilege separation folder.
  mkdir -p /run/sshd 2>/dev/null || true
  log "openssh-server and openssh-client installed"
}

# --- Node.js (code generation, Swagger UI assets, the TypeScript SDK) -------
node_up() {
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
  local v
  v=$(node -p 'process.versions.node')
  case "$v" in
    1[0-9].*|20.1[0-8].*|20.[0-9].*) log "warning: Node.js $v is older than the 20.19 the code generators need" ;;
  esac
}

case "${1:-all}" in
  postgres) postgres_up ;;
  redis) redis_up ;;
  mosquitto) mosquitto_up ;;
  clickhouse) clickhouse_up ;;
  node) node_up ;;
  registry) registry_up ;;
  delta-tools) delta_tools_up ;;
  builder-tools) builder_tools_up ;;
  ssh-tools) ssh_tools_up ;;
  all) postgres_up; redis_up; mosquitto_up; clickhouse_up; registry_up; builder_tools_up; ssh_tools_up; node_up ;;
  *) die "usage: $0 [all|postgres|redis|mosquitto|clickhouse|registry|delta-tools|builder-tools|ssh-tools|node]" ;;
esac
