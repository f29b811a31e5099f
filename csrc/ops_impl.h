/* ops_impl.h — the vector loops of a program's ops (program.c runs the rest), written once
 * against the vf mapping and instanced per SIMD path after kernel_impl.h, whose exp, sigmoid
 * and tanh they share.  Each loop works on contiguous float32 runs the executor hands it. */
#include <math.h>
#include <string.h>

#define VL LRT_VLEN

/* one row of a dense product: C = A @ W + bias over the packed weights (N padded to 16) */
static LRT_TARGET void LRT_FN(dense_rows)(const struct lrt_weights *w, size_t M, const float *A, size_t lda,
                                          float *C, size_t ldc, float *scratch)
{
    LRT_FN(gemm)(w, &w->wt, M, LRT_FN(cols)(0, w->n, 1, w->n), A, lda, C, ldc, w->bias, scratch, 0);
}

/* max(0, x) with the constant first: maxps returns its second operand when either is NaN,
 * so NaN passes through (as numpy and onnxruntime give); the scalar mapping agrees */
static LRT_INLINE LRT_TARGET vf LRT_FN(v_unary)(int32_t kind, vf x, float alpha, float beta)
{
    switch (kind) {
    case LRT_ACT_SIGMOID: return LRT_FN(v_sigmoid)(x);
    case LRT_ACT_TANH: return LRT_FN(v_tanh)(x);
    case LRT_ACT_RELU: return vf_max(vf_set1(0.f), x);
    case LRT_UN_EXP: return LRT_FN(v_exp)(x);
    case LRT_UN_NEG: return vf_sub(vf_set1(0.f), x);
    case LRT_UN_ABS: return vf_abs(x);
    case LRT_UN_CLIP: return vf_min(vf_set1(beta), vf_max(vf_set1(alpha), x));
    case LRT_UN_IDENTITY: return x;
    default: return x;   /* not reached: unary() sends only the kinds above here */
    }
}

static float LRT_FN(scalar_unary)(int32_t kind, float x, float alpha, float beta)
{
    switch (kind) {
    case LRT_UN_EXP: return expf(x);
    case LRT_UN_LOG: return logf(x);
    case LRT_UN_NEG: return -x;
    case LRT_UN_ABS: return fabsf(x);
    case LRT_UN_SQRT: return sqrtf(x);
    case LRT_UN_RECIPROCAL: return 1.f / x;
    case LRT_UN_CLIP: return x != x ? x : x < alpha ? alpha : x > beta ? beta : x;
    case LRT_UN_ERF: return erff(x);
    case LRT_UN_GELU: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case LRT_UN_FLOOR: return floorf(x);
    case LRT_UN_CEIL: return ceilf(x);
    case LRT_UN_SIN: return sinf(x);
    case LRT_UN_COS: return cosf(x);
    case LRT_UN_IDENTITY: return x;
    case LRT_ACT_RELU: return x != x ? x : x > 0.f ? x : 0.f;
    case LRT_ACT_HARDSIGMOID: { const float v = alpha * x + beta; return v != v ? v : v < 0.f ? 0.f : v > 1.f ? 1.f : v; }
    default: return lrt_act_scalar(kind, alpha, beta, x);
    }
}

static int LRT_FN(vector_kind)(int32_t kind)
{
    return kind == LRT_ACT_SIGMOID || kind == LRT_ACT_TANH || kind == LRT_ACT_RELU || kind == LRT_UN_EXP ||
           kind == LRT_UN_NEG || kind == LRT_UN_ABS || kind == LRT_UN_CLIP || kind == LRT_UN_IDENTITY;
}

/* y[i] = f(x[i]); x == y allowed */
static LRT_TARGET void LRT_FN(unary)(int32_t kind, const float *x, float *y, size_t n, float alpha, float beta)
{
    size_t i = 0;
    if (LRT_FN(vector_kind)(kind)) {   /* NaN passes the vector exp (kernel_impl.h) */
        for (; i + VL <= n; i += VL) vf_store(y + i, LRT_FN(v_unary)(kind, vf_load(x + i), alpha, beta));
        if (kind == LRT_ACT_SIGMOID || kind == LRT_ACT_TANH) {   /* the tail through the same vector code */
            if (i < n) {
                float lanes[VL];
                memset(lanes, 0, sizeof lanes);
                memcpy(lanes, x + i, (n - i) * sizeof(float));
                vf_store(lanes, LRT_FN(v_unary)(kind, vf_load(lanes), alpha, beta));
                memcpy(y + i, lanes, (n - i) * sizeof(float));
            }
            return;
        }
    }
    for (; i < n; i++) y[i] = LRT_FN(scalar_unary)(kind, x[i], alpha, beta);
}

