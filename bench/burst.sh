#!/usr/bin/env bash
# CTData burst benchmark. Builds the release binaries, then drops many small batch files
# into the CTData folder at once and uploads the same batches over HTTP:
#   bench/burst.sh [--sizes 10000x5,2000x50] [--devices 64] ...
# Any other flag goes to `ctdata-bench burst --help`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cargo build --release -p ctdata-server -p ctdata-bench
exec target/release/ctdata-bench burst "$@"
