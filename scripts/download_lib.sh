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
