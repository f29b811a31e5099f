/* program.c — programs: checked at creation, then run instruction by instruction (lstmrt.h).
 * Creation checks every operand against its buffer and every op's parameters against its
 * operands, so running trusts them; the vector loops live in ops_impl.h. */
#define _POSIX_C_SOURCE 199309L   /* clock_gettime */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "internal.h"

#define MAX_ND 8
#define MAX_COUNT ((int64_t)1 << 40)   /* elements along any one count or dim */

struct lrt_program {
    lrt_instr *instrs; int32_t ninstrs;
    lrt_operand *operands; int32_t noperands;
    int64_t *ints; float *floats;
    lrt_weights **weights; int32_t nweights;
    const void **consts; int64_t *const_nbytes; int32_t nconsts;
    int64_t *input_nbytes; int32_t ninputs;
    int64_t *output_nbytes; int32_t noutputs;
    int64_t arena_bytes;
    const lrt_vops *v;
    int32_t threads;
};

typedef struct {
    const lrt_program *p;
    const void *const *in;
    void *const *out;
    unsigned char *arena;
} run_ctx;

/* ---- checked arithmetic for creation ---- */
static int mul_ok(int64_t a, int64_t b, int64_t *r)
{
    if (a < 0 || b < 0) return 0;
    if (a && b > INT64_MAX / a) return 0;
    *r = a * b;
    return 1;
}

static int count_ok(int64_t n) { return n >= 0 && n <= MAX_COUNT; }

/* elements of dims[0..nd): 0 on overflow or a bad dim, *n set otherwise */
static int product_ok(int nd, const int64_t *dims, int64_t *n)
{
    int64_t total = 1;
    for (int d = 0; d < nd; d++)
        if (!count_ok(dims[d]) || !mul_ok(total, dims[d], &total) || total > MAX_COUNT) return 0;
    *n = total;
    return 1;
}

/* the highest element index dims/strides reach, +1 (0 for an empty shape) */
static int reach_ok(int nd, const int64_t *dims, const int64_t *strides, int64_t *reach)
{
    int64_t hi = 0, n;
    if (!product_ok(nd, dims, &n)) return 0;
    if (n == 0) { *reach = 0; return 1; }
    for (int d = 0; d < nd; d++) {
        int64_t part;
        if (strides[d] < 0 || strides[d] > MAX_COUNT || !mul_ok(dims[d] - 1, strides[d], &part)) return 0;
        if (hi > INT64_MAX - part) return 0;
        hi += part;
    }
    *reach = hi + 1;
    return 1;
}

static int has(const lrt_operand *o) { return o->loc != LRT_LOC_NONE; }

/* operand o holds at least `elems` elements of `esize` bytes */
static int holds(const lrt_operand *o, int64_t elems, int64_t esize)
{
    int64_t bytes;
    return has(o) && mul_ok(elems, esize, &bytes) && o->nbytes >= bytes;
}

static int esize_ok(int64_t e) { return e == 1 || e == 2 || e == 4 || e == 8; }

static int64_t dt_size(int64_t dt)
{
    return dt == LRT_DT_F32 || dt == LRT_DT_I32 ? 4 : dt == LRT_DT_BOOL ? 1 : dt == LRT_DT_I64 || dt == LRT_DT_F64 ? 8 : 0;
}

/* ---- N-d walks: every index of dims[0..nd-1), the last dim left to the caller ---- */
typedef struct {
    int nd;
    int64_t idx[MAX_ND];
    const int64_t *dims;
} nd_walk;

/* advance to the next outer index, moving each stream's offset by its strides */
static void nd_next(nd_walk *w, int64_t *off, const int64_t *const *strides, int nstreams)
{
    for (int d = w->nd - 2; d >= 0; d--) {
        w->idx[d]++;
        for (int s = 0; s < nstreams; s++) off[s] += strides[s][d];
        if (w->idx[d] < w->dims[d]) return;
        for (int s = 0; s < nstreams; s++) off[s] -= strides[s][d] * w->dims[d];
        w->idx[d] = 0;
    }
}

static int64_t outer_count(int nd, const int64_t *dims)
{
    int64_t n = 1;
    for (int d = 0; d + 1 < nd; d++) n *= dims[d];
    return n;
}

/* ---- operand pointers ---- */
static unsigned char *at(const run_ctx *c, const lrt_operand *o)
{
    switch (o->loc) {
    case LRT_LOC_ARENA: return c->arena + o->offset;
    case LRT_LOC_INPUT: return (unsigned char *)c->in[o->index] + o->offset;
    case LRT_LOC_OUTPUT: return (unsigned char *)c->out[o->index] + o->offset;
    case LRT_LOC_CONST: return (unsigned char *)c->p->consts[o->index] + o->offset;
    default: return NULL;
    }
}

/* ---- COPY ---- */
static int check_copy(const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    if (ins->noperands != 2 || ins->nints < 2) return 0;
    const int64_t esize = ip[0], nd = ip[1];
    if (!esize_ok(esize) || nd < 1 || nd > MAX_ND || ins->nints != 2 + 3 * nd) return 0;
    int64_t rs, rd;
    return reach_ok((int)nd, ip + 2, ip + 2 + nd, &rs) && reach_ok((int)nd, ip + 2, ip + 2 + 2 * nd, &rd) &&
           holds(&o[0], rs, esize) && holds(&o[1], rd, esize);
}

