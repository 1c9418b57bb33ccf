// Configure-time probe: the CUDA toolchain, host compiler and CUB headers work
// for the chosen architectures (see CMakeLists.txt).
#include <cub/device/device_scan.cuh>

__global__ void probe_kernel(unsigned* p) { p[threadIdx.x] += 1u; }

int main() {
    size_t bytes = 0;
    unsigned* d = nullptr;
    cub::DeviceScan::ExclusiveSum(nullptr, bytes, d, d, 16);
    probe_kernel<<<1, 16>>>(d);
    return 0;
}
