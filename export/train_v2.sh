#!/bin/sh
# holopart-mini v2 (issue 22): the exact training recipe run on the 2-core CPU, resumable.
# Re-running it continues where it stopped (each stage resumes from <run>/<stage>_state.pt; the pool
# is cached per run folder and rebuilt identically when missing). Usage (repo root):
#   sh export/train_v2.sh [A=runs/v2] [B=runs/v2b]
set -eu
A=${1:-runs/v2}
B=${2:-runs/v2b}
PY=${PY:-.venv/bin/python}
DATA="--objects 600 --templates table chair lamp mug shelf dumbbell cup stool shade_lamp bench
      --view-choices 6 8 12 16 --up-axis y --augment --real-copies 2 --workers 2"
OPT="--batch-size 16 --threads 1 --ckpt-every 100 --log-every 20"
mkdir -p "$A" "$B"
if [ ! -d "$A/ckpt_a" ]; then
  # Stage A (what ran first): v1's VAE encoder frozen (its latent space kept), the decoder fine-tuned
  # side by side with the part encoder + DiT. Measured afterwards: v1's encoder does not carry over to
  # y-up parts (held-out reconstruction IoU 0.93 in its z-up frame, 0.40 y-up), so stage B unfreezes it.
  $PY -m holopart_infer.export.train dit --out "$A" $OPT $DATA --init-from export/holopart_mini --steps 0
  $PY -m holopart_infer.export.train vae --out "$A" $OPT $DATA --init-from export/holopart_mini --freeze-encoder \
      --steps 3000 --stop-at 2200 --lr 3e-4 --lr-schedule cosine --decay-from 1500 --lr-final 0.05 &
  for S in 500 1000 1300; do
    $PY -m holopart_infer.export.train dit --out "$A" $OPT $DATA --init-from export/holopart_mini --steps $S \
        --lr 2e-4 --occluded-weight 3
    cp "$A/dit_state.pt" "$A/dit_state_$S.pt.tmp" && mv "$A/dit_state_$S.pt.tmp" "$A/dit_state_$S.pt"
  done
  wait
  $PY -m holopart_infer.export.train export --out "$A" --checkpoint "$A/ckpt_a.tmp" --overwrite
  mv "$A/ckpt_a.tmp" "$A/ckpt_a"
fi
# Stage B: the whole VAE (encoder too) from stage A, then the part encoder + DiT on its new latent
# space, in segments of 500 steps (each segment's end state kept for the training-time curve),
# until stopped (or 40000 steps).
[ -f "$B/$(ls "$A" | grep '^pool_' | head -1)" ] || ln -f "$A"/pool_*.npz "$B"/ 2>/dev/null || true
$PY -m holopart_infer.export.train vae --out "$B" $OPT $DATA --init-from "$A/ckpt_a" --steps 1500 --lr 5e-4 \
    --lr-schedule cosine --decay-from 500 --lr-final 0.05
DONE=$($PY -c "import torch; print(torch.load('$B/dit_state.pt', weights_only=False)['step'])" 2>/dev/null || echo 0)
S=500
while [ $S -le 40000 ]; do
  if [ $S -gt "$DONE" ]; then  # a resumed run skips the segments it has already passed
    $PY -m holopart_infer.export.train dit --out "$B" $OPT $DATA --init-from "$A/ckpt_a" --steps $S --lr 2e-4 \
        --occluded-weight 3
    cp "$B/dit_state.pt" "$B/dit_state_$S.pt.tmp" && mv "$B/dit_state_$S.pt.tmp" "$B/dit_state_$S.pt"
  fi
  S=$((S + 500))
done
