/* lstmrt.c — argument checking, weight packing and SIMD dispatch.
 * Every size handed in from outside is checked here, before any kernel runs. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <unistd.h>
#define LRT_HAVE_PTHREAD 1
#endif

#define LRT_MAX_DIM (1 << 24)

static int gates_of(int32_t cell)
{
    return cell == LRT_LSTM ? 4 : cell == LRT_GRU ? 3 : 1;
}

/* a*b*c without overflow; returns 0 on overflow (inputs are never 0 here) */
static int mul3(size_t a, size_t b, size_t c, size_t *out)
{
    if (a && b > SIZE_MAX / a) return 0;
    size_t ab = a * b;
    if (ab && c > SIZE_MAX / ab) return 0;
    *out = ab * c;
    return 1;
}

/* ---- CPU detection: the one place that knows about CPU features ---- */
int lrt_cpu_supports(int32_t simd)
{
    switch (simd) {
    case LRT_SIMD_SCALAR: return 1;
#if defined(LRT_HAVE_X86) && (defined(__GNUC__) || defined(__clang__))
    case LRT_SIMD_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case LRT_SIMD_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
#endif
    default: return 0;
    }
}

static int cpu_has_vnni(void)
{
#if defined(LRT_HAVE_X86) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

static int resolve_simd(int32_t requested, int32_t *out)
{
    if (requested == LRT_SIMD_AUTO) {
        const char *env = getenv("LSTMRT_SIMD");
        if (env && *env) {
            if (!strcmp(env, "scalar")) requested = LRT_SIMD_SCALAR;
            else if (!strcmp(env, "avx2")) requested = LRT_SIMD_AVX2;
            else if (!strcmp(env, "avx512")) requested = LRT_SIMD_AVX512;
            else return LRT_E_SIMD;
        }
    }
    if (requested == LRT_SIMD_AUTO) {
        requested = lrt_cpu_supports(LRT_SIMD_AVX512) ? LRT_SIMD_AVX512
                  : lrt_cpu_supports(LRT_SIMD_AVX2)   ? LRT_SIMD_AVX2
                                                      : LRT_SIMD_SCALAR;
    }
    if (requested < LRT_SIMD_SCALAR || requested > LRT_SIMD_AVX512 || !lrt_cpu_supports(requested))
        return LRT_E_SIMD;
    *out = requested;
    return LRT_OK;
}

static lrt_run_fn run_fn_of(int32_t simd)
{
#ifdef LRT_HAVE_X86
    if (simd == LRT_SIMD_AVX512) return lrt_run_avx512;
    if (simd == LRT_SIMD_AVX2) return lrt_run_avx2;
#endif
    (void)simd;
    return lrt_run_scalar;
}

const char *lrt_weights_path(const lrt_weights *w)
{
    if (!w) return "none";
    return w->simd == LRT_SIMD_AVX512 ? "avx512" : w->simd == LRT_SIMD_AVX2 ? "avx2" : "scalar";
}

const char *lrt_weights_precision(const lrt_weights *w)
{
    if (!w) return "none";
    return w->precision == LRT_PREC_BF16 ? "bf16" : w->precision == LRT_PREC_INT8 ? "int8" : "f32";
}

const char *lrt_weights_product(const lrt_weights *w)
{
    if (!w) return "none";
    if (w->precision == LRT_PREC_BF16) return "bf16-emulated";
    if (w->precision == LRT_PREC_INT8) return w->vnni ? "int8-vnni" : "int8-ref";
    return "f32";
}

const char *lrt_status_string(int status)
{
    switch (status) {
    case LRT_OK: return "ok";
    case LRT_E_ARG: return "invalid argument or inconsistent sizes";
    case LRT_E_NOMEM: return "out of memory";
    case LRT_E_SIMD: return "requested SIMD path is not available on this CPU (LSTMRT_SIMD is scalar, avx2 or avx512)";
    case LRT_E_WORKSPACE: return "workspace too small";
    default: return "unknown error";
    }
}

/* ---- activations that have no vector form ---- */
float lrt_act_scalar(int32_t kind, float alpha, float beta, float x)
{
    switch (kind) {
    case LRT_ACT_SIGMOID: return 1.f / (1.f + expf(-x));
    case LRT_ACT_TANH: return tanhf(x);
    case LRT_ACT_RELU: return x <= 0.f ? 0.f : x;   /* NaN in, NaN out: tests written to fail on NaN */
    case LRT_ACT_AFFINE: return alpha * x + beta;
    case LRT_ACT_LEAKYRELU: return x >= 0.f ? x : alpha * x;
    case LRT_ACT_THRESHOLDEDRELU: return x <= alpha ? 0.f : x;
    case LRT_ACT_SCALEDTANH: return alpha * tanhf(beta * x);
    case LRT_ACT_HARDSIGMOID: {   /* not fminf/fmaxf: they return the other operand for NaN */
        const float v = alpha * x + beta;
        return v < 0.f ? 0.f : v > 1.f ? 1.f : v;
    }
    case LRT_ACT_ELU: return x >= 0.f ? x : alpha * (expf(x) - 1.f);
    case LRT_ACT_SOFTSIGN: return x / (1.f + fabsf(x));
    case LRT_ACT_SOFTPLUS: return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x)));  /* log(1+e^x), overflow-free */
    default: return x;
    }
}

