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

Where the files are is found by :mod:`holopart_infer.io.labels` (so that
:func:`holopart_infer.io.parts_io.load_parts` recognises a segmenter folder without
importing this module); this module loads them.
"""
from __future__ import annotations

from pathlib import Path

from holopart_infer.io.labels import find_samesh, find_sampart3d, find_segmenter_output
from holopart_infer.io.parts_io import Parts, load_segmenter_files


def load_segmenter_output(folder: Path) -> Parts | None:
    """:class:`~holopart_infer.io.parts_io.Parts` of a SAMesh or SAMPart3D output folder, or None
    when ``folder`` is neither (then it is read as a folder of part meshes)."""
    found = find_segmenter_output(folder)
    return None if found is None else load_segmenter_files(found)


def load_samesh(folder_or_json: str | Path, mesh: str | Path | None = None) -> Parts:
    """Parts from SAMesh output: ``<name>_face2label.json`` and its mesh.

    Args:
        folder_or_json: SAMesh's ``<output>/<name>/`` folder or the JSON file.
        mesh: the labelled mesh; default ``<name>_segmented.*`` next to the JSON.
            The original input works too when its face order is the same.

    Raises:
        InputError: no or several JSON files, no mesh next to it, labels that do
            not match the mesh's faces.
    """
    return load_segmenter_files(find_samesh(folder_or_json, mesh))


def load_sampart3d(folder: str | Path, scale: str | float | None = None) -> Parts:
    """Parts from SAMPart3D output: ``results/<w>/mesh_<s>.npy`` with ``vis_pcd/<w>/mesh_<s>.ply``.

    Args:
        folder: SAMPart3D's ``save_path`` (or its ``results/<w>`` / ``vis_pcd/<w>`` folder).
        scale: the grouping scale to read; required when several were written.

    Raises:
        InputError: no mesh/labels pair, several scales and none chosen, an
            unknown scale.
    """
    return load_segmenter_files(find_sampart3d(folder, scale))
