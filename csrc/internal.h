/* Shared between the dispatcher (lstmrt.c) and the per-SIMD kernels. Not public. */
#ifndef LSTMRT_INTERNAL_H
#define LSTMRT_INTERNAL_H
#include "lstmrt.h"

#if defined(__unix__) || defined(__APPLE__)
#define LRT_HAVE_PTHREAD 1
#endif

/* the largest batch, step count or feature size a call may have */
#define LRT_MAX_DIM (1 << 24)

/* Gate blocks are padded to this many floats so every SIMD path works on
 * whole vectors; padded weights are zero, so padded lanes stay finite. */
#define LRT_PAD 16

/* bf16 products of more than one row tile widen one K block of a panel to float32 at a time:
 * LRT_KC * panel floats, 8192 on every path (kernel_impl.h checks) */
#define LRT_BF16_BLOCK 8192

/* int8: rows of activations are quantized this many at a time (workspace) */
#define LRT_QROWS 64
/* int8: the longest dot product whose int32 sum cannot overflow
 * (255 * 127 * 65536 < 2^31) */
#define LRT_I8_MAX_K 65536

#if defined(__GNUC__) || defined(__clang__)
#define LRT_INLINE inline __attribute__((always_inline))
/* a hint to bring the line at p into L2 (never faults, whatever p is) */
#define LRT_PREFETCH(p) __builtin_prefetch((p), 0, 2)
#else
#define LRT_INLINE inline
#define LRT_PREFETCH(p) ((void)(p))
#endif

/* One packed weight matrix, K rows (input features) by N columns (gate units).
 * Columns are grouped in panels of `panel` columns; a panel is stored whole,
 * row after row, so a product streams it contiguously:
 *   f32  : float    [np/panel][k][panel]
 *   bf16 : uint16_t [np/panel][k][panel]          (bf16 bits, round-to-nearest-even)
 *   int8 : int8_t   [np/panel][k4/4][panel][4]    (symmetric, per column scale)
 * For int8, column j's value is scale[j] * q, and csum[j] = 128 * sum_k q[k][j]
 * (activations are fed as unsigned q+128). */
typedef struct {
    void *data;
    int32_t k;      /* rows */
    int32_t k4;     /* k rounded up to 4 (int8) */
    float *scale;   /* int8: [np] */
    int32_t *csum;  /* int8: [np] */
} lrt_pmat;

struct lrt_weights;

/* A team: threads that share one call's whole batch by hidden units (lstmrt.c picks teams
 * for batches smaller than the threads; each core then reads only its share of the weights).
 * A member owns units [u0, u1): their gate columns in every product, their state and output.
 * Members meet at lrt_team_wait once per step (twice for GRU without linear_before_reset),
 * since each step's product reads every unit of h. */
typedef struct lrt_team lrt_team;
typedef struct {
    int32_t u0, u1;     /* multiples of LRT_PAD */
    float *scratch;     /* the member's own lrt_ws_scratch_floats() */
    lrt_team *team;
    int sense;          /* the member's side of the barrier */
} lrt_member;
void lrt_team_wait(lrt_member *m);

/* One thread's share of a call: rows [b0, b1) of the batch, or (member set) the member's units of
 * the whole batch.  threads.c runs them. */
typedef struct {
    const struct lrt_weights *w;
    const lrt_run_args *a;
    int32_t b0, b1;
    float *ws;
    lrt_member *member;
    int sweep;
    int status;
} lrt_job;
/* Whether a call may use threads: 1, the pool's (lrt_jobs_run gives them back); 0, threads
 * started for it (long_call: worth their start); -1, none (run alone). */
int lrt_pool_take(int long_call);
/* jobs[0] on the calling thread, the others on threads (the pool's when pooled); team: the jobs'
 * members form one team.  The first failing job's status, or LRT_OK. */
int lrt_jobs_run(lrt_job *jobs, int nt, int team, int pooled);

/* Runs rows [b0, b1) of the batch, alone (m NULL) or as team member m (rows: the whole batch).
 * sweep: in/out hint of the direction of single-row weight sweeps (kernel_impl.h) */
typedef int (*lrt_run_fn)(const struct lrt_weights *w, const lrt_run_args *a, int32_t b0, int32_t b1,
                          float *workspace, int *sweep, lrt_member *m);
/* cpu.c: the kernel entry of a resolved SIMD path, and whether AVX-512 VNNI is there */
lrt_run_fn lrt_run_fn_of(int32_t simd);
int lrt_cpu_has_vnni(void);

