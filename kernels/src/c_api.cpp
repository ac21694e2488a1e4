// The C ABI (flashplus/flashplus_c.h) over the C++ entry points: DLTensors become TensorViews,
// each C args struct fills its C++ twin (flashplus/api.h), and the Status becomes a code plus a
// per-thread message. Validation stays where it is for every caller: in params.cpp.
#include "flashplus/flashplus_c.h"

#include <fmt/format.h>

#include <cstring>
#include <exception>
#include <new>
#include <optional>
#include <string>

#include "flashplus/api.h"
#include "flashplus/runtime.h"

#ifndef FLASHPLUS_VERSION_STRING
#define FLASHPLUS_VERSION_STRING "0.0.0"
#endif

namespace flashplus {
namespace {

thread_local std::string g_last_error;

Status view_of(const char* name, const DLTensor& t, TensorView* v) {
  if (t.ndim < 0 || t.ndim > TensorView::kMaxDims)
    return Status::Invalid(fmt::format("{} has {} dimensions; flashplus takes at most {}", name,
                                       t.ndim, TensorView::kMaxDims));
  if (t.ndim > 0 && t.shape == nullptr)
    return Status::Invalid(fmt::format("{} has a NULL shape", name));
  const DLDataType d = t.dtype;
  if (d.lanes != 1)
    return Status::Invalid(fmt::format("{} has {} lanes per element; flashplus takes 1", name, d.lanes));
  if (d.code == kDLFloat && d.bits == 32) v->dtype = DType::f32;
  else if (d.code == kDLFloat && d.bits == 16) v->dtype = DType::f16;
  else if (d.code == kDLBfloat && d.bits == 16) v->dtype = DType::bf16;
  else if (d.code == kDLInt && d.bits == 32) v->dtype = DType::i32;
  else {
    static const char* const kCodes[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
    const char* code = d.code < 7 ? kCodes[d.code] : "code";
    return Status::Invalid(fmt::format(
        "{} has dtype {}{}; flashplus takes float16, bfloat16, float32 (and int32 for index "
        "tensors)", name, code, d.bits));
  }
  // The device type as the int the caller stored: a C caller (or a newer DLPack) may send a
  // value this header's enum has no enumerator for, and loading that as a DLDeviceType would
  // be undefined behaviour.
  static_assert(sizeof(DLDeviceType) == sizeof(int32_t), "DLDeviceType is an int32 in DLPack");
  int32_t device_type;
  std::memcpy(&device_type, &t.device.device_type, sizeof device_type);
  switch (device_type) {
    case kDLCPU:
    case kDLCUDAHost:
    case kDLROCMHost: v->device = DeviceKind::cpu; break;
    case kDLCUDA:
    case kDLCUDAManaged: v->device = DeviceKind::cuda; break;
    case kDLROCM: v->device = DeviceKind::hip; break;
    default:
      return Status::Unsupported(fmt::format(
          "{} is on DLPack device type {}; flashplus runs on CPU, CUDA and ROCm memory", name,
          device_type));
  }
  v->device_index = v->device == DeviceKind::cpu ? 0 : t.device.device_id;
  v->ndim = t.ndim;
  int64_t compact = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    if (t.shape[i] < 0)
      return Status::Invalid(fmt::format("{} has a negative extent {} in dimension {}", name,
                                         t.shape[i], i));
    v->shape[i] = t.shape[i];
    v->stride[i] = t.strides ? t.strides[i] : compact;
    // Signed overflow would be undefined behaviour: refuse before it (validation later bounds
    // the sizes much tighter).
    if (__builtin_mul_overflow(compact, t.shape[i], &compact))
      return Status::Invalid(fmt::format("{} has extents whose product overflows 64 bits", name));
  }
  v->data = t.data ? static_cast<char*>(t.data) + t.byte_offset : nullptr;
  return Status::Ok();
}

// A required tensor argument.
Status required(const char* name, const DLTensor* t, TensorView* v) {
  if (t == nullptr) return Status::Invalid(fmt::format("{} is required but NULL", name));
  return view_of(name, *t, v);
}

// An optional one: NULL = absent.
Status optional_view(const char* name, const DLTensor* t, std::optional<TensorView>* v) {
  if (t == nullptr) {
    v->reset();
    return Status::Ok();
  }
  TensorView tv;
  FLASHPLUS_RETURN_IF_ERROR(view_of(name, *t, &tv));
  *v = tv;
  return Status::Ok();
}

Status run_options(const flashplus_run_options& o, RunOptions* r) {
  switch (o.backend) {
    case FLASHPLUS_BACKEND_AUTO: r->backend = Backend::auto_select; break;
    case FLASHPLUS_BACKEND_CPU: r->backend = Backend::cpu; break;
    case FLASHPLUS_BACKEND_CUDA: r->backend = Backend::cuda; break;
    case FLASHPLUS_BACKEND_HIP: r->backend = Backend::hip; break;
    default: return Status::Invalid(fmt::format("opts.backend {} is not a flashplus_backend", o.backend));
  }
  if (o.num_threads < 0)
    return Status::Invalid(fmt::format("opts.num_threads must be >= 0, got {}", o.num_threads));
  r->num_threads = o.num_threads;
  r->stream = o.stream;
  r->dropout_seed = o.dropout_seed;
  r->dropout_offset = o.dropout_offset;
  return Status::Ok();
}

template <typename CArgs>
Status check_header(const char* fn, const CArgs* a) {
  if (a == nullptr) return Status::Invalid(fmt::format("{}: args is NULL", fn));
  if (a->struct_size != sizeof(CArgs))
    return Status::Invalid(fmt::format(
        "{}: args.struct_size is {} but this library's struct is {} bytes (flashplus_c.h ABI "
        "version {}): rebuild against the installed header", fn, a->struct_size, sizeof(CArgs),
        FLASHPLUS_C_ABI_VERSION));
  return Status::Ok();
}

// Runs `body` (which returns a Status), records its message, maps its code; nothing escapes.
template <typename Body>
flashplus_status guarded(Body&& body) {
  Status st;
  try {
    st = body();
  } catch (const std::bad_alloc&) {
    st = Status::Runtime("out of host memory");
  } catch (const std::exception& e) {
    st = Status::Runtime(fmt::format("internal error: {}", e.what()));
  } catch (...) {
    st = Status::Runtime("internal error (unknown exception)");
  }
  if (st.ok()) {
    g_last_error.clear();
    return FLASHPLUS_OK;
  }
  try {
    g_last_error = st.message();
  } catch (...) {
    g_last_error.clear();
  }
  switch (st.code()) {
    case StatusCode::ok: return FLASHPLUS_OK;
    case StatusCode::invalid_args: return FLASHPLUS_INVALID_ARGS;
    case StatusCode::unsupported: return FLASHPLUS_UNSUPPORTED;
    case StatusCode::no_instance: return FLASHPLUS_NO_INSTANCE;
    case StatusCode::runtime_error: return FLASHPLUS_RUNTIME_ERROR;
  }
  return FLASHPLUS_RUNTIME_ERROR;
}

Status fwd(const flashplus_fwd_args* c) {
  FLASHPLUS_RETURN_IF_ERROR(check_header("flashplus_mha_fwd", c));
  FwdArgs a;
  FLASHPLUS_RETURN_IF_ERROR(required("q", c->q, &a.q));
  FLASHPLUS_RETURN_IF_ERROR(required("k", c->k, &a.k));
  FLASHPLUS_RETURN_IF_ERROR(required("v", c->v, &a.v));
  FLASHPLUS_RETURN_IF_ERROR(required("out", c->out, &a.out));
  FLASHPLUS_RETURN_IF_ERROR(required("softmax_lse", c->softmax_lse, &a.softmax_lse));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("alibi_slopes", c->alibi_slopes, &a.alibi_slopes));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("s_dmask", c->s_dmask, &a.s_dmask));
  a.p_dropout = c->p_dropout;
  a.softmax_scale = c->softmax_scale;
  a.is_causal = c->is_causal != 0;
  a.window_size_left = c->window_size_left;
  a.window_size_right = c->window_size_right;
  a.softcap = c->softcap;
  a.return_softmax = c->return_softmax != 0;
  FLASHPLUS_RETURN_IF_ERROR(run_options(c->opts, &a.opts));
  return mha_fwd(a);
}

