/* kernel_impl.h — the recurrent kernel, written once against the vf mapping
 * (simd_*.h).  Each kernel_<path>.c includes a mapping and then this file, so
 * every path runs the same algorithm; only the vector width differs.
 *
 * Data flow of one lrt_run call on a batch slice [b0, b1):
 *   1. xproj = bias + X @ W^T for every step at once (one GEMM, M = steps*batch)
 *   2. per step: gates = h @ R^T (one GEMM, M = rows of the slice), then the gate
 *      nonlinearities and state update fused in one pass over each row.
 * The weights are packed in panels (internal.h), so every product streams them
 * contiguously.  Each output element is one float32 FMA chain over k in order,
 * whatever M is, so slicing the batch (threads) changes no bit of the result; nor
 * does a team (internal.h), whose members compute the same chains for their own units.
 */
#include <string.h>
#include "internal.h"

#define V LRT_VLEN
#define P LRT_PANEL

/* the widened bf16 block (gemm_core) must fit the scratch lrt_ws_scratch_floats() reserves */
typedef char LRT_FN(bf16_block_fits)[LRT_KC * LRT_PANEL <= LRT_BF16_BLOCK ? 1 : -1];
#define NR (LRT_NRV * V)
#define PV (LRT_PANEL / LRT_VLEN)

/* vectors of the packed matrix: float32, or bf16 widened (bf is a constant after inlining) */
static LRT_TARGET LRT_INLINE vf LRT_FN(bload)(const void *base, size_t idx, int bf)
{
    return bf ? vf_load_bf16((const uint16_t *)base + idx) : vf_load((const float *)base + idx);
}

/* One register tile: C[0..mr)[0..nv*V) = (from_c ? C : init or 0) + A[.., 0..kc) @ panel rows.
 * b/bidx: the packed matrix and the element index of (first k, first column).
 * pf: NULL, or kc cache lines from here to prefetch, one per k (see row_tiles). */
