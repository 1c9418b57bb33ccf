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

// Marching cubes on a float32 C-order volume already in device memory (a CUDA
// tensor's data_ptr(), on the current device); the caller keeps it alive and
// ordered (synchronized) with this call. holopart_infer/resident.py wraps it.
py::tuple py_marching_cubes_device(uintptr_t ptr, std::array<int64_t, 3> shape, float level,
                                   std::array<double, 3> spacing, std::array<double, 3> origin) {
    if (ptr == 0) throw std::invalid_argument("marching_cubes_device: null volume pointer");
    holopart::Mesh m;
    {
        py::gil_scoped_release nogil;
        m = holopart::cuda::marching_cubes_device(reinterpret_cast<const float*>(ptr), shape[0],
                                                  shape[1], shape[2], level, spacing.data(),
                                                  origin.data());
    }
    return holopart_bind::mesh_tuple(std::move(m));
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "holopart_infer CUDA kernels (use holopart_infer.native / mcubes instead)";
    holopart_bind::register_kernels<CudaBackend>(m);
    m.def("marching_cubes_device", &py_marching_cubes_device, py::arg("pointer"), py::arg("shape"),
          py::arg("level"), py::arg("spacing"), py::arg("origin"),
          "marching_cubes on a float32 volume already in device memory (pointer, (nx, ny, nz)).");
    m.def("device_count", &holopart::cuda::device_count,
          "Number of usable CUDA devices (0 without a driver or GPU; never raises).");
    m.def("device_status", &holopart::cuda::device_status,
          "Why device_count() is 0, or an empty string.");
}
