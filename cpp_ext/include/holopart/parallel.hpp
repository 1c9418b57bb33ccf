// Minimal fork-join helpers on std::thread. Chosen over OpenMP because the
// kernels run on shared, often oversubscribed CI/service machines: joins block
// (no spinning barrier stealing the cores the working threads need), and the
// module carries no OpenMP runtime into the host process.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace holopart {

// Worker count: HOLOPART_NUM_THREADS, else OMP_NUM_THREADS, else the number of
// hardware threads.
inline int num_threads() {
    for (const char* var : {"HOLOPART_NUM_THREADS", "OMP_NUM_THREADS"}) {
        if (const char* s = std::getenv(var)) {
            const int n = std::atoi(s);
            if (n > 0) return n;
        }
    }
    const unsigned hw = std::thread::hardware_concurrency();
    return hw ? static_cast<int>(hw) : 1;
}

// Runs body(worker) on `workers` workers (the caller is worker 0) and rethrows
// the first exception.
template <class F>
void parallel_workers(int workers, F&& body) {
    if (workers <= 1) {
        body(0);
        return;
    }
    std::exception_ptr error;
    std::mutex mu;
    auto run = [&](int w) {
        try {
            body(w);
        } catch (...) {
            std::lock_guard<std::mutex> lock(mu);
            if (!error) error = std::current_exception();
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(static_cast<size_t>(workers - 1));
    for (int w = 1; w < workers; ++w) threads.emplace_back(run, w);
    run(0);
    for (auto& t : threads) t.join();
    if (error) std::rethrow_exception(error);
}

// fn(begin, end) over [0, n) in blocks of `grain` items taken dynamically.
// Small ranges run inline on the caller.
template <class F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(grain, 1);
    const int64_t blocks = (n + grain - 1) / grain;
    const int workers = static_cast<int>(std::min<int64_t>(num_threads(), blocks));
    std::atomic<int64_t> next{0};
    parallel_workers(workers, [&](int) {
        for (int64_t b; (b = next.fetch_add(1)) < blocks;) fn(b * grain, std::min(n, (b + 1) * grain));
    });
}

}  // namespace holopart
