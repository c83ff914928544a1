#!/usr/bin/env bash
# Download the paper's labelled datasets (~47 MB) and extract them to datasets/<dataset>/.
# Usage: datasets/download_datasets.sh   (from any directory; no arguments)
# Resumable: an interrupted download stays in datasets.tar.gz.part and a rerun continues it.
# Atomic: the archive is extracted into a temporary folder and the dataset folders are moved
# into place only after tar succeeds; the archive is removed afterwards.
# DDPMSEG_DOWNLOAD_BASE overrides the server (see scripts/download_lib.sh).
set -euo pipefail

if [ $# -ne 0 ]; then
  echo "usage: $0   (takes no arguments; fetches all six datasets:" \
    "bedroom_28, ffhq_34, cat_15, horse_21, celeba_19, ade_bedroom_30)" >&2
  exit 2
fi
dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$dir/../scripts/download_lib.sh"
url=${DOWNLOAD_BASE%/}/datasets.tar.gz
tarball=$dir/datasets.tar.gz

# A complete archive left by an earlier run (e.g. one whose extraction failed) is reused.
if [ ! -f "$tarball" ]; then
  fetch "$url" "$tarball"
fi

# Extract beside the targets (same filesystem, so the moves below are renames).
tmp=$(mktemp -d "$dir/.extract.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if ! tar -xzf "$tarball" -C "$tmp"; then
  echo "error: could not extract $tarball; delete it and rerun to download it again" >&2
  exit 1
fi
for src in "$tmp"/*; do
  target=$dir/$(basename "$src")
  rm -rf "$target"  # a dataset from an earlier download is replaced by the fresh copy
  mv "$src" "$target"
  echo "extracted $target"
done
rm -f "$tarball"
