"""Turn a checkpoint's up axis by rewriting its weights (exact; no training).

A HoloPart-style network sees coordinates only through its first linear layers: the frequency
embedding ``[x, sin(x_i f_j), cos(x_i f_j)]`` of each position (and the normals next to it) feeds
``proj_query`` (VAE decoder), ``proj_in`` (VAE encoder) and the part encoder's three input
projections; everything after them works on tokens, not axes. When the frame turns by a rotation
that only permutes axes and flips signs (every turn between signed up axes is one),
``x_model = A(x_new)`` with ``x_model[k] = s_k * x_new[p_k]``, so

- ``x_k`` and ``sin(f x_k)`` become ``s_k`` times the channel of axis ``p_k``, ``cos(f x_k)`` that
  channel unsigned (cos is even), and a normal component ``n_k`` becomes ``s_k * n_new[p_k]``;
- a first layer ``W @ feat(x_model)`` equals ``(W @ M) @ feat(x_new)`` for that signed
  permutation ``M`` of its input columns.

Folding ``M`` into those five weight matrices gives a checkpoint whose outputs for an object in the
new frame equal the old checkpoint's outputs for the same object turned into the old frame (the
runtime's rotation), up to float rounding: same latents, same field, same meshes. The rest of the
pipeline (bounding-box normalization, farthest point sampling, the grid) is unchanged by such a
turn.

Usage (repo root)::

    python -m holopart_infer.export.refold_up SRC DST --up +y

``DST`` is a new folder (never overwritten); ``model_index.json`` there states the new ``up_axis``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from holopart_infer.errors import InputError
from holopart_infer.io.frames import AxisMap, check_up, up_rotation

# component -> (weight name, number of feature channels after the position embedding)
FIRST_LAYERS = {
    "vae": [("decoder.proj_query.weight", 0), ("encoder.proj_in.weight", 3)],
    "part_encoder": [("encoder_context.q_proj_in.weight", 3), ("encoder_context.kv_proj_in.weight", 4),
                     ("encoder_local.proj_in.weight", 3)],
}


def column_map(axis_map: AxisMap, num_freqs: int, extra: int) -> tuple[np.ndarray, np.ndarray]:
    """Source column and sign of each input column of a first layer, for a feature vector
    ``[x (3), sin (3F, axis-major), cos (3F), normal (3 if extra >= 3), rest]`` taken in the
    model's frame, expressed in the new frame's features."""
    F = num_freqs
    n = 3 * (2 * F + 1) + extra
    src, sign = np.arange(n), np.ones(n)
    p, s = axis_map.perm, axis_map.signs
    for k in range(3):
        src[k], sign[k] = p[k], s[k]
        for j in range(F):
            src[3 + k * F + j], sign[3 + k * F + j] = 3 + p[k] * F + j, s[k]
            src[3 + 3 * F + k * F + j] = 3 + 3 * F + p[k] * F + j
    if extra >= 3:  # the normal follows the embedding
        base = 3 * (2 * F + 1)
        for k in range(3):
            src[base + k], sign[base + k] = base + p[k], s[k]
    return src, sign


def fold(weight: np.ndarray, src: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """``W @ M``: column ``src[c]`` of the result is ``sign[c] * W[:, c]``."""
    out = np.empty_like(weight)
    out[:, src] = weight * sign.astype(weight.dtype)[None, :]
    return out


def refold(src_dir: Path, dst_dir: Path, up: str) -> dict:
    """Write ``dst_dir``: ``src_dir`` with its first layers folded for ``up``. Returns a summary."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    index_path = src_dir / "model_index.json"
    if not index_path.is_file():
        raise InputError(f"{src_dir}: no model_index.json; expected a checkpoint folder in the published layout")
    if dst_dir.exists():
        raise InputError(f"{dst_dir} exists; choose a new folder (nothing is overwritten)")
    index = json.loads(index_path.read_text())
    old_up = check_up(index.get("up_axis", "+y"), f"{index_path} up_axis")
    new_up = check_up(up)
    axis_map = up_rotation(new_up, old_up)  # new frame -> the frame the weights were trained in
    tmp = dst_dir.with_name(dst_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src_dir, tmp)
    changed, skipped = [], []
    for comp, layers in FIRST_LAYERS.items():
        cfg = json.loads((src_dir / comp / "config.json").read_text())
        wfile = tmp / comp / "diffusion_pytorch_model.safetensors"
        tensors = load_file(str(wfile))
        with safe_open(str(wfile), "np") as f:
            metadata = f.metadata()  # kept as written (e.g. {"format": "pt"})
        for name, extra in layers:
            if name not in tensors:  # e.g. the VAE encoder, which decoder-only checkpoints leave out
                skipped.append(f"{comp}/{name}")
                continue
            w = tensors[name]
            src, sign = column_map(axis_map, int(cfg["embed_frequency"]), extra)
            if w.shape[1] != len(src):
                raise InputError(f"{comp}/{name}: {w.shape[1]} input columns, expected {len(src)} "
                                 f"(frequency embedding of 3 coordinates + {extra} features)")
            tensors[name] = np.ascontiguousarray(fold(w, src, sign))
            changed.append(f"{comp}/{name}")
        save_file(tensors, str(wfile), metadata=metadata)
    index["up_axis"] = new_up
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    tmp.rename(dst_dir)
    return {"from": old_up, "to": new_up, "map": axis_map.matrix.tolist(), "layers": changed, "absent": skipped}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m holopart_infer.export.refold_up", description=__doc__.split("\n")[0])
    p.add_argument("src", type=Path, help="checkpoint folder (published layout)")
    p.add_argument("dst", type=Path, help="new folder to write")
    p.add_argument("--up", required=True, help="the new up axis: +y, -y, +z, -z, +x or -x")
    a = p.parse_args(argv)
    try:
        print(json.dumps(refold(a.src, a.dst, a.up)))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
