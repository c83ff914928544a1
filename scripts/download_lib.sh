# Sourced by the download scripts: one resumable, atomic fetch.
# DDPMSEG_DOWNLOAD_BASE overrides the server (tests serve files from 127.0.0.1).
DOWNLOAD_BASE=${DDPMSEG_DOWNLOAD_BASE:-https://storage.yandexcloud.net/yandex-research/ddpm-segmentation}
command -v curl >/dev/null || { echo "error: curl is required but not installed" >&2; exit 1; }

# fetch URL DEST: download into DEST.part (resuming it if present), rename to DEST when complete.
fetch() {
  local url=$1 dest=$2 status
  # -C - resumes with a Range request; -f turns HTTP errors into failures; --speed-* give up on
  # a stalled transfer (a rerun resumes it). -w prints the HTTP status: 416 on a resume means
  # the .part already holds the whole file (as wget -c assumes).
  if ! status=$(curl -fL --progress-bar --connect-timeout 30 --speed-limit 1024 --speed-time 60 \
      -w '%{http_code}' -C - -o "$dest.part" "$url") && [ "$status" != 416 ]; then
    echo "error: download of $url failed; the partial file $dest.part (if any) is kept: rerun to resume" >&2
    exit 1
  fi
  mv -f "$dest.part" "$dest"
}

# download_checkpoint KIND EXT DEST_DIR [NAME...]: fetch one released checkpoint of backbone KIND
# (ddpm, mae, swav, swav_w2) to DEST_DIR/NAME.EXT, unless it is already there.
download_checkpoint() {
  local kind=$1 ext=$2 dir=$3
  shift 3
  if [ $# -ne 1 ] || [[ " lsun_bedroom ffhq lsun_cat lsun_horse " != *" $1 "* ]]; then
    [ $# -eq 1 ] && echo "unknown checkpoint '$1'" >&2
    echo "usage: $0 NAME   (NAME: lsun_bedroom, ffhq, lsun_cat, lsun_horse)" >&2
    exit 2
  fi
  local dest=$dir/$1.$ext
  if [ -f "$dest" ]; then
    echo "$dest already exists; not downloading again"
    exit 0
  fi
  fetch "${DOWNLOAD_BASE%/}/models/${kind}_checkpoints/$1.$ext" "$dest"
  echo "saved $dest"
}
