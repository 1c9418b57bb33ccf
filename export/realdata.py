"""Real part assemblies from the Sweet Home 3D furniture libraries (issue 22, item 2).

Source: the Debian package ``sweethome3d-furniture`` (five libraries, each a
``.sh3f`` zip archive under ``/usr/share/sweethome3d/furniture``): a
``PluginFurnitureCatalog.properties`` (Java properties: per model ``id#N``,
``name#N``, ``category#N``, ``model#N``, ``creator#N``), a ``LICENSE.TXT``
and the OBJ/MTL models. The models are Y-up (Sweet Home 3D's convention), the
frame HoloPart was trained in, so they are used as they are.

* **Parts** are the OBJ's objects (``o`` statements, one Blender object each);
  a file without ``o`` statements is split by its groups (``g``). ``usemtl``
  changes within an object do not split it. Polygons are fan-triangulated.
* **Cleaning** (:func:`clean_parts`): parts with fewer than 4 faces or less
  than 1e-4 of the object's surface area are merged into nothing (dropped);
  objects with fewer than 2 or more than ``max_parts`` parts, or more than
  ``max_faces`` triangles, are skipped. The object is centred and scaled so
  its longest side spans [-1, 1] (the model frame).
* **Visibility** (:func:`zbuffer_visible_faces`): the input HoloPart gets is
  the visible surface. Every part is rendered (as dense surface samples,
  splatted into a depth buffer) from ``n_views`` cameras on a Fibonacci sphere
  of radius 4, the same cameras as :func:`holopart_infer.export.synthetic.visible_faces`;
  a face is visible when one of its 4 sample points (centroid and one near
  each corner) is not behind the depth buffer. Faces count as two-sided (real
  models have inconsistent windings and single-sided sheets). It is an
  approximation of the ray test (depth resolution, splat holes), checked
  against it in ``tests/export_side/test_realdata.py``.
* **Ground truth occupancy** (:func:`occupancy_labels`): inside when the
  generalized winding number's magnitude exceeds 0.5 (exact for closed
  parts of either orientation), or within ``shell`` of the surface, so that
  open sheets and single-sided panels (most real parts are not closed) get a
  thin solid instead of no volume at all.
* **Split** (:func:`make_split`): by object, after removing a few whole
  categories (held out as a category test). Written to
  ``export/realdata_split.json`` before any training; training reads only its
  ``train`` list.
* **Licences**: every library is CC0 or CC-BY 3.0 (read from each archive's
  ``LICENSE.TXT`` and catalog header); :func:`write_attribution` writes the
  per-model attribution CC-BY needs.

Installing the package is a training-side step (:func:`ensure_installed`,
``apt-get install -y sweethome3d-furniture``); the runtime never imports this
module.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import trimesh

from .synthetic import SyntheticObject, SyntheticPart, fibonacci_sphere, normalize_meshes, winding_number

log = logging.getLogger("holopart_infer.realdata")

FURNITURE_DIR = Path("/usr/share/sweethome3d/furniture")
DEBIAN_PACKAGE = "sweethome3d-furniture"
SPLIT_PATH = Path(__file__).with_name("realdata_split.json")

# Licences of the five libraries, as stated by each archive's LICENSE.TXT / catalog header and by
# the package's debian/copyright. All allow this use (CC0: no conditions; CC-BY 3.0: attribution).
LIBRARY_LICENSES = {
    "BlendSwap-CC-0": {"license": "CC0-1.0", "attribution_required": False},
    "BlendSwap-CC-BY": {"license": "CC-BY-3.0", "attribution_required": True},
    "KatorLegaz": {"license": "CC-BY-3.0-US", "attribution_required": True},
    "Reallusion": {"license": "CC-BY-3.0-US", "attribution_required": True},
    "Scopia": {"license": "CC-BY-3.0", "attribution_required": True},
}
ALLOWED_LICENSES = {"CC0-1.0", "CC-BY-3.0", "CC-BY-3.0-US"}
HELDOUT_CATEGORIES = ("Bathroom", "Office")


# ----------------------------------------------------------------------------- install / catalog


def ensure_installed(furniture_dir: Path = FURNITURE_DIR) -> Path:
    """The libraries' folder; installs the Debian package when it is missing (training side only)."""
    furniture_dir = Path(furniture_dir)
    if furniture_dir.is_dir() and any(furniture_dir.glob("*.sh3f")):
        return furniture_dir
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"{furniture_dir} is missing and apt-get is not available: "
                           f"install the Debian package {DEBIAN_PACKAGE}")
    log.info("installing %s with apt-get", DEBIAN_PACKAGE)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", DEBIAN_PACKAGE], check=True, env=env)
    if not any(furniture_dir.glob("*.sh3f")):
        raise RuntimeError(f"{DEBIAN_PACKAGE} is installed but {furniture_dir} has no .sh3f libraries")
    return furniture_dir


