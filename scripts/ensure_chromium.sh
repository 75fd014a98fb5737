#!/usr/bin/env bash
# Headless Chromium for the report test (Debian's package). Installed only where missing.
set -u
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the report test" >&2
  apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
    || echo "could not install chromium; the report browser test will be skipped" >&2
else
  echo "chromium not found and cannot install it; the report browser test will be skipped" >&2
fi
exit 0
