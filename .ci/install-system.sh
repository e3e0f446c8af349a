#!/usr/bin/env bash
# Install the system components the tests and the stack use, only where they are missing:
# Debian's prometheus (prometheus, promtool), prometheus-alertmanager (alertmanager, amtool)
# openssl and kubectl (Debian's kubernetes-client).
set -euo pipefail
missing=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
{ command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null; } \
  && command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
command -v openssl >/dev/null || missing+=(openssl)  # certificates for the exporter's TLS tests
command -v kubectl >/dev/null || missing+=(kubernetes-client)  # kubectl kustomize of deploy/
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then sudo="sudo"; else
    echo "install-system: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1
  fi
fi
echo "install-system: installing ${missing[*]} (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages' services are not wanted: tests and `pathoai-memobs stack` start their own
# on loopback. Stop any the install started (no-op where no init system runs).
for svc in prometheus prometheus-alertmanager; do
  $sudo service "$svc" stop >/dev/null 2>&1 || true
done