struct lrt_weights {
    lrt_cell_desc desc;
    int32_t gates;   /* 4 LSTM, 3 GRU, 1 RNN */
    int32_t hp;      /* hidden size rounded up to LRT_PAD */
    int32_t n;       /* gates * hp: width of a gate row */
    int32_t panel;   /* panel width of the packed matrices (per SIMD path) */
    int32_t np;      /* n rounded up to panel */
    int32_t precision;   /* LRT_PREC_* */
    int32_t vnni;    /* AVX-512 VNNI available for the int8 products */
    lrt_pmat wt;     /* W: [input_size][n] */
    lrt_pmat rt;     /* R: [hidden][n] */
    float *bias;     /* [n] bias added to the input projection */
    float *rbh;      /* [hp] GRU linear_before_reset: Rbh, added inside r*(...) */
    float *peep;     /* [3][hp] LSTM peepholes i,o,f, or NULL */
    int32_t simd;    /* the resolved LRT_SIMD_* path */
    lrt_run_fn run;
    /* The one field written after creation: where the last call's weight sweep ended, so the
     * next starts there (a cache hint; no result depends on it).  Accessed atomically. */
    int sweep;
};

/* Workspace layout of one batch slice (offsets in floats).  Every part but
 * `scratch` is proportional to the rows of the slice, so slices of a batch fit
 * side by side in the workspace of the whole batch.  A team's shared workspace also has
 * `h2`: h is double-buffered, so one member's update never races another's product. */
typedef struct {
    size_t xproj, gates, h, h2, c, rh, scratch, total;
} lrt_ws_layout;

lrt_ws_layout lrt_ws_plan(const struct lrt_weights *w, int32_t batch, int32_t steps, int team);
/* floats of scratch one slice needs: int8 quantized rows, or a widened bf16 block (0 for f32) */
size_t lrt_ws_scratch_floats(const struct lrt_weights *w);

int lrt_run_scalar(const struct lrt_weights *w, const lrt_run_args *a, int32_t b0, int32_t b1, float *ws,
                  int *sweep, lrt_member *m);
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define LRT_HAVE_X86 1
int lrt_run_avx2(const struct lrt_weights *w, const lrt_run_args *a, int32_t b0, int32_t b1, float *ws,
                  int *sweep, lrt_member *m);
int lrt_run_avx512(const struct lrt_weights *w, const lrt_run_args *a, int32_t b0, int32_t b1, float *ws,
                  int *sweep, lrt_member *m);
/* C[m][j0..j1) = (float)(sum_k qa[m][k]*q[k][j] - csum[j]) * sa[m] * scale[j] (+ init[j]):
 * the AVX-512 VNNI int8 product (kernel_avx512.c) */
/* lrt_quantize_row with AVX-512BW, bit-identical */
float lrt_quantize_row_avx512(const float *a, int k, int k4, uint8_t *q);
void lrt_gemm_i8_vnni(size_t M, const lrt_pmat *B, int panel, int j0, int j1, const uint8_t *qa,
                      const float *sa, float *C, size_t ldc, const float *init);
#endif

/* panel width each SIMD path packs for */
#define LRT_PANEL_SCALAR 8
#define LRT_PANEL_AVX2 32
#define LRT_PANEL_AVX512 64

/* Scalar activation used by every path for the rarely used activations. */
float lrt_act_scalar(int32_t kind, float alpha, float beta, float x);

/* int8: quantize one row of k floats to k4 unsigned bytes (q+128, padding 128);
 * returns the row's scale.  The same code for every path, so results agree. */
float lrt_quantize_row(const float *a, int k, int k4, uint8_t *q);
/* portable int8 product, same contract and bit-identical results as lrt_gemm_i8_vnni */
void lrt_gemm_i8_ref(size_t M, const lrt_pmat *B, int panel, int j0, int j1, const uint8_t *qa,
                     const float *sa, float *C, size_t ldc, const float *init);

/* The vector loops of program ops, one table per SIMD path (ops_impl.h) */
typedef struct {
    void (*dense)(const struct lrt_weights *w, size_t M, const float *A, size_t lda, float *C, size_t ldc,
                  float *scratch);
    void (*unary)(int32_t kind, const float *x, float *y, size_t n, float alpha, float beta);
    void (*binary)(int32_t kind, const float *a, int as, const float *b, int bs, float *y, size_t n);
    void (*softmax)(const float *x, float *y, size_t n, int log);
} lrt_vops;
extern const lrt_vops lrt_vops_scalar;
#ifdef LRT_HAVE_X86
extern const lrt_vops lrt_vops_avx2, lrt_vops_avx512;
#endif
/* the resolved path of a request (LRT_SIMD_AUTO reads LSTMRT_SIMD), or LRT_E_SIMD */
int lrt_resolve_simd(int32_t requested, int32_t *out);

#endif
