#!/usr/bin/env bash
# Download one of the paper's pretrained DDPM checkpoints to checkpoints/ddpm/<name>.pt.
# Usage: checkpoints/ddpm/download_checkpoint.sh NAME   (from any directory)
# Resumable: an interrupted download stays in <name>.pt.part and a rerun continues it.
# Atomic: <name>.pt appears only once the transfer is complete.
# DDPMSEG_DOWNLOAD_BASE overrides the server (see scripts/download_lib.sh).
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
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../../scripts/download_lib.sh"
url=${DOWNLOAD_BASE%/}/models/ddpm_checkpoints/$name.pt
dest=$here/$name.pt

if [ -f "$dest" ]; then
  echo "$dest already exists; not downloading again"
  exit 0
fi
fetch "$url" "$dest"
echo "saved $dest"
