# FlashAttention 2.x's Python interface (flash_attn.flash_attn_interface) on FlashAttention-Plus.
#
# Contract: ../../../../shared/API.md (§3 public functions, §5 the torch.library ops, §2 semantics).
# The kernels are flashplus._core's (the C ABI, no PyTorch C++ ABI): CPU tensors run on the CPU
# backend, CUDA tensors on the CUDA backend (backend 0 = the tensors' device). Outputs are
# allocated here and written in place by the library.
#
# Where we differ from upstream, deliberately (API.md §13):
#   * fp32 inputs are accepted besides fp16/bf16 (computed in fp32, never down-cast).
#   * Head dims: any D in 1..256, in the public functions and in the raw ops alike. Upstream's
#     public functions zero-pad D to a multiple of 8 and slice back only because its kernels need
#     it (its raw ops raise for D % 8 != 0); our library takes any D, so nothing is padded and no
#     copy is made. Results are the same (zero channels change no dot product; softmax_scale's
#     default uses the real D either way). D > 256 raises upstream's message.
#   * Any page size for paged KV caches (upstream: multiples of 256).
#   * Dropout: the Philox seed and offset come from PyTorch's default generator of q's device
#     (CPU: a 63-bit seed drawn with torch.randint, offset 0; CUDA: the generator's seed and its
#     Philox offset, advanced by 4 per call), so torch.manual_seed(s) replays the mask and `out`
#     bit for bit. rng_state = int64 (2,) CPU tensor (seed, offset); the backward replays it.
#     S_dmask holds the normalised dropped-out probabilities exp(z - lse) (negative = dropped,
#     0 = masked or padding), not upstream's block-scaled values; _get_block_size_n still reports
#     upstream's block widths.
#   * softmax_d (the backward's return value) has upstream's padded shape; the real values are in
#     [..., :seqlen_q] (fixed) or [:, :total_q] (varlen), the padding is 0.
from typing import Optional, Tuple, Union

import torch

import flashplus
from flashplus import _core

flashplus.register_torch()  # torch tensors are then read through their attributes, no DLPack

flash_attn_gpu = _core  # upstream's name for its compiled module (optional in the contract)
USE_TRITON_ROCM = False

_mha_fwd = _core.mha_fwd
_mha_bwd = _core.mha_bwd
_mha_varlen_fwd = _core.mha_varlen_fwd
_mha_varlen_bwd = _core.mha_varlen_bwd
_mha_fwd_kvcache = _core.mha_fwd_kvcache

_HAS_CUDA_BACKEND = bool(_core.backend_compiled(2))
_DEVICE_TYPES = ("cpu", "cuda")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_f32 = torch.float32
_i32 = torch.int32
_i64 = torch.int64
_empty = torch.empty
_zeros = torch.zeros
_get_num_threads = torch.get_num_threads
_SEED_HIGH = (1 << 63) - 1
_U64 = 1 << 64

try:
    _raw_stream = torch._C._cuda_getCurrentRawStream
except AttributeError:  # a torch without CUDA support: no CUDA tensor can reach us anyway
    def _raw_stream(index):
        return torch.cuda.current_stream(index).cuda_stream

_NO_CUDA = (
    "FlashAttention-Plus was built without its CUDA backend, so it cannot run on CUDA tensors "
    "({} is on {}). Rebuild it on a machine with the CUDA toolkit (nvcc): "
    "`pip install ./python/flashplus` builds the CUDA backend when nvcc is found "
    "(force it with -Ccmake.define.FLASHPLUS_CUDA=ON, or -DFLASHPLUS_CUDA=ON for a CMake build)."
)


def _cuda_missing(name, t):
    return RuntimeError(_NO_CUDA.format(name, t.device))


def _opts(q):
    """(num_threads, stream) for the run options of a call on q's device."""
    if q.is_cuda:
        if not _HAS_CUDA_BACKEND:
            raise _cuda_missing("q", q)
        return 0, _raw_stream(q.get_device())
    return _get_num_threads(), 0


def _draw_dropout_rng(q):
    """(seed, offset) for one dropout mask, from torch's default generator of q's device."""
    if q.is_cuda:
        gens = torch.cuda.default_generators
        if not gens:  # filled by CUDA's lazy init, which a tensor from DLPack may not have run
            torch.cuda.init()
            gens = torch.cuda.default_generators
        gen = gens[q.get_device()]
        seed = gen.initial_seed()
        offset = gen.get_offset()
        gen.set_offset(offset + 4)
        return seed, offset
    return int(torch.randint(_SEED_HIGH, (1,), dtype=_i64)), 0


def _rng_state(seed, offset):
    if not seed and not offset:
        return _zeros(2, dtype=_i64)  # no dropout (4x cheaper than torch.tensor)
    if seed >= 1 << 63:  # stored as int64: two's complement
        seed -= _U64
    return torch.tensor((seed, offset), dtype=_i64)


def _rng_from_state(rng_state, dropout_p):
    if dropout_p <= 0.0:
        return 0, 0
    if rng_state is None:
        raise RuntimeError(
            "rng_state is required with dropout_p > 0: pass the rng_state returned by the "
            "forward so that the backward replays its dropout mask")
    seed, offset = rng_state.tolist()
    return seed % _U64, offset % _U64


def _check_dtypes(q, k, v):
    dt = q.dtype
    if dt not in _DTYPES:
        raise RuntimeError(
            f"FlashAttention only support fp16 and bf16 data type (FlashAttention-Plus also "
            f"accepts fp32); q has dtype {dt}")
    if k.dtype != dt:
        raise RuntimeError(f"query and key must have the same dtype (q: {dt}, k: {k.dtype})")
    if v.dtype != dt:
        raise RuntimeError(f"query and value must have the same dtype (q: {dt}, v: {v.dtype})")


def _check_index(t, name):
    # Upstream's message; the C ABI would name the argument too, but in other words.
    if t is not None and t.dtype is not _i32:
        raise RuntimeError(f"{name} must have dtype int32, got {t.dtype}")


def _check_alibi(a):
    if a is not None and a.dtype is not _f32:
        raise RuntimeError(f"ALiBi slopes must have dtype fp32 (alibi_slopes has {a.dtype})")