/* ---- weights ---- */
static int check_desc(const lrt_cell_desc *d)
{
    if (d->cell < LRT_RNN || d->cell > LRT_LSTM) return 0;
    if (d->input_size < 1 || d->input_size > LRT_MAX_DIM) return 0;
    if (d->hidden_size < 1 || d->hidden_size > LRT_MAX_DIM) return 0;
    if (d->has_clip && !(d->clip >= 0.f)) return 0;   /* also rejects NaN */
    for (int i = 0; i < 3; i++)
        if (d->act[i].kind < 0 || d->act[i].kind >= LRT_ACT_COUNT) return 0;
    if (d->precision < LRT_PREC_F32 || d->precision > LRT_PREC_INT8) return 0;
    if (d->precision == LRT_PREC_INT8 && (d->input_size > LRT_I8_MAX_K || d->hidden_size > LRT_I8_MAX_K))
        return 0;
    return 1;
}

/* Zeroed memory aligned to a cache line.  Packed weights must be: an unaligned 64-byte load
 * touches two lines, which cost a streaming product ~40% of its speed.  The offset to the
 * block malloc returned is kept just below the aligned address. */
#define LRT_LINE 64
static void *alloc_lines(size_t count, size_t size)
{
    if (size && count > (SIZE_MAX - 2 * LRT_LINE) / size) return NULL;
    unsigned char *raw = calloc(count * size + 2 * LRT_LINE, 1);
    if (!raw) return NULL;
    unsigned char *p = raw + LRT_LINE + (LRT_LINE - (uintptr_t)raw % LRT_LINE) % LRT_LINE;
    const size_t offset = (size_t)(p - raw);
    memcpy(p - sizeof offset, &offset, sizeof offset);
    return p;
}

static void free_lines(void *p)
{
    if (!p) return;
    size_t offset;
    memcpy(&offset, (unsigned char *)p - sizeof offset, sizeof offset);
    free((unsigned char *)p - offset);
}

/* float32 -> bf16 bits, round to nearest even; NaN stays NaN */
static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Packs one gate-stacked ONNX matrix src[(g*H + j)*K + k] as the K x np panel
 * matrix of internal.h, column g*hp + j, in w's precision. */
static int pack_matrix(lrt_pmat *m, const lrt_weights *w, const float *src, int K)
{
    const int G = w->gates, H = w->desc.hidden_size, hp = w->hp, P = w->panel;
    const size_t np = (size_t)w->np;
    m->k = K;
    m->k4 = (K + 3) / 4 * 4;
    if (w->precision == LRT_PREC_INT8) {
        int8_t *q = alloc_lines((size_t)m->k4 * np, 1);
        m->data = q;
        m->scale = alloc_lines(np, sizeof(float));
        m->csum = alloc_lines(np, sizeof(int32_t));
        if (!q || !m->scale || !m->csum) return 0;
        for (int g = 0; g < G; g++)
            for (int j = 0; j < H; j++) {
                const float *row = src + ((size_t)g * H + j) * K;
                const size_t col = (size_t)g * hp + j;
                float amax = 0.f;
                for (int k = 0; k < K; k++) amax = fmaxf(amax, fabsf(row[k]));
                if (!(amax <= FLT_MAX)) return -1;   /* inf or NaN weights have no int8 form */
                const float scale = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
                int32_t sum = 0;
                int8_t *dst = q + (col / P) * (size_t)m->k4 * P + (col % P) * 4;
                for (int k = 0; k < K; k++) {
                    long v = lrintf(row[k] * inv);
                    v = v > 127 ? 127 : v < -127 ? -127 : v;
                    dst[(size_t)(k / 4) * P * 4 + k % 4] = (int8_t)v;
                    sum += (int32_t)v;
                }
                m->scale[col] = scale;
                m->csum[col] = 128 * sum;
            }
        return 1;
    }
    /* float32 or bf16: the same panel layout, elements of either width */
    const int bf16 = w->precision == LRT_PREC_BF16;
    void *dst = alloc_lines((size_t)K * np, bf16 ? sizeof(uint16_t) : sizeof(float));
    m->data = dst;
    if (!dst) return 0;
    for (int g = 0; g < G; g++)
        for (int j = 0; j < H; j++) {
            const float *row = src + ((size_t)g * H + j) * K;
            const size_t col = (size_t)g * hp + j;
            const size_t base = (col / P) * (size_t)K * P + col % P;
            for (int k = 0; k < K; k++) {
                if (bf16)
                    ((uint16_t *)dst)[base + (size_t)k * P] = to_bf16(row[k]);
                else
                    ((float *)dst)[base + (size_t)k * P] = row[k];
            }
        }
    return 1;
}

