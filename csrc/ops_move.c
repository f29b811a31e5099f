/* ops_move.c — program ops that move data: strided copies, fills, lookup tables, gathers,
 * casts and Where (program_internal.h). */
#include <math.h>
#include <string.h>
#include "program_internal.h"

/* ---- COPY ---- */
int lrt_check_copy(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    (void)p;
    if (ins->noperands != 2 || ins->nints < 2) return 0;
    const int64_t esize = ip[0], nd = ip[1];
    if (!esize_ok(esize) || nd < 1 || nd > MAX_ND || ins->nints != 2 + 3 * nd) return 0;
    int64_t rs, rd;
    return reach_ok((int)nd, ip + 2, ip + 2 + nd, &rs) && reach_ok((int)nd, ip + 2, ip + 2 + 2 * nd, &rd) &&
           holds(&o[0], rs, esize) && holds(&o[1], rd, esize);
}

int lrt_exec_copy(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins, (void)fp;
    const int64_t esize = ip[0];
    const int nd = (int)ip[1];
    const int64_t *dims = ip + 2, *ss = ip + 2 + nd, *ds = ip + 2 + 2 * nd;
    const unsigned char *src = at(c, &o[0]);
    unsigned char *dst = at(c, &o[1]);
    const int64_t inner = dims[nd - 1], si = ss[nd - 1], di = ds[nd - 1], outer = outer_count(nd, dims);
    nd_walk w = {nd, {0}, dims};
    int64_t off[2] = {0, 0};
    const int64_t *strides[2] = {ss, ds};
    if (inner == 0) return LRT_OK;
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
    return LRT_OK;
}

/* ---- FILL ---- */
int lrt_check_fill(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    (void)p;
    return ins->noperands == 1 && ins->nints == 3 && esize_ok(ip[0]) && count_ok(ip[1]) && holds(&o[0], ip[1], ip[0]);
}

int lrt_exec_fill(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins, (void)fp;
    unsigned char *dst = at(c, &o[0]);
    const int64_t esize = ip[0], n = ip[1], bits = ip[2];
    for (int64_t i = 0; i < n; i++) memcpy(dst + i * esize, &bits, (size_t)esize);   /* little-endian low bytes */
    return LRT_OK;
}

/* ---- WHERE ---- */
int lrt_check_where(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    (void)p;
    if (ins->noperands != 4 || ins->nints < 2) return 0;
    const int64_t esize = ip[0], nd = ip[1];
    if (!esize_ok(esize) || nd < 1 || nd > MAX_ND || ins->nints != 2 + 4 * nd) return 0;
    const int64_t *dims = ip + 2;
    int64_t rc, ra, rb, n;
    return reach_ok((int)nd, dims, ip + 2 + nd, &rc) && reach_ok((int)nd, dims, ip + 2 + 2 * nd, &ra) &&
           reach_ok((int)nd, dims, ip + 2 + 3 * nd, &rb) && product_ok((int)nd, dims, &n) && holds(&o[0], rc, 1) &&
           holds(&o[1], ra, esize) && holds(&o[2], rb, esize) && holds(&o[3], n, esize);
}

int lrt_exec_where(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins, (void)fp;
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
    return LRT_OK;
}

