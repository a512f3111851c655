// context.cuh: what every CUDA op file shares: the context (device, stream, cuBLAS handle,
// the first error, byte counts, cached device layouts, scratch), the checks that turn CUDA
// and cuBLAS failures into a recorded status with the failing statement, file and line
// (never an abort), and launch helpers.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda_ops.h"
#include "error.h"

namespace stx {
namespace cuda {

struct DeviceLayout; // attention.cu: a Layout's CSR lists and predicates on the device

// A cuBLASLt product set up once per shape and operand alignment (linear.cu): its
// descriptors and the algorithm the heuristic chose for them. usable is false where the
// heuristic found none (or the call was refused): the caller then takes the cuBLAS path.
struct LtPlan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo = {};
    size_t workspace = 0; // bytes the algorithm needs
    bool usable = false;
    LtPlan() = default;
    LtPlan(const LtPlan &) = delete;
    LtPlan &operator=(const LtPlan &) = delete;
    ~LtPlan() {
        if (d) cublasLtMatrixLayoutDestroy(d);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (op) cublasLtMatmulDescDestroy(op);
    }
};

struct Context {
    int32_t device = 0;
    bool bf16 = false;
    bool wgmma_off = false;  // CudaOps::use_hopper_kernels(false): the portable kernels only
    int8_t wgmma_built = -1; // wgmma_usable's answer for the device: -1 not asked yet
    cudaStream_t stream = nullptr;
    cublasHandle_t cublas = nullptr;
    // cuBLASLt for the products with a bias epilogue; its workspace is allocated once (at the
    // first such product, where a memory limit leaves room; none otherwise) and its plans are
    // kept, so a product allocates nothing.
    cublasLtHandle_t cublaslt = nullptr;
    DeviceBuffer<uint8_t> lt_workspace;
    bool lt_workspace_tried = false;
    std::map<std::array<int64_t, 9>, LtPlan> lt_plans; // by linear.cu's plan key
    int64_t bias_epilogue_products = 0;                // CudaOps::bias_epilogue_products
    stx_status err = STX_OK;
    int64_t in_use = 0, peak = 0, limit = 0;                   // limit 0: none
    std::map<uint64_t, std::shared_ptr<DeviceLayout>> layouts; // by Layout::id
    DeviceBuffer<float> scratch;                               // attention passes, partial sums
    DeviceBuffer<uint8_t> cast_scratch;                        // bf16 copies of matrix operands
    DeviceBuffer<double> reduce_scratch;
    DeviceBuffer<int32_t> index_scratch; // the embedding backward's rows sorted by token

    // The model's parameter buffer (CudaOps::set_parameters) and its bf16 weight copies: in
    // bf16 mode a GEMM reads a weight matrix's copy, converted once per parameter change
    // instead of once per product. Every write to the parameters goes through an op that calls
    // parameters_written, which makes all copies stale.
    struct WeightCopy {
        DeviceBuffer<__nv_bfloat16> data;
        uint64_t version = 0; // params_version when converted; 0: never
    };
    const float *params = nullptr;
    size_t params_n = 0;
    uint64_t params_version = 1;
    std::map<std::pair<size_t, int64_t>, WeightCopy> weight_copies; // by (offset, elements)

    // Activation operand copies and pending zeros. In bf16 mode every GEMM and attention
    // operand that is an fp32 activation was converted to bf16 at each use, and the same
    // unchanged buffer is used several times a step (h1 by the q, k, v products forward and
    // backward; q, k, v by attention forward and backward; att, h2, g twice each): a bf16 copy
    // kept per source range turns those repeats into one conversion. Separately, the backward
    // zeroes about a dozen buffers a layer right before an op that adds into them; a zero is
    // only recorded (pending) and the op that adds into the whole buffer writes it instead.
    //
    // The model loop reuses its buffers across layers (with recomputation one set for all of
    // them), so a copy is valid only until its source is next written, not for the life of an
    // allocation: EVERY op declares what it reads and writes through one OpAccess (below),
    // which materializes the pending zeros it would read or partly write and, when the op is
    // done, drops the copies over everything it wrote. Work outside the ops that is ordered
    // on the stream (native_stream()) gets all zeros materialized and all copies dropped first.
    // STX_CUDA_NO_OPERAND_CACHE=1 (or CudaOps::use_operand_cache(false)) turns both off: the
    // results are the same bits either way, which the CUDA tests check.
    struct Bf16Copy {
        DeviceBuffer<__nv_bfloat16> data;
        size_t at = 0; // where the copy starts in data (its address modulo 256 bytes is fixed)
        bool valid = false;
        __nv_bfloat16 *ptr() { return data.data() + at; }
    };
    bool operand_cache_off = false;
    // By (source address, elements, address of the copy modulo 256 bytes): cuBLAS picks its
    // kernel partly by operand alignment, so a copy sits where the scratch copy it replaces
    // would have, modulo 256 bytes (usually the same phase for every use of a source).
    std::map<std::tuple<uintptr_t, int64_t, uint32_t>, Bf16Copy> bf16_copies;
    size_t bf16_copy_max_bytes = 0;                          // the largest source range
    std::vector<std::pair<uintptr_t, size_t>> pending_zeros; // byte ranges that read as zero