static void free_matrix(lrt_pmat *m)
{
    free_lines(m->data); free_lines(m->scale); free_lines(m->csum);
}

/* ---- int8 products: the portable reference (every path without VNNI) ---- */
float lrt_quantize_row(const float *a, int k, int k4, uint8_t *q)
{
    float amax = 0.f;
    int finite = 1;
    for (int i = 0; i < k; i++) {
        const float v = fabsf(a[i]);
        amax = v > amax ? v : amax;
        finite &= v <= FLT_MAX;   /* false for inf and NaN */
    }
    if (!finite) {   /* inf/NaN in the row: the products come out NaN */
        memset(q, 128, (size_t)k4);
        return NAN;
    }
    /* q = nearest-even(a * inv), clamped to [-127, 127]; the AVX-512 quantizer matches bit for bit */
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int i = 0; i < k; i++) {
        long v = lrintf(a[i] * inv);
        v = v > 127 ? 127 : v < -127 ? -127 : v;
        q[i] = (uint8_t)(v + 128);
    }
    memset(q + k, 128, (size_t)(k4 - k));
    return amax / 127.f;
}

void lrt_gemm_i8_ref(size_t M, const lrt_pmat *B, int panel, int j0, int j1, const uint8_t *qa,
                     const float *sa, float *C, size_t ldc, const float *init)
{
    const int kq = B->k4 / 4;
    const int8_t *data = B->data;
    int32_t acc[LRT_PANEL_AVX512];
    for (size_t m = 0; m < M; m++) {
        const uint8_t *a = qa + m * (size_t)B->k4;
        for (int j = j0; j < j1;) {
            const int c0 = j % panel, w = panel - c0 < j1 - j ? panel - c0 : j1 - j;
            const int8_t *bp = data + (size_t)(j / panel) * kq * panel * 4 + (size_t)c0 * 4;
            for (int c = 0; c < w; c++) acc[c] = 0;
            for (int q = 0; q < kq; q++, bp += (size_t)panel * 4)
                for (int c = 0; c < w; c++)
                    acc[c] += a[4 * q] * bp[4 * c] + a[4 * q + 1] * bp[4 * c + 1] +
                              a[4 * q + 2] * bp[4 * c + 2] + a[4 * q + 3] * bp[4 * c + 3];
            for (int c = 0; c < w; c++) {
                const int col = j + c;
                float v = (float)(acc[c] - B->csum[col]) * sa[m] * B->scale[col];
                C[m * ldc + col] = init ? v + init[col] : v;
            }
            j += w;
        }
    }
}

static void pack_bias(lrt_weights *w, const float *B)
{
    const int H = w->desc.hidden_size, hp = w->hp, G = w->gates;
    if (!B) return;
    const float *wb = B, *rb = B + (size_t)G * H;
    for (int g = 0; g < G; g++)
        for (int j = 0; j < H; j++) {
            int gru_h_separate = w->desc.cell == LRT_GRU && w->desc.linear_before_reset && g == 2;
            w->bias[(size_t)g * hp + j] = wb[(size_t)g * H + j] + (gru_h_separate ? 0.f : rb[(size_t)g * H + j]);
            if (gru_h_separate) w->rbh[j] = rb[(size_t)g * H + j];
        }
}

