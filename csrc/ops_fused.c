/* ops_fused.c — LRT_OP_FUSED: a group of float32 elementwise ops run block by block over their
 * common output, each block's intermediates kept in small buffers (L1) instead of the arena, the
 * inputs read where they lie (or gathered, when broadcast along some dims) and the outputs
 * written where they go.
 * Each step calls the SIMD path's own unary/binary loop, so a fused group gives the bits the
 * separate UNARY/BINARY instructions give; blocks are a multiple of every vector length, so a
 * loop's vector body and scalar tail fall on the same elements as in one whole-output call. */
#include <string.h>
#include "program_internal.h"

/* the parameter layout (lstmrt.h), read from the ints */
typedef struct {
    int nin, nout, ntemp, nsteps, nd;
    int64_t block;
    const int64_t *dims, *strides, *steps, *out_regs;   /* strides: nin rows of nd */
} fused_layout;

static fused_layout layout_of(const int64_t *ip)
{
    fused_layout L = {(int)ip[0], (int)ip[1], (int)ip[2], (int)ip[3], (int)ip[5], ip[4], NULL, NULL, NULL, NULL};
    L.dims = ip + 6;
    L.strides = L.dims + L.nd;
    L.steps = L.strides + (int64_t)L.nin * L.nd;
    L.out_regs = L.steps + 5 * (int64_t)L.nsteps;
    return L;
}

static int unary_kind_ok(int64_t k)
{
    return (k >= 0 && k < LRT_ACT_COUNT) || (k >= LRT_UN_EXP && k < LRT_UN_END && k != LRT_UN_NOT);
}

/* every step reads registers defined before it and writes a temporary; every output register
 * is a defined temporary; *nunary counts the steps that take an alpha/beta pair */
static int steps_ok(const fused_layout *L, int *nunary)
{
    unsigned char defined[LRT_FUSED_MAX_REGS] = {0};
    const int nregs = L->nin + L->ntemp;
    memset(defined, 1, (size_t)L->nin);
    *nunary = 0;
    for (int s = 0; s < L->nsteps; s++) {
        const int64_t *st = L->steps + 5 * s, dst = st[2], a = st[3], b = st[4];
        const int unary = st[0] == LRT_FUSED_UNARY;
        if (unary ? !unary_kind_ok(st[1]) || b != 0
                  : st[0] != LRT_FUSED_BINARY || st[1] < LRT_BIN_ADD || st[1] > LRT_BIN_MIN) return 0;
        if (dst < L->nin || dst >= nregs || a < 0 || a >= nregs || !defined[a] || b < 0 || b >= nregs || !defined[b])
            return 0;
        defined[dst] = 1;
        *nunary += unary;
    }
    for (int k = 0; k < L->nout; k++)
        if (L->out_regs[k] < L->nin || L->out_regs[k] >= nregs || !defined[L->out_regs[k]]) return 0;
    return 1;
}

static int disjoint(const lrt_operand *a, const lrt_operand *b)
{
    return a->loc != b->loc || a->index != b->index || a->offset + a->nbytes <= b->offset ||
           b->offset + b->nbytes <= a->offset;
}

/* inputs reach within their operands; outputs hold the whole output and overlap nothing */
static int operands_ok(const fused_layout *L, const lrt_operand *o)
{
    int64_t n, reach;
    if (!product_ok(L->nd, L->dims, &n)) return 0;
    for (int i = 0; i < L->nin; i++)
        if (!reach_ok(L->nd, L->dims, L->strides + (int64_t)i * L->nd, &reach) || !holds(&o[i], reach, 4)) return 0;
    for (int k = L->nin; k < L->nin + L->nout; k++) {
        if (!holds(&o[k], n, 4)) return 0;
        for (int j = 0; j < L->nin + L->nout; j++)
            if (j != k && !disjoint(&o[k], &o[j])) return 0;
    }
    return 1;
}

