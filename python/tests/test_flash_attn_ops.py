# The torch.library layer (API.md §5): the four flash_attn:: ops pass torch.library.opcheck
# (schema, fake tensors, autograd registration, AOT dispatch), torch.compile(fullgraph=True)
# traces a model through them, the ring-attention calling pattern of §9.4 works, and
# deterministic=True gives bit-identical repeated backward passes.
import pytest
import torch

from fa_ref import attention_ref, check_vs_ref, random_cu_seqlens
import flash_attn.flash_attn_interface as fai
from flash_attn import flash_attn_func, flash_attn_varlen_func
from flash_attn.flash_attn_interface import (_flash_attn_backward, _flash_attn_forward,
                                             _flash_attn_varlen_backward,
                                             _flash_attn_varlen_forward)


def _t(g, *shape, dtype=torch.bfloat16):
    return torch.randn(*shape, generator=g).to(dtype)


def test_wrapped_names_are_the_registered_ops():
    for name in ("_flash_attn_forward", "_flash_attn_backward", "_flash_attn_varlen_forward",
                 "_flash_attn_varlen_backward"):
        assert getattr(fai, "_wrapped" + name) is getattr(torch.ops.flash_attn, name)
        assert callable(getattr(fai, name))
    schema = str(torch.ops.flash_attn._flash_attn_backward.default._schema)
    assert "Tensor(a6!)? dq" in schema and "Tensor(a7!)? dk" in schema and "(a8!)? dv" in schema


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_opcheck_forward_backward(dtype):
    g = torch.Generator().manual_seed(41)
    B, sq, sk, H, hk, d = 2, 13, 21, 4, 2, 40
    q, k, v = _t(g, B, sq, H, d, dtype=dtype), _t(g, B, sk, hk, d, dtype=dtype), \
        _t(g, B, sk, hk, d, dtype=dtype)
    slopes = torch.rand(H, generator=g) * 0.3
    args = (q, k, v, 0.0, d ** -0.5, True, -1, -1, 0.0, slopes, False)
    torch.library.opcheck(torch.ops.flash_attn._flash_attn_forward.default, args)
    out, lse, _, rng = _flash_attn_forward(*args)
    dout = _t(g, B, sq, H, d, dtype=dtype)
    bargs = (dout, q, k, v, out, lse, torch.empty_like(q), torch.empty_like(k),
             torch.empty_like(v), 0.0, d ** -0.5, True, -1, -1, 0.0, slopes, False, rng)
    torch.library.opcheck(torch.ops.flash_attn._flash_attn_backward.default, bargs)


def test_opcheck_forward_noncontiguous_last_dim():
    # A dense q whose last stride is not 1: the op copies it; the fake must give the same layout.
    g = torch.Generator().manual_seed(48)
    q = torch.randn(2, 11, 32, 4, generator=g).to(torch.bfloat16).transpose(-1, -2)
    k, v = _t(g, 2, 9, 4, 32), _t(g, 2, 9, 4, 32)
    torch.library.opcheck(torch.ops.flash_attn._flash_attn_forward.default,
                          (q, k, v, 0.0, 0.2, False, -1, -1, 0.0, None, False))


