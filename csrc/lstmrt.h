/* lstmrt.h — public C API of the lstmrt recurrent kernel.
 *
 * One lrt_weights object holds the packed weights of ONE direction of one ONNX
 * LSTM/GRU/RNN node.  The weights never change after creation (one cache hint, the
 * direction the next product sweeps them, is read and written atomically and changes no
 * result), so any number of threads may call lrt_run on it at once, each with its own
 * state and workspace.
 * The kernel knows nothing about ONNX graphs: the caller slices W/R/B/P per
 * direction and lays out X as [steps, batch, input_size].
 */
#ifndef LSTMRT_H
#define LSTMRT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    LRT_OK = 0,
    LRT_E_ARG = -1,       /* a size, pointer or value is inconsistent */
    LRT_E_NOMEM = -2,
    LRT_E_SIMD = -3,      /* requested SIMD path is not supported by this CPU/build */
    LRT_E_WORKSPACE = -4  /* workspace smaller than lrt_workspace_floats() */
};

enum { LRT_RNN = 0, LRT_GRU = 1, LRT_LSTM = 2 };

enum {
    LRT_ACT_SIGMOID = 0, LRT_ACT_TANH, LRT_ACT_RELU, LRT_ACT_AFFINE,
    LRT_ACT_LEAKYRELU, LRT_ACT_THRESHOLDEDRELU, LRT_ACT_SCALEDTANH,
    LRT_ACT_HARDSIGMOID, LRT_ACT_ELU, LRT_ACT_SOFTSIGN, LRT_ACT_SOFTPLUS,
    LRT_ACT_COUNT
};

/* SIMD paths. LRT_SIMD_AUTO reads the LSTMRT_SIMD environment variable
 * ("scalar", "avx2", "avx512") and otherwise picks the best the CPU has. */
enum { LRT_SIMD_AUTO = 0, LRT_SIMD_SCALAR = 1, LRT_SIMD_AVX2 = 2, LRT_SIMD_AVX512 = 3 };

/* Precision of the weight products (opt-in; activations, state and sums stay float32):
 *   LRT_PREC_F32  : float32 weights (default).
 *   LRT_PREC_BF16 : weights rounded to bfloat16 (nearest-even), multiplied in float32:
 *                   half the weight memory traffic, same result on every CPU.
 *   LRT_PREC_INT8 : weights quantized symmetric int8 per output unit, the activation
 *                   rows (x, h) quantized symmetric int8 per row and call/step, exact
 *                   int32 dot products (AVX-512 VNNI where present, portable C
 *                   otherwise, bit-identical).  input_size and hidden_size <= 65536. */
enum { LRT_PREC_F32 = 0, LRT_PREC_BF16 = 1, LRT_PREC_INT8 = 2 };

typedef struct {
    int32_t kind;   /* LRT_ACT_* */
    float alpha;
    float beta;
} lrt_activation;

typedef struct {
    int32_t cell;                /* LRT_RNN, LRT_GRU, LRT_LSTM */
    int32_t input_size;
    int32_t hidden_size;
    int32_t linear_before_reset; /* GRU only */
    int32_t input_forget;        /* LSTM only */
    int32_t has_clip;
    float clip;
    lrt_activation act[3];       /* f, g, h as in the ONNX spec; unused slots ignored */
    int32_t simd;                /* LRT_SIMD_* */
    int32_t precision;           /* LRT_PREC_*; 0 = float32 */
} lrt_cell_desc;

typedef struct lrt_weights lrt_weights;

/* Packs one direction's weights.  Lengths are in floats and are checked:
 *   W: gates*H*I, R: gates*H*H, B: 2*gates*H or 0 (B may be NULL),
 *   P: 3*H or 0 (LSTM peepholes [i,o,f]; P may be NULL).
 * gates = 4 (LSTM, order i,o,f,c), 3 (GRU, order z,r,h), 1 (RNN). */
int lrt_weights_create(const lrt_cell_desc *desc,
                       const float *W, size_t w_len,
                       const float *R, size_t r_len,
                       const float *B, size_t b_len,
                       const float *P, size_t p_len,
                       lrt_weights **out);
void lrt_weights_free(lrt_weights *w);

typedef struct {
    int32_t batch;
    int32_t steps;
    int32_t reverse;                 /* process time backwards (per sequence length) */
    const float *x; size_t x_len;    /* [steps, batch, input_size] */
    const int32_t *seq_lens; size_t seq_lens_len; /* NULL, or [batch] values in [0, steps] */
    float *h; size_t h_len;          /* [batch, hidden] initial state in, final state out */
    float *c; size_t c_len;          /* LSTM cell state, same shape; NULL otherwise */
    float *y; size_t y_len;          /* NULL, or y[t*y_step_stride + b*hidden + j] */
    int64_t y_step_stride;
    float *workspace; size_t workspace_len;
    int32_t threads;                 /* 0 or 1: run on the calling thread.  n > 1: split the
                                        batch into min(n, batch) slices run on that many
                                        threads; or, for a batch smaller than n, split the
                                        hidden units among a team of threads that meet once
                                        per step.  Threads come from a pool kept between
                                        calls; calls too short to gain run on the calling
                                        thread (POSIX builds; elsewhere always).  Results
                                        equal the one-thread run bit for bit. */
} lrt_run_args;

enum { LRT_MAX_THREADS = 256 };

/* Workspace (in floats) one lrt_run call needs: for threads <= 1, and for a given thread count. */
size_t lrt_workspace_floats(const lrt_weights *w, int32_t batch, int32_t steps);
size_t lrt_workspace_floats_threads(const lrt_weights *w, int32_t batch, int32_t steps, int32_t threads);
int lrt_run(const lrt_weights *w, const lrt_run_args *args);

/* Name of the SIMD path a weights object runs on: "scalar", "avx2", "avx512". */
const char *lrt_weights_path(const lrt_weights *w);
/* Precision a weights object was packed in: "f32", "bf16", "int8"; and the instructions its
 * products use: "f32", "bf16-emulated" (float32 FMA on widened bf16), "int8-vnni", "int8-ref". */
const char *lrt_weights_precision(const lrt_weights *w);
const char *lrt_weights_product(const lrt_weights *w);
/* 1 when the CPU (and this build) can run the given LRT_SIMD_* path. */
int lrt_cpu_supports(int32_t simd);
const char *lrt_status_string(int status);

#ifdef __cplusplus
}
#endif
#endif
