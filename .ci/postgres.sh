#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 with a role the tests can
# use (ctdata_test, password ctdata_test, allowed to create databases). Installs the
# Debian package when PostgreSQL is missing.
set -euo pipefail

as_postgres() { su postgres -s /bin/sh -c "$*"; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "installing PostgreSQL"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    echo "no PostgreSQL cluster found under /etc/postgresql" >&2
    exit 1
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 0.5
  done
fi
pg_isready -h 127.0.0.1 -p 5432

as_postgres "psql -q -v ON_ERROR_STOP=1 -d postgres" <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ctdata_test') THEN
    CREATE ROLE ctdata_test LOGIN CREATEDB PASSWORD 'ctdata_test';
  END IF;
END
$$;
SQL
echo "PostgreSQL ready; test role ctdata_test"
