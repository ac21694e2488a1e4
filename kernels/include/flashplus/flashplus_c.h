/* The C ABI of libflashplus: what language bindings (python/flashplus) and other programs link
 * against. No C++ type crosses it: tensors are DLPack DLTensors, arguments one plain struct per
 * entry point, results a status code with a per-thread message. It mirrors the C++ entry points
 * of flashplus/api.h (FlashAttention's mha_* functions; ../shared/CPP_API.md) field for field:
 * read api.h for each argument's meaning. The library validates everything once (the same
 * checks as the C++ API) and never throws or aborts across this boundary.
 *
 * Tensors: at most 4 dimensions; dtype float16, bfloat16, float32 or int32 (index tensors) with
 * lanes 1; strides in elements (NULL = compact row-major); data + byte_offset is element 0;
 * device kDLCPU, kDLCUDAHost (read as host memory), kDLCUDA or kDLROCM. An absent optional
 * tensor is a NULL pointer.
 *
 * Each args struct starts with struct_size = sizeof(the struct) as the caller compiled it; a
 * library built from another version of this header refuses a size it does not know instead of
 * reading past the caller's struct. */
#ifndef FLASHPLUS_FLASHPLUS_C_H_
#define FLASHPLUS_FLASHPLUS_C_H_

#include <stddef.h>
#include <stdint.h>

#include "flashplus/dlpack.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FLASHPLUS_C_API __declspec(dllexport)
#else
#define FLASHPLUS_C_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a struct or a signature below changes. */
#define FLASHPLUS_C_ABI_VERSION 1

typedef enum {
  FLASHPLUS_OK = 0,
  FLASHPLUS_INVALID_ARGS = 1,  /* the arguments break the API contract (shape, dtype, range) */
  FLASHPLUS_UNSUPPORTED = 2,   /* valid, but this build/backend cannot run it */
  FLASHPLUS_NO_INSTANCE = 3,   /* supported in principle, no compiled kernel instance matches */
  FLASHPLUS_RUNTIME_ERROR = 4, /* the backend failed while running (allocation, launch, device) */
} flashplus_status;

typedef enum {
  FLASHPLUS_BACKEND_AUTO = 0, /* the backend that owns the tensors' memory */
  FLASHPLUS_BACKEND_CPU = 1,
  FLASHPLUS_BACKEND_CUDA = 2,
  FLASHPLUS_BACKEND_HIP = 3,
} flashplus_backend;

typedef struct {
  int32_t backend;     /* flashplus_backend */
  int32_t num_threads; /* CPU backend: 0 = every hardware thread */
  void* stream;        /* cudaStream_t / hipStream_t; NULL = the default stream */
  /* Dropout's Philox key and counter offset; the backward must get its forward's values. */
  uint64_t dropout_seed;
  uint64_t dropout_offset;
} flashplus_run_options;

typedef struct {
  uint32_t struct_size;
  const DLTensor* q;            /* (b, sq, h, d) */
  const DLTensor* k;            /* (b, sk, hk, d) */
  const DLTensor* v;            /* (b, sk, hk, d) */
  const DLTensor* out;          /* like q, written */
  const DLTensor* softmax_lse;  /* fp32 (b, h, sq), written */
  const DLTensor* alibi_slopes; /* optional fp32 (h) or (b, h) */
  const DLTensor* s_dmask;      /* with return_softmax: (b, h, round128(sq), round128(sk)) */
  float p_dropout;
  float softmax_scale; /* 0 = 1/sqrt(d) */
  int32_t is_causal;
  int32_t window_size_left;  /* -1 = unbounded */
  int32_t window_size_right; /* -1 = unbounded */
  float softcap;             /* 0 = off */
  int32_t return_softmax;
  flashplus_run_options opts;
} flashplus_fwd_args;

typedef struct {
  uint32_t struct_size;
  const DLTensor* dout;
  const DLTensor* q;
  const DLTensor* k;
  const DLTensor* v;
  const DLTensor* out;
  const DLTensor* softmax_lse;
  const DLTensor* dq; /* written */
  const DLTensor* dk; /* written */
  const DLTensor* dv; /* written */
  const DLTensor* alibi_slopes;
  const DLTensor* softmax_d; /* optional fp32 (b, h, sq), written: rowsum(dout * out) */
  float p_dropout;
  float softmax_scale;
  int32_t is_causal;
  int32_t window_size_left;
  int32_t window_size_right;
  float softcap;
  int32_t deterministic;
  flashplus_run_options opts;
} flashplus_bwd_args;