def read_properties(text: str) -> dict[str, str]:
    """Java ``.properties`` text -> dict (comments, ``key=value`` / ``key: value``, continuations, \\uXXXX)."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].lstrip()
        i += 1
        if not line or line[0] in "#!":
            continue
        while line.endswith("\\") and not line.endswith("\\\\") and i < len(lines):
            line = line[:-1] + lines[i].lstrip()
            i += 1
        m = re.match(r"((?:\\.|[^=:\s\\])+)\s*[=:\s]\s*(.*)$", line)
        if not m:
            out[_unescape(line)] = ""
            continue
        out[_unescape(m.group(1))] = _unescape(m.group(2))
    return out


def _unescape(s: str) -> str:
    s = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), s)
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), s)


@dataclass(frozen=True)
class CatalogEntry:
    library: str        # archive stem, e.g. "Scopia"
    archive: str        # path of the .sh3f
    index: int          # N of the catalog's "#N" keys
    id: str             # the catalog's id (unique within the library)
    name: str
    category: str
    model: str          # path of the OBJ inside the archive
    creator: str
    license: str

    @property
    def key(self) -> str:
        """Unique object key across libraries: ``library/id``."""
        return f"{self.library}/{self.id}"


def read_catalog(archive: str | os.PathLike) -> list[CatalogEntry]:
    """Entries with an OBJ model of one ``.sh3f`` library (raises for an unknown library licence)."""
    archive = Path(archive)
    lib = archive.stem
    if lib not in LIBRARY_LICENSES:
        raise ValueError(f"{archive}: unknown library {lib!r}; add its licence to LIBRARY_LICENSES after reading it")
    lic = LIBRARY_LICENSES[lib]["license"]
    with zipfile.ZipFile(archive) as z:
        props = read_properties(z.read("PluginFurnitureCatalog.properties").decode("latin-1"))
    out = []
    for k, v in props.items():
        m = re.fullmatch(r"model#(\d+)", k)
        if not m or not v.strip().lower().endswith(".obj"):
            continue
        n = m.group(1)
        out.append(CatalogEntry(lib, str(archive), int(n), props.get(f"id#{n}", f"{lib}#{n}"),
                                props.get(f"name#{n}", ""), props.get(f"category#{n}", ""),
                                v.strip().lstrip("/"), props.get(f"creator#{n}", ""), lic))
    return sorted(out, key=lambda e: e.index)


def read_catalogs(furniture_dir: str | os.PathLike = FURNITURE_DIR) -> list[CatalogEntry]:
    """Every allowed library's entries (a library whose licence is not allowed is skipped and logged)."""
    out = []
    for a in sorted(Path(furniture_dir).glob("*.sh3f")):
        lic = LIBRARY_LICENSES.get(a.stem, {}).get("license")
        if lic not in ALLOWED_LICENSES:
            log.warning("skipping %s: licence %r not allowed for training", a.name, lic)
            continue
        out += read_catalog(a)
    return out


def library_license_text(archive: str | os.PathLike) -> str:
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        return z.read("LICENSE.TXT").decode("latin-1") if "LICENSE.TXT" in names else ""


# ----------------------------------------------------------------------------- OBJ


