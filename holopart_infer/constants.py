"""Geometry constants and option ranges, in one place.

Every module that needs one of these imports it from here; the CLI's help and
:meth:`holopart_infer.pipeline.CompletionOptions.validate` read the ranges
from here too, so they cannot disagree.
"""
from __future__ import annotations

#: Half side of the extraction box in a part's model frame: the decoder is
#: queried on ``[-EXTRACTION_BOUND, EXTRACTION_BOUND]^3`` (reference value).
EXTRACTION_BOUND = 1.05

#: Octree depth of extraction: the final grid has ``2**depth - 8`` cells per axis.
DEPTH_MIN, DEPTH_MAX = 5, 11
DEFAULT_DEPTH = 9  # reference: 504 cells
#: Smallest first (fully evaluated) extraction level, cells per axis
#: (extract.levels_for_depth): 32 gives 61^3 points at depth 7. A coarser start
#: (16: 31^3) queries ~3x less but is kept only where benchmarks/coarse_gate.py
#: passes (issue 28 item 4; benchmarks/RESULTS.md).
COARSE_MIN_RESOLUTION = 32

#: ``--quality`` presets: named (depth, steps) pairs. ``high`` is the reference
#: (depth 9, 50 Euler steps) and the library default for a model that sets
#: neither; the embedded holopart-mini's manifest asks for ``balanced`` values
#: (a CPU default: benchmarks/RESULTS.md, "CPU defaults and fewer queries").
#: Explicit ``depth``/``steps`` win over a preset.
QUALITY_PRESETS = {
    "draft": {"depth": 6, "steps": 10},
    "balanced": {"depth": 7, "steps": 20},
    "high": {"depth": 9, "steps": 50},
}

#: |logit| threshold of the coarse-to-fine band (reference 0.95).
DEFAULT_BAND = 0.95

#: Surface samples per part and for the whole object (reference 20480).
DEFAULT_NUM_POINTS = 20480
MIN_NUM_POINTS = 16

#: Latent length of the published model.
DEFAULT_LATENT_TOKENS = 2048

#: Seeds are fed to numpy's generators, which take 0 .. 2**63 - 1 here.
SEED_MAX = 2**63 - 1

#: Smallest decimation target that still gives a closed mesh (a tetrahedron).
MIN_DECIMATE_FACES = 4

#: Accepted input coordinates (README "Guarantees"; checked by
#: :func:`holopart_infer.io.parts_io.validate_parts`): every coordinate finite and at
#: most ``COORD_MAX`` in magnitude (completed parts reach past the input, and a glb
#: stores float32, whose largest value is 3.4e38); the object's longest
#: bounding-box side at least ``COORD_MIN_EXTENT`` (float32 keeps full precision
#: down to 1.2e-38) and at least ``MIN_EXTENT_RATIO`` of its largest coordinate
#: magnitude (float32 then resolves 1/4096 of the object's size or finer; an
#: object far from the origin for its size must be moved near it first).
COORD_MAX = 1e36
COORD_MIN_EXTENT = 1e-30
MIN_EXTENT_RATIO = 2.0**-11

#: Mesh files :func:`holopart_infer.io.parts_io.load_parts` reads, and the scene
#: formats among them (several nodes, transforms, materials).
MESH_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
SCENE_EXTENSIONS = (".glb", ".gltf")

#: Decoder query points per part per call: the one query-chunk size. It is
#: CompletionOptions.chunk_points' default on the CPU and extraction's
#: (``holopart_infer.extraction.extract``, 8x on CUDA); the TensorRT profile and the torch
#: decoder derive their limits from it. Here, not in the extraction stage, so the
#: backends read it without importing extraction.
QUERY_CHUNK_POINTS = 8192
