/* Shared between the dispatcher (lstmrt.c) and the per-SIMD kernels. Not public. */
#ifndef LSTMRT_INTERNAL_H
#define LSTMRT_INTERNAL_H
#include "lstmrt.h"

/* Gate blocks are padded to this many floats so every SIMD path works on
 * whole vectors; padded weights are zero, so padded lanes stay finite. */
#define LRT_PAD 16

struct lrt_weights;
typedef int (*lrt_run_fn)(const struct lrt_weights *w, const lrt_run_args *a);

struct lrt_weights {
    lrt_cell_desc desc;
    int32_t gates;   /* 4 LSTM, 3 GRU, 1 RNN */
    int32_t hp;      /* hidden size rounded up to LRT_PAD */
    int32_t n;       /* gates * hp: width of a packed gate row */
    float *wt;       /* [input_size][n]  W transposed, gate blocks padded */
    float *rt;       /* [hidden][n]      R transposed, gate blocks padded */
    float *bias;     /* [n] bias added to the input projection */
    float *rbh;      /* [hp] GRU linear_before_reset: Rbh, added inside r*(...) */
    float *peep;     /* [3][hp] LSTM peepholes i,o,f, or NULL */
    int32_t simd;    /* the resolved LRT_SIMD_* path */
    lrt_run_fn run;
};

/* Workspace layout shared by every path (offsets in floats). */
typedef struct {
    size_t xproj, gates, h, c, rh, total;
} lrt_ws_layout;

lrt_ws_layout lrt_ws_plan(const struct lrt_weights *w, int32_t batch, int32_t steps);

int lrt_run_scalar(const struct lrt_weights *w, const lrt_run_args *a);
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define LRT_HAVE_X86 1
int lrt_run_avx2(const struct lrt_weights *w, const lrt_run_args *a);
int lrt_run_avx512(const struct lrt_weights *w, const lrt_run_args *a);
#endif

/* Scalar activation used by every path for the rarely used activations. */
float lrt_act_scalar(int32_t kind, float alpha, float beta, float x);

#endif
