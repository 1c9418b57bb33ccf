// Host work of the coarse-to-fine extraction's final level (extract._grow_final
// and extract._Sparse): growth tests, cell lists, the sparse final values and
// the dense final grid. Pure C++, threaded with parallel_for; every result is
// an integer/boolean/index array (or values copied, never computed), so it is
// the numpy reference's bit for bit (holopart_infer/native.py keeps that
// reference as the fallback; tests/native/test_final_level.py compares them).
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "holopart/kernels.hpp"
#include "holopart/parallel.hpp"

namespace holopart {

namespace {

// Values of fine points: the coarse grid's on the coarse lattice (all indices
// even), else the sparse list's; NaN where unknown.
struct FineLookup {
    const SparseFinal& s;
    const int64_t* end() const { return s.idx + s.m; }
    bool on_coarse(int64_t i, int64_t j, int64_t k) const { return ((i | j | k) & 1) == 0; }
    float coarse_at(int64_t i, int64_t j, int64_t k) const {
        return s.coarse[((i >> 1) * s.cy + (j >> 1)) * s.cz + (k >> 1)];
    }
    // First list position >= lin, searching from `from` (<= the answer): a
    // galloping search, as the points of one face row are close together.
    const int64_t* seek(const int64_t* from, int64_t lin) const {
        const int64_t* e = end();
        int64_t step = 1;
        const int64_t* lo = from;
        while (lo + step < e && lo[step] < lin) {
            lo += step;
            step *= 2;
        }
        return std::lower_bound(lo, std::min(lo + step + 1, e), lin);
    }
    float list_at(const int64_t* p, int64_t lin) const {
        return (p != end() && *p == lin) ? s.val[p - s.idx] : std::numeric_limits<float>::quiet_NaN();
    }
};

}  // namespace

void face_sign_changes(const SparseFinal& s, const int64_t* cells, int64_t ncells, int axis,
                       int side, uint8_t* out) {
    // a0 < a1: the face's two axes; along a1 a row's three points ascend in linear index
    const int a0 = axis == 0 ? 1 : 0, a1 = axis == 2 ? 1 : 2;
    const FineLookup f{s};
    parallel_for(ncells, 4096, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
            int64_t base[3] = {2 * cells[3 * c], 2 * cells[3 * c + 1], 2 * cells[3 * c + 2]};
            base[axis] += 2 * side;
            bool any = false, all = true;
            for (int u = 0; u < 3; ++u) {
                const int64_t* pos = s.idx;  // search start for this row
                for (int v = 0; v < 3; ++v) {
                    int64_t p[3] = {base[0], base[1], base[2]};
                    p[a0] += u;
                    p[a1] += v;
                    float x;
                    if (f.on_coarse(p[0], p[1], p[2])) {
                        x = f.coarse_at(p[0], p[1], p[2]);
                    } else {
                        const int64_t lin = (p[0] * s.n + p[1]) * s.n + p[2];
                        pos = pos == s.idx ? std::lower_bound(s.idx, f.end(), lin) : f.seek(pos, lin);
                        x = f.list_at(pos, lin);
                    }
                    const bool in = x > 0.0f;  // NaN: not inside
                    any = any || in;
                    all = all && in;
                }
            }
            out[c] = (any && !all) ? 1 : 0;
        }
    });
}

void near_band(const uint8_t* band, int64_t bx, int64_t by, int64_t bz, const int64_t* cells,
               int64_t ncells, int radius, uint8_t* out) {
    const int64_t r = radius;
    parallel_for(ncells, 4096, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
            const int64_t i = cells[3 * c], j = cells[3 * c + 1], k = cells[3 * c + 2];
            const int64_t il = std::max<int64_t>(i - r, 0), ih = std::min<int64_t>(i + r, bx - 1);
            const int64_t jl = std::max<int64_t>(j - r, 0), jh = std::min<int64_t>(j + r, by - 1);
            const int64_t kl = std::max<int64_t>(k - r, 0), kh = std::min<int64_t>(k + r, bz - 1);
            bool hit = false;
            for (int64_t a = il; a <= ih && !hit; ++a)
                for (int64_t b = jl; b <= jh && !hit; ++b) {
                    const uint8_t* row = band + (a * by + b) * bz;
                    for (int64_t q = kl; q <= kh; ++q)
                        if (row[q]) {
                            hit = true;
                            break;
                        }
                }
            out[c] = hit ? 1 : 0;
        }
    });
}

std::vector<int64_t> unique_cells(const int64_t* cells, int64_t ncells, int64_t sx, int64_t sy,
                                  int64_t sz) {
    std::vector<int64_t> lin(static_cast<size_t>(ncells));
    for (int64_t c = 0; c < ncells; ++c) {
        const int64_t i = cells[3 * c], j = cells[3 * c + 1], k = cells[3 * c + 2];
        if (i < 0 || i >= sx || j < 0 || j >= sy || k < 0 || k >= sz)
            throw std::invalid_argument("cells: index out of the grid");
        lin[c] = (i * sy + j) * sz + k;
    }
    std::sort(lin.begin(), lin.end());
    lin.erase(std::unique(lin.begin(), lin.end()), lin.end());
    std::vector<int64_t> out(lin.size() * 3);
    parallel_for(static_cast<int64_t>(lin.size()), 1 << 14, [&](int64_t a, int64_t b) {
        for (int64_t t = a; t < b; ++t) {
            out[3 * t] = lin[t] / (sy * sz);
            out[3 * t + 1] = (lin[t] / sz) % sy;
            out[3 * t + 2] = lin[t] % sz;
        }
    });
    return out;
}

