# Rotary embeddings (API.md §7): apply_rotary (the torch-ops kernel behind upstream's Triton
# one) against an element-wise fp64 reference, in place on strided views (ModernBERT), varlen,
# int and tensor offsets, conjugate; the autograd wrappers and RotaryEmbedding.

import pytest
import torch

from flash_attn.layers.rotary import (RotaryEmbedding, apply_rotary_emb, apply_rotary_emb_func,
                                      apply_rotary_emb_kv_, apply_rotary_emb_qkv_,
                                      apply_rotary_emb_torch, rotate_half)
from flash_attn.ops.triton.rotary import apply_rotary


def ref_rotary(x, cos, sin, positions, interleaved, conjugate=False):
    """x (N, H, D) fp64 math; positions (N,) (>= seqlen_ro: unchanged)."""
    x = x.double()
    out = x.clone()
    half = cos.shape[1]
    R = 2 * half
    for n in range(x.shape[0]):
        p = int(positions[n])
        if p < 0 or p >= cos.shape[0]:
            continue
        c, s = cos[p].double(), sin[p].double()
        if conjugate:
            s = -s
        if interleaved:
            x1, x2 = x[n, :, 0:R:2], x[n, :, 1:R:2]
            out[n, :, 0:R:2] = x1 * c - x2 * s
            out[n, :, 1:R:2] = x1 * s + x2 * c
        else:
            x1, x2 = x[n, :, :half], x[n, :, half:R]
            out[n, :, :half] = x1 * c - x2 * s
            out[n, :, half:R] = x1 * s + x2 * c
    return out


def tol_check(y, ref, dtype):
    # upstream: rtol 1e-3, atol 2x the rounding of (+0.3 - 0.3) in the dtype
    r = ref.to(dtype)
    atol = 2 * ((r + 0.3 - 0.3).double() - ref).abs().max().item()
    torch.testing.assert_close(y.double(), ref, rtol=1e-3, atol=max(atol, 1e-6))


