// Python module holopart_infer._cpp: the CPU kernels.
#include "holopart/bindings_common.hpp"
#include "holopart/parallel.hpp"

namespace {

struct CpuBackend {
    static constexpr auto fps = &holopart::farthest_point_sampling;
    static constexpr auto band_cells = &holopart::band_cells;
    static constexpr auto dilate_cells = &holopart::dilate_cells;
    static constexpr auto refine_points = &holopart::refine_points;
    static constexpr auto marching_cubes = &holopart::marching_cubes;
};

}  // namespace

PYBIND11_MODULE(_cpp, m) {
    m.doc() = "holopart_infer CPU kernels (use holopart_infer.native / mcubes instead)";
    holopart_bind::register_kernels<CpuBackend>(m);
    m.def("num_threads", &holopart::num_threads,
          "Worker threads used (HOLOPART_NUM_THREADS, else OMP_NUM_THREADS, else all cores).");
}
