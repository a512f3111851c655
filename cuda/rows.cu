// rows.cu: the row-wise ops: LayerNorm, embedding and softmax cross-entropy, forward and
// backward, plus the deterministic column sums their parameter gradients need (partial sums
// over fixed row chunks, then the chunks in order: no atomics, the same bits every run), also
// fused with a bf16 conversion for the bias gradient of a bf16 linear.
#include <vector>

#include "context.cuh"

namespace stx {
namespace cuda {
namespace {

const int kRowsPerBlock = 8; // one warp per row, 8 warps a block

// out16 (unless null): the bf16 rounding of each value stored in out, the operand copy of
// the next products (context.cuh), the same bits the conversion kernel would give.
__global__ void layernorm_forward_kernel(float *out, __nv_bfloat16 *out16, float *mean, float *rstd,
                                         const float *inp, const float *g, const float *b,
                                         int64_t N, int32_t C, float eps) {
    const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.y;
    if (row >= N) return;
    const float *x = inp + row * C;
    float sum = 0.0f;
    for (int32_t c = threadIdx.x; c < C; c += 32) sum += x[c];
    const float mu = warp_sum(sum) / static_cast<float>(C);
    float sq = 0.0f;
    for (int32_t c = threadIdx.x; c < C; c += 32) sq += (x[c] - mu) * (x[c] - mu);
    const float var = warp_sum(sq) / static_cast<float>(C);
    const float rs = 1.0f / sqrtf(var + eps);
    float *y = out + row * C;
    for (int32_t c = threadIdx.x; c < C; c += 32) {
        const float v = (x[c] - mu) * rs * g[c] + b[c];
        y[c] = v;
        if (out16) out16[row * C + c] = __float2bfloat16(v);
    }
    if (threadIdx.x == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

// fresh: dinp is a pending zero (context.cuh): not read, 0.0f instead.
__global__ void layernorm_backward_input_kernel(float *dinp, const float *dout, const float *inp,
                                                const float *g, const float *mean,
                                                const float *rstd, int64_t N, int32_t C,
                                                bool fresh) {
    const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.y;
    if (row >= N) return;
    const float *x = inp + row * C, *dy = dout + row * C;
    const float mu = mean[row], rs = rstd[row];
    float s1 = 0.0f, s2 = 0.0f;
    for (int32_t c = threadIdx.x; c < C; c += 32) {
        const float xhat = (x[c] - mu) * rs, dxhat = dy[c] * g[c];
        s1 += dxhat;
        s2 += dxhat * xhat;
    }
    const float mean_dxhat = warp_sum(s1) / static_cast<float>(C);
    const float mean_dxhat_xhat = warp_sum(s2) / static_cast<float>(C);
    float *dx = dinp + row * C;
    for (int32_t c = threadIdx.x; c < C; c += 32) {
        const float xhat = (x[c] - mu) * rs, dxhat = dy[c] * g[c];
        dx[c] = (fresh ? 0.0f : dx[c]) + rs * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
    }
}

// partial[k][c] over rows [k * chunk, (k+1) * chunk): sums of dout*xhat (g) and dout (b);
// with inp == nullptr only the plain column sums of x (= dout) into partial_b.
__global__ void column_partial_kernel(float *partial_g, float *partial_b, const float *dout,
                                      const float *inp, const float *mean, const float *rstd,
                                      int64_t N, int32_t C, int64_t chunk) {
    const int32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const int64_t k = blockIdx.y, begin = k * chunk;
    const int64_t end = begin + chunk < N ? begin + chunk : N;
    float sg = 0.0f, sb = 0.0f;
    for (int64_t n = begin; n < end; ++n) {
        const float d = dout[n * C + c];
        sb += d;
        if (inp) sg += d * ((inp[n * C + c] - mean[n]) * rstd[n]);
    }
    partial_b[k * C + c] = sb;
    if (inp) partial_g[k * C + c] = sg;
}

// A CTA of the fused conversion: 128 columns (4 consecutive ones a thread) by 8 rows at a time.
const int kCastColThreads = 32, kCastRowThreads = 8;

// dst = bf16(x) and partial[k][c] = the sum of the fp32 x[n, c] over rows [k * chunk,
// (k+1) * chunk): each thread adds its rows (threadIdx.y, + 8, ...) in order, then one thread
// per column adds the 8 row groups in order, so the sums never depend on scheduling. kVec:
// x 16-byte and dst 8-byte aligned and C % 4 == 0 (a float4 in, four bf16 out); otherwise one
// element at a time. Rounding as to_bf16_kernel (nearest even).
template <bool kVec>
__global__ void __launch_bounds__(kCastColThreads *kCastRowThreads)
    to_bf16_column_partial_kernel(__nv_bfloat16 *__restrict__ dst, float *__restrict__ partial,
                                  const float *__restrict__ x, int64_t N, int32_t C,
                                  int64_t chunk) {
    const int32_t c = (blockIdx.x * kCastColThreads + threadIdx.x) * 4;
    const int64_t begin = blockIdx.y * chunk;
    const int64_t end = begin + chunk < N ? begin + chunk : N;
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (c < C) {
#pragma unroll 4
        for (int64_t n = begin + threadIdx.y; n < end; n += kCastRowThreads) {
            const int64_t i = n * C + c;
            if (kVec) {
                const float4 v = *reinterpret_cast<const float4 *>(x + i);
                s[0] += v.x;
                s[1] += v.y;
                s[2] += v.z;
                s[3] += v.w;
                const __nv_bfloat162 h[2] = {__floats2bfloat162_rn(v.x, v.y),
                                             __floats2bfloat162_rn(v.z, v.w)};
                *reinterpret_cast<uint2 *>(dst + i) = *reinterpret_cast<const uint2 *>(h);
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (c + j < C) {
                        const float v = x[i + j];
                        s[j] += v;
                        dst[i + j] = __float2bfloat16(v);
                    }
            }
        }
    }
    // part[r][t] (as floats: r * 128 + column t of the CTA): row group r's sum of column t.
    __shared__ float4 part[kCastRowThreads][kCastColThreads];
    part[threadIdx.y][threadIdx.x] = make_float4(s[0], s[1], s[2], s[3]);
    __syncthreads();
    const int t = threadIdx.y * kCastColThreads + threadIdx.x;
    const int32_t col = blockIdx.x * kCastColThreads * 4 + t;
    if (t < kCastColThreads * 4 && col < C) {
        const float *p = reinterpret_cast<const float *>(&part[0][0]);
        float sum = 0.0f;
        for (int r = 0; r < kCastRowThreads; ++r) sum += p[r * kCastColThreads * 4 + t];
        partial[blockIdx.y * static_cast<int64_t>(C) + col] = sum;
    }
}

__global__ void column_final_kernel(float *out, const float *partial, int32_t chunks, int32_t C) {
    const int32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int32_t k = 0; k < chunks; ++k) s += partial[static_cast<int64_t>(k) * C + c];
    out[c] += s;
}

struct PosTables {
    const float *table[STX_MAX_POS_AXES];
    int32_t shape[STX_MAX_POS_AXES];
    int32_t n_axes;
};

// Row-major coordinate of position p along axis a of the shape.
__device__ __forceinline__ int64_t axis_coord(int64_t p, const int32_t *shape, int32_t n_axes,
                                              int32_t a) {
    int64_t stride = 1;
    for (int32_t i = n_axes - 1; i > a; --i) stride *= shape[i];
    return (p / stride) % shape[a];
}

__global__ void embedding_forward_kernel(float *out, const uint8_t *tokens, const float *tok,
                                         const float *start, PosTables pos, int32_t B, int32_t T,
                                         int32_t C) {
    const int64_t n = static_cast<int64_t>(B) * T * C;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int32_t c = static_cast<int32_t>(i % C);
        const int64_t row = i / C, t = row % T;
        if (t == 0) {
            out[i] = start[c];
            continue;
        }
        float v = tok[static_cast<int64_t>(tokens[row - 1]) * C + c];
        for (int32_t a = 0; a < pos.n_axes; ++a)
            v += pos.table[a][axis_coord(t - 1, pos.shape, pos.n_axes, a) * C + c];
        out[i] = v;
    }
}

// The embedding backward adds each row of dout into its destinations (the start vector, the
// token's row, one row of each position table) in row order, a destination at a time: every
// destination element gets the same additions in the same order as one walk over the rows
// would give (no atomics, the same bits every run), while all of them run in parallel.

// The rows (t >= 1) whose input token is v, in row order, for every v: a stable counting sort
// over chunks of kSortChunk rows. counts[v][k] = rows of token v in chunk k; its exclusive scan
// in (v, k) order is where chunk k's rows of token v start; each chunk then writes its rows
// of v from there in row order. That is the list one walk over all rows would give.
const int kSortChunk = 256; // rows a chunk, and threads a block: thread v handles token v

// Chunk k's input tokens into shared memory, 256 (no token) where a row has none (t = 0) or
// lies past the end.
__device__ __forceinline__ void load_chunk_tokens(int32_t *chunk_tok, const uint8_t *tokens,
                                                  int64_t N, int32_t T) {
    const int64_t r = blockIdx.x * static_cast<int64_t>(kSortChunk) + threadIdx.x;
    chunk_tok[threadIdx.x] = r < N && r % T != 0 ? tokens[r - 1] : 256;
    __syncthreads();
}

__global__ void token_count_kernel(int32_t *counts, const uint8_t *tokens, int64_t N, int32_t T) {
    __shared__ int32_t chunk_tok[kSortChunk];
    load_chunk_tokens(chunk_tok, tokens, N, T);
    const int32_t v = threadIdx.x;
    int32_t n = 0;
    for (int32_t i = 0; i < kSortChunk; ++i) n += chunk_tok[i] == v;
    counts[static_cast<int64_t>(v) * gridDim.x + blockIdx.x] = n;
}

// One block of 256 threads: counts becomes the exclusive scan (the chunks' starts) in place;
// offsets[v] = start of token v, offsets[256] = all rows.
__global__ void token_scan_kernel(int32_t *counts, int32_t *offsets, int32_t chunks) {
    __shared__ int32_t start[257];
    const int32_t v = threadIdx.x;
    int32_t *c = counts + static_cast<int64_t>(v) * chunks;
    int32_t total = 0;
    for (int32_t k = 0; k < chunks; ++k) total += c[k];
    start[v + 1] = total;
    __syncthreads();
    if (v == 0) {
        start[0] = 0;
        for (int32_t i = 1; i <= 256; ++i) start[i] += start[i - 1];
    }
    __syncthreads();
    int32_t at = start[v];
    offsets[v] = at;
    if (v == 0) offsets[256] = start[256];
    for (int32_t k = 0; k < chunks; ++k) {
        const int32_t n = c[k];
        c[k] = at;
        at += n;
    }
}

__global__ void token_scatter_kernel(int32_t *rows, const int32_t *starts, const uint8_t *tokens,
                                     int64_t N, int32_t T) {
    __shared__ int32_t chunk_tok[kSortChunk];
    load_chunk_tokens(chunk_tok, tokens, N, T);
    const int32_t v = threadIdx.x;
    const int64_t first = blockIdx.x * static_cast<int64_t>(kSortChunk);
    int32_t at = starts[static_cast<int64_t>(v) * gridDim.x + blockIdx.x];
    for (int32_t i = 0; i < kSortChunk; ++i)
        if (chunk_tok[i] == v) rows[at++] = static_cast<int32_t>(first + i);
}

// dtok[v][c] += dout[r][c] over the rows r of token v, in order: a thread per (v, c).
__global__ void token_grad_kernel(float *dtok, const float *dout, const int32_t *rows,
                                  const int32_t *offsets, int32_t C) {
    const int32_t v = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = dtok[static_cast<int64_t>(v) * C + c];
    for (int32_t i = offsets[v]; i < offsets[v + 1]; ++i)
        acc += dout[static_cast<int64_t>(rows[i]) * C + c];
    dtok[static_cast<int64_t>(v) * C + c] = acc;
}

// dstart[c] += dout[b, 0][c] over b in order.
__global__ void start_grad_kernel(float *dstart, const float *dout, int32_t B, int32_t T,
                                  int32_t C) {
    const int32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = dstart[c];
    for (int32_t b = 0; b < B; ++b) acc += dout[static_cast<int64_t>(b) * T * C + c];
    dstart[c] = acc;
}

// dpos[k][c] += dout[b, p + 1][c] over the positions p < T - 1 whose coordinate on this axis
// is k, b then p in order: p = h * (shape * inner) + k * inner + l. A thread per (k, c).
__global__ void position_grad_kernel(float *dpos, const float *dout, int32_t shape, int64_t inner,
                                     int32_t B, int32_t T, int32_t C) {
    const int32_t k = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const int64_t outer = static_cast<int64_t>(shape) * inner;
    float acc = dpos[static_cast<int64_t>(k) * C + c];
    for (int32_t b = 0; b < B; ++b)
        for (int64_t h = 0; h * outer + k * inner < T - 1; ++h)
            for (int64_t l = 0; l < inner; ++l) {
                const int64_t p = h * outer + k * inner + l;
                if (p >= T - 1) break;
                acc += dout[(static_cast<int64_t>(b) * T + p + 1) * C + c];
            }
    dpos[static_cast<int64_t>(k) * C + c] = acc;
}

// The max m of a row of V logits and the sum s of exp(z - m), by its warp (every lane gets
// them): the row's log sum exp is m + logf(s).
__device__ __forceinline__ void warp_max_sumexp(const float *z, int32_t V, float *m_out,
                                                float *s_out) {
    float m = -INFINITY;
    for (int32_t v = threadIdx.x; v < V; v += 32) m = fmaxf(m, z[v]);
    m = warp_max(m);
    float s = 0.0f;
    for (int32_t v = threadIdx.x; v < V; v += 32) s += expf(z[v] - m);
    *m_out = m;
    *s_out = warp_sum(s);
}

// One warp per row of V logits.
__global__ void crossentropy_forward_kernel(float *losses, const float *logits,
                                            const uint8_t *targets, int64_t N, int32_t V) {
    const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.y;
    if (row >= N) return;
    const float *z = logits + row * V;
    float m, s;
    warp_max_sumexp(z, V, &m, &s);
    if (threadIdx.x == 0) losses[row] = m + logf(s) - z[targets[row]];
}

// fresh: dlogits is a pending zero (context.cuh): not read, 0.0f instead.
__global__ void crossentropy_backward_kernel(float *dlogits, const float *logits,
                                             const uint8_t *targets, float scale, int64_t N,
                                             int32_t V, bool fresh) {
    const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.y;
    if (row >= N) return;
    const float *z = logits + row * V;
    float m, s;
    warp_max_sumexp(z, V, &m, &s);
    const float lse = m + logf(s);
    const int32_t target = targets[row];
    for (int32_t v = threadIdx.x; v < V; v += 32)
        dlogits[row * V + v] = (fresh ? 0.0f : dlogits[row * V + v]) +
                               scale * (expf(z[v] - lse) - (v == target ? 1.0f : 0.0f));
}

unsigned row_blocks(int64_t N) {
    return static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
}

// Column sums in chunks of rows: (partial buffers, chunk count, rows per chunk).
bool column_chunks(Context *ctx, int64_t N, int32_t C, int32_t *chunks, int64_t *chunk) {
    *chunk = N < 128 ? 1 : (N + 127) / 128;
    *chunks = static_cast<int32_t>((N + *chunk - 1) / *chunk);
    return ctx->reserve(ctx->scratch, 2 * static_cast<size_t>(*chunks) * C);
}

} // namespace

void column_sum_add(Context *ctx, float *out, const float *x, int64_t N, int32_t C) {
    if (!ctx->ok() || N == 0) return;
    int32_t chunks = 0;
    int64_t chunk = 0;
    if (!column_chunks(ctx, N, C, &chunks, &chunk)) return;
    float *partial = ctx->scratch.data();
    dim3 grid((C + 127) / 128, static_cast<unsigned>(chunks));
    column_partial_kernel<<<grid, 128, 0, ctx->stream>>>(nullptr, partial, x, nullptr, nullptr,
                                                         nullptr, N, C, chunk);
    column_final_kernel<<<(C + 127) / 128, 128, 0, ctx->stream>>>(out, partial, chunks, C);
    STX_LAUNCH_CHECK(ctx, "column_sum kernels");
}

void to_bf16_column_sum_add(Context *ctx, __nv_bfloat16 *dst, float *out, const float *x, int64_t N,
                            int32_t C) {
    if (!ctx->ok() || N == 0) return;
    int32_t chunks = 0;
    int64_t chunk = 0;
    if (!column_chunks(ctx, N, C, &chunks, &chunk)) return;
    float *partial = ctx->scratch.data();
    const int cols_per_cta = kCastColThreads * 4;
    const dim3 grid((C + cols_per_cta - 1) / cols_per_cta, static_cast<unsigned>(chunks)),
        block(kCastColThreads, kCastRowThreads);
    const bool vec = C % 4 == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0 &&
                     (reinterpret_cast<uintptr_t>(dst) & 7) == 0;
    if (vec)
        to_bf16_column_partial_kernel<true>
            <<<grid, block, 0, ctx->stream>>>(dst, partial, x, N, C, chunk);
    else
        to_bf16_column_partial_kernel<false>
            <<<grid, block, 0, ctx->stream>>>(dst, partial, x, N, C, chunk);
    column_final_kernel<<<(C + 127) / 128, 128, 0, ctx->stream>>>(out, partial, chunks, C);
    STX_LAUNCH_CHECK(ctx, "to_bf16_column_partial_kernel, column_final_kernel");
}

void CudaOps::layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                const float *g, const float *b, int64_t N, int32_t C, double eps) {
    if (!ctx_->ok() || N == 0) return;
    OpAccess io(ctx_.get(), {Span(inp, N * C), Span(g, C), Span(b, C)},
                {Span(out, N * C), Span(mean, N), Span(rstd, N)});
    __nv_bfloat16 *out16 = io.produce(out, N * C); // h1, h2, hf: the bf16 operand of products
    layernorm_forward_kernel<<<row_blocks(N), dim3(32, kRowsPerBlock), 0, ctx_->stream>>>(
        out, out16, mean, rstd, inp, g, b, N, C, static_cast<float>(eps));
    STX_LAUNCH_CHECK(ctx_, "layernorm_forward_kernel");
}

void CudaOps::layernorm_backward(float *dinp, float *dg, float *db, const float *dout,
                                 const float *inp, const float *g, const float *mean,
                                 const float *rstd, int64_t N, int32_t C) {
    if (!ctx_->ok() || N == 0) return;
    OpAccess io(ctx_.get(),
                {Span(dout, N * C), Span(inp, N * C), Span(g, C), Span(mean, N), Span(rstd, N)},
                {Span(dg, C), Span(db, C)}, {Span(dinp, N * C)});
    layernorm_backward_input_kernel<<<row_blocks(N), dim3(32, kRowsPerBlock), 0, ctx_->stream>>>(
        dinp, dout, inp, g, mean, rstd, N, C, io.fresh(0));
    int32_t chunks = 0;
    int64_t chunk = 0;
    if (!column_chunks(ctx_.get(), N, C, &chunks, &chunk)) return;
    float *partial_g = ctx_->scratch.data(),
          *partial_b = partial_g + static_cast<size_t>(chunks) * C;
    dim3 grid((C + 127) / 128, static_cast<unsigned>(chunks));
    column_partial_kernel<<<grid, 128, 0, ctx_->stream>>>(partial_g, partial_b, dout, inp, mean,
                                                          rstd, N, C, chunk);
    column_final_kernel<<<(C + 127) / 128, 128, 0, ctx_->stream>>>(dg, partial_g, chunks, C);
    column_final_kernel<<<(C + 127) / 128, 128, 0, ctx_->stream>>>(db, partial_b, chunks, C);
    STX_LAUNCH_CHECK(ctx_, "layernorm_backward kernels");
}

void CudaOps::embedding_forward(float *out, const uint8_t *tokens, const float *tok,
                                const float *start, const float *const *pos,
                                const int32_t *pos_shape, int32_t n_axes, int32_t B, int32_t T,
                                int32_t C) {
    if (!ctx_->ok()) return;
    PosTables p{};
    p.n_axes = n_axes;
    const int64_t n = static_cast<int64_t>(B) * T * C;
    std::vector<Span> in = {Span(tokens, static_cast<int64_t>(B) * T),
                            Span(tok, int64_t(STX_VOCAB) * C), Span(start, C)};
    for (int32_t a = 0; a < n_axes; ++a) {
        p.table[a] = pos[a];
        p.shape[a] = pos_shape[a];
        in.push_back(Span(pos[a], static_cast<int64_t>(pos_shape[a]) * C));
    }
    OpAccess io(ctx_.get(), in, {Span(out, n)});
    embedding_forward_kernel<<<blocks_for(n, 256), 256, 0, ctx_->stream>>>(out, tokens, tok, start,
                                                                           p, B, T, C);
    STX_LAUNCH_CHECK(ctx_, "embedding_forward_kernel");
}

void CudaOps::embedding_backward(float *dtok, float *dstart, float *const *dpos, const float *dout,
                                 const uint8_t *tokens, const int32_t *pos_shape, int32_t n_axes,
                                 int32_t B, int32_t T, int32_t C) {
    if (!ctx_->ok()) return;
    const int64_t N = static_cast<int64_t>(B) * T;
    std::vector<Span> out = {Span(dtok, int64_t(STX_VOCAB) * C), Span(dstart, C)};
    for (int32_t a = 0; a < n_axes; ++a)
        out.push_back(Span(dpos[a], static_cast<int64_t>(pos_shape[a]) * C));
    OpAccess io(ctx_.get(), {Span(dout, N * C), Span(tokens, N)}, out); // added into
    const int64_t chunks = (N + kSortChunk - 1) / kSortChunk;
    if (!ctx_->reserve(ctx_->index_scratch, static_cast<size_t>(N + 257 + 256 * chunks))) return;
    int32_t *rows = ctx_->index_scratch.data(), *offsets = rows + N, *counts = offsets + 257;
    const int threads = 128;
    const unsigned col_blocks = static_cast<unsigned>((C + threads - 1) / threads);
    if (chunks > 0)
        token_count_kernel<<<static_cast<unsigned>(chunks), kSortChunk, 0, ctx_->stream>>>(
            counts, tokens, N, T);
    token_scan_kernel<<<1, 256, 0, ctx_->stream>>>(counts, offsets, static_cast<int32_t>(chunks));
    if (chunks > 0)
        token_scatter_kernel<<<static_cast<unsigned>(chunks), kSortChunk, 0, ctx_->stream>>>(
            rows, counts, tokens, N, T);
    token_grad_kernel<<<dim3(256, col_blocks), threads, 0, ctx_->stream>>>(dtok, dout, rows,
                                                                           offsets, C);
    start_grad_kernel<<<col_blocks, threads, 0, ctx_->stream>>>(dstart, dout, B, T, C);
    int64_t inner = 1;
    for (int32_t a = n_axes - 1; a >= 0; --a) {
        position_grad_kernel<<<dim3(static_cast<unsigned>(pos_shape[a]), col_blocks), threads, 0,
                               ctx_->stream>>>(dpos[a], dout, pos_shape[a], inner, B, T, C);
        inner *= pos_shape[a];
    }
    STX_LAUNCH_CHECK(ctx_, "embedding backward kernels");
}

void CudaOps::crossentropy_forward(float *losses, const float *logits, const uint8_t *targets,
                                   int64_t N, int32_t V) {
    if (!ctx_->ok() || N == 0) return;
    OpAccess io(ctx_.get(), {Span(logits, N * V), Span(targets, N)}, {Span(losses, N)});
    crossentropy_forward_kernel<<<row_blocks(N), dim3(32, kRowsPerBlock), 0, ctx_->stream>>>(
        losses, logits, targets, N, V);
    STX_LAUNCH_CHECK(ctx_, "crossentropy_forward_kernel");
}

void CudaOps::crossentropy_backward(float *dlogits, const float *logits, const uint8_t *targets,
                                    double dloss_scale, int64_t N, int32_t V) {
    if (!ctx_->ok() || N == 0) return;
    OpAccess io(ctx_.get(), {Span(logits, N * V), Span(targets, N)}, {}, {Span(dlogits, N * V)});
    crossentropy_backward_kernel<<<row_blocks(N), dim3(32, kRowsPerBlock), 0, ctx_->stream>>>(
        dlogits, logits, targets, static_cast<float>(dloss_scale), N, V, io.fresh(0));
    STX_LAUNCH_CHECK(ctx_, "crossentropy_backward_kernel");
}

} // namespace cuda
} // namespace stx
