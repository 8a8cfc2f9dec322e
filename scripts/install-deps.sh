#!/usr/bin/env bash
# Installs what AsyncUDP needs from Debian (libuv1-dev, pkg-config) when it is missing.
# Runs apt-get update once, only if something must be installed; uses sudo when not root.
set -euo pipefail
missing=()
dpkg -s libuv1-dev >/dev/null 2>&1 || missing+=(libuv1-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
for extra in "$@"; do
  dpkg -s "$extra" >/dev/null 2>&1 || missing+=("$extra")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "Installing ${missing[*]} ..."
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
