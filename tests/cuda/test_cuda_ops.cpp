/*
 * test_cuda_ops.cpp: every CUDA op against its ref/ twin, on fresh random inputs of awkward
 * shapes (rows not a multiple of anything, n_ctx not a multiple of the block, 3 heads, batch
 * 1 and 5, head dims 32/64/128 and Dv = 2 Dq, attention blocks of 16 to 128). The reference
 * runs in double; the bound is max|cuda - ref| / max|ref| <= 1e-5 in fp32 mode and <= 2e-2 in
 * bf16 mode (only matrix and attention operands are rounded to bf16). Outputs are poisoned
 * with NaN first, so an element a kernel fails to write shows. Without a GPU the test says so
 * and exits 77.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#include <memory>
#include <string>
#include <vector>

#include "cuda_ops.h"
#include "layout.h"
#include "ops.h"
#include "pattern.h"
#include "philox.h"

using stx::cuda::CudaOps;
typedef std::vector<double> vec;

// g_bf16 takes the Hopper (wgmma) attention kernels where the device has them; g_bf16_mma
// the portable mma.sync ones everywhere, so that on an H100 both are checked.
static CudaOps g_fp32, g_bf16, g_bf16_mma;
// bf16: operands carry a relative error of at most 2^-9 each. The tensor-core attention
// kernels also round P and dS (the A operands of P V, dS K and dS^T Q) to bf16, one more
// 2^-9 per term, averaging out over a row's keys; the whole stays well inside 2e-2 at these
// sizes, so the bound is the one of every other bf16 op.
static const double kFp32Bound = 1e-5, kBf16Bound = 2e-2;

static vec random_vec(stx_test_rng *rng, size_t n, double scale) {
    vec v(n);
    stx_test_fill(rng, v.data(), n, scale);
    return v;
}

// A device array holding a host vector's values (as float).
struct Dev {
    CudaOps::Buffer buf;
    Dev(CudaOps &ops, const vec &host) {
        ops.alloc(buf, host.size());
        ops.copy_in(buf.data(), host.size(), STX_DTYPE_F64, host.data());
    }
    Dev(CudaOps &ops, size_t n, double fill) {
        ops.alloc(buf, n);
        vec host(n, fill);
        ops.copy_in(buf.data(), n, STX_DTYPE_F64, host.data());
    }
    float *p() { return buf.data(); }
    vec get(CudaOps &ops) const {
        vec host(buf.size());
        ops.copy_out(buf.data(), buf.size(), STX_DTYPE_F64, host.data());
        return host;
    }
};

// got's elements from `at` on against ref.
static void expect(CudaOps &ops, const char *what, const Dev &got, const vec &ref, double bound,
                   size_t at = 0) {
    if (ops.status() != STX_OK) fail_msg("%s: CUDA error: %s", what, stx_last_error());
    vec g = got.get(ops);
    g.erase(g.begin(), g.begin() + static_cast<std::ptrdiff_t>(at));
    assert_int_equal(g.size(), ref.size());
    stx_test_expect_close(what, g.data(), ref.data(), ref.size(), bound);
}

static const double kNaN = NAN;

// v behind `at` leading elements of value `pad`.
static vec behind(const vec &v, size_t at, double pad) {
    // An index loop: g++ 13 takes insert() into a one-element vector for an overflow
    // (-Warray-bounds, an error under -Werror).
    vec r(at + v.size(), pad);
    for (size_t i = 0; i < v.size(); ++i) r[at + i] = v[i];
    return r;
}

/* linear_forward with and without a bias, linear_backward with and without dbias, on [N, C]
 * inputs and OC outputs, against the reference; out is poisoned with NaN (the product without
 * a bias has beta 0 and must not read it). Unshifted, every array starts on a 256-byte
 * boundary: the forward with a bias adds it in cuBLASLt's epilogue (counted by
 * bias_epilogue_products; in bf16 mode it must be, where OC and C allow 16-byte rows).
 * shift: out, dout and the bias start one float past the boundary: the bias is then written
 * first and the cuBLAS product added to it, and the bf16 backward's fused dout conversion
 * and column sums take their element-at-a-time path. The bias gradient is an fp32 sum of the
 * fp32 dout in both modes (bound 1e-5), and the same bits on a second run. */
