/* program.c — programs: checked at creation, then run instruction by instruction (lstmrt.h).
 * Creation checks every operand against its buffer and every op's parameters against its
 * operands (each op family's lrt_check_*), so running trusts them. */
#define _POSIX_C_SOURCE 199309L   /* clock_gettime */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "program_internal.h"

/* by op code: the op families' checks and runs (ops_move.c, ops_math.c, ops_nn.c, ops_fused.c) */
static const struct {
    int (*check)(const lrt_program *, const lrt_instr *, const lrt_operand *, const int64_t *);
    int (*exec)(const run_ctx *, const lrt_instr *, const lrt_operand *, const int64_t *, const float *);
} OPS[LRT_OP_COUNT] = {
    {NULL, NULL},
    {lrt_check_copy, lrt_exec_copy},   /* LRT_OP_COPY */
    {lrt_check_fill, lrt_exec_fill},   /* LRT_OP_FILL */
    {lrt_check_unary, lrt_exec_unary},   /* LRT_OP_UNARY */
    {lrt_check_binary, lrt_exec_binary},   /* LRT_OP_BINARY */
    {lrt_check_where, lrt_exec_where},   /* LRT_OP_WHERE */
    {lrt_check_cast, lrt_exec_cast},   /* LRT_OP_CAST */
    {lrt_check_dense, lrt_exec_dense},   /* LRT_OP_DENSE */
    {lrt_check_matmul, lrt_exec_matmul},   /* LRT_OP_MATMUL */
    {lrt_check_softmax, lrt_exec_softmax},   /* LRT_OP_SOFTMAX */
    {lrt_check_reduce, lrt_exec_reduce},   /* LRT_OP_REDUCE */
    {lrt_check_layernorm, lrt_exec_layernorm},   /* LRT_OP_LAYERNORM */
    {lrt_check_gather, lrt_exec_gather},   /* LRT_OP_GATHER */
    {lrt_check_index, lrt_exec_index},   /* LRT_OP_INDEX */
    {lrt_check_recurrent, lrt_exec_recurrent},   /* LRT_OP_RECURRENT */
    {lrt_check_conv, lrt_exec_conv},   /* LRT_OP_CONV */
    {NULL, NULL},                       /* LRT_OP_BRANCH: run by the loop itself */
    {NULL, NULL},                       /* LRT_OP_LOOP: run by run_range */
    {lrt_check_scan_row, lrt_exec_scan_row},   /* LRT_OP_SCAN_ROW */
    {lrt_check_scatter, lrt_exec_scatter},   /* LRT_OP_SCATTER */
    {lrt_check_fused, lrt_exec_fused},   /* LRT_OP_FUSED */
};

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
    if (ins->op == LRT_OP_BRANCH || ins->op == LRT_OP_LOOP) return 1;   /* checked with their index */
    return ins->op > 0 && ins->op < LRT_OP_COUNT && OPS[ins->op].check(p, ins, o, ip);
}

/* a branch at instruction i: forward, within the program, a 1-byte condition unless always */
static int branch_ok(const lrt_program *p, int32_t i)
{
    const lrt_instr *ins = &p->instrs[i];
    const int64_t *ip = p->ints + ins->first_int;
    if (ins->nints != 2 || ip[0] <= i || ip[0] > p->ninstrs || (ip[1] != 0 && ip[1] != 1)) return 0;
    return ip[1] ? ins->noperands == 0 : ins->noperands == 1 && has(&p->operands[ins->first_operand]) &&
                                                 p->operands[ins->first_operand].nbytes >= 1;
}

#define MAX_LOOP_DEPTH 64   /* loops inside loops: run_range recurses once per level */

/* a loop at instruction i: its body [i+1, end) inside the program, a positive cap, and operands
 * of the sizes it reads and writes (the counter in the arena: it is written) */
static int loop_ok(const lrt_program *p, int32_t i)
{
    const lrt_instr *ins = &p->instrs[i];
    const lrt_operand *o = p->operands + ins->first_operand;
    const int64_t *ip = p->ints + ins->first_int;
    if (ins->noperands != 4 || ins->nints != 3 || ip[0] <= i || ip[0] > p->ninstrs || ip[1] <= 0 || ip[2] < -1)
        return 0;
    return (!has(&o[0]) || o[0].nbytes >= 8) && (!has(&o[1]) || o[1].nbytes >= 1) &&
           o[2].loc == LRT_LOC_ARENA && o[2].nbytes >= 8 && (!has(&o[3]) || o[3].nbytes >= 1);
}

static int64_t loop_end(const lrt_program *p, int32_t i) { return p->ints[p->instrs[i].first_int]; }

