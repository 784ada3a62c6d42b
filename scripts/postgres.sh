#!/usr/bin/env bash
# A local PostgreSQL for studies and runs that several sweeps share (docs/scaling.md, section 3):
# Debian's package, its cluster `main` listening on 127.0.0.1:PG_PORT only, and a role PG_USER
# (password PG_PASSWORD) owning the databases PG_DATABASES. As root (make runs it with sudo).
#   scripts/postgres.sh start   install if missing, start, create the role and databases
#   scripts/postgres.sh stop
# Running `start` again changes nothing; it restarts the server only when its settings change.
set -euo pipefail
PG_PORT=${PG_PORT:-5432} PG_USER=${PG_USER:-lit_tune} PG_PASSWORD=${PG_PASSWORD:-lit_tune}
PG_DATABASES=${PG_DATABASES:-optuna mlflow}
cd /  # the postgres user may not enter the caller's directory
fail() { echo "$0: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (make postgres uses sudo when there is one)"

if [ "${1:-start}" = stop ]; then
    command -v pg_lsclusters >/dev/null || exit 0
    pg_lsclusters -h | awk '$2 == "main" && $4 == "online" { print $1 }' |
        while read -r version; do pg_ctlcluster "$version" main stop; done
    exit 0
fi
if ! command -v pg_lsclusters >/dev/null; then
    command -v apt-get >/dev/null || fail "no apt-get (not Debian?): install PostgreSQL yourself"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
fi
version=$(pg_lsclusters -h | awk '$2 == "main" { print $1 }')
if [ -z "$version" ]; then  # postgresql-common was told not to create it
    version=$(ls /usr/lib/postgresql | sort -V | tail -1)
    pg_createcluster --port "$PG_PORT" "$version" main
fi

# Our settings in a file of their own, read after postgresql.conf (Debian's include_dir).
conf=/etc/postgresql/$version/main/conf.d/lit_tune.conf
settings=$(printf "port = %s\nlisten_addresses = '127.0.0.1'" "$PG_PORT")
changed=
if [ "$(cat "$conf" 2>/dev/null)" != "$settings" ]; then
    echo "$settings" >"$conf"
    changed=1
fi
if [ "$(pg_lsclusters -h "$version" main | awk '{ print $4 }')" != online ]; then
    pg_ctlcluster "$version" main start
elif [ -n "$changed" ]; then
    pg_ctlcluster "$version" main restart
fi

psql() { runuser -u postgres -- psql -p "$PG_PORT" -qtAX -v ON_ERROR_STOP=1 -v user="$PG_USER" "$@"; }
psql -v password="$PG_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I', :'user') WHERE NOT EXISTS
    (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
ALTER ROLE :"user" LOGIN PASSWORD :'password';
SQL
for db in $PG_DATABASES; do
    psql -v db="$db" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user') WHERE NOT EXISTS
    (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
done

url="postgresql://$PG_USER:***@127.0.0.1:$PG_PORT"
echo "PostgreSQL $version on 127.0.0.1:$PG_PORT; databases: $PG_DATABASES (*** is PG_PASSWORD)"
echo "  studies:  python train.py -m ... hydra.sweeper.storage=$url/optuna"
echo "  runs:     make server BACKEND=$url/mlflow"
