# Sourced after download_lib.sh by the download scripts of the backbones beyond the paper's release
# (diffusers DDPMs, Stable Diffusion, DINOv2): a name check, and a hub folder fetched atomically.
# DDPMSEG_HUB_BASE overrides the model hub (tests serve files from 127.0.0.1).
HUB_BASE=${DDPMSEG_HUB_BASE:-https://huggingface.co}

# pick_name "CHOICE..." ARG...: exit 2 with a usage line unless ARGs are exactly one of the CHOICEs.
pick_name() {
  local choices=$1
  shift
  if [ $# -ne 1 ] || [[ " $choices " != *" $1 "* ]]; then
    [ $# -eq 1 ] && echo "unknown name '$1'" >&2
    echo "usage: $0 NAME   (NAME: ${choices// /, })" >&2
    exit 2
  fi
}

# download_hub_folder REPO DEST FILE...: each FILE of hub repository REPO into DEST.part/FILE (each one
# resumable, see fetch), then DEST.part renamed to DEST: DEST appears only once every file is complete.
download_hub_folder() {
  local repo=$1 dest=$2 file
  shift 2
  if [ -d "$dest" ]; then
    echo "$dest already exists; not downloading again"
    exit 0
  fi
  for file in "$@"; do
    [ -f "$dest.part/$file" ] && continue  # finished by an earlier, interrupted run
    mkdir -p "$(dirname "$dest.part/$file")"
    fetch "${HUB_BASE%/}/$repo/resolve/main/$file" "$dest.part/$file"
  done
  mv "$dest.part" "$dest"
  echo "saved $dest (use it as model_path)"
}
