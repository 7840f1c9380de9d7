/*
 * attn4j.h - the one public C header of attn4j: fused attention kernels (paged decode, ragged
 * prefill, state merging) for CPU and CUDA. Input to jextract; plain C, fixed-width types only.
 *
 * Conventions
 *  - Every symbol starts with attn4j_ / ATTN4J_.
 *  - Functions return attn4j_status (ATTN4J_OK == 0); results go through out-pointers. The few
 *    exceptions (version and info strings) are marked below. After a failure,
 *    attn4j_last_error() returns a message for the calling thread that names the offending
 *    argument. No C++ exception, abort or assert crosses this boundary on bad input.
 *  - Parameter structs start with `uint32_t struct_size`; callers set it to sizeof(struct) so the
 *    structs can grow without breaking older callers.
 *  - Tensors cross as attn4j_tensor descriptors: shape and strides counted in elements. Every
 *    kernel here requires the last dimension to be contiguous (stride 1); other strides may be any
 *    positive value (e.g. q sliced out of a fused QKV buffer).
 *  - Log-sum-exp (LSE) values are natural logarithms of sum_j exp(sm_scale * q . k_j), F32.
 *  - Handles (contexts, plans) are not thread-safe: use one from one thread at a time. Plans
 *    keep their context alive, so destroy order does not matter. Destroy functions accept NULL.
 */
#ifndef ATTN4J_H
#define ATTN4J_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on every incompatible change of a struct layout or function signature. */
#define ATTN4J_ABI_VERSION 3

/* ---- status ---------------------------------------------------------------------------- */
typedef int32_t attn4j_status;
#define ATTN4J_OK 0
#define ATTN4J_ERR_INVALID_ARGUMENT 1 /* wrong shape, dtype, stride, pointer, page id, NaN input */
#define ATTN4J_ERR_UNSUPPORTED 2      /* valid but not implemented (e.g. head_dim 80 on CUDA) */
#define ATTN4J_ERR_OUT_OF_MEMORY 3
#define ATTN4J_ERR_DEVICE 4           /* no device, driver error, kernel failure */
#define ATTN4J_ERR_INTERNAL 5         /* a bug in attn4j: please report */

/* ---- dtypes and devices ------------------------------------------------------------------ */
typedef int32_t attn4j_dtype;
#define ATTN4J_DTYPE_F32 1
#define ATTN4J_DTYPE_F16 2
#define ATTN4J_DTYPE_BF16 3
#define ATTN4J_DTYPE_I32 4
/* Quantized KV formats (cache dtypes only; see attn4j_kv_quant for the page layout). */
#define ATTN4J_DTYPE_INT8 16
#define ATTN4J_DTYPE_INT4 17
#define ATTN4J_DTYPE_INT2 18

typedef int32_t attn4j_device_type;
#define ATTN4J_DEVICE_CPU 1
#define ATTN4J_DEVICE_CUDA 2

#define ATTN4J_MAX_RANK 4

/* A strided view of memory. size_bytes is how many bytes from `data` the caller vouches for;
 * kernels check that every element the shape and strides reach lies inside it. */
typedef struct attn4j_tensor {
    void* data;
    int64_t size_bytes;
    attn4j_dtype dtype;
    attn4j_device_type device_type;
    int32_t device_id;
    int32_t rank;
    int64_t shape[ATTN4J_MAX_RANK];
    int64_t strides[ATTN4J_MAX_RANK]; /* in elements */
} attn4j_tensor;

/* ---- library ----------------------------------------------------------------------------- */
/* Returns ATTN4J_ABI_VERSION of the built library (not a status). */
uint32_t attn4j_abi_version(void);
/* Static description, one "key=value" per line: version, compiler, ISA paths compiled in,
 * oneDNN version, CUDA version and SM list (not a status). */
const char* attn4j_build_info(void);
/* CPU features detected at run time and the decode path chosen, e.g.
 * "isa=avx512 features=avx2,fma,f16c,avx512f,avx512bw,avx512_bf16,amx_bf16" (not a status). */
const char* attn4j_cpu_info(void);
/* Message of the last failure on the calling thread, "" if none (not a status). */
const char* attn4j_last_error(void);
/* Name of a status code, e.g. "ATTN4J_ERR_INVALID_ARGUMENT" (not a status). */
const char* attn4j_status_name(attn4j_status status);
/* sizeof a public struct by its name ("attn4j_tensor", ...), 0 if unknown: lets bindings check
 * their layouts against the loaded library (not a status). */