def test_opcheck_forward_return_softmax_fake_shape():
    # With dropout the real output is random, so only the fake/real shape agreement is checked.
    g = torch.Generator().manual_seed(42)
    q, k, v = _t(g, 1, 130, 2, 16), _t(g, 1, 7, 2, 16), _t(g, 1, 7, 2, 16)
    args = (q, k, v, 0.2, 0.25, False, -1, -1, 0.0, None, True)
    torch.library.opcheck(torch.ops.flash_attn._flash_attn_forward.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    _, _, S, _ = _flash_attn_forward(*args)
    assert S.shape == (1, 2, 256, 128)


def test_opcheck_varlen_forward_backward():
    g = torch.Generator().manual_seed(43)
    B, H, hk, d, m = 3, 4, 1, 32, 19
    cu_q, _ = random_cu_seqlens(B, m, g)
    cu_k, _ = random_cu_seqlens(B, m + 4, g)
    tq, tk = int(cu_q[-1]), int(cu_k[-1])
    q, k, v = _t(g, tq, H, d), _t(g, tk, hk, d), _t(g, tk, hk, d)
    args = (q, k, v, cu_q, cu_k, m, m + 4, 0.0, d ** -0.5, True)
    torch.library.opcheck(torch.ops.flash_attn._flash_attn_varlen_forward.default, args)
    out, lse, _, rng = _flash_attn_varlen_forward(*args)
    assert lse.shape == (H, tq)
    dout = _t(g, tq, H, d)
    bargs = (dout, q, k, v, out, lse, torch.empty_like(q), torch.empty_like(k),
             torch.empty_like(v), cu_q, cu_k, m, m + 4, 0.0, d ** -0.5, True, -1, -1, 0.0, None,
             False, rng)
    torch.library.opcheck(torch.ops.flash_attn._flash_attn_varlen_backward.default, bargs)
    softmax_d = _flash_attn_varlen_backward(*bargs)
    assert softmax_d.shape == (H, tq + 128 * B) and softmax_d.dtype == torch.float32
    ref = (dout.float() * out.float()).sum(-1).t()
    torch.testing.assert_close(softmax_d[:, :tq], ref, rtol=1e-2, atol=1e-2)


def test_backward_softmax_d_shape_and_values():
    g = torch.Generator().manual_seed(44)
    q, k, v = _t(g, 2, 5, 2, 24), _t(g, 2, 8, 2, 24), _t(g, 2, 8, 2, 24)
    out, lse, _, rng = _flash_attn_forward(q, k, v, 0.0, 0.2, False, -1, -1, 0.0, None, False)
    dout = _t(g, 2, 5, 2, 24)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    sd = _flash_attn_backward(dout, q, k, v, out, lse, dq, dk, dv, 0.0, 0.2, False, -1, -1, 0.0,
                              None, False, rng)
    assert sd.shape == (2, 2, 128)
    torch.testing.assert_close(sd[..., :5], (dout.float() * out.float()).sum(-1).transpose(1, 2),
                               rtol=1e-2, atol=1e-2)
    # The raw op is differentiable through register_autograd, equal to the autograd class.
    qq, kk, vv = [t.clone().requires_grad_() for t in (q, k, v)]
    o, *_ = torch.ops.flash_attn._flash_attn_forward(qq, kk, vv, 0.0, 0.2, False, -1, -1, 0.0,
                                                     None, False)
    o.backward(dout)
    assert torch.equal(qq.grad, dq) and torch.equal(kk.grad, dk) and torch.equal(vv.grad, dv)


class TinyAttention(torch.nn.Module):
    def __init__(self, dim=64, heads=4, kv_heads=2):
        super().__init__()
        self.h, self.hk, self.d = heads, kv_heads, dim // heads
        self.wq = torch.nn.Linear(dim, dim)
        self.wkv = torch.nn.Linear(dim, 2 * kv_heads * self.d)
        self.wo = torch.nn.Linear(dim, dim)

    def forward(self, x):
        B, S, _ = x.shape
        q = self.wq(x).view(B, S, self.h, self.d)
        k, v = self.wkv(x).view(B, S, 2, self.hk, self.d).unbind(2)
        o = flash_attn_func(q, k, v, causal=True, window_size=(8, 0))
        return self.wo(o.reshape(B, S, -1))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyAttention().to(torch.bfloat16)
    x = torch.randn(2, 19, 64, dtype=torch.bfloat16)
    ref_out = model(x)
    ref_out.float().square().sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    out = compiled(x)
    out.float().square().sum().backward()
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    for p, r in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, r, rtol=1e-2, atol=1e-2)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0


def test_torch_compile_varlen_fullgraph():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(45)
    cu, _ = random_cu_seqlens(3, 23, g)
    t = int(cu[-1])
    q, k, v = _t(g, t, 4, 32), _t(g, t, 2, 32), _t(g, t, 2, 32)

    def f(q, k, v):
        return flash_attn_varlen_func(q, k, v, cu, cu, 23, 23, causal=True).float().sum()

    qq = q.clone().requires_grad_()
    torch.compile(f, backend="aot_eager", fullgraph=True)(qq, k, v).backward()
    qr = q.clone().requires_grad_()
    f(qr, k, v).backward()
    torch.testing.assert_close(qq.grad, qr.grad, rtol=0, atol=0)