    ~Context();
    bool ok() const { return err == STX_OK; }
    // [p, p + bytes) was (or is being) written: the bf16 copies over it are stale and, where
    // it meets the parameters, so are the weight copies.
    void written(const void *p, size_t bytes);
    // The pending zeros meeting [p, p + bytes) are written to memory now.
    void materialize(const void *p, size_t bytes);
    // Every pending zero materialized and every bf16 copy stale: for work outside the ops.
    void settle_all();
    // A device buffer at [p, p + bytes) is released: its copies and pending zeros go.
    void forget(const void *p, size_t bytes);
    // CudaOps::zero: [p, p + bytes) reads as zero from now (memset now or recorded pending).
    void zero(void *p, size_t bytes);
    // The bf16 form of src[0, n) for an op that has declared src as an input: its copy
    // (converted now unless valid), placed like `fallback` modulo 256 bytes; with the cache off
    // or no room for a copy, src converted into fallback (scratch the caller reserved for it).
    // nullptr when the context has failed.
    const __nv_bfloat16 *bf16_operand(const float *src, int64_t n, __nv_bfloat16 *fallback);
    // The copy of src[0, n) at phase `phase_bytes` (created if there is room and `create`),
    // or nullptr.
    Bf16Copy *bf16_copy(const float *src, int64_t n, uint32_t phase_bytes, bool create);
    // Records the first failure; returns whether the call succeeded.
    bool check(cudaError_t e, const char *what, const char *file, int line);
    bool check_blas(cublasStatus_t s, const char *what, const char *file, int line);
    // Marks the weight copies stale when [p, p + n) meets the parameter buffer.
    void parameters_written(const float *p, size_t n) {
        const uintptr_t a = reinterpret_cast<uintptr_t>(p),
                        base = reinterpret_cast<uintptr_t>(params);
        if (params && n > 0 && a < base + params_n * sizeof(float) && base < a + n * sizeof(float))
            ++params_version;
    }
    // Grows one of the Context's scratch buffers to at least n elements; false if that failed.
    template <typename T> bool reserve(DeviceBuffer<T> &b, size_t n) {
        if (b.size() >= n) return true;
        b.allocate_for_context(this, n);
        return b.size() >= n;
    }
};

// What one op reads and writes, declared before it runs: its inputs; `out`, every output it
// writes, partly writes or adds into as memory holds it; `acc`, only outputs it adds into AND
// whose fresh() it honors. The constructor materializes every pending zero the op would read
// or partly write. An acc output that is exactly one pending zero and meets none of the op's
// other ranges is `fresh`: the op must write it (as if adding to zeros: 0.0f + x, or cuBLAS
// beta 0) without reading it; an op that ignored fresh() would read a stale buffer. The destructor
// marks every output written (bf16 copies over them dropped) and only then validates the copies the
// op produced itself (produce()). Every CudaOps method that touches device memory makes one, first.
struct Span {
    const void *p = nullptr;
    size_t bytes = 0;
    Span() = default;
    Span(const float *q, int64_t n) : p(q), bytes(q && n > 0 ? static_cast<size_t>(n) * 4 : 0) {}
    Span(const uint8_t *q, int64_t n) : p(q), bytes(q && n > 0 ? static_cast<size_t>(n) : 0) {}
};
class OpAccess {
public:
    OpAccess(Context *ctx, const std::vector<Span> &in, const std::vector<Span> &out,
             const std::vector<Span> &acc = {});
    ~OpAccess();
    OpAccess(const OpAccess &) = delete;
    OpAccess &operator=(const OpAccess &) = delete;
    // Whether acc output i is fresh (write it, do not read it).
    bool fresh(size_t i) const { return i < fresh_.size() && fresh_[i]; }
    // For an op that writes dst[0, n) in full: a bf16 copy (at phase 0) for it to write the
    // bf16 rounding of each element it stores there, valid once the op is done; nullptr
    // (write none) outside bf16 mode, with the cache off or no room.
    __nv_bfloat16 *produce(const float *dst, int64_t n);

private:
    Context *ctx_;
    std::vector<Span> written_;
    std::vector<bool> fresh_;
    std::vector<std::tuple<uintptr_t, int64_t, uint32_t>> produced_; // keys of bf16_copies
};

#define STX_CUDA_CHECK(ctx, call)   (ctx)->check((call), #call, __FILE__, __LINE__)
#define STX_BLAS_CHECK(ctx, call)   (ctx)->check_blas((call), #call, __FILE__, __LINE__)
#define STX_LAUNCH_CHECK(ctx, what) (ctx)->check(cudaGetLastError(), (what), __FILE__, __LINE__)

inline unsigned blocks_for(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return static_cast<unsigned>(b < 65535 * 32 ? (b < 1 ? 1 : b) : 65535 * 32);
}

// Rounds to bf16 and back: the value a bf16 operand carries.
__device__ __forceinline__ float round_bf16(float x) {
    return __bfloat162float(__float2bfloat16(x));
}

// Sums a warp's values; every lane gets the total.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// dst = bf16(src) (round to nearest even) on `stream`: the one conversion kernel the
// weights, activations, attention operands and bf16 gradient all-reduce share (linear.cu).
// Launch errors are left to the caller's check.
void launch_to_bf16(cudaStream_t stream, __nv_bfloat16 *dst, const float *src, int64_t n);

// Deterministic column sums: out[c] += sum_n x[n, c] (N rows of C), in a fixed order.
void column_sum_add(Context *ctx, float *out, const float *x, int64_t N, int32_t C);
// The same sums (of the fp32 x, in a fixed order) made in the pass that writes dst = bf16(x)
// (rounded as launch_to_bf16): one read of x where a bf16 copy and the column sums of it are
// both needed (the bias gradient of a bf16 linear backward).
void to_bf16_column_sum_add(Context *ctx, __nv_bfloat16 *dst, float *out, const float *x, int64_t N,
                            int32_t C);

} // namespace cuda
} // namespace stx