uint64_t attn4j_struct_size(const char* name);
/* Number of devices of a type: 1 for CPU; CUDA devices visible (0 without driver or GPU, or in
 * a build without CUDA). */
attn4j_status attn4j_device_count(attn4j_device_type device_type, int32_t* out_count);

/* ---- context ----------------------------------------------------------------------------- */
typedef struct attn4j_context attn4j_context;

typedef struct attn4j_context_options {
    uint32_t struct_size;
    attn4j_device_type device_type;
    int32_t device_id;
    int32_t num_threads; /* CPU worker threads; 0 = one per available core */
} attn4j_context_options;

attn4j_status attn4j_context_create(const attn4j_context_options* options, attn4j_context** out_ctx);
attn4j_status attn4j_context_destroy(attn4j_context* ctx);

/* ---- paged KV cache ---------------------------------------------------------------------- */
/* Rotation applied to K (or V) vectors before quantization. A key stored as k R (row vector,
 * R orthogonal) keeps q . k == (q R) . (k R), so decode rotates the query once per step; values
 * stored as v R give an output o R, rotated back once per step. */
typedef int32_t attn4j_rotation;
#define ATTN4J_ROTATION_NONE 0
#define ATTN4J_ROTATION_HADAMARD 1 /* R = H / sqrt(head_dim), Sylvester order; head_dim a power of 2 */
#define ATTN4J_ROTATION_MATRIX 2   /* R given per KV head (e.g. calibrated eigenvectors x Hadamard) */

/* Quantization of an INT8 / INT4 / INT2 cache (ignored for float caches).
 * Each head_dim vector (after rotation) is cut into head_dim / group_size groups; per group
 * asymmetric min/max codes: lo = clip * min(x), hi = clip * max(x), scale = (hi - lo) / (2^bits - 1),
 * zero = lo, code = clamp(round((x - zero) / scale), 0, 2^bits - 1), x ~ code * scale + zero.
 * Page layout: k_data (and v_data) hold [num_pages][num_kv_heads] blocks of
 *   codes [page_size][head_dim * bits / 8] bytes, then meta [page_size][head_dim / group_size][2]
 *   of meta_dtype ({scale, zero} pairs),
 * i.e. attn4j_kv_token_bytes(...) * page_size bytes per block, blocks contiguous.
 * Codes are packed planar within a group: with n = group_size * bits / 8 bytes per group, value j
 * of a group sits in byte j % n at bit (bits * (j / n)) (INT8: byte j), so one shift and mask of
 * n consecutive bytes yields n consecutive values. */
typedef struct attn4j_kv_quant {
    int32_t group_size;      /* values per {scale, zero} along head_dim: 32, 64 or 128, divides head_dim */
    attn4j_dtype meta_dtype; /* F16 or F32 */
    attn4j_rotation k_rotation;
    attn4j_rotation v_rotation;
    /* ROTATION_MATRIX: F32 [num_kv_heads][head_dim][head_dim] row-major orthogonal matrices in
     * memory of the cache's device; NULL otherwise. */
    const float* k_matrix;
    const float* v_matrix;
    /* Clipping ratios in (0, 1]: F32 [num_kv_heads] on the host, or NULL for 1. Used on write. */
    const float* k_clip;
    const float* v_clip;
} attn4j_kv_quant;

/* One layer's pages. Layout (FlashInfer's HND): for float dtypes k_data and v_data each hold
 * [num_pages][num_kv_heads][page_size][head_dim] elements of `dtype`, contiguous; for the
 * quantized dtypes see attn4j_kv_quant. */
typedef struct attn4j_paged_kv {
    uint32_t struct_size;
    attn4j_dtype dtype;
    int32_t num_kv_heads;
    int32_t head_dim;
    int32_t page_size;
    int32_t num_pages;
    attn4j_device_type device_type;
    int32_t device_id;
    void* k_data;
    void* v_data;
    int64_t k_size_bytes;
    int64_t v_size_bytes;
    attn4j_kv_quant quant; /* quantized dtypes only */
} attn4j_paged_kv;

/* Bytes one token of one KV head takes in K (or V) pages, metadata included; 0 for an
 * unknown dtype or a group size that does not divide head_dim (not a status). Effective bits per
 * element = 8 * bytes / head_dim. */
int64_t attn4j_kv_token_bytes(attn4j_dtype dtype, int32_t head_dim, int32_t group_size,
                              attn4j_dtype meta_dtype);

