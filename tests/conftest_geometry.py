"""Small geometry helpers shared by the parts IO / conditioning / preview tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh


def box(center=(0.0, 0.0, 0.0), size=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """(vertices, faces) of an axis-aligned box."""
    m = trimesh.creation.box(extents=size)
    return np.asarray(m.vertices) + np.asarray(center, float), np.asarray(m.faces, dtype=np.int64)


def rotation(axis, angle_deg) -> np.ndarray:
    return trimesh.transformations.rotation_matrix(np.radians(angle_deg), axis)


def translation(t) -> np.ndarray:
    return trimesh.transformations.translation_matrix(t)


def scaling(s) -> np.ndarray:
    return np.diag([*np.broadcast_to(np.asarray(s, float), (3,)), 1.0])


def apply(T: np.ndarray, v: np.ndarray) -> np.ndarray:
    return v @ T[:3, :3].T + T[:3, 3]


def write_transformed_scene(path: Path) -> dict[str, np.ndarray]:
    """A glb with translated, rotated, scaled and nested nodes.

    Returns each part's expected world-space vertices, keyed by node name.
    """
    scene = trimesh.Scene()
    expected = {}
    base = scene.graph.base_frame
    root_T = translation([10.0, -2.0, 3.0]) @ rotation([0, 0, 1], 20.0)
    scene.graph.update(frame_from=base, frame_to="root", matrix=root_T)

    specs = [
        ("seat", box(size=(2.0, 0.2, 2.0)), translation([0, 1, 0]) @ scaling([1.5, 1.0, 0.5]), "root"),
        ("back rest", box(size=(2.0, 1.0, 0.2)), translation([0, 2, -1]) @ rotation([1, 0, 0], 15.0), "root"),
        ("leg", box(size=(0.2, 1.0, 0.2)), rotation([0, 1, 0], 45.0) @ scaling(0.5), base),
    ]
    for name, (v, f), T, parent in specs:
        scene.add_geometry(trimesh.Trimesh(v, f, process=False), node_name=name, geom_name=name,
                           parent_node_name=parent, transform=T)
        world = root_T @ T if parent == "root" else T
        expected[name] = apply(world, v)
    scene.export(str(path))
    return expected
