// Shared pybind11 wrappers for the CPU (_cpp) and CUDA (_cuda) modules, so
// both expose exactly the same signatures. Shapes and dtypes are validated by
// holopart_infer/native.py and mcubes.py; here only what would corrupt memory
// is re-checked.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>
#include <string>
#include <vector>

#include "holopart/kernels.hpp"

namespace py = pybind11;

namespace holopart_bind {

using farr = py::array_t<float, py::array::c_style | py::array::forcecast>;
using u8arr = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

// Hands a vector's buffer to numpy without copying (the capsule owns it).
template <typename T>
py::array_t<T> to_array(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
    auto* owned = new std::vector<T>(std::move(v));
    py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    return py::array_t<T>(shape, owned->data(), free_when_done);
}

inline void require_ndim(const py::array& a, int ndim, const char* name) {
    if (a.ndim() != ndim)
        throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(ndim) +
                                    "-D array, got " + std::to_string(a.ndim()) + "-D");
}

template <class B>
py::array_t<int64_t> fps(farr xyz, int64_t k) {
    require_ndim(xyz, 2, "xyz");
    if (xyz.shape(1) != 3) throw std::invalid_argument("xyz: expected shape (N, 3)");
    const int64_t n = xyz.shape(0);
    if (k < 0 || (n == 0 && k > 0)) throw std::invalid_argument("k: out of range");
    py::array_t<int64_t> out(k);
    {
        py::gil_scoped_release nogil;
        B::fps(xyz.data(), n, k, out.mutable_data());
    }
    return out;
}

template <class B>
py::array_t<uint8_t> py_band_cells(farr values, float band) {
    require_ndim(values, 3, "values");
    const int64_t cx = values.shape(0) - 1, cy = values.shape(1) - 1, cz = values.shape(2) - 1;
    if (cx < 1 || cy < 1 || cz < 1) throw std::invalid_argument("values: need >= 2 points per axis");
    py::array_t<uint8_t> out({cx, cy, cz});
    {
        py::gil_scoped_release nogil;
        B::band_cells(values.data(), cx, cy, cz, band, out.mutable_data());
    }
    return out;
}

template <class B>
py::array_t<uint8_t> py_dilate_cells(u8arr cells, int radius) {
    require_ndim(cells, 3, "cells");
    py::array_t<uint8_t> out({cells.shape(0), cells.shape(1), cells.shape(2)});
    {
        py::gil_scoped_release nogil;
        B::dilate_cells(cells.data(), cells.shape(0), cells.shape(1), cells.shape(2), radius,
                     out.mutable_data());
    }
    return out;
}

template <class B>
py::array_t<int64_t> py_refine_points(u8arr cells, py::object coarse_values) {
    require_ndim(cells, 3, "cells");
    const int64_t cx = cells.shape(0), cy = cells.shape(1), cz = cells.shape(2);
    farr cv;
    const float* cvp = nullptr;
    if (!coarse_values.is_none()) {
        cv = farr::ensure(coarse_values);
        if (!cv || cv.ndim() != 3 || cv.shape(0) != cx + 1 || cv.shape(1) != cy + 1 ||
            cv.shape(2) != cz + 1)
            throw std::invalid_argument("coarse_values: expected shape cells.shape + 1");
        cvp = cv.data();
    }
    std::vector<int64_t> idx;
    {
        py::gil_scoped_release nogil;
        idx = B::refine_points(cells.data(), cx, cy, cz, cvp);
    }
    const py::ssize_t n = (py::ssize_t)idx.size();
    return to_array(std::move(idx), {n});
}

// (vertices (V, 3) float32, faces (F, 3) int64, normals (V, 3) float32, values (V,) float32)
inline py::tuple mesh_tuple(holopart::Mesh&& m) {
    const py::ssize_t nv = (py::ssize_t)m.values.size();
    const py::ssize_t nf = (py::ssize_t)m.faces.size() / 3;
    return py::make_tuple(to_array(std::move(m.vertices), {nv, 3}),
                          to_array(std::move(m.faces), {nf, 3}),
                          to_array(std::move(m.normals), {nv, 3}),
                          to_array(std::move(m.values), {nv}));
}

template <class B>
py::tuple py_marching_cubes(farr volume, float level, std::array<double, 3> spacing,
                            std::array<double, 3> origin) {
    require_ndim(volume, 3, "volume");
    holopart::Mesh m;
    {
        py::gil_scoped_release nogil;
        m = B::marching_cubes(volume.data(), volume.shape(0), volume.shape(1), volume.shape(2),
                           level, spacing.data(), origin.data());
    }
    return mesh_tuple(std::move(m));
}

inline py::tuple py_case_table() {
    const holopart::McTable& t = holopart::mc_table();
    py::array_t<int8_t> tris({256, holopart::kMaxTrianglesPerCube * 3});
    py::array_t<uint8_t> ntri(256);
    for (int c = 0; c < 256; ++c) {
        ntri.mutable_data()[c] = t.ntri[c];
        for (int q = 0; q < holopart::kMaxTrianglesPerCube * 3; ++q)
            tris.mutable_data()[c * holopart::kMaxTrianglesPerCube * 3 + q] = t.tris[c][q];
    }
    return py::make_tuple(tris, ntri);
}

template <class B>
void register_kernels(py::module_& m) {
    m.def("farthest_point_sampling", &fps<B>, py::arg("xyz"), py::arg("k"));
    m.def("band_cells", &py_band_cells<B>, py::arg("values"), py::arg("band"));
    m.def("dilate_cells", &py_dilate_cells<B>, py::arg("cells"), py::arg("radius"));
    m.def("refine_points", &py_refine_points<B>, py::arg("cells"),
          py::arg("coarse_values") = py::none());
    m.def("marching_cubes", &py_marching_cubes<B>, py::arg("volume"), py::arg("level"),
          py::arg("spacing"), py::arg("origin"));
    m.def("case_table", &py_case_table, "The generated (tris (256, 36) int8, ntri (256,)) table.");
}

}  // namespace holopart_bind
