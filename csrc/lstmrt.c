/* lstmrt.c — running a cell: its arguments checked, its workspace laid out, the batch or the
 * hidden units split over threads (threads.c), the SIMD path's kernel called.
 * Every size handed in from outside is checked here, before any kernel runs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

/* a*b*c without overflow; returns 0 on overflow (inputs are never 0 here) */
static int mul3(size_t a, size_t b, size_t c, size_t *out)
{
    if (a && b > SIZE_MAX / a) return 0;
    size_t ab = a * b;
    if (ab && c > SIZE_MAX / ab) return 0;
    *out = ab * c;
    return 1;
}

const char *lrt_status_string(int status)
{
    switch (status) {
    case LRT_OK: return "ok";
    case LRT_E_ARG: return "invalid argument or inconsistent sizes";
    case LRT_E_NOMEM: return "out of memory";
    case LRT_E_SIMD: return "requested SIMD path is not available on this CPU (LSTMRT_SIMD is scalar, avx2 or avx512)";
    case LRT_E_WORKSPACE: return "workspace too small";
    case LRT_E_COUNT: return "a loop ran another number of iterations than its scan outputs were compiled for";
    default: return "unknown error";
    }
}

/* ---- activations that have no vector form ---- */
float lrt_act_scalar(int32_t kind, float alpha, float beta, float x)
{
    switch (kind) {
    case LRT_ACT_SIGMOID: return 1.f / (1.f + expf(-x));
    case LRT_ACT_TANH: return tanhf(x);
    case LRT_ACT_RELU: return x <= 0.f ? 0.f : x;   /* NaN in, NaN out: tests written to fail on NaN */
    case LRT_ACT_AFFINE: return alpha * x + beta;
    case LRT_ACT_LEAKYRELU: return x >= 0.f ? x : alpha * x;
    case LRT_ACT_THRESHOLDEDRELU: return x <= alpha ? 0.f : x;
    case LRT_ACT_SCALEDTANH: return alpha * tanhf(beta * x);
    case LRT_ACT_HARDSIGMOID: {   /* not fminf/fmaxf: they return the other operand for NaN */
        const float v = alpha * x + beta;
        return v < 0.f ? 0.f : v > 1.f ? 1.f : v;
    }
    case LRT_ACT_ELU: return x >= 0.f ? x : alpha * (expf(x) - 1.f);
    case LRT_ACT_SOFTSIGN: return x / (1.f + fabsf(x));
    case LRT_ACT_SOFTPLUS: return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x)));  /* log(1+e^x), overflow-free */
    default: return x;
    }
}

/* ---- running ---- */
size_t lrt_ws_scratch_floats(const lrt_weights *w)
{
    if (w->precision == LRT_PREC_BF16) return LRT_BF16_BLOCK + 16;   /* + room to align it */
    if (w->precision != LRT_PREC_INT8) return 0;
    const size_t k4 = (size_t)(w->wt.k4 > w->rt.k4 ? w->wt.k4 : w->rt.k4);
    return LRT_QROWS + LRT_QROWS * k4 / 4;   /* row scales, then rows of k4 bytes */
}

lrt_ws_layout lrt_ws_plan(const lrt_weights *w, int32_t batch, int32_t steps, int team)
{
    lrt_ws_layout L = {0, 0, 0, 0, 0, 0, 0, SIZE_MAX};
    size_t xproj, rows = (size_t)batch;
    if (!mul3((size_t)steps, rows, (size_t)w->n, &xproj)) return L;
    const size_t row_state = rows * (size_t)w->hp;
    L.gates = xproj;
    L.h = L.gates + rows * (size_t)w->n;
    L.h2 = L.h + row_state;
    L.c = L.h2 + (team ? row_state : 0);
    L.rh = L.c + (w->desc.cell == LRT_LSTM ? row_state : 0);
    L.scratch = L.rh + (w->desc.cell == LRT_GRU ? row_state : 0);
    L.total = L.scratch + lrt_ws_scratch_floats(w);
    return L;
}