std::vector<int64_t> corner_points(const int64_t* cells, int64_t ncells, const float* coarse,
                                   int64_t px, int64_t py, int64_t pz) {
    const int64_t nx = 2 * (px - 1) + 1, ny = 2 * (py - 1) + 1, nz = 2 * (pz - 1) + 1;
    // Bucket the 27 corners of each cell by fine x index (disjoint, ordered
    // ranges of linear index), then sort and deduplicate every bucket on its own.
    std::vector<int64_t> start(static_cast<size_t>(nx) + 1, 0);
    for (int64_t c = 0; c < ncells; ++c) {
        const int64_t i = cells[3 * c], j = cells[3 * c + 1], k = cells[3 * c + 2];
        if (i < 0 || i >= px - 1 || j < 0 || j >= py - 1 || k < 0 || k >= pz - 1)
            throw std::invalid_argument("cells: index out of the grid");
        for (int d = 0; d < 3; ++d) start[2 * i + d + 1] += 9;
    }
    for (int64_t x = 0; x < nx; ++x) start[x + 1] += start[x];
    std::vector<int64_t> buf(static_cast<size_t>(start[nx]));
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t c = 0; c < ncells; ++c) {
        const int64_t i = cells[3 * c], j = cells[3 * c + 1], k = cells[3 * c + 2];
        for (int d = 0; d < 3; ++d) {
            const int64_t fx = 2 * i + d;
            int64_t w = fill[fx];
            for (int e = 0; e < 3; ++e)
                for (int g = 0; g < 3; ++g) buf[w++] = (fx * ny + 2 * j + e) * nz + 2 * k + g;
            fill[fx] = w;
        }
    }
    std::vector<int64_t> kept(static_cast<size_t>(nx) + 1, 0);
    parallel_for(nx, 1, [&](int64_t x, int64_t) {
        int64_t* b = buf.data() + start[x];
        int64_t* e = buf.data() + start[x + 1];
        if (b == e) return;
        std::sort(b, e);
        e = std::unique(b, e);
        int64_t* w = b;
        for (int64_t* p = b; p != e; ++p) {
            const int64_t lin = *p;
            const int64_t i = lin / (ny * nz), j = (lin / nz) % ny, k = lin % nz;
            if (((i | j | k) & 1) == 0 &&
                !hp_is_unknown(coarse[((i >> 1) * py + (j >> 1)) * pz + (k >> 1)]))
                continue;  // a known coarse point
            *w++ = lin;
        }
        kept[x + 1] = w - b;
    });
    for (int64_t x = 0; x < nx; ++x) kept[x + 1] += kept[x];
    std::vector<int64_t> out(static_cast<size_t>(kept[nx]));
    parallel_for(nx, 16, [&](int64_t x0, int64_t x1) {
        for (int64_t x = x0; x < x1; ++x)
            std::copy(buf.data() + start[x], buf.data() + start[x] + (kept[x + 1] - kept[x]),
                      out.data() + kept[x]);
    });
    return out;
}

void sorted_member(const int64_t* sorted, int64_t m, const int64_t* q, int64_t nq, uint8_t* out) {
    parallel_for(nq, 1 << 14, [&](int64_t a, int64_t b) {
        const int64_t* end = sorted + m;
        for (int64_t t = a; t < b; ++t) {
            const int64_t* p = std::lower_bound(sorted, end, q[t]);
            out[t] = (p != end && *p == q[t]) ? 1 : 0;
        }
    });
}

void sparse_merge(const int64_t* idx, const float* val, int64_t m, const int64_t* add_idx,
                  const float* add_val, int64_t q, int64_t* out_idx, float* out_val) {
    int64_t a = 0, b = 0, w = 0;
    while (a < m && b < q) {
        if (add_idx[b] < idx[a]) {  // equal never happens (new points are not known)
            out_idx[w] = add_idx[b];
            out_val[w++] = add_val[b++];
        } else {
            out_idx[w] = idx[a];
            out_val[w++] = val[a++];
        }
    }
    for (; a < m; ++a, ++w) out_idx[w] = idx[a], out_val[w] = val[a];
    for (; b < q; ++b, ++w) out_idx[w] = add_idx[b], out_val[w] = add_val[b];
}

void sparse_grid(const SparseFinal& s, float* out) {
    const int64_t n = s.n;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    parallel_for(n, 1, [&](int64_t i, int64_t) {
        float* slab = out + i * n * n;
        std::fill(slab, slab + n * n, nan);
        if (i & 1) return;
        for (int64_t j = 0; j < n; j += 2) {
            const float* src = s.coarse + ((i >> 1) * s.cy + (j >> 1)) * s.cz;
            float* row = slab + j * n;
            for (int64_t k = 0; k < n; k += 2) row[k] = src[k >> 1];
        }
    });
    parallel_for(s.m, 1 << 16, [&](int64_t a, int64_t b) {
        for (int64_t t = a; t < b; ++t) out[s.idx[t]] = s.val[t];
    });
}

}  // namespace holopart