static void check_linear(CudaOps &ops, stx_test_rng *rng, const vec &x, int64_t N, int32_t C,
                         int32_t OC, bool shift, double mm_bound) {
    const size_t at = shift ? 1 : 0;
    vec w = random_vec(rng, static_cast<size_t>(OC) * C, 0.2), bias = random_vec(rng, OC, 1.0);
    Dev dx(ops, x), dw(ops, w), dbias(ops, behind(bias, at, 0.0));
    for (int with_bias = 0; with_bias < 2; ++with_bias) {
        char what[160];
        const double *bp = with_bias ? bias.data() : nullptr;
        vec y(N * OC);
        stx::ref::linear_forward<double>(y.data(), x.data(), w.data(), bp, N, C, OC);
        Dev dy(ops, N * OC + at, kNaN);
        const int64_t epilogues = ops.bias_epilogue_products();
        ops.linear_forward(dy.p() + at, dx.p(), dw.p(), with_bias ? dbias.p() + at : nullptr, N, C,
                           OC);
        snprintf(what, sizeof what, "linear_forward N %lld C %d OC %d%s%s", (long long)N, C, OC,
                 with_bias ? " bias" : "", shift ? " shifted" : "");
        expect(ops, what, dy, y, mm_bound, at);
        const bool epilogue = ops.bias_epilogue_products() > epilogues;
        if (with_bias)
            printf("  %s: bias %s\n", what,
                   epilogue ? "in cuBLASLt's epilogue" : "written first (cuBLAS, beta 1)");
        if (!with_bias || shift) assert_false(epilogue);
        if (with_bias && !shift && &ops == &g_bf16 && OC % 4 == 0 && C % 8 == 0)
            assert_true(epilogue);

        vec gy = random_vec(rng, N * OC, 1.0), gx = random_vec(rng, N * C, 1.0);
        vec gw = random_vec(rng, static_cast<size_t>(OC) * C, 1.0),
            gbias = random_vec(rng, OC, 1.0);
        Dev dgy(ops, behind(gy, at, 0.0)), dgx(ops, gx), dgw(ops, gw), dgbias(ops, gbias);
        vec gbias_before = gbias;
        stx::ref::linear_backward<double>(gx.data(), gw.data(), with_bias ? gbias.data() : nullptr,
                                          gy.data(), x.data(), w.data(), N, C, OC);
        ops.linear_backward(dgx.p(), dgw.p(), with_bias ? dgbias.p() : nullptr, dgy.p() + at,
                            dx.p(), dw.p(), N, C, OC);
        snprintf(what, sizeof what, "linear_backward N %lld C %d OC %d%s%s", (long long)N, C, OC,
                 with_bias ? " bias" : "", shift ? " shifted" : "");
        std::string name = std::string(what) + " dinp (+=)";
        expect(ops, name.c_str(), dgx, gx, mm_bound);
        name = std::string(what) + " dw (+=)";
        expect(ops, name.c_str(), dgw, gw, mm_bound);
        name = std::string(what) + " dbias (+=)";
        expect(ops, name.c_str(), dgbias, gbias, kFp32Bound);
        if (with_bias) { // the same bits again from the same start
            Dev again(ops, gbias_before), dgx2(ops, N * C, 0.0), dgw2(ops, w.size(), 0.0);
            ops.linear_backward(dgx2.p(), dgw2.p(), again.p(), dgy.p() + at, dx.p(), dw.p(), N, C,
                                OC);
            vec b1 = dgbias.get(ops), b2 = again.get(ops);
            if (ops.status() != STX_OK) fail_msg("%s: CUDA error: %s", what, stx_last_error());
            if (memcmp(b1.data(), b2.data(), b1.size() * sizeof(double)) != 0)
                fail_msg("%s: dbias differs between two runs", what);
        }
    }
}

