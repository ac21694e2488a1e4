"""Allocating, framework-agnostic attention ops.

Every function takes arrays of one framework (torch tensors, NumPy arrays, CuPy arrays; anything
with ``__dlpack__`` and an array-API namespace), allocates its outputs with that framework on the
inputs' device, runs on the caller's current stream (torch, CuPy) and copies nothing. Shapes follow
FlashAttention (flash_attn's C++ functions, ../shared/CPP_API.md): q (b, sq, h, d), k/v
(b, sk, hk, d); varlen q (total_q, h, d); lse fp32 (b, h, sq), varlen (h, total_q).
``softmax_scale=None`` means 1/sqrt(d); ``window_size=(-1, -1)`` is unbounded.
"""
from . import _core, _BACKENDS, register_torch

__all__ = ["fwd", "bwd", "varlen_fwd", "varlen_bwd", "fwd_kvcache"]


def _round128(x):
    return (x + 127) // 128 * 128


class _Frame:
    """How to allocate like `x` and which stream to run on, per framework."""

    __slots__ = ("empty", "f32", "dtype", "stream")

    def __init__(self, x):
        mod = type(x).__module__.split(".")[0]
        if mod == "torch":
            import torch

            register_torch()
            dev = x.device
            self.empty = lambda shape, dtype: torch.empty(shape, dtype=dtype, device=dev)
            self.f32 = torch.float32
            self.dtype = x.dtype
            self.stream = torch.cuda.current_stream(dev).cuda_stream if dev.type == "cuda" else 0
            return
        if mod == "cupy":
            import cupy

            self.empty = lambda shape, dtype: cupy.empty(shape, dtype=dtype)
            self.f32 = cupy.float32
            self.dtype = x.dtype
            self.stream = cupy.cuda.get_current_stream().ptr
            return
        xp = x.__array_namespace__() if hasattr(x, "__array_namespace__") else None
        if xp is None:
            raise TypeError(f"flashplus.ops: cannot allocate outputs like a {type(x).__name__} "
                            "(no array-API namespace); use torch, NumPy or CuPy arrays")
        device = getattr(x, "device", None)
        kw = {} if device is None or mod == "numpy" else {"device": device}
        self.empty = lambda shape, dtype: xp.empty(shape, dtype=dtype, **kw)
        self.f32 = xp.float32
        self.dtype = x.dtype
        self.stream = 0


def _scale(softmax_scale):
    return 0.0 if softmax_scale is None else float(softmax_scale)


def _backend(name):
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"backend must be one of {sorted(_BACKENDS)}, got {name!r}") from None


def fwd(q, k, v, *, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
        alibi_slopes=None, dropout_p=0.0, seed=0, offset=0, return_softmax=False,
        backend="auto", num_threads=0):
    """Forward. Returns (out, lse), or (out, lse, s_dmask) with return_softmax (dropout only)."""
    f = _Frame(q)
    b, sq, h, _ = q.shape
    out = f.empty(tuple(q.shape), f.dtype)
    lse = f.empty((b, h, sq), f.f32)
    s_dmask = (f.empty((b, h, _round128(sq), _round128(k.shape[1])), f.dtype)
               if return_softmax else None)
    _core.mha_fwd(q, k, v, out, lse, alibi_slopes, s_dmask, float(dropout_p),
                  _scale(softmax_scale), causal, int(window_size[0]), int(window_size[1]),
                  float(softcap), return_softmax, _backend(backend), num_threads, f.stream,
                  seed, offset)
    return (out, lse, s_dmask) if return_softmax else (out, lse)


def bwd(dout, q, k, v, out, lse, *, softmax_scale=None, causal=False, window_size=(-1, -1),
        softcap=0.0, alibi_slopes=None, dropout_p=0.0, seed=0, offset=0, deterministic=False,
        backend="auto", num_threads=0):
    """Backward of fwd with the same options. Returns (dq, dk, dv)."""
    f = _Frame(q)
    dq = f.empty(tuple(q.shape), f.dtype)
    dk = f.empty(tuple(k.shape), f.dtype)
    dv = f.empty(tuple(v.shape), f.dtype)
    _core.mha_bwd(dout, q, k, v, out, lse, dq, dk, dv, alibi_slopes, None, float(dropout_p),
                  _scale(softmax_scale), causal, int(window_size[0]), int(window_size[1]),
                  float(softcap), deterministic, _backend(backend), num_threads, f.stream,
                  seed, offset)
    return dq, dk, dv


def varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
               alibi_slopes=None, dropout_p=0.0, seed=0, offset=0, block_table=None,
               seqused_k=None, num_splits=0, backend="auto", num_threads=0):
    """Forward over packed sequences (cu_seqlens int32 (b + 1)). Returns (out, lse (h, total_q))."""
    f = _Frame(q)
    out = f.empty(tuple(q.shape), f.dtype)
    lse = f.empty((q.shape[1], q.shape[0]), f.f32)
    _core.mha_varlen_fwd(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k, None,
                         block_table, alibi_slopes, None, int(max_seqlen_q), int(max_seqlen_k),
                         float(dropout_p), _scale(softmax_scale), False, causal,
                         int(window_size[0]), int(window_size[1]), float(softcap), False,
                         num_splits, _backend(backend), num_threads, f.stream, seed, offset)
    return out, lse


def varlen_bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
               *, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
               alibi_slopes=None, dropout_p=0.0, seed=0, offset=0, deterministic=False,
               backend="auto", num_threads=0):
    """Backward of varlen_fwd. Returns (dq, dk, dv) (rows outside every sequence are zero)."""
    f = _Frame(q)
    dq = f.empty(tuple(q.shape), f.dtype)
    dk = f.empty(tuple(k.shape), f.dtype)
    dv = f.empty(tuple(v.shape), f.dtype)
    _core.mha_varlen_bwd(dout, q, k, v, out, lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k,
                         alibi_slopes, None, int(max_seqlen_q), int(max_seqlen_k),
                         float(dropout_p), _scale(softmax_scale), True, causal,
                         int(window_size[0]), int(window_size[1]), float(softcap),
                         deterministic, _backend(backend), num_threads, f.stream, seed, offset)
    return dq, dk, dv


def fwd_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens=None, rotary_cos=None,
                rotary_sin=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                rotary_interleaved=True, alibi_slopes=None, num_splits=0, backend="auto",
                num_threads=0):
    """Decode against a KV cache (contiguous or paged by block_table); k/v new tokens are
    appended in place first. Returns (out, lse)."""
    f = _Frame(q)
    b, sq, h, _ = q.shape
    out = f.empty(tuple(q.shape), f.dtype)
    lse = f.empty((b, h, sq), f.f32)
    _core.mha_fwd_kvcache(q, k_cache, v_cache, k, v, cache_seqlens, rotary_cos, rotary_sin,
                          cache_batch_idx, cache_leftpad, block_table, alibi_slopes, out, lse,
                          _scale(softmax_scale), causal, int(window_size[0]),
                          int(window_size[1]), float(softcap), rotary_interleaved, num_splits,
                          _backend(backend), num_threads, f.stream)
    return out, lse