void lrt_weights_free(lrt_weights *w)
{
    if (!w) return;
    free_matrix(&w->wt); free_matrix(&w->rt); free_lines(w->bias); free_lines(w->rbh); free_lines(w->peep);
    free(w);
}

int lrt_weights_create(const lrt_cell_desc *desc, const float *W, size_t w_len, const float *R,
                       size_t r_len, const float *B, size_t b_len, const float *P, size_t p_len,
                       lrt_weights **out)
{
    if (!out) return LRT_E_ARG;
    *out = NULL;
    if (!desc || !W || !R || !check_desc(desc)) return LRT_E_ARG;
    const int G = gates_of(desc->cell), H = desc->hidden_size, I = desc->input_size;
    if (w_len != (size_t)G * H * I || r_len != (size_t)G * H * H) return LRT_E_ARG;
    if ((B == NULL) != (b_len == 0) || (B && b_len != (size_t)2 * G * H)) return LRT_E_ARG;
    if ((P == NULL) != (p_len == 0) || (P && (desc->cell != LRT_LSTM || p_len != (size_t)3 * H)))
        return LRT_E_ARG;
    int32_t simd;
    int st = resolve_simd(desc->simd, &simd);
    if (st != LRT_OK) return st;

    lrt_weights *w = calloc(1, sizeof *w);
    if (!w) return LRT_E_NOMEM;
    w->desc = *desc;
    w->gates = G;
    w->hp = (H + LRT_PAD - 1) / LRT_PAD * LRT_PAD;
    w->n = G * w->hp;
    w->simd = simd;
    w->run = run_fn_of(simd);
    w->panel = simd == LRT_SIMD_AVX512 ? LRT_PANEL_AVX512 : simd == LRT_SIMD_AVX2 ? LRT_PANEL_AVX2
                                                                                : LRT_PANEL_SCALAR;
    w->np = (w->n + w->panel - 1) / w->panel * w->panel;
    w->precision = desc->precision;
    w->vnni = desc->precision == LRT_PREC_INT8 && simd == LRT_SIMD_AVX512 && cpu_has_vnni();
    w->bias = alloc_lines((size_t)w->n, sizeof(float));
    w->rbh = alloc_lines((size_t)w->hp, sizeof(float));
    w->peep = P ? alloc_lines((size_t)3 * w->hp, sizeof(float)) : NULL;
    int okw = pack_matrix(&w->wt, w, W, I), okr = okw == 1 ? pack_matrix(&w->rt, w, R, H) : 0;
    if (okw < 0 || okr < 0) {
        lrt_weights_free(w);
        return LRT_E_ARG;
    }
    if (!okw || !okr || !w->bias || !w->rbh || (P && !w->peep)) {
        lrt_weights_free(w);
        return LRT_E_NOMEM;
    }
    pack_bias(w, B);
    if (P)
        for (int g = 0; g < 3; g++) memcpy(w->peep + (size_t)g * w->hp, P + (size_t)g * H, (size_t)H * sizeof(float));
    *out = w;
    return LRT_OK;
}

/* ---- running ---- */
size_t lrt_ws_scratch_floats(const lrt_weights *w)
{
    if (w->precision == LRT_PREC_BF16) return LRT_BF16_BLOCK + 16;   /* + room to align it */
    if (w->precision != LRT_PREC_INT8) return 0;
    const size_t k4 = (size_t)(w->wt.k4 > w->rt.k4 ? w->wt.k4 : w->rt.k4);
    return LRT_QROWS + LRT_QROWS * k4 / 4;   /* row scales, then rows of k4 bytes */
}

lrt_ws_layout lrt_ws_plan(const lrt_weights *w, int32_t batch, int32_t steps, int team)
{
    lrt_ws_layout L = {0, 0, 0, 0, 0, 0, 0, SIZE_MAX};
    size_t xproj, rows = (size_t)batch;
    if (!mul3((size_t)steps, rows, (size_t)w->n, &xproj)) return L;
    const size_t row_state = rows * (size_t)w->hp;
    L.gates = xproj;
    L.h = L.gates + rows * (size_t)w->n;
    L.h2 = L.h + row_state;
    L.c = L.h2 + (team ? row_state : 0);
    L.rh = L.c + (w->desc.cell == LRT_LSTM ? row_state : 0);
    L.scratch = L.rh + (w->desc.cell == LRT_GRU ? row_state : 0);
    L.total = L.scratch + lrt_ws_scratch_floats(w);
    return L;
}

