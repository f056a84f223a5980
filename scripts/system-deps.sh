#!/usr/bin/env bash
# Debian packages the tests need: chromium (driven by Playwright, never downloaded by it), postgresql.
# Installed only when missing and only when we can (root + apt); otherwise those tests skip and say why.
set -uo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
# The sweep test starts a throwaway PostgreSQL server (initdb/pg_ctl) for two workers sharing a study.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${need[*]}" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/tmp/vistrain-apt.log 2>&1 \
    || echo "warning: apt-get install ${need[*]} failed (see /tmp/vistrain-apt.log); browser tests will skip" >&2
else
  echo "warning: ${need[*]} missing and cannot be installed here; browser tests will skip" >&2
fi
exit 0
