#!/usr/bin/env bash
# The test command: installs and starts what the tests drive when it is missing
# (PostgreSQL, vsftpd, lftp, Chromium and chromedriver, util-linux's `script`,
# xmllint, sqlite3, openssl, openssh-server and sshfs, python-dwca-reader, dwcahandler,
# pyxform), then runs
# every test suite, carrying on past a failing one so that each suite reports.
# Installing needs root and Debian's apt-get; without them it says which tests will
# print SKIPPED instead (outside CI; under CI, with `CI` set, those tests fail).
# Extra arguments go to `cargo test` (e.g. `./test.sh -p ctdata-batch`).
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '\n== %s\n' "$*"; }

need=()
command -v pg_ctlcluster >/dev/null 2>&1 || command -v pg_isready >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/sbin/vsftpd ] || need+=(vsftpd)
command -v lftp >/dev/null 2>&1 || need+=(lftp)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v script >/dev/null 2>&1 || need+=(util-linux)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v xmllint >/dev/null 2>&1 || need+=(libxml2-utils)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# A network share for the replicas test: an SFTP server and sshfs mounts of it.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v sshfs >/dev/null 2>&1 || need+=(sshfs)

is_root=false
[ "$(id -u)" = 0 ] && is_root=true

if [ ${#need[@]} -gt 0 ]; then
    if $is_root && command -v apt-get >/dev/null 2>&1; then
        say "installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        say "missing ${need[*]}: install them (as root: apt-get install ${need[*]}); their tests print SKIPPED"
    fi
fi

# The Darwin Core Archive tests read archives back with two independent readers from
# PyPI: python-dwca-reader and dwcahandler. The OpenRosa tests build their form from an
# XLSForm with pyxform.
for reader in "python-dwca-reader:dwca.read" "dwcahandler:dwcahandler" "pyxform:pyxform"; do
    package="${reader%%:*}" module="${reader##*:}"
    if command -v python3 >/dev/null 2>&1 && ! python3 -c "import $module" 2>/dev/null; then
        say "installing $package"
        python3 -m pip install -q "$package" 2>/dev/null \
            || python3 -m pip install -q --user --break-system-packages "$package" \
            || say "could not install $package: the dwca tests print SKIPPED"
    fi
done

if $is_root && command -v pg_ctlcluster >/dev/null 2>&1; then
    say "PostgreSQL"
    bash .ci/postgres.sh
    export CTDATA_TEST_PG="${CTDATA_TEST_PG:-postgres://ctdata_test:ctdata_test@127.0.0.1:5432/postgres}"
elif [ -z "${CTDATA_TEST_PG:-}" ]; then
    say "not root: PostgreSQL tests use postgres://postgres@127.0.0.1:5432/postgres (set CTDATA_TEST_PG to change)"
fi

say "cargo test --workspace --no-fail-fast"
exec cargo test --workspace --no-fail-fast "$@"