static void run_copy(const run_ctx *c, const lrt_operand *o, const int64_t *ip)
{
    const int64_t esize = ip[0];
    const int nd = (int)ip[1];
    const int64_t *dims = ip + 2, *ss = ip + 2 + nd, *ds = ip + 2 + 2 * nd;
    const unsigned char *src = at(c, &o[0]);
    unsigned char *dst = at(c, &o[1]);
    const int64_t inner = dims[nd - 1], si = ss[nd - 1], di = ds[nd - 1], outer = outer_count(nd, dims);
    nd_walk w = {nd, {0}, dims};
    int64_t off[2] = {0, 0};
    const int64_t *strides[2] = {ss, ds};
    if (inner == 0) return;
    for (int64_t k = 0; k < outer; k++) {
        const unsigned char *s = src + off[0] * esize;
        unsigned char *d = dst + off[1] * esize;
        if (si == 1 && di == 1) {
            memmove(d, s, (size_t)(inner * esize));
        } else {
            for (int64_t i = 0; i < inner; i++) memmove(d + i * di * esize, s + i * si * esize, (size_t)esize);
        }
        nd_next(&w, off, strides, 2);
    }
}

/* ---- FILL ---- */
static int check_fill(const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    return ins->noperands == 1 && ins->nints == 3 && esize_ok(ip[0]) && count_ok(ip[1]) && holds(&o[0], ip[1], ip[0]);
}

static void run_fill(const run_ctx *c, const lrt_operand *o, const int64_t *ip)
{
    unsigned char *dst = at(c, &o[0]);
    const int64_t esize = ip[0], n = ip[1], bits = ip[2];
    for (int64_t i = 0; i < n; i++) memcpy(dst + i * esize, &bits, (size_t)esize);   /* little-endian low bytes */
}

/* ---- UNARY ---- */
static int check_unary(const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    if (ins->noperands != 2 || ins->nints != 2 || ins->nfloats != 2) return 0;
    const int64_t kind = ip[0], n = ip[1];
    const int kind_ok = (kind >= 0 && kind < LRT_ACT_COUNT) || (kind >= LRT_UN_EXP && kind < LRT_UN_END);
    const int64_t esize = kind == LRT_UN_NOT ? 1 : 4;
    return kind_ok && count_ok(n) && holds(&o[0], n, esize) && holds(&o[1], n, esize);
}