def parse_obj(text: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """OBJ text -> [(part name, vertices (V, 3), triangles (F, 3))], one per ``o`` (or ``g``) unit.

    Vertices are shared by the whole file (OBJ indices are global); each part
    keeps only the vertices it uses. Negative (relative) indices are supported.
    """
    verts: list[list[float]] = []
    units: dict[str, list] = {}
    order: list[str] = []
    use_o = re.search(r"^o\s", text, re.M) is not None
    current = "default"
    for raw in text.splitlines():
        if not raw or raw[0] not in "vfog":
            continue
        tok = raw.split()
        if not tok:
            continue
        head = tok[0]
        if head == "v":
            verts.append([float(tok[1]), float(tok[2]), float(tok[3])])
        elif head == "f":
            idx = []
            for t in tok[1:]:
                k = int(t.split("/")[0])
                idx.append(k - 1 if k > 0 else len(verts) + k)
            if len(idx) < 3:
                continue
            if current not in units:
                units[current] = []
                order.append(current)
            tris = units[current]
            for j in range(1, len(idx) - 1):
                tris.append((idx[0], idx[j], idx[j + 1]))
        elif (head == "o" and use_o) or (head == "g" and not use_o):
            current = " ".join(tok[1:]) or "unnamed"
            if use_o and current in units:  # a repeated o name is a new object (a repeated g continues)
                base, n = current, 1
                while f"{base}.{n}" in units:
                    n += 1
                current = f"{base}.{n}"
    V = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
    out = []
    for name in order:
        f = np.asarray(units[name], dtype=np.int64).reshape(-1, 3)
        if len(f) == 0 or f.min() < 0 or f.max() >= len(V):
            continue
        used, inv = np.unique(f.reshape(-1), return_inverse=True)
        out.append((name, V[used].copy(), inv.reshape(-1, 3)))
    return out


def clean_parts(parts: list[tuple[str, np.ndarray, np.ndarray]], min_faces: int = 4,
                min_area_frac: float = 1e-4) -> list[tuple[str, trimesh.Trimesh]]:
    """Drop degenerate faces and tiny parts; merge duplicate vertices. Returns (name, mesh) pairs."""
    meshes = []
    for name, v, f in parts:
        m = trimesh.Trimesh(v, f, process=True, validate=False)  # merges duplicate vertices
        a = m.area_faces
        keep = a > 1e-14
        if keep.sum() < len(a):
            m.update_faces(keep)
            m.remove_unreferenced_vertices()
        if len(m.faces) >= min_faces and np.isfinite(m.vertices).all():
            meshes.append((name, m))
    if not meshes:
        return []
    total = sum(m.area for _, m in meshes)
    return [(n, m) for n, m in meshes if m.area >= min_area_frac * total]


def load_entry(entry: CatalogEntry, max_parts: int = 16, max_faces: int = 12000
               ) -> list[tuple[str, trimesh.Trimesh]] | None:
    """The cleaned, normalized parts of one catalog model, or None when it is skipped."""
    with zipfile.ZipFile(entry.archive) as z:
        if entry.model not in z.namelist():
            return None
        text = z.read(entry.model).decode("latin-1")
    parts = clean_parts(parse_obj(text))
    if not 2 <= len(parts) <= max_parts or sum(len(m.faces) for _, m in parts) > max_faces:
        return None
    normalize_meshes([m for _, m in parts])
    return parts


# ----------------------------------------------------------------------------- visibility


def _look_at(cam: np.ndarray) -> np.ndarray:
    """Rows: right, up, forward (towards the origin) of a camera at ``cam``."""
    fwd = -cam / np.linalg.norm(cam)
    up = np.array([0.0, 1.0, 0.0]) if abs(fwd[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(right, fwd), fwd])


def zbuffer_visible_faces(meshes: Sequence[trimesh.Trimesh], n_views: int = 16, resolution: int = 256,
                          camera_radius: float = 4.0, density: float = 6000.0, max_splats: int = 400_000,
                          seed: int = 0) -> list[np.ndarray]:
    """Per mesh, a (F,) bool mask of faces seen from at least one of ``n_views`` cameras.

    Perspective cameras on a Fibonacci sphere of ``camera_radius`` look at the
    origin; the image spans the object (in [-1, 1]^3) with a small margin. The
    depth buffer is the nearest splat of ``density`` surface samples per unit
    area (at most ``max_splats``), closed over 3x3 pixels (min filter) to fill
    splat gaps. A face's sample point is seen when its depth is within a
    tolerance (two pixels' footprint) of the buffer. Faces are two-sided.
    """
    from holopart_infer.model.conditioning import sample_surface
    from .synthetic import _BARY

    rng = np.random.default_rng(seed)
    V = [np.asarray(m.vertices, dtype=np.float64) for m in meshes]
    F = [np.asarray(m.faces, dtype=np.int64) for m in meshes]
    allv = np.concatenate(V)
    allf = np.concatenate([f + o for f, o in zip(F, np.cumsum([0] + [len(v) for v in V[:-1]]))])
    area = float(trimesh.triangles.area(allv[allf]).sum())
    n_splat = int(min(max_splats, max(20000, density * area)))
    splat, _, _ = sample_surface(allv, allf, n_splat, rng)
    splat = np.concatenate([splat, allv])  # vertices too: thin slivers get at least their corners
    queries = [np.einsum("sk,fkc->fsc", _BARY, v[f]).reshape(-1, 3) for v, f in zip(V, F)]
    q_all = np.concatenate(queries)
    seen = np.zeros(len(q_all), dtype=bool)
    half = 1.9 / np.sqrt(camera_radius ** 2 - 3.0)  # tan of the half field of view covering the unit cube's sphere
    res = int(resolution)
    pix = 2 * half / res  # pixel size in tan units
    for cam in fibonacci_sphere(n_views, camera_radius):
        R = _look_at(cam)
        def project(p):
            rel = (p - cam) @ R.T
            z = rel[:, 2]
            u = np.floor((rel[:, 0] / z + half) / pix).astype(np.int64)
            w = np.floor((rel[:, 1] / z + half) / pix).astype(np.int64)
            return np.clip(u, 0, res - 1), np.clip(w, 0, res - 1), z
        u, w, z = project(splat)
        depth = np.full(res * res, np.inf)
        np.minimum.at(depth, w * res + u, z)
        d2 = depth.reshape(res, res)
        pad = np.pad(d2, 1, constant_values=np.inf)
        closed = np.min(np.stack([pad[i:i + res, j:j + res] for i in range(3) for j in range(3)]), axis=0)
        # a pixel with no splat of its own keeps the closed value; one with a splat keeps its own
        d2 = np.where(np.isinf(d2), closed, np.minimum(d2, closed + 2 * pix * camera_radius))
        u, w, z = project(q_all)
        tol = 2.0 * pix * z
        seen |= z <= d2[w, u] + tol
    out, s = [], 0
    for q, f in zip(queries, F):
        out.append(seen[s:s + len(q)].reshape(len(f), len(_BARY)).any(axis=1))
        s += len(q)
    return out


# ----------------------------------------------------------------------------- objects / occupancy


MIN_VISIBLE_FRACTION = 0.02


def make_real_object(entry: CatalogEntry, n_views: int = 16, transform: np.ndarray | None = None,
                     max_parts: int = 16, max_faces: int = 12000, resolution: int = 256) -> SyntheticObject | None:
    """A catalog model as an assembly with visible patches (``SyntheticObject``, template = category).

    ``transform`` (3x3), applied before normalization, is the augmentation (or
    an evaluation-time rotation). Parts seen on less than 2% of their area are
    dropped from the input (they still hide others); None if fewer than 2 remain
    or the model is skipped.
    """
    parts = load_entry(entry, max_parts, max_faces)
    if parts is None:
        return None
    if transform is not None:
        T = np.eye(4)
        T[:3, :3] = transform
        for _, m in parts:
            m.apply_transform(T)  # trimesh re-orients the faces under a mirror
        normalize_meshes([m for _, m in parts])
    vis = zbuffer_visible_faces([m for _, m in parts], n_views, resolution=resolution)
    sp = [SyntheticPart(n, "real", m, v) for (n, m), v in zip(parts, vis)]
    sp = [p for p in sp if p.visible_fraction >= MIN_VISIBLE_FRACTION]
    if len(sp) < 2:
        return None
    return SyntheticObject(entry.category, entry.key, sp)


def augmentation(rng: np.random.Generator, up: int = 1, tilt_deg: float = 5.0,
                 scale: tuple[float, float] = (0.85, 1.15), mirror: bool = True) -> np.ndarray:
    """A random 3x3: rotation about the up axis (any angle), a mirror (p = 0.5), a tilt of at most
    ``tilt_deg`` about a horizontal axis, and a per-axis scale in ``scale``."""
    def rot(axis, a):
        c, s = np.cos(a), np.sin(a)
        i, j = [k for k in range(3) if k != axis]
        R = np.eye(3)
        R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
        return R
    M = np.diag(rng.uniform(*scale, size=3))
    if mirror and rng.random() < 0.5:
        M = np.diag([-1.0 if k == (up + 1) % 3 else 1.0 for k in range(3)]) @ M
    M = rot(up, rng.uniform(0, 2 * np.pi)) @ M
    horiz = [k for k in range(3) if k != up][int(rng.integers(2))]
    return rot(horiz, np.deg2rad(rng.uniform(-tilt_deg, tilt_deg))) @ M


def occupancy_labels(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, shell: float,
                     surface: np.ndarray | None = None) -> np.ndarray:
    """Inside test of a part that may not be closed: |winding number| > 0.5, or within ``shell`` of
    its surface (distance to ``surface``, dense samples of it; drawn here if not given)."""
    from scipy.spatial import cKDTree

    from holopart_infer.model.conditioning import sample_surface

    inside = np.abs(winding_number(points, vertices, faces)) > 0.5
    if shell > 0:
        if surface is None:
            surface, _, _ = sample_surface(np.asarray(vertices, dtype=np.float64), np.asarray(faces), 20000,
                                           np.random.default_rng(0))
        d, _ = cKDTree(surface).query(points, k=1)
        inside |= d < shell
    return inside


# ----------------------------------------------------------------------------- split / attribution


def _hash01(key: str, seed: int) -> float:
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / float(16 ** 12)


def make_split(entries: Sequence[CatalogEntry], usable: dict[str, int] | None = None,
               heldout_categories: Sequence[str] = HELDOUT_CATEGORIES, val_frac: float = 0.05,
               test_frac: float = 0.12, seed: int = 22) -> dict:
    """Object split: whole ``heldout_categories`` go to ``test_categories``; every other object goes to
    train / val / test by a hash of its key (so adding objects never moves existing ones).
    ``usable``: key -> part count for objects that load (others are listed under ``skipped``)."""
    split = {"seed": seed, "heldout_categories": list(heldout_categories), "val_frac": val_frac,
             "test_frac": test_frac, "train": [], "val": [], "test": [], "test_categories": [], "skipped": []}
    for e in entries:
        if usable is not None and e.key not in usable:
            split["skipped"].append(e.key)
            continue
        if e.category in heldout_categories:
            split["test_categories"].append(e.key)
            continue
        h = _hash01(e.key, seed)
        split["test" if h < test_frac else "val" if h < test_frac + val_frac else "train"].append(e.key)
    return split


def write_attribution(entries: Sequence[CatalogEntry], path: str | os.PathLike) -> Path:
    """ATTRIBUTION.md for the models a model was trained on (CC-BY needs credit; CC0 is listed too)."""
    from holopart_infer.fsafe import atomic_write

    by_lib: dict[str, list[CatalogEntry]] = {}
    for e in entries:
        by_lib.setdefault(e.library, []).append(e)
    lines = ["# Attribution of the training data", "",
             "This model was trained (weights derived by training; no model geometry is included) on 3D "
             "models from the Sweet Home 3D furniture libraries as packaged by Debian "
             "(`sweethome3d-furniture`, http://www.sweethome3d.com/importModels.jsp), converted to OBJ by "
             "Emmanuel Puybaret / eTeks.", ""]
    for lib in sorted(by_lib):
        info = LIBRARY_LICENSES[lib]
        lines += [f"## {lib} ({info['license']})", ""]
        for e in sorted(by_lib[lib], key=lambda e: e.index):
            lines.append(f"- \"{e.name}\" by {e.creator or 'unknown'} ({e.id}), {info['license']}")
        lines.append("")
    lines += ["Licences: CC0 1.0 https://creativecommons.org/publicdomain/zero/1.0/ ; CC BY 3.0 "
              "https://creativecommons.org/licenses/by/3.0/ ; CC BY 3.0 US "
              "https://creativecommons.org/licenses/by/3.0/us/ . No endorsement by the authors is implied.", ""]
    path = Path(path)
    atomic_write(path, "\n".join(lines).encode(), overwrite=True)
    return path


def survey(entries: Sequence[CatalogEntry], max_parts: int = 16, max_faces: int = 12000) -> dict[str, int]:
    """key -> part count of every entry that loads under the caps."""
    out = {}
    for i, e in enumerate(entries):
        try:
            parts = load_entry(e, max_parts, max_faces)
        except Exception as ex:  # a malformed OBJ is skipped, not fatal
            log.warning("%s: %s", e.key, ex)
            parts = None
        if parts is not None:
            out[e.key] = len(parts)
        if (i + 1) % 100 == 0:
            log.info("survey: %d/%d, %d usable", i + 1, len(entries), len(out))
    return out


def entries_by_key(furniture_dir: str | os.PathLike = FURNITURE_DIR) -> dict[str, CatalogEntry]:
    return {e.key: e for e in read_catalogs(furniture_dir)}


def main(argv=None) -> int:
    """``python -m holopart_infer.export.realdata split`` writes export/realdata_split.json."""
    import argparse

    from holopart_infer.fsafe import atomic_write

    p = argparse.ArgumentParser(prog="python -m holopart_infer.export.realdata")
    p.add_argument("command", choices=["split"])
    p.add_argument("--out", default=str(SPLIT_PATH))
    p.add_argument("--max-parts", type=int, default=16)
    p.add_argument("--max-faces", type=int, default=12000)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    d = ensure_installed()
    entries = read_catalogs(d)
    usable = survey(entries, a.max_parts, a.max_faces)
    split = make_split(entries, usable)
    split["caps"] = {"max_parts": a.max_parts, "max_faces": a.max_faces}
    split["parts"] = usable
    split["libraries"] = {lib: LIBRARY_LICENSES[lib] for lib in sorted({e.library for e in entries})}
    atomic_write(a.out, (json.dumps(split, indent=1) + "\n").encode(), overwrite=True)
    print({k: len(v) for k, v in split.items() if isinstance(v, list)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