Status bwd(const flashplus_bwd_args* c) {
  FLASHPLUS_RETURN_IF_ERROR(check_header("flashplus_mha_bwd", c));
  BwdArgs a;
  FLASHPLUS_RETURN_IF_ERROR(required("dout", c->dout, &a.dout));
  FLASHPLUS_RETURN_IF_ERROR(required("q", c->q, &a.q));
  FLASHPLUS_RETURN_IF_ERROR(required("k", c->k, &a.k));
  FLASHPLUS_RETURN_IF_ERROR(required("v", c->v, &a.v));
  FLASHPLUS_RETURN_IF_ERROR(required("out", c->out, &a.out));
  FLASHPLUS_RETURN_IF_ERROR(required("softmax_lse", c->softmax_lse, &a.softmax_lse));
  FLASHPLUS_RETURN_IF_ERROR(required("dq", c->dq, &a.dq));
  FLASHPLUS_RETURN_IF_ERROR(required("dk", c->dk, &a.dk));
  FLASHPLUS_RETURN_IF_ERROR(required("dv", c->dv, &a.dv));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("alibi_slopes", c->alibi_slopes, &a.alibi_slopes));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("softmax_d", c->softmax_d, &a.softmax_d));
  a.p_dropout = c->p_dropout;
  a.softmax_scale = c->softmax_scale;
  a.is_causal = c->is_causal != 0;
  a.window_size_left = c->window_size_left;
  a.window_size_right = c->window_size_right;
  a.softcap = c->softcap;
  a.deterministic = c->deterministic != 0;
  FLASHPLUS_RETURN_IF_ERROR(run_options(c->opts, &a.opts));
  return mha_bwd(a);
}

