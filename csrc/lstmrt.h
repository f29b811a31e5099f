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
    LRT_E_WORKSPACE = -4, /* workspace smaller than lrt_workspace_floats() */
    LRT_E_COUNT = -5      /* a LOOP ran another number of iterations than its scan rows (lstmrt
                             then runs that call on its reference plan) */
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

/* ---- Dense products: one packed [K, N] weight matrix (a MatMul/Gemm/Conv's constant B) ----
 * W is given as N rows of K floats (B transposed, as ONNX stores recurrent weights); bias: N
 * floats or NULL.  Immutable after creation, like lrt_weights, so any number of threads may
 * use it at once.  Precision as for cells (bf16/int8 opt-in; K <= 65536 for int8). */
int lrt_dense_create(int32_t k, int32_t n, const float *W, size_t w_len, const float *bias,
                     size_t bias_len, int32_t simd, int32_t precision, lrt_weights **out);
/* floats of C one lrt_dense_run row needs: N rounded up to 16 (padded columns are written) */
int32_t lrt_dense_ldc(const lrt_weights *w);
/* floats of scratch lrt_dense_run needs (bf16/int8 products; 0 for float32) */
size_t lrt_dense_scratch_floats(const lrt_weights *w);

/* ---- Programs: a whole model specialised to one input signature ----
 * A program is a flat array of instructions over byte buffers: the caller's inputs and
 * outputs, borrowed constants, and one arena the caller owns (values planned into it, reused
 * after their last use).  lstmrt/program.py compiles ONNX graphs into programs; this side
 * knows nothing of ONNX.  Ownership: lrt_program_create copies the instruction, operand and
 * parameter tables; constants and weights objects are BORROWED and must outlive the program.
 * An arena belongs to one caller at a time (a stream's state lives in it between calls); the
 * program itself is immutable, so threads may run it at once, each with its own arena.
 * Aliasing: an instruction's operands may overlap only where its op says so (LRT_OP_COPY
 * and LRT_OP_UNARY/BINARY read each element before writing the same element: in == out is
 * allowed; partial overlap is not; LRT_OP_FUSED: none, checked); the compiler never plans any other overlap.
 * Every operand is checked at creation to lie inside its buffer, and each op's parameters
 * against its operands' extents; at run time the caller's arena size is checked, and the only
 * data-dependent checks (runtime Gather/Scatter indices, a SCAN_ROW's counter) fail the call with LRT_E_ARG
 * and *failed set to the instruction, before that instruction writes anything (a LOOP past its
 * cap fails likewise, after the iterations it ran). */
enum { LRT_LOC_NONE = -1, LRT_LOC_ARENA = 0, LRT_LOC_INPUT = 1, LRT_LOC_OUTPUT = 2, LRT_LOC_CONST = 3 };

typedef struct {
    int32_t loc;      /* LRT_LOC_*: NONE marks an absent optional operand */
    int32_t index;    /* input, output or constant number (0 for the arena) */
    int64_t offset;   /* bytes from the start of that buffer */
    int64_t nbytes;   /* bytes the instruction may touch from there */
} lrt_operand;

