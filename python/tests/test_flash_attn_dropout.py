# Dropout (API.md §2.7, §13.1): the dropped fraction, torch.manual_seed replay bit for bit, the
# generator advancing between calls, and forward/backward consistent with the mask that S_dmask
# reports (kept where >= 0), judged against the fp64 reference with that mask.
import pytest
import torch

from fa_ref import attention_ref, check_vs_ref, pad_packed, random_cu_seqlens, unpad_to_packed
from flash_attn import flash_attn_func, flash_attn_qkvpacked_func, flash_attn_varlen_func
from flash_attn.flash_attn_interface import _flash_attn_forward

P = 0.17


def _inputs(B, sq, sk, H, hk, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    return mk(B, sq, H, d), mk(B, sk, hk, d), mk(B, sk, hk, d), mk(B, sq, H, d)


def test_dropout_fraction_and_s_dmask_shape():
    B, sq, sk, H, d = 2, 128, 200, 4, 32
    q, k, v, _ = _inputs(B, sq, sk, H, H, d, torch.bfloat16, 31)
    out, lse, S = flash_attn_func(q, k, v, P, return_attn_probs=True)
    assert S.shape == (B, H, 128, 256) and S.dtype == torch.bfloat16
    dropped = (S[..., :sq, :sk] < 0).float().mean().item()
    assert abs(dropped - P) < 0.01, dropped
    # lse does not depend on dropout.
    _, lse0, _ = flash_attn_func(q, k, v, 0.0, return_attn_probs=True)
    assert torch.equal(lse, lse0)


def test_dropout_fraction_causal_window():
    B, sq, sk, H, d = 2, 120, 120, 4, 32
    q, k, v, _ = _inputs(B, sq, sk, H, H, d, torch.float16, 32)
    _, _, S = flash_attn_func(q, k, v, P, causal=True, window_size=(30, -1),
                              return_attn_probs=True)
    i = torch.arange(sq).view(-1, 1)
    j = torch.arange(sk).view(1, -1)
    vis = (j <= i) & (j >= i - 30)
    frac = (S[..., :sq, :sk] < 0)[..., vis].float().mean().item()
    assert abs(frac - P) < 0.025, frac  # upstream's local-window tolerance


def test_manual_seed_replays_bit_for_bit_and_generator_advances():
    q, k, v, _ = _inputs(2, 45, 67, 4, 2, 40, torch.bfloat16, 33)
    torch.manual_seed(1234)
    o1, _, s1 = flash_attn_func(q, k, v, P, return_attn_probs=True)
    o2, _, s2 = flash_attn_func(q, k, v, P, return_attn_probs=True)  # generator advanced
    torch.manual_seed(1234)
    o3, _, s3 = flash_attn_func(q, k, v, P, return_attn_probs=True)
    assert torch.equal(o1, o3) and torch.equal(s1, s3)
    assert not torch.equal(o1, o2)
    assert not torch.equal(s1 < 0, s2 < 0)


def test_raw_forward_rng_state():
    q, k, v, _ = _inputs(1, 9, 9, 2, 2, 16, torch.bfloat16, 34)
    torch.manual_seed(5)
    out, lse, S, rng = _flash_attn_forward(q, k, v, P, 0.25, False, -1, -1, 0.0, None, True)
    assert rng.shape == (2,) and rng.dtype == torch.int64
    torch.manual_seed(5)
    out2, _, _, rng2 = _flash_attn_forward(q, k, v, P, 0.25, False, -1, -1, 0.0, None, True)
    assert torch.equal(rng, rng2) and torch.equal(out, out2)


def _grads(fn, tensors, dout):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(dout)
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("dtype,d,sq,sk,hk,causal,alibi", [
    (torch.bfloat16, 64, 113, 203, 2, False, False),
    (torch.float16, 59, 37, 17, 1, True, False),
    (torch.bfloat16, 128, 1, 239, 4, False, True),
    (torch.float32, 40, 64, 64, 4, True, False),
])
def test_dropout_forward_backward_vs_reference(dtype, d, sq, sk, hk, causal, alibi):
    B, H = 2, 4
    q, k, v, dout = _inputs(B, sq, sk, H, hk, d, dtype, 35 + d)
    slopes = torch.rand(B, H) * 0.3 if alibi else None
    torch.manual_seed(77)
    out, lse, S = flash_attn_func(q, k, v, P, causal=causal, alibi_slopes=slopes,
                                  return_attn_probs=True)
    keep = S[..., :sq, :sk] >= 0
    kw = dict(causal=causal, alibi_slopes=slopes, dropout_p=P, keep_mask=keep)
    torch.manual_seed(77)  # the same mask again, now through autograd
    out_k, gk = _grads(lambda a, b, c: flash_attn_func(a, b, c, P, causal=causal,
                                                       alibi_slopes=slopes), (q, k, v), dout)
    assert torch.equal(out_k, out)
    out_r, gr = _grads(lambda a, b, c: attention_ref(a, b, c, **kw)[0],
                       (q.double(), k.double(), v.double()), dout.double())
    out_p, gp = _grads(lambda a, b, c: attention_ref(a, b, c, upcast=False, **kw)[0], (q, k, v),
                       dout)
    check_vs_ref(out, out_r, out_p, 2.0, "out")
    factor = 3.0 if alibi else 2.0
    for name, a, r, p in zip("qkv", gk, gr, gp):
        check_vs_ref(a, r, p, factor, "d" + name)


def test_dropout_varlen_vs_reference():
    B, H, d, m = 3, 2, 32, 57
    dtype = torch.bfloat16
    g = torch.Generator().manual_seed(36)
    cu, lens = random_cu_seqlens(B, m, g)
    t = int(cu[-1])
    q, k, v, dout = [torch.randn(t, H, d, generator=g).to(dtype) for _ in range(4)]
    torch.manual_seed(3)
    out, _, S = flash_attn_varlen_func(q, k, v, cu, cu, m, m, P, causal=True,
                                       return_attn_probs=True)
    assert S.shape == (B, H, 128, 128)
    keep = S[..., :m, :m] >= 0
    torch.manual_seed(3)
    out_k, gk = _grads(lambda a, b, c: flash_attn_varlen_func(a, b, c, cu, cu, m, m, P,
                                                              causal=True), (q, k, v), dout)
    assert torch.equal(out_k, out)

    def ref(a, b, c, upcast):
        o, _ = attention_ref(pad_packed(a, cu, m), pad_packed(b, cu, m), pad_packed(c, cu, m),
                             causal=True, dropout_p=P, keep_mask=keep, q_lens=lens, k_lens=lens,
                             upcast=upcast)
        return unpad_to_packed(o, cu)

    out_r, gr = _grads(lambda a, b, c: ref(a, b, c, True), (q.double(), k.double(), v.double()),
                       dout.double())
    out_p, gp = _grads(lambda a, b, c: ref(a, b, c, False), (q, k, v), dout)
    check_vs_ref(out, out_r, out_p, 2.0, "out")
    for name, a, r, p in zip("qkv", gk, gr, gp):
        check_vs_ref(a, r, p, 2.0, "d" + name)


def test_dropout_qkvpacked_replay():
    g = torch.Generator().manual_seed(37)
    qkv = torch.randn(2, 33, 3, 2, 24, generator=g).to(torch.float16)
    torch.manual_seed(9)
    a = flash_attn_qkvpacked_func(qkv, P)
    torch.manual_seed(9)
    b = flash_attn_qkvpacked_func(qkv, P)
    assert torch.equal(a, b)
