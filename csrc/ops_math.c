/* ops_math.c — elementwise and row-wise program ops: unary and binary (with broadcasting),
 * softmax, reductions and layer normalisation; the float32 loops on the SIMD path's vops. */
#include <math.h>
#include <string.h>
#include "program_internal.h"

/* ---- UNARY ---- */
int lrt_check_unary(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    (void)p;
    if (ins->noperands != 2 || ins->nints != 2 || ins->nfloats != 2) return 0;
    const int64_t kind = ip[0], n = ip[1];
    const int kind_ok = (kind >= 0 && kind < LRT_ACT_COUNT) || (kind >= LRT_UN_EXP && kind < LRT_UN_END);
    const int64_t esize = kind == LRT_UN_NOT ? 1 : 4;
    return kind_ok && count_ok(n) && holds(&o[0], n, esize) && holds(&o[1], n, esize);
}

int lrt_exec_unary(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins;
    if (ip[0] == LRT_UN_NOT) {
        const unsigned char *x = at(c, &o[0]);
        unsigned char *y = at(c, &o[1]);
        for (int64_t i = 0; i < ip[1]; i++) y[i] = !x[i];
        return LRT_OK;
    }
    c->p->v->unary((int32_t)ip[0], (const float *)(void *)at(c, &o[0]), (float *)(void *)at(c, &o[1]),
                   (size_t)ip[1], fp[0], fp[1]);
    return LRT_OK;
}

/* ---- BINARY: float32 arithmetic and comparisons on the vector loops; integer ones, and the
 * logic of bools, element by element ---- */
static int bin_kind_ok(int64_t kind, int64_t dt)
{
    if (kind >= LRT_BIN_AND && kind < LRT_BIN_END) return dt == LRT_DT_BOOL;
    const int arith = kind >= LRT_BIN_ADD && kind <= LRT_BIN_MIN, compare = kind >= LRT_BIN_LESS && kind <= LRT_BIN_EQUAL;
    if (dt == LRT_DT_F32) return arith || compare;
    return (dt == LRT_DT_I32 || dt == LRT_DT_I64) && ((arith && kind != LRT_BIN_POW) || compare);
}

int lrt_check_binary(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    (void)p;
    if (ins->noperands != 3 || ins->nints < 3) return 0;
    const int64_t kind = ip[0], dt = ip[1], nd = ip[2];
    if (!bin_kind_ok(kind, dt) || nd < 1 || nd > MAX_ND || ins->nints != 3 + 3 * nd) return 0;
    const int64_t *dims = ip + 3, in_size = dt_size(dt), out_size = kind >= LRT_BIN_LESS ? 1 : in_size;
    int64_t ra, rb, n;
    return reach_ok((int)nd, dims, ip + 3 + nd, &ra) && reach_ok((int)nd, dims, ip + 3 + 2 * nd, &rb) &&
           product_ok((int)nd, dims, &n) && holds(&o[0], ra, in_size) && holds(&o[1], rb, in_size) &&
           holds(&o[2], n, out_size);
}

static unsigned char compare1(int64_t kind, double a, double b)
{
    switch (kind) {
    case LRT_BIN_LESS: return a < b;
    case LRT_BIN_LESS_EQ: return a <= b;
    case LRT_BIN_GREATER: return a > b;
    case LRT_BIN_GREATER_EQ: return a >= b;
    default: return a == b;
    }
}

static unsigned char logic1(int64_t kind, unsigned char a, unsigned char b)
{
    return kind == LRT_BIN_AND ? (a && b) : kind == LRT_BIN_OR ? (a || b) : (!a != !b);
}

/* integer arithmetic as numpy does it, but for division: ONNX truncates toward zero; a zero
 * divisor gives 0 (numpy's result) rather than a trap */
static int64_t int1(int64_t kind, int64_t a, int64_t b)
{
    switch (kind) {
    case LRT_BIN_ADD: return (int64_t)((uint64_t)a + (uint64_t)b);
    case LRT_BIN_SUB: return (int64_t)((uint64_t)a - (uint64_t)b);
    case LRT_BIN_MUL: return (int64_t)((uint64_t)a * (uint64_t)b);
    case LRT_BIN_DIV: return b == 0 || (b == -1 && a == INT64_MIN) ? (b == 0 ? 0 : a) : a / b;
    case LRT_BIN_MAX: return a > b ? a : b;
    default: return a < b ? a : b;
    }
}

