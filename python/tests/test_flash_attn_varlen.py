# flash_attn_varlen_func and its packed forms against the fp64 reference on the padded batch
# (per-sequence lengths, bottom-right masks per sequence, window clamp at max_seqlen_k).
import pytest
import torch

from fa_ref import attention_ref, check_vs_ref, pad_packed, random_cu_seqlens, unpad_to_packed
from flash_attn import (flash_attn_varlen_func, flash_attn_varlen_kvpacked_func,
                        flash_attn_varlen_qkvpacked_func)

CASES = [
    # dtype, d, max_q, max_k, H, Hk, causal, window, softcap, alibi
    (torch.bfloat16, 64, 113, 203, 4, 4, False, (-1, -1), 0.0, False),
    (torch.float16, 59, 37, 37, 4, 2, True, (-1, -1), 0.0, False),
    (torch.bfloat16, 40, 1, 239, 6, 1, True, (-1, -1), 0.0, True),
    (torch.float16, 111, 90, 45, 2, 2, True, (-1, -1), 0.0, False),
    (torch.bfloat16, 128, 31, 64, 4, 2, False, (9, 4), 0.0, False),
    (torch.float32, 72, 50, 61, 3, 3, False, (-1, -1), 20.0, False),
    (torch.bfloat16, 32, 17, 29, 4, 1, False, (-1, -1), 0.0, True),
    (torch.float16, 96, 3, 17, 2, 1, True, (5, -1), 0.0, False),
]


def _id(c):
    return f"{str(c[0])[6:]}-d{c[1]}-{c[2]}x{c[3]}-h{c[4]}/{c[5]}-c{int(c[6])}-w{c[7][0]}_{c[7][1]}" \
           f"-sc{c[8]:g}-al{int(c[9])}"


def grads(fn, tensors, dout):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(dout)
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_varlen(case):
    dtype, d, mq, mk, H, hk, causal, window, softcap, alibi = case
    B = 3
    g = torch.Generator().manual_seed(sum(map(ord, _id(case))))
    cu_q, lq = random_cu_seqlens(B, mq, g)
    cu_k, lk = random_cu_seqlens(B, mk, g)
    tq, tk = int(cu_q[-1]), int(cu_k[-1])
    q = torch.randn(tq, H, d, generator=g)
    if softcap:
        q = q * softcap / 4
    q = q.to(dtype)
    k = torch.randn(tk, hk, d, generator=g).to(dtype)
    v = torch.randn(tk, hk, d, generator=g).to(dtype)
    slopes = torch.rand(B, H, generator=g) * 0.3 if alibi else None
    dout = torch.randn(tq, H, d, generator=g).to(dtype)
    fa = dict(causal=causal, window_size=window, softcap=softcap, alibi_slopes=slopes)
    rk = dict(causal=causal, window=window, softcap=softcap, alibi_slopes=slopes, q_lens=lq,
              k_lens=lk, sq_star=mq, sk_star=mk)

    def ref(a, b, c, upcast):
        o, _ = attention_ref(pad_packed(a, cu_q, mq), pad_packed(b, cu_k, mk),
                             pad_packed(c, cu_k, mk), upcast=upcast, **rk)
        return unpad_to_packed(o, cu_q)

    out, gk = grads(lambda a, b, c: flash_attn_varlen_func(a, b, c, cu_q, cu_k, mq, mk, **fa),
                    (q, k, v), dout)
    out_r, gr = grads(lambda a, b, c: ref(a, b, c, True), (q.double(), k.double(), v.double()),
                      dout.double())
    out_p, gp = grads(lambda a, b, c: ref(a, b, c, False), (q, k, v), dout)
    check_vs_ref(out, out_r, out_p, 2.0, "out")
    factor = 3.0 if (softcap or alibi) else 2.0
    for name, a, r, p in zip("qkv", gk, gr, gp):
        check_vs_ref(a, r, p, factor, "d" + name)

    # lse: (H, total_q), column t = packed token t.
    o2, lse, S = flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, return_attn_probs=True, **fa)
    assert torch.equal(o2, out) and lse.shape == (H, tq) and S.shape == (0,)
    _, lse_r = attention_ref(pad_packed(q, cu_q, mq), pad_packed(k, cu_k, mk),
                             pad_packed(v, cu_k, mk), **rk)
    _, lse_p = attention_ref(pad_packed(q, cu_q, mq), pad_packed(k, cu_k, mk),
                             pad_packed(v, cu_k, mk), upcast=False, **rk)
    check_vs_ref(lse, unpad_to_packed(lse_r.transpose(1, 2), cu_q).t(),
                 unpad_to_packed(lse_p.float().transpose(1, 2), cu_q).t(), 2.0, "lse")


def test_varlen_tensor_max_seqlen_and_empty_key_sequence():
    # max_seqlen as 0-dim tensors (transformers); a zero-length key sequence: out 0, lse +inf.
    H, d = 2, 32
    g = torch.Generator().manual_seed(21)
    cu_q = torch.tensor([0, 5, 9, 16], dtype=torch.int32)
    cu_k = torch.tensor([0, 7, 7, 12], dtype=torch.int32)
    q = torch.randn(16, H, d, generator=g).to(torch.bfloat16)
    k = torch.randn(12, H, d, generator=g).to(torch.bfloat16)
    v = torch.randn(12, H, d, generator=g).to(torch.bfloat16)
    out, lse, _ = flash_attn_varlen_func(q, k, v, cu_q, cu_k, torch.tensor(7), torch.tensor(7),
                                         return_attn_probs=True)
    assert torch.all(out[5:9] == 0)
    assert torch.all(torch.isposinf(lse[:, 5:9]))
    assert torch.isfinite(lse[:, :5]).all() and torch.isfinite(lse[:, 9:]).all()


