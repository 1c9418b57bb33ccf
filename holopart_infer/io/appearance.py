"""The input's look carried over to the completed parts, as vertex colours.

Each input part's appearance is read once (:func:`from_trimesh`): vertex colours,
face colours, a material base colour, or a base-colour texture with UVs (times
the material's base colour factor). :func:`transfer` then colours each vertex
of the completed part:

* **visible** (the vertex lies within ``tolerance`` of the input part's
  surface, i.e. it is where the input had surface): the colour of the nearest
  input surface point, with the texture sampled at that point's UV;
* **hidden** (surface the model invented): the part's dominant colour (the most
  common colour by area over the input part, coarsely quantised, then averaged).

The nearest input point is found among dense area-weighted samples of the input
part (a KD-tree), not by exact point-to-triangle projection: at the sample
density used the colour error is below a texel of typical textures, and it
needs no spatial-index package beyond scipy.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("holopart_infer")

_SAMPLES = 60000  # input surface samples per part for the nearest-point look-up
_TOLERANCE = 0.02  # "visible" distance, as a fraction of the part's bounding-box diagonal
_QUANT = 16  # levels per channel when finding the dominant colour


@dataclass
class Appearance:
    """One part's look. Colours are RGBA uint8.

    Attributes:
        base_color: (4,) material base colour (multiplies the texture).
        vertex_colors: (V, 4) per-vertex colours, or None.
        face_colors: (F, 4) per-face colours, or None.
        uv: (V, 2) texture coordinates (origin bottom-left, as trimesh), or None.
        image: (H, W, 4) base-colour texture (row 0 at the top), or None.
    """

    base_color: np.ndarray
    vertex_colors: np.ndarray | None = None
    face_colors: np.ndarray | None = None
    uv: np.ndarray | None = None
    image: np.ndarray | None = None

    @property
    def is_plain(self) -> bool:
        """True when the part has one colour (no per-vertex/face colour, no texture)."""
        return self.vertex_colors is None and self.face_colors is None and self.image is None

    def subset(self, vertex_index: np.ndarray, face_index: np.ndarray) -> "Appearance":
        """The appearance of a sub-mesh made of these input vertices and faces."""
        return Appearance(
            base_color=self.base_color,
            vertex_colors=None if self.vertex_colors is None else self.vertex_colors[vertex_index],
            face_colors=None if self.face_colors is None else self.face_colors[face_index],
            uv=None if self.uv is None else self.uv[vertex_index],
            image=self.image)

    def colors_at(self, faces: np.ndarray, face_idx: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """RGBA uint8 colours at surface points given by face index and barycentric weights."""
        n = len(face_idx)
        col = np.broadcast_to(self.base_color.astype(np.float64), (n, 4)).copy()
        if self.image is not None and self.uv is not None:
            uv = np.einsum("nk,nkj->nj", bary, self.uv[faces[face_idx]])
            col *= _sample_texture(self.image, uv) / 255.0
        if self.vertex_colors is not None:
            vc = np.einsum("nk,nkj->nj", bary, self.vertex_colors[faces[face_idx]].astype(np.float64))
            col = col * vc / 255.0 if self.image is not None else vc
        elif self.face_colors is not None:
            col = self.face_colors[face_idx].astype(np.float64)
        return np.clip(np.round(col), 0, 255).astype(np.uint8)


def from_trimesh(geom) -> Appearance | None:
    """The appearance of a trimesh.Trimesh as loaded, or None when it has none to carry."""
    visual = getattr(geom, "visual", None)
    if visual is None:
        return None
    kind = getattr(visual, "kind", None)
    if kind == "vertex":
        vc = np.asarray(visual.vertex_colors, dtype=np.uint8)
        if len(vc) == len(geom.vertices):
            return Appearance(base_color=np.full(4, 255, np.uint8), vertex_colors=vc.copy())
    if kind == "face":
        fc = np.asarray(visual.face_colors, dtype=np.uint8)
        if len(fc) == len(geom.faces):
            return Appearance(base_color=np.full(4, 255, np.uint8), face_colors=fc.copy())
    material = getattr(visual, "material", None)
    if material is None:
        return None
    base = _material_base_color(material)
    image = _material_image(material)
    uv = getattr(visual, "uv", None)
    vc = None
    attrs = getattr(visual, "vertex_attributes", {}) or {}
    if "color" in attrs and len(attrs["color"]) == len(geom.vertices):
        vc = _as_rgba_uint8(np.asarray(attrs["color"]))
    if image is not None and (uv is None or len(uv) != len(geom.vertices)):
        image = None
    return Appearance(base_color=base, vertex_colors=vc,
                      uv=None if image is None else np.asarray(uv, dtype=np.float64).copy(), image=image)


def transfer(src_vertices: np.ndarray, src_faces: np.ndarray, app: Appearance, dst_vertices: np.ndarray,
             *, seed: int = 0, tolerance: float = _TOLERANCE) -> np.ndarray:
    """Vertex colours (V, 4) uint8 for ``dst_vertices`` from the input part's look.

    Args:
        src_vertices, src_faces: the input part (same coordinates as ``dst_vertices``).
        app: its :class:`Appearance`.
        dst_vertices: the completed part's vertices.
        seed: seeds the surface samples (deterministic colours).
        tolerance: a vertex farther than this fraction of the input part's
            bounding-box diagonal from the input surface is hidden.
    """
    from scipy.spatial import cKDTree

    from holopart_infer.model.surface import sample_surface

    dst = np.asarray(dst_vertices, dtype=np.float64)
    if len(dst) == 0:
        return np.zeros((0, 4), np.uint8)
    v = np.asarray(src_vertices, dtype=np.float64)
    f = np.asarray(src_faces, dtype=np.int64)
    if app.is_plain:
        return np.broadcast_to(app.base_color, (len(dst), 4)).copy()
    rng = np.random.default_rng(seed)
    pts, _, fidx = sample_surface(v, f, _SAMPLES, rng)
    bary = _barycentric(v[f[fidx]], pts)
    colors = app.colors_at(f, fidx, bary)
    dist, nearest = cKDTree(pts).query(dst, k=1)
    diag = float(np.linalg.norm(v.max(axis=0) - v.min(axis=0)))
    out = colors[nearest]
    hidden = dist > tolerance * max(diag, 1e-12)
    if hidden.any():
        out[hidden] = dominant_color(colors)
    return out


def dominant_color(colors: np.ndarray) -> np.ndarray:
    """The most common colour (area-weighted samples): mean of the fullest quantised bin."""
    c = np.asarray(colors, dtype=np.uint8)
    q = (c[:, :3].astype(np.int64) * _QUANT) // 256
    key = (q[:, 0] * _QUANT + q[:, 1]) * _QUANT + q[:, 2]
    counts = np.bincount(key)
    members = c[key == int(np.argmax(counts))]
    return np.round(members.astype(np.float64).mean(axis=0)).astype(np.uint8)


def _barycentric(tri: np.ndarray, p: np.ndarray) -> np.ndarray:
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b - a, c - a, p - a
    d00 = np.einsum("ij,ij->i", v0, v0)
    d01 = np.einsum("ij,ij->i", v0, v1)
    d11 = np.einsum("ij,ij->i", v1, v1)
    d20 = np.einsum("ij,ij->i", v2, v0)
    d21 = np.einsum("ij,ij->i", v2, v1)
    den = d00 * d11 - d01 * d01
    den = np.where(np.abs(den) > 0, den, 1.0)
    w1 = (d11 * d20 - d01 * d21) / den
    w2 = (d00 * d21 - d01 * d20) / den
    return np.clip(np.stack([1.0 - w1 - w2, w1, w2], axis=1), 0.0, 1.0)


def _sample_texture(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear RGBA samples (float64 0..255) of a texture at UVs (origin bottom-left).

    UVs outside [0, 1] repeat (glTF's default wrap); within the tile, texels are
    clamped at the edges, so a UV of exactly 0 or 1 does not blend in the
    opposite edge (which matters for small textures and sphere poles).
    """
    h, w = image.shape[:2]
    uvw = np.where((uv >= 0.0) & (uv <= 1.0), uv, np.mod(uv, 1.0))
    u = uvw[:, 0] * w - 0.5
    r = (1.0 - uvw[:, 1]) * h - 0.5
    x0, y0 = np.floor(u).astype(np.int64), np.floor(r).astype(np.int64)
    fx, fy = (u - x0)[:, None], (r - y0)[:, None]
    img = image.astype(np.float64)

    def px(x, y):
        return img[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)]

    return ((1 - fx) * (1 - fy) * px(x0, y0) + fx * (1 - fy) * px(x0 + 1, y0)
            + (1 - fx) * fy * px(x0, y0 + 1) + fx * fy * px(x0 + 1, y0 + 1))