static LRT_INLINE float LRT_FN(bin1)(int32_t kind, float a, float b)
{
    switch (kind) {
    case LRT_BIN_ADD: return a + b;
    case LRT_BIN_SUB: return a - b;
    case LRT_BIN_MUL: return a * b;
    case LRT_BIN_DIV: return a / b;
    case LRT_BIN_POW: return b == 2.f ? a * a : b == 0.5f ? sqrtf(a) : powf(a, b);
    case LRT_BIN_MAX: return a != a || a > b ? a : b;    /* NaN wins, as numpy's maximum */
    case LRT_BIN_MIN: return a != a || a < b ? a : b;
    default: return 0.f;
    }
}

#define LRT_BIN_LOOP(expr)                                                              \
    do {                                                                                \
        if (as && bs) for (; i + VL <= n; i += VL) { vf va = vf_load(a + i), vb = vf_load(b + i); vf_store(y + i, expr); } \
        else if (as) { vf vb = vf_set1(*b); for (; i + VL <= n; i += VL) { vf va = vf_load(a + i); vf_store(y + i, expr); } } \
        else if (bs) { vf va = vf_set1(*a); for (; i + VL <= n; i += VL) { vf vb = vf_load(b + i); vf_store(y + i, expr); } } \
    } while (0)

/* y[i] = a[i*as] op b[i*bs], as and bs 0 or 1 (a broadcast operand); y may be a or b */
static LRT_TARGET void LRT_FN(binary)(int32_t kind, const float *a, int as, const float *b, int bs, float *y,
                                      size_t n)
{
    size_t i = 0;
    switch (kind) {
    case LRT_BIN_ADD: LRT_BIN_LOOP(vf_add(va, vb)); break;
    case LRT_BIN_SUB: LRT_BIN_LOOP(vf_sub(va, vb)); break;
    case LRT_BIN_MUL: LRT_BIN_LOOP(vf_mul(va, vb)); break;
    case LRT_BIN_DIV: LRT_BIN_LOOP(vf_div(va, vb)); break;
    default: break;
    }
    for (; i < n; i++) y[i] = LRT_FN(bin1)(kind, a[i * (size_t)as], b[i * (size_t)bs]);
}
#undef LRT_BIN_LOOP

/* softmax (or log-softmax) of one contiguous row; x == y allowed */
static LRT_TARGET void LRT_FN(softmax_row)(const float *x, float *y, size_t n, int log)
{
    float mx = -INFINITY;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        nan |= x[i] != x[i];
        mx = x[i] > mx ? x[i] : mx;
    }
    if (nan || mx == INFINITY || mx == -INFINITY) {   /* x - max is NaN somewhere: numpy's formula gives all NaN */
        for (size_t i = 0; i < n; i++) y[i] = NAN;
        return;
    }
    float sum = 0.f;
    size_t i = 0;
    if (!log) {
        vf vm = vf_set1(mx), vs = vf_set1(0.f);
        for (; i + VL <= n; i += VL) {
            vf e = LRT_FN(v_exp)(vf_sub(vf_load(x + i), vm));
            vf_store(y + i, e);
            vs = vf_add(vs, e);
        }
        float lanes[VL];
        vf_store(lanes, vs);
        for (int l = 0; l < VL; l++) sum += lanes[l];
        for (; i < n; i++) sum += (y[i] = expf(x[i] - mx));
        const float inv = 1.f / sum;
        for (i = 0; i < n; i++) y[i] *= inv;
        return;
    }
    for (i = 0; i < n; i++) sum += expf(x[i] - mx);
    const float ls = logf(sum);
    for (i = 0; i < n; i++) y[i] = x[i] - mx - ls;
}

const lrt_vops LRT_FN(lrt_vops) = {
    LRT_FN(dense_rows), LRT_FN(unary), LRT_FN(binary), LRT_FN(softmax_row),
};
#undef VL
