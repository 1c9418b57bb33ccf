// Python module holopart_infer._cuda: the CUDA kernels, same signatures as _cpp.
#include "holopart/bindings_common.hpp"
#include "kernels_cuda.hpp"

namespace {

struct CudaBackend {
    static constexpr auto fps = &holopart::cuda::farthest_point_sampling;
    static constexpr auto band_cells = &holopart::cuda::band_cells;
    static constexpr auto dilate_cells = &holopart::cuda::dilate_cells;
    static constexpr auto refine_points = &holopart::cuda::refine_points;
    static constexpr auto marching_cubes = &holopart::cuda::marching_cubes;
};

}  // namespace

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "holopart_infer CUDA kernels (use holopart_infer.native / mcubes instead)";
    holopart_bind::register_kernels<CudaBackend>(m);
    m.def("device_count", &holopart::cuda::device_count,
          "Number of usable CUDA devices (0 without a driver or GPU; never raises).");
    m.def("device_status", &holopart::cuda::device_status,
          "Why device_count() is 0, or an empty string.");
}
