/* program_internal.h — what the program executor (program.c) and its op families (ops_*.c)
 * share: the program object, a call's context, checked arithmetic and N-d walks.  Not public. */
#ifndef LSTMRT_PROGRAM_INTERNAL_H
#define LSTMRT_PROGRAM_INTERNAL_H
#include <string.h>
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
static inline int mul_ok(int64_t a, int64_t b, int64_t *r)
{
    if (a < 0 || b < 0) return 0;
    if (a && b > INT64_MAX / a) return 0;
    *r = a * b;
    return 1;
}

static inline int count_ok(int64_t n) { return n >= 0 && n <= MAX_COUNT; }

/* elements of dims[0..nd): 0 on overflow or a bad dim, *n set otherwise */
static inline int product_ok(int nd, const int64_t *dims, int64_t *n)
{
    int64_t total = 1;
    for (int d = 0; d < nd; d++)
        if (!count_ok(dims[d]) || !mul_ok(total, dims[d], &total) || total > MAX_COUNT) return 0;
    *n = total;
    return 1;
}

/* the highest element index dims/strides reach, +1 (0 for an empty shape) */
static inline int reach_ok(int nd, const int64_t *dims, const int64_t *strides, int64_t *reach)
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

static inline int has(const lrt_operand *o) { return o->loc != LRT_LOC_NONE; }

/* operand o holds at least `elems` elements of `esize` bytes */
static inline int holds(const lrt_operand *o, int64_t elems, int64_t esize)
{
    int64_t bytes;
    return has(o) && mul_ok(elems, esize, &bytes) && o->nbytes >= bytes;
}

static inline int esize_ok(int64_t e) { return e == 1 || e == 2 || e == 4 || e == 8; }

static inline int64_t dt_size(int64_t dt)
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
static inline void nd_next(nd_walk *w, int64_t *off, const int64_t *const *strides, int nstreams)
{
    for (int d = w->nd - 2; d >= 0; d--) {
        w->idx[d]++;
        for (int s = 0; s < nstreams; s++) off[s] += strides[s][d];
        if (w->idx[d] < w->dims[d]) return;
        for (int s = 0; s < nstreams; s++) off[s] -= strides[s][d] * w->dims[d];
        w->idx[d] = 0;
    }
}

static inline int64_t outer_count(int nd, const int64_t *dims)
{
    int64_t n = 1;
    for (int d = 0; d + 1 < nd; d++) n *= dims[d];
    return n;
}

/* ---- operand pointers ---- */
static inline unsigned char *at(const run_ctx *c, const lrt_operand *o)
{
    switch (o->loc) {
    case LRT_LOC_ARENA: return c->arena + o->offset;
    case LRT_LOC_INPUT: return (unsigned char *)c->in[o->index] + o->offset;
    case LRT_LOC_OUTPUT: return (unsigned char *)c->out[o->index] + o->offset;
    case LRT_LOC_CONST: return (unsigned char *)c->p->consts[o->index] + o->offset;
    default: return NULL;
    }
}


/* each op: its check at creation (1: consistent) and its run (LRT_OK or a failure) */
int lrt_check_copy(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_copy(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_fill(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_fill(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_unary(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_unary(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_binary(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_binary(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_where(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_where(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_cast(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_cast(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_dense(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_dense(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_matmul(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_matmul(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_softmax(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_softmax(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_reduce(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_reduce(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_layernorm(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_layernorm(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_gather(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_gather(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_scatter(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_scatter(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_index(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_index(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_recurrent(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_recurrent(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_conv(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_conv(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_scan_row(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_scan_row(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);
int lrt_check_fused(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip);
int lrt_exec_fused(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp);

#endif
