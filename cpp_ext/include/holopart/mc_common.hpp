// Pieces of the marching-cubes and band kernels shared verbatim by the C++ and
// the CUDA implementations, so that both produce the same vertices in the same
// order. Everything here is header-only and compiles under g++ and nvcc.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define HP_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// static: no PLT interposition inside the shared module; always_inline: these
// sit in the innermost loops.
#define HP_HD static inline __attribute__((always_inline))
#else
#define HP_HD static inline
#endif

namespace holopart {

// Cube corner n sits at offset ((n >> 2) & 1, (n >> 1) & 1, n & 1) along the
// array axes (0, 1, 2). Case index bit n is set when corner n is inside
// (value > level).
//
// Cube edge e = axis * 4 + (u << 1 | v): the edge parallel to `axis` whose
// coordinates along the two other axes (in increasing axis order) are (u, v).
constexpr int kMaxTrianglesPerCube = 12;

struct McTable {
    // Triangles of each case as cube-edge triples, oriented so that the
    // right-hand normal points out of the inside region (towards lower values).
    int8_t tris[256][kMaxTrianglesPerCube * 3];
    uint8_t ntri[256];
};

// Unknown = NaN or +-inf (v - v is NaN exactly for those; no fast-math here).
HP_HD bool hp_is_unknown(float v) { return !(v - v == 0.0f); }

// Grid edge (point p, direction d) is "needed" when it is crossed by the level
// set (exactly one endpoint > level, both known) and at least one of the up to
// four cubes around it has eight known corners, i.e. a cube that will emit it.
// nx, ny, nz are point counts; (i, j, k) the point; d the axis of the edge.
HP_HD bool hp_cube_known(const float* vol, int64_t ny, int64_t nz, int64_t i, int64_t j,
                         int64_t k) {
    const int64_t sx = ny * nz, sy = nz;
    const float* c = vol + i * sx + j * sy + k;
    return !(hp_is_unknown(c[0]) || hp_is_unknown(c[1]) || hp_is_unknown(c[sy]) ||
             hp_is_unknown(c[sy + 1]) || hp_is_unknown(c[sx]) || hp_is_unknown(c[sx + 1]) ||
             hp_is_unknown(c[sx + sy]) || hp_is_unknown(c[sx + sy + 1]));
}

HP_HD bool hp_edge_needed(const float* vol, int64_t nx, int64_t ny, int64_t nz, int64_t i,
                          int64_t j, int64_t k, int d, float level, bool has_unknown) {
    const int64_t sx = ny * nz, sy = nz;
    const int64_t idx[3] = {i, j, k};
    const int64_t dims[3] = {nx, ny, nz};
    if (idx[d] + 1 >= dims[d]) return false;
    const int64_t step = d == 0 ? sx : (d == 1 ? sy : 1);
    const float a = vol[i * sx + j * sy + k];
    const float b = vol[i * sx + j * sy + k + step];
    if ((a > level) == (b > level)) return false;
    if (!has_unknown) return true;
    if (hp_is_unknown(a) || hp_is_unknown(b)) return false;
    // The two other axes; the cubes around the edge start at idx-1 or idx on each.
    const int b1 = d == 0 ? 1 : 0;
    const int b2 = d == 2 ? 1 : 2;
    for (int o1 = -1; o1 <= 0; ++o1) {
        for (int o2 = -1; o2 <= 0; ++o2) {
            int64_t c[3] = {i, j, k};
            c[b1] += o1;
            c[b2] += o2;
            if (c[b1] < 0 || c[b2] < 0 || c[b1] + 1 >= dims[b1] || c[b2] + 1 >= dims[b2])
                continue;
            if (hp_cube_known(vol, ny, nz, c[0], c[1], c[2])) return true;
        }
    }
    return false;
}

// Bit mask (bit d) of the needed edges owned by point (i, j, k).
HP_HD unsigned hp_point_edge_mask(const float* vol, int64_t nx, int64_t ny, int64_t nz,
                                  int64_t i, int64_t j, int64_t k, float level,
                                  bool has_unknown) {
    unsigned m = 0;
    for (int d = 0; d < 3; ++d)
        if (hp_edge_needed(vol, nx, ny, nz, i, j, k, d, level, has_unknown)) m |= 1u << d;
    return m;
}

// Case index of the cube whose lowest corner is (i, j, k); -1 when a corner is
// unknown.
HP_HD int hp_cube_case(const float* vol, int64_t ny, int64_t nz, int64_t i, int64_t j,
                       int64_t k, float level, bool has_unknown) {
    const int64_t sx = ny * nz, sy = nz;
    const float* c = vol + i * sx + j * sy + k;
    const float v[8] = {c[0], c[1], c[sy], c[sy + 1], c[sx], c[sx + 1], c[sx + sy], c[sx + sy + 1]};
    int cs = 0;
    for (int n = 0; n < 8; ++n) {
        if (has_unknown && hp_is_unknown(v[n])) return -1;
        if (v[n] > level) cs |= 1 << n;
    }
    return cs;
}

// Owning grid point (offset from the cube's lowest corner) and direction of a
// cube edge.
HP_HD void hp_edge_owner(int e, int& di, int& dj, int& dk, int& d) {
    d = e >> 2;
    const int u = (e >> 1) & 1, v = e & 1;
    di = dj = dk = 0;
    if (d == 0) { dj = u; dk = v; }
    else if (d == 1) { di = u; dk = v; }
    else { di = u; dj = v; }
}

// Vertex on the crossed edge (point (i,j,k), direction d): position in world
// units and value (the larger of the two endpoint values, as scikit-image's
// `values` is a local maximum). Arithmetic is spelled out with explicit
// rounding on the device so that CPU and GPU agree bit for bit.
HP_HD void hp_edge_vertex(const float* vol, int64_t ny, int64_t nz, int64_t i, int64_t j,
                          int64_t k, int d, float level, const double* spacing,
                          const double* origin, float* pos, float* value) {
    const int64_t sx = ny * nz, sy = nz;
    const int64_t step = d == 0 ? sx : (d == 1 ? sy : 1);
    const float a = vol[i * sx + j * sy + k];
    const float b = vol[i * sx + j * sy + k + step];
#if defined(__CUDA_ARCH__)
    const float t = __fdiv_rn(__fsub_rn(level, a), __fsub_rn(b, a));
#else
    const float t = (level - a) / (b - a);
#endif
    const int64_t idx[3] = {i, j, k};
    for (int ax = 0; ax < 3; ++ax) {
        double g = (double)idx[ax];
        if (ax == d) {
#if defined(__CUDA_ARCH__)
            g = __dadd_rn(g, (double)t);
#else
            g = g + (double)t;
#endif
        }
#if defined(__CUDA_ARCH__)
        pos[ax] = (float)__dadd_rn(__dmul_rn(g, spacing[ax]), origin[ax]);
#else
        pos[ax] = (float)(g * spacing[ax] + origin[ax]);
#endif
    }
    *value = a > b ? a : b;
}

// Squared distance with a fixed evaluation order ((dx*dx + dy*dy) + dz*dz) and
// no fused multiply-add, so FPS picks identical points on CPU, GPU and numpy.
HP_HD float hp_sqdist(const float* p, const float* q) {
#if defined(__CUDA_ARCH__)
    const float dx = __fsub_rn(p[0], q[0]), dy = __fsub_rn(p[1], q[1]), dz = __fsub_rn(p[2], q[2]);
    return __fadd_rn(__fadd_rn(__fmul_rn(dx, dx), __fmul_rn(dy, dy)), __fmul_rn(dz, dz));
#else
    const float dx = p[0] - q[0], dy = p[1] - q[1], dz = p[2] - q[2];
    return (dx * dx + dy * dy) + dz * dz;
#endif
}

// Band test of one coarse cell (cell counts cx, cy, cz; values have one more
// point per axis): interesting when a known corner lies within `band` of 0 or
// the known corners do not all have the same sign.
HP_HD bool hp_band_cell(const float* values, int64_t cy, int64_t cz, int64_t i, int64_t j,
                        int64_t k, float band) {
    const int64_t py = cy + 1, pz = cz + 1;
    const int64_t sx = py * pz, sy = pz;
    const float* c = values + i * sx + j * sy + k;
    const float v[8] = {c[0], c[1], c[sy], c[sy + 1], c[sx], c[sx + 1], c[sx + sy], c[sx + sy + 1]};
    bool pos = false, neg = false;
    for (int n = 0; n < 8; ++n) {
        const float x = v[n];
        if (hp_is_unknown(x)) continue;
        if (x < band && x > -band) return true;
        if (x > 0.0f) pos = true; else neg = true;
    }
    return pos && neg;
}

// Whether fine grid point (fi, fj, fk) (fine grid = 2*cells + 1 points per
// axis) is a corner of a fine cell inside an active coarse cell.
HP_HD bool hp_fine_point_active(const uint8_t* cells, int64_t cx, int64_t cy, int64_t cz,
                                int64_t fi, int64_t fj, int64_t fk) {
    int64_t lo[3], hi[3];
    const int64_t f[3] = {fi, fj, fk};
    const int64_t n[3] = {cx, cy, cz};
    for (int a = 0; a < 3; ++a) {
        if (f[a] & 1) { lo[a] = hi[a] = f[a] >> 1; }
        else { lo[a] = (f[a] >> 1) - 1; hi[a] = f[a] >> 1; }
        if (lo[a] < 0) lo[a] = 0;
        if (hi[a] > n[a] - 1) hi[a] = n[a] - 1;
    }
    for (int64_t i = lo[0]; i <= hi[0]; ++i)
        for (int64_t j = lo[1]; j <= hi[1]; ++j)
            for (int64_t k = lo[2]; k <= hi[2]; ++k)
                if (cells[(i * cy + j) * cz + k]) return true;
    return false;
}

}  // namespace holopart