/* Page table of a batch in CSR form (all I32, on the cache's device):
 * sequence i owns pages indices[indptr[i] .. indptr[i+1]), all full except the last, which holds
 * last_page_len[i] tokens (1..page_size). Length of sequence i:
 * (indptr[i+1] - indptr[i] - 1) * page_size + last_page_len[i]. Empty sequences are rejected. */
typedef struct attn4j_page_table {
    uint32_t struct_size;
    attn4j_tensor indptr;        /* [batch + 1], indptr[0] == 0, non-decreasing */
    attn4j_tensor indices;       /* [>= indptr[batch]], each in [0, num_pages) */
    attn4j_tensor last_page_len; /* [batch] */
} attn4j_page_table;

/* Writes new tokens into the cache, converting to the cache dtype (quantize-on-write for the
 * quantized formats). k, v: [nnz_new, num_kv_heads, head_dim]; the tokens
 * append_indptr[i] .. append_indptr[i+1] (I32 [batch + 1]) become the LAST positions of sequence
 * i as described by `table`, which must already include them. Non-finite values are rejected
 * before anything is written. CUDA: the table and the Inf/NaN scan are checked on the host, so
 * the call synchronizes the context's current stream and cannot be captured in a CUDA graph. */
attn4j_status attn4j_paged_kv_append(attn4j_context* ctx, const attn4j_paged_kv* cache,
                                     const attn4j_page_table* table,
                                     const attn4j_tensor* append_indptr, const attn4j_tensor* k,
                                     const attn4j_tensor* v);

/* ---- attention plans --------------------------------------------------------------------- */
typedef struct attn4j_plan attn4j_plan;

typedef struct attn4j_attention_desc {
    uint32_t struct_size;
    int32_t num_qo_heads;   /* multiple of num_kv_heads (GQA / MQA) */
    int32_t num_kv_heads;
    int32_t head_dim;       /* CPU: any multiple of 16 up to 256; tuned for 64 and 128 */
    attn4j_dtype q_dtype;   /* F32, F16, BF16 */
    attn4j_dtype kv_dtype;  /* F32, F16, BF16; decode also INT8, INT4, INT2 */
    attn4j_dtype out_dtype; /* F32, F16, BF16 */
    int32_t causal;         /* prefill: 1 = causal mask aligned bottom-right (query i of n_q sees
                               keys 0 .. i + n_kv - n_q); decode ignores it */
    float sm_scale;         /* > 0, finite; usually 1 / sqrt(head_dim) */
    int32_t page_size;      /* paged KV: tokens per page; 0 for a plan used on contiguous K/V only */
    int32_t max_batch_size; /* sizes the plan's workspace; runs with larger batches are rejected */
} attn4j_attention_desc;

/* Decode: one query token per sequence against its paged KV. Sizes workspace once, so runs
 * allocate nothing. */
attn4j_status attn4j_decode_plan_create(attn4j_context* ctx, const attn4j_attention_desc* desc,
                                        attn4j_plan** out_plan);
/* q, out: [batch, num_qo_heads, head_dim]; lse: NULL or F32 [batch, num_qo_heads]. */
attn4j_status attn4j_decode_run(attn4j_plan* plan, const attn4j_tensor* q,
                                const attn4j_paged_kv* cache, const attn4j_page_table* table,
                                attn4j_tensor* out, attn4j_tensor* lse);

/* Decode over a KV cache held in several segments (mixed precision: e.g. BF16 sinks and recent
 * window in one cache, the quantized middle in another): each sequence attends to the union of its
 * tokens in all segments (order does not matter in decode), merged by LSE in the same run.
 * Segment 0 must have the plan's kv_dtype; others may have any supported dtype (CUDA: BF16, F16
 * or the plan's kv_dtype). Here a sequence may own no tokens in a segment (indptr[i] ==
 * indptr[i + 1], last_page_len[i] == 0), but every sequence needs at least one token overall (on
 * CUDA this is not checked: such a sequence gets output 0 and LSE -inf). CUDA runs one kernel per
 * segment into plan scratch, then an LSE merge kernel; the first segmented run of a plan
 * allocates that scratch (and a BF16/F16 kernel for a quantized plan), so capture segmented runs
 * in a graph only after one uncaptured run. */
