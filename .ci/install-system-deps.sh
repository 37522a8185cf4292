#!/bin/sh
# System packages some tests use, installed non-interactively on Debian/Ubuntu CI images:
#   prometheus  -> tests/test_prometheus_scrape.py starts a real server on loopback
#   systemd     -> systemd-analyze, for tests/test_systemd_unit.py
#   chromium, chromium-driver -> tests/test_web_browser.py (the web page in a real browser), only with
#                  SWIM_STREAM_CI_BROWSER=1: they took 54 s to install (with apt-get update) on our CI machine,
#                  not "well under a minute", so the default run leaves them out
# Never fails the CI run: without them those tests skip and say why.
set -u

PACKAGES="prometheus systemd"
if [ "${SWIM_STREAM_CI_BROWSER:-0}" = "1" ]; then
    PACKAGES="$PACKAGES chromium chromium-driver"
fi

warn() { echo "install-system-deps: $*; the tests that need it will skip" >&2; }

if ! command -v apt-get >/dev/null 2>&1; then
    warn "no apt-get on this image, not installing: $PACKAGES"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        warn "not root and no sudo, not installing: $PACKAGES"
        exit 0
    fi
fi

# noninteractive: no debconf prompts; a missing init system only stops the postinst from starting
# the packaged prometheus.service, which the tests do not use (they start their own server).
# (passed through env: sudo drops the caller's environment). --no-upgrade: leave installed
# versions alone, only add what is missing.
APT="$SUDO env DEBIAN_FRONTEND=noninteractive apt-get"
if ! $APT update -qq; then
    warn "apt-get update failed"
fi
if ! $APT install -y -qq --no-install-recommends --no-upgrade $PACKAGES; then
    warn "apt-get install $PACKAGES failed"
    exit 0
fi

for tool in prometheus systemd-analyze $( [ "${SWIM_STREAM_CI_BROWSER:-0}" = "1" ] && echo chromium chromedriver ); do
    if command -v "$tool" >/dev/null 2>&1; then
        echo "install-system-deps: $tool: $(command -v "$tool")"
    else
        warn "$tool still missing after install"
    fi
done
exit 0
