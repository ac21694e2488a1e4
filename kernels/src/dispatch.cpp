// The one dispatch point: validate once (params.cpp), resolve the backend, call it.
#include <fmt/format.h>

#include "backend.h"
#include "flashplus/api.h"
#include "params.h"

namespace flashplus {
namespace detail {

#ifndef FLASHPLUS_HAVE_CUDA
const BackendOps* cuda_ops() { return nullptr; }
#endif
#ifndef FLASHPLUS_HAVE_HIP
const BackendOps* hip_ops() { return nullptr; }
#endif

const BackendOps* ops_for(Backend b) {
  switch (b) {
    case Backend::cpu: return cpu_ops();
    case Backend::cuda: return cuda_ops();
    case Backend::hip: return hip_ops();
    case Backend::auto_select: return ops_for(best_backend());
  }
  return nullptr;
}

namespace {

// The backend that runs tensors living on `device`, honouring an explicit request.
Status resolve(const RunOptions& opts, DeviceKind device, const BackendOps** ops) {
  Backend want = opts.backend;
  if (want == Backend::auto_select) {
    want = device == DeviceKind::cuda ? Backend::cuda
           : device == DeviceKind::hip ? Backend::hip
                                       : Backend::cpu;
  }
  const BackendOps* o = ops_for(want);
  if (o == nullptr)
    return Status::Unsupported(
        fmt::format("the {} backend is not compiled into this build", backend_name(want)));
  if (o->device_kind != device)
    return Status::Invalid(fmt::format("tensors are in {} memory but the {} backend was requested",
                                       device_name(device), backend_name(want)));
  *ops = o;
  return Status::Ok();
}

// Refuse a feature the backend has not implemented, before calling it.
Status require_feature(const BackendOps* ops, uint32_t feature, const char* what) {
  if (ops->features & feature) return Status::Ok();
  return Status::Unsupported(
      fmt::format("the {} backend does not support {} yet", backend_name(ops->backend), what));
}

// Dropout: the backend must implement it; the RNG state comes from the run options.
Status set_dropout_rng(const BackendOps* ops, const RunOptions& opts, AttnParams* p) {
  if (!p->has_dropout()) return Status::Ok();
  FLASHPLUS_RETURN_IF_ERROR(require_feature(ops, kFeatureDropout, "dropout"));
  p->philox_seed = opts.dropout_seed;
  p->philox_offset = opts.dropout_offset;
  return Status::Ok();
}

}  // namespace
}  // namespace detail

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::auto_select: return "auto";
    case Backend::cpu: return "cpu";
    case Backend::cuda: return "cuda";
    case Backend::hip: return "hip";
  }
  return "?";
}

bool parse_backend(const std::string& s, Backend* out) {
  for (Backend b : {Backend::auto_select, Backend::cpu, Backend::cuda, Backend::hip}) {
    if (s == backend_name(b)) {
      *out = b;
      return true;
    }
  }
  return false;
}

std::vector<Backend> compiled_backends() {
  std::vector<Backend> r{Backend::cpu};
  if (detail::cuda_ops()) r.push_back(Backend::cuda);
  if (detail::hip_ops()) r.push_back(Backend::hip);
  return r;
}

std::vector<DeviceDesc> list_devices() {
  std::vector<DeviceDesc> r;
  for (Backend b : compiled_backends()) {
    auto d = detail::ops_for(b)->devices();
    r.insert(r.end(), d.begin(), d.end());
  }
  return r;
}

Backend best_backend() {
  for (Backend b : {Backend::cuda, Backend::hip}) {
    const detail::BackendOps* o = detail::ops_for(b);
    if (o && !o->devices().empty()) return b;
  }
  return Backend::cpu;
}

namespace {

// Runs the forward, then the backend's S_dmask pass when return_softmax asked for it.
Status run_fwd(const detail::BackendOps* ops, const AttnParams& p, const RunOptions& opts) {
  FLASHPLUS_RETURN_IF_ERROR(ops->fwd(p, opts));
  if (p.s_dmask == nullptr) return Status::Ok();
  if (ops->dmask == nullptr)
    return Status::Unsupported(fmt::format("the {} backend cannot return S_dmask (return_softmax)",
                                           backend_name(ops->backend)));
  return ops->dmask(p, opts);
}

}  // namespace

Status mha_fwd(const FwdArgs& a) {
  AttnParams p;
  FLASHPLUS_RETURN_IF_ERROR(detail::make_fwd_params(
      a.q, a.k, a.v, a.out, a.softmax_lse, a.alibi_slopes, a.p_dropout, a.softmax_scale,
      a.is_causal, a.window_size_left, a.window_size_right, a.softcap, a.return_softmax, &p));
  FLASHPLUS_RETURN_IF_ERROR(detail::set_s_dmask(a.return_softmax, a.s_dmask, a.q, &p));
  const detail::BackendOps* ops = nullptr;
  FLASHPLUS_RETURN_IF_ERROR(detail::resolve(a.opts, p.device, &ops));
  FLASHPLUS_RETURN_IF_ERROR(detail::set_dropout_rng(ops, a.opts, &p));
  if (p.seqlen_q == 0) return Status::Ok();  // nothing to write
  return run_fwd(ops, p, a.opts);
}