attn4j_status attn4j_decode_run_segments(attn4j_plan* plan, const attn4j_tensor* q,
                                         int32_t num_segments, const attn4j_paged_kv* caches,
                                         const attn4j_page_table* tables, attn4j_tensor* out,
                                         attn4j_tensor* lse);

/* Prefill: a ragged batch of queries against K/V of the same sequences.
 * CUDA: a tensor-core kernel for head_dim 64 or 128 with q and K/V both BF16 or both F16 (out
 * F32, F16 or BF16); q, k, v, out, lse are device memory with 16-byte aligned rows; qo_indptr and
 * kv_indptr stay host (CPU) arrays, read by the planner. A run stages its tile list through pinned
 * memory (it waits for the previous run's staging copy) and cannot be captured in a CUDA graph;
 * values are not scanned for Inf/NaN on CUDA. The paged variant reads the page table back to check
 * it (synchronizing the context's stream). */
attn4j_status attn4j_prefill_plan_create(attn4j_context* ctx, const attn4j_attention_desc* desc,
                                         attn4j_plan** out_plan);
/* q, out: [nnz_q, num_qo_heads, head_dim] with sequence i at rows qo_indptr[i] .. qo_indptr[i+1];
 * k, v: [nnz_kv, num_kv_heads, head_dim] with rows kv_indptr[i] .. kv_indptr[i+1] (I32 [batch+1]).
 * Causal plans need n_kv >= n_q for every sequence. lse: NULL or F32 [nnz_q, num_qo_heads]. */
attn4j_status attn4j_prefill_run(attn4j_plan* plan, const attn4j_tensor* q,
                                 const attn4j_tensor* qo_indptr, const attn4j_tensor* k,
                                 const attn4j_tensor* v, const attn4j_tensor* kv_indptr,
                                 attn4j_tensor* out, attn4j_tensor* lse);
/* Prefill against a paged cache (chunked prefill): K/V of sequence i are its pages in `table`. */
attn4j_status attn4j_prefill_paged_run(attn4j_plan* plan, const attn4j_tensor* q,
                                       const attn4j_tensor* qo_indptr,
                                       const attn4j_paged_kv* cache,
                                       const attn4j_page_table* table, attn4j_tensor* out,
                                       attn4j_tensor* lse);

attn4j_status attn4j_plan_destroy(attn4j_plan* plan);

/* ---- merging partial states --------------------------------------------------------------- */
/* Combines attention computed over disjoint KV parts: v [n, num_states, num_heads, head_dim]
 * (F32/F16/BF16), s [n, num_states, num_heads] (F32 LSE; -inf marks an empty part) ->
 * v_out [n, num_heads, head_dim], s_out NULL or [n, num_heads]. On a CUDA context the call is
 * enqueued on the context's stream and does not synchronize, so values are not checked: a NaN or
 * +inf in s gives NaN in that row of v_out / s_out (a CPU context rejects them). */
attn4j_status attn4j_merge_states(attn4j_context* ctx, const attn4j_tensor* v,
                                  const attn4j_tensor* s, attn4j_tensor* v_out,
                                  attn4j_tensor* s_out);

/* ---- memory, streams and graphs ---------------------------------------------------------- */
/* Memory of the context's device: cudaMalloc'ed device memory on a CUDA context, 64-byte aligned
 * host memory on a CPU context. bytes > 0. Free with attn4j_memory_free on the same context
 * (NULL is accepted). Not stream-ordered: allocate before capturing or timing. OUT_OF_MEMORY names
 * the size and device (a CPU context refuses more than the machine's physical memory at once). */
attn4j_status attn4j_memory_alloc(attn4j_context* ctx, int64_t bytes, void** out_ptr);
attn4j_status attn4j_memory_free(attn4j_context* ctx, void* ptr);
/* Page-locked host memory (cudaHostAlloc) for asynchronous copies on a CUDA context; ordinary
 * 64-byte aligned host memory on a CPU context. Host-accessible in both cases. */
attn4j_status attn4j_host_alloc_pinned(attn4j_context* ctx, int64_t bytes, void** out_ptr);
attn4j_status attn4j_host_free_pinned(attn4j_context* ctx, void* ptr);
/* Copies `bytes` between any two of host, pinned and device memory of this context
 * (cudaMemcpyDefault) in the context's current stream. async == 0: returns when the copy is
 * done. async != 0: returns after enqueueing (the source must stay unchanged and the destination
 * unread until the stream is synchronized; pageable host memory may make it synchronous, as in
 * CUDA). CPU context: memcpy, always synchronous. Overlapping ranges are rejected. */
