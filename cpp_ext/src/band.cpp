#include <algorithm>
#include <cstring>
#include <vector>

#include "holopart/kernels.hpp"
#include "holopart/parallel.hpp"

namespace holopart {

void band_cells(const float* values, int64_t cx, int64_t cy, int64_t cz, float band,
                uint8_t* cells_out) {
    // hp_band_cell per cell, with each point's class computed once (bit 0: known
    // and |v| < band, bit 1: known and > 0, bit 2: known and <= 0) and each cell
    // ORing its eight corners' classes: a near corner makes the cell a band cell
    // whatever the others are, so the OR gives hp_band_cell's answer. Each worker
    // takes a run of cell slabs and keeps two point slabs of classes (i, i + 1)
    // in a small rolling buffer.
    const int64_t py = cy + 1, pz = cz + 1, slab = py * pz;
    auto classify = [&](int64_t i, uint8_t* c) {
        const float* v = values + i * slab;
        for (int64_t t = 0; t < slab; ++t) {
            const float x = v[t];
            c[t] = hp_is_unknown(x) ? 0
                 : static_cast<uint8_t>((x < band && x > -band ? 1 : 0) | (x > 0.0f ? 2 : 4));
        }
    };
    parallel_for(cx, 8, [&](int64_t i0, int64_t i1) {
        std::vector<uint8_t> buf(static_cast<size_t>(2 * slab));
        uint8_t* lo = buf.data();
        uint8_t* hi = buf.data() + slab;
        classify(i0, lo);
        for (int64_t i = i0; i < i1; ++i) {
            classify(i + 1, hi);
            for (int64_t j = 0; j < cy; ++j) {
                const uint8_t* a = lo + j * pz;
                const uint8_t* b = a + pz;
                const uint8_t* c = hi + j * pz;
                const uint8_t* d = c + pz;
                uint8_t* out = cells_out + (i * cy + j) * cz;
                for (int64_t k = 0; k < cz; ++k) {
                    const unsigned m = a[k] | a[k + 1] | b[k] | b[k + 1] | c[k] | c[k + 1] | d[k] | d[k + 1];
                    out[k] = ((m & 1u) | ((m >> 1) & (m >> 2) & 1u)) ? 1 : 0;
                }
            }
            std::swap(lo, hi);
        }
    });
}

namespace {

// out[x] = max(in[x - r .. x + r]) along one axis given by (count, stride),
// over all lines of the volume.
void dilate_axis(const uint8_t* in, uint8_t* out, int64_t cx, int64_t cy, int64_t cz, int axis,
                 int r) {
    const int64_t dims[3] = {cx, cy, cz};
    const int64_t strides[3] = {cy * cz, cz, 1};
    const int64_t len = dims[axis], stride = strides[axis];
    const int a1 = axis == 0 ? 1 : 0, a2 = axis == 2 ? 1 : 2;
    const int64_t lines = dims[a1] * dims[a2];
    parallel_for(lines, 1024, [&](int64_t l0, int64_t l1) {
      for (int64_t l = l0; l < l1; ++l) {
        const int64_t u = l / dims[a2], v = l % dims[a2];
        const int64_t base = u * strides[a1] + v * strides[a2];
        // Distance-to-last-set sweep: forward then backward.
        int64_t last = -(int64_t)r - 1;
        for (int64_t x = 0; x < len; ++x) {
            if (in[base + x * stride]) last = x;
            out[base + x * stride] = (x - last <= r) ? 1 : 0;
        }
        last = len + r + 1;
        for (int64_t x = len - 1; x >= 0; --x) {
            if (in[base + x * stride]) last = x;
            if (last - x <= r) out[base + x * stride] = 1;
        }
      }
    });
}

}  // namespace

void dilate_cells(const uint8_t* cells, int64_t cx, int64_t cy, int64_t cz, int radius,
                  uint8_t* out) {
    const size_t n = static_cast<size_t>(cx * cy * cz);
    if (radius <= 0) {
        std::memcpy(out, cells, n);
        return;
    }
    std::vector<uint8_t> tmp(n);
    dilate_axis(cells, out, cx, cy, cz, 0, radius);
    dilate_axis(out, tmp.data(), cx, cy, cz, 1, radius);
    dilate_axis(tmp.data(), out, cx, cy, cz, 2, radius);
}

std::vector<int64_t> refine_points(const uint8_t* cells, int64_t cx, int64_t cy, int64_t cz,
                                   const float* coarse_values) {
    // hp_fine_point_active for every fine point, row by row: fine point (i, j, k)
    // is active when a cell of the (at most 2 x 2 x 2) coarse cells around it is.
    // A fine row (i, j) ORs its (at most 2 x 2) coarse rows of cells into one
    // row R; then cell c of R makes fine points 2c .. 2c + 2 active. Each fine
    // slab i collects its points (ascending) on its own; the slabs are then
    // concatenated in order.
    const int64_t fx = 2 * cx + 1, fy = 2 * cy + 1, fz = 2 * cz + 1;
    const int64_t py = cy + 1, pz = cz + 1;
    std::vector<uint8_t> row_any(static_cast<size_t>(cx * cy), 0);
    parallel_for(cx * cy, 1024, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            const uint8_t* c = cells + r * cz;
            row_any[r] = std::any_of(c, c + cz, [](uint8_t x) { return x != 0; }) ? 1 : 0;
        }
    });
    auto span = [](int64_t f, int64_t n, int64_t& lo, int64_t& hi) {
        lo = std::max<int64_t>((f - 1) >> 1, 0);
        hi = std::min<int64_t>(f >> 1, n - 1);
    };
    std::vector<std::vector<int64_t>> slabs(static_cast<size_t>(fx));
    parallel_for(fx, 1, [&](int64_t i, int64_t) {
        int64_t il, ih;
        span(i, cx, il, ih);
        std::vector<uint8_t> row(static_cast<size_t>(cz));
        std::vector<int64_t>& out = slabs[i];
        for (int64_t j = 0; j < fy; ++j) {
            int64_t jl, jh;
            span(j, cy, jl, jh);
            bool any = false;
            for (int64_t a = il; a <= ih && !any; ++a)
                for (int64_t b = jl; b <= jh; ++b)
                    if (row_any[a * cy + b]) {
                        any = true;
                        break;
                    }
            if (!any) continue;
            std::fill(row.begin(), row.end(), 0);
            for (int64_t a = il; a <= ih; ++a)
                for (int64_t b = jl; b <= jh; ++b) {
                    if (!row_any[a * cy + b]) continue;
                    const uint8_t* c = cells + (a * cy + b) * cz;
                    for (int64_t k = 0; k < cz; ++k) row[k] |= c[k];
                }
            const bool even_row = !(i & 1) && !(j & 1) && coarse_values;
            const float* cv = even_row ? coarse_values + ((i >> 1) * py + (j >> 1)) * pz : nullptr;
            const int64_t base = (i * fy + j) * fz;
            int64_t next = 0;  // first fine k not emitted yet
            for (int64_t c = 0; c < cz; ++c) {
                if (!row[c]) continue;
                for (int64_t k = std::max(2 * c, next); k <= 2 * c + 2; ++k) {
                    if (cv && !(k & 1) && !hp_is_unknown(cv[k >> 1])) continue;  // known coarse point
                    out.push_back(base + k);
                }
                next = 2 * c + 3;
            }
        }
    });
    std::vector<int64_t> start(static_cast<size_t>(fx) + 1, 0);
    for (int64_t i = 0; i < fx; ++i) start[i + 1] = start[i] + static_cast<int64_t>(slabs[i].size());
    std::vector<int64_t> out(static_cast<size_t>(start[fx]));
    parallel_for(fx, 1, [&](int64_t i, int64_t) {
        std::copy(slabs[i].begin(), slabs[i].end(), out.begin() + start[i]);
        std::vector<int64_t>().swap(slabs[i]);
    });
    return out;
}

}  // namespace holopart