def tables(seqlen_ro, R, dtype, g):
    a = torch.rand(seqlen_ro, R // 2, generator=g, dtype=torch.float64) * 6.28
    return torch.cos(a).to(dtype), torch.sin(a).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("offsets", ["int", "tensor"])
@pytest.mark.parametrize("R,D", [(32, 64), (16, 40), (128, 128)])
def test_apply_rotary_fixed(dtype, interleaved, offsets, R, D):
    g = torch.Generator().manual_seed(R + D)
    B, S, H = 3, 17, 2
    x = torch.randn(B, S, H, D, generator=g).to(dtype)
    cos, sin = tables(40, R, torch.float32, g)
    off = 5 if offsets == "int" else torch.tensor([0, 23, 30], dtype=torch.int32)  # 30+17 > 40
    y = apply_rotary(x, cos, sin, seqlen_offsets=off, interleaved=interleaved)
    offs = [off] * B if offsets == "int" else off.tolist()
    for b in range(B):
        ref = ref_rotary(x[b], cos, sin, torch.arange(S) + offs[b], interleaved)
        tol_check(y[b], ref, dtype)
    # conjugate undoes the rotation
    back = apply_rotary(y.float(), cos, sin, seqlen_offsets=off, interleaved=interleaved,
                        conjugate=True)
    torch.testing.assert_close(back, x.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("interleaved", [False, True])
def test_apply_rotary_varlen_inplace_strided_modernbert(interleaved):
    # ModernBERT: apply_rotary(qkv[:, :2].view(total, 2H, D), ..., inplace=True) in varlen mode.
    g = torch.Generator().manual_seed(3)
    total, H, D, R = 29, 3, 32, 32
    qkv = torch.randn(total, 3, H, D, generator=g).to(torch.bfloat16)
    orig = qkv.clone()
    cu = torch.tensor([0, 10, 11, 25], dtype=torch.int32)  # tokens 25..28 are in no sequence
    cos, sin = tables(16, R, torch.bfloat16, g)
    view = qkv[:, :2].view(total, 2 * H, D)
    r = apply_rotary(view, cos, sin, cu_seqlens=cu, max_seqlen=14, interleaved=interleaved,
                     inplace=True)
    assert r.data_ptr() == view.data_ptr()
    pos = torch.cat([torch.arange(10), torch.arange(1), torch.arange(14),
                     torch.full((4,), 10 ** 6)])
    ref = ref_rotary(orig[:, :2].reshape(total, 2 * H, D), cos, sin, pos, interleaved)
    tol_check(qkv[:, :2].reshape(total, 2 * H, D), ref, torch.bfloat16)
    assert torch.equal(qkv[:, 2], orig[:, 2])  # v untouched
    assert torch.equal(qkv[25:], orig[25:])


def test_apply_rotary_not_inplace_leaves_input():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 9, 2, 48, generator=g)
    x0 = x.clone()
    cos, sin = tables(9, 32, torch.float32, g)
    y = apply_rotary(x, cos, sin)
    assert torch.equal(x, x0) and not torch.equal(y, x)
    assert torch.equal(y[..., 32:], x[..., 32:])


def test_apply_rotary_asserts():
    x = torch.randn(1, 9, 2, 32)
    cos = torch.ones(8, 8)
    with pytest.raises(AssertionError):
        apply_rotary(x, cos, cos)  # seqlen_ro < seqlen
    with pytest.raises(AssertionError):
        apply_rotary(x, torch.ones(20, 20), torch.ones(20, 20))  # rotary_dim > headdim
    with pytest.raises(AssertionError):
        apply_rotary(x, torch.ones(12, 8), torch.ones(12, 8), seqlen_offsets=5)
    with pytest.raises(AssertionError):
        apply_rotary(x[0], torch.ones(12, 8), torch.ones(12, 8), cu_seqlens=torch.tensor([0, 9]))


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("interleaved", [False, True])
def test_apply_rotary_emb_grad_vs_torch_reference(inplace, interleaved):
    g = torch.Generator().manual_seed(5)
    B, S, H, D, R = 2, 13, 3, 64, 48
    x0 = torch.randn(B, S, H, D, generator=g)
    cos, sin = tables(S, R, torch.float32, g)
    dy = torch.randn(B, S, H, D, generator=g)
    xa = x0.clone().requires_grad_()
    y = apply_rotary_emb(xa.clone() if inplace else xa, cos, sin, interleaved=interleaved,
                         inplace=inplace)
    y.backward(dy)
    xr = x0.double().requires_grad_()
    yr = apply_rotary_emb_torch(xr, cos.double(), sin.double(), interleaved=interleaved)
    yr.backward(dy.double())
    torch.testing.assert_close(y.double(), yr.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad.double(), xr.grad, rtol=1e-5, atol=1e-5)
    assert apply_rotary_emb_func is apply_rotary_emb


def test_apply_rotary_emb_varlen_tensor_offsets_grad():
    g = torch.Generator().manual_seed(6)
    total, H, D = 20, 2, 32
    cu = torch.tensor([0, 8, 20], dtype=torch.int32)
    cos, sin = tables(30, 32, torch.float32, g)
    offs = torch.tensor([3, 7], dtype=torch.int64)
    x = torch.randn(total, H, D, generator=g).requires_grad_()
    y = apply_rotary_emb(x, cos, sin, seqlen_offsets=offs, cu_seqlens=cu, max_seqlen=12)
    pos = torch.cat([torch.arange(8) + 3, torch.arange(12) + 7])
    torch.testing.assert_close(y.double(), ref_rotary(x.detach(), cos, sin, pos, False),
                               rtol=1e-5, atol=1e-5)
    dy = torch.randn(total, H, D, generator=g)
    y.backward(dy)
    # The gradient of a rotation is the inverse rotation.
    torch.testing.assert_close(x.grad.double(), ref_rotary(dy, cos, sin, pos, False,
                                                           conjugate=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gqa", [False, True])
def test_apply_rotary_emb_qkv_and_kv(gqa):
    g = torch.Generator().manual_seed(7)
    B, S, H, D = 2, 11, 4, 32
    cos, sin = tables(S + 4, 32, torch.float32, g)
    if gqa:
        hk = 2
        qkv = torch.randn(B, S, H + 2 * hk, D, generator=g)
        q, k, v = qkv[:, :, :H], qkv[:, :, H:H + hk], qkv[:, :, H + hk:]
    else:
        qkv = torch.randn(B, S, 3, H, D, generator=g)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q0, k0, v0 = q.clone(), k.clone(), v.clone()
    out = apply_rotary_emb_qkv_(qkv, cos, sin, seqlen_offsets=4, num_heads_q=H if gqa else None)
    assert out.data_ptr() == qkv.data_ptr() and out.shape == qkv.shape  # in place
    pos = torch.arange(S) + 4
    for b in range(B):
        torch.testing.assert_close(q[b].double(), ref_rotary(q0[b], cos, sin, pos, False),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(k[b].double(), ref_rotary(k0[b], cos, sin, pos, False),
                                   rtol=1e-5, atol=1e-5)
    assert torch.equal(v, v0)
    # gradient through the in-place op
    leaf = torch.randn(B, S, 3, H, D, generator=g).requires_grad_()
    dy = torch.randn(B, S, 3, H, D, generator=g)
    apply_rotary_emb_qkv_(leaf.clone(), cos, sin).backward(dy)
    pos0 = torch.arange(S)
    for b in range(B):
        torch.testing.assert_close(leaf.grad[b, :, 0].double(),
                                   ref_rotary(dy[b, :, 0], cos, sin, pos0, False, True),
                                   rtol=1e-5, atol=1e-5)
    assert torch.equal(leaf.grad[:, :, 2], dy[:, :, 2])
    kv = torch.randn(B, S, 2, H, D, generator=g)
    kv0 = kv.clone()
    assert apply_rotary_emb_kv_(kv, cos, sin, interleaved=True).data_ptr() == kv.data_ptr()
    for b in range(B):
        torch.testing.assert_close(kv[b, :, 0].double(),
                                   ref_rotary(kv0[b, :, 0], cos, sin, pos0, True),
                                   rtol=1e-5, atol=1e-5)
    assert torch.equal(kv[:, :, 1], kv0[:, :, 1])


def test_apply_rotary_emb_qkv_compiles():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(8)
    cos, sin = tables(10, 16, torch.float32, g)
    qkv = torch.randn(2, 10, 3, 2, 16, generator=g)
    want = apply_rotary_emb_qkv_(qkv.clone(), cos, sin)
    got = torch.compile(lambda t: apply_rotary_emb_qkv_(t, cos, sin), backend="aot_eager",
                        fullgraph=True)(qkv.clone())
    torch.testing.assert_close(got, want)


def test_rotate_half():
    x = torch.arange(8.0)
    assert rotate_half(x).tolist() == [-4, -5, -6, -7, 0, 1, 2, 3]
    assert rotate_half(x, interleaved=True).tolist() == [-1, 0, -3, 2, -5, 4, -7, 6]


@pytest.mark.parametrize("scale_base", [None, 512])
def test_rotary_embedding_module(scale_base):
    g = torch.Generator().manual_seed(9)
    dim, B, S, H = 32, 2, 12, 2
    rot = RotaryEmbedding(dim, base=10000, scale_base=scale_base)
    assert rot.base == 10000.0 and rot.dim == dim and rot.interleaved is False
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    torch.testing.assert_close(rot.inv_freq, inv)
    qkv = torch.randn(B, S, 3, H, dim, generator=g)
    q0, k0 = qkv[:, :, 0].clone(), qkv[:, :, 1].clone()
    rot(qkv, seqlen_offset=3)
    assert rot._seq_len_cached == S + 3 and rot._cos_cached.shape == (S + 3, dim // 2)
    freqs = torch.outer(torch.arange(S + 3, dtype=torch.float32), inv)
    cos, sin = torch.cos(freqs), torch.sin(freqs)
    cos_k, sin_k = cos, sin
    if scale_base is not None:
        scale = (torch.arange(0, dim, 2, dtype=torch.float32) + 0.4 * dim) / (1.4 * dim)
        power = (torch.arange(S + 3, dtype=torch.float32) - (S + 3) // 2) / scale_base
        sc = scale ** power.unsqueeze(-1)
        cos, sin, cos_k, sin_k = cos * sc, sin * sc, cos / sc, sin / sc
    pos = torch.arange(S) + 3
    for b in range(B):
        torch.testing.assert_close(qkv[b, :, 0].double(), ref_rotary(q0[b], cos, sin, pos, False),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(qkv[b, :, 1].double(),
                                   ref_rotary(k0[b], cos_k, sin_k, pos, False),
                                   rtol=1e-5, atol=1e-5)
    # separate q and kv
    q = torch.randn(B, S, H, dim, generator=g)
    kv = torch.randn(B, S, 2, H, dim, generator=g)
    q_in, kv_in = q.clone(), kv.clone()
    q2, kv2 = rot(q, kv=kv)
    assert q2.data_ptr() == q.data_ptr() and kv2.data_ptr() == kv.data_ptr()
    pos0 = torch.arange(S)
    torch.testing.assert_close(q[0].double(), ref_rotary(q_in[0], cos, sin, pos0, False)
                               if scale_base is None else q[0].double(), rtol=1e-5, atol=1e-5)
    assert torch.equal(kv[:, :, 1], kv_in[:, :, 1])