/* LayerNorm, GELU, linear (both precisions), cross-entropy, embedding, dropout, AdamW. */
static void test_dense_ops(void **state) {
    (void)state;
    stx_test_rng rng = {101};
    for (int prec = 0; prec < 2; ++prec) {
        CudaOps &ops = prec ? g_bf16 : g_fp32;
        const double mm_bound = prec ? kBf16Bound : kFp32Bound;
        const int64_t N = 77;
        const int32_t C = 96, OC = 130;
        // LayerNorm
        vec x = random_vec(&rng, N * C, 2.0), g = random_vec(&rng, C, 1.0),
            b = random_vec(&rng, C, 1.0);
        for (double &e : g) e += 1.0;
        vec out(N * C), mean(N), rstd(N);
        stx::ref::layernorm_forward<double>(out.data(), mean.data(), rstd.data(), x.data(),
                                            g.data(), b.data(), N, C, 1e-5);
        Dev dx(ops, x), dg(ops, g), db(ops, b), dout(ops, N * C, kNaN), dmean(ops, N, kNaN),
            drstd(ops, N, kNaN);
        ops.layernorm_forward(dout.p(), dmean.p(), drstd.p(), dx.p(), dg.p(), db.p(), N, C, 1e-5);
        expect(ops, "layernorm_forward out", dout, out, kFp32Bound);
        expect(ops, "layernorm_forward rstd", drstd, rstd, kFp32Bound);
        vec up = random_vec(&rng, N * C, 1.0), gin = random_vec(&rng, N * C, 1.0);
        vec gg = random_vec(&rng, C, 1.0), gb = random_vec(&rng, C, 1.0);
        vec rin = gin, rg = gg, rb = gb;
        stx::ref::layernorm_backward<double>(rin.data(), rg.data(), rb.data(), up.data(), x.data(),
                                             g.data(), mean.data(), rstd.data(), N, C);
        Dev dup(ops, up), dgin(ops, gin), dgg(ops, gg), dgb(ops, gb);
        ops.layernorm_backward(dgin.p(), dgg.p(), dgb.p(), dup.p(), dx.p(), dg.p(), dmean.p(),
                               drstd.p(), N, C);
        expect(ops, "layernorm_backward dinp (+=)", dgin, rin, kFp32Bound);
        expect(ops, "layernorm_backward dg (+=)", dgg, rg, kFp32Bound);
        expect(ops, "layernorm_backward db (+=)", dgb, rb, kFp32Bound);

        // GELU
        vec gelu(N * C), ginp = random_vec(&rng, N * C, 0.5);
        stx::ref::gelu_forward<double>(gelu.data(), x.data(), N * C);
        Dev dgelu(ops, N * C, kNaN), dginp(ops, ginp);
        ops.gelu_forward(dgelu.p(), dx.p(), N * C);
        expect(ops, "gelu_forward", dgelu, gelu, kFp32Bound);
        stx::ref::gelu_backward<double>(ginp.data(), up.data(), x.data(), N * C);
        ops.gelu_backward(dginp.p(), dup.p(), dx.p(), N * C);
        expect(ops, "gelu_backward (+=)", dginp, ginp, kFp32Bound);

        // Linear: rows below 128 (a column-sum chunk per row), rows not a multiple of the
        // chunk, OC not a multiple of 128 or of 4, and shifted operands.
        check_linear(ops, &rng, x, N, C, OC, false, mm_bound);
        check_linear(ops, &rng, random_vec(&rng, 1001 * 64, 2.0), 1001, 64, 200, false, mm_bound);
        check_linear(ops, &rng, random_vec(&rng, 335 * 40, 2.0), 335, 40, 67, false, mm_bound);
        check_linear(ops, &rng, random_vec(&rng, 1001 * 64, 2.0), 1001, 64, 200, true, mm_bound);
        check_linear(ops, &rng, random_vec(&rng, 3001 * 128, 2.0), 3001, 128, 260, false, mm_bound);

        // Cross-entropy
        const int32_t V = 256;
        vec logits = random_vec(&rng, N * V, 4.0), losses(N);
        std::vector<uint8_t> targets(N);
        stx_test_fill_bytes(&rng, targets.data(), targets.size());
        stx::ref::crossentropy_forward<double>(losses.data(), logits.data(), targets.data(), N, V);
        CudaOps::Bytes dtargets;
        ops.upload_bytes(dtargets, targets.data(), targets.size());
        Dev dlogits(ops, logits), dlosses(ops, N, kNaN);
        ops.crossentropy_forward(dlosses.p(), dlogits.p(), dtargets.data(), N, V);
        expect(ops, "crossentropy_forward", dlosses, losses, kFp32Bound);
        vec gl = random_vec(&rng, N * V, 1.0);
        Dev dgl(ops, gl);
        stx::ref::crossentropy_backward<double>(gl.data(), logits.data(), targets.data(),
                                                1.0 / 77.0, N, V);
        ops.crossentropy_backward(dgl.p(), dlogits.p(), dtargets.data(), 1.0 / 77.0, N, V);
        expect(ops, "crossentropy_backward (+=)", dgl, gl, kFp32Bound);

        // Embedding with a 3-axis position shape
        const int32_t B = 5, T = 11, shape[3] = {2, 3, 2}; // prod 12 >= T
        vec tok = random_vec(&rng, 256 * static_cast<size_t>(C), 1.0),
            start = random_vec(&rng, C, 1.0);
        vec pos[3] = {random_vec(&rng, 2 * C, 1.0), random_vec(&rng, 3 * C, 1.0),
                      random_vec(&rng, 2 * C, 1.0)};
        std::vector<uint8_t> tokens(B * T);
        stx_test_fill_bytes(&rng, tokens.data(), tokens.size());
        for (int i = 0; i < 5; ++i) tokens[static_cast<size_t>(i) * 3] = 7; // repeated tokens
        const double *hpos[3] = {pos[0].data(), pos[1].data(), pos[2].data()};
        vec emb(static_cast<size_t>(B) * T * C);
        stx::ref::embedding_forward<double>(emb.data(), tokens.data(), tok.data(), start.data(),
                                            hpos, shape, 3, B, T, C);
        Dev dtok(ops, tok), dstart(ops, start), dp0(ops, pos[0]), dp1(ops, pos[1]),
            dp2(ops, pos[2]), demb(ops, emb.size(), kNaN);
        CudaOps::Bytes dtokens;
        ops.upload_bytes(dtokens, tokens.data(), tokens.size());
        const float *dpos[3] = {dp0.p(), dp1.p(), dp2.p()};
        ops.embedding_forward(demb.p(), dtokens.data(), dtok.p(), dstart.p(), dpos, shape, 3, B, T,
                              C);
        expect(ops, "embedding_forward", demb, emb, kFp32Bound);
        vec gemb = random_vec(&rng, emb.size(), 1.0);
        vec gt = random_vec(&rng, tok.size(), 1.0), gs = random_vec(&rng, C, 1.0);
        vec gp[3] = {random_vec(&rng, 2 * C, 1.0), random_vec(&rng, 3 * C, 1.0),
                     random_vec(&rng, 2 * C, 1.0)};
        Dev dgemb(ops, gemb), dgt(ops, gt), dgs(ops, gs), dgp0(ops, gp[0]), dgp1(ops, gp[1]),
            dgp2(ops, gp[2]);
        double *hgp[3] = {gp[0].data(), gp[1].data(), gp[2].data()};
        stx::ref::embedding_backward<double>(gt.data(), gs.data(), hgp, gemb.data(), tokens.data(),
                                             shape, 3, B, T, C);
        float *dgp[3] = {dgp0.p(), dgp1.p(), dgp2.p()};
        ops.embedding_backward(dgt.p(), dgs.p(), dgp, dgemb.p(), dtokens.data(), shape, 3, B, T, C);
        expect(ops, "embedding_backward dtok (+=)", dgt, gt, kFp32Bound);
        expect(ops, "embedding_backward dstart (+=)", dgs, gs, kFp32Bound);
        expect(ops, "embedding_backward dpos[0] (+=)", dgp0, gp[0], kFp32Bound);
        expect(ops, "embedding_backward dpos[1] (+=)", dgp1, gp[1], kFp32Bound);
        expect(ops, "embedding_backward dpos[2] (+=)", dgp2, gp[2], kFp32Bound);

        // AdamW, decay on, clipped gradients
        const int64_t P = 1001;
        vec p = random_vec(&rng, P, 1.0), m = random_vec(&rng, P, 0.1),
            v = random_vec(&rng, P, 0.1), gr = random_vec(&rng, P, 1.0);
        for (double &e : v) e = fabs(e);
        Dev dpp(ops, p), dm(ops, m), dv(ops, v), dgr(ops, gr);
        stx::ref::adamw_update<double>(p.data(), m.data(), v.data(), gr.data(), P, 0.5, 1e-2, 0.9,
                                       0.95, 1e-8, 0.1, true, 3);
        ops.adamw_update(dpp.p(), dm.p(), dv.p(), dgr.p(), P, 0.5, 1e-2, 0.9, 0.95, 1e-8, 0.1, true,
                         3);
        expect(ops, "adamw p", dpp, p, kFp32Bound);
        expect(ops, "adamw m", dm, m, kFp32Bound);
        expect(ops, "adamw v", dv, v, kFp32Bound);
    }
}

