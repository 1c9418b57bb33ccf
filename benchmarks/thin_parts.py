"""How many parts come back empty with the embedded model (holopart-mini), with and
without the thin-part handling (``CompletionOptions.thin_parts``).

Objects: multi-part objects built here in code (flat panels, sheets, thin fins
next to solid parts), the embedded demo objects, and any mesh files given on the
command line (read with ``--parts`` as given, default ``components`` for single
meshes). Prints one line per object and a total, as Markdown.

    python benchmarks/thin_parts.py [--steps 8] [--depth 7] [--parts components] [--only-files] [FILE ...]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import trimesh

import holopart_infer as hp
from holopart_infer import assets
from holopart_infer.io.parts_io import Parts, load_parts

OPTS = dict(steps=8, depth=7, decimate=None, seed=0)


def _box(extents, at):
    m = trimesh.creation.box(extents=extents)
    m.apply_translation(at)
    return m


def _sheet(w, h, at, axis=1):
    """An open flat rectangle (two triangles), normal along ``axis``."""
    v = np.array([[-w / 2, 0, -h / 2], [w / 2, 0, -h / 2], [w / 2, 0, h / 2], [-w / 2, 0, h / 2]])
    if axis == 0:
        v = v[:, [1, 0, 2]]
    elif axis == 2:
        v = v[:, [0, 2, 1]]
    return trimesh.Trimesh(v + at, [[0, 2, 1], [0, 3, 2]], process=False)


def built_objects() -> dict[str, Parts]:
    objs = {}
    legs = [_box((0.08, 0.7, 0.08), (x, -0.35, z)) for x in (-0.5, 0.5) for z in (-0.3, 0.3)]
    objs["table_thin_top"] = Parts.from_meshes([_box((1.2, 0.02, 0.8), (0, 0.01, 0))] + legs,
                                               ["top", "leg0", "leg1", "leg2", "leg3"])
    objs["cabinet_sheets"] = Parts.from_meshes(
        [_box((0.8, 1.0, 0.5), (0, 0, 0)), _sheet(0.8, 1.0, (0, 0, 0.26), axis=2), _sheet(0.8, 0.5, (0, 0.51, 0)),
         _sheet(1.0, 0.5, (0.41, 0, 0), axis=0)], ["body", "door", "lid", "side_panel"])
    objs["fan_blades"] = Parts.from_meshes(
        [trimesh.creation.cylinder(radius=0.15, height=0.2)]
        + [_box((0.9, 0.006, 0.2), (0, 0, 0)).apply_transform(
            trimesh.transformations.rotation_matrix(a, (0, 0, 1))) for a in (0.0, 2.1, 4.2)],
        ["hub", "blade0", "blade1", "blade2"])
    objs["book"] = Parts.from_meshes([_box((0.6, 0.8, 0.01), (0, 0, 0.1)), _box((0.6, 0.8, 0.01), (0, 0, -0.1)),
                                      _box((0.58, 0.78, 0.19), (0, 0, 0)), _box((0.01, 0.8, 0.21), (-0.3, 0, 0))],
                                     ["front_cover", "back_cover", "pages", "spine"])
    for name in assets.DEMO_OBJECTS:
        objs[f"demo_{name}"] = load_parts(assets.demo_object_path(name))
    return objs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*")
    ap.add_argument("--parts", default="components")
    ap.add_argument("--steps", type=int, default=OPTS["steps"])
    ap.add_argument("--depth", type=int, default=OPTS["depth"])
    ap.add_argument("--only-files", action="store_true", help="skip the built and demo objects")
    args = ap.parse_args()
    OPTS.update(steps=args.steps, depth=args.depth)
    objs = {} if args.only_files else built_objects()
    for f in args.files:
        try:
            objs[f] = load_parts(f)
        except hp.InputError:
            objs[f] = load_parts(f, parts=args.parts)
    model = hp.load(assets.demo_model_path())
    print(f"options {OPTS}, backend {model.backend_name} on {model.device}\n")
    print("| object | parts | empty before (thin_parts=False) | empty after | retried on fitted grid -> recovered | "
          "thickened stand-in |")
    print("|---|---|---|---|---|---|")
    tot = np.zeros(4, int)
    for name, parts in objs.items():
        t0 = time.perf_counter()
        before = model.complete(parts, thin_parts=False, appearance=False, **OPTS)
        after = model.complete(parts, thin_parts=True, appearance=False, **OPTS)
        eb = [p.name for p in before.parts if len(p.faces) == 0]
        ea = [p.name for p in after.parts if len(p.faces) == 0]
        th = after.stats["thin_parts"]
        recovered = [n for n in th["retried"] if n not in th["fallback"]]
        tot += [len(parts), len(eb), len(ea), len(th["fallback"])]
        print(f"| {name} | {len(parts)} | {len(eb)} {eb if eb else ''} | {len(ea)} | {len(th['retried'])} -> "
              f"{len(recovered)} | {len(th['fallback'])} {th['fallback'] if th['fallback'] else ''} |"
              f"  <!-- {time.perf_counter() - t0:.0f}s -->", flush=True)
    print(f"| **total** | {tot[0]} | {tot[1]} | {tot[2]} | | {tot[3]} |")


if __name__ == "__main__":
    main()
