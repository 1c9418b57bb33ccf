// Marching cubes, two passes over x-layers of grid points:
//   1. count the needed (crossed, emitted) edges owned by every point layer;
//      an exclusive prefix sum gives each layer's first vertex id, so ids are
//      global and deterministic whatever the thread count;
//   2. each thread walks a contiguous range of cube layers keeping the vertex
//      ids of two point layers, writes the vertices of the layers it owns and
//      the triangles of its cubes into its own list; lists are concatenated
//      in layer order.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "holopart/kernels.hpp"
#include "holopart/parallel.hpp"

namespace holopart {

namespace {

// Rows of points along the last axis are cut into segments of kSeg points.
// Segment s of row (i, j) summarises points [s*kSeg, (s+1)*kSeg] (one past its
// end, so that the cubes and z-edges of the segment are covered): 0 = all
// outside, 1 = all inside, 2 = mixed or partly unknown, 3 = all unknown (the
// bulk of a coarse-to-fine grid). Segments that
// are uniform and equal to their neighbours hold no crossed edge and no cut
// cube, which lets both passes skip most of the volume at memory speed.
constexpr int64_t kSeg = 32;

struct Segments {
    int64_t ns = 0, ny = 0;
    std::vector<uint8_t> state;  // (nx, ny, ns)
    bool any_unknown = false;
    uint8_t at(int64_t i, int64_t j, int64_t s) const { return state[(i * ny + j) * ns + s]; }
};

Segments summarise(const float* vol, int64_t nx, int64_t ny, int64_t nz, float level) {
    Segments g;
    g.ny = ny;
    g.ns = (nz - 1 + kSeg - 1) / kSeg;  // segments of cubes along z
    g.state.resize(static_cast<size_t>(nx * ny * g.ns));
    std::atomic<bool> unk{false};
    parallel_for(nx * ny, 256, [&](int64_t r0, int64_t r1) {
      bool found = false;
      for (int64_t r = r0; r < r1; ++r) {
        const float* row = vol + r * nz;
        for (int64_t s = 0; s < g.ns; ++s) {
            const int64_t k0 = s * kSeg, k1 = std::min(k0 + kSeg, nz - 1);
            int n_in = 0, n_nan = 0;
            for (int64_t k = k0; k <= k1; ++k) {
                const float v = row[k];
                n_in += v > level;
                n_nan += hp_is_unknown(v);
            }
            const int64_t n = k1 - k0 + 1;
            g.state[r * g.ns + s] =
                n_nan == n ? 3 : (n_nan ? 2 : (n_in == 0 ? 0 : (n_in == n ? 1 : 2)));
            if (n_nan) found = true;
        }
      }
      if (found) unk = true;
    });
    g.any_unknown = unk;
    return g;
}

// Needed-edge mask of point (i, j, k); the UNK=false version is the fast path
// for grids without unknown values (every crossed edge is needed).
template <bool UNK>
inline unsigned point_mask(const float* vol, int64_t nx, int64_t ny, int64_t nz, int64_t i,
                           int64_t j, int64_t k, float level) {
    if (UNK) return hp_point_edge_mask(vol, nx, ny, nz, i, j, k, level, true);
    const int64_t sx = ny * nz;
    const float* p = vol + i * sx + j * nz + k;
    const bool a = p[0] > level;
    unsigned m = 0;
    if (i + 1 < nx && a != (p[sx] > level)) m |= 1u;
    if (j + 1 < ny && a != (p[nz] > level)) m |= 2u;
    if (k + 1 < nz && a != (p[1] > level)) m |= 4u;
    return m;
}

// Whether the points of segment s of row (i, j) may own a crossed edge.
bool points_active(const Segments& g, int64_t nx, int64_t i, int64_t j, int64_t s) {
    const uint8_t a = g.at(i, j, s);
    if (a == 3) return false;  // no known point, no crossed edge
    if (a == 2) return true;
    // A uniform segment only crosses towards a neighbour that is not the same
    // uniform state and not entirely unknown.
    if (i + 1 < nx) {
        const uint8_t b = g.at(i + 1, j, s);
        if (b != a && b != 3) return true;
    }
    if (j + 1 < g.ny) {
        const uint8_t b = g.at(i, j + 1, s);
        if (b != a && b != 3) return true;
    }
    return false;
}

// Whether the cubes of segment s of cube row (i, j) may be cut.
bool cubes_active(const Segments& g, int64_t i, int64_t j, int64_t s) {
    const uint8_t a = g.at(i, j, s), b = g.at(i + 1, j, s), c = g.at(i, j + 1, s),
                  d = g.at(i + 1, j + 1, s);
    // A row segment with no known point leaves every cube here unknown.
    if (a == 3 || b == 3 || c == 3 || d == 3) return false;
    return a == 2 || b != a || c != a || d != a;
}

}  // namespace

// Adds the (area-weighted) normals of faces [f0, f1) to acc (V, 3).
static void accumulate_normals(const float* vertices, const int64_t* faces, int64_t f0,
                               int64_t f1, float* acc) {
    for (int64_t f = f0; f < f1; ++f) {
        const int64_t a = faces[f * 3], b = faces[f * 3 + 1], c = faces[f * 3 + 2];
        const float* pa = vertices + a * 3;
        const float* pb = vertices + b * 3;
        const float* pc = vertices + c * 3;
        const float u[3] = {pb[0] - pa[0], pb[1] - pa[1], pb[2] - pa[2]};
        const float v[3] = {pc[0] - pa[0], pc[1] - pa[1], pc[2] - pa[2]};
        const float n[3] = {u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2],
                            u[0] * v[1] - u[1] * v[0]};
        for (int q = 0; q < 3; ++q) {
            acc[a * 3 + q] += n[q];
            acc[b * 3 + q] += n[q];
            acc[c * 3 + q] += n[q];
        }
    }
}

