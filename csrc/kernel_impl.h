/* kernel_impl.h — the recurrent kernel, written once against the vf mapping
 * (simd_*.h).  Each kernel_<path>.c includes a mapping and then this file, so
 * every path runs the same algorithm; only the vector width differs.
 *
 * Data flow of one lrt_run call:
 *   1. xproj = X @ W^T for every step at once (one GEMM, M = steps*batch)
 *   2. per step: gates = h @ R^T (one GEMM, M = batch), then the gate
 *      nonlinearities and state update fused in one pass over each row.
 */
#include <string.h>
#include "internal.h"

#define V LRT_VLEN

/* C[M][N] = A[M][K] @ Bm[K][N] (row-major, N a multiple of V). */
static LRT_TARGET void LRT_FN(gemm)(size_t M, int N, int K, const float *A, size_t lda,
                                    const float *Bm, size_t ldb, float *C, size_t ldc)
{
    size_t m = 0;
    for (; m + 4 <= M; m += 4) {
        const float *a0 = A + m * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        float *c0 = C + m * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        int j = 0;
        for (; j + 2 * V <= N; j += 2 * V) {
            vf s00 = vf_set1(0.f), s01 = s00, s10 = s00, s11 = s00;
            vf s20 = s00, s21 = s00, s30 = s00, s31 = s00;
            const float *bp = Bm + j;
            for (int k = 0; k < K; k++, bp += ldb) {
                vf b0 = vf_load(bp), b1 = vf_load(bp + V), x;
                x = vf_set1(a0[k]); s00 = vf_fma(x, b0, s00); s01 = vf_fma(x, b1, s01);
                x = vf_set1(a1[k]); s10 = vf_fma(x, b0, s10); s11 = vf_fma(x, b1, s11);
                x = vf_set1(a2[k]); s20 = vf_fma(x, b0, s20); s21 = vf_fma(x, b1, s21);
                x = vf_set1(a3[k]); s30 = vf_fma(x, b0, s30); s31 = vf_fma(x, b1, s31);
            }
            vf_store(c0 + j, s00); vf_store(c0 + j + V, s01);
            vf_store(c1 + j, s10); vf_store(c1 + j + V, s11);
            vf_store(c2 + j, s20); vf_store(c2 + j + V, s21);
            vf_store(c3 + j, s30); vf_store(c3 + j + V, s31);
        }
        for (; j < N; j += V) {
            vf s0 = vf_set1(0.f), s1 = s0, s2 = s0, s3 = s0;
            const float *bp = Bm + j;
            for (int k = 0; k < K; k++, bp += ldb) {
                vf b0 = vf_load(bp);
                s0 = vf_fma(vf_set1(a0[k]), b0, s0);
                s1 = vf_fma(vf_set1(a1[k]), b0, s1);
                s2 = vf_fma(vf_set1(a2[k]), b0, s2);
                s3 = vf_fma(vf_set1(a3[k]), b0, s3);
            }
            vf_store(c0 + j, s0); vf_store(c1 + j, s1); vf_store(c2 + j, s2); vf_store(c3 + j, s3);
        }
    }
    for (; m < M; m++) {
        const float *a0 = A + m * lda;
        float *c0 = C + m * ldc;
        int j = 0;
        /* one row: four independent accumulators hide the FMA latency */
        for (; j + 4 * V <= N; j += 4 * V) {
            vf s0 = vf_set1(0.f), s1 = s0, s2 = s0, s3 = s0;
            const float *bp = Bm + j;
            for (int k = 0; k < K; k++, bp += ldb) {
                vf x = vf_set1(a0[k]);
                s0 = vf_fma(x, vf_load(bp), s0);
                s1 = vf_fma(x, vf_load(bp + V), s1);
                s2 = vf_fma(x, vf_load(bp + 2 * V), s2);
                s3 = vf_fma(x, vf_load(bp + 3 * V), s3);
            }
            vf_store(c0 + j, s0); vf_store(c0 + j + V, s1);
            vf_store(c0 + j + 2 * V, s2); vf_store(c0 + j + 3 * V, s3);
        }
        for (; j < N; j += V) {
            vf s0 = vf_set1(0.f);
            const float *bp = Bm + j;
            for (int k = 0; k < K; k++, bp += ldb)
                s0 = vf_fma(vf_set1(a0[k]), vf_load(bp), s0);
            vf_store(c0 + j, s0);
        }
    }
}

/* exp(x) = 2^n * e^r with |r| <= ln2/2 and a degree-7 Taylor polynomial;
 * relative error below 2e-7 for x in [-87, 88] (inputs are clamped there). */
