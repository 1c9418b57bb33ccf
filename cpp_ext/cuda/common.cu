#include <cub/device/device_scan.cuh>

#include <climits>

#include "cuda_util.cuh"
#include "kernels_cuda.hpp"

namespace holopart {
namespace cuda {

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

std::string device_status() {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return cudaGetErrorString(e);
    }
    return n > 0 ? "" : "no CUDA device";
}

void check_scan_size(int64_t n, const char* what) {
    if (n >= INT_MAX)
        throw std::runtime_error(std::string(what) + ": grid too large for the CUDA kernels (" +
                                 std::to_string(n) + " elements, limit 2^31 - 1)");
}

uint32_t exclusive_scan(const uint32_t* d_in, uint32_t* d_out, int64_t n) {
    if (n == 0) return 0;
    size_t temp_bytes = 0;
    check(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, d_in, d_out, static_cast<int>(n)),
          "scan (size)");
    DeviceBuffer<unsigned char> temp(temp_bytes);
    check(cub::DeviceScan::ExclusiveSum(temp.get(), temp_bytes, d_in, d_out, static_cast<int>(n)),
          "scan");
    uint32_t last_in = 0, last_out = 0;
    check(cudaMemcpy(&last_in, d_in + n - 1, sizeof(uint32_t), cudaMemcpyDeviceToHost), "scan total");
    check(cudaMemcpy(&last_out, d_out + n - 1, sizeof(uint32_t), cudaMemcpyDeviceToHost), "scan total");
    return last_in + last_out;
}

}  // namespace cuda
}  // namespace holopart
