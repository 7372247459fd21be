#!/usr/bin/env bash
# The report tests render HTML in headless Chromium. Install Debian's package when it is missing and we
# are root; otherwise those tests skip with a reason.
command -v chromium >/dev/null 2>&1 && exit 0
[ "$(id -u)" = "0" ] || { echo "chromium missing and not root: browser tests will skip"; exit 0; }
command -v apt-get >/dev/null 2>&1 || exit 0
echo "installing chromium for the browser tests"
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
  || echo "could not install chromium: browser tests will skip"
