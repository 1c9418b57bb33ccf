#!/bin/sh
# holopart-mini v2 (issue 22): the exact training recipe run on the 2-core CPU, resumable.
# Re-running it continues where it stopped (each stage resumes from OUT/<stage>_state.pt; the pool is
# cached in OUT). Usage: sh export/train_v2.sh [OUT]   (default runs/v2; run from the repo root)
set -eu
OUT=${1:-runs/v2}
PY=${PY:-.venv/bin/python}
DATA="--objects 600 --templates table chair lamp mug shelf dumbbell cup stool shade_lamp bench
      --view-choices 6 8 12 16 --up-axis y --augment --real-copies 2 --workers 2"
COMMON="--out $OUT --batch-size 16 --threads 1 --init-from export/holopart_mini --ckpt-every 200 --log-every 20"
mkdir -p "$OUT"
# VAE: fine-tune the v1 VAE on the mixed pool (cosine decay over the second half)
$PY -m holopart_infer.export.train vae $COMMON $DATA --steps 3000 --lr 3e-4 --lr-schedule cosine \
    --decay-from 1500 --lr-final 0.05
# DiT: fine-tune v1's part encoder + DiT in segments of 2000 steps (constant lr), keeping a copy of
# each segment's end state for the training-time curve; it runs until stopped (or 40000 steps).
S=2000
while [ $S -le 40000 ]; do
  $PY -m holopart_infer.export.train dit $COMMON $DATA --steps $S --lr 2e-4 --occluded-weight 3
  cp "$OUT/dit_state.pt" "$OUT/dit_state_$S.pt.tmp" && mv "$OUT/dit_state_$S.pt.tmp" "$OUT/dit_state_$S.pt"
  S=$((S + 2000))
done
