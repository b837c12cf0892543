#!/usr/bin/env bash
# CTData field-link benchmark. Builds the release binaries (server, client, bench), then
# sends one large import (200,000 sightings, ~49 MB of NDJSON) with `ctdata send` through
# a loopback link that cuts every connection after 3 s at 200 kB/s, and through the same
# link without cuts:
#   bench/link.sh [--rows 200000] [--cut-secs 3] [--bytes-per-sec 200000] ...
# Any other flag goes to `ctdata-bench link --help`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cargo build --release -p ctdata-server -p ctdata-client -p ctdata-bench
exec target/release/ctdata-bench link "$@"
