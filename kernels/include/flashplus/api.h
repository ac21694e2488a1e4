// Public entry points. Names, argument order and meaning mirror FlashAttention 2.x's C++ API
// (csrc/flash_attn/flash_api.cpp; ../shared/CPP_API.md), so porting code is mechanical.
// Differences, all deliberate:
//   * tensors are non-owning TensorViews; outputs (out, softmax_lse, dq, dk, dv) are preallocated
//     by the caller on the same device as q;
//   * a Status is returned instead of throwing;
//   * softmax_scale == 0 means the default 1/sqrt(head_dim); NaN or inf is an error;
//   * fp32 storage is accepted besides fp16/bf16 (never silently down-cast);
//   * the last argument picks the backend and run-time options.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "flashplus/status.h"
#include "flashplus/tensor.h"

namespace flashplus {

enum class Backend { auto_select, cpu, cuda, hip };

const char* backend_name(Backend b);
// "cpu" | "cuda" | "hip" | "auto" -> Backend; false when unknown.
bool parse_backend(const std::string& s, Backend* out);

struct RunOptions {
  // auto_select runs on the backend that owns the tensors' memory (TensorView::device).
  Backend backend = Backend::auto_select;
  int num_threads = 0;      // CPU backend: 0 = std::thread::hardware_concurrency()
  void* stream = nullptr;   // GPU backends: cudaStream_t / hipStream_t; nullptr = default stream
};

// Forward. q (b, sq, h, d); k, v (b, sk, hk, d); out like q; softmax_lse fp32 (b, h, sq).
// alibi_slopes fp32 (h) or (b, h). p_dropout must be 0 (dropout is not implemented yet).
// A query row that sees no key gets out = 0 and softmax_lse = +inf (as upstream).
Status mha_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
               const TensorView& softmax_lse, const std::optional<TensorView>& alibi_slopes,
               float p_dropout, float softmax_scale, bool is_causal, int window_size_left,
               int window_size_right, float softcap, bool return_softmax,
               const RunOptions& opts = {});

// Backward. dout, out like q; softmax_lse as the forward wrote it; dq like q; dk, dv like k
// (summed over the query heads sharing each kv head). softmax_d, if given: fp32 (b, h, sq),
// receives rowsum(dout * out).
Status mha_bwd(const TensorView& dout, const TensorView& q, const TensorView& k,
               const TensorView& v, const TensorView& out, const TensorView& softmax_lse,
               const TensorView& dq, const TensorView& dk, const TensorView& dv,
               const std::optional<TensorView>& alibi_slopes, float p_dropout,
               float softmax_scale, bool is_causal, int window_size_left, int window_size_right,
               float softcap, bool deterministic,
               const std::optional<TensorView>& softmax_d = std::nullopt,
               const RunOptions& opts = {});

// ---- what this build can do ------------------------------------------------------------------
struct DeviceDesc {
  Backend backend;
  int index = 0;
  std::string name;        // "NVIDIA H100 80GB HBM3", "cpu: 2 threads"
  std::string arch;        // "sm_90", "gfx90a", "x86_64"
  int multiprocessors = 0; // SMs / CUs / hardware threads
  size_t memory_bytes = 0;
};

// Backends compiled into this library (cpu always).
std::vector<Backend> compiled_backends();
// Devices found at run time, over all compiled backends.
std::vector<DeviceDesc> list_devices();
// The backend `auto` means for tensors allocated by a caller with no preference: the first GPU
// backend with a device, else cpu.
Backend best_backend();

}  // namespace flashplus