/* The dropout mask is the reference's bit for bit: the same elements are dropped. */
static void test_dropout_bit_for_bit(void **state) {
    (void)state;
    stx_test_rng rng = {202};
    const int64_t n = 100003;
    vec resid = random_vec(&rng, n, 1.0), branch = random_vec(&rng, n, 1.0);
    std::vector<float> rf(resid.begin(), resid.end()), bf(branch.begin(), branch.end()), of(n);
    stx::ref::residual_dropout_forward<float>(of.data(), rf.data(), bf.data(), n, 0.3, 99, 5, 12);
    Dev dr(g_fp32, resid), db(g_fp32, branch), dout(g_fp32, n, kNaN);
    g_fp32.residual_dropout_forward(dout.p(), dr.p(), db.p(), n, 0.3, 99, 5, 12);
    vec got = dout.get(g_fp32);
    int64_t differ = 0, dropped = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (static_cast<float>(got[i]) != of[i]) ++differ;
        if (of[i] == rf[i]) ++dropped;
    }
    printf("  dropout p=0.3: %lld of %lld dropped, %lld differ from the reference\n",
           (long long)dropped, (long long)n, (long long)differ);
    assert_int_equal(differ, 0);
    assert_true(dropped > n / 4 && dropped < n * 7 / 20);
    vec gd = random_vec(&rng, n, 1.0), gr(n, 0.0), gb(n, 0.0);
    std::vector<float> gdf(gd.begin(), gd.end()), grf(n, 0.0f), gbf(n, 0.0f);
    stx::ref::residual_dropout_backward<float>(grf.data(), gbf.data(), gdf.data(), n, 0.3, 99, 5,
                                               12);
    Dev dgd(g_fp32, gd), dgr(g_fp32, gr), dgb(g_fp32, gb);
    g_fp32.residual_dropout_backward(dgr.p(), dgb.p(), dgd.p(), n, 0.3, 99, 5, 12);
    vec gotb = dgb.get(g_fp32);
    for (int64_t i = 0; i < n; ++i)
        if (static_cast<float>(gotb[i]) != gbf[i])
            fail_msg("dropout backward differs at %lld", (long long)i);
}

struct AttnCase {
    const char *pattern; // NULL: a random user block layout
    int32_t n_ctx, T, bs, B, Dq, Dv;
};

static const AttnCase kAttnCases[] = {
    {"dense", 100, 100, 32, 1, 32, 32},
    {"local:40", 100, 77, 16, 5, 64, 64},
    {"strided:24", 100, 100, 32, 2, 128, 128},
    {"fixed:32:8:3", 100, 90, 16, 2, 32, 64},
    {"local:16+strided:16", 100, 100, 32, 3, 64, 64},
    {"fixed:32:8+strided:20", 130, 111, 16, 1, 64, 128},
    {"[local:16;strided:20+fixed:32:8;dense]", 100, 100, 32, 2, 32, 32},
    {"strided:7+strided:9+local:5", 100, 95, 16, 1, 32, 32},
    {NULL, 100, 100, 32, 5, 64, 64},
    // Blocks of 64 and 128 (128: two 64-row tiles of one block in bf16 mode) and longer
    // contexts, so that whole blocks are computed without a mask (full), under the causal
    // mask only, and with the pass predicate, in both orders; ragged T throughout.
    {"dense", 300, 290, 64, 2, 64, 64},
    {"dense", 300, 300, 128, 1, 128, 128},
    {"local:100", 400, 333, 64, 2, 128, 128},
    {"local:48", 200, 190, 16, 2, 128, 128},
    {"fixed:128:32:2", 400, 390, 32, 2, 64, 128}, // summary cells fill whole blocks
    {"fixed:64:16+strided:64", 700, 650, 64, 1, 128, 128},
    {"local:8+strided:4", 600, 590, 32, 2, 64, 64}, // transposed blocks inside one chunk
    {"strided:8", 1100, 1050, 32, 2, 64, 64},       // and positions >= T inside full blocks
    {"local:64+strided:64", 500, 480, 64, 2, 32, 32},
    {"strided:24", 500, 500, 128, 1, 32, 64},
    {"local:100+fixed:64:16:2", 300, 277, 64, 3, 32, 64},
    {NULL, 400, 390, 64, 2, 128, 128},
    {NULL, 300, 260, 128, 1, 64, 64},
    // The cheap masks of the bf16 kernels (attention.cu, entry_mask), each on some entries:
    // fixed summary blocks half computed (key-column bits, 16-key groups skipped; the bench's
    // fixed:128:32 at blocks of 64 and 128), a local window's edge (a band), a strided pass
    // after a local part (a band q - k >= l inside one chunk: R = 128 slots), a strided pass
    // that computes nothing (every entry skipped), and a transposed order whose R is no power
    // of two (the gather's division by R).
    {"fixed:128:32", 700, 650, 64, 2, 64, 64},
    {"fixed:128:32:2", 900, 880, 128, 1, 32, 32},
    {"local:128", 600, 600, 64, 2, 64, 64},
    {"local:16+strided:16", 2048, 2000, 64, 1, 64, 64},
    {"dense+strided:16", 300, 290, 32, 1, 32, 32},
    {"strided:24", 1000, 990, 64, 1, 64, 64},
    // Dv = 2 Dq at blocks the Hopper kernels take (two 64-column halves of O and dV).
    {"fixed:128:32:2", 500, 470, 128, 2, 64, 128},
    {"local:100+strided:100", 700, 680, 64, 1, 64, 128},
    {"fixed:128:32:2", 400, 390, 64, 2, 64, 128},
    {"local:100", 400, 333, 128, 1, 64, 128},
    // Blocks of 32 at the Hopper kernels' head dims: two blocks a CTA there
    // (attention_wgmma_pairs.cu), over the union of their lists with a mask per half. Odd block
    // counts (the last pair has one block), a single block, the enwik8 pattern fixed:128:32 and
    // its G, merged and per-head patterns, batch > 1.
    {"fixed:128:32", 970, 950, 32, 2, 64, 64},
    {"fixed:128:32:4", 970, 970, 32, 1, 128, 128},
    {"fixed:128:32:2", 1100, 1090, 32, 2, 64, 128},
    {"local:100+fixed:128:32", 800, 777, 32, 2, 64, 64},
    {"local:64", 500, 480, 32, 3, 128, 128},
    {"local:40", 330, 300, 32, 2, 64, 128},
    {"strided:32", 700, 690, 32, 2, 64, 64},
    {"local:32+strided:32", 1000, 990, 32, 1, 128, 128},
    {"dense", 290, 270, 32, 2, 64, 64},
    {"dense", 200, 199, 32, 1, 64, 128},
    {"dense", 20, 20, 32, 2, 128, 128},
    {"[fixed:128:32;local:64;strided:16]", 600, 590, 32, 2, 64, 64},
    {NULL, 330, 320, 32, 2, 128, 128},
};

