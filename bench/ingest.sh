#!/usr/bin/env bash
# CTData ingest benchmark. Builds the release binaries, then runs one scenario:
#   bench/ingest.sh [--rows N] [--files N] ...   many batches vs. psql \copy
#   bench/ingest.sh --big [--bytes 1G] ...        one very large batch: speed and memory
# Any other flag goes to `ctdata-bench ingest|big --help`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scenario=ingest
if [[ "${1:-}" == "--big" ]]; then
    scenario=big
    shift
fi

cargo build --release -p ctdata-server -p ctdata-bench
exec target/release/ctdata-bench "$scenario" "$@"
