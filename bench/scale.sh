#!/usr/bin/env bash
# CTData scale benchmark. Builds the release binaries, then loads --rows sightings
# (default 20,000,000) into the partitioned schema at bulk speed and measures export
# time to first byte, the dashboard's one-week and bounding-box queries, and HTTP
# ingest at that size against an empty database:
#   bench/scale.sh [--rows 2000000] [--months 24] ...
# Any other flag goes to `ctdata-bench scale --help`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cargo build --release -p ctdata-server -p ctdata-bench
exec target/release/ctdata-bench scale "$@"