/* ---- CAST ---- */
int lrt_check_cast(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    (void)p;
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

int lrt_exec_cast(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins, (void)fp;
    const int64_t from = ip[0], to = ip[1], n = ip[2], fs = dt_size(from), ts = dt_size(to);
    const unsigned char *x = at(c, &o[0]);
    unsigned char *y = at(c, &o[1]);
    for (int64_t i = 0; i < n; i++) {
        int64_t exact = INT64_MIN;   /* integers keep every bit between integer types */
        if (from == LRT_DT_I64) memcpy(&exact, x + i * fs, 8);
        else if (from == LRT_DT_I32) { int32_t v; memcpy(&v, x + i * fs, 4); exact = v; }
        store_dt(y + i * ts, to, load_dt(x + i * fs, from), exact);
    }
    return LRT_OK;
}

/* ---- GATHER ---- */
int lrt_check_gather(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    (void)p;
    if (ins->noperands != 3 || ins->nints != 6) return 0;
    const int64_t esize = ip[0], outer = ip[1], n = ip[2], inner = ip[3], count = ip[4], dt = ip[5];
    const int64_t data_dims[3] = {outer, n, inner}, y_dims[3] = {outer, count, inner};
    int64_t nd, ny;
    return esize_ok(esize) && (dt == LRT_DT_I64 || dt == LRT_DT_I32) && n > 0 && product_ok(3, data_dims, &nd) &&
           product_ok(3, y_dims, &ny) && holds(&o[0], nd, esize) && holds(&o[1], count, dt_size(dt)) &&
           holds(&o[2], ny, esize);
}

/* GATHER (to_data 0: rows[k, j] = data[k, idx[j]]) or SCATTER (to_data 1: the other way), every
 * index checked before anything is written */
static int move_rows(const run_ctx *c, const lrt_operand *o, const int64_t *ip, int to_data)
{
    const int64_t esize = ip[0], outer = ip[1], n = ip[2], inner = ip[3], count = ip[4], dt = ip[5];
    unsigned char *data = at(c, &o[0]), *rows = at(c, &o[2]);
    const unsigned char *idx = at(c, &o[1]);
    for (int64_t j = 0; j < count; j++) {
        const int64_t i = (int64_t)load_dt(idx + j * dt_size(dt), dt);
        if (i < -n || i >= n) return LRT_E_ARG;
    }
    const size_t row_bytes = (size_t)(inner * esize);
    for (int64_t k = 0; k < outer; k++)
        for (int64_t j = 0; j < count; j++) {
            int64_t i = (int64_t)load_dt(idx + j * dt_size(dt), dt);
            i += i < 0 ? n : 0;
            unsigned char *in_data = data + ((k * n + i) * inner) * esize, *in_rows = rows + ((k * count + j) * inner) * esize;
            if (to_data) memcpy(in_data, in_rows, row_bytes);
            else memcpy(in_rows, in_data, row_bytes);
        }
    return LRT_OK;
}

int lrt_exec_gather(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins, (void)fp;
    return move_rows(c, o, ip, 0);
}

/* ---- SCATTER: the inverse of GATHER, data[k, idx[j], :] = src[k, j, :] (a stream group's state
 * rows written back).  data must be writable; a repeated index keeps the last row. ---- */
int lrt_check_scatter(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    return lrt_check_gather(p, ins, o, ip) && (o[0].loc == LRT_LOC_ARENA || o[0].loc == LRT_LOC_OUTPUT);
}

int lrt_exec_scatter(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins, (void)fp;
    return move_rows(c, o, ip, 1);
}

/* ---- INDEX: y[i] = x[table[i]], or the fill value where table[i] < 0 (any static data movement
 * that is not strided: reflect pads, gathers of constant indices, ...) ---- */
int lrt_check_index(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
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

int lrt_exec_index(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins, (void)fp;
    const int64_t esize = ip[0], n = ip[1], bits = ip[2];
    const unsigned char *x = at(c, &o[0]);
    const int64_t *table = (const int64_t *)(const void *)at(c, &o[1]);
    unsigned char *y = at(c, &o[2]);
    for (int64_t i = 0; i < n; i++) {
        if (table[i] < 0) memcpy(y + i * esize, &bits, (size_t)esize);
        else memcpy(y + i * esize, x + table[i] * esize, (size_t)esize);
    }
    return LRT_OK;
}


/* ---- SCAN_ROW: one row of a Loop's scan output, at the row its counter names ---- */
int lrt_check_scan_row(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    (void)p;
    return ins->noperands == 3 && ins->nints == 2 && count_ok(ip[0]) && count_ok(ip[1]) &&
           holds(&o[0], 1, ip[0]) && holds(&o[1], ip[1], ip[0]) && holds(&o[2], 1, 8);
}

int lrt_exec_scan_row(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins, (void)fp;
    int64_t row;
    memcpy(&row, at(c, &o[2]), 8);
    if (row < 0 || row >= ip[1]) return LRT_E_ARG;   /* the counter is data: checked before writing */
    memcpy(at(c, &o[1]) + row * ip[0], at(c, &o[0]), (size_t)ip[0]);
    return LRT_OK;
}