static LRT_TARGET LRT_INLINE void LRT_FN(tile)(const int mr, const int nv, const int bf, int kc,
                                               const float *a, size_t lda, const void *b, size_t bidx,
                                               float *c, size_t ldc, const float *init, int from_c,
                                               const char *pf)
{
    vf acc[LRT_MR][LRT_NRV];
#pragma GCC unroll 8
    for (int r = 0; r < LRT_MR; r++)
#pragma GCC unroll 8
        for (int v = 0; v < LRT_NRV; v++)
            acc[r][v] = (r < mr && v < nv) ? (from_c ? vf_load(c + r * ldc + v * V)
                                              : init ? vf_load(init + v * V) : vf_set1(0.f))
                                           : vf_set1(0.f);
    for (int k = 0; k < kc; k++, bidx += P) {
        vf bv[LRT_NRV];
        if (pf) LRT_PREFETCH(pf + (size_t)k * 64);
#pragma GCC unroll 8
        for (int v = 0; v < LRT_NRV; v++) bv[v] = v < nv ? LRT_FN(bload)(b, bidx + v * V, bf) : vf_set1(0.f);
#pragma GCC unroll 8
        for (int r = 0; r < LRT_MR; r++) {
            if (r >= mr) break;
            vf x = vf_set1(a[r * lda + k]);
#pragma GCC unroll 8
            for (int v = 0; v < LRT_NRV; v++)
                if (v < nv) acc[r][v] = vf_fma(x, bv[v], acc[r][v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < LRT_MR; r++)
#pragma GCC unroll 8
        for (int v = 0; v < LRT_NRV; v++)
            if (r < mr && v < nv) vf_store(c + r * ldc + v * V, acc[r][v]);
}

/* One row times up to two panels at once (2*PV independent FMA chains for
 * the latency; each element still one chain over k in order, as in tile). */
static LRT_TARGET LRT_INLINE void LRT_FN(gemv2)(const int nv0, const int nv1, const int bf, int K,
                                                const float *a, const void *b, size_t i0, size_t i1,
                                                float *c0, float *c1, const float *init0, const float *init1)
{
    vf s0[PV], s1[PV];
#pragma GCC unroll 16
    for (int v = 0; v < PV; v++) {
        s0[v] = (v < nv0 && init0) ? vf_load(init0 + v * V) : vf_set1(0.f);
        s1[v] = (v < nv1 && init1) ? vf_load(init1 + v * V) : vf_set1(0.f);
    }
    for (int k = 0; k < K; k++, i0 += P, i1 += P) {
        vf x = vf_set1(a[k]);
#pragma GCC unroll 16
        for (int v = 0; v < PV; v++) {
            if (v < nv0) s0[v] = vf_fma(x, LRT_FN(bload)(b, i0 + v * V, bf), s0[v]);
            if (v < nv1) s1[v] = vf_fma(x, LRT_FN(bload)(b, i1 + v * V, bf), s1[v]);
        }
    }
#pragma GCC unroll 16
    for (int v = 0; v < PV; v++) {
        if (v < nv0) vf_store(c0 + v * V, s0[v]);
        if (v < nv1) vf_store(c1 + v * V, s1[v]);
    }
}

/* one row times the columns [ja, ja+wa) and [jb, jb+wb), each inside one panel (wb may be 0) */
static LRT_TARGET LRT_INLINE void LRT_FN(gemv_pair)(const int bf, const lrt_pmat *B, const float *A, float *C,
                                                    const float *init, int ja, int wa, int jb, int wb)
{
    const size_t pstride = (size_t)B->k * P;   /* elements per panel */
    const size_t ia = (size_t)(ja / P) * pstride + (size_t)(ja % P);
    const size_t ib = wb ? (size_t)(jb / P) * pstride + (size_t)(jb % P) : 0;
    if (wa == P && wb == P)   /* the common case, with constant trip counts */
        LRT_FN(gemv2)(PV, PV, bf, B->k, A, B->data, ia, ib, C + ja, C + jb,
                      init ? init + ja : NULL, init ? init + jb : NULL);
    else
        LRT_FN(gemv2)(wa / V, wb / V, bf, B->k, A, B->data, ia, ib, C + ja, C + jb,
                      init ? init + ja : NULL, init && wb ? init + jb : NULL);
}

/* One row: the columns [j0, j1) two panel-chunks at a time, first to last or (back) last to
 * first.  Sweeping back after a forward sweep finds the most recently read panels still in
 * cache: weights a little larger than L2 then mostly come from L2, not L3. */
static LRT_TARGET LRT_INLINE void LRT_FN(gemv)(const int bf, const lrt_pmat *B, int j0, int j1, const float *A,
                                               float *C, const float *init, int back)
{
    if (!back) {
        for (int j = j0; j < j1;) {
            const int ja = j, wa = P - ja % P < j1 - ja ? P - ja % P : j1 - ja;
            const int jb = ja + wa, wb = jb < j1 ? (P < j1 - jb ? P : j1 - jb) : 0;
            LRT_FN(gemv_pair)(bf, B, A, C, init, ja, wa, jb, wb);
            j = jb + wb;
        }
        return;
    }
    for (int j = j1; j > j0;) {
        const int jb = (j - 1) / P * P > j0 ? (j - 1) / P * P : j0;   /* chunk [jb, j) */
        const int ja = jb > j0 && (jb - 1) / P * P > j0 ? (jb - 1) / P * P : j0;   /* chunk [ja, jb) */
        if (ja < jb)
            LRT_FN(gemv_pair)(bf, B, A, C, init, ja, jb - ja, jb, j - jb);
        else
            LRT_FN(gemv_pair)(bf, B, A, C, init, jb, j - jb, 0, 0);
        j = ja;
    }
}

/* Rows [0, mc) of C times one K block of B (kc rows from element bidx, nv vectors wide), in
 * register tiles; the leftover rows in a tile of constant size too.
 * next/lines: the block the next call reads, prefetched kc lines per tile by the first tiles.
 * When the weights come from L3, the first tile of a block otherwise waits on each line
 * (12-15% of a B=64 step at H=512). */
static LRT_TARGET LRT_INLINE void LRT_FN(row_tiles)(const int bf, size_t mc, int nv, int kc, const float *a,
                                                    size_t lda, const void *b, size_t bidx, float *c, size_t ldc,
                                                    const float *in, int from_c, const char *next, size_t lines)
{
#define PF(m) ((m) / LRT_MR * (size_t)kc < lines ? next + (m) / LRT_MR * (size_t)kc * 64 : NULL)
    size_t m = 0;
    if (nv == LRT_NRV)
        for (; m + LRT_MR <= mc; m += LRT_MR)
            LRT_FN(tile)(LRT_MR, LRT_NRV, bf, kc, a + m * lda, lda, b, bidx, c + m * ldc, ldc, in, from_c, PF(m));
    if (nv == LRT_NRV && m < mc) {
        const float *ar = a + m * lda;
        float *cr = c + m * ldc;
        switch (mc - m) {
#define LRT_REM(r) case r: LRT_FN(tile)(r, LRT_NRV, bf, kc, ar, lda, b, bidx, cr, ldc, in, from_c, PF(m)); break;
        LRT_REM(1) LRT_REM(2) LRT_REM(3)
#if LRT_MR > 4
        LRT_REM(4) LRT_REM(5)
#endif
#if LRT_MR > 6
        LRT_REM(6) LRT_REM(7)
#endif
#undef LRT_REM
        default: break;
        }
        m = mc;
    }
    for (; m < mc; m += LRT_MR)
        LRT_FN(tile)(mc - m < LRT_MR ? (int)(mc - m) : LRT_MR, nv, bf, kc, a + m * lda, lda, b, bidx,
                     c + m * ldc, ldc, in, from_c, PF(m));
#undef PF
}

/* C[m][j0..j1) = init[j0..j1) (or 0) + A[m][0..K) @ B[0..K)[j0..j1), j0 and j1 multiples of V.
 * bf: B holds bf16 (a constant after inlining).  back: the sweep direction of a single row.
 * widened: NULL, or LRT_BF16_BLOCK floats where a bf16 K block is widened to float32 once for
 * all the row tiles that use it (widening in every tile made bf16 slower than float32). */
static LRT_TARGET LRT_INLINE void LRT_FN(gemm_core)(const int bf, size_t M, const lrt_pmat *B, int j0, int j1,
                                                    const float *A, size_t lda, float *C, size_t ldc,
                                                    const float *init, int back, float *widened)
{
    const int K = B->k;
    const size_t pstride = (size_t)K * P;   /* elements per panel */
    if (M == 1) {
        LRT_FN(gemv)(bf, B, j0, j1, A, C, init, back);
        return;
    }
    for (size_t m0 = 0; m0 < M; m0 += LRT_MC) {
        const size_t mc = M - m0 < LRT_MC ? M - m0 : LRT_MC;
        for (int j = j0; j < j1;) {
            const int c0 = j % P, w = P - c0 < j1 - j ? P - c0 : j1 - j;
            const size_t pbase = (size_t)(j / P) * pstride;
            for (int cc = c0; cc < c0 + w; cc += NR) {
                const int nv = (c0 + w - cc < NR ? c0 + w - cc : NR) / V;
                const int col = j - c0 + cc;
                for (int k0 = 0; k0 < K; k0 += LRT_KC) {
                    const int kc = K - k0 < LRT_KC ? K - k0 : LRT_KC;
                    const size_t bidx = pbase + (size_t)k0 * P + (size_t)cc;
                    const float *in = (k0 == 0 && init) ? init + col : NULL;
                    const float *a = A + m0 * lda + (size_t)k0;
                    float *c = C + m0 * ldc + (size_t)col;
                    if (bf && widened && mc > LRT_MR) {
                        for (int k = 0; k < kc; k++)
                            for (int v = 0; v < nv; v++)
                                vf_store(widened + (size_t)k * P + (size_t)(cc + v * V),
                                         vf_load_bf16((const uint16_t *)B->data + bidx + (size_t)k * P + v * V));
                        LRT_FN(row_tiles)(0, mc, nv, kc, a, lda, widened, (size_t)cc, c, ldc, in, k0 > 0, NULL, 0);
                    } else {
                        /* next: the panel's following K block, or the next panel's first (both
                         * contiguous), prefetched while the first column tile of this one runs */
                        const size_t esz = bf ? sizeof(uint16_t) : sizeof(float);
                        const char *next = (const char *)B->data + (pbase + (size_t)(k0 + kc) * P) * esz;
                        LRT_FN(row_tiles)(bf, mc, nv, kc, a, lda, B->data, bidx, c, ldc, in, k0 > 0, next,
                                          cc == c0 ? (size_t)kc * P * esz / 64 : 0);
                    }
                }
            }
            j += w;
        }
    }
}

static LRT_TARGET void LRT_FN(gemm_f32)(size_t M, const lrt_pmat *B, int j0, int j1, const float *A,
                                        size_t lda, float *C, size_t ldc, const float *init, int back)
{
    LRT_FN(gemm_core)(0, M, B, j0, j1, A, lda, C, ldc, init, back, NULL);
}

static LRT_TARGET void LRT_FN(gemm_bf16)(size_t M, const lrt_pmat *B, int j0, int j1, const float *A,
                                         size_t lda, float *C, size_t ldc, const float *init, int back,
                                         float *widened)
{
    LRT_FN(gemm_core)(1, M, B, j0, j1, A, lda, C, ldc, init, back, widened);
}

/* Columns of a product: `blocks` ranges [j0, j1), [j0 + stride, j1 + stride)...  A team member's
 * units take one range in each gate block; alone, a call has one range. */
typedef struct {
    int j0, j1, blocks, stride;
} lrt_cols;

static inline lrt_cols LRT_FN(cols)(int j0, int j1, int blocks, int stride)
{
    lrt_cols c = {j0, j1, blocks, stride};
    if (blocks > 1 && j1 - j0 == stride) {   /* whole blocks side by side: one range */
        c.j1 = j0 + blocks * stride;
        c.blocks = 1;
    }
    return c;
}

/* columns of the i-th range the product visits (the ranges in reverse order when back) */
static inline void LRT_FN(range_of)(lrt_cols c, int i, int back, int *j0, int *j1)
{
    const int k = back ? c.blocks - 1 - i : i;
    *j0 = c.j0 + k * c.stride;
    *j1 = c.j1 + k * c.stride;
}

/* The product in the weights' precision, over the column ranges c (in reverse order when back).
 * scratch: lrt_ws_scratch_floats() floats (int8 rows quantized once for all the ranges, bf16
 * blocks widened).  back: sweep a single row's product from the last panel to the first (gemv). */
static LRT_TARGET void LRT_FN(gemm)(const struct lrt_weights *w, const lrt_pmat *B, size_t M, lrt_cols c,
                                    const float *A, size_t lda, float *C, size_t ldc, const float *init,
                                    float *scratch, int back)
{
    int j0, j1;
    if (w->precision == LRT_PREC_F32) {
        for (int i = 0; i < c.blocks; i++) {
            LRT_FN(range_of)(c, i, back, &j0, &j1);
            LRT_FN(gemm_f32)(M, B, j0, j1, A, lda, C, ldc, init, back);
        }
    } else if (w->precision == LRT_PREC_BF16) {
        /* the widened block is read by every row tile: start it on a cache line */
        float *block = scratch + (16 - (uintptr_t)scratch / sizeof(float) % 16) % 16;
        for (int i = 0; i < c.blocks; i++) {
            LRT_FN(range_of)(c, i, back, &j0, &j1);
            LRT_FN(gemm_bf16)(M, B, j0, j1, A, lda, C, ldc, init, back, block);
        }
    } else {
        float *sa = scratch;
        uint8_t *qa = (uint8_t *)(void *)(scratch + LRT_QROWS);
        for (size_t m0 = 0; m0 < M; m0 += LRT_QROWS) {
            const size_t mc = M - m0 < LRT_QROWS ? M - m0 : LRT_QROWS;
#ifdef LRT_PATH_AVX512
            if (w->vnni) {
                for (size_t m = 0; m < mc; m++)
                    sa[m] = lrt_quantize_row_avx512(A + (m0 + m) * lda, B->k, B->k4, qa + m * (size_t)B->k4);
                for (int i = 0; i < c.blocks; i++) {
                    LRT_FN(range_of)(c, i, back, &j0, &j1);
                    lrt_gemm_i8_vnni(mc, B, P, j0, j1, qa, sa, C + m0 * ldc, ldc, init);
                }
                continue;
            }
#endif
            for (size_t m = 0; m < mc; m++)
                sa[m] = lrt_quantize_row(A + (m0 + m) * lda, B->k, B->k4, qa + m * (size_t)B->k4);
            for (int i = 0; i < c.blocks; i++) {
                LRT_FN(range_of)(c, i, back, &j0, &j1);
                lrt_gemm_i8_ref(mc, B, P, j0, j1, qa, sa, C + m0 * ldc, ldc, init);
            }
        }
    }
}

/* exp(x) = 2^n * e^r with |r| <= ln2/2 and a degree-7 Taylor polynomial;
 * relative error below 2e-7 for x in [-87, 88.7]; inputs are clamped to [-87, 89], where the
 * top (n = 128) overflows to +inf as exp does, so that sigmoid(-inf) is exactly 0.
 * vf_min/vf_max return their second operand when either is NaN (x86 minps/maxps), so the
 * value goes second everywhere: NaN in, NaN out, at no extra cost. */
static LRT_INLINE LRT_TARGET vf LRT_FN(v_exp)(vf x)
{
    x = vf_min(vf_set1(89.0f), vf_max(vf_set1(-87.0f), x));
    vf n = vf_round(vf_mul(x, vf_set1(1.44269504088896341f)));
    vf r = vf_fma(n, vf_set1(-0.693145751953125f), x);      /* ln2, high part (exact) */
    r = vf_fma(n, vf_set1(-1.42860682030941723e-6f), r);    /* ln2, low part */
    vf p = vf_set1(1.f / 5040.f);
    p = vf_fma(p, r, vf_set1(1.f / 720.f));
    p = vf_fma(p, r, vf_set1(1.f / 120.f));
    p = vf_fma(p, r, vf_set1(1.f / 24.f));
    p = vf_fma(p, r, vf_set1(1.f / 6.f));
    p = vf_fma(p, r, vf_set1(0.5f));
    p = vf_fma(p, r, vf_set1(1.f));
    p = vf_fma(p, r, vf_set1(1.f));
    return vf_mul(p, vf_pow2i(n));
}

/* Absolute error below 3e-7 everywhere (tests/test_kernel.py measures it). */
static LRT_INLINE LRT_TARGET vf LRT_FN(v_sigmoid)(vf x)
{
    /* 1 / (1 + inf) must be 0, not a tiny number: 0 * inf is NaN downstream, as in IEEE */
    return vf_fastdiv_to_inf(vf_set1(1.f), vf_add(vf_set1(1.f), LRT_FN(v_exp)(vf_sub(vf_set1(0.f), x))));
}

/* tanh(|x|) = (1 - e^-2|x|) / (1 + e^-2|x|): never overflows; sign restored after. */
static LRT_INLINE LRT_TARGET vf LRT_FN(v_tanh)(vf x)
{
    vf t = LRT_FN(v_exp)(vf_mul(vf_set1(-2.f), vf_abs(x)));
    vf y = vf_fastdiv(vf_sub(vf_set1(1.f), t), vf_add(vf_set1(1.f), t));
    return vf_copysign(y, x);
}

static LRT_INLINE LRT_TARGET vf LRT_FN(v_act)(const lrt_activation *a, vf x)
{
    switch (a->kind) {
    case LRT_ACT_SIGMOID: return LRT_FN(v_sigmoid)(x);
    case LRT_ACT_TANH: return LRT_FN(v_tanh)(x);
    case LRT_ACT_RELU: return vf_max(vf_set1(0.f), x);   /* NaN stays NaN */
    default: {
        /* rare activations: lane by lane; speed is not their concern */
        float lanes[V];
        vf_store(lanes, x);
        for (int i = 0; i < V; i++) lanes[i] = lrt_act_scalar(a->kind, a->alpha, a->beta, lanes[i]);
        return vf_load(lanes);
    }
    }
}

static LRT_INLINE LRT_TARGET vf LRT_FN(v_clip)(const lrt_cell_desc *d, vf x)
{
    if (!d->has_clip) return x;
    return vf_min(vf_set1(d->clip), vf_max(vf_set1(-d->clip), x));   /* NaN stays NaN */
}

/* pre-activation of gate block `gate` at lane j: input projection (bias included) + recurrent product */
#define PRE(gate) vf_add(vf_load(xp + (gate) * hp + j), vf_load(g + (gate) * hp + j))

/* ONNX's default cell: activations sigmoid then tanh, no clip, peepholes or input_forget.
 * Its rows are compiled apart (`plain`, a constant after inlining): the general rows switch on
 * each activation and spill around it, which cost the batch workload ~10% of its time. */
static inline int LRT_FN(plain_cell)(const struct lrt_weights *w)
{
    const lrt_cell_desc *d = &w->desc;
    const int32_t *k = (const int32_t[]){d->act[0].kind, d->act[1].kind, d->act[2].kind};
    if (d->has_clip || w->peep || d->input_forget || k[0] != LRT_ACT_SIGMOID || k[1] != LRT_ACT_TANH)
        return 0;
    return d->cell == LRT_GRU || (d->cell == LRT_LSTM && k[2] == LRT_ACT_TANH);
}

/* gate activation `slot` of the description, clip first: with `plain`, sigmoid (slot 0) or tanh */
#define ACT(slot, x) (plain ? ((slot) == 0 ? LRT_FN(v_sigmoid)(x) : LRT_FN(v_tanh)(x)) \
                            : LRT_FN(v_act)(&d->act[slot], LRT_FN(v_clip)(d, x)))

/* LSTM, ONNX gate order i,o,f,c; peepholes P[i,o,f]. */
static LRT_TARGET LRT_INLINE void LRT_FN(lstm_row_as)(const int plain, const struct lrt_weights *w, const float *xp,
                                                      const float *g, float *h, float *c, int u0, int u1)
{
    const lrt_cell_desc *d = &w->desc;
    const int hp = w->hp;
    for (int j = u0; j < u1; j += V) {
        vf c_prev = vf_load(c + j);
        vf gi = PRE(0), go = PRE(1), gf = PRE(2), gc = PRE(3);
        if (!plain && w->peep) {
            gi = vf_fma(vf_load(w->peep + j), c_prev, gi);
            gf = vf_fma(vf_load(w->peep + 2 * hp + j), c_prev, gf);
        }
        vf i = ACT(0, gi);
        vf f = !plain && d->input_forget ? vf_sub(vf_set1(1.f), i) : ACT(0, gf);
        vf cand = ACT(1, gc);
        vf c_new = vf_fma(f, c_prev, vf_mul(i, cand));
        if (!plain && w->peep) go = vf_fma(vf_load(w->peep + hp + j), c_new, go);
        vf o = ACT(0, go);
        vf_store(c + j, c_new);
        /* the cell output is not clipped */
        vf_store(h + j, vf_mul(o, plain ? LRT_FN(v_tanh)(c_new) : LRT_FN(v_act)(&d->act[2], c_new)));
    }
}

/* units [u0, u1) of one row: c updated in place, the new h written to h */
static LRT_TARGET void LRT_FN(lstm_row)(const struct lrt_weights *w, const float *xp, const float *g,
                                        float *h, float *c, int u0, int u1)
{
    if (LRT_FN(plain_cell)(w))
        LRT_FN(lstm_row_as)(1, w, xp, g, h, c, u0, u1);
    else
        LRT_FN(lstm_row_as)(0, w, xp, g, h, c, u0, u1);
}

static LRT_TARGET void LRT_FN(rnn_row)(const struct lrt_weights *w, const float *xp, const float *g, float *h,
                                       int u0, int u1)
{
    const int hp = w->hp;
    for (int j = u0; j < u1; j += V)
        vf_store(h + j, LRT_FN(v_act)(&w->desc.act[0], LRT_FN(v_clip)(&w->desc, PRE(0))));
}

/* GRU, ONNX gate order z,r,h.  Writes the activated z over its block of g and
 * returns r in `r_out`; the caller finishes the candidate. */
static LRT_TARGET LRT_INLINE void LRT_FN(gru_zr_row_as)(const int plain, const struct lrt_weights *w,
                                                        const float *xp, float *g, float *r_out, int u0, int u1)
{
    const lrt_cell_desc *d = &w->desc;
    const int hp = w->hp;
    for (int j = u0; j < u1; j += V) {
        vf z = ACT(0, PRE(0));
        vf r = ACT(0, PRE(1));
        vf_store(g + j, z);
        vf_store(r_out + j, r);
    }
}

static LRT_TARGET void LRT_FN(gru_zr_row)(const struct lrt_weights *w, const float *xp, float *g, float *r_out,
                                          int u0, int u1)
{
    if (LRT_FN(plain_cell)(w))
        LRT_FN(gru_zr_row_as)(1, w, xp, g, r_out, u0, u1);
    else
        LRT_FN(gru_zr_row_as)(0, w, xp, g, r_out, u0, u1);
}

/* h = (1-z)*cand + z*h_prev.  With linear_before_reset the candidate is
 * g(xh + bh + r*(h_prev@Rh + Rbh)); without, g holds (r*h_prev)@Rh already. */
static LRT_TARGET LRT_INLINE void LRT_FN(gru_h_row_as)(const int plain, const struct lrt_weights *w, const float *xp,
                                                       const float *g, const float *r, const float *h_prev,
                                                       float *h, int u0, int u1)
{
    const lrt_cell_desc *d = &w->desc;
    const int hp = w->hp;
    for (int j = u0; j < u1; j += V) {
        vf pre;
        if (d->linear_before_reset) {
            vf rec = vf_add(vf_load(g + 2 * hp + j), vf_load(w->rbh + j));
            pre = vf_fma(vf_load(r + j), rec, vf_load(xp + 2 * hp + j));
        } else {
            pre = PRE(2);
        }
        vf cand = ACT(1, pre);
        vf z = vf_load(g + j), hj = vf_load(h_prev + j);
        vf_store(h + j, vf_fma(z, vf_sub(hj, cand), cand));
    }
}

/* units [u0, u1) of one row: h from h_prev (the same buffer when alone) */
static LRT_TARGET void LRT_FN(gru_h_row)(const struct lrt_weights *w, const float *xp, const float *g,
                                         const float *r, const float *h_prev, float *h, int u0, int u1)
{
    if (LRT_FN(plain_cell)(w))
        LRT_FN(gru_h_row_as)(1, w, xp, g, r, h_prev, h, u0, u1);
    else
        LRT_FN(gru_h_row_as)(0, w, xp, g, r, h_prev, h, u0, u1);
}
#undef ACT
#undef PRE

/* the time step row b of the slice handles at step s, or -1 once its sequence has ended */
static inline int LRT_FN(time_of)(const int32_t *seq_lens, int T, int reverse, int b, int s)
{
    int len = seq_lens ? seq_lens[b] : T;
    if (s >= len) return -1;
    return reverse ? len - 1 - s : s;
}

/* Input projections are computed for up to this many rows (steps x slice rows)
 * at a time when every sequence has the full length, so they are still in
 * cache when the steps read them; with sequence lengths, all steps at once. */
#define LRT_XROWS 128

typedef struct {
    const int32_t *seq_lens;   /* of the slice, or NULL */
    int T, reverse, rows;
    int xlo, xhi;              /* steps whose input projection xproj holds now */
    int u0, u1;                /* the units this call computes: all [0, hp), or a team member's */
    float *scratch;
    lrt_member *member;        /* NULL when alone */
} LRT_FN(slice);

static inline const float *LRT_FN(xp_row)(const LRT_FN(slice) *sl, const float *xproj, int n, int t, int b)
{
    return xproj + ((size_t)(t - sl->xlo) * sl->rows + b) * n;
}

/* the slice's units in the first `gates` gate blocks */
static inline lrt_cols LRT_FN(unit_cols)(const struct lrt_weights *w, const LRT_FN(slice) *sl, int gates)
{
    return LRT_FN(cols)(sl->u0, sl->u1, gates, w->hp);
}

/* xproj rows for steps [lo, hi) of rows [b0, b0 + rows) of the batch: bias + x @ W^T */
static LRT_TARGET void LRT_FN(input_proj)(const struct lrt_weights *w, const lrt_run_args *a, int32_t b0,
                                          LRT_FN(slice) *sl, float *xproj, int lo, int hi, int back)
{
    const int Ball = a->batch, B = sl->rows, I = w->desc.input_size, n = w->n;
    const lrt_cols cols = LRT_FN(unit_cols)(w, sl, w->gates);
    if (B == Ball)   /* the whole batch: its steps are contiguous rows of x */
        LRT_FN(gemm)(w, &w->wt, (size_t)(hi - lo) * B, cols, a->x + (size_t)lo * B * I, (size_t)I, xproj, n,
                     w->bias, sl->scratch, back);
    else             /* a slice: contiguous within each step */
        for (int t = lo; t < hi; t++)
            LRT_FN(gemm)(w, &w->wt, (size_t)B, cols, a->x + ((size_t)t * Ball + b0) * I, (size_t)I,
                         xproj + (size_t)(t - lo) * B * n, n, w->bias, sl->scratch, back);
    sl->xlo = lo;
    sl->xhi = hi;
}

/* gate blocks of the recurrent product that only need h_prev: all, but GRU's candidate without
 * linear_before_reset, which needs r*h_prev (gru_rows computes it) */
static inline int LRT_FN(first_product_gates)(const struct lrt_weights *w)
{
    return w->desc.cell == LRT_GRU && !w->desc.linear_before_reset ? 2 : w->gates;
}

/* GRU rows of step s, g holding first_product_gates of h_prev @ R^T; the new h goes to h */
static LRT_TARGET void LRT_FN(gru_rows)(const struct lrt_weights *w, const LRT_FN(slice) *sl, int s,
                                        const float *xproj, float *g, const float *h_prev, float *h, float *rh,
                                        int back)
{
    const int B = sl->rows, hp = w->hp, n = w->n, u0 = sl->u0, u1 = sl->u1;
    const int lbr = w->desc.linear_before_reset;
    for (int b = 0; b < B; b++) {
        int t = LRT_FN(time_of)(sl->seq_lens, sl->T, sl->reverse, b, s);
        if (t < 0) continue;
        float *r = rh + (size_t)b * hp;
        LRT_FN(gru_zr_row)(w, LRT_FN(xp_row)(sl, xproj, n, t, b), g + (size_t)b * n, r, u0, u1);
        if (!lbr)   /* reset applied before the recurrent product: r*h_prev */
            for (int j = u0; j < u1; j += V)
                vf_store(r + j, vf_mul(vf_load(r + j), vf_load(h_prev + (size_t)b * hp + j)));
    }
    if (!lbr) {
        if (sl->member) lrt_team_wait(sl->member);   /* the product reads every unit of r*h_prev */
        LRT_FN(gemm)(w, &w->rt, (size_t)B, LRT_FN(cols)(2 * hp + u0, 2 * hp + u1, 1, 0), rh, hp, g, n, NULL,
                     sl->scratch, back);
    }
    for (int b = 0; b < B; b++) {
        int t = LRT_FN(time_of)(sl->seq_lens, sl->T, sl->reverse, b, s);
        if (t < 0) continue;
        const size_t row = (size_t)b * hp;
        LRT_FN(gru_h_row)(w, LRT_FN(xp_row)(sl, xproj, n, t, b), g + (size_t)b * n, rh + row, h_prev + row,
                          h + row, u0, u1);
    }
}

/* copy units [u0, u1) of `rows` rows between row strides (floats), the part below `limit` */
static void LRT_FN(copy_units)(float *dst, size_t dst_stride, const float *src, size_t src_stride, int rows,
                               int u0, int u1, int limit)
{
    const int hi = u1 < limit ? u1 : limit;
    if (hi > u0)
        for (int b = 0; b < rows; b++)
            memcpy(dst + (size_t)b * dst_stride + u0, src + (size_t)b * src_stride + u0,
                   (size_t)(hi - u0) * sizeof(float));
}

/* the state of the slice's units in (padded lanes zero: they are never read by a product) */
static void LRT_FN(state_in)(float *buf, const float *state, int rows, int H, int hp, int u0, int u1)
{
    LRT_FN(copy_units)(buf, (size_t)hp, state, (size_t)H, rows, u0, u1, H);
    const int lo = u0 > H ? u0 : H;
    if (u1 > lo)
        for (int b = 0; b < rows; b++) memset(buf + (size_t)b * hp + lo, 0, (size_t)(u1 - lo) * sizeof(float));
}

/* Runs rows [b0, b1) of the batch with workspace ws (lrt_ws_plan(w, b1 - b0, steps, m != NULL)
 * floats), alone or as team member m (internal.h).
 * sweep: in, the direction of this call's first single-row weight sweep (1 = back);
 * out, the direction the next call should start with. */
int LRT_FN(lrt_run)(const struct lrt_weights *w, const lrt_run_args *a, int32_t b0, int32_t b1, float *ws,
                    int *sweep, lrt_member *m)
{
    const lrt_cell_desc *d = &w->desc;
    const int B = b1 - b0, T = a->steps, H = d->hidden_size;
    const int hp = w->hp, n = w->n;
    const int is_lstm = d->cell == LRT_LSTM;
    lrt_ws_layout L = lrt_ws_plan(w, B, T, m != NULL);
    float *xproj = ws + L.xproj, *g = ws + L.gates, *cb = ws + L.c, *rh = ws + L.rh;
    /* h_prev and the h a step writes: one buffer alone, two in a team (swapped each step) */
    float *hb = ws + L.h, *hnew = m ? ws + L.h2 : hb;
    float *h = a->h + (size_t)b0 * H, *c = is_lstm ? a->c + (size_t)b0 * H : NULL;
    float *y = a->y ? a->y + (size_t)b0 * H : NULL;
    LRT_FN(slice) sl;
    sl.seq_lens = a->seq_lens ? a->seq_lens + b0 : NULL;
    sl.T = T; sl.reverse = a->reverse; sl.rows = B;
    sl.scratch = m ? m->scratch : ws + L.scratch;
    sl.member = m;
    sl.u0 = m ? m->u0 : 0;
    sl.u1 = m ? m->u1 : hp;
    sl.xlo = sl.xhi = 0;
    const int u0 = sl.u0, u1 = sl.u1;
    int uniform = 1;   /* every sequence of the slice runs all T steps */
    if (sl.seq_lens)
        for (int b = 0; b < B; b++) uniform &= sl.seq_lens[b] == T;
    const int tc = !uniform ? T : B >= LRT_XROWS ? 1 : (LRT_XROWS / B < T ? LRT_XROWS / B : T);

    LRT_FN(state_in)(hb, h, B, H, hp, u0, u1);
    if (is_lstm) LRT_FN(state_in)(cb, c, B, H, hp, u0, u1);
    if (m) lrt_team_wait(m);   /* every unit of h is in before a product reads it */
    if (!uniform) {
        LRT_FN(input_proj)(w, a, b0, &sl, xproj, 0, T, 0);
        if (y)   /* steps past a sequence's end read as zeros */
            for (int b = 0; b < B; b++)
                for (int t = sl.seq_lens[b]; t < T; t++) {
                    const int hi = u1 < H ? u1 : H;
                    if (hi > u0) memset(y + t * a->y_step_stride + (size_t)b * H + u0, 0, (size_t)(hi - u0) * sizeof(float));
                }
    }

    /* Single-row products alternate their sweep direction (see gemv).  One step reads W then R
     * forward, or R then W backward, so consecutive calls trace one snake through both. */
    int back = *sweep;
    const int one_step = T == 1;
    for (int s = 0; s < T; s++) {
        int late = 0;   /* input projection after the recurrent product */
        if (uniform) {   /* the next chunk of steps, in the order they run */
            const int t = a->reverse ? T - 1 - s : s;
            if (t < sl.xlo || t >= sl.xhi) {
                const int lo = a->reverse ? (t + 1 - tc < 0 ? 0 : t + 1 - tc) : t;
                const int hi = a->reverse ? t + 1 : (t + tc > T ? T : t + tc);
                late = one_step && back;
                if (!late) LRT_FN(input_proj)(w, a, b0, &sl, xproj, lo, hi, back);
                else sl.xlo = lo, sl.xhi = hi;
            }
        }
        LRT_FN(gemm)(w, &w->rt, (size_t)B, LRT_FN(unit_cols)(w, &sl, LRT_FN(first_product_gates)(w)), hb, hp, g, n,
                     NULL, sl.scratch, back);
        if (late) LRT_FN(input_proj)(w, a, b0, &sl, xproj, sl.xlo, sl.xhi, back);
        if (d->cell == LRT_GRU) {
            LRT_FN(gru_rows)(w, &sl, s, xproj, g, hb, hnew, rh, back);
        } else {
            for (int b = 0; b < B; b++) {
                int t = LRT_FN(time_of)(sl.seq_lens, T, sl.reverse, b, s);
                if (t < 0) continue;
                const float *xp = LRT_FN(xp_row)(&sl, xproj, n, t, b);
                if (is_lstm)
                    LRT_FN(lstm_row)(w, xp, g + (size_t)b * n, hnew + (size_t)b * hp, cb + (size_t)b * hp, u0, u1);
                else
                    LRT_FN(rnn_row)(w, xp, g + (size_t)b * n, hnew + (size_t)b * hp, u0, u1);
            }
        }
        for (int b = 0; b < B; b++) {
            int t = LRT_FN(time_of)(sl.seq_lens, T, sl.reverse, b, s);
            if (t < 0) {   /* ended: its h stays, in whichever buffer the next step reads */
                if (hnew != hb) LRT_FN(copy_units)(hnew + (size_t)b * hp, 0, hb + (size_t)b * hp, 0, 1, u0, u1, hp);
            } else if (y) {
                LRT_FN(copy_units)(y + t * a->y_step_stride + (size_t)b * H, 0, hnew + (size_t)b * hp, 0, 1, u0, u1, H);
            }
        }
        if (m) {   /* every member's h is written before the next product reads it */
            lrt_team_wait(m);
            float *swap = hb;
            hb = hnew;
            hnew = swap;
        }
        if (!one_step) back = !back;
    }
    *sweep = one_step ? !back : back;
    LRT_FN(copy_units)(h, (size_t)H, hb, (size_t)hp, B, u0, u1, H);
    if (is_lstm) LRT_FN(copy_units)(c, (size_t)H, cb, (size_t)hp, B, u0, u1, H);
    return LRT_OK;
}
#undef V
#undef P
#undef NR
#undef PV
