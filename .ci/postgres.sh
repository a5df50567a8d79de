#!/usr/bin/env bash
# Makes a PostgreSQL answer on 127.0.0.1:5432 for the test suites, with role converge
# (password converge) and database converge_test. Installs Debian's postgresql if no server
# answers and none is installed. Idempotent: safe to run again on a machine that has it.
set -euo pipefail

HOST=127.0.0.1
PORT=5432

answers() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

as_postgres() {
  if command -v runuser >/dev/null 2>&1; then runuser -u postgres -- "$@"; else su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; fi
}

if ! answers; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "postgres.sh: installing Debian's postgresql" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
  fi
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  if ! pg_lsclusters -h | awk '{ print $1 " " $2 }' | grep -qx "$version main"; then
    pg_createcluster "$version" main
  fi
  echo "postgres.sh: starting PostgreSQL $version" >&2
  pg_ctlcluster "$version" main start || service postgresql start
  for _ in $(seq 1 60); do
    answers && break
    sleep 0.5
  done
  if ! answers; then
    echo "postgres.sh: PostgreSQL does not answer on $HOST:$PORT" >&2
    exit 1
  fi
fi

# The role and the database, when this machine's server is ours to administer (it is when
# we installed or started it; a server run elsewhere is expected to have them already).
if id postgres >/dev/null 2>&1 && command -v psql >/dev/null 2>&1 && as_postgres psql -Atqc "select 1" >/dev/null 2>&1; then
  as_postgres psql -v ON_ERROR_STOP=1 -qc "DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'converge') THEN
      CREATE ROLE converge LOGIN PASSWORD 'converge';
    END IF;
  END \$\$;"
  if [ "$(as_postgres psql -Atqc "SELECT 1 FROM pg_database WHERE datname = 'converge_test'")" != "1" ]; then
    as_postgres createdb -O converge converge_test
  fi
fi
echo "postgres.sh: PostgreSQL answers on $HOST:$PORT" >&2
