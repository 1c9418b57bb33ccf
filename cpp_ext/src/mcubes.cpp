// Marching cubes on bit-packed rows of the grid (design notes in
// docs/performance.md, "Marching cubes on the CPU").
//
//   0. Classify every point once: one bit for "inside" (value > level), and,
//      only when the grid has unknown points, one for "known" (finite),
//      packed 64 points to a word along the last axis. Everything after works
//      on these words: a cube is cut when its eight corner bits differ, an
//      edge is crossed when its two end bits differ, so the float grid is
//      read again only to place vertices.
//   1. Count the needed edges (vertices) of every point layer and the
//      triangles of every cube layer; exclusive prefix sums give each layer
//      its first vertex id and first face, so ids are global and the same
//      whatever the thread count, and threads write vertices, faces and
//      normals straight into the final arrays.
//   2. Chunks of 2-8 cube layers (sizes fixed by the grid, not by the thread
//      count) are taken by the threads. A chunk walks its layers keeping one
//      first-vertex id per point and the edge masks of two point layers,
//      writes the vertices of the point layers it owns and the faces of its
//      cubes, and sums area-weighted face normals in the same loop, in a
//      fixed order (see `first_layer_sum`).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "holopart/kernels.hpp"
#include "holopart/parallel.hpp"

namespace holopart {

namespace {

using Word = uint64_t;

inline int popcount64(Word x) { return __builtin_popcountll(x); }
inline int ctz64(Word x) { return __builtin_ctzll(x); }

// Bit-packed classification of the grid: row r = i * ny + j holds W words.
struct BitGrid {
    int64_t nx = 0, ny = 0, nz = 0, W = 0;
    std::vector<Word> in;     // bit k: point (i, j, k) > level (NaN: 0)
    std::vector<Word> known;  // bit k: point (i, j, k) finite; only when unk
    std::vector<Word> pmask;  // bits k < nz (valid points)
    std::vector<Word> cmask;  // bits k < nz - 1 (valid cubes / z-edges)
    bool unk = false;

    const Word* in_row(int64_t i, int64_t j) const { return &in[(i * ny + j) * W]; }
    const Word* known_row(int64_t i, int64_t j) const { return &known[(i * ny + j) * W]; }

    // x shifted so that bit k holds bit k + 1 of the row (0 past the end).
    static Word up(const Word* x, int64_t w, int64_t W) {
        return (x[w] >> 1) | (w + 1 < W ? x[w + 1] << 63 : 0);
    }
    // x shifted so that bit k holds bit k - 1 of the row (0 before the start).
    static Word down(const Word* x, int64_t w) {
        return (x[w] << 1) | (w > 0 ? x[w - 1] >> 63 : 0);
    }