@pytest.mark.parametrize("hk", [4, 1])
def test_ring_attention_pattern(hk):
    # ring-flash-attn / yunchang (API.md §9.4): forward over two key halves, merge out/lse,
    # run _flash_attn_backward on the merged out/lse with preallocated dq/dk/dv, sum / concat.
    g = torch.Generator().manual_seed(46)
    B, sq, sk, H, d = 2, 37, 60, 4, 64
    dtype = torch.bfloat16
    q, k, v = _t(g, B, sq, H, d), _t(g, B, sk, hk, d), _t(g, B, sk, hk, d)
    dout = _t(g, B, sq, H, d)
    scale = d ** -0.5
    halves = [(k[:, :sk // 2], v[:, :sk // 2]), (k[:, sk // 2:], v[:, sk // 2:])]
    outs, lses = [], []
    for kh, vh in halves:
        o, l, _, _ = _flash_attn_forward(q, kh, vh, 0.0, scale, False, -1, -1, 0.0, None, False)
        outs.append(o.float())
        lses.append(l)
    lse = torch.logaddexp(lses[0], lses[1])
    w = [torch.exp(l - lse).transpose(1, 2).unsqueeze(-1) for l in lses]  # (B, sq, H, 1)
    out = (outs[0] * w[0] + outs[1] * w[1]).to(dtype)
    dq = torch.zeros(B, sq, H, d, dtype=torch.float32)
    dks, dvs = [], []
    for kh, vh in halves:
        bq, bk, bv = torch.empty_like(q), torch.empty_like(kh), torch.empty_like(vh)
        _flash_attn_backward(dout, q, kh, vh, out, lse, bq, bk, bv, 0.0, scale, False, -1, -1,
                             0.0, None, False, None)
        dq += bq.float()
        dks.append(bk)
        dvs.append(bv)
    dk, dv = torch.cat(dks, 1), torch.cat(dvs, 1)

    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    out_r, lse_r = attention_ref(*leaves)
    out_r.backward(dout.double())
    pl = [t.clone().requires_grad_() for t in (q, k, v)]
    out_p, _ = attention_ref(*pl, upcast=False)
    out_p.backward(dout)
    check_vs_ref(out, out_r.detach(), out_p.detach(), 2.0, "merged out")
    torch.testing.assert_close(lse.double(), lse_r.detach(), rtol=1e-5, atol=1e-4)
    for name, a, r, p in zip("qkv", (dq, dk, dv), leaves, pl):
        check_vs_ref(a.to(dtype), r.grad, p.grad, 2.0, "d" + name)
    # And the unsplit gradients agree with the split ones within rounding.
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    flash_attn_func(*full).backward(dout)
    torch.testing.assert_close(dk, full[1].grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(dv, full[2].grad, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("varlen", [False, True])
def test_deterministic_backward_bit_exact(varlen):
    g = torch.Generator().manual_seed(47)
    H, hk, d = 4, 2, 48
    if varlen:
        cu, _ = random_cu_seqlens(3, 70, g)
        t = int(cu[-1])
        q, k, v, dout = _t(g, t, H, d), _t(g, t, hk, d), _t(g, t, hk, d), _t(g, t, H, d)
        fn = lambda a, b, c, det: flash_attn_varlen_func(a, b, c, cu, cu, 70, 70, causal=True,  # noqa
                                                         deterministic=det)
    else:
        q, k, v, dout = (_t(g, 2, 70, H, d), _t(g, 2, 90, hk, d), _t(g, 2, 90, hk, d),
                         _t(g, 2, 70, H, d))
        fn = lambda a, b, c, det: flash_attn_func(a, b, c, causal=True, deterministic=det)  # noqa

    def run(det):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        fn(*leaves, det).backward(dout)
        return [t.grad for t in leaves]

    first = run(True)
    for _ in range(4):
        again = run(True)
        for a, b in zip(first, again):
            assert torch.equal(a, b)
    # Upstream: dk and dv are bit-reproducible even with deterministic=False.
    nd = run(False)
    nd2 = run(False)
    assert torch.equal(nd[1], nd2[1]) and torch.equal(nd[2], nd2[2])
