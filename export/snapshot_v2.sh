#!/bin/sh
# Copy the resumable v2 training state into the repo (a few MB), atomically per file: stage A's
# exported weights (ckpt_a, stage B's starting point) and stage A's loss log; stage B's states
# (weights, AdamW state, step, the data/noise generator state, i.e. the data cursor, and the RNG
# states) and loss log. Pools are not copied: train_v2.sh rebuilds the identical pool.
# Usage (repo root): sh export/snapshot_v2.sh [A=runs/v2] [B=runs/v2b] [DEST=training_state/holopart_mini_v2]
set -eu
A=${1:-runs/v2}
B=${2:-runs/v2b}
DEST=${3:-training_state/holopart_mini_v2}
mkdir -p "$DEST/a" "$DEST/b"
put() {  # put SRC DST: copy then rename, so a reader never sees half a file
  cp "$1" "$2.tmp" && mv "$2.tmp" "$2"
}
[ -d "$A/ckpt_a" ] && (cd "$A/ckpt_a" && find . -type f) | while read -r f; do
  mkdir -p "$DEST/a/ckpt_a/$(dirname "$f")"
  put "$A/ckpt_a/$f" "$DEST/a/ckpt_a/$f"
done
[ -f "$A/log.jsonl" ] && put "$A/log.jsonl" "$DEST/a/log.jsonl"
for f in vae_state.pt dit_state.pt log.jsonl train.log; do
  [ -f "$B/$f" ] && put "$B/$f" "$DEST/b/$f"
done
du -sh "$DEST"
# Resume in a later session (repo root):
#   mkdir -p runs/v2 runs/v2b && cp -r $DEST/a/ckpt_a runs/v2/ && cp $DEST/b/*.pt $DEST/b/log.jsonl runs/v2b/
#   nohup nice -n 5 sh export/train_v2.sh runs/v2 runs/v2b >> runs/v2b/train.log 2>&1 &
