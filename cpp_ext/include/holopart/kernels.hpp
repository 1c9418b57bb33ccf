// CPU kernels of holopart_infer (pure C++, no Python). Arrays are C-ordered.
#pragma once

#include <cstdint>
#include <vector>

#include "holopart/mc_common.hpp"

namespace holopart {

// The marching-cubes case table, generated on first use (see mc_table.cpp).
const McTable& mc_table();

// Farthest point sampling: out[0] = 0, then repeatedly the point whose squared
// distance to the already chosen set is largest (ties: lowest index).
void farthest_point_sampling(const float* xyz, int64_t n, int64_t k, int64_t* out);

// Band cells of a grid of values with (cx+1, cy+1, cz+1) points (NaN unknown):
// cells_out (cx, cy, cz) is 1 where a known corner has |v| < band or the known
// corners change sign.
void band_cells(const float* values, int64_t cx, int64_t cy, int64_t cz, float band,
                uint8_t* cells_out);

// Box dilation of a cell mask by `radius` cells along each axis (26-neighbourhood).
void dilate_cells(const uint8_t* cells, int64_t cx, int64_t cy, int64_t cz, int radius,
                  uint8_t* out);

// Linear indices (ascending) into the finer grid of (2cx+1, 2cy+1, 2cz+1) points
// of the corners of every fine cell inside an active coarse cell. When
// coarse_values is given ((cx+1, cy+1, cz+1) points), fine points that coincide
// with a known coarse point are left out: their value is already known.
std::vector<int64_t> refine_points(const uint8_t* cells, int64_t cx, int64_t cy, int64_t cz,
                                   const float* coarse_values);

struct Mesh {
    std::vector<float> vertices;  // (V, 3)
    std::vector<int64_t> faces;   // (F, 3)
    std::vector<float> normals;   // (V, 3)
    std::vector<float> values;    // (V,)
};

// Marching cubes over a dense (nx, ny, nz) float32 grid; NaN = unknown (cubes
// with an unknown corner emit nothing). One vertex per crossed grid edge,
// vertices ordered by (owning point, axis), faces by cube then table order,
// oriented with right-hand normals pointing towards lower values.
Mesh marching_cubes(const float* vol, int64_t nx, int64_t ny, int64_t nz, float level,
                    const double spacing[3], const double origin[3]);

// Area-weighted vertex normals from oriented faces (unit length, 0 when the
// vertex only touches degenerate faces).
void vertex_normals(const float* vertices, int64_t nv, const int64_t* faces, int64_t nf,
                    float* normals);

// ---- The final level's host work (final_level.cpp): a part's final-level
// values as the previous level's coarse grid ((cx, cy, cz) points, NaN unknown)
// plus ascending linear indices `idx` (m of them) into the n^3 fine grid and
// their values. Fine point (i, j, k) with all indices even reads the coarse
// grid, any other the list.
struct SparseFinal {
    const float* coarse;
    int64_t cx, cy, cz;
    const int64_t* idx;
    const float* val;
    int64_t m;
    int64_t n;
};

// out[c] = 1 when the 3 x 3 fine points on face `side` (0 low, 1 high) along
// `axis` of coarse cell cells[c] (N x 3) are not all inside (> 0; NaN is not).
void face_sign_changes(const SparseFinal& s, const int64_t* cells, int64_t ncells, int axis,
                       int side, uint8_t* out);

// out[c] = 1 when a cell within `radius` (26-neighbourhood) of cells[c] is set in band.
void near_band(const uint8_t* band, int64_t bx, int64_t by, int64_t bz, const int64_t* cells,
               int64_t ncells, int radius, uint8_t* out);

// The distinct cells of an (N, 3) list in C order, flattened (M * 3).
std::vector<int64_t> unique_cells(const int64_t* cells, int64_t ncells, int64_t sx, int64_t sy,
                                  int64_t sz);

// refine_points of a mask holding only `cells`: ascending fine indices of the
// corners of their eight sub-cells, less the known coarse points.
std::vector<int64_t> corner_points(const int64_t* cells, int64_t ncells, const float* coarse,
                                   int64_t px, int64_t py, int64_t pz);

// out[t] = 1 when q[t] is in the ascending array `sorted`.
void sorted_member(const int64_t* sorted, int64_t m, const int64_t* q, int64_t nq, uint8_t* out);

// Merge two ascending (index, value) lists with no index in common.
void sparse_merge(const int64_t* idx, const float* val, int64_t m, const int64_t* add_idx,
                  const float* add_val, int64_t q, int64_t* out_idx, float* out_val);

// The dense n^3 final grid: NaN, the coarse lattice, then the list.
void sparse_grid(const SparseFinal& s, float* out);

// Generalized winding numbers (np,) of points (np, 3) with respect to nf
// triangles given as (nf, 3, 3) corner coordinates; threaded over the points.
void winding_numbers(const double* points, int64_t np, const double* tri, int64_t nf, double* out);

}  // namespace holopart
