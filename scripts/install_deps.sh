#!/usr/bin/env bash
# Installs the Debian packages lora builds against; does nothing when they are present.
set -euo pipefail
# openmpi-bin and libopenmpi-dev: only the MPI build (`--traits MPI`) and its tests need them.
pkgs=(libopenblas-dev libsentencepiece-dev libjson-c-dev sentencepiece pkg-config openmpi-bin libopenmpi-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
