// Generalized winding number of query points with respect to a triangle soup
// (Jacobson et al. 2013): the sum of the triangles' signed solid angles over
// 4 pi, each solid angle by van Oosterom and Strackee's formula. 1 inside a
// closed, outward-oriented surface, 0 outside, in between near holes: the
// inside test of open surfaces (a visible patch closed into a solid).
#include <cmath>

#include "holopart/kernels.hpp"
#include "holopart/parallel.hpp"

namespace holopart {

void winding_numbers(const double* points, int64_t np, const double* tri, int64_t nf, double* out) {
    constexpr double kInv2Pi = 0.15915494309189533577;  // 2 atan2(...) / (4 pi)
    parallel_for(np, 64, [&](int64_t begin, int64_t end) {
        for (int64_t q = begin; q < end; ++q) {
            const double px = points[3 * q], py = points[3 * q + 1], pz = points[3 * q + 2];
            double sum = 0.0;
            for (int64_t t = 0; t < nf; ++t) {
                const double* T = tri + 9 * t;
                const double ax = T[0] - px, ay = T[1] - py, az = T[2] - pz;
                const double bx = T[3] - px, by = T[4] - py, bz = T[5] - pz;
                const double cx = T[6] - px, cy = T[7] - py, cz = T[8] - pz;
                const double la = std::sqrt(ax * ax + ay * ay + az * az);
                const double lb = std::sqrt(bx * bx + by * by + bz * bz);
                const double lc = std::sqrt(cx * cx + cy * cy + cz * cz);
                const double det = ax * (by * cz - bz * cy) - ay * (bx * cz - bz * cx) + az * (bx * cy - by * cx);
                const double den = la * lb * lc + (ax * bx + ay * by + az * bz) * lc +
                                   (bx * cx + by * cy + bz * cz) * la + (cx * ax + cy * ay + cz * az) * lb;
                sum += std::atan2(det, den);
            }
            out[q] = sum * kInv2Pi;
        }
    });
}

}  // namespace holopart