/* the counts, each in its own range before any is combined with another */
static int header_ok(const int64_t *ip)
{
    const int64_t nin = ip[0], nout = ip[1], ntemp = ip[2], nsteps = ip[3], block = ip[4], nd = ip[5];
    return nin >= 0 && nin <= LRT_FUSED_MAX_REGS && ntemp >= 1 && ntemp <= LRT_FUSED_MAX_REGS &&
           nin + ntemp <= LRT_FUSED_MAX_REGS && nout >= 1 && nout <= LRT_FUSED_MAX_REGS && nsteps >= 1 &&
           nsteps <= LRT_FUSED_MAX_STEPS && nd >= 1 && nd <= MAX_ND && block >= 16 && block % 16 == 0 &&
           block <= LRT_FUSED_MAX_FLOATS && block * (nin + ntemp) <= LRT_FUSED_MAX_FLOATS;
}

int lrt_check_fused(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    (void)p;
    if (ins->nints < 6 || !header_ok(ip) || ins->nints != 6 + ip[5] + ip[0] * ip[5] + 5 * ip[3] + ip[1]) return 0;
    const fused_layout L = layout_of(ip);
    int nunary;
    return ins->noperands == L.nin + L.nout && steps_ok(&L, &nunary) && ins->nfloats == 2 * (int64_t)nunary &&
           operands_ok(&L, o);
}

/* dst[0..len) = the input at flattened output positions start.., one run along the last dim at
 * a time (a broadcast row, a strided column) */
static void gather(float *dst, const float *src, int nd, const int64_t *dims, const int64_t *strides, int64_t start,
                   int64_t len)
{
    int64_t idx[MAX_ND], off = 0, rem = start;
    for (int d = nd - 1; d >= 0; d--) {
        idx[d] = rem % dims[d];
        rem /= dims[d];
        off += idx[d] * strides[d];
    }
    const int64_t inner = dims[nd - 1], is = strides[nd - 1];
    while (len > 0) {
        const int64_t run = inner - idx[nd - 1] < len ? inner - idx[nd - 1] : len;
        if (is == 1) memcpy(dst, src + off, (size_t)run * sizeof(float));
        else for (int64_t k = 0; k < run; k++) dst[k] = src[off + k * is];
        dst += run;
        len -= run;
        idx[nd - 1] += run;
        off += run * is;
        for (int d = nd - 1; d > 0 && idx[d] == dims[d]; d--) {   /* carry into the outer dims */
            idx[d] = 0;
            off += strides[d - 1] - dims[d] * strides[d];
            idx[d - 1]++;
        }
    }
}

/* how a call reads input i: straight from its buffer (contiguous); one element broadcast
 * everywhere, a stride-0 operand of the binary loop (a buffer filled once for a unary step); or
 * gathered into its buffer block by block */
enum { READ_DIRECT, READ_ONCE, READ_GATHER };

static int read_mode(const fused_layout *L, const int64_t *strides)
{
    int64_t contiguous = 1;
    int direct = 1, once = 1;
    for (int d = L->nd - 1; d >= 0; d--) {
        direct &= L->dims[d] == 1 || strides[d] == contiguous;
        once &= L->dims[d] == 1 || strides[d] == 0;
        contiguous *= L->dims[d];
    }
    return direct ? READ_DIRECT : once ? READ_ONCE : READ_GATHER;
}

/* whether a unary step reads register r (a unary loop has no stride-0 operand) */
static int unary_reads(const fused_layout *L, int64_t r)
{
    for (int s = 0; s < L->nsteps; s++)
        if (L->steps[5 * s] == LRT_FUSED_UNARY && L->steps[5 * s + 3] == r) return 1;
    return 0;
}

/* each register's block: where it is read (rd, with its stride) and written (wr) */
typedef struct {
    const float *rd[LRT_FUSED_MAX_REGS];
    float *wr[LRT_FUSED_MAX_REGS];
    int stride[LRT_FUSED_MAX_REGS], is_out[LRT_FUSED_MAX_REGS];
    int moving[LRT_FUSED_MAX_REGS], nmoving;          /* read or written in place: moved along each block */
    int gathered[LRT_FUSED_MAX_REGS], ngathered;
    float *copy_to[LRT_FUSED_MAX_REGS];               /* the second output of one temporary: a copy */
    int copy_from[LRT_FUSED_MAX_REGS], ncopies;
} fused_regs;

