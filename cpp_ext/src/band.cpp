#include <algorithm>
#include <cstring>
#include <vector>

#include "holopart/kernels.hpp"
#include "holopart/parallel.hpp"

namespace holopart {

void band_cells(const float* values, int64_t cx, int64_t cy, int64_t cz, float band,
                uint8_t* cells_out) {
    parallel_for(cx, 1, [&](int64_t i, int64_t) {
        for (int64_t j = 0; j < cy; ++j)
            for (int64_t k = 0; k < cz; ++k)
                cells_out[(i * cy + j) * cz + k] = hp_band_cell(values, cy, cz, i, j, k, band) ? 1 : 0;
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
    const int64_t fx = 2 * cx + 1, fy = 2 * cy + 1, fz = 2 * cz + 1;
    const int64_t py = cy + 1, pz = cz + 1;
    std::vector<int64_t> counts(static_cast<size_t>(fx) + 1, 0);
    auto keep = [&](int64_t i, int64_t j, int64_t k) {
        if (coarse_values && !(i & 1) && !(j & 1) && !(k & 1)) {
            const float v = coarse_values[((i >> 1) * py + (j >> 1)) * pz + (k >> 1)];
            if (!hp_is_unknown(v)) return false;
        }
        return hp_fine_point_active(cells, cx, cy, cz, i, j, k);
    };
    // A fine row (i, j) can only hold active points when one of the (at most
    // 2 x 2) coarse rows around it has an active cell: skip the others cheaply.
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
    auto row_active = [&](int64_t i, int64_t j) {
        int64_t il, ih, jl, jh;
        span(i, cx, il, ih);
        span(j, cy, jl, jh);
        for (int64_t a = il; a <= ih; ++a)
            for (int64_t b = jl; b <= jh; ++b)
                if (row_any[a * cy + b]) return true;
        return false;
    };
    parallel_for(fx, 1, [&](int64_t i, int64_t) {
        int64_t cnt = 0;
        for (int64_t j = 0; j < fy; ++j) {
            if (!row_active(i, j)) continue;
            for (int64_t k = 0; k < fz; ++k) cnt += keep(i, j, k) ? 1 : 0;
        }
        counts[i + 1] = cnt;
    });
    for (int64_t i = 0; i < fx; ++i) counts[i + 1] += counts[i];
    std::vector<int64_t> out(static_cast<size_t>(counts[fx]));
    parallel_for(fx, 1, [&](int64_t i, int64_t) {
        if (counts[i + 1] == counts[i]) return;
        int64_t w = counts[i];
        for (int64_t j = 0; j < fy; ++j) {
            if (!row_active(i, j)) continue;
            for (int64_t k = 0; k < fz; ++k)
                if (keep(i, j, k)) out[w++] = (i * fy + j) * fz + k;
        }
    });
    return out;
}

}  // namespace holopart