static int effective_threads(int32_t threads, int32_t batch)
{
    int nt = threads < 1 ? 1 : threads;
    if (nt > batch) nt = batch;
#ifndef LRT_HAVE_PTHREAD
    nt = 1;
#endif
    return nt < 1 ? 1 : nt;
}

/* Teams (internal.h) split the hidden units: each member reads only its share of the weights,
 * which then stays in its core's cache, but the members meet once per step.  Measured here
 * (2 cores), splitting the batch did better whenever there were rows enough for every thread:
 * its threads never wait for each other.  So teams are for batches smaller than the threads
 * (a single stream), with at least a panel's worth of units per member.  On the pool's threads
 * (below) a B=1 step pays off from a few hundred thousand multiply-adds: LSTM H=128 (131K)
 * ran slower with two threads, GRU H=256 (393K) 1.4x and LSTM H=256 (524K) 1.9x quicker.
 * Threads started for one call cost ~80 us here: a call that cannot have the pool's threads
 * runs alone unless it is long (LRT_FRESH_MIN_MACS, ~100 us of products on one core). */
#define LRT_TEAM_UNITS 64                          /* least units per member */
#define LRT_THREADS_MIN_MACS (256.0 * 1024)        /* any split, on the pool's threads */
#define LRT_FRESH_MIN_MACS (16.0 * 1024 * 1024)    /* any split, on threads started for the call */

#ifdef LRT_HAVE_PTHREAD
static double call_macs(const lrt_weights *w, int32_t batch, int32_t steps)
{
    return (double)steps * batch * w->n * ((double)w->desc.input_size + w->desc.hidden_size);
}

/* Cores online, read once (a benign race: every reader computes the same). */
static int online_cores(void)
{
    static int cores;
    int n = __atomic_load_n(&cores, __ATOMIC_RELAXED);
    if (!n) {
        const long online = sysconf(_SC_NPROCESSORS_ONLN);
        n = online < 1 ? 1 : online > LRT_MAX_THREADS ? LRT_MAX_THREADS : (int)online;
        __atomic_store_n(&cores, n, __ATOMIC_RELAXED);
    }
    return n;
}
#endif

/* members of a team for this call, or 0: split the batch instead (or run alone) */
static int team_size(const lrt_weights *w, int32_t batch, int32_t steps, int32_t threads)
{
#ifdef LRT_HAVE_PTHREAD
    const int nt = threads < w->hp / LRT_TEAM_UNITS ? threads : w->hp / LRT_TEAM_UNITS;
    return nt >= 2 && batch < threads && call_macs(w, batch, steps) >= LRT_THREADS_MIN_MACS ? nt : 0;
#else
    (void)w, (void)batch, (void)steps, (void)threads;
    return 0;
#endif
}

/* rows of slice i when `batch` rows are split in nt near-equal slices */
static int32_t slice_start(int32_t batch, int nt, int i)
{
    return (int32_t)((int64_t)batch * i / nt);
}

#ifdef LRT_HAVE_PTHREAD
/* first unit of member i of nt: near-equal shares in whole LRT_PAD groups */
static int32_t unit_start(const lrt_weights *w, int nt, int i)
{
    return (int32_t)(LRT_PAD * ((int64_t)(w->hp / LRT_PAD) * i / nt));
}
#endif

size_t lrt_workspace_floats_threads(const lrt_weights *w, int32_t batch, int32_t steps, int32_t threads)
{
    if (!w || batch < 0 || steps < 0 || batch > LRT_MAX_DIM || steps > LRT_MAX_DIM) return SIZE_MAX;
    if (threads < 0 || threads > LRT_MAX_THREADS) return SIZE_MAX;
    const int team = team_size(w, batch, steps, threads);
    if (team) {   /* one shared workspace, a scratch per member after the first */
        const size_t shared = lrt_ws_plan(w, batch, steps, 1).total;
        const size_t scratches = (size_t)(team - 1) * lrt_ws_scratch_floats(w);
        return shared == SIZE_MAX || shared > SIZE_MAX - 1 - scratches ? SIZE_MAX : shared + scratches;
    }
    const int nt = effective_threads(threads, batch);
    size_t total = 0;
    for (int i = 0; i < nt; i++) {
        size_t part = lrt_ws_plan(w, slice_start(batch, nt, i + 1) - slice_start(batch, nt, i), steps, 0).total;
        if (part == SIZE_MAX || total > SIZE_MAX - 1 - part) return SIZE_MAX;
        total += part;
    }
    return total;
}