/* every loop's body properly nested, in one pass over a stack of the open loops: a loop starting
 * inside a body ends inside it, at most MAX_LOOP_DEPTH deep; a branch jumps within its innermost
 * body (parent: the loop whose body holds an instruction innermost, or -1), or to that body's end.
 * LRT_OK, LRT_E_ARG with *bad set, or LRT_E_NOMEM. */
static int nesting_ok(const lrt_program *p, int32_t *bad)
{
    int32_t *parent = malloc(sizeof *parent * (size_t)(p->ninstrs ? p->ninstrs : 1));
    int32_t open[MAX_LOOP_DEPTH];
    int depth = 0;
    if (!parent) return LRT_E_NOMEM;
    for (int32_t k = 0; k < p->ninstrs && *bad < 0; k++) {
        while (depth && loop_end(p, open[depth - 1]) <= k) depth--;
        parent[k] = depth ? open[depth - 1] : -1;
        if (p->instrs[k].op != LRT_OP_LOOP) continue;
        if (depth == MAX_LOOP_DEPTH || (depth && loop_end(p, k) > loop_end(p, open[depth - 1]))) *bad = k;
        else open[depth++] = k;
    }
    for (int32_t k = 0; k < p->ninstrs && *bad < 0; k++) {
        if (p->instrs[k].op != LRT_OP_BRANCH) continue;
        const int64_t target = p->ints[p->instrs[k].first_int];
        const int64_t end = parent[k] >= 0 ? loop_end(p, parent[k]) : p->ninstrs;
        if (target != end && (target > end || parent[target] != parent[k])) *bad = k;
    }
    free(parent);
    return *bad < 0 ? LRT_OK : LRT_E_ARG;
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
            ins->first_float + ins->nfloats > d->nfloats || !instr_ok(p, ins) ||
            (ins->op == LRT_OP_BRANCH && !branch_ok(p, i)) || (ins->op == LRT_OP_LOOP && !loop_ok(p, i))) {
            if (bad_instr) *bad_instr = i;
            lrt_program_free(p);
            return LRT_E_ARG;
        }
    }
    int32_t bad = -1;
    st = nesting_ok(p, &bad);
    if (st != LRT_OK) {
        if (bad_instr) *bad_instr = bad;
        lrt_program_free(p);
        return st;
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
    return OPS[ins->op].exec(c, ins, o, ip, fp);
}

static int run_range(const run_ctx *c, int32_t first, int32_t end, double *seconds, int32_t *failed);

/* the LOOP at instruction i: its body run while the trip count and the condition allow, at most
 * its cap times (a count from the data must never hang the call) */
static int run_loop(const run_ctx *c, int32_t i, double *seconds, int32_t *failed)
{
    const lrt_program *p = c->p;
    const lrt_instr *ins = &p->instrs[i];
    const lrt_operand *o = p->operands + ins->first_operand;
    const int64_t *ip = p->ints + ins->first_int;
    int64_t trip = INT64_MAX, n = 0;
    if (has(&o[0])) memcpy(&trip, at(c, &o[0]), 8);
    int go = !has(&o[1]) || *at(c, &o[1]);
    unsigned char *counter = at(c, &o[2]);
    for (; go && n < trip; n++) {
        if (n == ip[1]) { *failed = i; return LRT_E_ARG; }
        memcpy(counter, &n, 8);
        const int st = run_range(c, i + 1, (int32_t)ip[0], seconds, failed);
        if (st != LRT_OK) return st;
        go = !has(&o[3]) || *at(c, &o[3]);
    }
    memcpy(counter, &n, 8);
    if (ip[2] >= 0 && n != ip[2]) { *failed = i; return LRT_E_COUNT; }
    return LRT_OK;
}

/* instructions [first, end): a loop runs its body and continues after it; branches stay inside
 * the range (checked at creation) */
static int run_range(const run_ctx *c, int32_t first, int32_t end, double *seconds, int32_t *failed)
{
    const lrt_program *p = c->p;
    for (int32_t i = first; i < end; i++) {
        const lrt_instr *ins = &p->instrs[i];
        const int64_t *ip = p->ints + ins->first_int;
        if (ins->op == LRT_OP_BRANCH) {   /* the next instruction, or the target (checked forward) */
            if (ip[1] || !*at(c, &p->operands[ins->first_operand])) i = (int32_t)ip[0] - 1;
            continue;
        }
        if (ins->op == LRT_OP_LOOP) {
            const int st = run_loop(c, i, seconds, failed);
            if (st != LRT_OK) return st;
            i = (int32_t)ip[0] - 1;
            continue;
        }
        const double t0 = seconds ? now_seconds() : 0.0;
        const int st = run_instr(c, ins);
        if (seconds) seconds[i] += now_seconds() - t0;
        if (st != LRT_OK) {
            *failed = i;
            return st;
        }
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
    int32_t where = -1;
    const int st = run_range(&c, 0, p->ninstrs, seconds, &where);
    if (failed) *failed = where;
    return st;
}