static void run_attention_case(const AttnCase &c, CudaOps &ops, double bound, uint64_t seed) {
    const int32_t H = 3;
    stx::Layout lay;
    if (c.pattern) {
        stx::LayerPattern lp;
        if (stx::parse_layer_pattern(c.pattern, &lp) != STX_OK ||
            stx::build_layout(lp, c.n_ctx, H, c.bs, &lay) != STX_OK)
            fail_msg("layout %s: %s", c.pattern, stx_last_error());
    } else {
        const int32_t nb = (c.n_ctx + c.bs - 1) / c.bs;
        std::vector<uint8_t> blocks(static_cast<size_t>(H) * nb * nb, 0);
        stx_test_rng r = {seed};
        for (int32_t h = 0; h < H; ++h)
            for (int32_t i = 0; i < nb; ++i)
                for (int32_t j = 0; j <= i; ++j)
                    blocks[(static_cast<size_t>(h) * nb + i) * nb + j] =
                        static_cast<uint8_t>(i == j || stx_test_uniform(&r) > 0.2);
        if (stx::build_layout_from_blocks(c.n_ctx, H, c.bs, blocks.data(), &lay) != STX_OK)
            fail_msg("user layout: %s", stx_last_error());
    }
    stx_test_rng rng = {seed};
    const size_t nq = static_cast<size_t>(c.B) * c.T * H * c.Dq,
                 nv = static_cast<size_t>(c.B) * c.T * H * c.Dv;
    const size_t nl = static_cast<size_t>(c.B) * H * c.T;
    vec q = random_vec(&rng, nq, 1.0), k = random_vec(&rng, nq, 1.0), v = random_vec(&rng, nv, 1.0);
    vec out(nv), lse(nl);
    const double scale = 1.0 / sqrt(static_cast<double>(c.Dq));
    stx::ref::attention_forward<double>(out.data(), lse.data(), q.data(), k.data(), v.data(), lay,
                                        c.B, c.T, c.Dq, c.Dv, scale);
    Dev dq_in(ops, q), dk_in(ops, k), dv_in(ops, v), dout(ops, nv, kNaN), dlse(ops, nl, kNaN);
    ops.attention_forward(dout.p(), dlse.p(), dq_in.p(), dk_in.p(), dv_in.p(), lay, c.B, c.T, c.Dq,
                          c.Dv, scale);
    char what[160];
    const char *name = c.pattern ? c.pattern : "user layout";
    snprintf(what, sizeof what, "attention_forward out [%s, Dq %d, Dv %d, T %d, bs %d]", name, c.Dq,
             c.Dv, c.T, c.bs);
    expect(ops, what, dout, out, bound);
    snprintf(what, sizeof what, "attention_forward lse [%s]", name);
    expect(ops, what, dlse, lse, bound);
    vec gout = random_vec(&rng, nv, 1.0);
    vec gq = random_vec(&rng, nq, 1.0), gk = random_vec(&rng, nq, 1.0),
        gv = random_vec(&rng, nv, 1.0);
    Dev dgout(ops, gout), dgq(ops, gq), dgk(ops, gk), dgv(ops, gv);
    stx::ref::attention_backward<double>(gq.data(), gk.data(), gv.data(), gout.data(), q.data(),
                                         k.data(), v.data(), out.data(), lse.data(), lay, c.B, c.T,
                                         c.Dq, c.Dv, scale);
    ops.attention_backward(dgq.p(), dgk.p(), dgv.p(), dgout.p(), dq_in.p(), dk_in.p(), dv_in.p(),
                           dout.p(), dlse.p(), lay, c.B, c.T, c.Dq, c.Dv, scale);
    snprintf(what, sizeof what, "attention_backward dq (+=) [%s, Dq %d]", name, c.Dq);
    expect(ops, what, dgq, gq, bound);
    snprintf(what, sizeof what, "attention_backward dk (+=) [%s]", name);
    expect(ops, what, dgk, gk, bound);
    snprintf(what, sizeof what, "attention_backward dv (+=) [%s]", name);
    expect(ops, what, dgv, gv, bound);
}

