#!/usr/bin/env bash
# Install the Debian packages the tests run against, when they are missing:
# Dovecot (IMAP and POP3), PostgreSQL and Chromium. Needs root (or sudo);
# without either it names the packages to install and stops.
set -euo pipefail

needed=()
command -v dovecot >/dev/null || needed+=(dovecot-imapd dovecot-pop3d)
command -v chromium >/dev/null || needed+=(chromium)
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    needed+=(postgresql)
fi
command -v runuser >/dev/null || needed+=(util-linux)

if [ ${#needed[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null; then
    sudo="sudo"
else
    echo "The tests need these Debian packages: ${needed[*]}" >&2
    echo "Install them as root: apt-get install ${needed[*]}" >&2
    exit 1
fi

echo "Installing ${needed[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
# Debian starts the packaged services on installation; the tests start their
# own instances on free ports, so the system ones are not needed.
for service in dovecot postgresql; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
        $sudo systemctl stop "$service" || true
    fi
done