/* Ops and their integer parameters (element strides and counts, never bytes):
 *  COPY     src,dst      esize ndim dims[ndim] src_strides[ndim] dst_strides[ndim]  (ndim <= 8)
 *  FILL     dst          esize count bits (the element's bit pattern)
 *  UNARY    x,y          kind n                      floats: alpha beta    (float32)
 *  BINARY   a,b,y        kind dtype ndim dims a_strides b_strides  (y contiguous; LRT_BIN_*;
 *                        dtype LRT_DT_F32, I32 or I64 (no POW), BOOL for the logic kinds)
 *  WHERE    c,a,b,y      esize ndim dims c_strides a_strides b_strides
 *  CAST     x,y          from to n                   (LRT_DT_*)
 *  DENSE    a,y,scratch  m act (weights: 1; y is m rows of N; scratch m*ldc (when N != ldc)
 *                        + lrt_dense_scratch_floats; act: a UNARY kind applied after the bias)
 *  MATMUL   a,b,y        batch m k n a_bstride b_bstride   (float32, both operands computed)
 *  SOFTMAX  x,y          outer n inner log
 *  REDUCE   x,y          kind outer r inner
 *  LAYERNORM x,scale,bias,y  outer n                 floats: epsilon
 *  GATHER   data,idx,y   esize outer n inner count idx_dtype
 *  SCATTER  data,idx,src  GATHER's parameters, the other way: data[., idx[j], .] = src[., j, .]
 *                        (data in the arena or an output, read and written: a stream group's
 *                        state rows; every index checked before any row is written)
 *  INDEX    x,table,y    esize count bits   (y[i] = x[table[i]], or bits where table[i] < 0;
 *                        table: count int64 in a constant, checked at creation)
 *  RECURRENT x,h0,c0,y,yh,yc,ws,seq_lens  steps batch dirs reverse  (weights: dirs; seq_lens
 *                        optional int32 [batch], each in [0, steps], else the call fails)
 *  BRANCH   [cond]       target always   (to instruction `target`, forward only: always, or when
 *                        the bool cond is false; an If decided by the data)
 *  CONV     x,y,scratch  batch cin cout group act ih iw kh kw ph pw sh sw dh dw oh ow   (2-D;
 *                        1-D as ih = kh = 1; weights: group dense objects of K = cin/group*kh*kw,
 *                        N = cout/group; scratch oh*ow*(K + ldc) + dense scratch floats)
 *  LOOP     trip,cond,counter,body_cond  end cap rows   (a counted sub-program: runs instructions
 *                        [i+1, end) while count < trip (int64; NONE: no limit) and cond (bool; NONE:
 *                        true), writing count into counter (int64, arena) before each iteration and
 *                        taking the next cond from body_cond (bool; NONE: true) after it; counter
 *                        holds the iterations run afterwards.  Past cap (> 0) iterations the call
 *                        fails with LRT_E_ARG at the loop; rows >= 0: the loop must run exactly rows
 *                        times (its scan outputs' length), else LRT_E_COUNT.  Bodies nest, at most 64
 *                        loops deep: a loop in a body ends inside it, and a branch in a body jumps
 *                        within it (or to its end); a branch outside never jumps into one.)
 *  SCAN_ROW src,dst,counter  nbytes rows   (row `counter` of dst, rows rows of nbytes, = src; a
 *                        counter outside [0, rows) fails the call with LRT_E_ARG)
 *  FUSED    in[nin],out[nout]  nin nout ntemp nsteps block nd dims[nd] strides[nin][nd]
 *                        steps[nsteps][5] out_regs[nout]     floats: alpha beta per UNARY step
 *                        A group of float32 elementwise ops over one output shape `dims`, run block by
 *                        block (`block` elements of the flattened output at a time), its intermediates
 *                        never leaving the block.  Registers 0..nin-1 are the inputs, input i read with
 *                        its own element strides[i] onto dims (0 along a broadcast dim);
 *                        nin..nin+ntemp-1 are block temporaries.  A step is (LRT_FUSED_UNARY, kind, dst,
 *                        src, 0) with kind as UNARY's (not LRT_UN_NOT), or (LRT_FUSED_BINARY, kind, dst, a,
 *                        b) with kind LRT_BIN_ADD..LRT_BIN_MIN; dst is a temporary, each source an input or a
 *                        temporary an earlier step wrote.  At the end of each block, output k (contiguous,
 *                        prod(dims) floats) receives temporary out_regs[k].  Each step computes what the
 *                        UNARY/BINARY op would, with the same vector loops, so results are bit-identical.
 *                        Limits: nin >= 0, 1 <= nout <= LRT_FUSED_MAX_REGS, ntemp >= 1, nin + ntemp <=
 *                        LRT_FUSED_MAX_REGS, 1 <= nsteps <= LRT_FUSED_MAX_STEPS, 1 <= nd <= 8, block a
 *                        multiple of 16 (every vector length) with block * (nin + ntemp) <=
 *                        LRT_FUSED_MAX_FLOATS.  Aliasing: an output shares no byte with an input or
 *                        another output (inputs may overlap each other).
 */