    // Cubes of cube row (i, j) whose eight corners are all known, into out[W].
    void cube_known(int64_t i, int64_t j, Word* out) const {
        if (i < 0 || j < 0 || i + 1 >= nx || j + 1 >= ny) {
            std::fill(out, out + W, Word(0));
            return;
        }
        if (!unk) {
            std::copy(cmask.begin(), cmask.end(), out);
            return;
        }
        const Word *a = known_row(i, j), *b = known_row(i, j + 1), *c = known_row(i + 1, j),
                   *d = known_row(i + 1, j + 1);
        Word carry = 0;
        for (int64_t w = W - 1; w >= 0; --w) {
            const Word k4 = a[w] & b[w] & c[w] & d[w];
            out[w] = k4 & ((k4 >> 1) | carry) & cmask[w];
            carry = k4 << 63;
        }
    }
};

// Packs the classification bits of point layer i: the inside bits, and the
// known bits when KNOWN (a second pass, only for grids with unknown points).
template <bool KNOWN>
void classify_layer(const float* vol, BitGrid& g, int64_t i, float level, bool& found_unknown) {
    const int64_t ny = g.ny, nz = g.nz, W = g.W;
    Word any_unk = 0;
    for (int64_t j = 0; j < ny; ++j) {
        const float* row = vol + (i * ny + j) * nz;
        Word* in = &g.in[(i * ny + j) * W];
        Word* kn = KNOWN ? &g.known[(i * ny + j) * W] : nullptr;
        for (int64_t w = 0; w < W; ++w) {
            const int64_t k0 = w * 64, k1 = std::min(nz, k0 + 64);
            Word bi = 0, bu = 0;
            int64_t k = k0;
#if defined(__SSE2__)
            const __m128 lv = _mm_set1_ps(level);
            for (; k + 4 <= k1; k += 4) {
                const __m128 v = _mm_loadu_ps(row + k);
                const __m128 t = _mm_sub_ps(v, v);  // NaN exactly for NaN and +-inf
                bi |= Word(_mm_movemask_ps(_mm_cmpgt_ps(v, lv))) << (k - k0);
                bu |= Word(_mm_movemask_ps(_mm_cmpunord_ps(t, t))) << (k - k0);
            }
#endif
            for (; k < k1; ++k) {
                const float v = row[k];
                bi |= Word(v > level) << (k - k0);
                bu |= Word(hp_is_unknown(v)) << (k - k0);
            }
            if (KNOWN) kn[w] = ~bu & g.pmask[w];
            else in[w] = bi;
            any_unk |= bu;
        }
    }
    if (any_unk) found_unknown = true;
}

// Needed-edge masks (bit k: the edge from point (i, j, k) along x, y, z is
// crossed and belongs to a cube with eight known corners, i.e. a cube that
// emits it) of point row (i, j). scratch holds 4 * W words.
void edge_masks(const BitGrid& g, int64_t i, int64_t j, Word* ex, Word* ey, Word* ez,
                Word* scratch) {
    const int64_t W = g.W;
    const Word* a = g.in_row(i, j);
    const Word* ax = i + 1 < g.nx ? g.in_row(i + 1, j) : nullptr;
    const Word* ay = j + 1 < g.ny ? g.in_row(i, j + 1) : nullptr;
    for (int64_t w = 0; w < W; ++w) {
        ex[w] = ax ? a[w] ^ ax[w] : 0;
        ey[w] = ay ? a[w] ^ ay[w] : 0;
        ez[w] = (a[w] ^ BitGrid::up(a, w, W)) & g.cmask[w];
    }
    if (!g.unk) return;  // every edge of the grid lies on a known cube
    // Known cubes around the edges: x-edge (i, j, k) touches cubes
    // (i, j-1..j, k-1..k), y-edge cubes (i-1..i, j, k-1..k), z-edge cubes
    // (i-1..i, j-1..j, k).
    Word *c00 = scratch, *c01 = scratch + W, *c10 = scratch + 2 * W, *c11 = scratch + 3 * W;
    g.cube_known(i - 1, j - 1, c00);
    g.cube_known(i - 1, j, c01);
    g.cube_known(i, j - 1, c10);
    g.cube_known(i, j, c11);
    Word prev_x = 0, prev_y = 0;
    for (int64_t w = 0; w < W; ++w) {
        const Word cx = c10[w] | c11[w], cy = c01[w] | c11[w];
        ex[w] &= cx | (cx << 1) | prev_x;
        ey[w] &= cy | (cy << 1) | prev_y;
        ez[w] &= c00[w] | c01[w] | c10[w] | c11[w];
        prev_x = cx >> 63;
        prev_y = cy >> 63;
    }
}

// Cut cubes (corners not all on one side, all known) of cube row (i, j), word w.
inline Word cut_cubes(const BitGrid& g, const Word* a, const Word* b, const Word* c,
                      const Word* d, const Word* ck, int64_t w) {
    const int64_t W = g.W;
    const Word x0 = (a[w] ^ b[w]) | (a[w] ^ c[w]) | (a[w] ^ d[w]);
    const Word x1 = (a[w] ^ BitGrid::up(a, w, W)) | (x0 >> 1) |
                    (w + 1 < W ? ((a[w + 1] ^ b[w + 1]) | (a[w + 1] ^ c[w + 1]) | (a[w + 1] ^ d[w + 1])) << 63 : 0);
    return (x0 | x1) & (g.unk ? ck[w] : g.cmask[w]);
}

// Case index of cube k (bit n: corner n inside; corner n at offset
// ((n >> 2) & 1, (n >> 1) & 1, n & 1)) from the rows' words and their
// one-up shifts.
inline int cube_case(Word a, Word au, Word b, Word bu, Word c, Word cu, Word d, Word du, int s) {
    return int((a >> s) & 1) | int(((au >> s) & 1) << 1) | int(((b >> s) & 1) << 2) |
           int(((bu >> s) & 1) << 3) | int(((c >> s) & 1) << 4) | int(((cu >> s) & 1) << 5) |
           int(((d >> s) & 1) << 6) | int(((du >> s) & 1) << 7);
}

// Calls fn(k, case) for every cut cube of cube row (i, j), k ascending.
template <class F>
inline void for_cut_cubes(const BitGrid& g, int64_t i, int64_t j, Word* ck, F&& fn) {
    const Word *a = g.in_row(i, j), *b = g.in_row(i, j + 1), *c = g.in_row(i + 1, j),
               *d = g.in_row(i + 1, j + 1);
    if (g.unk) g.cube_known(i, j, ck);
    const int64_t W = g.W;
    for (int64_t w = 0; w < W; ++w) {
        Word m = cut_cubes(g, a, b, c, d, ck, w);
        if (!m) continue;
        const Word au = BitGrid::up(a, w, W), bu = BitGrid::up(b, w, W),
                   cu = BitGrid::up(c, w, W), du = BitGrid::up(d, w, W);
        while (m) {
            const int s = ctz64(m);
            m &= m - 1;
            fn(w * 64 + s, cube_case(a[w], au, b[w], bu, c[w], cu, d[w], du, s));
        }
    }
}

// hp_edge_vertex for the edge along axis D from the point whose value is at
// a_ptr (the other end `step` floats on), the point's index along D being idx;
// c[3] are the point's precomputed coordinates (the one along D is replaced).
// Same arithmetic as hp_edge_vertex, same bits.
template <int D>
inline void edge_vertex(const float* a_ptr, int64_t step, int64_t idx, const float c[3],
                        float level, const double* spacing, const double* origin, float* pos,
                        float* value) {
    const float a = a_ptr[0], b = a_ptr[step];
    const float t = (level - a) / (b - a);
    pos[0] = c[0];
    pos[1] = c[1];
    pos[2] = c[2];
    pos[D] = (float)(((double)idx + (double)t) * spacing[D] + origin[D]);
    if (value) *value = a > b ? a : b;
}

// v.resize(n) for an output array. Large blocks come untouched from mmap;
// asking for transparent huge pages before the first touch (as numpy does for
// its large arrays) saves most of the page-fault time of writing them.
template <class T>
void resize_output(std::vector<T>& v, size_t n) {
    v.reserve(n);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = uintptr_t(2) << 20;
    if (n * sizeof(T) >= 2 * huge) {
        const uintptr_t lo = (reinterpret_cast<uintptr_t>(v.data()) + huge - 1) & ~(huge - 1);
        const uintptr_t hi = (reinterpret_cast<uintptr_t>(v.data()) + n * sizeof(T)) & ~(huge - 1);
        if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // a hint only
    }
#endif
    v.resize(n);
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
    // Edge ids inside a point layer are kept as 32-bit offsets.
    if (ny * nz * 3 >= (int64_t(1) << 32))
        throw std::length_error("marching_cubes: a layer of more than 1.4e9 points is not supported");
    const McTable& table = mc_table();

    // ---- 0. classification bits
    BitGrid g;
    g.nx = nx, g.ny = ny, g.nz = nz, g.W = (nz + 63) / 64;
    const int64_t W = g.W, nrows = nx * ny;
    g.pmask.assign(W, ~Word(0));
    g.cmask.assign(W, ~Word(0));
    for (int64_t w = 0; w < W; ++w) {
        const int64_t k0 = w * 64;
        if (nz - k0 < 64) g.pmask[w] = (Word(1) << (nz - k0)) - 1;
        const int64_t nc = nz - 1 - k0;
        g.cmask[w] = nc >= 64 ? ~Word(0) : (nc <= 0 ? 0 : (Word(1) << nc) - 1);
    }
    g.in.resize(static_cast<size_t>(nrows * W));
    {
        std::atomic<bool> unk{false};
        parallel_for(nx, 1, [&](int64_t i0, int64_t i1) {
            bool found = false;
            for (int64_t i = i0; i < i1; ++i) classify_layer<false>(vol, g, i, level, found);
            if (found) unk = true;
        });
        g.unk = unk;
        if (g.unk) {
            g.known.resize(static_cast<size_t>(nrows * W));
            parallel_for(nx, 1, [&](int64_t i0, int64_t i1) {
                bool found = false;
                for (int64_t i = i0; i < i1; ++i) classify_layer<true>(vol, g, i, level, found);
            });
        }
    }

    // ---- 1. vertices per point layer, faces per cube layer
    const int64_t ncl = nx - 1;
    std::vector<int64_t> vbase(static_cast<size_t>(nx) + 1, 0);   // first vertex of point layer
    std::vector<int64_t> fbase(static_cast<size_t>(ncl) + 1, 0);  // first face of cube layer
    parallel_for(nx, 1, [&](int64_t i0, int64_t i1) {
        std::vector<Word> buf(static_cast<size_t>(W) * 7);
        Word *ex = buf.data(), *ey = ex + W, *ez = ey + W, *scratch = ez + W;
        for (int64_t i = i0; i < i1; ++i) {
            int64_t nvl = 0;
            for (int64_t j = 0; j < ny; ++j) {
                edge_masks(g, i, j, ex, ey, ez, scratch);
                for (int64_t w = 0; w < W; ++w)
                    nvl += popcount64(ex[w]) + popcount64(ey[w]) + popcount64(ez[w]);
            }
            vbase[i + 1] = nvl;
            if (i + 1 >= nx) continue;
            int64_t nfl = 0;
            for (int64_t j = 0; j + 1 < ny; ++j)
                for_cut_cubes(g, i, j, scratch, [&](int64_t, int cs) { nfl += table.ntri[cs]; });
            fbase[i + 1] = nfl;
        }
    });
    for (int64_t i = 0; i < nx; ++i) vbase[i + 1] += vbase[i];
    for (int64_t i = 0; i < ncl; ++i) fbase[i + 1] += fbase[i];
    const int64_t nv = vbase[nx], nf = fbase[ncl];
    // A needed edge lies on a cut cube with known corners, which emits faces:
    // no faces means no vertices.
    if (nf == 0) return mesh;
    resize_output(mesh.vertices, static_cast<size_t>(nv) * 3);
    resize_output(mesh.values, static_cast<size_t>(nv));
    resize_output(mesh.faces, static_cast<size_t>(nf) * 3);
    resize_output(mesh.normals, static_cast<size_t>(nv) * 3);  // zeros: sums start here
    int64_t max_layer_v = 0;
    for (int64_t i = 0; i < nx; ++i) max_layer_v = std::max(max_layer_v, vbase[i + 1] - vbase[i]);

    // Each of the 12 cube edges: owning point (offset from the cube's lowest
    // corner: layer di, row dj, column dk) and axis d.
    int elay[12], erow[12], ecol[12], eaxis[12];
    Word emx[12], emy[12];  // 1 when the owner's x- (y-) edge precedes this one
    for (int e = 0; e < 12; ++e) {
        hp_edge_owner(e, elay[e], erow[e], ecol[e], eaxis[e]);
        emx[e] = eaxis[e] >= 1;
        emy[e] = eaxis[e] == 2;
    }
    // The cube edges each case's triangles use (its cut edges).
    uint16_t cut_edges[256];
    for (int cs = 0; cs < 256; ++cs) {
        cut_edges[cs] = 0;
        for (int q = 0; q < table.ntri[cs] * 3; ++q) cut_edges[cs] |= uint16_t(1u << table.tris[cs][q]);
    }

    // Vertex coordinates along the two axes an edge does not run along are
    // the grid coordinates, computed once per index with hp_edge_vertex's
    // arithmetic (same value bit for bit).
    std::vector<float> coord[3];
    for (int ax = 0; ax < 3; ++ax) {
        const int64_t n = ax == 0 ? nx : (ax == 1 ? ny : nz);
        coord[ax].resize(static_cast<size_t>(n));
        for (int64_t q = 0; q < n; ++q)
            coord[ax][q] = (float)((double)q * spacing[ax] + origin[ax]);
    }
    const float *cx = coord[0].data(), *cy = coord[1].data(), *cz = coord[2].data();

    // ---- 2. vertices, faces and normals, chunk by chunk
    // Chunk boundaries depend only on the grid, so every float sum below is
    // the same whatever the thread count.
    // 2..8 layers (each chunk fills one extra point layer), at least 16
    // chunks where the grid allows, at most 64.
    const int64_t chunk = std::max<int64_t>(
        std::min<int64_t>(8, std::max<int64_t>(2, (ncl + 15) / 16)), (ncl + 63) / 64);
    const int64_t nchunks = (ncl + chunk - 1) / chunk;
    // Normal of a vertex in point layer p: (sum of its faces in cube layer
    // p - 1, in face order) + (sum of its faces in cube layer p, in face
    // order). The first sum goes straight into mesh.normals; the second is
    // gathered in a layer buffer and added when cube layer p is done, or, for
    // the first layer of a chunk (whose first sum another chunk may still be
    // writing), after all chunks have finished.
    std::vector<std::vector<float>> first_layer_sum(static_cast<size_t>(nchunks));
    const int nthreads = static_cast<int>(std::min<int64_t>(num_threads(), nchunks));
    std::atomic<int64_t> next_chunk{0};
    float* V = mesh.vertices.data();
    float* N = mesh.normals.data();
    float* VAL = mesh.values.data();
    int64_t* F = mesh.faces.data();
    const int64_t layer = ny * nz;

    parallel_workers(nthreads, [&](int) {
        // Per point layer in flight (two): the id of the first vertex of
        // every point (offset from the layer's first vertex) and the rows'
        // needed-edge masks; a vertex's id is its point's first id plus the
        // number of its point's needed edges along lower axes. The id arrays
        // are left uninitialised (new[]): only points with a needed edge are
        // written and read, so untouched pages cost no memory.
        std::unique_ptr<uint32_t[]> first_a(new uint32_t[static_cast<size_t>(layer)]);
        std::unique_ptr<uint32_t[]> first_b(new uint32_t[static_cast<size_t>(layer)]);
        std::vector<Word> masks_a(static_cast<size_t>(ny * 3 * W)), masks_b(masks_a.size());
        std::unique_ptr<float[]> own_pos(new float[static_cast<size_t>(max_layer_v) * 3]);  // a layer this chunk does not own
        std::unique_ptr<float[]> tsum(new float[static_cast<size_t>(max_layer_v) * 3]);
        std::vector<Word> scratch(static_cast<size_t>(W) * 4);

        // Ids of the needed edges of point layer p and their vertices, written
        // to pos (+ values when the chunk owns the layer).
        auto fill = [&](int64_t p, uint32_t* first, Word* masks, float* pos, bool owned) {
            uint32_t next = 0;
            float* val = owned ? VAL + vbase[p] : nullptr;
            const float* vp = vol + p * layer;
            for (int64_t j = 0; j < ny; ++j) {
                Word* ex = masks + j * 3 * W;
                Word *ey = ex + W, *ez = ey + W;
                edge_masks(g, p, j, ex, ey, ez, scratch.data());
                uint32_t* fr = first + j * nz;
                const float* row = vp + j * nz;

                for (int64_t w = 0; w < W; ++w) {
                    const Word mx = ex[w], my = ey[w], mz = ez[w];
                    if (!(mx | my | mz)) continue;
                    // First ids of the points, in (point, axis) order...
                    for (Word m = mx | my | mz; m; m &= m - 1) {
                        const int s = ctz64(m);
                        fr[w * 64 + s] = next;
                        next += uint32_t(((mx >> s) & 1) + ((my >> s) & 1) + ((mz >> s) & 1));
                    }
                    // ...then the vertices one axis at a time (no per-edge branch).
                    for (Word m = mx; m; m &= m - 1) {
                        const int64_t k = w * 64 + ctz64(m);
                        const uint32_t id = fr[k];
                        const float c3[3] = {cx[p], cy[j], cz[k]};
                        edge_vertex<0>(row + k, layer, p, c3, level, spacing, origin,
                                       pos + (int64_t)id * 3, val ? val + id : nullptr);
                    }
                    for (Word m = my; m; m &= m - 1) {
                        const int s = ctz64(m);
                        const int64_t k = w * 64 + s;
                        const uint32_t id = fr[k] + uint32_t((mx >> s) & 1);
                        const float c3[3] = {cx[p], cy[j], cz[k]};
                        edge_vertex<1>(row + k, nz, j, c3, level, spacing, origin,
                                       pos + (int64_t)id * 3, val ? val + id : nullptr);
                    }
                    for (Word m = mz; m; m &= m - 1) {
                        const int s = ctz64(m);
                        const int64_t k = w * 64 + s;
                        const uint32_t id = fr[k] + uint32_t(((mx >> s) & 1) + ((my >> s) & 1));
                        const float c3[3] = {cx[p], cy[j], cz[k]};
                        edge_vertex<2>(row + k, 1, k, c3, level, spacing, origin,
                                       pos + (int64_t)id * 3, val ? val + id : nullptr);
                    }
                }
            }
        };

        for (int64_t c; (c = next_chunk.fetch_add(1)) < nchunks;) {
            const int64_t c0 = c * chunk, c1 = std::min(ncl, c0 + chunk);
            uint32_t *first_lo = first_a.get(), *first_hi = first_b.get();
            Word *masks_lo = masks_a.data(), *masks_hi = masks_b.data();
            fill(c0, first_lo, masks_lo, V + vbase[c0] * 3, true);
            int64_t* out = F + fbase[c0] * 3;
            for (int64_t i = c0; i < c1; ++i) {
                const bool owned = i + 1 < c1 || i + 1 == nx - 1;
                const int64_t lb0 = vbase[i], lb1 = vbase[i + 1];
                float* pos1 = owned ? V + lb1 * 3 : own_pos.get();
                fill(i + 1, first_hi, masks_hi, pos1, owned);
                const float* P[2] = {V + lb0 * 3, pos1};
                const uint32_t* FI[2] = {first_lo, first_hi};
                const Word* M[2] = {masks_lo, masks_hi};
                const int64_t LB[2] = {lb0, lb1};
                const int64_t nv0 = lb1 - lb0;
                // Layer i's second sum: in tsum, or kept for after the join.
                float* T;
                if (i == c0 && c0 > 0) {
                    first_layer_sum[c].assign(static_cast<size_t>(nv0) * 3, 0.0f);
                    T = first_layer_sum[c].data();
                } else {
                    std::fill(tsum.get(), tsum.get() + nv0 * 3, 0.0f);
                    T = tsum.get();
                }
                float* NS[2] = {T, N + lb1 * 3};
                for (int64_t j = 0; j + 1 < ny; ++j) {
                    for_cut_cubes(g, i, j, scratch.data(), [&](int64_t k, int cs) {
                        // Ids, positions and normal sums of the cube's cut
                        // edges, then its triangles.
                        int64_t gid[12];
                        const float* pos[12];
                        float* acc[12];
                        for (unsigned m = cut_edges[cs]; m; m &= m - 1) {
                            const int e = __builtin_ctz(m), l = elay[e];
                            const int64_t jj = j + erow[e], kk = k + ecol[e];
                            // Point's first id + its needed x-edge (for
                            // d >= 1) + its needed y-edge (for d == 2).
                            const Word* em = M[l] + (jj * 3 * W) + (kk >> 6);
                            const int s = int(kk & 63);
                            const uint32_t id = FI[l][jj * nz + kk] +
                                                uint32_t((em[0] >> s) & emx[e]) +
                                                uint32_t((em[W] >> s) & emy[e]);
                            gid[e] = LB[l] + (int64_t)id;
                            pos[e] = P[l] + (int64_t)id * 3;
                            acc[e] = NS[l] + (int64_t)id * 3;
                        }
                        const int8_t* t = table.tris[cs];
                        const int nt = table.ntri[cs];
                        for (int q = 0; q < nt; ++q, t += 3, out += 3) {
                            const int ea = t[0], eb = t[1], ec = t[2];
                            out[0] = gid[ea];
                            out[1] = gid[eb];
                            out[2] = gid[ec];
                            const float *pa = pos[ea], *pb = pos[eb], *pc = pos[ec];
                            const float u0 = pb[0] - pa[0], u1 = pb[1] - pa[1], u2 = pb[2] - pa[2];
                            const float v0 = pc[0] - pa[0], v1 = pc[1] - pa[1], v2 = pc[2] - pa[2];
                            const float n0 = u1 * v2 - u2 * v1, n1 = u2 * v0 - u0 * v2,
                                        n2 = u0 * v1 - u1 * v0;
                            for (float* n : {acc[ea], acc[eb], acc[ec]}) {
                                n[0] += n0;
                                n[1] += n1;
                                n[2] += n2;
                            }
                        }
                    });
                }
                if (T == tsum.get()) {
                    float* dst = N + lb0 * 3;
                    for (int64_t q = 0; q < nv0 * 3; ++q) dst[q] += T[q];
                }
                std::swap(first_lo, first_hi);
                std::swap(masks_lo, masks_hi);
            }
        }
    });
    for (int64_t c = 1; c < nchunks; ++c) {
        const std::vector<float>& T = first_layer_sum[c];
        float* dst = N + vbase[c * chunk] * 3;
        for (size_t q = 0; q < T.size(); ++q) dst[q] += T[q];
    }
    normalize_rows(N, nv);
    return mesh;
}

}  // namespace holopart
