// CUDA kernels of holopart_infer behind a host-side C++ API (host pointers in,
// host results out; marching_cubes_device takes a device pointer), with the same semantics and output order as the CPU
// kernels in include/holopart/kernels.hpp. Compiled by nvcc; this header is
// plain C++ so the bindings are built by the host compiler.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "holopart/kernels.hpp"

namespace holopart {
namespace cuda {

// Number of usable CUDA devices; 0 (never an exception) without a driver or GPU.
int device_count();
// Human-readable reason device_count() returned 0 ("" when a device exists).
std::string device_status();

void farthest_point_sampling(const float* xyz, int64_t n, int64_t k, int64_t* out);
void band_cells(const float* values, int64_t cx, int64_t cy, int64_t cz, float band,
                uint8_t* cells_out);
void dilate_cells(const uint8_t* cells, int64_t cx, int64_t cy, int64_t cz, int radius,
                  uint8_t* out);
std::vector<int64_t> refine_points(const uint8_t* cells, int64_t cx, int64_t cy, int64_t cz,
                                   const float* coarse_values);
Mesh marching_cubes(const float* vol, int64_t nx, int64_t ny, int64_t nz, float level,
                    const double spacing[3], const double origin[3]);
// Same, for a volume already in device memory of the current device (no
// upload; e.g. a CUDA tensor's data_ptr()); the mesh comes back to the host.
Mesh marching_cubes_device(const float* d_vol, int64_t nx, int64_t ny, int64_t nz, float level,
                           const double spacing[3], const double origin[3]);

}  // namespace cuda
}  // namespace holopart