Status varlen_fwd(const flashplus_varlen_fwd_args* c) {
  FLASHPLUS_RETURN_IF_ERROR(check_header("flashplus_mha_varlen_fwd", c));
  VarlenFwdArgs a;
  FLASHPLUS_RETURN_IF_ERROR(required("q", c->q, &a.q));
  FLASHPLUS_RETURN_IF_ERROR(required("k", c->k, &a.k));
  FLASHPLUS_RETURN_IF_ERROR(required("v", c->v, &a.v));
  FLASHPLUS_RETURN_IF_ERROR(required("out", c->out, &a.out));
  FLASHPLUS_RETURN_IF_ERROR(required("softmax_lse", c->softmax_lse, &a.softmax_lse));
  FLASHPLUS_RETURN_IF_ERROR(required("cu_seqlens_q", c->cu_seqlens_q, &a.cu_seqlens_q));
  FLASHPLUS_RETURN_IF_ERROR(required("cu_seqlens_k", c->cu_seqlens_k, &a.cu_seqlens_k));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("seqused_k", c->seqused_k, &a.seqused_k));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("leftpad_k", c->leftpad_k, &a.leftpad_k));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("block_table", c->block_table, &a.block_table));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("alibi_slopes", c->alibi_slopes, &a.alibi_slopes));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("s_dmask", c->s_dmask, &a.s_dmask));
  a.max_seqlen_q = c->max_seqlen_q;
  a.max_seqlen_k = c->max_seqlen_k;
  a.p_dropout = c->p_dropout;
  a.softmax_scale = c->softmax_scale;
  a.zero_tensors = c->zero_tensors != 0;
  a.is_causal = c->is_causal != 0;
  a.window_size_left = c->window_size_left;
  a.window_size_right = c->window_size_right;
  a.softcap = c->softcap;
  a.return_softmax = c->return_softmax != 0;
  a.num_splits = c->num_splits;
  FLASHPLUS_RETURN_IF_ERROR(run_options(c->opts, &a.opts));
  return mha_varlen_fwd(a);
}

Status varlen_bwd(const flashplus_varlen_bwd_args* c) {
  FLASHPLUS_RETURN_IF_ERROR(check_header("flashplus_mha_varlen_bwd", c));
  VarlenBwdArgs a;
  FLASHPLUS_RETURN_IF_ERROR(required("dout", c->dout, &a.dout));
  FLASHPLUS_RETURN_IF_ERROR(required("q", c->q, &a.q));
  FLASHPLUS_RETURN_IF_ERROR(required("k", c->k, &a.k));
  FLASHPLUS_RETURN_IF_ERROR(required("v", c->v, &a.v));
  FLASHPLUS_RETURN_IF_ERROR(required("out", c->out, &a.out));
  FLASHPLUS_RETURN_IF_ERROR(required("softmax_lse", c->softmax_lse, &a.softmax_lse));
  FLASHPLUS_RETURN_IF_ERROR(required("dq", c->dq, &a.dq));
  FLASHPLUS_RETURN_IF_ERROR(required("dk", c->dk, &a.dk));
  FLASHPLUS_RETURN_IF_ERROR(required("dv", c->dv, &a.dv));
  FLASHPLUS_RETURN_IF_ERROR(required("cu_seqlens_q", c->cu_seqlens_q, &a.cu_seqlens_q));
  FLASHPLUS_RETURN_IF_ERROR(required("cu_seqlens_k", c->cu_seqlens_k, &a.cu_seqlens_k));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("alibi_slopes", c->alibi_slopes, &a.alibi_slopes));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("softmax_d", c->softmax_d, &a.softmax_d));
  a.max_seqlen_q = c->max_seqlen_q;
  a.max_seqlen_k = c->max_seqlen_k;
  a.p_dropout = c->p_dropout;
  a.softmax_scale = c->softmax_scale;
  a.zero_tensors = c->zero_tensors != 0;
  a.is_causal = c->is_causal != 0;
  a.window_size_left = c->window_size_left;
  a.window_size_right = c->window_size_right;
  a.softcap = c->softcap;
  a.deterministic = c->deterministic != 0;
  FLASHPLUS_RETURN_IF_ERROR(run_options(c->opts, &a.opts));
  return mha_varlen_bwd(a);
}

