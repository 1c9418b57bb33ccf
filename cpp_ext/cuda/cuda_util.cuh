// Small helpers for the .cu files: error checks, an owning device buffer and
// a 32-bit exclusive scan.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace holopart {
namespace cuda {

inline void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess)
        throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

template <typename T>
class DeviceBuffer {
  public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t n) : n_(n) {
        if (n) check(cudaMalloc(&p_, n * sizeof(T)), "cudaMalloc");
    }
    ~DeviceBuffer() {
        if (p_) cudaFree(p_);
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    T* get() const { return p_; }
    size_t size() const { return n_; }
    void upload(const T* host, size_t n) {
        if (n) check(cudaMemcpy(p_, host, n * sizeof(T), cudaMemcpyHostToDevice), "upload");
    }
    void download(T* host, size_t n) const {
        if (n) check(cudaMemcpy(host, p_, n * sizeof(T), cudaMemcpyDeviceToHost), "download");
    }
    void zero() {
        if (n_) check(cudaMemset(p_, 0, n_ * sizeof(T)), "cudaMemset");
    }

  private:
    T* p_ = nullptr;
    size_t n_ = 0;
};

// out = exclusive prefix sum of in (n elements); returns the total. n must be
// below 2^31 and the total must fit in 32 bits (checked by the callers' limits).
uint32_t exclusive_scan(const uint32_t* d_in, uint32_t* d_out, int64_t n);

// Throws when a grid has too many elements for the 32-bit scans.
void check_scan_size(int64_t n, const char* what);

inline unsigned blocks_for(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b > 1 << 20) b = 1 << 20;  // grid-stride loops cover the rest
    if (b < 1) b = 1;
    return static_cast<unsigned>(b);
}

}  // namespace cuda
}  // namespace holopart