def _check_head_dim(d, what):
    if d > 256:
        raise RuntimeError(
            f"FlashAttention {what} only supports head dimension at most 256 (got {d})")


def _check_ndim(t, name, n, dims):
    if t.dim() != n:
        raise RuntimeError(f"{name} must have {n} dimensions {dims}, got shape {tuple(t.shape)}")


def _scale(softmax_scale):
    # The library reads 0 as "1/sqrt(d)"; upstream computes with a zero scale (uniform weights).
    # A tiny positive scale gives exactly that: exp(1e-30 * s) == 1 in fp32 for any sane score.
    return softmax_scale if softmax_scale != 0.0 else 1e-30


def _window(w):
    w = int(w)
    return -1 if w < 0 else (w if w < 0x7FFFFFFF else 0x7FFFFFFF)  # any negative = unbounded


def maybe_contiguous(x):
    return x.contiguous() if x is not None and x.stride(-1) != 1 else x


def round_multiple(x, m):
    return (x + m - 1) // m * m


def _r128(x):
    return (x + 127) // 128 * 128


def _get_block_size_n(device, head_dim, is_dropout, is_causal):
    # Upstream's key-block widths (API.md §5.4). Our S_dmask is normalised (see the top of this
    # file), so this only matters to code that wants upstream's numbers.
    assert head_dim <= 256
    if head_dim <= 32:
        return 128
    if head_dim <= 64:
        return 128 if not is_dropout else 64
    if head_dim <= 96:
        return 64
    if head_dim <= 128:
        major, minor = (0, 0)
        if torch.cuda.is_available() and torch.device(device).type == "cuda":
            major, minor = torch.cuda.get_device_capability(device)
        if major == 8 and minor > 0:
            return 64 if (not is_dropout and is_causal) else 32
        return 64 if not is_dropout else 32
    return 64


# ------------------------------------------------------------------------------------------------
# The raw ops (API.md §5.1), registered as torch.library custom ops flash_attn::<name>.
# ------------------------------------------------------------------------------------------------


def _fwd_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int,
    window_size_right: int,
    softcap: float,
    alibi_slopes: Optional[torch.Tensor],
    return_softmax: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = maybe_contiguous(q), maybe_contiguous(k), maybe_contiguous(v)
    _check_dtypes(q, k, v)
    _check_ndim(q, "q", 4, "(batch, seqlen_q, nheads, head_dim)")
    _check_ndim(k, "k", 4, "(batch, seqlen_k, nheads_k, head_dim)")
    b, sq, h, d = q.shape
    _check_head_dim(d, "forward")
    _check_alibi(alibi_slopes)
    nthreads, stream = _opts(q)
    dev = q.device
    out = torch.empty_like(q)
    lse = q.new_empty((b, h, sq), dtype=_f32)  # new_empty: ~1.5 us cheaper on CUDA
    if return_softmax:
        s_dmask = _empty((b, h, _r128(sq), _r128(k.shape[1])), dtype=q.dtype, device=dev)
    else:
        s_dmask = q.new_empty((0,))
    seed, offset = _draw_dropout_rng(q) if dropout_p > 0.0 else (0, 0)
    _mha_fwd(q, k, v, out, lse, alibi_slopes, s_dmask if return_softmax else None,
             dropout_p, _scale(softmax_scale), causal, _window(window_size_left),
             _window(window_size_right), max(softcap, 0.0), return_softmax,
             0, nthreads, stream, seed, offset)
    return out, lse, s_dmask, _rng_state(seed, offset)


_flash_attn_forward = torch.library.custom_op(
    "flash_attn::_flash_attn_forward", mutates_args=(), device_types=_DEVICE_TYPES)(_fwd_impl)


@torch.library.register_fake("flash_attn::_flash_attn_forward")
def _flash_attn_forward_fake(q, k, v, dropout_p, softmax_scale, causal, window_size_left,
                             window_size_right, softcap, alibi_slopes, return_softmax):
    b, sq, h, _ = q.shape
    out = torch.empty_like(maybe_contiguous(q))  # as the real op, which copies such a q first
    lse = q.new_empty((b, h, sq), dtype=_f32)
    if return_softmax:
        s_dmask = q.new_empty((b, h, _r128(sq), _r128(k.shape[1])))
    else:
        s_dmask = q.new_empty((0,))
    rng_state = _empty((2,), dtype=_i64, device="cpu")
    return out, lse, s_dmask, rng_state


def _varlen_fwd_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int = -1,
    window_size_right: int = -1,
    softcap: float = 0.0,
    alibi_slopes: Optional[torch.Tensor] = None,
    return_softmax: bool = False,
    block_table: Optional[torch.Tensor] = None,
    leftpad_k: Optional[torch.Tensor] = None,
    seqused_k: Optional[torch.Tensor] = None,
    zero_tensors: bool = False,
    num_splits: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = maybe_contiguous(q), maybe_contiguous(k), maybe_contiguous(v)
    _check_dtypes(q, k, v)
    _check_ndim(q, "q", 3, "(total_q, nheads, head_dim)")
    tq, h, d = q.shape
    _check_head_dim(d, "forward")
    _check_index(cu_seqlens_q, "cu_seqlens_q")
    _check_index(cu_seqlens_k, "cu_seqlens_k")
    _check_index(block_table, "block_table")
    _check_index(seqused_k, "seqused_k")
    _check_index(leftpad_k, "leftpad_k")
    _check_alibi(alibi_slopes)
    nthreads, stream = _opts(q)
    dev = q.device
    out = torch.empty_like(q)
    lse = q.new_empty((h, tq), dtype=_f32)
    if return_softmax:
        b = cu_seqlens_q.numel() - 1
        s_dmask = _empty((b, h, _r128(max_seqlen_q), _r128(max_seqlen_k)), dtype=q.dtype,
                         device=dev)
    else:
        s_dmask = q.new_empty((0,))
    seed, offset = _draw_dropout_rng(q) if dropout_p > 0.0 else (0, 0)
    _mha_varlen_fwd(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k, leftpad_k,
                    block_table, alibi_slopes, s_dmask if return_softmax else None,
                    max_seqlen_q, max_seqlen_k, dropout_p, _scale(softmax_scale), zero_tensors,
                    causal, _window(window_size_left), _window(window_size_right),
                    max(softcap, 0.0), return_softmax, num_splits,
                    0, nthreads, stream, seed, offset)
    return out, lse, s_dmask, _rng_state(seed, offset)