attn4j_status attn4j_memcpy(attn4j_context* ctx, void* dst, const void* src, int64_t bytes,
                            int32_t async);

/* A queue of device work. Every enqueuing call of a context (append, decode, prefill, merge,
 * memcpy) goes to the context's current stream, set by attn4j_context_set_stream (initially the
 * default stream, NULL). On a CPU context streams exist so code is device-agnostic: work runs
 * synchronously inside the call and synchronize returns at once. A stream belongs to the context
 * it was made from and keeps it alive. */
typedef struct attn4j_stream attn4j_stream;
/* A new non-blocking stream owned by attn4j (destroyed by attn4j_stream_destroy). */
attn4j_status attn4j_stream_create(attn4j_context* ctx, attn4j_stream** out_stream);
/* Borrows a caller's cudaStream_t (e.g. PyTorch's current stream) of the context's device; attn4j
 * never destroys it. NULL wraps the default stream (runs on it are checked on the host, as without
 * streams). CPU context: cuda_stream must be NULL. */
attn4j_status attn4j_stream_wrap(attn4j_context* ctx, void* cuda_stream, attn4j_stream** out_stream);
/* The cudaStream_t behind a stream (NULL on a CPU context), for interop and profilers. */
attn4j_status attn4j_stream_native_handle(attn4j_stream* stream, void** out_handle);
/* Waits for the stream's work. Then reports (INVALID_ARGUMENT) the first page table that the
 * device found invalid in a run of this context enqueued without host-side checks (on any of its
 * non-default streams, graph replays included) since the last report, naming the sequence, and
 * clears it. */
attn4j_status attn4j_stream_synchronize(attn4j_stream* stream);
/* Synchronizes, then destroys (a borrowed stream is only released). NULL is accepted. A context's
 * current stream must be reset (set_stream(ctx, NULL)) before it is destroyed, unless the stream
 * holds the last reference to its context (context handle and plans destroyed). */
attn4j_status attn4j_stream_destroy(attn4j_stream* stream);
/* Later calls of ctx enqueue on `stream` (NULL: the default stream); `stream` must come from ctx.
 * While the current stream is not the default one, decode runs do not synchronize: the page
 * table's contents are checked on the device (sequences with an invalid table produce NaN output
 * and LSE and are reported by the next attn4j_stream_synchronize), so the runs can be captured in
 * a CUDA graph. Rejected while the current stream is capturing. */
attn4j_status attn4j_context_set_stream(attn4j_context* ctx, attn4j_stream* stream);

/* CUDA graphs: capture a sequence of calls once, replay it with one launch. The stream must be
 * its context's current stream and not wrap the default stream. Between begin and end, calls of
 * the stream's context are recorded, not executed; calls that cannot be captured (memory_alloc /
 * _free, host_alloc_pinned / free_pinned, synchronous memcpy, paged_kv_append, stream_synchronize)
 * fail with INVALID_ARGUMENT and abort the capture (capture_end then says which call did). The
 * capture is thread-local (cudaStreamCaptureModeThreadLocal): make the calls from the capturing
 * thread; other threads' CUDA work is unaffected. Replays use the pointers captured: update the
 * CONTENTS of the tensors between launches, never their addresses; a graph keeps its context alive
 * but not the plans and buffers it uses. Launch on any stream of the graph's context. A capture
 * the caller began on a wrapped stream (e.g. torch.cuda.graph) records the capturable calls too;
 * the others then fail and leave that capture alone. CPU contexts: UNSUPPORTED. */
typedef struct attn4j_graph attn4j_graph;
attn4j_status attn4j_graph_capture_begin(attn4j_stream* stream);
attn4j_status attn4j_graph_capture_end(attn4j_stream* stream, attn4j_graph** out_graph);
attn4j_status attn4j_graph_launch(attn4j_graph* graph, attn4j_stream* stream);
attn4j_status attn4j_graph_destroy(attn4j_graph* graph);

/* ---- diagnostics ------------------------------------------------------------------------- */
/* STREAM-like read bandwidth of this context's threads over a buffer of `bytes`, best of
 * `repeats` passes, in GB/s (1e9 bytes): the roofline the decode benchmark is judged against. */
attn4j_status attn4j_measure_read_bandwidth(attn4j_context* ctx, int64_t bytes, int32_t repeats,
                                            double* out_gb_per_s);

#ifdef __cplusplus
}
#endif

#endif /* ATTN4J_H */