static int effective_threads(int32_t threads, int32_t batch)
{
    int nt = threads < 1 ? 1 : threads;
    if (nt > batch) nt = batch;
#ifndef LRT_HAVE_PTHREAD
    nt = 1;
#endif
    return nt < 1 ? 1 : nt;
}

/* Teams (internal.h) split the hidden units: each member reads only its share of the weights,
 * which then stays in its core's cache, but the members meet once per step.  Measured here
 * (2 cores), splitting the batch did better whenever there were rows enough for every thread:
 * its threads never wait for each other.  So teams are for batches smaller than the threads
 * (a single stream), with at least a panel's worth of units per member.  On the pool's threads
 * (below) a B=1 step pays off from a few hundred thousand multiply-adds: LSTM H=128 (131K)
 * ran slower with two threads, GRU H=256 (393K) 1.4x and LSTM H=256 (524K) 1.9x quicker.
 * Threads started for one call cost ~80 us here: a call that cannot have the pool's threads
 * runs alone unless it is long (LRT_FRESH_MIN_MACS, ~100 us of products on one core). */
#define LRT_TEAM_UNITS 64                          /* least units per member */
#define LRT_THREADS_MIN_MACS (256.0 * 1024)        /* any split, on the pool's threads */
#define LRT_FRESH_MIN_MACS (16.0 * 1024 * 1024)    /* any split, on threads started for the call */

#ifdef LRT_HAVE_PTHREAD
static double call_macs(const lrt_weights *w, int32_t batch, int32_t steps)
{
    return (double)steps * batch * w->n * ((double)w->desc.input_size + w->desc.hidden_size);
}

#endif

/* members of a team for this call, or 0: split the batch instead (or run alone) */
static int team_size(const lrt_weights *w, int32_t batch, int32_t steps, int32_t threads)
{
#ifdef LRT_HAVE_PTHREAD
    const int nt = threads < w->hp / LRT_TEAM_UNITS ? threads : w->hp / LRT_TEAM_UNITS;
    return nt >= 2 && batch < threads && call_macs(w, batch, steps) >= LRT_THREADS_MIN_MACS ? nt : 0;
#else
    (void)w, (void)batch, (void)steps, (void)threads;
    return 0;
#endif
}

/* rows of slice i when `batch` rows are split in nt near-equal slices */
static int32_t slice_start(int32_t batch, int nt, int i)
{
    return (int32_t)((int64_t)batch * i / nt);
}


size_t lrt_workspace_floats_threads(const lrt_weights *w, int32_t batch, int32_t steps, int32_t threads)
{
    if (!w || batch < 0 || steps < 0 || batch > LRT_MAX_DIM || steps > LRT_MAX_DIM) return SIZE_MAX;
    if (threads < 0 || threads > LRT_MAX_THREADS) return SIZE_MAX;
    const int team = team_size(w, batch, steps, threads);
    if (team) {   /* one shared workspace, a scratch per member after the first */
        const size_t shared = lrt_ws_plan(w, batch, steps, 1).total;
        const size_t scratches = (size_t)(team - 1) * lrt_ws_scratch_floats(w);
        return shared == SIZE_MAX || shared > SIZE_MAX - 1 - scratches ? SIZE_MAX : shared + scratches;
    }
    const int nt = effective_threads(threads, batch);
    size_t total = 0;
    for (int i = 0; i < nt; i++) {
        size_t part = lrt_ws_plan(w, slice_start(batch, nt, i + 1) - slice_start(batch, nt, i), steps, 0).total;
        if (part == SIZE_MAX || total > SIZE_MAX - 1 - part) return SIZE_MAX;
        total += part;
    }
    return total;
}

size_t lrt_workspace_floats(const lrt_weights *w, int32_t batch, int32_t steps)
{
    return lrt_workspace_floats_threads(w, batch, steps, 1);
}

