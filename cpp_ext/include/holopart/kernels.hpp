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

}  // namespace holopart