_flash_attn_varlen_forward = torch.library.custom_op(
    "flash_attn::_flash_attn_varlen_forward", mutates_args=(), device_types=_DEVICE_TYPES)(_varlen_fwd_impl)


@torch.library.register_fake("flash_attn::_flash_attn_varlen_forward")
def _flash_attn_varlen_forward_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                    max_seqlen_k, dropout_p, softmax_scale, causal,
                                    window_size_left=-1, window_size_right=-1, softcap=0.0,
                                    alibi_slopes=None, return_softmax=False, block_table=None,
                                    leftpad_k=None, seqused_k=None, zero_tensors=False,
                                    num_splits=0):
    tq, h, _ = q.shape
    out = torch.empty_like(maybe_contiguous(q))  # as the real op, which copies such a q first
    lse = q.new_empty((h, tq), dtype=_f32)
    if return_softmax:
        b = cu_seqlens_q.numel() - 1
        s_dmask = q.new_empty((b, h, _r128(max_seqlen_q), _r128(max_seqlen_k)))
    else:
        s_dmask = q.new_empty((0,))
    rng_state = _empty((2,), dtype=_i64, device="cpu")
    return out, lse, s_dmask, rng_state


def _bwd_impl(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    softmax_lse: torch.Tensor,
    dq: Optional[torch.Tensor],
    dk: Optional[torch.Tensor],
    dv: Optional[torch.Tensor],
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int,
    window_size_right: int,
    softcap: float,
    alibi_slopes: Optional[torch.Tensor],
    deterministic: bool,
    rng_state: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    dout, q, k, v, out = [maybe_contiguous(x) for x in (dout, q, k, v, out)]
    _check_dtypes(q, k, v)
    _check_ndim(q, "q", 4, "(batch, seqlen_q, nheads, head_dim)")
    b, sq, h, d = q.shape
    _check_head_dim(d, "backward")
    _check_alibi(alibi_slopes)
    nthreads, stream = _opts(q)
    if dq is None:
        dq = torch.empty_like(q)
    if dk is None:
        dk = torch.empty_like(k)
    if dv is None:
        dv = torch.empty_like(v)
    seed, offset = _rng_from_state(rng_state, dropout_p)
    dev = q.device
    r = _r128(sq)
    softmax_d = _zeros((b, h, r), dtype=_f32, device=dev)
    # The library writes a compact (b, h, sq); upstream's shape pads sq to a multiple of 128.
    sd = softmax_d if r == sq else _empty((b, h, sq), dtype=_f32, device=dev)
    _mha_bwd(dout, q, k, v, out, softmax_lse, dq, dk, dv, alibi_slopes, sd, dropout_p,
             _scale(softmax_scale), causal, _window(window_size_left),
             _window(window_size_right), max(softcap, 0.0), deterministic,
             0, nthreads, stream, seed, offset)
    if sd is not softmax_d:
        softmax_d[:, :, :sq].copy_(sd)
    return softmax_d


_flash_attn_backward = torch.library.custom_op(
    "flash_attn::_flash_attn_backward", mutates_args=("dq", "dk", "dv"), device_types=_DEVICE_TYPES)(_bwd_impl)


@torch.library.register_fake("flash_attn::_flash_attn_backward")
def _flash_attn_backward_fake(dout, q, k, v, out, softmax_lse, dq, dk, dv, dropout_p,
                              softmax_scale, causal, window_size_left, window_size_right, softcap,
                              alibi_slopes, deterministic, rng_state=None):
    b, sq, h, _ = q.shape
    return q.new_empty((b, h, _r128(sq)), dtype=_f32)


def _varlen_bwd_impl(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    softmax_lse: torch.Tensor,
    dq: Optional[torch.Tensor],
    dk: Optional[torch.Tensor],
    dv: Optional[torch.Tensor],
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int,
    window_size_right: int,
    softcap: float,
    alibi_slopes: Optional[torch.Tensor],
    deterministic: bool,
    rng_state: Optional[torch.Tensor] = None,
    zero_tensors: bool = False,
) -> torch.Tensor:
    dout, q, k, v, out = [maybe_contiguous(x) for x in (dout, q, k, v, out)]
    _check_dtypes(q, k, v)
    _check_ndim(q, "q", 3, "(total_q, nheads, head_dim)")
    tq, h, d = q.shape
    _check_head_dim(d, "backward")
    _check_index(cu_seqlens_q, "cu_seqlens_q")
    _check_index(cu_seqlens_k, "cu_seqlens_k")
    _check_alibi(alibi_slopes)
    nthreads, stream = _opts(q)
    if dq is None:
        dq = torch.empty_like(q)
    if dk is None:
        dk = torch.empty_like(k)
    if dv is None:
        dv = torch.empty_like(v)
    seed, offset = _rng_from_state(rng_state, dropout_p)
    dev = q.device
    b = cu_seqlens_q.numel() - 1
    softmax_d = _zeros((h, tq + 128 * b), dtype=_f32, device=dev)
    sd = _empty((h, tq), dtype=_f32, device=dev)
    _mha_varlen_bwd(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k,
                    alibi_slopes, sd, max_seqlen_q, max_seqlen_k, dropout_p,
                    _scale(softmax_scale), zero_tensors, causal, _window(window_size_left),
                    _window(window_size_right), max(softcap, 0.0), deterministic,
                    0, nthreads, stream, seed, offset)
    softmax_d[:, :tq].copy_(sd)
    return softmax_d


_flash_attn_varlen_backward = torch.library.custom_op(
    "flash_attn::_flash_attn_varlen_backward", mutates_args=("dq", "dk", "dv"), device_types=_DEVICE_TYPES)(_varlen_bwd_impl)


@torch.library.register_fake("flash_attn::_flash_attn_varlen_backward")
def _flash_attn_varlen_backward_fake(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q,
                                     cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                     softmax_scale, causal, window_size_left, window_size_right,
                                     softcap, alibi_slopes, deterministic, rng_state=None,
                                     zero_tensors=False):
    tq, h, _ = q.shape
    b = cu_seqlens_q.numel() - 1
    return q.new_empty((h, tq + 128 * b), dtype=_f32)


_wrapped_flash_attn_forward = torch.ops.flash_attn._flash_attn_forward
_wrapped_flash_attn_varlen_forward = torch.ops.flash_attn._flash_attn_varlen_forward
_wrapped_flash_attn_backward = torch.ops.flash_attn._flash_attn_backward
_wrapped_flash_attn_varlen_backward = torch.ops.flash_attn._flash_attn_varlen_backward


# Autograd for the two forward ops, so that calling them directly (as ring-attention libraries
# do through torch.compile) is differentiable in q, k, v. Gradients of lse / S_dmask / rng_state
# are ignored, as in the public functions.
def _fwd_setup_context(ctx, inputs, output):
    (q, k, v, dropout_p, softmax_scale, causal, wl, wr, softcap, alibi_slopes, _) = inputs
    out, lse, _, rng_state = output
    ctx.save_for_backward(q, k, v, out, lse, rng_state)
    ctx.args = (dropout_p, softmax_scale, causal, wl, wr, softcap, alibi_slopes)


def _fwd_backward(ctx, dout, *_):
    q, k, v, out, lse, rng_state = ctx.saved_tensors
    dropout_p, softmax_scale, causal, wl, wr, softcap, alibi_slopes = ctx.args
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _wrapped_flash_attn_backward(dout, q, k, v, out, lse, dq, dk, dv, dropout_p, softmax_scale,
                                 causal, wl, wr, softcap, alibi_slopes, False, rng_state)
    return (dq, dk, dv) + (None,) * 8


torch.library.register_autograd("flash_attn::_flash_attn_forward", _fwd_backward,
                                setup_context=_fwd_setup_context)


def _varlen_fwd_setup_context(ctx, inputs, output):
    (q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal, wl, wr, softcap,
     alibi_slopes, _, block_table, leftpad_k, seqused_k, zero_tensors, _) = inputs
    out, lse, _, rng_state = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, rng_state)
    ctx.args = (max_q, max_k, dropout_p, softmax_scale, causal, wl, wr, softcap, alibi_slopes)
    ctx.unsupported = block_table is not None or leftpad_k is not None or seqused_k is not None