static inline LRT_TARGET vf LRT_FN(v_exp)(vf x)
{
    x = vf_min(vf_max(x, vf_set1(-87.0f)), vf_set1(88.0f));
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
static inline LRT_TARGET vf LRT_FN(v_sigmoid)(vf x)
{
    return vf_div(vf_set1(1.f), vf_add(vf_set1(1.f), LRT_FN(v_exp)(vf_sub(vf_set1(0.f), x))));
}

/* tanh(|x|) = (1 - e^-2|x|) / (1 + e^-2|x|): never overflows; sign restored after. */
static inline LRT_TARGET vf LRT_FN(v_tanh)(vf x)
{
    vf t = LRT_FN(v_exp)(vf_mul(vf_set1(-2.f), vf_abs(x)));
    vf y = vf_div(vf_sub(vf_set1(1.f), t), vf_add(vf_set1(1.f), t));
    return vf_copysign(y, x);
}

static inline LRT_TARGET vf LRT_FN(v_act)(const lrt_activation *a, vf x)
{
    switch (a->kind) {
    case LRT_ACT_SIGMOID: return LRT_FN(v_sigmoid)(x);
    case LRT_ACT_TANH: return LRT_FN(v_tanh)(x);
    case LRT_ACT_RELU: return vf_max(x, vf_set1(0.f));
    default: {
        /* rare activations: lane by lane; speed is not their concern */
        float lanes[V];
        vf_store(lanes, x);
        for (int i = 0; i < V; i++) lanes[i] = lrt_act_scalar(a->kind, a->alpha, a->beta, lanes[i]);
        return vf_load(lanes);
    }
    }
}

static inline LRT_TARGET vf LRT_FN(v_clip)(const lrt_cell_desc *d, vf x)
{
    if (!d->has_clip) return x;
    return vf_min(vf_max(x, vf_set1(-d->clip)), vf_set1(d->clip));
}

/* pre-activation of gate block `gate` at lane j: input projection + recurrent product + bias */
#define PRE(gate) vf_add(vf_add(vf_load(xp + (gate) * hp + j), vf_load(g + (gate) * hp + j)), \
                         vf_load(w->bias + (gate) * hp + j))

/* LSTM, ONNX gate order i,o,f,c; peepholes P[i,o,f]. */
static LRT_TARGET void LRT_FN(lstm_row)(const struct lrt_weights *w, const float *xp, const float *g,
                                        float *h, float *c)
{
    const lrt_cell_desc *d = &w->desc;
    const int hp = w->hp;
    for (int j = 0; j < hp; j += V) {
        vf c_prev = vf_load(c + j);
        vf gi = PRE(0), go = PRE(1), gf = PRE(2), gc = PRE(3);
        if (w->peep) {
            gi = vf_fma(vf_load(w->peep + j), c_prev, gi);
            gf = vf_fma(vf_load(w->peep + 2 * hp + j), c_prev, gf);
        }
        vf i = LRT_FN(v_act)(&d->act[0], LRT_FN(v_clip)(d, gi));
        vf f = d->input_forget ? vf_sub(vf_set1(1.f), i)
                               : LRT_FN(v_act)(&d->act[0], LRT_FN(v_clip)(d, gf));
        vf cand = LRT_FN(v_act)(&d->act[1], LRT_FN(v_clip)(d, gc));
        vf c_new = vf_fma(f, c_prev, vf_mul(i, cand));
        if (w->peep) go = vf_fma(vf_load(w->peep + hp + j), c_new, go);
        vf o = LRT_FN(v_act)(&d->act[0], LRT_FN(v_clip)(d, go));
        vf_store(c + j, c_new);
        vf_store(h + j, vf_mul(o, LRT_FN(v_act)(&d->act[2], c_new)));
    }
}

static LRT_TARGET void LRT_FN(rnn_row)(const struct lrt_weights *w, const float *xp, const float *g, float *h)
{
    const int hp = w->hp;
    for (int j = 0; j < hp; j += V)
        vf_store(h + j, LRT_FN(v_act)(&w->desc.act[0], LRT_FN(v_clip)(&w->desc, PRE(0))));
}

/* GRU, ONNX gate order z,r,h.  Writes the activated z over its block of g and
 * returns r in `r_out`; the caller finishes the candidate. */
static LRT_TARGET void LRT_FN(gru_zr_row)(const struct lrt_weights *w, const float *xp, float *g, float *r_out)
{
    const lrt_cell_desc *d = &w->desc;
    const int hp = w->hp;
    for (int j = 0; j < hp; j += V) {
        vf z = LRT_FN(v_act)(&d->act[0], LRT_FN(v_clip)(d, PRE(0)));
        vf r = LRT_FN(v_act)(&d->act[0], LRT_FN(v_clip)(d, PRE(1)));
        vf_store(g + j, z);
        vf_store(r_out + j, r);
    }
}

/* h = (1-z)*cand + z*h_prev.  With linear_before_reset the candidate is
 * g(xh + bh + r*(h_prev@Rh + Rbh)); without, g holds (r*h_prev)@Rh already. */
static LRT_TARGET void LRT_FN(gru_h_row)(const struct lrt_weights *w, const float *xp, const float *g,
                                         const float *r, float *h)
{
    const lrt_cell_desc *d = &w->desc;
    const int hp = w->hp;
    for (int j = 0; j < hp; j += V) {
        vf pre;
        if (d->linear_before_reset) {
            vf rec = vf_add(vf_load(g + 2 * hp + j), vf_load(w->rbh + j));
            pre = vf_fma(vf_load(r + j), rec, vf_add(vf_load(xp + 2 * hp + j), vf_load(w->bias + 2 * hp + j)));
        } else {
            pre = PRE(2);
        }
        vf cand = LRT_FN(v_act)(&d->act[1], LRT_FN(v_clip)(d, pre));
        vf z = vf_load(g + j), h_prev = vf_load(h + j);
        vf_store(h + j, vf_fma(z, vf_sub(h_prev, cand), cand));
    }
}
#undef PRE

