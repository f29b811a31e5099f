/* lstmrt.c — argument checking, weight packing and SIMD dispatch.
 * Every size handed in from outside is checked here, before any kernel runs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

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
    case LRT_ACT_RELU: return x > 0.f ? x : 0.f;
    case LRT_ACT_AFFINE: return alpha * x + beta;
    case LRT_ACT_LEAKYRELU: return x >= 0.f ? x : alpha * x;
    case LRT_ACT_THRESHOLDEDRELU: return x > alpha ? x : 0.f;
    case LRT_ACT_SCALEDTANH: return alpha * tanhf(beta * x);
    case LRT_ACT_HARDSIGMOID: return fminf(fmaxf(alpha * x + beta, 0.f), 1.f);
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
    return 1;
}

/* dst[k][g*hp + j] = src[(g*H + j)*K + k]: transpose one gate-stacked ONNX matrix */
static void pack_transposed(float *dst, const float *src, int gates, int H, int hp, int K)
{
    const size_t n = (size_t)gates * hp;
    for (int g = 0; g < gates; g++)
        for (int j = 0; j < H; j++) {
            const float *row = src + ((size_t)g * H + j) * K;
            for (int k = 0; k < K; k++) dst[(size_t)k * n + (size_t)g * hp + j] = row[k];
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
    free(w->wt); free(w->rt); free(w->bias); free(w->rbh); free(w->peep);
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
    w->wt = calloc((size_t)I * w->n, sizeof(float));
    w->rt = calloc((size_t)H * w->n, sizeof(float));
    w->bias = calloc((size_t)w->n, sizeof(float));
    w->rbh = calloc((size_t)w->hp, sizeof(float));
    w->peep = P ? calloc((size_t)3 * w->hp, sizeof(float)) : NULL;
    if (!w->wt || !w->rt || !w->bias || !w->rbh || (P && !w->peep)) {
        lrt_weights_free(w);
        return LRT_E_NOMEM;
    }
    pack_transposed(w->wt, W, G, H, w->hp, I);
    pack_transposed(w->rt, R, G, H, w->hp, H);
    pack_bias(w, B);
    if (P)
        for (int g = 0; g < 3; g++) memcpy(w->peep + (size_t)g * w->hp, P + (size_t)g * H, (size_t)H * sizeof(float));
    *out = w;
    return LRT_OK;
}

/* ---- running ---- */
lrt_ws_layout lrt_ws_plan(const lrt_weights *w, int32_t batch, int32_t steps)
{
    lrt_ws_layout L = {0, 0, 0, 0, 0, SIZE_MAX};
    size_t xproj, rows = (size_t)batch;
    if (!mul3((size_t)steps, rows, (size_t)w->n, &xproj)) return L;
    const size_t row_state = rows * (size_t)w->hp;
    L.gates = xproj;
    L.h = L.gates + rows * (size_t)w->n;
    L.c = L.h + row_state;
    L.rh = L.c + (w->desc.cell == LRT_LSTM ? row_state : 0);
    L.total = L.rh + (w->desc.cell == LRT_GRU ? row_state : 0);
    return L;
}

size_t lrt_workspace_floats(const lrt_weights *w, int32_t batch, int32_t steps)
{
    if (!w || batch < 0 || steps < 0 || batch > LRT_MAX_DIM || steps > LRT_MAX_DIM) return SIZE_MAX;
    return lrt_ws_plan(w, batch, steps).total;
}

static int check_run_args(const lrt_weights *w, const lrt_run_args *a)
{
    const size_t B = (size_t)a->batch, T = (size_t)a->steps, H = (size_t)w->desc.hidden_size;
    size_t x_len;
    if (a->batch < 0 || a->steps < 0 || a->batch > LRT_MAX_DIM || a->steps > LRT_MAX_DIM) return LRT_E_ARG;
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
    size_t need = lrt_ws_plan(w, a->batch, a->steps).total;
    if (need == SIZE_MAX || !a->workspace || a->workspace_len < need) return LRT_E_WORKSPACE;
    return LRT_OK;
}

int lrt_run(const lrt_weights *w, const lrt_run_args *a)
{
    if (!w || !a) return LRT_E_ARG;
    int st = check_run_args(w, a);
    if (st != LRT_OK) return st;
    if (a->batch == 0 || a->steps == 0) return LRT_OK;   /* nothing to do; state passes through */
    return w->run(w, a);
}
