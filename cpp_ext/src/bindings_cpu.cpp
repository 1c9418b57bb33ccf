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

// ---- the final level's host work (CPU only; holopart_infer/native.py wraps
// these and keeps the numpy reference). Shapes are validated in native.py; what
// would read or write out of bounds is re-checked here.
using holopart_bind::farr;
using holopart_bind::u8arr;
using i64arr = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

int64_t cells_rows(const i64arr& cells) {
    if (cells.ndim() != 2 || cells.shape(1) != 3)
        throw std::invalid_argument("cells: expected shape (N, 3)");
    return cells.shape(0);
}

// Every cell c of the list has 0 <= c[a] < limit[a].
void check_cells(const i64arr& cells, const int64_t limit[3]) {
    const int64_t* c = cells.data();
    for (int64_t t = 0; t < cells.shape(0) * 3; ++t)
        if (c[t] < 0 || c[t] >= limit[t % 3]) throw std::invalid_argument("cells: index out of the grid");
}

holopart::SparseFinal sparse_view(const farr& coarse, const i64arr& idx, const farr& val, int64_t n) {
    holopart_bind::require_ndim(coarse, 3, "coarse");
    if (idx.ndim() != 1 || val.ndim() != 1 || idx.shape(0) != val.shape(0))
        throw std::invalid_argument("idx, val: expected two 1-D arrays of one length");
    if (n < 1 || coarse.shape(0) < (n - 1) / 2 + 1 || coarse.shape(1) < (n - 1) / 2 + 1 ||
        coarse.shape(2) < (n - 1) / 2 + 1)
        throw std::invalid_argument("coarse: too small for n fine points per axis");
    const int64_t m = idx.shape(0);
    if (m && (idx.data()[0] < 0 || idx.data()[m - 1] >= n * n * n))
        throw std::invalid_argument("idx: index out of the fine grid");
    return holopart::SparseFinal{coarse.data(), coarse.shape(0), coarse.shape(1), coarse.shape(2),
                                 idx.data(), val.data(), m, n};
}

py::array_t<uint8_t> py_face_sign_changes(farr coarse, i64arr idx, farr val, int64_t n, i64arr cells,
                                          int axis, int side) {
    const holopart::SparseFinal s = sparse_view(coarse, idx, val, n);
    const int64_t nc = cells_rows(cells);
    if (axis < 0 || axis > 2 || side < 0 || side > 1) throw std::invalid_argument("axis/side out of range");
    const int64_t lim = (n - 1) / 2;  // 2 * c + 2 <= n - 1
    const int64_t limit[3] = {lim, lim, lim};
    check_cells(cells, limit);
    py::array_t<uint8_t> out(nc);
    {
        py::gil_scoped_release nogil;
        holopart::face_sign_changes(s, cells.data(), nc, axis, side, out.mutable_data());
    }
    return out;
}

py::array_t<uint8_t> py_near_band(u8arr band, i64arr cells, int radius) {
    holopart_bind::require_ndim(band, 3, "band");
    const int64_t nc = cells_rows(cells);
    const int64_t limit[3] = {band.shape(0), band.shape(1), band.shape(2)};
    check_cells(cells, limit);
    py::array_t<uint8_t> out(nc);
    {
        py::gil_scoped_release nogil;
        holopart::near_band(band.data(), band.shape(0), band.shape(1), band.shape(2), cells.data(), nc,
                            std::max(radius, 0), out.mutable_data());
    }
    return out;
}

py::array_t<int64_t> py_unique_cells(i64arr cells, std::array<int64_t, 3> shape) {
    const int64_t nc = cells_rows(cells);
    std::vector<int64_t> out;
    {
        py::gil_scoped_release nogil;
        out = holopart::unique_cells(cells.data(), nc, shape[0], shape[1], shape[2]);
    }
    const py::ssize_t m = (py::ssize_t)out.size() / 3;
    return holopart_bind::to_array(std::move(out), {m, 3});
}

py::array_t<int64_t> py_corner_points(i64arr cells, farr coarse) {
    holopart_bind::require_ndim(coarse, 3, "coarse");
    const int64_t nc = cells_rows(cells);
    std::vector<int64_t> out;
    {
        py::gil_scoped_release nogil;
        out = holopart::corner_points(cells.data(), nc, coarse.data(), coarse.shape(0), coarse.shape(1),
                                      coarse.shape(2));
    }
    const py::ssize_t m = (py::ssize_t)out.size();
    return holopart_bind::to_array(std::move(out), {m});
}

