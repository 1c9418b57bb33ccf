"""Segmenter outputs as parts: SAMesh and SAMPart3D folders.

What each segmenter writes was read from its repository (facts only, no code taken):

* **SAMesh** (github.com/gtangg12/samesh, ``src/samesh/models/sam_mesh.py``,
  ``segment_mesh``): into ``<output>/<name>/`` it writes ``<name>_segmented.<ext>``
  (the input mesh, read with ``norm=True`` and face-coloured by part; face order
  kept) and ``<name>_face2label.json``, a JSON object mapping each face index
  (as a string) to an integer label. Its own evaluation reads the JSON back the
  same way (``metrics/mesh_segmentation.py``, ``seg_from_face2label``).
* **SAMPart3D** (github.com/Pointcept/SAMPart3D, ``pointcept/engines/eval.py``
  and ``train.py``, the mesh-voting branch): for every grouping scale ``s`` it
  writes ``<save_path>/results/<weights>/mesh_<s>.npy`` (one integer label per
  face of ``trimesh.load(mesh_path)`` with scenes concatenated) and
  ``<save_path>/vis_pcd/<weights>/mesh_<s>.ply`` (that mesh, face-coloured by
  label), plus ``<s>.ply`` point clouds, which have no faces and are ignored.

:func:`load_segmenter_output` recognises either folder layout (the folder itself
or its ``results``/``vis_pcd`` parents). For SAMPart3D with several scales, pick
one by passing the mesh and its labels directly (``mesh_<s>.ply --labels
mesh_<s>.npy``) or :func:`load_sampart3d` with ``scale=``.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from holopart_infer.errors import InputError

log = logging.getLogger("holopart_infer")

_SAMESH_JSON = "_face2label.json"
_SAMPART3D_NPY = re.compile(r"^mesh_(?P<scale>[0-9.eE+-]+)\.npy$")


def load_segmenter_output(folder: Path):
    """:class:`~holopart_infer.parts_io.Parts` of a SAMesh or SAMPart3D output folder, or None
    when ``folder`` is neither (then it is read as a folder of part meshes)."""
    folder = Path(folder)
    if list(folder.glob(f"*{_SAMESH_JSON}")):
        return load_samesh(folder)
    if _sampart3d_pairs(folder):
        return load_sampart3d(folder)
    return None


def load_samesh(folder_or_json: str | Path, mesh: str | Path | None = None):
    """Parts from SAMesh output: ``<name>_face2label.json`` and its mesh.

    Args:
        folder_or_json: SAMesh's ``<output>/<name>/`` folder or the JSON file.
        mesh: the labelled mesh; default ``<name>_segmented.*`` next to the JSON.
            The original input works too when its face order is the same.

    Raises:
        InputError: no or several JSON files, no mesh next to it, labels that do
            not match the mesh's faces.
    """
    from holopart_infer.parts_io import MESH_EXTENSIONS, load_mesh_with_labels

    p = Path(folder_or_json)
    if p.is_dir():
        found = sorted(p.glob(f"*{_SAMESH_JSON}"))
        if len(found) != 1:
            raise InputError(f"{p}: expected one SAMesh *{_SAMESH_JSON} file, found {len(found)} "
                             f"({', '.join(f.name for f in found) or 'none'}); pass the mesh and "
                             "--labels <name>_face2label.json directly")
        p = found[0]
    stem = p.name[: -len(_SAMESH_JSON)] if p.name.endswith(_SAMESH_JSON) else p.stem
    if mesh is None:
        candidates = [c for c in sorted(p.parent.glob(f"{stem}_segmented.*")) if c.suffix.lower() in MESH_EXTENSIONS]
        if not candidates:
            raise InputError(f"{p}: SAMesh output without its mesh: expected {stem}_segmented.glb (or .obj/.ply) "
                             f"next to it. Pass the labelled mesh with --labels {p.name}")
        mesh = candidates[0]
    parts = load_mesh_with_labels(Path(mesh), p, kind="samesh")
    parts.source = str(p.parent)
    return parts


def _sampart3d_pairs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """{scale: (mesh_<s>.ply, mesh_<s>.npy)} found under a SAMPart3D save_path layout."""
    roots = [folder, folder.parent]  # save_path itself, or results/ or vis_pcd/<w> given
    pairs: dict[str, tuple[Path, Path]] = {}
    for root in roots:
        for npy in sorted(root.glob("results/*/mesh_*.npy")) + sorted(root.glob("*/mesh_*.npy")) + \
                sorted(folder.glob("mesh_*.npy")):
            m = _SAMPART3D_NPY.match(npy.name)
            if not m:
                continue
            run = npy.parent.name
            for ply in (npy.with_suffix(".ply"), npy.parent.parent.parent / "vis_pcd" / run / f"mesh_{m['scale']}.ply",
                        folder / f"mesh_{m['scale']}.ply"):
                if ply.is_file():
                    pairs.setdefault(m["scale"], (ply, npy))
                    break
        if pairs:
            break
    return pairs


def load_sampart3d(folder: str | Path, scale: str | float | None = None):
    """Parts from SAMPart3D output: ``results/<w>/mesh_<s>.npy`` with ``vis_pcd/<w>/mesh_<s>.ply``.

    Args:
        folder: SAMPart3D's ``save_path`` (or its ``results/<w>`` / ``vis_pcd/<w>`` folder).
        scale: the grouping scale to read; required when several were written.

    Raises:
        InputError: no mesh/labels pair, several scales and none chosen, an
            unknown scale.
    """
    from holopart_infer.parts_io import load_mesh_with_labels

    folder = Path(folder)
    pairs = _sampart3d_pairs(folder)
    if not pairs:
        raise InputError(f"{folder}: no SAMPart3D output found (results/<weights>/mesh_<scale>.npy with "
                         "vis_pcd/<weights>/mesh_<scale>.ply)")
    if scale is None:
        if len(pairs) > 1:
            some = sorted(pairs, key=float)
            ply, npy = pairs[some[0]]
            raise InputError(f"{folder}: SAMPart3D wrote {len(pairs)} scales ({', '.join(some)}); choose one: "
                             f"holopart-infer run {ply} --labels {npy} (or adapters.load_sampart3d(folder, "
                             "scale=...)). Smaller scales give more, smaller parts")
        key = next(iter(pairs))
    else:
        key = next((k for k in pairs if float(k) == float(scale)), None)
        if key is None:
            raise InputError(f"{folder}: no SAMPart3D output for scale {scale}; found {', '.join(sorted(pairs))}")
    ply, npy = pairs[key]
    parts = load_mesh_with_labels(ply, npy, kind="sampart3d")
    log.info("SAMPart3D output %s, scale %s: %d parts", folder, key, len(parts))
    return parts