def _varlen_fwd_backward(ctx, dout, *_):
    if ctx.unsupported:
        raise RuntimeError("the backward of _flash_attn_varlen_forward does not support "
                           "block_table, leftpad_k or seqused_k (forward only, as upstream)")
    q, k, v, out, lse, cu_q, cu_k, rng_state = ctx.saved_tensors
    max_q, max_k, dropout_p, softmax_scale, causal, wl, wr, softcap, alibi_slopes = ctx.args
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _wrapped_flash_attn_varlen_backward(dout, q, k, v, out, lse, dq, dk, dv, cu_q, cu_k, max_q,
                                        max_k, dropout_p, softmax_scale, causal, wl, wr, softcap,
                                        alibi_slopes, False, rng_state)
    return (dq, dk, dv) + (None,) * 17


torch.library.register_autograd("flash_attn::_flash_attn_varlen_forward", _varlen_fwd_backward,
                                setup_context=_varlen_fwd_setup_context)


# ------------------------------------------------------------------------------------------------
# Autograd classes (API.md §5.3: forward argument order after ctx is part of the contract).
# ------------------------------------------------------------------------------------------------


_is_compiling = torch.compiler.is_compiling
# Private torch helpers, with fallbacks that keep the registered-op path on other versions.
_dispatch_stack_len = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 1)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)
_Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled


def _eager(t):
    """True when a call can skip the dispatcher and run the op's implementation directly: plain
    eager mode on a plain tensor. The torch.library op costs ~35 us of Python dispatch per call,
    most of a decode step; under torch.compile, fake tensors, dispatch modes and functorch
    transforms the registered op (and its fake implementation) is used."""
    return (not _is_compiling() and type(t) is _Tensor and not _dispatch_stack_len()
            and not _functorch_active())


def _any_requires_grad(*ts):
    for t in ts:
        if t.requires_grad:
            return True
    return False

def _stash(ctx, tensors, **attrs):
    """What an autograd class's backward needs: tensors through save_for_backward, the scalar
    options as attributes of ctx."""
    ctx.save_for_backward(*tensors)
    for name, value in attrs.items():
        setattr(ctx, name, value)


class FlashAttnQKVPackedFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                deterministic, return_softmax, is_grad_enabled):
        is_grad = is_grad_enabled and qkv.requires_grad
        if softmax_scale is None:
            softmax_scale = qkv.shape[-1] ** (-0.5)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        fwd = _fwd_impl if _eager(q) else _wrapped_flash_attn_forward
        out, softmax_lse, S_dmask, rng_state = fwd(
            q, k, v, dropout_p, softmax_scale, causal=causal,
            window_size_left=int(window_size[0]), window_size_right=int(window_size[1]),
            softcap=softcap, alibi_slopes=alibi_slopes,
            return_softmax=return_softmax and dropout_p > 0)
        if is_grad:
            _stash(ctx, (q, k, v, out, softmax_lse, rng_state), dropout_p=dropout_p,
                   softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                   softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic)
        return out if not return_softmax else (out, softmax_lse, S_dmask)

    @staticmethod
    def backward(ctx, dout, *args):
        q, k, v, out, softmax_lse, rng_state = ctx.saved_tensors
        qkv_shape = q.shape[:-2] + (3, *q.shape[-2:])
        dqkv = torch.empty(qkv_shape, dtype=q.dtype, device=q.device)
        bwd = _bwd_impl if _eager(dout) else _wrapped_flash_attn_backward
        bwd(
            dout, q, k, v, out, softmax_lse, dqkv[:, :, 0], dqkv[:, :, 1], dqkv[:, :, 2],
            ctx.dropout_p, ctx.softmax_scale, ctx.causal, int(ctx.window_size[0]),
            int(ctx.window_size[1]), ctx.softcap, ctx.alibi_slopes, ctx.deterministic,
            rng_state=rng_state)
        return dqkv, None, None, None, None, None, None, None, None, None


class FlashAttnVarlenQKVPackedFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, cu_seqlens, max_seqlen, dropout_p, softmax_scale, causal, window_size,
                softcap, alibi_slopes, deterministic, return_softmax, is_grad_enabled):
        is_grad = is_grad_enabled and qkv.requires_grad
        if softmax_scale is None:
            softmax_scale = qkv.shape[-1] ** (-0.5)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        max_seqlen = int(max_seqlen)
        fwd = _varlen_fwd_impl if _eager(q) else _wrapped_flash_attn_varlen_forward
        out, softmax_lse, S_dmask, rng_state = fwd(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, softmax_scale,
            causal=causal, window_size_left=int(window_size[0]),
            window_size_right=int(window_size[1]), softcap=softcap, alibi_slopes=alibi_slopes,
            return_softmax=return_softmax and dropout_p > 0, block_table=None)
        if is_grad:
            _stash(ctx, (q, k, v, out, softmax_lse, cu_seqlens, rng_state), dropout_p=dropout_p,
                   max_seqlen=max_seqlen, softmax_scale=softmax_scale, causal=causal,
                   window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes,
                   deterministic=deterministic)
        return out if not return_softmax else (out, softmax_lse, S_dmask)

    @staticmethod
    def backward(ctx, dout, *args):
        q, k, v, out, softmax_lse, cu_seqlens, rng_state = ctx.saved_tensors
        qkv_shape = q.shape[:-2] + (3, *q.shape[-2:])
        dqkv = torch.empty(qkv_shape, dtype=q.dtype, device=q.device)
        bwd = _varlen_bwd_impl if _eager(dout) else _wrapped_flash_attn_varlen_backward
        bwd(
            dout, q, k, v, out, softmax_lse, dqkv[:, 0], dqkv[:, 1], dqkv[:, 2], cu_seqlens,
            cu_seqlens, ctx.max_seqlen, ctx.max_seqlen, ctx.dropout_p, ctx.softmax_scale,
            ctx.causal, int(ctx.window_size[0]), int(ctx.window_size[1]), ctx.softcap,
            ctx.alibi_slopes, ctx.deterministic, rng_state=rng_state)
        return dqkv, None, None, None, None, None, None, None, None, None, None, None


class FlashAttnKVPackedFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, kv, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                deterministic, return_softmax, is_grad_enabled):
        is_grad = is_grad_enabled and _any_requires_grad(q, kv)
        if softmax_scale is None:
            softmax_scale = q.shape[-1] ** (-0.5)
        k, v = kv[:, :, 0], kv[:, :, 1]
        fwd = _fwd_impl if _eager(q) else _wrapped_flash_attn_forward
        out, softmax_lse, S_dmask, rng_state = fwd(
            q, k, v, dropout_p, softmax_scale, causal=causal,
            window_size_left=int(window_size[0]), window_size_right=int(window_size[1]),
            softcap=softcap, alibi_slopes=alibi_slopes,
            return_softmax=return_softmax and dropout_p > 0)
        if is_grad:
            _stash(ctx, (q, k, v, out, softmax_lse, rng_state), dropout_p=dropout_p,
                   softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                   softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic)
        return out if not return_softmax else (out, softmax_lse, S_dmask)

    @staticmethod
    def backward(ctx, dout, *args):
        q, k, v, out, softmax_lse, rng_state = ctx.saved_tensors
        dq = torch.empty_like(q)
        kv_shape = k.shape[:-2] + (2, *k.shape[-2:])
        dkv = torch.empty(kv_shape, dtype=k.dtype, device=k.device)
        bwd = _bwd_impl if _eager(dout) else _wrapped_flash_attn_backward
        bwd(
            dout, q, k, v, out, softmax_lse, dq, dkv[:, :, 0], dkv[:, :, 1], ctx.dropout_p,
            ctx.softmax_scale, ctx.causal, int(ctx.window_size[0]), int(ctx.window_size[1]),
            ctx.softcap, ctx.alibi_slopes, ctx.deterministic, rng_state=rng_state)
        return dq, dkv, None, None, None, None, None, None, None, None, None


class FlashAttnVarlenKVPackedFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                return_softmax, is_grad_enabled):
        is_grad = is_grad_enabled and _any_requires_grad(q, kv)
        if softmax_scale is None:
            softmax_scale = q.shape[-1] ** (-0.5)
        k, v = kv[:, 0], kv[:, 1]
        if cu_seqlens_k is None:  # the same tensor as cu_seqlens_q (see flash_attn_varlen_func)
            cu_seqlens_k = cu_seqlens_q
        max_seqlen_q, max_seqlen_k = int(max_seqlen_q), int(max_seqlen_k)
        fwd = _varlen_fwd_impl if _eager(q) else _wrapped_flash_attn_varlen_forward
        out, softmax_lse, S_dmask, rng_state = fwd(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
            softmax_scale, causal=causal, window_size_left=int(window_size[0]),
            window_size_right=int(window_size[1]), softcap=softcap, alibi_slopes=alibi_slopes,
            return_softmax=return_softmax and dropout_p > 0, block_table=None)
        if is_grad:
            _stash(ctx, (q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, rng_state),
                   dropout_p=dropout_p, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
                   softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                   softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic)
        return out if not return_softmax else (out, softmax_lse, S_dmask)

    @staticmethod
    def backward(ctx, dout, *args):
        q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, rng_state = ctx.saved_tensors
        dq = torch.empty_like(q)
        kv_shape = k.shape[:-2] + (2, *k.shape[-2:])
        dkv = torch.empty(kv_shape, dtype=k.dtype, device=k.device)
        bwd = _varlen_bwd_impl if _eager(dout) else _wrapped_flash_attn_varlen_backward
        bwd(
            dout, q, k, v, out, softmax_lse, dq, dkv[:, 0], dkv[:, 1], cu_seqlens_q,
            cu_seqlens_k, ctx.max_seqlen_q, ctx.max_seqlen_k, ctx.dropout_p, ctx.softmax_scale,
            ctx.causal, int(ctx.window_size[0]), int(ctx.window_size[1]), ctx.softcap,
            ctx.alibi_slopes, ctx.deterministic, rng_state=rng_state)
        return (dq, dkv, None, None, None, None, None, None, None, None, None, None, None, None,
                None)


class FlashAttnFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                alibi_slopes, deterministic, return_softmax, is_grad_enabled):
        is_grad = is_grad_enabled and _any_requires_grad(q, k, v)
        if softmax_scale is None:
            softmax_scale = q.shape[-1] ** (-0.5)
        fwd = _fwd_impl if _eager(q) else _wrapped_flash_attn_forward
        out, softmax_lse, S_dmask, rng_state = fwd(
            q, k, v, dropout_p, softmax_scale, causal=causal,
            window_size_left=int(window_size[0]), window_size_right=int(window_size[1]),
            softcap=softcap, alibi_slopes=alibi_slopes,
            return_softmax=return_softmax and dropout_p > 0)
        if is_grad:
            _stash(ctx, (q, k, v, out, softmax_lse, rng_state), dropout_p=dropout_p,
                   softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                   softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic)
        return out if not return_softmax else (out, softmax_lse, S_dmask)

    @staticmethod
    def backward(ctx, dout, *args):
        q, k, v, out, softmax_lse, rng_state = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        bwd = _bwd_impl if _eager(dout) else _wrapped_flash_attn_backward
        bwd(
            dout, q, k, v, out, softmax_lse, dq, dk, dv, ctx.dropout_p, ctx.softmax_scale,
            ctx.causal, int(ctx.window_size[0]), int(ctx.window_size[1]), ctx.softcap,
            ctx.alibi_slopes, ctx.deterministic, rng_state=rng_state)
        return dq, dk, dv, None, None, None, None, None, None, None, None, None


class FlashAttnVarlenFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                return_softmax, block_table, is_grad_enabled):
        is_grad = is_grad_enabled and _any_requires_grad(q, k, v)
        if softmax_scale is None:
            softmax_scale = q.shape[-1] ** (-0.5)
        if cu_seqlens_k is None:  # the same tensor as cu_seqlens_q (see flash_attn_varlen_func)
            cu_seqlens_k = cu_seqlens_q
        max_seqlen_q, max_seqlen_k = int(max_seqlen_q), int(max_seqlen_k)
        fwd = _varlen_fwd_impl if _eager(q) else _wrapped_flash_attn_varlen_forward
        out, softmax_lse, S_dmask, rng_state = fwd(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
            softmax_scale, causal=causal, window_size_left=int(window_size[0]),
            window_size_right=int(window_size[1]), softcap=softcap, alibi_slopes=alibi_slopes,
            return_softmax=return_softmax and dropout_p > 0, block_table=block_table)
        if is_grad:
            _stash(ctx, (q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, rng_state),
                   dropout_p=dropout_p, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
                   softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                   softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic)
            ctx.paged = block_table is not None
        return out if not return_softmax else (out, softmax_lse, S_dmask)

    @staticmethod
    def backward(ctx, dout, *args):
        if ctx.paged:
            raise RuntimeError("flash_attn_varlen_func: the backward pass does not support "
                               "block_table (paged K/V is forward only, as upstream)")
        q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, rng_state = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        bwd = _varlen_bwd_impl if _eager(dout) else _wrapped_flash_attn_varlen_backward
        bwd(
            dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k,
            ctx.max_seqlen_q, ctx.max_seqlen_k, ctx.dropout_p, ctx.softmax_scale, ctx.causal,
            int(ctx.window_size[0]), int(ctx.window_size[1]), ctx.softcap, ctx.alibi_slopes,
            ctx.deterministic, rng_state=rng_state)
        return (dq, dk, dv, None, None, None, None, None, None, None, None, None, None, None,
                None, None, None)


# ------------------------------------------------------------------------------------------------
# The public functions (API.md §3). Real parameter names and defaults: transformers introspects
# them with inspect.signature.
# ------------------------------------------------------------------------------------------------