static void bind_registers(fused_regs *g, const run_ctx *c, const fused_layout *L, const lrt_operand *o, float *buf,
                           int64_t n)
{
    g->nmoving = g->ngathered = g->ncopies = 0;
    for (int r = 0; r < L->nin + L->ntemp; r++) {
        g->rd[r] = g->wr[r] = buf + r * L->block;
        g->stride[r] = 1;
        g->is_out[r] = 0;
    }
    for (int i = 0; i < L->nin; i++) {
        const float *src = (const float *)(const void *)at(c, &o[i]);
        const int mode = read_mode(L, L->strides + (int64_t)i * L->nd);
        if (mode == READ_DIRECT) {
            g->rd[i] = src;
            g->moving[g->nmoving++] = i;
        } else if (mode == READ_GATHER) {
            g->gathered[g->ngathered++] = i;
        } else if (unary_reads(L, i)) {
            for (int64_t k = 0; k < L->block && k < n; k++) g->wr[i][k] = src[0];
        } else {
            g->rd[i] = src;
            g->stride[i] = 0;
        }
    }
    for (int k = 0; k < L->nout; k++) {
        const int64_t r = L->out_regs[k];
        float *y = (float *)(void *)at(c, &o[L->nin + k]);
        if (g->is_out[r]) {
            g->copy_to[g->ncopies] = y;
            g->copy_from[g->ncopies++] = (int)r;
            continue;
        }
        g->rd[r] = g->wr[r] = y;
        g->is_out[r] = 1;
        g->moving[g->nmoving++] = (int)r;
    }
}

static void run_steps(const lrt_vops *v, const fused_layout *L, const fused_regs *g, const float *alpha_beta,
                      size_t len)
{
    for (int s = 0; s < L->nsteps; s++) {
        const int64_t *st = L->steps + 5 * s;
        if (st[0] == LRT_FUSED_UNARY) {
            v->unary((int32_t)st[1], g->rd[st[3]], g->wr[st[2]], len, alpha_beta[0], alpha_beta[1]);
            alpha_beta += 2;
        } else {
            v->binary((int32_t)st[1], g->rd[st[3]], g->stride[st[3]], g->rd[st[4]], g->stride[st[4]], g->wr[st[2]], len);
        }
    }
}

int lrt_exec_fused(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins;
    const fused_layout L = layout_of(ip);
    int64_t n = 1;
    for (int d = 0; d < L.nd; d++) n *= L.dims[d];   /* checked at creation */
    if (n == 0) return LRT_OK;
    /* 64-byte aligned blocks: a vector load never straddles two cache lines */
    float raw[LRT_FUSED_MAX_FLOATS + 16];
    float *buf = (float *)(void *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
    fused_regs g;
    bind_registers(&g, c, &L, o, buf, n);
    for (int64_t start = 0; start < n; start += L.block) {
        const int64_t len = n - start < L.block ? n - start : L.block;
        for (int k = 0; k < g.ngathered; k++) {
            const int i = g.gathered[k];
            gather(g.wr[i], (const float *)(const void *)at(c, &o[i]), L.nd, L.dims, L.strides + (int64_t)i * L.nd,
                   start, len);
        }
        run_steps(c->p->v, &L, &g, fp, (size_t)len);
        for (int k = 0; k < g.ncopies; k++)
            memcpy(g.copy_to[k] + start, g.rd[g.copy_from[k]], (size_t)len * sizeof(float));
        if (start + len == n) break;
        for (int m = 0; m < g.nmoving; m++) {
            g.rd[g.moving[m]] += len;
            if (g.moving[m] >= L.nin) g.wr[g.moving[m]] += len;
        }
    }
    return LRT_OK;
}
