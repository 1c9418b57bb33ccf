// Band detection, dilation and compaction of the next level's query points.
#include "cuda_util.cuh"
#include "holopart/mc_common.hpp"
#include "kernels_cuda.hpp"

namespace holopart {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__global__ void band_kernel(const float* __restrict__ values, int64_t cx, int64_t cy, int64_t cz,
                            float band, uint8_t* __restrict__ out) {
    const int64_t n = cx * cy * cz;
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < n;
         c += (int64_t)gridDim.x * blockDim.x) {
        const int64_t k = c % cz, j = (c / cz) % cy, i = c / (cy * cz);
        out[c] = hp_band_cell(values, cy, cz, i, j, k, band) ? 1 : 0;
    }
}

__global__ void dilate_axis_kernel(const uint8_t* __restrict__ in, uint8_t* __restrict__ out,
                                   int64_t cx, int64_t cy, int64_t cz, int axis, int r) {
    const int64_t n = cx * cy * cz;
    const int64_t dims[3] = {cx, cy, cz};
    const int64_t strides[3] = {cy * cz, cz, 1};
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < n;
         c += (int64_t)gridDim.x * blockDim.x) {
        const int64_t x = (c / strides[axis]) % dims[axis];
        const int64_t lo = x - r < 0 ? 0 : x - r;
        const int64_t hi = x + r >= dims[axis] ? dims[axis] - 1 : x + r;
        uint8_t v = 0;
        for (int64_t y = lo; y <= hi && !v; ++y) v = in[c + (y - x) * strides[axis]];
        out[c] = v;
    }
}

__device__ bool keep_fine(const uint8_t* cells, const float* coarse, int64_t cx, int64_t cy,
                          int64_t cz, int64_t i, int64_t j, int64_t k) {
    if (coarse && !(i & 1) && !(j & 1) && !(k & 1)) {
        const float v = coarse[((i >> 1) * (cy + 1) + (j >> 1)) * (cz + 1) + (k >> 1)];
        if (!hp_is_unknown(v)) return false;
    }
    return hp_fine_point_active(cells, cx, cy, cz, i, j, k);
}

__global__ void fine_flags_kernel(const uint8_t* __restrict__ cells, const float* __restrict__ coarse,
                                  int64_t cx, int64_t cy, int64_t cz, uint32_t* __restrict__ flags) {
    const int64_t fy = 2 * cy + 1, fz = 2 * cz + 1;
    const int64_t n = (2 * cx + 1) * fy * fz;
    for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < n;
         p += (int64_t)gridDim.x * blockDim.x) {
        const int64_t k = p % fz, j = (p / fz) % fy, i = p / (fy * fz);
        flags[p] = keep_fine(cells, coarse, cx, cy, cz, i, j, k) ? 1u : 0u;
    }
}

__global__ void compact_kernel(const uint32_t* __restrict__ flags, const uint32_t* __restrict__ pos,
                               int64_t n, int64_t* __restrict__ out) {
    for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < n;
         p += (int64_t)gridDim.x * blockDim.x)
        if (flags[p]) out[pos[p]] = p;
}

}  // namespace

void band_cells(const float* values, int64_t cx, int64_t cy, int64_t cz, float band,
                uint8_t* cells_out) {
    const size_t np = static_cast<size_t>((cx + 1) * (cy + 1) * (cz + 1));
    const size_t nc = static_cast<size_t>(cx * cy * cz);
    DeviceBuffer<float> d_v(np);
    DeviceBuffer<uint8_t> d_c(nc);
    d_v.upload(values, np);
    band_kernel<<<blocks_for(nc, kThreads), kThreads>>>(d_v.get(), cx, cy, cz, band, d_c.get());
    check(cudaGetLastError(), "band_kernel launch");
    d_c.download(cells_out, nc);
}

void dilate_cells(const uint8_t* cells, int64_t cx, int64_t cy, int64_t cz, int radius,
                  uint8_t* out) {
    const size_t nc = static_cast<size_t>(cx * cy * cz);
    DeviceBuffer<uint8_t> a(nc), b(nc);
    a.upload(cells, nc);
    if (radius > 0) {
        const unsigned blocks = blocks_for(nc, kThreads);
        dilate_axis_kernel<<<blocks, kThreads>>>(a.get(), b.get(), cx, cy, cz, 0, radius);
        dilate_axis_kernel<<<blocks, kThreads>>>(b.get(), a.get(), cx, cy, cz, 1, radius);
        dilate_axis_kernel<<<blocks, kThreads>>>(a.get(), b.get(), cx, cy, cz, 2, radius);
        check(cudaGetLastError(), "dilate_axis_kernel launch");
        b.download(out, nc);
    } else {
        a.download(out, nc);
    }
}

std::vector<int64_t> refine_points(const uint8_t* cells, int64_t cx, int64_t cy, int64_t cz,
                                   const float* coarse_values) {
    const int64_t nf = (2 * cx + 1) * (2 * cy + 1) * (2 * cz + 1);
    check_scan_size(nf, "refine_points");
    const size_t nc = static_cast<size_t>(cx * cy * cz);
    const size_t np = static_cast<size_t>((cx + 1) * (cy + 1) * (cz + 1));
    DeviceBuffer<uint8_t> d_cells(nc);
    d_cells.upload(cells, nc);
    DeviceBuffer<float> d_coarse(coarse_values ? np : 0);
    if (coarse_values) d_coarse.upload(coarse_values, np);
    DeviceBuffer<uint32_t> flags(static_cast<size_t>(nf)), pos(static_cast<size_t>(nf));
    const unsigned blocks = blocks_for(nf, kThreads);
    fine_flags_kernel<<<blocks, kThreads>>>(d_cells.get(), coarse_values ? d_coarse.get() : nullptr,
                                            cx, cy, cz, flags.get());
    check(cudaGetLastError(), "fine_flags_kernel launch");
    const uint32_t total = exclusive_scan(flags.get(), pos.get(), nf);
    DeviceBuffer<int64_t> d_out(total);
    compact_kernel<<<blocks, kThreads>>>(flags.get(), pos.get(), nf, d_out.get());
    check(cudaGetLastError(), "compact_kernel launch");
    std::vector<int64_t> out(total);
    d_out.download(out.data(), total);
    return out;
}

}  // namespace cuda
}  // namespace holopart