static inline int LRT_FN(time_of)(const lrt_run_args *a, int b, int s)
{
    int len = a->seq_lens ? a->seq_lens[b] : a->steps;
    if (s >= len) return -1;
    return a->reverse ? len - 1 - s : s;
}

static LRT_TARGET void LRT_FN(gru_step)(const struct lrt_weights *w, const lrt_run_args *a, int s,
                                        const float *xproj, float *g, float *hb, float *rh)
{
    const int B = a->batch, H = w->desc.hidden_size, hp = w->hp, n = w->n;
    const int lbr = w->desc.linear_before_reset;
    LRT_FN(gemm)((size_t)B, lbr ? n : 2 * hp, H, hb, hp, w->rt, n, g, n);
    for (int b = 0; b < B; b++) {
        int t = LRT_FN(time_of)(a, b, s);
        if (t < 0) continue;
        float *r = rh + (size_t)b * hp;
        LRT_FN(gru_zr_row)(w, xproj + ((size_t)t * B + b) * n, g + (size_t)b * n, r);
        if (!lbr)   /* reset applied before the recurrent product: r*h_prev */
            for (int j = 0; j < hp; j += V)
                vf_store(r + j, vf_mul(vf_load(r + j), vf_load(hb + (size_t)b * hp + j)));
    }
    if (!lbr) LRT_FN(gemm)((size_t)B, hp, H, rh, hp, w->rt + 2 * hp, n, g + 2 * hp, n);
    for (int b = 0; b < B; b++) {
        int t = LRT_FN(time_of)(a, b, s);
        if (t < 0) continue;
        LRT_FN(gru_h_row)(w, xproj + ((size_t)t * B + b) * n, g + (size_t)b * n, rh + (size_t)b * hp,
                          hb + (size_t)b * hp);
    }
}

int LRT_FN(lrt_run)(const struct lrt_weights *w, const lrt_run_args *a)
{
    const lrt_cell_desc *d = &w->desc;
    const int B = a->batch, T = a->steps, H = d->hidden_size, hp = w->hp, n = w->n;
    const int is_lstm = d->cell == LRT_LSTM;
    lrt_ws_layout L = lrt_ws_plan(w, B, T);
    float *xproj = a->workspace + L.xproj, *g = a->workspace + L.gates;
    float *hb = a->workspace + L.h, *cb = a->workspace + L.c, *rh = a->workspace + L.rh;

    memset(a->workspace + L.gates, 0, (L.total - L.gates) * sizeof(float));
    for (int b = 0; b < B; b++) {
        memcpy(hb + (size_t)b * hp, a->h + (size_t)b * H, (size_t)H * sizeof(float));
        if (is_lstm) memcpy(cb + (size_t)b * hp, a->c + (size_t)b * H, (size_t)H * sizeof(float));
    }
    LRT_FN(gemm)((size_t)T * B, n, d->input_size, a->x, (size_t)d->input_size, w->wt, n, xproj, n);
    if (a->y && a->seq_lens)   /* steps past a sequence's end read as zeros */
        for (int b = 0; b < B; b++)
            for (int t = a->seq_lens[b]; t < T; t++)
                memset(a->y + t * a->y_step_stride + (size_t)b * H, 0, (size_t)H * sizeof(float));

    for (int s = 0; s < T; s++) {
        if (d->cell == LRT_GRU) {
            LRT_FN(gru_step)(w, a, s, xproj, g, hb, rh);
        } else {
            LRT_FN(gemm)((size_t)B, n, H, hb, hp, w->rt, n, g, n);
            for (int b = 0; b < B; b++) {
                int t = LRT_FN(time_of)(a, b, s);
                if (t < 0) continue;
                const float *xp = xproj + ((size_t)t * B + b) * n;
                if (is_lstm)
                    LRT_FN(lstm_row)(w, xp, g + (size_t)b * n, hb + (size_t)b * hp, cb + (size_t)b * hp);
                else
                    LRT_FN(rnn_row)(w, xp, g + (size_t)b * n, hb + (size_t)b * hp);
            }
        }
        if (a->y)
            for (int b = 0; b < B; b++) {
                int t = LRT_FN(time_of)(a, b, s);
                if (t >= 0)
                    memcpy(a->y + t * a->y_step_stride + (size_t)b * H, hb + (size_t)b * hp,
                           (size_t)H * sizeof(float));
            }
    }
    for (int b = 0; b < B; b++) {
        memcpy(a->h + (size_t)b * H, hb + (size_t)b * hp, (size_t)H * sizeof(float));
        if (is_lstm) memcpy(a->c + (size_t)b * H, cb + (size_t)b * hp, (size_t)H * sizeof(float));
    }
    return LRT_OK;
}
#undef V