static void run_unary(const run_ctx *c, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    if (ip[0] == LRT_UN_NOT) {
        const unsigned char *x = at(c, &o[0]);
        unsigned char *y = at(c, &o[1]);
        for (int64_t i = 0; i < ip[1]; i++) y[i] = !x[i];
        return;
    }
    c->p->v->unary((int32_t)ip[0], (const float *)(void *)at(c, &o[0]), (float *)(void *)at(c, &o[1]),
                   (size_t)ip[1], fp[0], fp[1]);
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

static int check_binary(const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
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

static void run_binary(const run_ctx *c, const lrt_operand *o, const int64_t *ip)
{
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
}

/* ---- WHERE ---- */
static int check_where(const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    if (ins->noperands != 4 || ins->nints < 2) return 0;
    const int64_t esize = ip[0], nd = ip[1];
    if (!esize_ok(esize) || nd < 1 || nd > MAX_ND || ins->nints != 2 + 4 * nd) return 0;
    const int64_t *dims = ip + 2;
    int64_t rc, ra, rb, n;
    return reach_ok((int)nd, dims, ip + 2 + nd, &rc) && reach_ok((int)nd, dims, ip + 2 + 2 * nd, &ra) &&
           reach_ok((int)nd, dims, ip + 2 + 3 * nd, &rb) && product_ok((int)nd, dims, &n) && holds(&o[0], rc, 1) &&
           holds(&o[1], ra, esize) && holds(&o[2], rb, esize) && holds(&o[3], n, esize);
}

static void run_where(const run_ctx *c, const lrt_operand *o, const int64_t *ip)
{
    const int64_t esize = ip[0];
    const int nd = (int)ip[1];
    const int64_t *dims = ip + 2, *cs = ip + 2 + nd, *as = ip + 2 + 2 * nd, *bs = ip + 2 + 3 * nd;
    const int64_t inner = dims[nd - 1], outer = outer_count(nd, dims);
    const unsigned char *cond = at(c, &o[0]), *a = at(c, &o[1]), *b = at(c, &o[2]);
    unsigned char *y = at(c, &o[3]);
    nd_walk w = {nd, {0}, dims};
    int64_t off[3] = {0, 0, 0};
    const int64_t *strides[3] = {cs, as, bs};
    for (int64_t k = 0; k < outer; k++) {
        for (int64_t i = 0; i < inner; i++) {
            const unsigned char *src = cond[off[0] + i * cs[nd - 1]] ? a + (off[1] + i * as[nd - 1]) * esize
                                                                     : b + (off[2] + i * bs[nd - 1]) * esize;
            memcpy(y, src, (size_t)esize);
            y += esize;
        }
        nd_next(&w, off, strides, 3);
    }
}

/* ---- CAST ---- */
static int check_cast(const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    return ins->noperands == 2 && ins->nints == 3 && dt_size(ip[0]) && dt_size(ip[1]) && count_ok(ip[2]) &&
           holds(&o[0], ip[2], dt_size(ip[0])) && holds(&o[1], ip[2], dt_size(ip[1]));
}

static double load_dt(const unsigned char *p, int64_t dt)
{
    switch (dt) {
    case LRT_DT_F32: { float v; memcpy(&v, p, 4); return v; }
    case LRT_DT_BOOL: return *p != 0;
    case LRT_DT_I32: { int32_t v; memcpy(&v, p, 4); return v; }
    case LRT_DT_I64: { int64_t v; memcpy(&v, p, 8); return (double)v; }
    default: { double v; memcpy(&v, p, 8); return v; }
    }
}

/* float -> integer casts of NaN/inf/out-of-range values are undefined in C: numpy gives the
 * integer minimum there, and so do we */
static int64_t to_i64(double v) { return v == v && v >= -9.2233720368547758e18 && v < 9.2233720368547758e18 ? (int64_t)v : INT64_MIN; }

static void store_dt(unsigned char *p, int64_t dt, double v, int64_t exact)
{
    switch (dt) {
    case LRT_DT_F32: { float f = (float)v; memcpy(p, &f, 4); break; }
    case LRT_DT_BOOL: *p = v != 0; break;
    case LRT_DT_I32: { int32_t i = (int32_t)(exact != INT64_MIN ? exact : to_i64(v)); memcpy(p, &i, 4); break; }
    case LRT_DT_I64: { int64_t i = exact != INT64_MIN ? exact : to_i64(v); memcpy(p, &i, 8); break; }
    default: memcpy(p, &v, 8);
    }
}

static void run_cast(const run_ctx *c, const lrt_operand *o, const int64_t *ip)
{
    const int64_t from = ip[0], to = ip[1], n = ip[2], fs = dt_size(from), ts = dt_size(to);
    const unsigned char *x = at(c, &o[0]);
    unsigned char *y = at(c, &o[1]);
    for (int64_t i = 0; i < n; i++) {
        int64_t exact = INT64_MIN;   /* integers keep every bit between integer types */
        if (from == LRT_DT_I64) memcpy(&exact, x + i * fs, 8);
        else if (from == LRT_DT_I32) { int32_t v; memcpy(&v, x + i * fs, 4); exact = v; }
        store_dt(y + i * ts, to, load_dt(x + i * fs, from), exact);
    }
}

/* ---- DENSE ---- */
static int is_dense(const lrt_weights *w) { return w && w->gates == 1 && w->rt.data == NULL; }

static int unary_kind_ok(int64_t kind)
{
    return (kind >= 0 && kind < LRT_ACT_COUNT) || (kind >= LRT_UN_EXP && kind < LRT_UN_END && kind != LRT_UN_NOT);
}

static int64_t dense_scratch(const lrt_weights *w, int64_t m)
{
    const int64_t N = w->desc.hidden_size;
    return (N == w->hp ? 0 : m * w->hp) + (int64_t)lrt_ws_scratch_floats(w);
}

static int check_dense(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    if (ins->noperands != 3 || ins->nints != 2 || ins->nweights != 1) return 0;
    const lrt_weights *w = p->weights[ins->first_weights];
    const int64_t m = ip[0];
    int64_t scratch;
    if (!is_dense(w) || !count_ok(m) || !unary_kind_ok(ip[1]) || !mul_ok(m, w->hp, &scratch)) return 0;
    return holds(&o[0], m * w->desc.input_size, 4) && holds(&o[1], m * w->desc.hidden_size, 4) &&
           (dense_scratch(w, m) == 0 || holds(&o[2], dense_scratch(w, m), 4));
}

/* C[m][0..N) = act(A[m] @ W + bias): straight into y when N is its padded width, else through
 * scratch rows of the padded width */
static void dense_into(const lrt_vops *v, const lrt_weights *w, int64_t m, const float *a, float *y,
                       float *scratch, int64_t act)
{
    const int64_t N = w->desc.hidden_size, ldc = w->hp;
    if (m == 0) return;
    if (N == ldc) {
        v->dense(w, (size_t)m, a, (size_t)w->desc.input_size, y, (size_t)N, scratch);
    } else {
        float *rows = scratch;
        v->dense(w, (size_t)m, a, (size_t)w->desc.input_size, rows, (size_t)ldc, scratch + m * ldc);
        for (int64_t r = 0; r < m; r++) memcpy(y + r * N, rows + r * ldc, (size_t)N * sizeof(float));
    }
    if (act != LRT_UN_IDENTITY) v->unary((int32_t)act, y, y, (size_t)(m * N), 0.f, 0.f);
}

static void run_dense(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    const lrt_weights *w = c->p->weights[ins->first_weights];
    dense_into(c->p->v, w, ip[0], (const float *)(void *)at(c, &o[0]), (float *)(void *)at(c, &o[1]),
               has(&o[2]) ? (float *)(void *)at(c, &o[2]) : NULL, ip[1]);
}

/* ---- MATMUL: both operands computed ---- */
static int check_matmul(const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    if (ins->noperands != 3 || ins->nints != 6) return 0;
    const int64_t B = ip[0], M = ip[1], K = ip[2], N = ip[3], sa = ip[4], sb = ip[5];
    int64_t a_reach, b_reach, mk, kn, y;
    if (!count_ok(B) || !count_ok(M) || !count_ok(K) || !count_ok(N) || !count_ok(sa) || !count_ok(sb)) return 0;
    if (!mul_ok(M, K, &mk) || !mul_ok(K, N, &kn) || !mul_ok(B, M, &y) || !mul_ok(y, N, &y)) return 0;
    if (B == 0) return holds(&o[2], 0, 4);
    if (!mul_ok(B - 1, sa, &a_reach) || !mul_ok(B - 1, sb, &b_reach)) return 0;
    return holds(&o[0], a_reach + mk, 4) && holds(&o[1], b_reach + kn, 4) && holds(&o[2], y, 4);
}

static void run_matmul(const run_ctx *c, const lrt_operand *o, const int64_t *ip)
{
    const int64_t B = ip[0], M = ip[1], K = ip[2], N = ip[3], sa = ip[4], sb = ip[5];
    const float *a = (const float *)(void *)at(c, &o[0]), *b = (const float *)(void *)at(c, &o[1]);
    float *y = (float *)(void *)at(c, &o[2]);
    for (int64_t bt = 0; bt < B; bt++)
        for (int64_t i = 0; i < M; i++) {
            float *row = y + (bt * M + i) * N;
            memset(row, 0, (size_t)N * sizeof(float));
            for (int64_t k = 0; k < K; k++) {
                const float s = a[bt * sa + i * K + k];
                const float *br = b + bt * sb + k * N;
                for (int64_t j = 0; j < N; j++) row[j] += s * br[j];
            }
        }
}

/* ---- SOFTMAX ---- */
static int check_softmax(const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    int64_t n;
    return ins->noperands == 2 && ins->nints == 4 && product_ok(3, ip, &n) && holds(&o[0], n, 4) && holds(&o[1], n, 4);
}

static void run_softmax(const run_ctx *c, const lrt_operand *o, const int64_t *ip)
{
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
}

/* ---- REDUCE ---- */
static int check_reduce(const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    int64_t n, ny;
    if (ins->noperands != 2 || ins->nints != 4 || ip[0] < 0 || ip[0] >= LRT_RED_END) return 0;
    const int64_t shape_y[2] = {ip[1], ip[3]};
    return product_ok(3, ip + 1, &n) && product_ok(2, shape_y, &ny) && holds(&o[0], n, 4) && holds(&o[1], ny, 4);
}

static void run_reduce(const run_ctx *c, const lrt_operand *o, const int64_t *ip)
{
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
}

/* ---- LAYERNORM ---- */
static int check_layernorm(const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    int64_t n;
    return ins->noperands == 4 && ins->nints == 2 && ins->nfloats == 1 && product_ok(2, ip, &n) && ip[1] > 0 &&
           holds(&o[0], n, 4) && holds(&o[1], ip[1], 4) && (!has(&o[2]) || holds(&o[2], ip[1], 4)) && holds(&o[3], n, 4);
}

static void run_layernorm(const run_ctx *c, const lrt_operand *o, const int64_t *ip, const float *fp)
{
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
}

/* ---- GATHER ---- */
static int check_gather(const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    if (ins->noperands != 3 || ins->nints != 6) return 0;
    const int64_t esize = ip[0], outer = ip[1], n = ip[2], inner = ip[3], count = ip[4], dt = ip[5];
    const int64_t data_dims[3] = {outer, n, inner}, y_dims[3] = {outer, count, inner};
    int64_t nd, ny;
    return esize_ok(esize) && (dt == LRT_DT_I64 || dt == LRT_DT_I32) && n > 0 && product_ok(3, data_dims, &nd) &&
           product_ok(3, y_dims, &ny) && holds(&o[0], nd, esize) && holds(&o[1], count, dt_size(dt)) &&
           holds(&o[2], ny, esize);
}

static int run_gather(const run_ctx *c, const lrt_operand *o, const int64_t *ip)
{
    const int64_t esize = ip[0], outer = ip[1], n = ip[2], inner = ip[3], count = ip[4], dt = ip[5];
    const unsigned char *data = at(c, &o[0]), *idx = at(c, &o[1]);
    unsigned char *y = at(c, &o[2]);
    for (int64_t j = 0; j < count; j++) {   /* every index checked before anything is written */
        const int64_t i = (int64_t)load_dt(idx + j * dt_size(dt), dt);
        if (i < -n || i >= n) return LRT_E_ARG;
    }
    for (int64_t k = 0; k < outer; k++)
        for (int64_t j = 0; j < count; j++) {
            int64_t i = (int64_t)load_dt(idx + j * dt_size(dt), dt);
            i += i < 0 ? n : 0;
            memcpy(y + ((k * count + j) * inner) * esize, data + ((k * n + i) * inner) * esize, (size_t)(inner * esize));
        }
    return LRT_OK;
}

/* ---- INDEX: y[i] = x[table[i]], or the fill value where table[i] < 0 (any static data movement
 * that is not strided: reflect pads, gathers of constant indices, ...) ---- */
static int check_index(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    if (ins->noperands != 3 || ins->nints != 3 || !esize_ok(ip[0]) || !count_ok(ip[1])) return 0;
    if (o[1].loc != LRT_LOC_CONST || !holds(&o[1], ip[1], 8) || !holds(&o[2], ip[1], ip[0])) return 0;
    /* the table is constant: every entry is checked here, once */
    const unsigned char *table = (const unsigned char *)p->consts[o[1].index] + o[1].offset;
    int64_t reach = 0;
    for (int64_t i = 0; i < ip[1]; i++) {
        int64_t t;
        memcpy(&t, table + i * 8, 8);
        if (t >= reach) reach = t + 1;
    }
    return reach == 0 || holds(&o[0], reach, ip[0]);
}

static void run_index(const run_ctx *c, const lrt_operand *o, const int64_t *ip)
{
    const int64_t esize = ip[0], n = ip[1], bits = ip[2];
    const unsigned char *x = at(c, &o[0]);
    const int64_t *table = (const int64_t *)(const void *)at(c, &o[1]);
    unsigned char *y = at(c, &o[2]);
    for (int64_t i = 0; i < n; i++) {
        if (table[i] < 0) memcpy(y + i * esize, &bits, (size_t)esize);
        else memcpy(y + i * esize, x + table[i] * esize, (size_t)esize);
    }
}

/* ---- RECURRENT: one ONNX LSTM/GRU/RNN node, a direction per weights object ---- */
static int check_recurrent(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    if (ins->noperands != 7 || ins->nints != 4) return 0;
    const int64_t T = ip[0], B = ip[1], D = ip[2];
    if (T < 1 || B < 1 || T > (1 << 24) || B > (1 << 24) || (D != 1 && D != 2) || ins->nweights != D) return 0;
    const lrt_weights *w0 = p->weights[ins->first_weights];
    for (int d = 0; d < D; d++) {
        const lrt_weights *w = p->weights[ins->first_weights + d];
        if (!w || is_dense(w) || w->desc.cell != w0->desc.cell || w->desc.hidden_size != w0->desc.hidden_size ||
            w->desc.input_size != w0->desc.input_size)
            return 0;
    }
    const int64_t H = w0->desc.hidden_size, I = w0->desc.input_size, lstm = w0->desc.cell == LRT_LSTM;
    const int64_t state = D * B * H;
    const size_t ws = lrt_workspace_floats_threads(w0, (int32_t)B, (int32_t)T, p->threads);
    return holds(&o[0], T * B * I, 4) && (!has(&o[1]) || holds(&o[1], state, 4)) &&
           (!lstm || !has(&o[2]) || holds(&o[2], state, 4)) && (!has(&o[3]) || holds(&o[3], T * state, 4)) &&
           holds(&o[4], state, 4) && (!lstm || holds(&o[5], state, 4)) && ws != SIZE_MAX &&
           holds(&o[6], (int64_t)ws, 4);
}

static int run_recurrent(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    const int64_t T = ip[0], B = ip[1], D = ip[2], reverse = ip[3];
    const lrt_weights *w0 = c->p->weights[ins->first_weights];
    const int64_t H = w0->desc.hidden_size, lstm = w0->desc.cell == LRT_LSTM, BH = B * H;
    float *h = (float *)(void *)at(c, &o[4]), *cs = lstm ? (float *)(void *)at(c, &o[5]) : NULL;
    float *y = has(&o[3]) ? (float *)(void *)at(c, &o[3]) : NULL;
    /* the initial state first (h0 may be the same buffer as Y_h: memmove) */
    if (has(&o[1])) memmove(h, at(c, &o[1]), (size_t)(D * BH) * sizeof(float));
    else memset(h, 0, (size_t)(D * BH) * sizeof(float));
    if (lstm) {
        if (has(&o[2])) memmove(cs, at(c, &o[2]), (size_t)(D * BH) * sizeof(float));
        else memset(cs, 0, (size_t)(D * BH) * sizeof(float));
    }
    for (int64_t d = 0; d < D; d++) {
        const lrt_weights *w = c->p->weights[ins->first_weights + d];
        lrt_run_args a;
        memset(&a, 0, sizeof a);
        a.batch = (int32_t)B;
        a.steps = (int32_t)T;
        a.reverse = (int32_t)(d == 1 || reverse);
        a.x = (const float *)(void *)at(c, &o[0]);
        a.x_len = (size_t)(T * B * w->desc.input_size);
        a.h = h + d * BH;
        a.h_len = (size_t)BH;
        a.c = lstm ? cs + d * BH : NULL;
        a.c_len = lstm ? (size_t)BH : 0;
        a.y = y ? y + d * BH : NULL;
        a.y_len = y ? (size_t)(T * D * BH - d * BH) : 0;
        a.y_step_stride = D * BH;
        a.workspace = (float *)(void *)at(c, &o[6]);
        a.workspace_len = (size_t)(o[6].nbytes / 4);
        a.threads = c->p->threads;
        const int st = lrt_run(w, &a);
        if (st != LRT_OK) return st;
    }
    return LRT_OK;
}

/* ---- CONV (2-D; 1-D as height 1).  The group's input is copied once, channel-last and padded
 * (xp [hp][wp][cin_g], zeros around); a product row is then a window of xp: for one row of
 * kernel taps with dilation 1 the windows of an output row are xp itself read with a stride
 * (no copy at all: 1-D convolutions), otherwise each row is gathered from kh runs of xp.  The
 * weights are packed with K ordered (kh, kw, ci) to match. ---- */
enum { CV_B, CV_CIN, CV_COUT, CV_G, CV_ACT, CV_IH, CV_IW, CV_KH, CV_KW, CV_PH, CV_PW, CV_SH, CV_SW,
       CV_DH, CV_DW, CV_OH, CV_OW, CV_N };

typedef struct {
    int64_t cin_g, cout_g, hp, wp, k, positions, xp, cols, prod, total;   /* floats */
    int direct;
} conv_plan;

static int conv_plan_of(const lrt_weights *w, const int64_t *ip, conv_plan *c)
{
    c->cin_g = ip[CV_CIN] / ip[CV_G];
    c->cout_g = ip[CV_COUT] / ip[CV_G];
    c->hp = (ip[CV_OH] - 1) * ip[CV_SH] + (ip[CV_KH] - 1) * ip[CV_DH] + 1;
    c->wp = (ip[CV_OW] - 1) * ip[CV_SW] + (ip[CV_KW] - 1) * ip[CV_DW] + 1;
    c->k = c->cin_g * ip[CV_KH] * ip[CV_KW];
    c->positions = ip[CV_OH] * ip[CV_OW];
    c->direct = ip[CV_KH] == 1 && ip[CV_DW] == 1;
    int64_t hw;
    if (!mul_ok(c->hp, c->wp, &hw) || !mul_ok(hw, c->cin_g, &c->xp)) return 0;
    if (!mul_ok(c->positions, c->direct ? 0 : c->k, &c->cols) || !mul_ok(c->positions, w->hp, &c->prod)) return 0;
    c->total = c->xp + c->cols + c->prod + (int64_t)lrt_ws_scratch_floats(w);
    return c->total <= MAX_COUNT;
}

static int check_conv(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    if (ins->noperands != 3 || ins->nints != CV_N) return 0;
    for (int i = 0; i < CV_N; i++)
        if (i != CV_ACT && (!count_ok(ip[i]) || ip[i] > (1 << 24))) return 0;
    const int64_t G = ip[CV_G];
    if (G < 1 || ip[CV_CIN] % G || ip[CV_COUT] % G || ins->nweights != G || !unary_kind_ok(ip[CV_ACT])) return 0;
    if (ip[CV_SH] < 1 || ip[CV_SW] < 1 || ip[CV_DH] < 1 || ip[CV_DW] < 1 || ip[CV_KH] < 1 || ip[CV_KW] < 1 ||
        ip[CV_OH] < 1 || ip[CV_OW] < 1)
        return 0;
    conv_plan c;
    if (!conv_plan_of(p->weights[ins->first_weights], ip, &c)) return 0;
    for (int64_t g = 0; g < G; g++) {
        const lrt_weights *w = p->weights[ins->first_weights + g];
        if (!is_dense(w) || w->desc.input_size != c.k || w->desc.hidden_size != c.cout_g) return 0;
    }
    int64_t nx, ny;
    const int64_t xd[4] = {ip[CV_B], ip[CV_CIN], ip[CV_IH], ip[CV_IW]}, yd[4] = {ip[CV_B], ip[CV_COUT], ip[CV_OH], ip[CV_OW]};
    return product_ok(4, xd, &nx) && product_ok(4, yd, &ny) && holds(&o[0], nx, 4) && holds(&o[1], ny, 4) &&
           holds(&o[2], c.total, 4);
}

/* xp = the group's channels, channel-last, with the padding as zeros */
static void conv_pad_input(const float *x, const int64_t *ip, const conv_plan *c, float *xp)
{
    memset(xp, 0, (size_t)c->xp * sizeof(float));
    for (int64_t ci = 0; ci < c->cin_g; ci++)
        for (int64_t h = 0; h < ip[CV_IH]; h++) {
            const int64_t hh = h + ip[CV_PH];
            if (hh >= c->hp) break;
            const float *row = x + (ci * ip[CV_IH] + h) * ip[CV_IW];
            for (int64_t wi = 0; wi < ip[CV_IW] && wi + ip[CV_PW] < c->wp; wi++)
                xp[(hh * c->wp + wi + ip[CV_PW]) * c->cin_g + ci] = row[wi];
        }
}

static void run_conv(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    const lrt_weights *w0 = c->p->weights[ins->first_weights];
    conv_plan pl;
    conv_plan_of(w0, ip, &pl);
    const int64_t OH = ip[CV_OH], OW = ip[CV_OW], KH = ip[CV_KH], KW = ip[CV_KW], P = pl.positions;
    const float *x = (const float *)(void *)at(c, &o[0]);
    float *y = (float *)(void *)at(c, &o[1]), *xp = (float *)(void *)at(c, &o[2]);
    float *cols = xp + pl.xp, *prod = cols + pl.cols, *scratch = prod + pl.prod;
    const size_t run = (size_t)(KW * pl.cin_g);   /* one kernel row's taps: contiguous in xp when DW == 1 */
    for (int64_t b = 0; b < ip[CV_B]; b++)
        for (int64_t g = 0; g < ip[CV_G]; g++) {
            const lrt_weights *w = c->p->weights[ins->first_weights + g];
            const int64_t ldc = w->hp;
            conv_pad_input(x + (b * ip[CV_CIN] + g * pl.cin_g) * ip[CV_IH] * ip[CV_IW], ip, &pl, xp);
            if (pl.direct) {   /* each output row: xp's row read with a stride of SW pixels */
                for (int64_t oh = 0; oh < OH; oh++)
                    c->p->v->dense(w, (size_t)OW, xp + oh * ip[CV_SH] * pl.wp * pl.cin_g, (size_t)(ip[CV_SW] * pl.cin_g),
                                   prod + oh * OW * ldc, (size_t)ldc, scratch);
            } else {
                for (int64_t oh = 0; oh < OH; oh++)
                    for (int64_t ow = 0; ow < OW; ow++) {
                        float *row = cols + (oh * OW + ow) * pl.k;
                        for (int64_t kh = 0; kh < KH; kh++) {
                            const float *src = xp + ((oh * ip[CV_SH] + kh * ip[CV_DH]) * pl.wp + ow * ip[CV_SW]) * pl.cin_g;
                            if (ip[CV_DW] == 1) {
                                memcpy(row + kh * (int64_t)run, src, run * sizeof(float));
                            } else {
                                for (int64_t kw = 0; kw < KW; kw++)
                                    memcpy(row + (kh * KW + kw) * pl.cin_g, src + kw * ip[CV_DW] * pl.cin_g,
                                           (size_t)pl.cin_g * sizeof(float));
                            }
                        }
                    }
                c->p->v->dense(w, (size_t)P, cols, (size_t)pl.k, prod, (size_t)ldc, scratch);
            }
            float *yg = y + (b * ip[CV_COUT] + g * pl.cout_g) * P;
            for (int64_t co = 0; co < pl.cout_g; co++)
                for (int64_t p = 0; p < P; p++) yg[co * P + p] = prod[p * ldc + co];
            if (ip[CV_ACT] != LRT_UN_IDENTITY) c->p->v->unary((int32_t)ip[CV_ACT], yg, yg, (size_t)(pl.cout_g * P), 0.f, 0.f);
        }
}

/* ---- the program ---- */
static int operand_ok(const lrt_program *p, const lrt_operand *o)
{
    int64_t size;
    switch (o->loc) {
    case LRT_LOC_NONE: return 1;
    case LRT_LOC_ARENA: size = p->arena_bytes; break;
    case LRT_LOC_INPUT: if (o->index < 0 || o->index >= p->ninputs) return 0; size = p->input_nbytes[o->index]; break;
    case LRT_LOC_OUTPUT: if (o->index < 0 || o->index >= p->noutputs) return 0; size = p->output_nbytes[o->index]; break;
    case LRT_LOC_CONST: if (o->index < 0 || o->index >= p->nconsts) return 0; size = p->const_nbytes[o->index]; break;
    default: return 0;
    }
    return o->offset >= 0 && o->nbytes >= 0 && o->offset <= size && o->nbytes <= size - o->offset;
}

static int instr_ok(const lrt_program *p, const lrt_instr *ins)
{
    if (ins->first_operand < 0 || ins->noperands < 0 || ins->first_operand > p->noperands - ins->noperands) return 0;
    if (ins->first_weights < 0 || ins->nweights < 0 || ins->first_weights > p->nweights - ins->nweights) return 0;
    for (int32_t i = 0; i < ins->nweights; i++)
        if (!p->weights[ins->first_weights + i]) return 0;
    const lrt_operand *o = p->operands + ins->first_operand;
    const int64_t *ip = p->ints + ins->first_int;
    switch (ins->op) {
    case LRT_OP_COPY: return check_copy(ins, o, ip);
    case LRT_OP_FILL: return check_fill(ins, o, ip);
    case LRT_OP_UNARY: return check_unary(ins, o, ip);
    case LRT_OP_BINARY: return check_binary(ins, o, ip);
    case LRT_OP_WHERE: return check_where(ins, o, ip);
    case LRT_OP_CAST: return check_cast(ins, o, ip);
    case LRT_OP_DENSE: return check_dense(p, ins, o, ip);
    case LRT_OP_MATMUL: return check_matmul(ins, o, ip);
    case LRT_OP_SOFTMAX: return check_softmax(ins, o, ip);
    case LRT_OP_REDUCE: return check_reduce(ins, o, ip);
    case LRT_OP_LAYERNORM: return check_layernorm(ins, o, ip);
    case LRT_OP_GATHER: return check_gather(ins, o, ip);
    case LRT_OP_INDEX: return check_index(p, ins, o, ip);
    case LRT_OP_RECURRENT: return check_recurrent(p, ins, o, ip);
    case LRT_OP_CONV: return check_conv(p, ins, o, ip);
    default: return 0;
    }
}

void lrt_program_free(lrt_program *p)
{
    if (!p) return;
    free(p->instrs); free(p->operands); free(p->ints); free(p->floats); free(p->weights);
    free(p->consts); free(p->const_nbytes); free(p->input_nbytes); free(p->output_nbytes);
    free(p);
}

/* a copy of n items of size sz (a valid pointer even for n == 0) */
static void *dup(const void *src, int64_t n, size_t sz, int *ok)
{
    if (n < 0 || (src == NULL && n > 0) || (uint64_t)n > SIZE_MAX / sz / 2) { *ok = 0; return NULL; }
    void *d = malloc(n ? (size_t)n * sz : 1);
    if (!d) { *ok = 0; return NULL; }
    if (n) memcpy(d, src, (size_t)n * sz);
    return d;
}

static int tables_ok(const lrt_instr *ins)
{
    return ins->nints >= 0 && ins->nfloats >= 0 && ins->first_int >= 0 && ins->first_float >= 0 &&
           ins->first_int <= INT64_MAX - ins->nints && ins->first_float <= INT64_MAX - ins->nfloats;
}

int lrt_program_create(const lrt_program_desc *d, lrt_program **out, int32_t *bad_instr)
{
    if (bad_instr) *bad_instr = -1;
    if (!out) return LRT_E_ARG;
    *out = NULL;
    if (!d || d->ninstrs < 0 || d->noperands < 0 || d->nints < 0 || d->nfloats < 0 || d->nweights < 0 ||
        d->nconsts < 0 || d->ninputs < 0 || d->noutputs < 0 || d->arena_bytes < 0 ||
        d->threads < 0 || d->threads > LRT_MAX_THREADS)
        return LRT_E_ARG;
    int32_t simd;
    int st = lrt_resolve_simd(d->simd, &simd);
    if (st != LRT_OK) return st;
    lrt_program *p = calloc(1, sizeof *p);
    if (!p) return LRT_E_NOMEM;
    int ok = 1;
    p->instrs = dup(d->instrs, d->ninstrs, sizeof *d->instrs, &ok);
    p->operands = dup(d->operands, d->noperands, sizeof *d->operands, &ok);
    p->ints = dup(d->ints, d->nints, sizeof *d->ints, &ok);
    p->floats = dup(d->floats, d->nfloats, sizeof *d->floats, &ok);
    p->weights = dup(d->weights, d->nweights, sizeof *d->weights, &ok);
    p->consts = dup(d->consts, d->nconsts, sizeof *d->consts, &ok);
    p->const_nbytes = dup(d->const_nbytes, d->nconsts, sizeof *d->const_nbytes, &ok);
    p->input_nbytes = dup(d->input_nbytes, d->ninputs, sizeof *d->input_nbytes, &ok);
    p->output_nbytes = dup(d->output_nbytes, d->noutputs, sizeof *d->output_nbytes, &ok);
    p->ninstrs = d->ninstrs; p->noperands = d->noperands; p->nweights = d->nweights; p->nconsts = d->nconsts;
    p->ninputs = d->ninputs; p->noutputs = d->noutputs;
    p->arena_bytes = d->arena_bytes;
    p->threads = d->threads;
#ifdef LRT_HAVE_X86
    p->v = simd == LRT_SIMD_AVX512 ? &lrt_vops_avx512 : simd == LRT_SIMD_AVX2 ? &lrt_vops_avx2 : &lrt_vops_scalar;
#else
    p->v = &lrt_vops_scalar;
#endif
    if (!ok) {
        lrt_program_free(p);
        return LRT_E_NOMEM;
    }
    for (int32_t i = 0; i < p->nconsts; i++)
        if (!p->consts[i] || p->const_nbytes[i] < 0) { lrt_program_free(p); return LRT_E_ARG; }
    for (int32_t i = 0; i < p->ninputs; i++)
        if (p->input_nbytes[i] < 0) { lrt_program_free(p); return LRT_E_ARG; }
    for (int32_t i = 0; i < p->noutputs; i++)
        if (p->output_nbytes[i] < 0) { lrt_program_free(p); return LRT_E_ARG; }
    for (int32_t i = 0; i < p->noperands; i++)
        if (!operand_ok(p, &p->operands[i])) {
            lrt_program_free(p);
            return LRT_E_ARG;
        }
    for (int32_t i = 0; i < p->ninstrs; i++) {
        const lrt_instr *ins = &p->instrs[i];
        if (!tables_ok(ins) || ins->first_int + ins->nints > d->nints ||
            ins->first_float + ins->nfloats > d->nfloats || !instr_ok(p, ins)) {
            if (bad_instr) *bad_instr = i;
            lrt_program_free(p);
            return LRT_E_ARG;
        }
    }
    *out = p;
    return LRT_OK;
}

static double now_seconds(void)
{
#if defined(CLOCK_MONOTONIC)
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#else
    return (double)clock() / CLOCKS_PER_SEC;
#endif
}

static int run_instr(const run_ctx *c, const lrt_instr *ins)
{
    const lrt_operand *o = c->p->operands + ins->first_operand;
    const int64_t *ip = c->p->ints + ins->first_int;
    const float *fp = c->p->floats + ins->first_float;
    switch (ins->op) {
    case LRT_OP_COPY: run_copy(c, o, ip); break;
    case LRT_OP_FILL: run_fill(c, o, ip); break;
    case LRT_OP_UNARY: run_unary(c, o, ip, fp); break;
    case LRT_OP_BINARY: run_binary(c, o, ip); break;
    case LRT_OP_WHERE: run_where(c, o, ip); break;
    case LRT_OP_CAST: run_cast(c, o, ip); break;
    case LRT_OP_DENSE: run_dense(c, ins, o, ip); break;
    case LRT_OP_MATMUL: run_matmul(c, o, ip); break;
    case LRT_OP_SOFTMAX: run_softmax(c, o, ip); break;
    case LRT_OP_REDUCE: run_reduce(c, o, ip); break;
    case LRT_OP_LAYERNORM: run_layernorm(c, o, ip, fp); break;
    case LRT_OP_GATHER: return run_gather(c, o, ip);
    case LRT_OP_INDEX: run_index(c, o, ip); break;
    case LRT_OP_RECURRENT: return run_recurrent(c, ins, o, ip);
    case LRT_OP_CONV: run_conv(c, ins, o, ip); break;
    default: return LRT_E_ARG;
    }
    return LRT_OK;
}

int lrt_program_run(const lrt_program *p, const void *const *inputs, void *const *outputs, void *arena,
                    size_t arena_bytes, double *seconds, int32_t *failed)
{
    if (failed) *failed = -1;
    if (!p || (p->ninputs && !inputs) || (p->noutputs && !outputs)) return LRT_E_ARG;
    if ((p->arena_bytes && !arena) || arena_bytes < (size_t)p->arena_bytes || (uintptr_t)arena % 64) return LRT_E_ARG;
    for (int32_t i = 0; i < p->ninputs; i++)
        if (!inputs[i] && p->input_nbytes[i]) return LRT_E_ARG;
    for (int32_t i = 0; i < p->noutputs; i++)
        if (!outputs[i] && p->output_nbytes[i]) return LRT_E_ARG;
    const run_ctx c = {p, inputs, outputs, arena};
    for (int32_t i = 0; i < p->ninstrs; i++) {
        const double t0 = seconds ? now_seconds() : 0.0;
        const int st = run_instr(&c, &p->instrs[i]);
        if (seconds) seconds[i] += now_seconds() - t0;
        if (st != LRT_OK) {
            if (failed) *failed = i;
            return st;
        }
    }
    return LRT_OK;
}
