#!/bin/sh
# Copy the resumable v2 training state (a few MB: weights, AdamW state, step, RNG / data-cursor
# state, loss log) from the run folder into the repo, atomically per file. The pool cache is not
# copied: train_v2.sh rebuilds the identical pool (deterministic) before it resumes.
# Usage (repo root): sh export/snapshot_v2.sh [RUN=runs/v2] [DEST=export/holopart_mini_v2_state]
set -eu
RUN=${1:-runs/v2}
DEST=${2:-export/holopart_mini_v2_state}
mkdir -p "$DEST"
for f in vae_state.pt dit_state.pt log.jsonl train.log; do
  if [ -f "$RUN/$f" ]; then
    cp "$RUN/$f" "$DEST/.$f.tmp" && mv "$DEST/.$f.tmp" "$DEST/$f"
  fi
done
ls -la "$DEST"
# To resume in a later session: mkdir -p runs/v2 && cp $DEST/*_state.pt $DEST/log.jsonl runs/v2/ &&
#   nohup nice -n 5 sh export/train_v2.sh runs/v2 >> runs/v2/train.log 2>&1 &