def test_varlen_keys_much_shorter_no_nan():
    # Upstream's NaN test: queries of 76, 34, 146 tokens against 1-token key sequences.
    H, d = 2, 64
    g = torch.Generator().manual_seed(22)
    cu_q = torch.tensor([0, 76, 110, 256], dtype=torch.int32)
    cu_k = torch.tensor([0, 1, 2, 3], dtype=torch.int32)
    for causal in (False, True):
        q = torch.randn(256, H, d, generator=g).to(torch.bfloat16).requires_grad_()
        k = torch.randn(3, H, d, generator=g).to(torch.bfloat16).requires_grad_()
        v = torch.randn(3, H, d, generator=g).to(torch.bfloat16).requires_grad_()
        out = flash_attn_varlen_func(q, k, v, cu_q, cu_k, 146, 1, causal=causal)
        out.sum().backward()
        for t in (out, q.grad, k.grad, v.grad):
            assert not torch.isnan(t).any()


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_kvpacked_and_qkvpacked(causal):
    B, H, hk, d, m = 3, 4, 2, 48, 41
    g = torch.Generator().manual_seed(23)
    cu, lens = random_cu_seqlens(B, m, g)
    t = int(cu[-1])
    dtype = torch.bfloat16
    q = torch.randn(t, H, d, generator=g).to(dtype)
    k = torch.randn(t, hk, d, generator=g).to(dtype)
    v = torch.randn(t, hk, d, generator=g).to(dtype)
    dout = torch.randn(t, H, d, generator=g).to(dtype)
    kv = torch.stack([k, v], dim=1)
    out, (dq, dkv) = grads(lambda a, b: flash_attn_varlen_kvpacked_func(a, b, cu, cu, m, m,
                                                                         causal=causal),
                           (q, kv), dout)
    out3, (dq3, dk3, dv3) = grads(lambda a, b, c: flash_attn_varlen_func(a, b, c, cu, cu, m, m,
                                                                         causal=causal),
                                  (q, k, v), dout)
    assert dkv.shape == kv.shape
    torch.testing.assert_close(out, out3, rtol=0, atol=0)
    torch.testing.assert_close(dq, dq3, rtol=0, atol=0)
    torch.testing.assert_close(dkv[:, 0], dk3, rtol=0, atol=0)
    torch.testing.assert_close(dkv[:, 1], dv3, rtol=0, atol=0)

    qkv = torch.randn(t, 3, H, d, generator=g).to(dtype)
    out, (dqkv,) = grads(lambda x: flash_attn_varlen_qkvpacked_func(
        x, cu_seqlens=cu, max_seqlen=m, dropout_p=0.0, deterministic=False,
        window_size=(-1, -1), causal=causal), (qkv,), dout)
    assert dqkv.shape == qkv.shape

    def ref(x, upcast):
        o, _ = attention_ref(pad_packed(x[:, 0], cu, m), pad_packed(x[:, 1], cu, m),
                             pad_packed(x[:, 2], cu, m), causal=causal, q_lens=lens, k_lens=lens,
                             upcast=upcast)
        return unpad_to_packed(o, cu)

    out_r, (gr,) = grads(lambda x: ref(x, True), (qkv.double(),), dout.double())
    out_p, (gp,) = grads(lambda x: ref(x, False), (qkv,), dout)
    check_vs_ref(out, out_r, out_p, 2.0, "out")
    for i in range(3):
        check_vs_ref(dqkv[:, i], gr[:, i], gp[:, i], 2.0, "dqkv[%d]" % i)


@pytest.mark.parametrize("page", [16, 256])
def test_varlen_paged_block_table(page):
    # block_table in flash_attn_varlen_func: k/v are a paged cache (forward only).
    B, H, hk, d = 3, 4, 2, 64
    g = torch.Generator().manual_seed(24)
    lq = torch.tensor([5, 1, 12])
    lk = torch.tensor([40, 17, 29])
    cu_q = torch.zeros(B + 1, dtype=torch.int32)
    cu_q[1:] = lq.cumsum(0)
    cu_k = torch.zeros(B + 1, dtype=torch.int32)
    cu_k[1:] = lk.cumsum(0)
    nblk = (int(lk.max()) + page - 1) // page
    num_blocks = B * nblk + 2
    perm = torch.randperm(num_blocks, generator=g)[:B * nblk].view(B, nblk).to(torch.int32)
    dtype = torch.bfloat16
    kc = torch.randn(num_blocks, page, hk, d, generator=g).to(dtype)
    vc = torch.randn(num_blocks, page, hk, d, generator=g).to(dtype)
    q = torch.randn(int(cu_q[-1]), H, d, generator=g).to(dtype)
    out = flash_attn_varlen_func(q, kc, vc, cu_q, cu_k, int(lq.max()), int(lk.max()),
                                 causal=True, block_table=perm)
    # The logical (B, nblk * page) view of each sequence's keys.
    kl = kc[perm.long()].reshape(B, nblk * page, hk, d)
    vl = vc[perm.long()].reshape(B, nblk * page, hk, d)
    qp = pad_packed(q, cu_q, int(lq.max()))
    kw = dict(causal=True, q_lens=lq, k_lens=lk, sk_star=int(lk.max()))
    out_r, _ = attention_ref(qp, kl, vl, **kw)
    out_p, _ = attention_ref(qp, kl, vl, upcast=False, **kw)
    check_vs_ref(out, unpad_to_packed(out_r, cu_q), unpad_to_packed(out_p, cu_q), 2.0, "out")
