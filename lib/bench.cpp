// bench.cpp: stx_attention_benchmark: median times of the attention kernels on random data,
// on the CPU here (a steady clock) or on the GPU (cuda/bench.cu, device events).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend.h"
#include "model_handle.h"
#include "ops.h"

namespace {

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

stx_status cpu_benchmark(const stx::Layout &L, int32_t B, int32_t T, int32_t Dq, int32_t Dv,
                         int32_t runs, double *fwd_ms, double *fwdbwd_ms) {
    const size_t H = static_cast<size_t>(L.n_head), N = static_cast<size_t>(B) * T;
    std::vector<float> q(N * H * Dq), k(q.size()), v(N * H * Dv), out(v.size()), lse(N * H),
        dout(v.size()), dq(q.size()), dk(q.size()), dv(v.size());
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (std::vector<float> *x : {&q, &k, &v, &dout})
        for (float &e : *x) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            e = static_cast<float>(static_cast<double>(s >> 11) / 9007199254740992.0 - 0.5);
        }
    const double scale = 1.0 / std::sqrt(static_cast<double>(Dq));
    auto forward = [&] {
        stx::ref::attention_forward<float>(out.data(), lse.data(), q.data(), k.data(), v.data(), L,
                                           B, T, Dq, Dv, scale);
    };
    auto backward = [&] {
        std::fill(dq.begin(), dq.end(), 0.0f);
        std::fill(dk.begin(), dk.end(), 0.0f);
        std::fill(dv.begin(), dv.end(), 0.0f);
        stx::ref::attention_backward<float>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(),
                                            k.data(), v.data(), out.data(), lse.data(), L, B, T, Dq,
                                            Dv, scale);
    };
    using clock = std::chrono::steady_clock;
    forward(); // warm-up
    std::vector<double> f, fb;
    for (int32_t r = 0; r < runs; ++r) {
        auto t0 = clock::now();
        forward();
        auto t1 = clock::now();
        backward();
        auto t2 = clock::now();
        f.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        fb.push_back(std::chrono::duration<double, std::milli>(t2 - t0).count());
    }
    *fwd_ms = median(f);
    *fwdbwd_ms = median(fb);
    return STX_OK;
}

} // namespace

extern "C" STX_API stx_status stx_attention_benchmark(const stx_layout *layout, int32_t backend,
                                                      int32_t device, int32_t precision, int32_t B,
                                                      int32_t T, int32_t Dqk, int32_t Dv,
                                                      int32_t runs, double *forward_ms,
                                                      double *forward_backward_ms) {
    const char *fn = "stx_attention_benchmark";
    if (stx::check_layout(layout, fn) != STX_OK) return STX_ERR_INVALID_ARGUMENT;
    if (!forward_ms || !forward_backward_ms)
        return stx::fail(STX_ERR_INVALID_ARGUMENT, "%s: result pointers must not be NULL", fn);
    const stx::Layout &L = *layout->layout;
    if (B < 1 || T < 1 || T > L.n_ctx)
        return stx::fail(STX_ERR_INVALID_ARGUMENT, "%s: B (%d) must be >= 1 and T (%d) in [1, %d]",
                         fn, B, T, L.n_ctx);
    if (Dqk < 1 || Dqk > 4096 || Dv < 1 || Dv > 4096)
        return stx::fail(STX_ERR_INVALID_ARGUMENT, "%s: Dqk (%d) and Dv (%d) must be in [1, 4096]",
                         fn, Dqk, Dv);
    if (runs < 1 || runs > 100000)
        return stx::fail(STX_ERR_INVALID_ARGUMENT, "%s: runs (%d) must be in [1, 100000]", fn,
                         runs);
    if (precision != STX_PRECISION_FP32 && precision != STX_PRECISION_BF16)
        return stx::fail(STX_ERR_INVALID_ARGUMENT, "%s: precision (%d) must be fp32 or bf16", fn,
                         precision);
    return stx::guarded(fn, [&] {
        if (backend == STX_BACKEND_CPU) {
            if (precision != STX_PRECISION_FP32)
                return stx::fail(STX_ERR_INVALID_ARGUMENT, "%s: the CPU backend runs fp32", fn);
            return cpu_benchmark(L, B, T, Dqk, Dv, runs, forward_ms, forward_backward_ms);
        }
        if (backend != STX_BACKEND_CUDA)
            return stx::fail(STX_ERR_INVALID_ARGUMENT, "%s: backend (%d) must be cpu or cuda", fn,
                             backend);
        stx_status st =
            stx::cuda_attention_benchmark(L, device, precision == STX_PRECISION_BF16, B, T, Dqk, Dv,
                                          runs, forward_ms, forward_backward_ms);
        return st == STX_OK ? st : stx::fail_context(st, fn);
    });
}
