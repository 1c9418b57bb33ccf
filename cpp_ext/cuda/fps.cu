// Farthest point sampling in one thread block: every step updates the
// min-distance array and reduces (distance, index) with the lowest index
// winning ties, exactly like the CPU loop.
#include "cuda_util.cuh"
#include "holopart/mc_common.hpp"
#include "kernels_cuda.hpp"

namespace holopart {
namespace cuda {
namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ bool better(float d, int64_t i, float bd, int64_t bi) {
    return d > bd || (d == bd && i < bi);
}

__global__ void fps_kernel(const float* __restrict__ xyz, int64_t n, int64_t k,
                           float* __restrict__ mind, int64_t* __restrict__ out) {
    __shared__ float s_d[kThreads];
    __shared__ int64_t s_i[kThreads];
    __shared__ float s_p[3];
    const int t = threadIdx.x;
    for (int64_t i = t; i < n; i += kThreads) mind[i] = __int_as_float(0x7f800000);  // +inf
    int64_t cur = 0;
    if (t == 0) out[0] = 0;
    for (int64_t s = 1; s < k; ++s) {
        if (t < 3) s_p[t] = xyz[cur * 3 + t];
        __syncthreads();
        float bd = -1.0f;
        int64_t bi = n;
        for (int64_t i = t; i < n; i += kThreads) {
            const float d = hp_sqdist(xyz + i * 3, s_p);
            float m = mind[i];
            if (d < m) m = d;
            mind[i] = m;
            if (better(m, i, bd, bi)) { bd = m; bi = i; }
        }
        s_d[t] = bd;
        s_i[t] = bi;
        __syncthreads();
        for (int w = kThreads / 2; w > 0; w >>= 1) {
            if (t < w && better(s_d[t + w], s_i[t + w], s_d[t], s_i[t])) {
                s_d[t] = s_d[t + w];
                s_i[t] = s_i[t + w];
            }
            __syncthreads();
        }
        cur = s_i[0];
        if (t == 0) out[s] = cur;
        __syncthreads();  // s_i[0] / s_p are rewritten next step
    }
}

}  // namespace

void farthest_point_sampling(const float* xyz, int64_t n, int64_t k, int64_t* out) {
    if (k <= 0 || n <= 0) return;
    DeviceBuffer<float> d_xyz(static_cast<size_t>(n) * 3), d_mind(static_cast<size_t>(n));
    DeviceBuffer<int64_t> d_out(static_cast<size_t>(k));
    d_xyz.upload(xyz, static_cast<size_t>(n) * 3);
    fps_kernel<<<1, kThreads>>>(d_xyz.get(), n, k, d_mind.get(), d_out.get());
    check(cudaGetLastError(), "fps_kernel launch");
    d_out.download(out, static_cast<size_t>(k));
}

}  // namespace cuda
}  // namespace holopart