size_t lrt_workspace_floats(const lrt_weights *w, int32_t batch, int32_t steps)
{
    return lrt_workspace_floats_threads(w, batch, steps, 1);
}

static int check_run_args(const lrt_weights *w, const lrt_run_args *a)
{
    const size_t B = (size_t)a->batch, T = (size_t)a->steps, H = (size_t)w->desc.hidden_size;
    size_t x_len;
    if (a->batch < 0 || a->steps < 0 || a->batch > LRT_MAX_DIM || a->steps > LRT_MAX_DIM) return LRT_E_ARG;
    if (a->threads < 0 || a->threads > LRT_MAX_THREADS) return LRT_E_ARG;
    if (!mul3(T, B, (size_t)w->desc.input_size, &x_len) || a->x_len != x_len || (x_len && !a->x))
        return LRT_E_ARG;
    if (!a->h || a->h_len != B * H) return LRT_E_ARG;
    if (w->desc.cell == LRT_LSTM && (!a->c || a->c_len != B * H)) return LRT_E_ARG;
    if (a->seq_lens) {
        if (a->seq_lens_len != B) return LRT_E_ARG;
        for (size_t b = 0; b < B; b++)
            if (a->seq_lens[b] < 0 || (size_t)a->seq_lens[b] > T) return LRT_E_ARG;
    }
    if (a->y && T > 0) {
        if (a->y_step_stride < 0 || (size_t)a->y_step_stride < B * H) return LRT_E_ARG;
        size_t last;
        if (!mul3(T - 1, (size_t)a->y_step_stride, 1, &last) || last > SIZE_MAX - B * H ||
            a->y_len < last + B * H)
            return LRT_E_ARG;
    }
    size_t need = lrt_workspace_floats_threads(w, a->batch, a->steps, a->threads);
    if (need == SIZE_MAX || !a->workspace || a->workspace_len < need) return LRT_E_WORKSPACE;
    return LRT_OK;
}

#ifdef LRT_HAVE_PTHREAD
#include <sched.h>

struct lrt_team {
    int size;    /* members */
    int count;   /* members arrived at the barrier */
    int sense;   /* flips when the last arrives */
    int go;      /* set once every member's units are assigned */
    unsigned spins;   /* spins at the barrier before yielding the core */
};

/* A sense-reversing barrier.  Members spin (a step is tens of microseconds and the wait
 * usually far less), then yield.  A team larger than the cores online yields at once: its
 * members would spin while the one they wait for is descheduled (8 members on this 2-core
 * VM ran slower than one thread). */
void lrt_team_wait(lrt_member *m)
{
    lrt_team *t = m->team;
    const int sense = m->sense = !m->sense;
    if (__atomic_add_fetch(&t->count, 1, __ATOMIC_ACQ_REL) == t->size) {
        __atomic_store_n(&t->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&t->sense, sense, __ATOMIC_RELEASE);
        return;
    }
    for (unsigned spins = 0; __atomic_load_n(&t->sense, __ATOMIC_ACQUIRE) != sense; spins++)
        if (spins >= t->spins) sched_yield();
}

typedef struct {
    const lrt_weights *w;
    const lrt_run_args *a;
    int32_t b0, b1;    /* a batch slice; a team member runs the whole batch */
    float *ws;
    lrt_member *member;
    int sweep;
    int status;
} lrt_job;

static void *run_job(void *arg)
{
    lrt_job *job = arg;
    if (job->member)   /* a team member starts once the team knows its size */
        while (!__atomic_load_n(&job->member->team->go, __ATOMIC_ACQUIRE)) sched_yield();
    job->status = job->w->run(job->w, job->a, job->b0, job->b1, job->ws, &job->sweep, job->member);
    return NULL;
}

/* The team of jobs[0..nt): its size and each member's units; then the members may start. */
static void form_team(lrt_job *jobs, int nt, lrt_team *team)
{
    team->size = nt;
    team->spins = nt <= online_cores() ? 2000 : 0;
    for (int i = 0; i < nt; i++) {
        jobs[i].member->u0 = unit_start(jobs[i].w, nt, i);
        jobs[i].member->u1 = unit_start(jobs[i].w, nt, i + 1);
    }
    __atomic_store_n(&team->go, 1, __ATOMIC_RELEASE);
}

static int status_of(const lrt_job *jobs, int nt)
{
    int st = LRT_OK;
    for (int i = 0; i < nt; i++)
        if (jobs[i].status != LRT_OK) st = jobs[i].status;
    return st;
}

