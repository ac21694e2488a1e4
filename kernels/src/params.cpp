#include "params.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include <fmt/format.h>

namespace flashplus::detail {
namespace {

constexpr int kMaxHeadDim = 256;

std::string shape_of(std::initializer_list<int64_t> dims) {
  std::string s = "(";
  bool first = true;
  for (int64_t d : dims) {
    s += (first ? "" : ", ") + std::to_string(d);
    first = false;
  }
  return s + ")";
}

Status check_shape(const char* name, const TensorView& t, std::initializer_list<int64_t> dims) {
  bool same = t.ndim == static_cast<int>(dims.size());
  int i = 0;
  for (int64_t d : dims) {
    if (!same) break;
    same = t.shape[i++] == d;
  }
  if (!same)
    return Status::Invalid(
        fmt::format("{} must have shape {}, got {}", name, shape_of(dims), t.shape_str()));
  return Status::Ok();
}

// Common checks for any tensor the kernels touch.
Status check_tensor(const char* name, const TensorView& t, const TensorView& like_device) {
  if (t.ndim < 1 || t.ndim > TensorView::kMaxDims)
    return Status::Invalid(fmt::format("{} must have 1 to 4 dimensions, got {}", name, t.ndim));
  for (int d = 0; d < t.ndim; ++d)
    if (t.shape[d] < 0)
      return Status::Invalid(fmt::format("{} has a negative size {}", name, t.shape_str()));
  if (t.data == nullptr && t.numel() > 0)
    return Status::Invalid(fmt::format("{} is a null pointer", name));
  // Every kernel (and the host-side checks of index tensors) reads whole elements: a pointer
  // that is not a multiple of the element size would be undefined behaviour on the CPU and a
  // misaligned-address fault on a GPU.
  if (reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype) != 0)
    return Status::Invalid(fmt::format("{} is not aligned to its {}-byte elements (address {})",
                                       name, dtype_size(t.dtype), t.data));
  if (t.device != like_device.device || t.device_index != like_device.device_index)
    return Status::Invalid(fmt::format("{} must be on the same device as q ({}:{}), got {}:{}",
                                       name, device_name(like_device.device),
                                       like_device.device_index, device_name(t.device),
                                       t.device_index));
  return Status::Ok();
}

// q/k/v/out-like tensors: 4-d (3-d when packed), given dtype, unit stride in the last dim,
// non-negative strides.
Status check_bshd(const char* name, const TensorView& t, const TensorView& q, DType dtype,
                  std::initializer_list<int64_t> dims) {
  FLASHPLUS_RETURN_IF_ERROR(check_tensor(name, t, q));
  FLASHPLUS_RETURN_IF_ERROR(check_shape(name, t, dims));
  if (t.dtype != dtype)
    return Status::Invalid(fmt::format("{} must have dtype {} (as q), got {}", name,
                                       dtype_name(dtype), dtype_name(t.dtype)));
  const int last = t.ndim - 1;
  if (t.stride[last] != 1 && t.shape[last] > 1)
    return Status::Invalid(fmt::format(
        "{} must have contiguous last dimension (stride 1), got stride {}", name, t.stride[last]));
  for (int d = 0; d < last; ++d)
    if (t.stride[d] < 0)
      return Status::Invalid(fmt::format("{} has a negative stride", name));
  return Status::Ok();
}

// (batch, seqlen, heads, d) -> {batch, row, head}; packed (tokens, heads, d) -> {0, row, head}.
Strides3 strides_of(const TensorView& t) {
  if (t.ndim == 3) return {0, t.stride[0], t.stride[1]};
  return {t.stride[0], t.stride[1], t.stride[2]};
}

// The sizes and q/k/v tensors every mode records the same way (seqlens are the fixed lengths,
// or the maxima/capacity of varlen and kv-cache calls).
void fill_qkv(const TensorView& q, const TensorView& k, const TensorView& v, int64_t b,
              int64_t sq, int64_t sk, int64_t h, int64_t hk, int64_t d, AttnParams* p) {
  p->batch = static_cast<int>(b);
  p->seqlen_q = static_cast<int>(sq);
  p->seqlen_k = static_cast<int>(sk);
  p->nheads = static_cast<int>(h);
  p->nheads_k = static_cast<int>(hk);
  p->head_dim = static_cast<int>(d);
  p->dtype = q.dtype;
  p->device = q.device;
  p->device_index = q.device_index;
  p->q = q.data;
  p->k = k.data;
  p->v = v.data;
  p->q_stride = strides_of(q);
  p->k_stride = strides_of(k);
  p->v_stride = strides_of(v);
}

// The backward's tensors, recorded the same way by fixed-length and varlen calls (validated by
// the caller).
void fill_grads(const TensorView& dout, const TensorView& dq, const TensorView& dk,
                const TensorView& dv, bool deterministic, AttnParams* p) {
  p->dout = dout.data;
  p->dq = dq.data;
  p->dk = dk.data;
  p->dv = dv.data;
  p->dout_stride = strides_of(dout);
  p->dq_stride = strides_of(dq);
  p->dk_stride = strides_of(dk);
  p->dv_stride = strides_of(dv);
  p->deterministic = deterministic;
}

// Optional per-sequence int32 vectors (cu_seqlens, seqused_k, cache_seqlens, ...): 1-d,
// contiguous, int32, on q's device, length n.
Status check_int_vec(const char* name, const TensorView& t, const TensorView& q, int64_t n) {
  FLASHPLUS_RETURN_IF_ERROR(check_tensor(name, t, q));
  if (t.dtype != DType::i32)
    return Status::Invalid(fmt::format("{} must have dtype int32, got {}", name, dtype_name(t.dtype)));
  FLASHPLUS_RETURN_IF_ERROR(check_shape(name, t, {n}));
  if (!t.is_contiguous()) return Status::Invalid(fmt::format("{} must be contiguous", name));
  return Status::Ok();
}

const int* ints(const TensorView& t) { return static_cast<const int*>(t.data); }
const int* ints(const std::optional<TensorView>& t) {
  return t ? static_cast<const int*>(t->data) : nullptr;
}

// The floating storage types attention runs in.
Status check_float_dtype(const TensorView& q) {
  if (q.dtype != DType::f32 && q.dtype != DType::f16 && q.dtype != DType::bf16)
    return Status::Invalid(fmt::format("q must have dtype fp16, bf16 or fp32, got {}",
                                       dtype_name(q.dtype)));
  return Status::Ok();
}

// Scalars, ALiBi and the window, for any mode. Sizes (batch, nheads, head_dim) and the host-known
// lengths seqlen_q / seqlen_k (Sq*, Sk* of API.md §2.3) must already be in *p.
Status fill_options(const TensorView& q, const std::optional<TensorView>& alibi_slopes,
                    float p_dropout, float softmax_scale, bool is_causal, int window_size_left,
                    int window_size_right, float softcap, AttnParams* p) {
  if (!std::isfinite(softmax_scale))
    return Status::Invalid(fmt::format("softmax_scale must be finite, got {}", softmax_scale));
  if (!std::isfinite(softcap) || softcap < 0)
    return Status::Invalid(fmt::format("softcap must be >= 0 (0 = off), got {}", softcap));
  if (!(p_dropout >= 0.f && p_dropout < 1.f))
    return Status::Invalid(fmt::format("p_dropout must be in [0, 1), got {}", p_dropout));
  if (p_dropout > 0.f && softcap > 0.f)
    return Status::Invalid("Softcapping does not support dropout for now");
  if (p_dropout > 0.f) {
    p->p_dropout = p_dropout;
    p->rp_dropout = static_cast<float>(1.0 / (1.0 - static_cast<double>(p_dropout)));
    p->dropout_threshold = dropout_threshold(p_dropout);
  }
  if (window_size_left < -1 || window_size_right < -1)
    return Status::Invalid(fmt::format(
        "window sizes must be >= -1 (-1 = unbounded), got ({}, {})", window_size_left,
        window_size_right));
  const int64_t b = p->batch, h = p->nheads;
  p->softmax_scale =
      softmax_scale == 0.f ? static_cast<float>(1.0 / std::sqrt(static_cast<double>(p->head_dim)))
                           : softmax_scale;
  p->softcap = softcap;
  if (alibi_slopes) {
    const TensorView& a = *alibi_slopes;
    FLASHPLUS_RETURN_IF_ERROR(check_tensor("alibi_slopes", a, q));
    if (a.dtype != DType::f32) return Status::Invalid("ALiBi slopes must have dtype fp32");
    const bool per_head = a.ndim == 1 && a.shape[0] == h;
    const bool per_batch = a.ndim == 2 && a.shape[0] == b && a.shape[1] == h;
    if (!per_head && !per_batch)
      return Status::Invalid(fmt::format(
          "alibi_slopes must have shape ({}) or ({}, {}), got {}", h, b, h, a.shape_str()));
    if (a.stride[a.ndim - 1] != 1 && h > 1)
      return Status::Invalid("alibi_slopes must have contiguous last dimension");
    p->alibi_slopes = static_cast<const float*>(a.data);
    p->alibi_batch_stride = per_batch ? a.stride[0] : 0;
  }
  const CanonicalWindow w = canonicalize_window(p->seqlen_q, p->seqlen_k, is_causal,
                                                window_size_left, window_size_right,
                                                alibi_slopes.has_value());
  p->window_left = w.left;
  p->window_right = w.right;
  p->is_causal = w.is_causal;
  return Status::Ok();
}

// return_softmax needs dropout (as upstream); the probabilities go to the caller's S_dmask
// (set_s_dmask, after the params are built).
Status check_return_softmax(bool return_softmax, float p_dropout) {
  if (!return_softmax) return Status::Ok();
  if (!(p_dropout > 0.f))
    return Status::Invalid("return_softmax is only supported when p_dropout > 0.0");
  return Status::Ok();
}

constexpr int kMaxSplits = 128;  // upstream: "num_splits > 128 not supported"

Status check_lse_like(const char* name, const TensorView& t, const TensorView& q, int64_t b,
                      int64_t h, int64_t sq) {
  FLASHPLUS_RETURN_IF_ERROR(check_tensor(name, t, q));
  FLASHPLUS_RETURN_IF_ERROR(check_shape(name, t, {b, h, sq}));
  if (t.dtype != DType::f32)
    return Status::Invalid(
        fmt::format("{} must have dtype fp32, got {}", name, dtype_name(t.dtype)));
  if (!t.is_contiguous()) return Status::Invalid(fmt::format("{} must be contiguous", name));
  return Status::Ok();
}

// Everything mha_fwd and mha_bwd share: q, k, v, scalars, masks, ALiBi.
Status fill_common(const TensorView& q, const TensorView& k, const TensorView& v,
                   const std::optional<TensorView>& alibi_slopes, float p_dropout,
                   float softmax_scale, bool is_causal, int window_size_left,
                   int window_size_right, float softcap, AttnParams* p) {
  if (q.ndim != 4)
    return Status::Invalid(fmt::format(
        "q must have 4 dimensions (batch, seqlen_q, nheads, head_dim), got {}", q.shape_str()));
  if (q.dtype != DType::f32 && q.dtype != DType::f16 && q.dtype != DType::bf16)
    return Status::Invalid(fmt::format("q must have dtype fp16, bf16 or fp32, got {}",
                                       dtype_name(q.dtype)));
  const int64_t b = q.shape[0], sq = q.shape[1], h = q.shape[2], d = q.shape[3];
  if (b <= 0) return Status::Invalid("batch size must be positive");
  if (d <= 0 || d > kMaxHeadDim)
    return Status::Invalid(fmt::format("head_dim must be in 1..{}, got {}", kMaxHeadDim, d));
  if (h <= 0) return Status::Invalid("nheads must be positive");
  if (k.ndim != 4)
    return Status::Invalid(fmt::format(
        "k must have 4 dimensions (batch, seqlen_k, nheads_k, head_dim), got {}", k.shape_str()));
  const int64_t sk = k.shape[1], hk = k.shape[2];
  if (hk <= 0) return Status::Invalid("nheads_k must be positive");
  if (h % hk != 0)
    return Status::Invalid(fmt::format(
        "Number of heads in key/value must divide number of heads in query ({} % {} != 0)", h,
        hk));
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (sq > kIntMax || sk > kIntMax || b > kIntMax || h > kIntMax)
    return Status::Invalid("sizes must fit in 32-bit integers (strides may not)");
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("q", q, q, q.dtype, {b, sq, h, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("k", k, q, q.dtype, {b, sk, hk, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("v", v, q, q.dtype, {b, sk, hk, d}));

  fill_qkv(q, k, v, b, sq, sk, h, hk, d, p);
  return fill_options(q, alibi_slopes, p_dropout, softmax_scale, is_causal, window_size_left,
                      window_size_right, softcap, p);
}

}  // namespace

CanonicalWindow canonicalize_window(int seqlen_q, int seqlen_k, bool causal, int wl, int wr,
                                    bool has_alibi) {
  // Steps of API.md §2.3, in upstream's order (Sk* = seqlen_k for fixed-length batches).
  if (wl >= seqlen_k) wl = -1;                        // 1. too-wide windows are unbounded
  if (wr >= seqlen_k) wr = -1;
  if (causal && seqlen_q == 1 && !has_alibi) causal = false;  // 2. one row sees every key
  if (causal) wr = 0;                                 // 3. causal is wr = 0
  CanonicalWindow w;
  w.is_causal = wl < 0 && wr == 0;                    // "pure causal" kernel mode
  if (wl < 0 && wr >= 0) wl = seqlen_k;               // 4. one unbounded side -> Sk*
  if (wr < 0 && wl >= 0) wr = seqlen_k;
  w.left = wl;
  w.right = wr;
  return w;
}

Status make_fwd_params(const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& out, const TensorView& softmax_lse,
                       const std::optional<TensorView>& alibi_slopes, float p_dropout,
                       float softmax_scale, bool is_causal, int window_size_left,
                       int window_size_right, float softcap, bool return_softmax,
                       AttnParams* p) {
  *p = AttnParams{};
  FLASHPLUS_RETURN_IF_ERROR(fill_common(q, k, v, alibi_slopes, p_dropout, softmax_scale,
                                        is_causal, window_size_left, window_size_right, softcap,
                                        p));
  FLASHPLUS_RETURN_IF_ERROR(check_return_softmax(return_softmax, p_dropout));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("out", out, q, q.dtype,
                                       {q.shape[0], q.shape[1], q.shape[2], q.shape[3]}));
  FLASHPLUS_RETURN_IF_ERROR(
      check_lse_like("softmax_lse", softmax_lse, q, q.shape[0], q.shape[2], q.shape[1]));
  p->out = out.data;
  p->out_stride = strides_of(out);
  p->softmax_lse = static_cast<float*>(softmax_lse.data);
  p->lse_batch_stride = static_cast<int64_t>(p->nheads) * p->seqlen_q;
  p->lse_head_stride = p->seqlen_q;
  return Status::Ok();
}

Status make_bwd_params(const TensorView& dout, const TensorView& q, const TensorView& k,
                       const TensorView& v, const TensorView& out, const TensorView& softmax_lse,
                       const TensorView& dq, const TensorView& dk, const TensorView& dv,
                       const std::optional<TensorView>& alibi_slopes, float p_dropout,
                       float softmax_scale, bool is_causal, int window_size_left,
                       int window_size_right, float softcap, bool deterministic,
                       const std::optional<TensorView>& softmax_d, AttnParams* p) {
  *p = AttnParams{};
  FLASHPLUS_RETURN_IF_ERROR(fill_common(q, k, v, alibi_slopes, p_dropout, softmax_scale,
                                        is_causal, window_size_left, window_size_right, softcap,
                                        p));
  const int64_t b = q.shape[0], sq = q.shape[1], h = q.shape[2], d = q.shape[3];
  const int64_t sk = k.shape[1], hk = k.shape[2];
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("dout", dout, q, q.dtype, {b, sq, h, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("out", out, q, q.dtype, {b, sq, h, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_lse_like("softmax_lse", softmax_lse, q, b, h, sq));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("dq", dq, q, q.dtype, {b, sq, h, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("dk", dk, q, q.dtype, {b, sk, hk, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("dv", dv, q, q.dtype, {b, sk, hk, d}));
  if (softmax_d) {
    FLASHPLUS_RETURN_IF_ERROR(check_lse_like("softmax_d", *softmax_d, q, b, h, sq));
    p->softmax_d = static_cast<float*>(softmax_d->data);
  }
  p->out = out.data;
  p->out_stride = strides_of(out);
  p->softmax_lse = static_cast<float*>(softmax_lse.data);
  p->lse_batch_stride = static_cast<int64_t>(p->nheads) * p->seqlen_q;
  p->lse_head_stride = p->seqlen_q;
  fill_grads(dout, dq, dk, dv, deterministic, p);
  return Status::Ok();
}

// ---- variable-length batches ------------------------------------------------------------------
namespace {

Status check_lse_2d(const char* name, const TensorView& t, const TensorView& q, int64_t h,
                    int64_t total_q) {
  FLASHPLUS_RETURN_IF_ERROR(check_tensor(name, t, q));
  FLASHPLUS_RETURN_IF_ERROR(check_shape(name, t, {h, total_q}));
  if (t.dtype != DType::f32)
    return Status::Invalid(
        fmt::format("{} must have dtype fp32, got {}", name, dtype_name(t.dtype)));
  if (!t.is_contiguous()) return Status::Invalid(fmt::format("{} must be contiguous", name));
  return Status::Ok();
}

// cu_seqlens values, read on the host (host memory only): cu[0] = 0, non-decreasing,
// cu[b] <= total, each length <= max_seqlen.
Status check_cu_values(const char* name, const int* cu, int batch, int64_t total,
                       int max_seqlen, const char* max_name) {
  if (cu[0] != 0) return Status::Invalid(fmt::format("{}[0] must be 0, got {}", name, cu[0]));
  for (int b = 0; b < batch; ++b) {
    const int64_t len = static_cast<int64_t>(cu[b + 1]) - cu[b];
    if (len < 0)
      return Status::Invalid(fmt::format("{} must be non-decreasing, but {}[{}] = {} > {}[{}] = {}",
                                         name, name, b, cu[b], name, b + 1, cu[b + 1]));
    if (len > max_seqlen)
      return Status::Invalid(fmt::format("sequence {} has length {} ({}) > {} = {}", b, len, name,
                                         max_name, max_seqlen));
  }
  if (cu[batch] > total)
    return Status::Invalid(fmt::format("{}[{}] = {} exceeds the {} packed tokens", name, batch,
                                       cu[batch], total));
  return Status::Ok();
}

// A block table for a paged cache of num_blocks pages of page_block_size slots: int32
// (batch, max_blocks_per_seq >= 1), last dim contiguous. Fills the block-table fields of *p.
Status fill_block_table(const TensorView& bt, const TensorView& q, int64_t batch, int64_t num_blocks,
                        int64_t page_block_size, AttnParams* p) {
  FLASHPLUS_RETURN_IF_ERROR(check_tensor("block_table", bt, q));
  if (bt.dtype != DType::i32) return Status::Invalid("block_table must have dtype int32");
  if (bt.ndim != 2 || bt.shape[0] != batch || bt.shape[1] < 1)
    return Status::Invalid(fmt::format(
        "block_table must have shape ({}, max_blocks_per_seq >= 1), got {}", batch, bt.shape_str()));
  if (bt.stride[1] != 1 && bt.shape[1] > 1)
    return Status::Invalid("block_table must have contiguous last dimension");
  if (bt.stride[0] < 0) return Status::Invalid("block_table has a negative stride");
  if (page_block_size < 1) return Status::Invalid("page_block_size must be positive");
  if (bt.shape[1] * page_block_size > std::numeric_limits<int>::max() ||
      num_blocks > std::numeric_limits<int>::max())
    return Status::Invalid("sizes must fit in 32-bit integers (strides may not)");
  p->block_table = static_cast<const int*>(bt.data);
  p->block_table_batch_stride = bt.stride[0];
  p->max_blocks_per_seq = static_cast<int>(bt.shape[1]);
  p->page_block_size = static_cast<int>(page_block_size);
  p->num_blocks = static_cast<int>(num_blocks);
  return Status::Ok();
}

// Host memory: the table entries of the pages sequence b uses (logical positions [0, end)) must
// name existing blocks; entries past them are never read (may be padding such as -1).
Status check_block_table_values(const AttnParams& p, int b, int64_t end) {
  const int64_t pages = (end + p.page_block_size - 1) / p.page_block_size;
  for (int64_t pg = 0; pg < pages; ++pg) {
    const int blk = p.block_table[b * p.block_table_batch_stride + pg];
    if (blk < 0 || blk >= p.num_blocks)
      return Status::Invalid(fmt::format("block_table[{}, {}] = {} is out of range [0, {}) (num_blocks)",
                                         b, pg, blk, p.num_blocks));
  }
  return Status::Ok();
}

// Sizes, q/k/v, cu_seqlens and options shared by mha_varlen_fwd and mha_varlen_bwd. With a
// block table (forward only) k and v are the paged cache (num_blocks, page_block_size, hk, d).
Status fill_varlen_common(const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                          const std::optional<TensorView>& block_table,
                          const std::optional<TensorView>& alibi_slopes, int max_seqlen_q,
                          int max_seqlen_k, float p_dropout, float softmax_scale,
                          bool zero_tensors, bool is_causal, int window_size_left,
                          int window_size_right, float softcap, AttnParams* p) {
  if (q.ndim != 3)
    return Status::Invalid(fmt::format(
        "q must have 3 dimensions (total_q, nheads, head_dim) in varlen mode, got {}",
        q.shape_str()));
  FLASHPLUS_RETURN_IF_ERROR(check_float_dtype(q));
  const bool paged = block_table.has_value();
  if (!paged && k.ndim != 3)
    return Status::Invalid(fmt::format(
        "k must have 3 dimensions (total_k, nheads_k, head_dim) in varlen mode, got {}",
        k.shape_str()));
  if (paged && k.ndim != 4)
    return Status::Invalid(fmt::format(
        "k must have 4 dimensions (num_blocks, page_block_size, nheads_k, head_dim) with a "
        "block_table, got {}", k.shape_str()));
  const int64_t tq = q.shape[0], h = q.shape[1], d = q.shape[2];
  // Paged: cu_seqlens_k's absolute offsets are unused (keys start at each table's position 0).
  const int64_t tk = paged ? std::numeric_limits<int>::max() : k.shape[0];
  const int64_t hk = k.shape[paged ? 2 : 1];
  if (d <= 0 || d > kMaxHeadDim)
    return Status::Invalid(fmt::format("head_dim must be in 1..{}, got {}", kMaxHeadDim, d));
  if (h <= 0) return Status::Invalid("nheads must be positive");
  if (hk <= 0) return Status::Invalid("nheads_k must be positive");
  if (h % hk != 0)
    return Status::Invalid(fmt::format(
        "Number of heads in key/value must divide number of heads in query ({} % {} != 0)", h,
        hk));
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (tq > kIntMax || tk > kIntMax || h > kIntMax)
    return Status::Invalid("sizes must fit in 32-bit integers (strides may not)");
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("q", q, q, q.dtype, {tq, h, d}));
  if (paged) {
    FLASHPLUS_RETURN_IF_ERROR(check_bshd("k", k, q, q.dtype, {k.shape[0], k.shape[1], hk, d}));
    FLASHPLUS_RETURN_IF_ERROR(check_bshd("v", v, q, q.dtype, {k.shape[0], k.shape[1], hk, d}));
  } else {
    FLASHPLUS_RETURN_IF_ERROR(check_bshd("k", k, q, q.dtype, {tk, hk, d}));
    FLASHPLUS_RETURN_IF_ERROR(check_bshd("v", v, q, q.dtype, {tk, hk, d}));
  }

  if (cu_seqlens_q.dtype != DType::i32) return Status::Invalid("cu_seqlens_q must have dtype int32");
  if (cu_seqlens_k.dtype != DType::i32) return Status::Invalid("cu_seqlens_k must have dtype int32");
  if (cu_seqlens_q.ndim != 1 || cu_seqlens_q.shape[0] < 2)
    return Status::Invalid(fmt::format(
        "cu_seqlens_q must have shape (batch + 1) with batch >= 1, got {}", cu_seqlens_q.shape_str()));
  const int64_t b = cu_seqlens_q.shape[0] - 1;
  if (b > kIntMax) return Status::Invalid("batch must fit in a 32-bit integer");
  FLASHPLUS_RETURN_IF_ERROR(check_int_vec("cu_seqlens_q", cu_seqlens_q, q, b + 1));
  FLASHPLUS_RETURN_IF_ERROR(check_int_vec("cu_seqlens_k", cu_seqlens_k, q, b + 1));
  if (max_seqlen_q < 0 || max_seqlen_k < 0)
    return Status::Invalid(fmt::format("max_seqlen_q and max_seqlen_k must be >= 0, got {} and {}",
                                       max_seqlen_q, max_seqlen_k));
  // Values are checked where the CPU can read them; device memory is not (as upstream).
  if (q.device == DeviceKind::cpu) {
    FLASHPLUS_RETURN_IF_ERROR(check_cu_values("cu_seqlens_q", ints(cu_seqlens_q),
                                              static_cast<int>(b), tq, max_seqlen_q, "max_seqlen_q"));
    FLASHPLUS_RETURN_IF_ERROR(check_cu_values("cu_seqlens_k", ints(cu_seqlens_k),
                                              static_cast<int>(b), tk, max_seqlen_k, "max_seqlen_k"));
  }

  fill_qkv(q, k, v, b, max_seqlen_q, max_seqlen_k, h, hk, d, p);
  p->total_q = static_cast<int>(tq);
  p->total_k = static_cast<int>(tk);
  p->cu_seqlens_q = ints(cu_seqlens_q);
  p->cu_seqlens_k = ints(cu_seqlens_k);
  p->zero_tensors = zero_tensors;
  if (paged) {
    p->total_k = 0;
    FLASHPLUS_RETURN_IF_ERROR(fill_block_table(*block_table, q, b, k.shape[0], k.shape[1], p));
    if (q.device == DeviceKind::cpu) {
      const int64_t cap = static_cast<int64_t>(p->max_blocks_per_seq) * p->page_block_size;
      for (int bi = 0; bi < p->batch; ++bi) {
        const int64_t len = p->cu_seqlens_k[bi + 1] - p->cu_seqlens_k[bi];
        if (len > cap)
          return Status::Invalid(fmt::format(
              "sequence {} has {} keys, more than its block_table holds ({} pages of {})", bi,
              len, p->max_blocks_per_seq, p->page_block_size));
        FLASHPLUS_RETURN_IF_ERROR(check_block_table_values(*p, bi, len));
      }
    }
  }
  p->lse_batch_stride = 0;
  p->lse_head_stride = tq;
  return fill_options(q, alibi_slopes, p_dropout, softmax_scale, is_causal, window_size_left,
                      window_size_right, softcap, p);
}

Status check_num_splits(int num_splits) {
  if (num_splits < 0 || num_splits > kMaxSplits)
    return Status::Invalid(fmt::format(
        "num_splits must be in 0..{} (0 = choose automatically), got {}", kMaxSplits, num_splits));
  return Status::Ok();
}

}  // namespace

Status make_varlen_fwd_params(const TensorView& q, const TensorView& k, const TensorView& v,
                              const TensorView& out, const TensorView& softmax_lse,
                              const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                              const std::optional<TensorView>& seqused_k,
                              const std::optional<TensorView>& leftpad_k,
                              const std::optional<TensorView>& block_table,
                              const std::optional<TensorView>& alibi_slopes, int max_seqlen_q,
                              int max_seqlen_k, float p_dropout, float softmax_scale,
                              bool zero_tensors, bool is_causal, int window_size_left,
                              int window_size_right, float softcap, bool return_softmax,
                              int num_splits, AttnParams* p) {
  *p = AttnParams{};
  if (leftpad_k)
    return Status::Unsupported(
        "leftpad_k in mha_varlen_fwd is not supported yet; use mha_fwd_kvcache's cache_leftpad");
  FLASHPLUS_RETURN_IF_ERROR(fill_varlen_common(
      q, k, v, cu_seqlens_q, cu_seqlens_k, block_table, alibi_slopes, max_seqlen_q, max_seqlen_k,
      p_dropout, softmax_scale, zero_tensors, is_causal, window_size_left, window_size_right,
      softcap, p));
  FLASHPLUS_RETURN_IF_ERROR(check_return_softmax(return_softmax, p_dropout));
  FLASHPLUS_RETURN_IF_ERROR(check_num_splits(num_splits));
  const int64_t tq = q.shape[0], h = q.shape[1], d = q.shape[2];
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("out", out, q, q.dtype, {tq, h, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_lse_2d("softmax_lse", softmax_lse, q, h, tq));
  if (seqused_k) {
    FLASHPLUS_RETURN_IF_ERROR(check_int_vec("seqused_k", *seqused_k, q, p->batch));
    p->seqused_k = ints(seqused_k);
    if (q.device == DeviceKind::cpu) {
      for (int b = 0; b < p->batch; ++b) {
        const int len = p->cu_seqlens_k[b + 1] - p->cu_seqlens_k[b];
        if (p->seqused_k[b] < 0 || p->seqused_k[b] > len)
          return Status::Invalid(fmt::format(
              "seqused_k[{}] = {} must be in [0, {}] (the length of sequence {} in cu_seqlens_k)",
              b, p->seqused_k[b], len, b));
      }
    }
  }
  p->out = out.data;
  p->out_stride = strides_of(out);
  p->softmax_lse = static_cast<float*>(softmax_lse.data);
  p->num_splits = num_splits;
  return Status::Ok();
}

Status make_varlen_bwd_params(const TensorView& dout, const TensorView& q, const TensorView& k,
                              const TensorView& v, const TensorView& out,
                              const TensorView& softmax_lse, const TensorView& dq,
                              const TensorView& dk, const TensorView& dv,
                              const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                              const std::optional<TensorView>& alibi_slopes, int max_seqlen_q,
                              int max_seqlen_k, float p_dropout, float softmax_scale,
                              bool zero_tensors, bool is_causal, int window_size_left,
                              int window_size_right, float softcap, bool deterministic,
                              const std::optional<TensorView>& softmax_d, AttnParams* p) {
  *p = AttnParams{};
  FLASHPLUS_RETURN_IF_ERROR(fill_varlen_common(
      q, k, v, cu_seqlens_q, cu_seqlens_k, std::nullopt, alibi_slopes, max_seqlen_q,
      max_seqlen_k, p_dropout, softmax_scale, zero_tensors, is_causal, window_size_left,
      window_size_right, softcap, p));
  const int64_t tq = q.shape[0], h = q.shape[1], d = q.shape[2];
  const int64_t tk = k.shape[0], hk = k.shape[1];
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("dout", dout, q, q.dtype, {tq, h, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("out", out, q, q.dtype, {tq, h, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_lse_2d("softmax_lse", softmax_lse, q, h, tq));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("dq", dq, q, q.dtype, {tq, h, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("dk", dk, q, q.dtype, {tk, hk, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("dv", dv, q, q.dtype, {tk, hk, d}));
  if (softmax_d) {
    FLASHPLUS_RETURN_IF_ERROR(check_lse_2d("softmax_d", *softmax_d, q, h, tq));
    p->softmax_d = static_cast<float*>(softmax_d->data);
  }
  p->out = out.data;
  p->out_stride = strides_of(out);
  p->softmax_lse = static_cast<float*>(softmax_lse.data);
  fill_grads(dout, dq, dk, dv, deterministic, p);
  return Status::Ok();
}

// ---- kv cache ------------------------------------------------------------------------------------

Status make_kvcache_params(const TensorView& q, const TensorView& kcache,
                           const TensorView& vcache, const std::optional<TensorView>& k_new,
                           const std::optional<TensorView>& v_new,
                           const std::optional<TensorView>& cache_seqlens,
                           const std::optional<TensorView>& rotary_cos,
                           const std::optional<TensorView>& rotary_sin,
                           const std::optional<TensorView>& cache_batch_idx,
                           const std::optional<TensorView>& cache_leftpad,
                           const std::optional<TensorView>& block_table,
                           const std::optional<TensorView>& alibi_slopes, const TensorView& out,
                           const TensorView& softmax_lse, float softmax_scale, bool is_causal,
                           int window_size_left, int window_size_right, float softcap,
                           bool is_rotary_interleaved, int num_splits, AttnParams* p) {
  *p = AttnParams{};
  if (q.ndim != 4)
    return Status::Invalid(fmt::format(
        "q must have 4 dimensions (batch, seqlen_q, nheads, head_dim), got {}", q.shape_str()));
  FLASHPLUS_RETURN_IF_ERROR(check_float_dtype(q));
  const int64_t b = q.shape[0], sq = q.shape[1], h = q.shape[2], d = q.shape[3];
  if (b <= 0) return Status::Invalid("batch size must be positive");
  if (d <= 0 || d > kMaxHeadDim)
    return Status::Invalid(fmt::format("head_dim must be in 1..{}, got {}", kMaxHeadDim, d));
  if (h <= 0) return Status::Invalid("nheads must be positive");
  if (kcache.ndim != 4)
    return Status::Invalid(fmt::format(
        "k_cache must have 4 dimensions (batch_cache, seqlen_cache, nheads_k, head_dim) or "
        "(num_blocks, page_block_size, nheads_k, head_dim), got {}", kcache.shape_str()));
  const int64_t c0 = kcache.shape[0], c1 = kcache.shape[1], hk = kcache.shape[2];
  if (hk <= 0) return Status::Invalid("nheads_k must be positive");
  if (h % hk != 0)
    return Status::Invalid(fmt::format(
        "Number of heads in key/value must divide number of heads in query ({} % {} != 0)", h,
        hk));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("q", q, q, q.dtype, {b, sq, h, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("k_cache", kcache, q, q.dtype, {c0, c1, hk, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("v_cache", vcache, q, q.dtype, {c0, c1, hk, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("out", out, q, q.dtype, {b, sq, h, d}));
  FLASHPLUS_RETURN_IF_ERROR(check_lse_like("softmax_lse", softmax_lse, q, b, h, sq));
  FLASHPLUS_RETURN_IF_ERROR(check_num_splits(num_splits));

  // Cache geometry and capacity (Sk*).
  int64_t capacity = c1;
  if (block_table) {
    if (cache_batch_idx) return Status::Invalid("Paged KVcache does not support cache_batch_idx");
    if (cache_leftpad)
      return Status::Invalid("We don't support Paged KV and leftpad_k running at the same time yet");
    FLASHPLUS_RETURN_IF_ERROR(fill_block_table(*block_table, q, b, c0, c1, p));
    capacity = static_cast<int64_t>(p->max_blocks_per_seq) * c1;
  } else {
    p->batch_cache = static_cast<int>(c0);
  }
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (sq > kIntMax || b > kIntMax || h > kIntMax || capacity > kIntMax || c0 > kIntMax)
    return Status::Invalid("sizes must fit in 32-bit integers (strides may not)");

  // New tokens.
  int64_t s_new = 0;
  if (v_new && !k_new) return Status::Invalid("v_new was given without k_new");
  if (k_new) {
    if (!v_new) return Status::Invalid("If key is supplied, value must also be passed in");
    if (!cache_seqlens)
      return Status::Invalid("If key is supplied, seqlens_k must also be passed in");
    if (k_new->ndim != 4)
      return Status::Invalid(fmt::format("k_new must have 4 dimensions (batch, seqlen_new, "
                                         "nheads_k, head_dim), got {}", k_new->shape_str()));
    s_new = k_new->shape[1];
    if (s_new > kIntMax) return Status::Invalid("seqlen_new must fit in a 32-bit integer");
    FLASHPLUS_RETURN_IF_ERROR(check_bshd("k_new", *k_new, q, q.dtype, {b, s_new, hk, d}));
    FLASHPLUS_RETURN_IF_ERROR(check_bshd("v_new", *v_new, q, q.dtype, {b, s_new, hk, d}));
    p->k_new = k_new->data;
    p->v_new = v_new->data;
    p->knew_stride = strides_of(*k_new);
    p->vnew_stride = strides_of(*v_new);
    p->seqlen_new = static_cast<int>(s_new);
  }
  if (cache_seqlens) FLASHPLUS_RETURN_IF_ERROR(check_int_vec("cache_seqlens", *cache_seqlens, q, b));
  if (cache_batch_idx)
    FLASHPLUS_RETURN_IF_ERROR(check_int_vec("cache_batch_idx", *cache_batch_idx, q, b));
  if (cache_leftpad) FLASHPLUS_RETURN_IF_ERROR(check_int_vec("cache_leftpad", *cache_leftpad, q, b));
  if (!block_table && !cache_batch_idx && c0 < b)
    return Status::Invalid(fmt::format(
        "k_cache has {} rows but q has batch {} (and no cache_batch_idx)", c0, b));

  // Rotary.
  if (rotary_cos.has_value() != rotary_sin.has_value())
    return Status::Invalid("If rotary cos is provided, rotary sin must also be provided");
  if (rotary_cos) {
    if (!k_new)
      return Status::Invalid(
          "If rotary cos/sin are provided, new key / value to be appended to KV cache must also "
          "be provided");
    for (const auto* r : {&*rotary_cos, &*rotary_sin}) {
      const char* name = r == &*rotary_cos ? "rotary_cos" : "rotary_sin";
      FLASHPLUS_RETURN_IF_ERROR(check_tensor(name, *r, q));
      if (r->dtype != q.dtype)
        return Status::Invalid(fmt::format("{} must have the same dtype as query ({}), got {}",
                                           name, dtype_name(q.dtype), dtype_name(r->dtype)));
      if (r->ndim != 2)
        return Status::Invalid(fmt::format("{} must have shape (seqlen_ro, rotary_dim / 2), got {}",
                                           name, r->shape_str()));
      if (!r->is_contiguous()) return Status::Invalid(fmt::format("{} must be contiguous", name));
    }
    FLASHPLUS_RETURN_IF_ERROR(check_shape("rotary_sin", *rotary_sin,
                                          {rotary_cos->shape[0], rotary_cos->shape[1]}));
    const int64_t rdim = 2 * rotary_cos->shape[1];
    if (rdim < 2 || rdim > d)
      return Status::Invalid(fmt::format("rotary_dim (2 * rotary_cos.shape[1] = {}) must be in 2..{}",
                                         rdim, d));
    if (rotary_cos->shape[0] < capacity)
      return Status::Invalid(fmt::format(
          "cos/sin seqlen must be at least the seqlen of KV cache ({} < {})",
          rotary_cos->shape[0], capacity));
    p->rotary_cos = rotary_cos->data;
    p->rotary_sin = rotary_sin->data;
    p->rotary_dim = static_cast<int>(rdim);
    p->seqlen_ro = static_cast<int>(std::min<int64_t>(rotary_cos->shape[0], kIntMax));
    p->rotary_interleaved = is_rotary_interleaved;
  }

  fill_qkv(q, kcache, vcache, b, sq, capacity, h, hk, d, p);
  p->kcache = kcache.data;
  p->vcache = vcache.data;
  p->out = out.data;
  p->out_stride = strides_of(out);
  p->softmax_lse = static_cast<float*>(softmax_lse.data);
  p->lse_batch_stride = h * sq;
  p->lse_head_stride = sq;
  p->is_kvcache = true;
  p->cache_seqlens = ints(cache_seqlens);
  p->cache_batch_idx = ints(cache_batch_idx);
  p->cache_leftpad = ints(cache_leftpad);
  p->num_splits = num_splits;
  FLASHPLUS_RETURN_IF_ERROR(fill_options(q, alibi_slopes, 0.f, softmax_scale, is_causal,
                                         window_size_left, window_size_right, softcap, p));

  // Values the CPU can read: nothing out of range is ever dereferenced (device memory: the
  // caller's responsibility, as upstream).
  if (q.device == DeviceKind::cpu) {
    for (int bi = 0; bi < p->batch; ++bi) {
      const int64_t seqlen = p->cache_seqlens ? p->cache_seqlens[bi] : capacity;
      if (seqlen < 0)
        return Status::Invalid(fmt::format("cache_seqlens[{}] = {} is negative", bi, seqlen));
      const int64_t end = seqlen + (p->cache_seqlens ? s_new : 0);
      if (end > capacity)
        return Status::Invalid(fmt::format(
            "cache_seqlens[{}] + seqlen_new = {} + {} exceeds the cache capacity {}{}", bi, seqlen,
            p->cache_seqlens ? s_new : 0, capacity,
            block_table ? " (max_blocks_per_seq * page_block_size of block_table)" : ""));
      const int lp = p->leftpad(bi);
      if (lp < 0 || lp > end)
        return Status::Invalid(fmt::format(
            "cache_leftpad[{}] = {} must be in [0, cache_seqlens + seqlen_new = {}]", bi, lp, end));
      if (p->cache_batch_idx && (p->cache_batch_idx[bi] < 0 || p->cache_batch_idx[bi] >= c0))
        return Status::Invalid(fmt::format("cache_batch_idx[{}] = {} is out of range [0, {})", bi,
                                           p->cache_batch_idx[bi], c0));
      if (p->block_table) FLASHPLUS_RETURN_IF_ERROR(check_block_table_values(*p, bi, end));
      if (p->rotary_dim > 0 && sq > 0 && p->rotary_pos_q(bi, static_cast<int>(sq) - 1) >= p->seqlen_ro)
        return Status::Invalid(fmt::format(
            "rotary position {} of query row {} of batch {} is beyond rotary_cos's {} rows",
            p->rotary_pos_q(bi, static_cast<int>(sq) - 1), sq - 1, bi, p->seqlen_ro));
    }
  }
  return Status::Ok();
}

Status set_s_dmask(bool return_softmax, const std::optional<TensorView>& s_dmask,
                   const TensorView& q, AttnParams* p) {
  if (!return_softmax) {
    if (s_dmask)
      return Status::Invalid("s_dmask is given but return_softmax is false (nothing would be written)");
    return Status::Ok();
  }
  if (!s_dmask)
    return Status::Invalid(
        "return_softmax needs an s_dmask output of shape (batch, nheads, round128(seqlen_q), "
        "round128(seqlen_k))");
  const TensorView& t = *s_dmask;
  const int64_t rows = (p->seqlen_q + 127) / 128 * 128, cols = (p->seqlen_k + 127) / 128 * 128;
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("s_dmask", t, q, q.dtype, {p->batch, p->nheads, rows, cols}));
  p->s_dmask = t.data;
  p->s_dmask_batch_stride = t.stride[0];
  p->s_dmask_head_stride = t.stride[1];
  p->s_dmask_row_stride = t.stride[2];
  p->s_dmask_rows = static_cast<int>(rows);
  p->s_dmask_cols = static_cast<int>(cols);
  return Status::Ok();
}

}  // namespace flashplus::detail