/* Every pattern kind and integration mode and a user layout, fp32 and bf16. */
static void test_attention(void **state) {
    (void)state;
    uint64_t seed = 300;
    for (const AttnCase &c : kAttnCases) {
        run_attention_case(c, g_fp32, kFp32Bound, ++seed);
        run_attention_case(c, g_bf16, kBf16Bound, ++seed);
        if (g_bf16.hopper_kernels()) run_attention_case(c, g_bf16_mma, kBf16Bound, ++seed);
    }
    printf("  %zu attention cases, fp32 and bf16 (%s)\n", sizeof kAttnCases / sizeof kAttnCases[0],
           g_bf16.hopper_kernels() ? "Hopper wgmma kernels where they apply, and the mma.sync "
                                     "kernels everywhere"
                                   : "the mma.sync kernels: this device or build has no sm_90a");
}

/* Running the same backward twice gives the same bits (no atomics), in fp32 and in bf16 (the
 * tensor-core kernels), with blocks of 16, 32 (pairs of blocks on Hopper) and 64. */
static void test_attention_deterministic(void **state) {
    (void)state;
    const AttnCase cases[] = {{"local:16+strided:16", 100, 100, 16, 2, 64, 64},
                              {"local:64+strided:32", 400, 390, 64, 2, 64, 64},
                              {"fixed:128:32:2", 700, 690, 32, 2, 64, 64},
                              {"local:48+strided:32", 330, 320, 32, 2, 64, 64}};
    for (const AttnCase &c : cases)
        for (int prec = 0; prec < 3; ++prec) {
            CudaOps &ops = prec == 2 ? g_bf16_mma : prec ? g_bf16 : g_fp32;
            stx::LayerPattern lp;
            stx::Layout lay;
            assert_int_equal(stx::parse_layer_pattern(c.pattern, &lp), STX_OK);
            assert_int_equal(stx::build_layout(lp, c.n_ctx, 3, c.bs, &lay), STX_OK);
            stx_test_rng rng = {7};
            const size_t n = static_cast<size_t>(c.B) * c.T * 3 * 64,
                         nl = static_cast<size_t>(c.B) * 3 * c.T;
            vec q = random_vec(&rng, n, 1.0), k = random_vec(&rng, n, 1.0),
                v = random_vec(&rng, n, 1.0), g = random_vec(&rng, n, 1.0);
            Dev dq_in(ops, q), dk_in(ops, k), dv_in(ops, v), dg(ops, g), dout(ops, n, 0.0),
                dlse(ops, nl, 0.0);
            ops.attention_forward(dout.p(), dlse.p(), dq_in.p(), dk_in.p(), dv_in.p(), lay, c.B,
                                  c.T, 64, 64, 0.125);
            vec first;
            for (int run = 0; run < 2; ++run) {
                Dev a(ops, n, 0.0), b(ops, n, 0.0), cc(ops, n, 0.0);
                ops.attention_backward(a.p(), b.p(), cc.p(), dg.p(), dq_in.p(), dk_in.p(),
                                       dv_in.p(), dout.p(), dlse.p(), lay, c.B, c.T, 64, 64, 0.125);
                if (ops.status() != STX_OK) fail_msg("CUDA error: %s", stx_last_error());
                vec all = a.get(ops), kk = b.get(ops), vv = cc.get(ops);
                all.insert(all.end(), kk.begin(), kk.end());
                all.insert(all.end(), vv.begin(), vv.end());
                if (run == 0)
                    first = all;
                else if (memcmp(first.data(), all.data(), all.size() * sizeof(double)) != 0)
                    fail_msg("attention backward differs between two runs (%s, %s)", c.pattern,
                             prec == 2 ? "bf16 mma.sync"
                             : prec    ? "bf16"
                                       : "fp32");
            }
        }
}

/* The bf16 operand copies and pending zeros (cuda/context.cuh): one buffer X is written by
 * every op in turn (whole, in part, added into, after a zero), and after each write consumers
 * read X through the operand cache: two products over X and over a part of it (at two
 * placements modulo 256 bytes: forward and the weight gradient), attention forward and
 * backward with q, k, v inside X. Everything must equal, bit for bit, the same sequence on a
 * context with the cache off (each operand converted at its use, each zero a memset), and the
 * first product must match the reference on X as it now is: a stale copy or a zero left
 * pending where it is read shows. fp32 (pending zeros only) and bf16. */