py::array_t<uint8_t> py_sorted_member(i64arr sorted, i64arr q) {
    if (sorted.ndim() != 1 || q.ndim() != 1) throw std::invalid_argument("expected 1-D arrays");
    py::array_t<uint8_t> out(q.shape(0));
    {
        py::gil_scoped_release nogil;
        holopart::sorted_member(sorted.data(), sorted.shape(0), q.data(), q.shape(0), out.mutable_data());
    }
    return out;
}

py::tuple py_sparse_merge(i64arr idx, farr val, i64arr add_idx, farr add_val) {
    if (idx.ndim() != 1 || val.ndim() != 1 || add_idx.ndim() != 1 || add_val.ndim() != 1 ||
        idx.shape(0) != val.shape(0) || add_idx.shape(0) != add_val.shape(0))
        throw std::invalid_argument("expected 1-D (index, value) arrays of matching lengths");
    const int64_t total = idx.shape(0) + add_idx.shape(0);
    py::array_t<int64_t> oi(total);
    py::array_t<float> ov(total);
    {
        py::gil_scoped_release nogil;
        holopart::sparse_merge(idx.data(), val.data(), idx.shape(0), add_idx.data(), add_val.data(),
                               add_idx.shape(0), oi.mutable_data(), ov.mutable_data());
    }
    return py::make_tuple(oi, ov);
}

void py_sparse_grid(farr coarse, i64arr idx, farr val, int64_t n, py::array_t<float> out) {
    const holopart::SparseFinal s = sparse_view(coarse, idx, val, n);
    if (out.ndim() != 3 || out.shape(0) != n || out.shape(1) != n || out.shape(2) != n ||
        !(out.flags() & py::array::c_style) || !out.writeable())
        throw std::invalid_argument("out: expected a writable C-contiguous float32 (n, n, n) array");
    if ((n - 1) / 2 + 1 != coarse.shape(0) || coarse.shape(0) != coarse.shape(1) ||
        coarse.shape(1) != coarse.shape(2))
        throw std::invalid_argument("coarse: expected ((n - 1) / 2 + 1)^3 points");
    float* o = out.mutable_data();
    py::gil_scoped_release nogil;
    holopart::sparse_grid(s, o);
}

using f64arr = py::array_t<double, py::array::c_style | py::array::forcecast>;

py::array_t<double> py_winding_numbers(f64arr points, f64arr triangles) {
    if (points.ndim() != 2 || points.shape(1) != 3)
        throw std::invalid_argument("points: expected shape (N, 3)");
    if (triangles.ndim() != 3 || triangles.shape(1) != 3 || triangles.shape(2) != 3)
        throw std::invalid_argument("triangles: expected shape (F, 3, 3)");
    const int64_t np = points.shape(0), nf = triangles.shape(0);
    py::array_t<double> out(np);
    double* o = out.mutable_data();
    py::gil_scoped_release nogil;
    holopart::winding_numbers(points.data(), np, triangles.data(), nf, o);
    return out;
}

}  // namespace

PYBIND11_MODULE(_cpp, m) {
    m.doc() = "holopart_infer CPU kernels (use holopart_infer.native / mcubes instead)";
    holopart_bind::register_kernels<CpuBackend>(m);
    m.def("num_threads", &holopart::num_threads,
          "Worker threads used (HOLOPART_NUM_THREADS, else OMP_NUM_THREADS, else all cores).");
    m.def("face_sign_changes", &py_face_sign_changes, py::arg("coarse"), py::arg("idx"), py::arg("val"),
          py::arg("n"), py::arg("cells"), py::arg("axis"), py::arg("side"));
    m.def("near_band", &py_near_band, py::arg("band"), py::arg("cells"), py::arg("radius"));
    m.def("unique_cells", &py_unique_cells, py::arg("cells"), py::arg("shape"));
    m.def("corner_points", &py_corner_points, py::arg("cells"), py::arg("coarse"));
    m.def("sorted_member", &py_sorted_member, py::arg("sorted"), py::arg("q"));
    m.def("sparse_merge", &py_sparse_merge, py::arg("idx"), py::arg("val"), py::arg("add_idx"),
          py::arg("add_val"));
    m.def("sparse_grid", &py_sparse_grid, py::arg("coarse"), py::arg("idx"), py::arg("val"), py::arg("n"),
          py::arg("out"));
    m.def("winding_numbers", &py_winding_numbers, py::arg("points"), py::arg("triangles"),
          "Generalized winding number of each point w.r.t. the triangles (F, 3, 3).");
}