static int64_t load_int(const unsigned char *p, int64_t dt)
{
    if (dt == LRT_DT_I32) { int32_t v; memcpy(&v, p, 4); return v; }
    int64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void binary_int_run(int64_t kind, int64_t dt, const unsigned char *a, int64_t ai, const unsigned char *b,
                           int64_t bi, unsigned char *y, int64_t n)
{
    const int64_t sz = dt_size(dt);
    for (int64_t i = 0; i < n; i++) {
        const int64_t va = load_int(a + i * ai * sz, dt), vb = load_int(b + i * bi * sz, dt);
        if (kind >= LRT_BIN_LESS) {   /* compared as integers: a double would round large ones */
            y[i] = kind == LRT_BIN_LESS ? va < vb : kind == LRT_BIN_LESS_EQ ? va <= vb : kind == LRT_BIN_GREATER ? va > vb
                 : kind == LRT_BIN_GREATER_EQ ? va >= vb : va == vb;
            continue;
        }
        const int64_t r = int1(kind, va, vb);
        if (dt == LRT_DT_I32) { int32_t v = (int32_t)r; memcpy(y + i * 4, &v, 4); }
        else memcpy(y + i * 8, &r, 8);
    }
}

int lrt_exec_binary(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins, (void)fp;
    const int64_t kind = ip[0], dt = ip[1];
    const int nd = (int)ip[2];
    const int64_t *dims = ip + 3, *as = ip + 3 + nd, *bs = ip + 3 + 2 * nd;
    const int64_t inner = dims[nd - 1], ai = as[nd - 1], bi = bs[nd - 1], outer = outer_count(nd, dims);
    const unsigned char *a = at(c, &o[0]), *b = at(c, &o[1]);
    unsigned char *y = at(c, &o[2]);
    const int64_t isz = dt_size(dt), osz = kind >= LRT_BIN_LESS ? 1 : isz;
    nd_walk w = {nd, {0}, dims};
    int64_t off[2] = {0, 0};
    const int64_t *strides[2] = {as, bs};
    for (int64_t k = 0; k < outer; k++, y += inner * osz) {
        const unsigned char *pa = a + off[0] * isz, *pb = b + off[1] * isz;
        if (dt != LRT_DT_F32 && kind < LRT_BIN_AND) {
            binary_int_run(kind, dt, pa, ai, pb, bi, y, inner);
        } else if (kind < LRT_BIN_LESS && ai <= 1 && bi <= 1) {
            c->p->v->binary((int32_t)kind, (const float *)(const void *)pa, (int)ai, (const float *)(const void *)pb,
                            (int)bi, (float *)(void *)y, (size_t)inner);
        } else if (kind < LRT_BIN_LESS) {   /* a strided inner run (the compiler avoids these) */
            for (int64_t i = 0; i < inner; i++) {
                const float va = ((const float *)(const void *)pa)[i * ai], vb = ((const float *)(const void *)pb)[i * bi];
                float r;
                c->p->v->binary((int32_t)kind, &va, 0, &vb, 0, &r, 1);
                ((float *)(void *)y)[i] = r;
            }
        } else if (kind < LRT_BIN_AND) {
            for (int64_t i = 0; i < inner; i++)
                y[i] = compare1(kind, ((const float *)(const void *)pa)[i * ai], ((const float *)(const void *)pb)[i * bi]);
        } else {
            for (int64_t i = 0; i < inner; i++) y[i] = logic1(kind, pa[i * ai], pb[i * bi]);
        }
        nd_next(&w, off, strides, 2);
    }
    return LRT_OK;
}

/* ---- SOFTMAX ---- */
int lrt_check_softmax(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    (void)p;
    int64_t n;
    return ins->noperands == 2 && ins->nints == 4 && product_ok(3, ip, &n) && holds(&o[0], n, 4) && holds(&o[1], n, 4);
}

int lrt_exec_softmax(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins, (void)fp;
    const int64_t outer = ip[0], n = ip[1], inner = ip[2];
    const float *x = (const float *)(void *)at(c, &o[0]);
    float *y = (float *)(void *)at(c, &o[1]);
    float row[256];
    for (int64_t k = 0; k < outer; k++)
        for (int64_t i = 0; i < inner; i++) {
            const float *xr = x + k * n * inner + i;
            float *yr = y + k * n * inner + i;
            if (inner == 1) {
                c->p->v->softmax(xr, yr, (size_t)n, (int)ip[3]);
                continue;
            }
            if (n <= 256) {   /* a strided row, through a contiguous copy */
                for (int64_t j = 0; j < n; j++) row[j] = xr[j * inner];
                c->p->v->softmax(row, row, (size_t)n, (int)ip[3]);
                for (int64_t j = 0; j < n; j++) yr[j * inner] = row[j];
            } else {   /* long strided rows: max, sums and scale in place, in scalar code */
                float mx = -INFINITY, sum = 0.f;
                int nan = 0;
                for (int64_t j = 0; j < n; j++) { nan |= xr[j * inner] != xr[j * inner]; mx = xr[j * inner] > mx ? xr[j * inner] : mx; }
                for (int64_t j = 0; j < n; j++) sum += expf(xr[j * inner] - mx);
                for (int64_t j = 0; j < n; j++) {
                    const float d = xr[j * inner] - mx;
                    yr[j * inner] = nan || !isfinite(mx) ? NAN : ip[3] ? d - logf(sum) : expf(d) / sum;
                }
            }
        }
    return LRT_OK;
}

/* ---- REDUCE ---- */
int lrt_check_reduce(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    (void)p;
    int64_t n, ny;
    if (ins->noperands != 2 || ins->nints != 4 || ip[0] < 0 || ip[0] >= LRT_RED_END) return 0;
    const int64_t shape_y[2] = {ip[1], ip[3]};
    return product_ok(3, ip + 1, &n) && product_ok(2, shape_y, &ny) && holds(&o[0], n, 4) && holds(&o[1], ny, 4);
}

int lrt_exec_reduce(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins, (void)fp;
    const int64_t kind = ip[0], outer = ip[1], r = ip[2], inner = ip[3];
    const float *x = (const float *)(void *)at(c, &o[0]);
    float *y = (float *)(void *)at(c, &o[1]);
    for (int64_t k = 0; k < outer; k++)
        for (int64_t i = 0; i < inner; i++) {
            const float *xr = x + k * r * inner + i;
            double acc = kind == LRT_RED_PROD ? 1.0 : kind == LRT_RED_MAX ? -INFINITY : kind == LRT_RED_MIN ? INFINITY : 0.0;
            for (int64_t j = 0; j < r; j++) {
                const double v = xr[j * inner];
                switch (kind) {
                case LRT_RED_MAX: acc = v != v || v > acc ? v : acc; break;
                case LRT_RED_MIN: acc = v != v || v < acc ? v : acc; break;
                case LRT_RED_PROD: acc *= v; break;
                case LRT_RED_L2: case LRT_RED_SUMSQ: acc += v * v; break;
                default: acc += v;
                }
                if (acc != acc) break;   /* NaN stays NaN */
            }
            if (kind == LRT_RED_MEAN) acc = r ? acc / (double)r : NAN;
            if (kind == LRT_RED_L2) acc = sqrt(acc);
            y[k * inner + i] = (float)acc;
        }
    return LRT_OK;
}

/* ---- LAYERNORM ---- */
int lrt_check_layernorm(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    (void)p;
    int64_t n;
    return ins->noperands == 4 && ins->nints == 2 && ins->nfloats == 1 && product_ok(2, ip, &n) && ip[1] > 0 &&
           holds(&o[0], n, 4) && holds(&o[1], ip[1], 4) && (!has(&o[2]) || holds(&o[2], ip[1], 4)) && holds(&o[3], n, 4);
}

int lrt_exec_layernorm(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins;
    const int64_t outer = ip[0], n = ip[1];
    const float *x = (const float *)(void *)at(c, &o[0]), *scale = (const float *)(void *)at(c, &o[1]);
    const float *bias = has(&o[2]) ? (const float *)(void *)at(c, &o[2]) : NULL;
    float *y = (float *)(void *)at(c, &o[3]);
    for (int64_t k = 0; k < outer; k++) {
        const float *xr = x + k * n;
        float *yr = y + k * n;
        double mean = 0.0, var = 0.0;
        for (int64_t j = 0; j < n; j++) mean += xr[j];
        mean /= (double)n;
        for (int64_t j = 0; j < n; j++) var += (xr[j] - mean) * (xr[j] - mean);
        const float inv = (float)(1.0 / sqrt(var / (double)n + fp[0])), mf = (float)mean;
        for (int64_t j = 0; j < n; j++) yr[j] = (xr[j] - mf) * inv * scale[j] + (bias ? bias[j] : 0.f);
    }
    return LRT_OK;
}