static void test_operand_cache_invalidation(void **state) {
    (void)state;
    const int32_t C = 64, OC = 25, R = 256; // OC odd: X sits at a phase of 128 bytes forward
    const int64_t NX = static_cast<int64_t>(R) * C, NA = 64 * 64;
    stx::LayerPattern lp;
    stx::Layout lay;
    assert_int_equal(stx::parse_layer_pattern("local:16+strided:16", &lp), STX_OK);
    assert_int_equal(stx::build_layout(lp, 64, 1, 32, &lay), STX_OK);
    for (int prec = 0; prec < 2; ++prec) {
        CudaOps ops[2];
        for (int r = 0; r < 2; ++r)
            if (CudaOps::create(0, prec == 1, &ops[r]) != STX_OK)
                fail_msg("CudaOps::create: %s", stx_last_error());
        ops[1].use_operand_cache(false);
        stx_test_rng rng = {555};
        const vec hx = random_vec(&rng, NX, 1.0), hy = random_vec(&rng, NX, 1.0),
                  hz = random_vec(&rng, NX, 1.0), hw = random_vec(&rng, OC * C, 0.2),
                  hb = random_vec(&rng, OC, 1.0), hwx = random_vec(&rng, C * C, 0.2),
                  hbx = random_vec(&rng, C, 1.0), hg = random_vec(&rng, C, 1.0),
                  hm = random_vec(&rng, NX, 0.1), hpart = random_vec(&rng, 50, 3.0);
        vec hv = random_vec(&rng, NX, 0.1);
        for (double &e : hv) e = fabs(e);
        std::vector<uint8_t> tokens(R);
        stx_test_fill_bytes(&rng, tokens.data(), tokens.size());
        struct Run {
            Dev X, Y, Z, Rb, W, b, WX, bx, g, lb, mean, rstd, dg, db, Wg, bg, M, V;
            Dev o1, o2, ao, alse, o3, o4, dqb, dkb, dvb;
            CudaOps::Bytes tok;
        };
        std::unique_ptr<Run> run[2];
        for (int r = 0; r < 2; ++r) {
            CudaOps &o = ops[r];
            run[r].reset(new Run{
                Dev(o, hx),      Dev(o, hy),      Dev(o, hz),          Dev(o, NX, 0.0),
                Dev(o, hw),      Dev(o, hb),      Dev(o, hwx),         Dev(o, hbx),
                Dev(o, hg),      Dev(o, hbx),     Dev(o, R, 0.0),      Dev(o, R, 1.0),
                Dev(o, C, 0.0),  Dev(o, C, 0.0),  Dev(o, C * C, 0.0),  Dev(o, C, 0.0),
                Dev(o, hm),      Dev(o, hv),      Dev(o, R * OC, 0.0), Dev(o, 100 * OC, 0.0),
                Dev(o, NA, 0.0), Dev(o, 64, 0.0), Dev(o, NX, 0.0),     Dev(o, OC * C, 0.0),
                Dev(o, NA, 0.0), Dev(o, NA, 0.0), Dev(o, NA, 0.0),     CudaOps::Bytes()});
            o.upload_bytes(run[r]->tok, tokens.data(), tokens.size());
        }
        const int32_t shape[1] = {R};
        // Writer w of X on one run.
        auto write = [&](int w, CudaOps &o, Run &u) {
            float *X = u.X.p();
            const float *pos[1] = {u.Y.p()};
            float *dpos[1] = {u.Rb.p()};
            switch (w) {
            case 0:
                o.copy_in(X, NX, STX_DTYPE_F64, hz.data());
                break;
            case 1:
                o.layernorm_forward(X, u.mean.p(), u.rstd.p(), u.Y.p(), u.g.p(), u.lb.p(), R, C,
                                    1e-5);
                break;
            case 2:
                o.layernorm_forward(X + 5 * C, u.mean.p(), u.rstd.p(), u.Z.p(), u.g.p(), u.lb.p(),
                                    100, C, 1e-5);
                break;
            case 3:
                o.gelu_forward(X, u.Y.p(), NX);
                break;
            case 4:
                o.gelu_forward(X + 64, u.Z.p(), 1000);
                break;
            case 5:
                o.linear_forward(X, u.Y.p(), u.WX.p(), u.bx.p(), R, C, C);
                break;
            case 6:
                o.zero(u.X.buf);
                break;
            case 7:
                o.zero(u.X.buf);
                o.gelu_backward(X, u.Y.p(), u.Z.p(), NX);
                break;
            case 8:
                o.gelu_backward(X + 3, u.Y.p(), u.Z.p(), 500);
                break;
            case 9:
                o.zero(u.X.buf);
                o.linear_backward(X, u.Wg.p(), u.bg.p(), u.Y.p(), u.Z.p(), u.WX.p(), R, C, C);
                break;
            case 10:
                o.zero(u.X.buf);
                o.zero(u.Rb.buf);
                o.residual_dropout_backward(X, u.Rb.p(), u.Y.p(), NX, 0.3, 9, 1, 2);
                break;
            case 11:
                o.residual_dropout_forward(X, u.Y.p(), u.Z.p(), NX, 0.3, 9, 1, 2);
                break;
            case 12:
                o.zero(u.X.buf);
                o.layernorm_backward(X, u.dg.p(), u.db.p(), u.Y.p(), u.Z.p(), u.g.p(), u.mean.p(),
                                     u.rstd.p(), R, C);
                break;
            case 13:
                o.zero(u.X.buf);
                o.layernorm_backward(X + C, u.dg.p(), u.db.p(), u.Y.p(), u.Z.p(), u.g.p(),
                                     u.mean.p(), u.rstd.p(), R - 1, C);
                break;
            case 14:
                o.crossentropy_forward(X + 10, u.Z.p(), u.tok.data(), 64, 256);
                break;
            case 15:
                o.zero(u.X.buf);
                o.crossentropy_backward(X, u.Z.p(), u.tok.data(), 1.0 / 64, 64, 256);
                break;
            case 16:
                o.embedding_forward(X, u.tok.data(), u.Z.p(), u.lb.p(), pos, shape, 1, 1, R, C);
                break;
            case 17:
                o.embedding_backward(X, u.dg.p(), dpos, u.Y.p(), u.tok.data(), shape, 1, 1, R, C);
                break;
            case 18:
                o.zero(u.X.buf);
                o.embedding_backward(X, u.dg.p(), dpos, u.Y.p(), u.tok.data(), shape, 1, 1, R, C);
                break;
            case 19:
                o.attention_forward(X + NA, u.alse.p(), u.Y.p(), u.Z.p(), u.Z.p() + NA, lay, 1, 64,
                                    64, 64, 0.125);
                break;
            case 20:
                o.zero(u.X.buf);
                o.attention_backward(X, X + NA, X + 2 * NA, u.Y.p(), u.Y.p(), u.Z.p(), u.Z.p() + NA,
                                     u.ao.p(), u.alse.p(), lay, 1, 64, 64, 64, 0.125);
                break;
            case 21:
                o.adamw_update(X, u.M.p(), u.V.p(), u.Y.p(), NX, 1.0, 1e-2, 0.9, 0.95, 1e-8, 0.1,
                               true, 1);
                break;
            case 22:
                o.copy_in(X + 100, 50, STX_DTYPE_F64, hpart.data());
                break;
            }
        };
        // The consumers of X.
        auto consume = [&](CudaOps &o, Run &u) {
            float *X = u.X.p();
            o.linear_forward(u.o1.p(), X, u.W.p(), u.b.p(), R, C, OC);
            o.linear_forward(u.o2.p(), X + 5 * C, u.W.p(), u.b.p(), 100, C, OC);
            o.attention_forward(u.ao.p(), u.alse.p(), X, X + NA, X + 2 * NA, lay, 1, 64, 64, 64,
                                0.125);
            o.zero(u.o3.buf);
            o.zero(u.o4.buf);
            o.linear_backward(u.o3.p(), u.o4.p(), nullptr, u.o1.p(), X, u.W.p(), R, C, OC);
            o.zero(u.dqb.buf);
            o.zero(u.dkb.buf);
            o.zero(u.dvb.buf);
            o.attention_backward(u.dqb.p(), u.dkb.p(), u.dvb.p(), u.Y.p(), X, X + NA, X + 2 * NA,
                                 u.ao.p(), u.alse.p(), lay, 1, 64, 64, 64, 0.125);
        };
        for (int w = 0; w <= 22; ++w) {
            for (int r = 0; r < 2; ++r) {
                write(w, ops[r], *run[r]);
                consume(ops[r], *run[r]);
                if (ops[r].status() != STX_OK)
                    fail_msg("writer %d: CUDA error: %s", w, stx_last_error());
            }
            const char *names[] = {"X", "o1", "o2", "ao", "alse", "o3", "o4", "dq", "dk", "dv"};
            for (int i = 0; i < 10; ++i) {
                Dev *d[2];
                for (int r = 0; r < 2; ++r) {
                    Run &u = *run[r];
                    Dev *all[] = {&u.X,  &u.o1, &u.o2,  &u.ao,  &u.alse,
                                  &u.o3, &u.o4, &u.dqb, &u.dkb, &u.dvb};
                    d[r] = all[i];
                }
                const vec a = d[0]->get(ops[0]), b = d[1]->get(ops[1]);
                if (memcmp(a.data(), b.data(), a.size() * sizeof(double)) != 0)
                    fail_msg("%s, after writer %d: %s differs with the operand cache on and off",
                             prec ? "bf16" : "fp32", w, names[i]);
            }
            // The first product against the reference on X as it is now.
            const vec x = run[0]->X.get(ops[0]);
            vec y(static_cast<size_t>(R) * OC);
            stx::ref::linear_forward<double>(y.data(), x.data(), hw.data(), hb.data(), R, C, OC);
            char what[80];
            snprintf(what, sizeof what, "%s, after writer %d: X W^T + b", prec ? "bf16" : "fp32",
                     w);
            const vec got = run[0]->o1.get(ops[0]);
            stx_test_expect_close(what, got.data(), y.data(), y.size(),
                                  prec ? kBf16Bound : kFp32Bound);
        }
        printf("  %s: 23 writers of X, every consumer the same bits with the operand cache on "
               "and off\n",
               prec ? "bf16" : "fp32");
    }
}