/* jobs[0] runs here, the others on threads started for them; a slice whose thread cannot start
 * runs here too.  A team is sized to the threads that started (the members wait for `go`). */
static int run_jobs_fresh(lrt_job *jobs, int nt, lrt_team *team)
{
    pthread_t tids[LRT_MAX_THREADS];
    int started[LRT_MAX_THREADS] = {0};
    for (int i = 1; i < nt; i++) {
        started[i] = pthread_create(&tids[i], NULL, run_job, &jobs[i]) == 0;
        if (team && !started[i]) {
            nt = i;
            break;
        }
    }
    if (team) form_team(jobs, nt, team);
    run_job(&jobs[0]);
    for (int i = 1; i < nt; i++) {
        if (started[i]) pthread_join(tids[i], NULL);
        else run_job(&jobs[i]);
    }
    return status_of(jobs, nt);
}

/* ---- the pool: threads kept between calls ----
 * Starting threads cost ~80 us a call here, more than a whole step of most streaming calls.
 * Worker i takes its jobs from its own slot; one call at a time uses the pool (a call that
 * finds it busy starts threads of its own).  Idle workers spin a while, since a streaming
 * caller comes back within microseconds, then sleep. */
#define LRT_POOL_SPINS 20000

static struct {
    pthread_mutex_t owner;   /* held by the call using the pool */
    pthread_mutex_t lock;    /* with wake and done: sleeping and waking */
    pthread_cond_t wake, done;
    int workers;             /* started so far */
    int sleepers;            /* workers waiting on wake (under lock) */
    int pending;             /* jobs handed out and not finished */
    lrt_job *slot[LRT_MAX_THREADS];   /* worker i's job, or NULL */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
          PTHREAD_COND_INITIALIZER, 0, 0, 0, {0}};
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static int worker_index[LRT_MAX_THREADS];

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *pool_worker(void *arg)
{
    lrt_job **slot = &pool.slot[*(const int *)arg];
    for (;;) {
        lrt_job *job;
        for (int spins = 0; !(job = __atomic_load_n(slot, __ATOMIC_ACQUIRE)) && spins < LRT_POOL_SPINS; spins++)
            cpu_relax();
        if (!job) {
            pthread_mutex_lock(&pool.lock);
            pool.sleepers++;
            while (!(job = __atomic_load_n(slot, __ATOMIC_ACQUIRE))) pthread_cond_wait(&pool.wake, &pool.lock);
            pool.sleepers--;
            pthread_mutex_unlock(&pool.lock);
        }
        run_job(job);
        __atomic_store_n(slot, NULL, __ATOMIC_RELAXED);
        if (__atomic_sub_fetch(&pool.pending, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&pool.lock);
            pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.lock);
        }
    }
    return NULL;
}

/* a forked child has none of the parent's threads: it starts its own pool */
static void pool_after_fork(void)
{
    pthread_mutex_init(&pool.owner, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.workers = pool.sleepers = pool.pending = 0;
    memset(pool.slot, 0, sizeof pool.slot);
}

static void pool_init(void)
{
    pthread_atfork(NULL, NULL, pool_after_fork);
}

/* workers until there are n (or as many as start); returns how many there are */
static int pool_grow(int n)
{
    for (int i = pool.workers; i < n; i++) {
        pthread_t tid;
        worker_index[i] = i;
        if (pthread_create(&tid, NULL, pool_worker, &worker_index[i]) != 0) break;
        pthread_detach(tid);
        pool.workers = i + 1;
    }
    return pool.workers;
}

/* jobs[1..] on the pool's workers (the caller holds pool.owner), jobs[0] here; slices beyond
 * the workers run here too, a team is sized to the workers there are */
static int run_jobs_pooled(lrt_job *jobs, int nt, lrt_team *team)
{
    const int workers = pool_grow(nt - 1);
    const int handed = nt - 1 < workers ? nt - 1 : workers;
    if (team) {
        nt = handed + 1;
        form_team(jobs, nt, team);
    }
    __atomic_store_n(&pool.pending, handed, __ATOMIC_RELAXED);
    for (int i = 0; i < handed; i++) __atomic_store_n(&pool.slot[i], &jobs[i + 1], __ATOMIC_RELEASE);
    pthread_mutex_lock(&pool.lock);
    if (pool.sleepers) pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    run_job(&jobs[0]);
    for (int i = handed + 1; i < nt; i++) run_job(&jobs[i]);
    for (int spins = 0; __atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE) && spins < LRT_POOL_SPINS; spins++)
        cpu_relax();
    pthread_mutex_lock(&pool.lock);
    while (__atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE)) pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    return status_of(jobs, nt);
}