Status mha_bwd(const BwdArgs& a) {
  AttnParams p;
  FLASHPLUS_RETURN_IF_ERROR(detail::make_bwd_params(
      a.dout, a.q, a.k, a.v, a.out, a.softmax_lse, a.dq, a.dk, a.dv, a.alibi_slopes, a.p_dropout,
      a.softmax_scale, a.is_causal, a.window_size_left, a.window_size_right, a.softcap,
      a.deterministic, a.softmax_d, &p));
  const detail::BackendOps* ops = nullptr;
  FLASHPLUS_RETURN_IF_ERROR(detail::resolve(a.opts, p.device, &ops));
  FLASHPLUS_RETURN_IF_ERROR(detail::set_dropout_rng(ops, a.opts, &p));
  // The backend writes every element of dq, dk, dv (zeros where nothing contributes).
  return ops->bwd(p, a.opts);
}

Status mha_varlen_fwd(const VarlenFwdArgs& a) {
  AttnParams p;
  FLASHPLUS_RETURN_IF_ERROR(detail::make_varlen_fwd_params(
      a.q, a.k, a.v, a.out, a.softmax_lse, a.cu_seqlens_q, a.cu_seqlens_k, a.seqused_k,
      a.leftpad_k, a.block_table, a.alibi_slopes, a.max_seqlen_q, a.max_seqlen_k, a.p_dropout,
      a.softmax_scale, a.zero_tensors, a.is_causal, a.window_size_left, a.window_size_right,
      a.softcap, a.return_softmax, a.num_splits, &p));
  FLASHPLUS_RETURN_IF_ERROR(detail::set_s_dmask(a.return_softmax, a.s_dmask, a.q, &p));
  const detail::BackendOps* ops = nullptr;
  FLASHPLUS_RETURN_IF_ERROR(detail::resolve(a.opts, p.device, &ops));
  FLASHPLUS_RETURN_IF_ERROR(
      detail::require_feature(ops, detail::kFeatureVarlen, "variable-length batches"));
  FLASHPLUS_RETURN_IF_ERROR(detail::set_dropout_rng(ops, a.opts, &p));
  return run_fwd(ops, p, a.opts);
}

Status mha_varlen_bwd(const VarlenBwdArgs& a) {
  AttnParams p;
  FLASHPLUS_RETURN_IF_ERROR(detail::make_varlen_bwd_params(
      a.dout, a.q, a.k, a.v, a.out, a.softmax_lse, a.dq, a.dk, a.dv, a.cu_seqlens_q,
      a.cu_seqlens_k, a.alibi_slopes, a.max_seqlen_q, a.max_seqlen_k, a.p_dropout,
      a.softmax_scale, a.zero_tensors, a.is_causal, a.window_size_left, a.window_size_right,
      a.softcap, a.deterministic, a.softmax_d, &p));
  const detail::BackendOps* ops = nullptr;
  FLASHPLUS_RETURN_IF_ERROR(detail::resolve(a.opts, p.device, &ops));
  FLASHPLUS_RETURN_IF_ERROR(
      detail::require_feature(ops, detail::kFeatureVarlen, "variable-length batches"));
  FLASHPLUS_RETURN_IF_ERROR(detail::set_dropout_rng(ops, a.opts, &p));
  return ops->bwd(p, a.opts);
}

Status mha_fwd_kvcache(const KvcacheArgs& a) {
  AttnParams p;
  FLASHPLUS_RETURN_IF_ERROR(detail::make_kvcache_params(
      a.q, a.kcache, a.vcache, a.k_new, a.v_new, a.cache_seqlens, a.rotary_cos, a.rotary_sin,
      a.cache_batch_idx, a.cache_leftpad, a.block_table, a.alibi_slopes, a.out, a.softmax_lse,
      a.softmax_scale, a.is_causal, a.window_size_left, a.window_size_right, a.softcap,
      a.is_rotary_interleaved, a.num_splits, &p));
  const detail::BackendOps* ops = nullptr;
  FLASHPLUS_RETURN_IF_ERROR(detail::resolve(a.opts, p.device, &ops));
  FLASHPLUS_RETURN_IF_ERROR(detail::require_feature(ops, detail::kFeatureKvcache, "the kv cache"));
  return ops->fwd(p, a.opts);
}

// ---- the positional forms (upstream's argument order) fill the structs ----------------------

Status mha_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
               const TensorView& softmax_lse, const std::optional<TensorView>& alibi_slopes,
               float p_dropout, float softmax_scale, bool is_causal, int window_size_left,
               int window_size_right, float softcap, bool return_softmax,
               const std::optional<TensorView>& s_dmask, const RunOptions& opts) {
  return mha_fwd(FwdArgs{q, k, v, out, softmax_lse, alibi_slopes, p_dropout, softmax_scale,
                         is_causal, window_size_left, window_size_right, softcap, return_softmax,
                         s_dmask, opts});
}

