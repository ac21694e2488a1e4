#include "params.h"

#include <cmath>
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
  if (t.device != like_device.device || t.device_index != like_device.device_index)
    return Status::Invalid(fmt::format("{} must be on the same device as q ({}:{}), got {}:{}",
                                       name, device_name(like_device.device),
                                       like_device.device_index, device_name(t.device),
                                       t.device_index));
  return Status::Ok();
}

// q/k/v/out-like tensors: 4-d, given dtype, unit stride in the last dim, non-negative strides.
Status check_bshd(const char* name, const TensorView& t, const TensorView& q, DType dtype,
                  std::initializer_list<int64_t> dims) {
  FLASHPLUS_RETURN_IF_ERROR(check_tensor(name, t, q));
  FLASHPLUS_RETURN_IF_ERROR(check_shape(name, t, dims));
  if (t.dtype != dtype)
    return Status::Invalid(fmt::format("{} must have dtype {} (as q), got {}", name,
                                       dtype_name(dtype), dtype_name(t.dtype)));
  if (t.stride[3] != 1 && t.shape[3] > 1)
    return Status::Invalid(fmt::format(
        "{} must have contiguous last dimension (stride 1), got stride {}", name, t.stride[3]));
  for (int d = 0; d < 3; ++d)
    if (t.stride[d] < 0)
      return Status::Invalid(fmt::format("{} has a negative stride", name));
  return Status::Ok();
}

Strides3 strides_of(const TensorView& t) { return {t.stride[0], t.stride[1], t.stride[2]}; }

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

  if (!std::isfinite(softmax_scale))
    return Status::Invalid(fmt::format("softmax_scale must be finite, got {}", softmax_scale));
  if (!std::isfinite(softcap) || softcap < 0)
    return Status::Invalid(fmt::format("softcap must be >= 0 (0 = off), got {}", softcap));
  if (!(p_dropout >= 0.f && p_dropout < 1.f))
    return Status::Invalid(fmt::format("p_dropout must be in [0, 1), got {}", p_dropout));
  if (p_dropout > 0.f)
    return Status::Unsupported("dropout is not implemented yet (p_dropout must be 0)");
  if (window_size_left < -1 || window_size_right < -1)
    return Status::Invalid(fmt::format(
        "window sizes must be >= -1 (-1 = unbounded), got ({}, {})", window_size_left,
        window_size_right));

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
  p->softmax_scale =
      softmax_scale == 0.f ? static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)))
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
  if (return_softmax)
    return Status::Invalid("return_softmax is only supported when p_dropout > 0.0");
  FLASHPLUS_RETURN_IF_ERROR(check_bshd("out", out, q, q.dtype,
                                       {q.shape[0], q.shape[1], q.shape[2], q.shape[3]}));
  FLASHPLUS_RETURN_IF_ERROR(
      check_lse_like("softmax_lse", softmax_lse, q, q.shape[0], q.shape[2], q.shape[1]));
  p->out = out.data;
  p->out_stride = strides_of(out);
  p->softmax_lse = static_cast<float*>(softmax_lse.data);
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
  p->dout = dout.data;
  p->dq = dq.data;
  p->dk = dk.data;
  p->dv = dv.data;
  p->dout_stride = strides_of(dout);
  p->dq_stride = strides_of(dq);
  p->dk_stride = strides_of(dk);
  p->dv_stride = strides_of(dv);
  p->deterministic = deterministic;
  return Status::Ok();
}

}  // namespace flashplus::detail
