#!/usr/bin/env bash
# Make a PostgreSQL server answer on 127.0.0.1:5432 with a role that may create databases, for the
# test suite. Installs Debian's postgresql when it is missing (needs root), starts the cluster, and
# creates the role `cgt` (password `cgt`). Safe to run again.
set -euo pipefail
PGPORT="${PGPORT:-5432}"
if ! command -v pg_lsclusters >/dev/null 2>&1; then
  echo "installing Debian's postgresql ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi
cluster=$(pg_lsclusters --no-header | awk 'NR==1 {print $1" "$2}')
if [ -z "$cluster" ]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -1)
  pg_createcluster "$version" main --port "$PGPORT" >/dev/null
  cluster="$version main"
fi
# shellcheck disable=SC2086
if ! pg_lsclusters --no-header | awk 'NR==1 {print $4}' | grep -q online; then
  pg_ctlcluster $cluster start
fi
for _ in $(seq 1 60); do
  if su postgres -c "psql -p $PGPORT -tAc 'select 1'" >/dev/null 2>&1; then break; fi
  sleep 0.5
done
su postgres -c "psql -p $PGPORT -v ON_ERROR_STOP=1 -q" <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cgt') THEN
    CREATE ROLE cgt LOGIN CREATEDB PASSWORD 'cgt';
  END IF;
END $$;
ALTER SYSTEM SET max_connections = 300;
SQL
# max_connections takes effect on restart; do it once if needed.
if [ "$(su postgres -c "psql -p $PGPORT -tAc 'show max_connections'")" != "300" ]; then
  # shellcheck disable=SC2086
  pg_ctlcluster $cluster restart
fi
echo "PostgreSQL ready: postgresql://cgt:cgt@127.0.0.1:$PGPORT/postgres"