Status kvcache(const flashplus_kvcache_args* c) {
  FLASHPLUS_RETURN_IF_ERROR(check_header("flashplus_mha_fwd_kvcache", c));
  KvcacheArgs a;
  FLASHPLUS_RETURN_IF_ERROR(required("q", c->q, &a.q));
  FLASHPLUS_RETURN_IF_ERROR(required("kcache", c->kcache, &a.kcache));
  FLASHPLUS_RETURN_IF_ERROR(required("vcache", c->vcache, &a.vcache));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("k_new", c->k_new, &a.k_new));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("v_new", c->v_new, &a.v_new));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("cache_seqlens", c->cache_seqlens, &a.cache_seqlens));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("rotary_cos", c->rotary_cos, &a.rotary_cos));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("rotary_sin", c->rotary_sin, &a.rotary_sin));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("cache_batch_idx", c->cache_batch_idx, &a.cache_batch_idx));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("cache_leftpad", c->cache_leftpad, &a.cache_leftpad));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("block_table", c->block_table, &a.block_table));
  FLASHPLUS_RETURN_IF_ERROR(optional_view("alibi_slopes", c->alibi_slopes, &a.alibi_slopes));
  FLASHPLUS_RETURN_IF_ERROR(required("out", c->out, &a.out));
  FLASHPLUS_RETURN_IF_ERROR(required("softmax_lse", c->softmax_lse, &a.softmax_lse));
  a.softmax_scale = c->softmax_scale;
  a.is_causal = c->is_causal != 0;
  a.window_size_left = c->window_size_left;
  a.window_size_right = c->window_size_right;
  a.softcap = c->softcap;
  a.is_rotary_interleaved = c->is_rotary_interleaved != 0;
  a.num_splits = c->num_splits;
  FLASHPLUS_RETURN_IF_ERROR(run_options(c->opts, &a.opts));
  return mha_fwd_kvcache(a);
}

bool backend_of(int32_t b, Backend* out) {
  switch (b) {
    case FLASHPLUS_BACKEND_CPU: *out = Backend::cpu; return true;
    case FLASHPLUS_BACKEND_CUDA: *out = Backend::cuda; return true;
    case FLASHPLUS_BACKEND_HIP: *out = Backend::hip; return true;
    default: return false;
  }
}

}  // namespace
}  // namespace flashplus

using namespace flashplus;

extern "C" {

flashplus_status flashplus_mha_fwd(const flashplus_fwd_args* a) {
  return guarded([&] { return fwd(a); });
}
flashplus_status flashplus_mha_bwd(const flashplus_bwd_args* a) {
  return guarded([&] { return bwd(a); });
}
flashplus_status flashplus_mha_varlen_fwd(const flashplus_varlen_fwd_args* a) {
  return guarded([&] { return varlen_fwd(a); });
}
flashplus_status flashplus_mha_varlen_bwd(const flashplus_varlen_bwd_args* a) {
  return guarded([&] { return varlen_bwd(a); });
}
flashplus_status flashplus_mha_fwd_kvcache(const flashplus_kvcache_args* a) {
  return guarded([&] { return kvcache(a); });
}

const char* flashplus_last_error(void) { return g_last_error.c_str(); }

const char* flashplus_status_name(flashplus_status s) {
  switch (s) {
    case FLASHPLUS_OK: return "ok";
    case FLASHPLUS_INVALID_ARGS: return "invalid_args";
    case FLASHPLUS_UNSUPPORTED: return "unsupported";
    case FLASHPLUS_NO_INSTANCE: return "no_instance";
    case FLASHPLUS_RUNTIME_ERROR: return "runtime_error";
  }
  return "unknown";
}

int32_t flashplus_c_abi_version(void) { return FLASHPLUS_C_ABI_VERSION; }

const char* flashplus_version_string(void) { return FLASHPLUS_VERSION_STRING; }

int32_t flashplus_backend_compiled(int32_t backend) {
  Backend b;
  if (!backend_of(backend, &b)) return 0;
  for (Backend c : compiled_backends())
    if (c == b) return 1;
  return 0;
}

int32_t flashplus_device_count(int32_t backend) {
  Backend b;
  if (!backend_of(backend, &b) || !flashplus_backend_compiled(backend)) return 0;
  try {
    int32_t n = 0;
    for (const DeviceDesc& d : list_devices())
      if (d.backend == b) ++n;
    return n;
  } catch (...) {
    return 0;
  }
}

}  // extern "C"