enum {
    LRT_OP_COPY = 1, LRT_OP_FILL, LRT_OP_UNARY, LRT_OP_BINARY, LRT_OP_WHERE, LRT_OP_CAST,
    LRT_OP_DENSE, LRT_OP_MATMUL, LRT_OP_SOFTMAX, LRT_OP_REDUCE, LRT_OP_LAYERNORM, LRT_OP_GATHER,
    LRT_OP_INDEX, LRT_OP_RECURRENT, LRT_OP_CONV, LRT_OP_BRANCH, LRT_OP_LOOP, LRT_OP_SCAN_ROW, LRT_OP_SCATTER,
    LRT_OP_FUSED, LRT_OP_COUNT
};
/* FUSED steps and limits */
enum { LRT_FUSED_UNARY = 0, LRT_FUSED_BINARY = 1, LRT_FUSED_MAX_REGS = 32, LRT_FUSED_MAX_FLOATS = 8192,
       LRT_FUSED_MAX_STEPS = 1024 };
/* UNARY kinds: the LRT_ACT_* activations, then these */
enum {
    LRT_UN_EXP = 32, LRT_UN_LOG, LRT_UN_NEG, LRT_UN_ABS, LRT_UN_SQRT, LRT_UN_RECIPROCAL,
    LRT_UN_CLIP, LRT_UN_ERF, LRT_UN_GELU, LRT_UN_FLOOR, LRT_UN_CEIL, LRT_UN_SIN, LRT_UN_COS,
    LRT_UN_IDENTITY, LRT_UN_NOT, LRT_UN_END
};
/* BINARY kinds: arithmetic -> the operands' type; comparisons -> bool (1 byte); logic of bools
 * -> bool.  Integer division truncates toward zero, and a zero divisor gives 0. */
enum {
    LRT_BIN_ADD = 0, LRT_BIN_SUB, LRT_BIN_MUL, LRT_BIN_DIV, LRT_BIN_POW, LRT_BIN_MAX, LRT_BIN_MIN,
    LRT_BIN_LESS = 16, LRT_BIN_LESS_EQ, LRT_BIN_GREATER, LRT_BIN_GREATER_EQ, LRT_BIN_EQUAL,
    LRT_BIN_AND = 32, LRT_BIN_OR, LRT_BIN_XOR, LRT_BIN_END
};
enum { LRT_RED_SUM = 0, LRT_RED_MEAN, LRT_RED_MAX, LRT_RED_MIN, LRT_RED_PROD, LRT_RED_L2, LRT_RED_SUMSQ,
       LRT_RED_END };
enum { LRT_DT_F32 = 0, LRT_DT_BOOL, LRT_DT_I32, LRT_DT_I64, LRT_DT_F64, LRT_DT_END };

typedef struct {
    int32_t op;                       /* LRT_OP_* */
    int32_t first_operand, noperands; /* operands[first .. first + n) */
    int32_t first_weights, nweights;  /* weights[first .. first + n) */
    int32_t nints, nfloats;
    int64_t first_int, first_float;   /* ints[...], floats[...] */
} lrt_instr;

typedef struct {
    const lrt_instr *instrs; int32_t ninstrs;
    const lrt_operand *operands; int32_t noperands;
    const int64_t *ints; int64_t nints;
    const float *floats; int64_t nfloats;
    lrt_weights *const *weights; int32_t nweights;       /* borrowed */
    const void *const *consts; const int64_t *const_nbytes; int32_t nconsts;   /* borrowed */
    const int64_t *input_nbytes; int32_t ninputs;
    const int64_t *output_nbytes; int32_t noutputs;
    int64_t arena_bytes;
    int32_t simd;       /* LRT_SIMD_*; AUTO as for weights */
    int32_t threads;    /* threads for recurrent instructions, as lrt_run_args.threads */
} lrt_program_desc;

typedef struct lrt_program lrt_program;

/* *bad_instr: the instruction a failure is about, or -1 */
int lrt_program_create(const lrt_program_desc *d, lrt_program **out, int32_t *bad_instr);
void lrt_program_free(lrt_program *p);
/* Runs every instruction.  inputs/outputs: ninputs/noutputs pointers to buffers of at least the
 * declared sizes; arena: arena_bytes or more, 64-byte aligned.  seconds: NULL, or one double per
 * instruction that the instruction's time is added to (profiling; a loop body's instructions
 * over all its iterations, a LOOP's own entry left as it is).  The GIL-free caller's
 * arena and outputs are written; inputs are only read. */
int lrt_program_run(const lrt_program *p, const void *const *inputs, void *const *outputs,
                    void *arena, size_t arena_bytes, double *seconds, int32_t *failed);

#ifdef __cplusplus
}
#endif
#endif