typedef struct {
  uint32_t struct_size;
  const DLTensor* q;            /* (total_q, h, d) */
  const DLTensor* k;            /* (total_k, hk, d), or paged (num_blocks, page, hk, d) */
  const DLTensor* v;
  const DLTensor* out;
  const DLTensor* softmax_lse;  /* fp32 (h, total_q) */
  const DLTensor* cu_seqlens_q; /* int32 (b + 1) */
  const DLTensor* cu_seqlens_k; /* int32 (b + 1) */
  const DLTensor* seqused_k;    /* optional int32 (b) */
  const DLTensor* leftpad_k;    /* optional int32 (b) */
  const DLTensor* block_table;  /* optional int32 (b, max_blocks_per_seq) */
  const DLTensor* alibi_slopes;
  const DLTensor* s_dmask;
  int32_t max_seqlen_q;
  int32_t max_seqlen_k;
  float p_dropout;
  float softmax_scale;
  int32_t zero_tensors;
  int32_t is_causal;
  int32_t window_size_left;
  int32_t window_size_right;
  float softcap;
  int32_t return_softmax;
  int32_t num_splits;
  flashplus_run_options opts;
} flashplus_varlen_fwd_args;

typedef struct {
  uint32_t struct_size;
  const DLTensor* dout;
  const DLTensor* q;
  const DLTensor* k;
  const DLTensor* v;
  const DLTensor* out;
  const DLTensor* softmax_lse;
  const DLTensor* dq;
  const DLTensor* dk;
  const DLTensor* dv;
  const DLTensor* cu_seqlens_q;
  const DLTensor* cu_seqlens_k;
  const DLTensor* alibi_slopes;
  const DLTensor* softmax_d; /* optional fp32 (h, total_q) */
  int32_t max_seqlen_q;
  int32_t max_seqlen_k;
  float p_dropout;
  float softmax_scale;
  int32_t zero_tensors;
  int32_t is_causal;
  int32_t window_size_left;
  int32_t window_size_right;
  float softcap;
  int32_t deterministic;
  flashplus_run_options opts;
} flashplus_varlen_bwd_args;

typedef struct {
  uint32_t struct_size;
  const DLTensor* q;               /* (b, sq, h, d) */
  const DLTensor* kcache;          /* (b_cache, seqlen_cache, hk, d) or paged; written (append) */
  const DLTensor* vcache;
  const DLTensor* k_new;           /* optional (b, s_new, hk, d) */
  const DLTensor* v_new;
  const DLTensor* cache_seqlens;   /* optional int32 (b) */
  const DLTensor* rotary_cos;      /* optional (seqlen_ro, rotary_dim / 2), q's dtype */
  const DLTensor* rotary_sin;
  const DLTensor* cache_batch_idx; /* optional int32 (b) */
  const DLTensor* cache_leftpad;   /* optional int32 (b) */
  const DLTensor* block_table;     /* optional int32 (b, max_blocks_per_seq) */
  const DLTensor* alibi_slopes;
  const DLTensor* out;
  const DLTensor* softmax_lse;     /* fp32 (b, h, sq) */
  float softmax_scale;
  int32_t is_causal;
  int32_t window_size_left;
  int32_t window_size_right;
  float softcap;
  int32_t is_rotary_interleaved;
  int32_t num_splits; /* 0 = choose */
  flashplus_run_options opts;
} flashplus_kvcache_args;

FLASHPLUS_C_API flashplus_status flashplus_mha_fwd(const flashplus_fwd_args* args);
FLASHPLUS_C_API flashplus_status flashplus_mha_bwd(const flashplus_bwd_args* args);
FLASHPLUS_C_API flashplus_status flashplus_mha_varlen_fwd(const flashplus_varlen_fwd_args* args);
FLASHPLUS_C_API flashplus_status flashplus_mha_varlen_bwd(const flashplus_varlen_bwd_args* args);
FLASHPLUS_C_API flashplus_status flashplus_mha_fwd_kvcache(const flashplus_kvcache_args* args);

/* The message of this thread's most recent call that did not return FLASHPLUS_OK ("" if none);
 * valid until this thread's next flashplus call. */
FLASHPLUS_C_API const char* flashplus_last_error(void);
/* "invalid_args", "unsupported", ... */
FLASHPLUS_C_API const char* flashplus_status_name(flashplus_status s);

/* FLASHPLUS_C_ABI_VERSION of the library actually loaded. */
FLASHPLUS_C_API int32_t flashplus_c_abi_version(void);
/* "0.1.0" */
FLASHPLUS_C_API const char* flashplus_version_string(void);
/* 1 when the backend is compiled into this library (cpu always is), else 0. */
FLASHPLUS_C_API int32_t flashplus_backend_compiled(int32_t backend);
/* Devices the backend finds at run time (0 when not compiled or none present). */
FLASHPLUS_C_API int32_t flashplus_device_count(int32_t backend);

#ifdef __cplusplus
}
#endif
#endif /* FLASHPLUS_FLASHPLUS_C_H_ */
