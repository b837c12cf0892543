#!/usr/bin/env bash
# CTData FTP benchmark: rounds of 2,000 files of ~4 KB uploaded as NAME.part then renamed, by one
# client, to vsftpd and to the embedded FTP server in the same run; prints files/s for
# both, the ratio, and the time until every batch is in PostgreSQL.
#   bench/ftp.sh [--files 2000] [--file-bytes 4096] [--rounds 3] ...   (ctdata-bench ftp --help)
# Needs root (vsftpd chroots and drops to the ftp user) and a loopback PostgreSQL
# (CTDATA_TEST_PG).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ ! -x /usr/sbin/vsftpd ]]; then
    echo "vsftpd not found: installing the Debian package" >&2
    sudo=""
    [[ "$(id -u)" == 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq vsftpd
fi
# The package may start its own daemon on port 21; the bench runs its own instance.

cargo build --release -p ctdata-server -p ctdata-bench
exec target/release/ctdata-bench ftp "$@"