static int check_run_args(const lrt_weights *w, const lrt_run_args *a)
{
    const size_t B = (size_t)a->batch, T = (size_t)a->steps, H = (size_t)w->desc.hidden_size;
    size_t x_len;
    if (a->batch < 0 || a->steps < 0 || a->batch > LRT_MAX_DIM || a->steps > LRT_MAX_DIM) return LRT_E_ARG;
    if (a->threads < 0 || a->threads > LRT_MAX_THREADS) return LRT_E_ARG;
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
    size_t need = lrt_workspace_floats_threads(w, a->batch, a->steps, a->threads);
    if (need == SIZE_MAX || !a->workspace || a->workspace_len < need) return LRT_E_WORKSPACE;
    return LRT_OK;
}

/* the sweep hint (internal.h): a relaxed atomic where the compiler has one; a torn or
 * stale value only costs cache hits */
#if defined(__GNUC__) || defined(__clang__)
#define LRT_SWEEP_LOAD(w) __atomic_load_n(&(w)->sweep, __ATOMIC_RELAXED)
#define LRT_SWEEP_STORE(w, v) __atomic_store_n(&((lrt_weights *)(w))->sweep, (v), __ATOMIC_RELAXED)
#else
#define LRT_SWEEP_LOAD(w) ((w)->sweep)
#define LRT_SWEEP_STORE(w, v) (((lrt_weights *)(w))->sweep = (v))
#endif

int lrt_run(const lrt_weights *w, const lrt_run_args *a)
{
    if (!w || !a) return LRT_E_ARG;
    int st = check_run_args(w, a);
    if (st != LRT_OK) return st;
    if (a->batch == 0 || a->steps == 0) return LRT_OK;   /* nothing to do; state passes through */
    const int team_n = team_size(w, a->batch, a->steps, a->threads);
    const int nt = team_n ? team_n : effective_threads(a->threads, a->batch);
    int sweep = LRT_SWEEP_LOAD(w);
    int pooled = -1;   /* alone; any workspace sized for threads holds one alone */
#ifdef LRT_HAVE_PTHREAD
    if (nt > 1 && call_macs(w, a->batch, a->steps) >= LRT_THREADS_MIN_MACS)
        pooled = lrt_pool_take(call_macs(w, a->batch, a->steps) >= LRT_FRESH_MIN_MACS);
#else
    (void)nt;
#endif
    if (pooled < 0) {
        st = w->run(w, a, 0, a->batch, a->workspace, &sweep, NULL);
        LRT_SWEEP_STORE(w, sweep);
        return st;
    }
#ifdef LRT_HAVE_PTHREAD
    lrt_job jobs[LRT_MAX_THREADS];
    lrt_member members[LRT_MAX_THREADS];
    float *ws = a->workspace;
    const lrt_ws_layout L = lrt_ws_plan(w, a->batch, a->steps, 1);   /* a team's shared workspace */
    for (int i = 0; i < nt; i++) {
        jobs[i].w = w;
        jobs[i].a = a;
        jobs[i].sweep = sweep;
        jobs[i].status = LRT_OK;
        if (team_n) {   /* everyone on the whole batch and one workspace; scratch apart */
            members[i].team = NULL;   /* lrt_jobs_run forms the team */
            members[i].sense = 0;
            members[i].scratch = i ? ws + L.total + (size_t)(i - 1) * lrt_ws_scratch_floats(w) : ws + L.scratch;
            jobs[i].member = &members[i];
            jobs[i].b0 = 0;
            jobs[i].b1 = a->batch;
            jobs[i].ws = ws;
        } else {        /* slices of the batch are independent sequences: no synchronisation */
            jobs[i].member = NULL;
            jobs[i].b0 = slice_start(a->batch, nt, i);
            jobs[i].b1 = slice_start(a->batch, nt, i + 1);
            jobs[i].ws = ws;
            ws += lrt_ws_plan(w, jobs[i].b1 - jobs[i].b0, a->steps, 0).total;
        }
    }
    st = lrt_jobs_run(jobs, nt, team_n != 0, pooled);
    LRT_SWEEP_STORE(w, jobs[0].sweep);
#endif
    return st;
}
