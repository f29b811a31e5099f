/* ops_nn.c — program ops that are products: dense (packed weights), MatMul of two computed
 * values, convolution, and the recurrent cells (lrt_run). */
#include <math.h>
#include <string.h>
#include "program_internal.h"

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

int lrt_check_dense(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
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

int lrt_exec_dense(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)fp;
    const lrt_weights *w = c->p->weights[ins->first_weights];
    dense_into(c->p->v, w, ip[0], (const float *)(void *)at(c, &o[0]), (float *)(void *)at(c, &o[1]),
               has(&o[2]) ? (float *)(void *)at(c, &o[2]) : NULL, ip[1]);
    return LRT_OK;
}

/* ---- MATMUL: both operands computed ---- */
int lrt_check_matmul(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    (void)p;
    if (ins->noperands != 3 || ins->nints != 6) return 0;
    const int64_t B = ip[0], M = ip[1], K = ip[2], N = ip[3], sa = ip[4], sb = ip[5];
    int64_t a_reach, b_reach, mk, kn, y;
    if (!count_ok(B) || !count_ok(M) || !count_ok(K) || !count_ok(N) || !count_ok(sa) || !count_ok(sb)) return 0;
    if (!mul_ok(M, K, &mk) || !mul_ok(K, N, &kn) || !mul_ok(B, M, &y) || !mul_ok(y, N, &y)) return 0;
    if (B == 0) return holds(&o[2], 0, 4);
    if (!mul_ok(B - 1, sa, &a_reach) || !mul_ok(B - 1, sb, &b_reach)) return 0;
    return holds(&o[0], a_reach + mk, 4) && holds(&o[1], b_reach + kn, 4) && holds(&o[2], y, 4);
}

int lrt_exec_matmul(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)ins, (void)fp;
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
    return LRT_OK;
}

/* ---- RECURRENT: one ONNX LSTM/GRU/RNN node, a direction per weights object ---- */
int lrt_check_recurrent(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
{
    if (ins->noperands != 8 || ins->nints != 4) return 0;
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
           holds(&o[6], (int64_t)ws, 4) && (!has(&o[7]) || holds(&o[7], B, 4));
}

int lrt_exec_recurrent(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)fp;
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
        if (has(&o[7])) {   /* int32 lengths; lrt_run refuses any outside [0, steps] */
            a.seq_lens = (const int32_t *)(const void *)at(c, &o[7]);
            a.seq_lens_len = (size_t)B;
        }
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

int lrt_check_conv(const lrt_program *p, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip)
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

int lrt_exec_conv(const run_ctx *c, const lrt_instr *ins, const lrt_operand *o, const int64_t *ip, const float *fp)
{
    (void)fp;
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
    return LRT_OK;
}