def _material_base_color(material) -> np.ndarray:
    # PBR: baseColorFactor (absent = white; trimesh's main_color would average the texture in);
    # simple (OBJ/MTL) materials: the diffuse colour
    attr = "baseColorFactor" if hasattr(material, "baseColorFactor") else "diffuse"
    val = getattr(material, attr, None)
    if val is not None:
        return _as_rgba_uint8(np.asarray(val).reshape(1, -1))[0]
    return np.full(4, 255, np.uint8)


def _material_image(material) -> np.ndarray | None:
    img = getattr(material, "baseColorTexture", None)
    if img is None:
        img = getattr(material, "image", None)
    if img is None:
        return None
    try:
        return np.asarray(img.convert("RGBA"), dtype=np.uint8)
    except Exception:  # an image Pillow cannot convert: no texture rather than no result
        log.debug("could not read a material texture", exc_info=True)
        return None


def _as_rgba_uint8(arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype.kind == "f":
        a = np.round(np.clip(a, 0.0, 1.0) * 255.0) if a.size and float(np.nanmax(a)) <= 1.0 else a
    a = np.clip(a, 0, 255).astype(np.uint8)
    if a.shape[1] == 3:
        a = np.concatenate([a, np.full((len(a), 1), 255, np.uint8)], axis=1)
    return a[:, :4]


def apply(results: list, parts, seed: int = 0) -> None:
    """In place: give each completed part (``PartMesh``) its input part's look.

    A part with one plain colour gets it as its material colour; a part with
    vertex/face colours or a texture gets per-vertex colours (:func:`transfer`);
    a part without appearance keeps its palette colour.
    """
    for res, part in zip(results, parts):
        app = getattr(part, "appearance", None)
        if app is None or len(res.faces) == 0:
            continue
        if app.is_plain:
            res.color = tuple(int(c) for c in app.base_color)
            continue
        res.vertex_colors = transfer(part.vertices, part.faces, app, res.vertices, seed=seed)
        res.color = tuple(int(c) for c in dominant_color(res.vertex_colors))
