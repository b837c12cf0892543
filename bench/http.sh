#!/usr/bin/env bash
# CTData HTTP benchmarks. Builds the release binaries, then runs one scenario:
#   bench/http.sh upload [--requests 20000] [--clients 64] ...   POST /api/v1/batches vs. pgbench
#   bench/http.sh export [--rows 1000000] [--rounds 3] ...      GET /api/v1/sightings vs. psql \copy
#   bench/http.sh openrosa [--clients 64] [--per-client 4] ...  OpenRosa submissions vs. plain batches
# Any other flag goes to `ctdata-bench upload|export --help`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scenario="${1:-}"
case "$scenario" in
    upload | export | openrosa) shift ;;
    *)
        echo "usage: bench/http.sh upload|export|openrosa [flags]  (see ctdata-bench upload|export|openrosa --help)" >&2
        exit 64
        ;;
esac

# The upload baseline is pgbench, shipped in Debian's postgresql-contrib (PostgreSQL 15)
# or, in newer releases, postgresql-client.
if [[ "$scenario" == upload && -z "${PGBENCH:-}" ]] && ! command -v pgbench >/dev/null &&
    ! compgen -G '/usr/lib/postgresql/*/bin/pgbench' >/dev/null; then
    echo "pgbench not found: installing postgresql-contrib" >&2
    sudo=""
    [[ "$(id -u)" == 0 ]] || sudo=sudo
    $sudo apt-get install -y postgresql-contrib
fi

cargo build --release -p ctdata-server -p ctdata-bench
exec target/release/ctdata-bench "$scenario" "$@"
