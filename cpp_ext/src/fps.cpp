#include <limits>
#include <vector>

#include "holopart/kernels.hpp"

namespace holopart {

void farthest_point_sampling(const float* xyz, int64_t n, int64_t k, int64_t* out) {
    if (k <= 0 || n <= 0) return;
    std::vector<float> mind(static_cast<size_t>(n), std::numeric_limits<float>::infinity());
    int64_t cur = 0;
    out[0] = 0;
    for (int64_t s = 1; s < k; ++s) {
        const float* p = xyz + cur * 3;
        float best = -1.0f;
        int64_t best_i = 0;
        for (int64_t i = 0; i < n; ++i) {
            const float d = hp_sqdist(xyz + i * 3, p);
            float m = mind[i];
            if (d < m) m = d;
            mind[i] = m;
            if (m > best) {  // strict: the lowest index wins ties
                best = m;
                best_i = i;
            }
        }
        cur = best_i;
        out[s] = cur;
    }
}

}  // namespace holopart