static void normalize_rows(float* normals, int64_t nv) {
    parallel_for(nv, 1 << 16, [&](int64_t v0, int64_t v1) {
        for (int64_t i = v0; i < v1; ++i) {
            float* n = normals + i * 3;
            const double len = std::sqrt((double)n[0] * n[0] + (double)n[1] * n[1] + (double)n[2] * n[2]);
            for (int q = 0; q < 3; ++q) n[q] = len > 0 ? (float)(n[q] / len) : 0.0f;
        }
    });
}

void vertex_normals(const float* vertices, int64_t nv, const int64_t* faces, int64_t nf,
                    float* normals) {
    std::fill(normals, normals + nv * 3, 0.0f);
    accumulate_normals(vertices, faces, 0, nf, normals);
    normalize_rows(normals, nv);
}

Mesh marching_cubes(const float* vol, int64_t nx, int64_t ny, int64_t nz, float level,
                    const double spacing[3], const double origin[3]) {
    Mesh mesh;
    if (nx < 2 || ny < 2 || nz < 2) return mesh;
    const McTable& table = mc_table();
    const Segments seg = summarise(vol, nx, ny, nz, level);
    const bool unk = seg.any_unknown;
    const int64_t ns = seg.ns;

    // Visit every point of layer i near the surface with its crossed-edge mask
    // (bit d: the edge from the point along axis d crosses the level). Both
    // passes below walk the points in this one order, so vertex ids agree.
    auto visit_points = [&](int64_t i, auto&& fn) {
        for (int64_t j = 0; j < ny; ++j)
            for (int64_t s = 0; s < ns; ++s) {
                if (!points_active(seg, nx, i, j, s)) continue;
                const int64_t k1 = s + 1 == ns ? nz : (s + 1) * kSeg;
                for (int64_t k = s * kSeg; k < k1; ++k)
                    fn(j, k, unk ? point_mask<true>(vol, nx, ny, nz, i, j, k, level)
                                 : point_mask<false>(vol, nx, ny, nz, i, j, k, level));
            }
    };

    // Pass 1: needed edges per point layer.
    std::vector<int64_t> base(static_cast<size_t>(nx) + 1, 0);
    parallel_for(nx, 1, [&](int64_t i, int64_t) {
        int64_t cnt = 0;
        visit_points(i, [&](int64_t, int64_t, unsigned m) { cnt += (m & 1) + ((m >> 1) & 1) + ((m >> 2) & 1); });
        base[i + 1] = cnt;
    });
    for (int64_t i = 0; i < nx; ++i) base[i + 1] += base[i];
    const int64_t nv = base[nx];
    mesh.vertices.resize(static_cast<size_t>(nv) * 3);
    mesh.values.resize(static_cast<size_t>(nv));

    const int64_t ncl = nx - 1;  // cube layers
    const int nthreads = static_cast<int>(std::min<int64_t>(num_threads(), ncl));
    // More chunks than threads balance the work (the surface is rarely uniform
    // along x); each chunk recomputes the ids of one extra point layer.
    const int64_t nchunks = std::min<int64_t>(ncl, (int64_t)nthreads * 4);
    std::vector<std::vector<int64_t>> chunk_faces(static_cast<size_t>(nchunks));
    const int64_t layer = ny * nz;

    std::atomic<int64_t> next_chunk{0};
    parallel_workers(nthreads, [&](int) {
        std::vector<int64_t> ids_a(static_cast<size_t>(layer) * 3), ids_b(static_cast<size_t>(layer) * 3);
        auto fill = [&](int64_t i, std::vector<int64_t>& ids, bool write) {
            int64_t next = base[i];
            visit_points(i, [&](int64_t j, int64_t k, unsigned m) {
                int64_t* slot = &ids[(j * nz + k) * 3];
                for (int d = 0; d < 3; ++d) {
                    if (!(m & (1u << d))) continue;
                    slot[d] = next;
                    if (write)
                        hp_edge_vertex(vol, ny, nz, i, j, k, d, level, spacing, origin,
                                       &mesh.vertices[next * 3], &mesh.values[next]);
                    ++next;
                }
            });
        };
        for (int64_t c; (c = next_chunk.fetch_add(1)) < nchunks;) {
            const int64_t c0 = ncl * c / nchunks, c1 = ncl * (c + 1) / nchunks;
            std::vector<int64_t>& out = chunk_faces[c];
            // A closed surface has about two faces per vertex.
            out.reserve(static_cast<size_t>((base[c1 + 1] - base[c0]) * 2 * 3 + 64));
            std::vector<int64_t>* lo = &ids_a;
            std::vector<int64_t>* hi = &ids_b;
            fill(c0, *lo, true);
            for (int64_t i = c0; i < c1; ++i) {
                fill(i + 1, *hi, i + 1 < c1 || i + 1 == nx - 1);
                const int64_t* L[2] = {lo->data(), hi->data()};
                for (int64_t j = 0; j + 1 < ny; ++j)
                  for (int64_t s = 0; s < ns; ++s) {
                    if (!cubes_active(seg, i, j, s)) continue;
                    const int64_t k1 = std::min((s + 1) * kSeg, nz - 1);
                    for (int64_t k = s * kSeg; k < k1; ++k) {
                        const int cs = hp_cube_case(vol, ny, nz, i, j, k, level, unk);
                        if (cs <= 0 || cs == 255) continue;
                        const int8_t* t = table.tris[cs];
                        for (int q = 0; q < table.ntri[cs] * 3; ++q) {
                            int di, dj, dk, d;
                            hp_edge_owner(t[q], di, dj, dk, d);
                            out.push_back(L[di][((j + dj) * nz + (k + dk)) * 3 + d]);
                        }
                    }
                  }
                std::swap(lo, hi);
            }
        }
    });
    // Faces of chunk c only reference vertices of point layers [c0, c1], so
    // chunks two apart never touch the same vertex: copy the faces into place
    // and accumulate normals for even chunks, then odd ones, in parallel.
    std::vector<int64_t> fbase(static_cast<size_t>(nchunks) + 1, 0);
    for (int64_t c = 0; c < nchunks; ++c) fbase[c + 1] = fbase[c] + (int64_t)chunk_faces[c].size();
    mesh.faces.resize(static_cast<size_t>(fbase[nchunks]));
    mesh.normals.assign(static_cast<size_t>(nv) * 3, 0.0f);
    for (int parity = 0; parity < 2; ++parity) {
        const int64_t half = (nchunks - parity + 1) / 2;
        parallel_for(half, 1, [&](int64_t h0, int64_t h1) {
            for (int64_t h = h0; h < h1; ++h) {
                const int64_t c = 2 * h + parity;
                std::vector<int64_t>& src = chunk_faces[c];
                std::copy(src.begin(), src.end(), mesh.faces.begin() + fbase[c]);
                std::vector<int64_t>().swap(src);
                accumulate_normals(mesh.vertices.data(), mesh.faces.data(), fbase[c] / 3,
                                   fbase[c + 1] / 3, mesh.normals.data());
            }
        });
    }
    normalize_rows(mesh.normals.data(), nv);
    return mesh;
}

}  // namespace holopart