/* Whether this call takes the pool (then the caller unlocks pool.owner after), starts threads
 * of its own (0), or had better run alone (-1): the pool is busy and the call too short. */
static int take_pool(const lrt_weights *w, const lrt_run_args *a)
{
    pthread_once(&pool_once, pool_init);
    if (pthread_mutex_trylock(&pool.owner) == 0) return 1;
    return call_macs(w, a->batch, a->steps) >= LRT_FRESH_MIN_MACS ? 0 : -1;
}
#else
void lrt_team_wait(lrt_member *m)
{
    (void)m;   /* no teams without threads */
}
#endif

/* the sweep hint (internal.h): a relaxed atomic where the compiler has one; a torn or
 * stale value only costs cache hits */
#if defined(__GNUC__) || defined(__clang__)
#define LRT_SWEEP_LOAD(w) __atomic_load_n(&(w)->sweep, __ATOMIC_RELAXED)
#define LRT_SWEEP_STORE(w, v) __atomic_store_n(&((lrt_weights *)(w))->sweep, (v), __ATOMIC_RELAXED)
#else
#define LRT_SWEEP_LOAD(w) ((w)->sweep)
#define LRT_SWEEP_STORE(w, v) (((lrt_weights *)(w))->sweep = (v))
#endif

int lrt_run(const lrt_weights *w, const lrt_run_args *a)
{
    if (!w || !a) return LRT_E_ARG;
    int st = check_run_args(w, a);
    if (st != LRT_OK) return st;
    if (a->batch == 0 || a->steps == 0) return LRT_OK;   /* nothing to do; state passes through */
    const int team_n = team_size(w, a->batch, a->steps, a->threads);
    const int nt = team_n ? team_n : effective_threads(a->threads, a->batch);
    int sweep = LRT_SWEEP_LOAD(w);
    int pooled = -1;   /* alone; any workspace sized for threads holds one alone */
#ifdef LRT_HAVE_PTHREAD
    if (nt > 1 && call_macs(w, a->batch, a->steps) >= LRT_THREADS_MIN_MACS) pooled = take_pool(w, a);
#else
    (void)nt;
#endif
    if (pooled < 0) {
        st = w->run(w, a, 0, a->batch, a->workspace, &sweep, NULL);
        LRT_SWEEP_STORE(w, sweep);
        return st;
    }
#ifdef LRT_HAVE_PTHREAD
    lrt_job jobs[LRT_MAX_THREADS];
    lrt_member members[LRT_MAX_THREADS];
    lrt_team team = {0, 0, 0, 0, 0};
    float *ws = a->workspace;
    const lrt_ws_layout L = lrt_ws_plan(w, a->batch, a->steps, 1);   /* a team's shared workspace */
    for (int i = 0; i < nt; i++) {
        jobs[i].w = w;
        jobs[i].a = a;
        jobs[i].sweep = sweep;
        jobs[i].status = LRT_OK;
        if (team_n) {   /* everyone on the whole batch and one workspace; scratch apart */
            members[i].team = &team;
            members[i].sense = 0;
            members[i].scratch = i ? ws + L.total + (size_t)(i - 1) * lrt_ws_scratch_floats(w) : ws + L.scratch;
            jobs[i].member = &members[i];
            jobs[i].b0 = 0;
            jobs[i].b1 = a->batch;
            jobs[i].ws = ws;
        } else {        /* slices of the batch are independent sequences: no synchronisation */
            jobs[i].member = NULL;
            jobs[i].b0 = slice_start(a->batch, nt, i);
            jobs[i].b1 = slice_start(a->batch, nt, i + 1);
            jobs[i].ws = ws;
            ws += lrt_ws_plan(w, jobs[i].b1 - jobs[i].b0, a->steps, 0).total;
        }
    }
    lrt_team *t = team_n ? &team : NULL;
    if (pooled) {
        st = run_jobs_pooled(jobs, nt, t);
        pthread_mutex_unlock(&pool.owner);
    } else {
        st = run_jobs_fresh(jobs, nt, t);
    }
    LRT_SWEEP_STORE(w, jobs[0].sweep);
#endif
    return st;
}