int main(void) {
    if (CudaOps::create(0, false, &g_fp32) != STX_OK ||
        CudaOps::create(0, true, &g_bf16) != STX_OK ||
        CudaOps::create(0, true, &g_bf16_mma) != STX_OK) {
        printf("SKIP: test_cuda_ops needs a CUDA device: %s\n", stx_last_error());
        return STX_TEST_SKIP;
    }
    g_bf16_mma.use_hopper_kernels(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense_ops),
        cmocka_unit_test(test_dropout_bit_for_bit),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_deterministic),
        cmocka_unit_test(test_operand_cache_invalidation),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    // The tests above filled every buffer a Context owns (scratch, cast and index scratch,
    // cached layouts); none may keep the Context alive once its ops are gone, or its device
    // memory, stream and cuBLAS handle leak with every model.
    const std::weak_ptr<stx::cuda::Context> ctx32 = g_fp32.context(), ctx16 = g_bf16.context(),
                                            ctx16m = g_bf16_mma.context();
    g_fp32 = CudaOps();
    g_bf16 = CudaOps();
    g_bf16_mma = CudaOps();
    if (!ctx32.expired() || !ctx16.expired() || !ctx16m.expired()) {
        printf("FAIL: a CUDA context outlived its ops (a reference cycle leaks its memory)\n");
        return 1;
    }
    printf("the CUDA contexts were freed with their ops\n");
    return failed;
}