def flash_attn_qkvpacked_func(
    qkv,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """dropout_p should be set to 0.0 during evaluation.
    Same as flash_attn_func with q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2] (strided
    views, no copy); the gradient is one (batch, seqlen, 3, nheads, headdim) tensor.

    Arguments:
        qkv: (batch_size, seqlen, 3, nheads, headdim)
        dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
        return_attn_probs: as flash_attn_func.
    Return:
        out: (batch_size, seqlen, nheads, headdim); with return_attn_probs,
        (out, softmax_lse (batch_size, nheads, seqlen) fp32, S_dmask).
    """
    if not (qkv.requires_grad and _grad_enabled()) and _eager(qkv):  # nothing to record
        return FlashAttnQKVPackedFunc.forward(None, qkv, dropout_p, softmax_scale, causal,
                                              window_size, softcap, alibi_slopes, deterministic,
                                              return_attn_probs, False)
    return FlashAttnQKVPackedFunc.apply(qkv, dropout_p, softmax_scale, causal, window_size,
                                        softcap, alibi_slopes, deterministic, return_attn_probs,
                                        torch.is_grad_enabled())


def flash_attn_kvpacked_func(
    q,
    kv,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """dropout_p should be set to 0.0 during evaluation.
    Same as flash_attn_func with k, v = kv[:, :, 0], kv[:, :, 1]; supports MQA/GQA.

    Arguments:
        q: (batch_size, seqlen_q, nheads, headdim)
        kv: (batch_size, seqlen_k, 2, nheads_k, headdim)
        the rest as flash_attn_func.
    Return:
        out: (batch_size, seqlen_q, nheads, headdim); with return_attn_probs,
        (out, softmax_lse (batch_size, nheads, seqlen_q) fp32, S_dmask).
    """
    if not ((q.requires_grad or kv.requires_grad) and _grad_enabled()) and _eager(q):
        return FlashAttnKVPackedFunc.forward(None, q, kv, dropout_p, softmax_scale, causal,
                                             window_size, softcap, alibi_slopes, deterministic,
                                             return_attn_probs, False)
    return FlashAttnKVPackedFunc.apply(q, kv, dropout_p, softmax_scale, causal, window_size,
                                       softcap, alibi_slopes, deterministic, return_attn_probs,
                                       torch.is_grad_enabled())


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """dropout_p should be set to 0.0 during evaluation.
    Supports multi-query and grouped-query attention (MQA/GQA) by passing in K, V with fewer heads
    than Q: the number of heads in Q must be divisible by the number of heads in KV; query head h
    uses KV head h // (nheads / nheads_k).

    If causal=True, the causal mask is aligned to the bottom right corner of the attention matrix
    (query i sees keys j <= i + seqlen_k - seqlen_q). With window_size != (-1, -1), query i sees
    keys in [i + seqlen_k - seqlen_q - window_size[0], i + seqlen_k - seqlen_q + window_size[1]].

    Runs on CPU tensors (FlashAttention-Plus's CPU backend) and CUDA tensors; fp16, bf16 and fp32.

    Arguments:
        q: (batch_size, seqlen_q, nheads, headdim)
        k: (batch_size, seqlen_k, nheads_k, headdim)
        v: (batch_size, seqlen_k, nheads_k, headdim)
        dropout_p: float. Dropout probability.
        softmax_scale: float. Default 1 / sqrt(headdim).
        causal: bool. Whether to apply causal attention mask.
        window_size: (left, right). -1 (any negative value) means unbounded.
        softcap: float. Anything > 0 activates softcapping attention.
        alibi_slopes: (nheads,) or (batch_size, nheads), fp32. A bias of
            (-alibi_slope * |i + seqlen_k - seqlen_q - j|) is added to the score of (i, j).
        deterministic: bool. Whether to use the deterministic backward pass.
        return_attn_probs: bool. Also return softmax_lse and S_dmask (for testing only).
    Return:
        out: (batch_size, seqlen_q, nheads, headdim).
        softmax_lse [optional]: (batch_size, nheads, seqlen_q), fp32: the log-sum-exp of each
            row of QK^T * scaling (+inf for a row that sees no key).
        S_dmask [optional]: with dropout, (batch_size, nheads, round128(seqlen_q),
            round128(seqlen_k)) probabilities, negative where dropped; else an empty tensor.
    """
    if not ((q.requires_grad or k.requires_grad or v.requires_grad) and _grad_enabled()) \
            and _eager(q):
        # Inference: autograd would record nothing, so skip Function.apply's bookkeeping.
        return FlashAttnFunc.forward(None, q, k, v, dropout_p, softmax_scale, causal, window_size,
                                     softcap, alibi_slopes, deterministic, return_attn_probs,
                                     False)
    return FlashAttnFunc.apply(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                               alibi_slopes, deterministic, return_attn_probs,
                               torch.is_grad_enabled())


def flash_attn_varlen_qkvpacked_func(
    qkv,
    cu_seqlens,
    max_seqlen,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """dropout_p should be set to 0.0 during evaluation.
    Arguments:
        qkv: (total, 3, nheads, headdim), total = total number of tokens in the batch.
        cu_seqlens: (batch_size + 1,), int32. Cumulative sequence lengths, for q and k.
        max_seqlen: int. Maximum sequence length in the batch.
        the rest as flash_attn_func.
    Return:
        out: (total, nheads, headdim); with return_attn_probs,
        (out, softmax_lse (nheads, total) fp32, S_dmask).
    """
    if not (qkv.requires_grad and _grad_enabled()) and _eager(qkv):
        return FlashAttnVarlenQKVPackedFunc.forward(None, qkv, cu_seqlens, max_seqlen, dropout_p,
                                                    softmax_scale, causal, window_size, softcap,
                                                    alibi_slopes, deterministic,
                                                    return_attn_probs, False)
    return FlashAttnVarlenQKVPackedFunc.apply(qkv, cu_seqlens, max_seqlen, dropout_p,
                                              softmax_scale, causal, window_size, softcap,
                                              alibi_slopes, deterministic, return_attn_probs,
                                              torch.is_grad_enabled())


def flash_attn_varlen_kvpacked_func(
    q,
    kv,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """dropout_p should be set to 0.0 during evaluation.
    Arguments:
        q: (total_q, nheads, headdim)
        kv: (total_k, 2, nheads_k, headdim)
        cu_seqlens_q, cu_seqlens_k: (batch_size + 1,), int32.
        max_seqlen_q, max_seqlen_k: int.
        the rest as flash_attn_func.
    Return:
        out: (total_q, nheads, headdim); with return_attn_probs,
        (out, softmax_lse (nheads, total_q) fp32, S_dmask).
    """
    if not ((q.requires_grad or kv.requires_grad) and _grad_enabled()) and _eager(q):
        return FlashAttnVarlenKVPackedFunc.forward(None, q, kv, cu_seqlens_q, cu_seqlens_k,
                                                   max_seqlen_q, max_seqlen_k, dropout_p,
                                                   softmax_scale, causal, window_size, softcap,
                                                   alibi_slopes, deterministic,
                                                   return_attn_probs, False)
    if cu_seqlens_k is cu_seqlens_q:
        cu_seqlens_k = None  # torch.compile cannot trace one tensor passed twice to .apply
    return FlashAttnVarlenKVPackedFunc.apply(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                             max_seqlen_k, dropout_p, softmax_scale, causal,
                                             window_size, softcap, alibi_slopes, deterministic,
                                             return_attn_probs, torch.is_grad_enabled())


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    """dropout_p should be set to 0.0 during evaluation.
    Sequences are packed back to back; sequence b owns rows [cu_seqlens[b], cu_seqlens[b+1]).
    Masks (causal, bottom-right aligned; window) and ALiBi use each sequence's own lengths.

    Arguments:
        q: (total_q, nheads, headdim)
        k, v: (total_k, nheads_k, headdim), or with block_table the paged cache
            (num_blocks, page_block_size, nheads_k, headdim) (any page size; forward only).
        cu_seqlens_q, cu_seqlens_k: (batch_size + 1,), int32.
        max_seqlen_q, max_seqlen_k: int (or a 0-dim integer tensor).
        block_table [optional]: (batch_size, max_num_blocks_per_seq), int32.
        the rest as flash_attn_func.
    Return:
        out: (total_q, nheads, headdim); with return_attn_probs,
        (out, softmax_lse (nheads, total_q) fp32, S_dmask).
    """
    if not ((q.requires_grad or k.requires_grad or v.requires_grad) and _grad_enabled()) \
            and _eager(q):
        return FlashAttnVarlenFunc.forward(None, q, k, v, cu_seqlens_q, cu_seqlens_k,
                                           max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                                           causal, window_size, softcap, alibi_slopes,
                                           deterministic, return_attn_probs, block_table, False)
    if cu_seqlens_k is cu_seqlens_q:
        # Dynamo cannot trace autograd.Function.apply with one tensor in two inputs (transformers
        # passes the same cu_seqlens for q and k); the classes accept None for "as cu_seqlens_q".
        cu_seqlens_k = None
    return FlashAttnVarlenFunc.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                     max_seqlen_k, dropout_p, softmax_scale, causal, window_size,
                                     softcap, alibi_slopes, deterministic, return_attn_probs,
                                     block_table, torch.is_grad_enabled())


def flash_attn_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    rotary_cos=None,
    rotary_sin=None,
    cache_seqlens: Optional[Union[int, torch.Tensor]] = None,
    cache_batch_idx: Optional[torch.Tensor] = None,
    cache_leftpad: Optional[torch.Tensor] = None,
    block_table: Optional[torch.Tensor] = None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    rotary_interleaved=True,
    alibi_slopes=None,
    num_splits=0,
    return_softmax_lse=False,
):
    """Attention of q against a KV cache, after appending the new k, v to it (in place).
    Forward only (no autograd).

    If k and v are given, they are written into k_cache / v_cache at positions
    cache_seqlens[b] .. cache_seqlens[b] + seqlen_new - 1 (k after rotary), and attention runs
    over the updated cache. cache_seqlens is not incremented. With rotary_cos/sin, the first
    rotary_dim channels of q and k are rotated at positions cache_seqlens[b] + i (q: + i only when
    causal or windowed). Masks are aligned to the bottom right against the updated cache.

    Arguments:
        q: (batch_size, seqlen, nheads, headdim)
        k_cache, v_cache: (batch_size_cache, seqlen_cache, nheads_k, headdim), or with
            block_table (num_blocks, page_block_size, nheads_k, headdim) (any page size).
        k, v [optional]: (batch_size, seqlen_new, nheads_k, headdim).
        rotary_cos, rotary_sin [optional]: (seqlen_ro, rotary_dim / 2), dtype of q.
        cache_seqlens: int, or (batch_size,) int32: tokens already in the cache.
        cache_batch_idx [optional]: (batch_size,) int32: the cache row of each batch entry.
        cache_leftpad [optional]: (batch_size,) int32: first valid cache position.
        block_table [optional]: (batch_size, max_num_blocks_per_seq), int32.
        softmax_scale, causal, window_size, softcap, alibi_slopes: as flash_attn_func.
        rotary_interleaved: bool. True pairs channels (2j, 2j+1) (GPT-J), False (j, j + d/2).
        num_splits: int. Split the key sequence in this many pieces (0 = heuristic).
        return_softmax_lse: bool. Also return softmax_lse (batch_size, nheads, seqlen) fp32.
    Return:
        out: (batch_size, seqlen, nheads, headdim); with return_softmax_lse, (out, softmax_lse).
    """
    assert k_cache.stride(-1) == 1, "k_cache must have contiguous last dimension"
    assert v_cache.stride(-1) == 1, "v_cache must have contiguous last dimension"
    q = maybe_contiguous(q)
    if k is not None:
        k = maybe_contiguous(k)
        if v is not None:
            v = maybe_contiguous(v)
    else:
        v = None  # upstream ignores a v given without k
    dt = q.dtype
    if dt not in _DTYPES:
        raise RuntimeError(
            f"FlashAttention only support fp16 and bf16 data type (FlashAttention-Plus also "
            f"accepts fp32); q has dtype {dt}")
    if k_cache.dtype != dt:
        raise RuntimeError(f"query and key must have the same dtype (q: {dt}, k_cache: "
                           f"{k_cache.dtype})")
    if v_cache.dtype != dt:
        raise RuntimeError(f"query and value must have the same dtype (q: {dt}, v_cache: "
                           f"{v_cache.dtype})")
    _check_ndim(q, "q", 4, "(batch, seqlen_q, nheads, head_dim)")
    b, sq, h, d = q.shape
    _check_head_dim(d, "forward")
    if softmax_scale is None:
        softmax_scale = d ** (-0.5)
    if cache_seqlens is not None and isinstance(cache_seqlens, int):
        cache_seqlens = torch.full((b,), cache_seqlens, dtype=_i32, device=k_cache.device)
    else:
        _check_index(cache_seqlens, "cache_seqlens")
    _check_index(cache_batch_idx, "cache_batch_idx")
    _check_index(cache_leftpad, "cache_leftpad")
    _check_index(block_table, "block_table")
    _check_alibi(alibi_slopes)
    nthreads, stream = _opts(q)
    if block_table is not None:
        block_table = maybe_contiguous(block_table)
        if q.is_cuda and cache_seqlens is not None:
            # Upstream's capacity check (one device sync); the library checks host memory only.
            capacity = block_table.shape[1] * k_cache.shape[1]
            s_new = k.shape[1] if k is not None else 0
            if int(cache_seqlens.max()) + s_new > capacity:
                raise RuntimeError(
                    f"cache_seqlens + seqlen_new exceeds the capacity of block_table "
                    f"({block_table.shape[1]} blocks of {k_cache.shape[1]} = {capacity})")
    out = torch.empty_like(q)
    lse = q.new_empty((b, h, sq), dtype=_f32)
    _mha_fwd_kvcache(q, k_cache, v_cache, k, v, cache_seqlens, rotary_cos, rotary_sin,
                     cache_batch_idx, cache_leftpad, block_table, alibi_slopes, out, lse,
                     _scale(softmax_scale), causal, _window(window_size[0]),
                     _window(window_size[1]), max(softcap, 0.0), rotary_interleaved, num_splits,
                     0, nthreads, stream)
    return (out, lse) if return_softmax_lse else out
