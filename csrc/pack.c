/* pack.c — weights packed once for the products: a cell's W and R (lrt_weights_create) and a
 * dense operand (lrt_dense_create), in float32, bf16 or int8 panels (internal.h).  Every size
 * handed in is checked here, before anything is allocated. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

static int gates_of(int32_t cell)
{
    return cell == LRT_LSTM ? 4 : cell == LRT_GRU ? 3 : 1;
}

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
    int st = lrt_resolve_simd(desc->simd, &simd);
    if (st != LRT_OK) return st;

    lrt_weights *w = calloc(1, sizeof *w);
    if (!w) return LRT_E_NOMEM;
    w->desc = *desc;
    w->gates = G;
    w->hp = (H + LRT_PAD - 1) / LRT_PAD * LRT_PAD;
    w->n = G * w->hp;
    w->simd = simd;
    w->run = lrt_run_fn_of(simd);
    w->panel = simd == LRT_SIMD_AVX512 ? LRT_PANEL_AVX512 : simd == LRT_SIMD_AVX2 ? LRT_PANEL_AVX2
                                                                                : LRT_PANEL_SCALAR;
    w->np = (w->n + w->panel - 1) / w->panel * w->panel;
    w->precision = desc->precision;
    w->vnni = desc->precision == LRT_PREC_INT8 && simd == LRT_SIMD_AVX512 && lrt_cpu_has_vnni();
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

/* ---- dense products (program.c's MatMul, Gemm and Conv): a one-gate cell's input weights ---- */
int lrt_dense_create(int32_t k, int32_t n, const float *W, size_t w_len, const float *bias,
                     size_t bias_len, int32_t simd, int32_t precision, lrt_weights **out)
{
    if (!out) return LRT_E_ARG;
    *out = NULL;
    lrt_cell_desc desc;
    memset(&desc, 0, sizeof desc);
    desc.cell = LRT_RNN;
    desc.input_size = k;
    desc.hidden_size = n;
    desc.simd = simd;
    desc.precision = precision;
    if (!W || !check_desc(&desc) || w_len != (size_t)k * (size_t)n) return LRT_E_ARG;
    if ((bias == NULL) != (bias_len == 0) || (bias && bias_len != (size_t)n)) return LRT_E_ARG;
    int32_t path;
    int st = lrt_resolve_simd(simd, &path);
    if (st != LRT_OK) return st;
    lrt_weights *w = calloc(1, sizeof *w);
    if (!w) return LRT_E_NOMEM;
    w->desc = desc;
    w->gates = 1;
    w->hp = (n + LRT_PAD - 1) / LRT_PAD * LRT_PAD;
    w->n = w->hp;
    w->simd = path;
    w->run = lrt_run_fn_of(path);
    w->panel = path == LRT_SIMD_AVX512 ? LRT_PANEL_AVX512 : path == LRT_SIMD_AVX2 ? LRT_PANEL_AVX2
                                                                              : LRT_PANEL_SCALAR;
    w->np = (w->n + w->panel - 1) / w->panel * w->panel;
    w->precision = precision;
    w->vnni = precision == LRT_PREC_INT8 && path == LRT_SIMD_AVX512 && lrt_cpu_has_vnni();
    w->bias = alloc_lines((size_t)w->n, sizeof(float));
    const int ok = pack_matrix(&w->wt, w, W, k);
    if (ok <= 0 || !w->bias) {
        lrt_weights_free(w);
        return ok < 0 ? LRT_E_ARG : LRT_E_NOMEM;
    }
    if (bias) memcpy(w->bias, bias, (size_t)n * sizeof(float));
    *out = w;
    return LRT_OK;
}

int32_t lrt_dense_ldc(const lrt_weights *w)
{
    return w ? w->hp : 0;
}

size_t lrt_dense_scratch_floats(const lrt_weights *w)
{
    return w ? lrt_ws_scratch_floats(w) : 0;
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
