# CUDA tensors on the CUDA backend (skipped without a GPU or without a CUDA-built flashplus):
# the same reference rule as the CPU tests, dropout from the CUDA generator, the caller's stream.
import pytest
import torch

import flash_attn.flash_attn_interface as fai
from fa_ref import attention_ref, check_vs_ref
from flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and fai._HAS_CUDA_BACKEND),
    reason="needs a CUDA device and flashplus built with its CUDA backend")


def _grads(fn, tensors, dout):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(dout)
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d,sq,sk,hk,feat", [(64, 113, 203, 2, "causal"), (128, 1, 239, 1, "plain"),
                                             (59, 37, 17, 4, "alibi"), (96, 64, 64, 2, "window"),
                                             (256, 31, 90, 2, "softcap")])
def test_cuda_fixed_vs_reference(dtype, d, sq, sk, hk, feat):
    g = torch.Generator().manual_seed(d + sq)
    B, H = 2, 4
    sc = 30.0 if feat == "softcap" else 0.0
    q = (torch.randn(B, sq, H, d, generator=g) * (sc / 4 if sc else 1)).to(dtype).cuda()
    k = torch.randn(B, sk, hk, d, generator=g).to(dtype).cuda()
    v = torch.randn(B, sk, hk, d, generator=g).to(dtype).cuda()
    dout = torch.randn(B, sq, H, d, generator=g).to(dtype).cuda()
    slopes = (torch.rand(B, H, generator=g) * 0.3).cuda() if feat == "alibi" else None
    causal = feat == "causal"
    window = (9, 5) if feat == "window" else (-1, -1)
    fa = dict(causal=causal, window_size=window, softcap=sc, alibi_slopes=slopes)
    rk = dict(causal=causal, window=window, softcap=sc, alibi_slopes=slopes)
    out, gk = _grads(lambda a, b, c: flash_attn_func(a, b, c, **fa), (q, k, v), dout)
    out_r, gr = _grads(lambda a, b, c: attention_ref(a, b, c, **rk)[0],
                       (q.double(), k.double(), v.double()), dout.double())
    out_p, gp = _grads(lambda a, b, c: attention_ref(a, b, c, upcast=False, **rk)[0], (q, k, v),
                       dout)
    check_vs_ref(out, out_r, out_p, 2.0, "out")
    f = 3.0 if (sc or slopes is not None) else 2.0
    for n, a, r, p in zip("qkv", gk, gr, gp):
        check_vs_ref(a, r, p, f, "d" + n)
    _, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True, **fa)
    _, lse_r = attention_ref(q, k, v, **rk)
    _, lse_p = attention_ref(q, k, v, upcast=False, **rk)
    check_vs_ref(lse, lse_r, lse_p.float(), 2.0, "lse")


def test_cuda_dropout_replay_and_generator():
    g = torch.Generator().manual_seed(1)
    q, k, v = [torch.randn(2, 100, 4, 64, generator=g).to(torch.bfloat16).cuda() for _ in range(3)]
    torch.manual_seed(7)
    o1, _, s1 = flash_attn_func(q, k, v, 0.17, return_attn_probs=True)
    o2, _, s2 = flash_attn_func(q, k, v, 0.17, return_attn_probs=True)
    torch.manual_seed(7)
    o3, _, s3 = flash_attn_func(q, k, v, 0.17, return_attn_probs=True)
    assert torch.equal(o1, o3) and torch.equal(s1, s3) and not torch.equal(o1, o2)
    frac = (s1[..., :100, :100] < 0).float().mean().item()
    assert abs(frac - 0.17) < 0.01
    keep = (s1[..., :100, :100] >= 0)
    dout = torch.randn_like(q)
    torch.manual_seed(7)
    out, gk = _grads(lambda a, b, c: flash_attn_func(a, b, c, 0.17), (q, k, v), dout)
    assert torch.equal(out, o1)
    kw = dict(dropout_p=0.17, keep_mask=keep)
    _, gr = _grads(lambda a, b, c: attention_ref(a, b, c, **kw)[0],
                   (q.double(), k.double(), v.double()), dout.double())
    _, gp = _grads(lambda a, b, c: attention_ref(a, b, c, upcast=False, **kw)[0], (q, k, v), dout)
    for n, a, r, p in zip("qkv", gk, gr, gp):
        check_vs_ref(a, r, p, 2.0, "d" + n)


def test_cuda_varlen_and_side_stream():
    g = torch.Generator().manual_seed(2)
    cu = torch.tensor([0, 30, 31, 77], dtype=torch.int32).cuda()
    q = torch.randn(77, 4, 64, generator=g).to(torch.float16).cuda()
    k = torch.randn(77, 2, 64, generator=g).to(torch.float16).cuda()
    out = flash_attn_varlen_func(q, k, k, cu, cu, 46, 46, causal=True)
    ref = flash_attn_varlen_func(q.cpu(), k.cpu(), k.cpu(), cu.cpu(), cu.cpu(), 46, 46,
                                 causal=True)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-2, atol=1e-2)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out2 = flash_attn_varlen_func(q, k, k, cu, cu, 46, 46, causal=True)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(out, out2)


def test_cuda_kvcache_paged_append_rotary():
    g = torch.Generator().manual_seed(3)
    B, H, hk, d, page, nblk = 3, 8, 2, 128, 16, 8
    dt = torch.bfloat16
    kc = torch.randn(B * nblk, page, hk, d, generator=g).to(dt).cuda()
    vc = torch.randn(B * nblk, page, hk, d, generator=g).to(dt).cuda()
    bt = torch.randperm(B * nblk, generator=g).view(B, nblk).to(torch.int32).cuda()
    q = torch.randn(B, 1, H, d, generator=g).to(dt).cuda()
    kn = torch.randn(B, 1, hk, d, generator=g).to(dt).cuda()
    vn = torch.randn(B, 1, hk, d, generator=g).to(dt).cuda()
    ang = torch.rand(nblk * page, 32, generator=g) * 6.28
    cos, sin = torch.cos(ang).to(dt).cuda(), torch.sin(ang).to(dt).cuda()
    sl = torch.tensor([5, 100, 127], dtype=torch.int32).cuda()
    args = dict(rotary_cos=cos, rotary_sin=sin, cache_seqlens=sl, block_table=bt, causal=True,
                return_softmax_lse=True)
    kc_cpu, vc_cpu = kc.cpu(), vc.cpu()
    out, lse = flash_attn_with_kvcache(q, kc, vc, kn, vn, **args)
    out_c, lse_c = flash_attn_with_kvcache(q.cpu(), kc_cpu, vc_cpu, kn.cpu(), vn.cpu(),
                                           **{a: (t.cpu() if torch.is_tensor(t) else t)
                                              for a, t in args.items()})
    torch.testing.assert_close(out.cpu(), out_c, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(lse.cpu(), lse_c, rtol=1e-3, atol=1e-3)
    assert torch.equal(vc.cpu(), vc_cpu)
    with pytest.raises(RuntimeError, match="block_table"):
        flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=nblk * page, block_table=bt)


def test_cuda_compile_fullgraph():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(4)
    q, k, v = [torch.randn(2, 40, 4, 64, generator=g).to(torch.bfloat16).cuda() for _ in range(3)]
    f = torch.compile(lambda a, b, c: flash_attn_func(a, b, c, causal=True), backend="aot_eager",
                      fullgraph=True)
    assert torch.equal(f(q, k, v), flash_attn_func(q, k, v, causal=True))