Status mha_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
               const TensorView& softmax_lse, const std::optional<TensorView>& alibi_slopes,
               float p_dropout, float softmax_scale, bool is_causal, int window_size_left,
               int window_size_right, float softcap, bool return_softmax,
               const RunOptions& opts) {
  return mha_fwd(q, k, v, out, softmax_lse, alibi_slopes, p_dropout, softmax_scale, is_causal,
                 window_size_left, window_size_right, softcap, return_softmax, std::nullopt, opts);
}

Status mha_bwd(const TensorView& dout, const TensorView& q, const TensorView& k,
               const TensorView& v, const TensorView& out, const TensorView& softmax_lse,
               const TensorView& dq, const TensorView& dk, const TensorView& dv,
               const std::optional<TensorView>& alibi_slopes, float p_dropout,
               float softmax_scale, bool is_causal, int window_size_left, int window_size_right,
               float softcap, bool deterministic, const std::optional<TensorView>& softmax_d,
               const RunOptions& opts) {
  return mha_bwd(BwdArgs{dout, q, k, v, out, softmax_lse, dq, dk, dv, alibi_slopes, p_dropout,
                         softmax_scale, is_causal, window_size_left, window_size_right, softcap,
                         deterministic, softmax_d, opts});
}

Status mha_varlen_fwd(const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& out, const TensorView& softmax_lse,
                      const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                      const std::optional<TensorView>& seqused_k,
                      const std::optional<TensorView>& leftpad_k,
                      const std::optional<TensorView>& block_table,
                      const std::optional<TensorView>& alibi_slopes, int max_seqlen_q,
                      int max_seqlen_k, float p_dropout, float softmax_scale, bool zero_tensors,
                      bool is_causal, int window_size_left, int window_size_right, float softcap,
                      bool return_softmax, int num_splits,
                      const std::optional<TensorView>& s_dmask, const RunOptions& opts) {
  return mha_varlen_fwd(VarlenFwdArgs{
      q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, seqused_k, leftpad_k, block_table,
      alibi_slopes, max_seqlen_q, max_seqlen_k, p_dropout, softmax_scale, zero_tensors,
      is_causal, window_size_left, window_size_right, softcap, return_softmax, num_splits,
      s_dmask, opts});
}

Status mha_varlen_fwd(const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& out, const TensorView& softmax_lse,
                      const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                      const std::optional<TensorView>& seqused_k,
                      const std::optional<TensorView>& leftpad_k,
                      const std::optional<TensorView>& block_table,
                      const std::optional<TensorView>& alibi_slopes, int max_seqlen_q,
                      int max_seqlen_k, float p_dropout, float softmax_scale, bool zero_tensors,
                      bool is_causal, int window_size_left, int window_size_right, float softcap,
                      bool return_softmax, int num_splits, const RunOptions& opts) {
  return mha_varlen_fwd(q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, seqused_k,
                        leftpad_k, block_table, alibi_slopes, max_seqlen_q, max_seqlen_k,
                        p_dropout, softmax_scale, zero_tensors, is_causal, window_size_left,
                        window_size_right, softcap, return_softmax, num_splits, std::nullopt,
                        opts);
}

Status mha_varlen_bwd(const TensorView& dout, const TensorView& q, const TensorView& k,
                      const TensorView& v, const TensorView& out, const TensorView& softmax_lse,
                      const TensorView& dq, const TensorView& dk, const TensorView& dv,
                      const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                      const std::optional<TensorView>& alibi_slopes, int max_seqlen_q,
                      int max_seqlen_k, float p_dropout, float softmax_scale, bool zero_tensors,
                      bool is_causal, int window_size_left, int window_size_right, float softcap,
                      bool deterministic, const std::optional<TensorView>& softmax_d,
                      const RunOptions& opts) {
  return mha_varlen_bwd(VarlenBwdArgs{
      dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, alibi_slopes,
      max_seqlen_q, max_seqlen_k, p_dropout, softmax_scale, zero_tensors, is_causal,
      window_size_left, window_size_right, softcap, deterministic, softmax_d, opts});
}

Status mha_fwd_kvcache(const TensorView& q, const TensorView& kcache, const TensorView& vcache,
                       const std::optional<TensorView>& k_new,
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
                       bool is_rotary_interleaved, int num_splits, const RunOptions& opts) {
  return mha_fwd_kvcache(KvcacheArgs{
      q, kcache, vcache, k_new, v_new, cache_seqlens, rotary_cos, rotary_sin, cache_batch_idx,
      cache_leftpad, block_table, alibi_slopes, out, softmax_lse, softmax_scale, is_causal,
      window_size_left, window_size_right, softcap, is_rotary_interleaved, num_splits, opts});
}

}  // namespace flashplus
