#!/usr/bin/env bash
# Download one of the paper's pretrained DDPM checkpoints to checkpoints/ddpm/<name>.pt.
# Usage: checkpoints/ddpm/download_checkpoint.sh NAME   (from any directory)
# Resumable: an interrupted download stays in <name>.pt.part and a rerun continues it.
# Atomic: <name>.pt appears only once the transfer is complete.
# DDPMSEG_DOWNLOAD_BASE overrides the server (tests serve files from 127.0.0.1).
set -euo pipefail

usage() {
  echo "usage: $0 NAME   (NAME: lsun_bedroom, ffhq, lsun_cat, lsun_horse)" >&2
  exit 2
}
[ $# -eq 1 ] || usage
case "$1" in
  lsun_bedroom | ffhq | lsun_cat | lsun_horse) name=$1 ;;
  *) echo "unknown checkpoint '$1'" >&2; usage ;;
esac
command -v curl >/dev/null || { echo "error: curl is required but not installed" >&2; exit 1; }

base=${DDPMSEG_DOWNLOAD_BASE:-https://storage.yandexcloud.net/yandex-research/ddpm-segmentation}
url=${base%/}/models/ddpm_checkpoints/$name.pt
dest=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$name.pt

if [ -f "$dest" ]; then
  echo "$dest already exists; not downloading again"
  exit 0
fi
# -C - resumes $dest.part with a Range request; -f turns HTTP errors into failures;
# --speed-* give up on a stalled transfer (a rerun resumes it). -w prints the HTTP status:
# 416 on a resume means the .part already holds the whole file (as wget -c assumes).
if ! status=$(curl -fL --progress-bar --connect-timeout 30 --speed-limit 1024 --speed-time 60 \
    -w '%{http_code}' -C - -o "$dest.part" "$url") && [ "$status" != 416 ]; then
  echo "error: download of $url failed; the partial file $dest.part (if any) is kept: rerun to resume" >&2
  exit 1
fi
mv -f "$dest.part" "$dest"
echo "saved $dest"
