# flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func: output, softmax_lse and
# gradients against an fp64 reference, judged by upstream's rule (API.md §11): the error must be
# at most 2x (gradients: 2x, 3x with softcap or ALiBi) that of the same math in the input dtype.
import zlib

import pytest
import torch

from fa_ref import attention_ref, check_vs_ref
from flash_attn import flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
HEAD_DIMS = [40, 59, 64, 111, 128, 8, 256]
SHAPES = [(113, 203), (1, 239), (3, 17), (203, 113), (1, 1), (17, 3), (64, 64)]
FEATURES = ["plain", "causal", "window", "softcap", "alibi", "alibi_causal", "causal_window"]
KV_HEADS = ["H", 2, 1]

# A rotating selection over the grid: every value of every axis appears, in varied company.
CASES = [(DTYPES[i % 3], HEAD_DIMS[i % 7], SHAPES[(i * 3) % 7], FEATURES[(i * 5) % 7],
          KV_HEADS[i % 3]) for i in range(35)]


def _ids(c):
    dt, d, (sq, sk), feat, hk = c
    return f"{str(dt)[6:]}-d{d}-{sq}x{sk}-{feat}-hk{hk}"


def make_inputs(B, sq, sk, H, hk, d, dtype, seed, softcap=0.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, sq, H, d, generator=g)
    if softcap > 0:
        q = q * softcap / 4  # push scores into the softcap's nonlinear range
    k = torch.randn(B, sk, hk, d, generator=g)
    v = torch.randn(B, sk, hk, d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype), g


def feature_args(feat, sk, g, B, H):
    causal = feat in ("causal", "alibi_causal", "causal_window")
    window = (-1, -1)
    if feat in ("window", "causal_window"):
        window = (int(torch.randint(0, max(sk, 1), (1,), generator=g)),
                  int(torch.randint(0, max(sk, 1), (1,), generator=g)))
    softcap = 30.0 if feat == "softcap" else 0.0
    alibi = torch.rand(B, H, generator=g) * 0.3 if feat.startswith("alibi") else None
    return causal, window, softcap, alibi


def grads_of(fn, tensors, dout):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(dout)
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_flash_attn_func(case):
    dtype, d, (sq, sk), feat, hk = case
    B, H = 2, 4
    hk = H if hk == "H" else hk
    softcap = 30.0 if feat == "softcap" else 0.0
    q, k, v, g = make_inputs(B, sq, sk, H, hk, d, dtype, seed=zlib.crc32(_ids(case).encode()) % 1000,
                             softcap=softcap)
    causal, window, softcap, alibi = feature_args(feat, sk, g, B, H)
    kw = dict(causal=causal, window=window, softcap=softcap, alibi_slopes=alibi)

    out, lse, S = flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=softcap,
                                  alibi_slopes=alibi, return_attn_probs=True)
    assert out.shape == q.shape and out.dtype == dtype
    assert lse.shape == (B, H, sq) and lse.dtype == torch.float32
    assert S.shape == (0,) and S.dtype == dtype
    out_ref, lse_ref = attention_ref(q, k, v, **kw)
    out_pt, lse_pt = attention_ref(q, k, v, upcast=False, **kw)
    check_vs_ref(out, out_ref, out_pt, 2.0, "out")
    check_vs_ref(lse, lse_ref, lse_pt.float(), 2.0, "lse")

    dout = torch.randn(out.shape, generator=g).to(dtype)
    _, gk = grads_of(lambda a, b, c: flash_attn_func(a, b, c, causal=causal, window_size=window,
                                                      softcap=softcap, alibi_slopes=alibi),
                     (q, k, v), dout)
    _, gr = grads_of(lambda a, b, c: attention_ref(a, b, c, **kw)[0], (q.double(), k.double(),
                                                                    v.double()), dout.double())
    _, gp = grads_of(lambda a, b, c: attention_ref(a, b, c, upcast=False, **kw)[0], (q, k, v),
                     dout)
    factor = 3.0 if (softcap > 0 or alibi is not None) else 2.0
    for name, a, r, p in zip("qkv", gk, gr, gp):
        assert a.shape == r.shape and a.dtype == dtype
        check_vs_ref(a, r, p, factor, "d" + name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_kvpacked(dtype, causal):
    B, sq, sk, H, hk, d = 2, 37, 53, 6, 2, 40
    q, k, v, g = make_inputs(B, sq, sk, H, hk, d, dtype, seed=3)
    kv = torch.stack([k, v], dim=2)  # (B, sk, 2, hk, d)
    dout = torch.randn(B, sq, H, d, generator=g).to(dtype)
    out, (dq, dkv) = grads_of(lambda a, b: flash_attn_kvpacked_func(a, b, causal=causal),
                              (q, kv), dout)
    assert dkv.shape == kv.shape
    out_r, gr = grads_of(lambda a, b, c: attention_ref(a, b, c, causal=causal)[0],
                         (q.double(), k.double(), v.double()), dout.double())
    out_p, gp = grads_of(lambda a, b, c: attention_ref(a, b, c, causal=causal, upcast=False)[0],
                         (q, k, v), dout)
    check_vs_ref(out, out_r, out_p, 2.0, "out")
    check_vs_ref(dq, gr[0], gp[0], 2.0, "dq")
    check_vs_ref(dkv[:, :, 0], gr[1], gp[1], 2.0, "dk")
    check_vs_ref(dkv[:, :, 1], gr[2], gp[2], 2.0, "dv")
    o2, lse, S = flash_attn_kvpacked_func(q, kv, causal=causal, return_attn_probs=True)
    assert torch.equal(o2, out) and lse.shape == (B, H, sq) and S.shape == (0,)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (False, (7, 3))])
def test_qkvpacked(dtype, causal, window):
    B, S, H, d = 3, 45, 3, 64
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(B, S, 3, H, d, generator=g).to(dtype)
    dout = torch.randn(B, S, H, d, generator=g).to(dtype)
    out, (dqkv,) = grads_of(lambda x: flash_attn_qkvpacked_func(x, causal=causal,
                                                                 window_size=window),
                            (qkv,), dout)
    assert dqkv.shape == qkv.shape
    kw = dict(causal=causal, window=window)
    out_r, (gr,) = grads_of(lambda x: attention_ref(x[:, :, 0], x[:, :, 1], x[:, :, 2], **kw)[0],
                            (qkv.double(),), dout.double())
    out_p, (gp,) = grads_of(lambda x: attention_ref(x[:, :, 0], x[:, :, 1], x[:, :, 2],
                                                    upcast=False, **kw)[0], (qkv,), dout)
    check_vs_ref(out, out_r, out_p, 2.0, "out")
    for i in range(3):
        check_vs_ref(dqkv[:, :, i], gr[:, :, i], gp[:, :, i], 2.0, "dqkv[%d]" % i)


def test_positional_dropout_and_scale_and_window_tensor():
    # dropout_p is the 4th positional argument; softmax_scale is honoured; window_size may be a
    # tensor and max_seqlen a 0-dim tensor (API.md §2.1).
    q, k, v, g = make_inputs(2, 19, 23, 2, 2, 32, torch.bfloat16, seed=7)
    out = flash_attn_func(q, k, v, 0.0, 0.3, False, torch.tensor([4, 2]))
    out_ref, _ = attention_ref(q, k, v, scale=0.3, window=(4, 2))
    out_pt, _ = attention_ref(q, k, v, scale=0.3, window=(4, 2), upcast=False)
    check_vs_ref(out, out_ref, out_pt)


def test_softmax_scale_zero_is_uniform():
    # Upstream multiplies by the given scale even when it is 0 (uniform weights); our library
    # reads 0 as "default", which the wrapper must not let through.
    q, k, v, _ = make_inputs(1, 5, 9, 2, 2, 16, torch.float32, seed=8)
    out = flash_attn_func(q, k, v, softmax_scale=0.0)
    torch.testing.assert_close(out, v.mean(dim=1, keepdim=True).expand_as(out), rtol=1e-5,
                               atol=1e-5)


def test_lse_empty_rows_and_zero_out():
    # Sq > Sk causal: rows 0..Sq-Sk-1 see nothing -> out 0, lse +inf (API.md §2.2/§2.3).
    q, k, v, _ = make_inputs(2, 7, 3, 2, 1, 24, torch.bfloat16, seed=9)
    out, lse, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert torch.all(out[:, :4] == 0)
    assert torch.all(torch.isinf(lse[:, :, :4])) and torch.all(lse[:, :, :4] > 0)
    assert torch.isfinite(lse[:, :, 4:]).all()


def test_lse_causal_alibi_offset():
    # Pure-causal ALiBi uses the column form: lse = documented lse + slope * (i + Sk - Sq).
    B, sq, sk, H, d = 2, 11, 29, 3, 32
    q, k, v, g = make_inputs(B, sq, sk, H, H, d, torch.float32, seed=10)
    slopes = torch.rand(H, generator=g) * 0.3
    out, lse, _ = flash_attn_func(q, k, v, causal=True, alibi_slopes=slopes,
                                  return_attn_probs=True)
    # Documented (absolute-distance) form: the same out, lse shifted by slope * (i + off).
    _, lse_doc = attention_ref(q, k, v, causal=True, alibi_slopes=slopes, alibi_abs=True)
    i = torch.arange(sq, dtype=torch.float64)
    expected = lse_doc + slopes.double().view(1, H, 1) * (i + sk - sq).view(1, 1, sq)
    torch.testing.assert_close(lse.double(), expected, rtol=1e-5, atol=1e-4)
    # With a finite left window the absolute form is used (no shift).
    out_w, lse_w, _ = flash_attn_func(q, k, v, causal=True, window_size=(5, -1),
                                      alibi_slopes=slopes, return_attn_probs=True)
    _, lse_wref = attention_ref(q, k, v, causal=True, window=(5, -1), alibi_slopes=slopes)
    torch.testing.assert_close(lse_w.double(), lse_wref, rtol=1e-5, atol=1e-4)


def test_noncontiguous_inputs_and_dout():
    # q/k/v with a non-unit last stride are copied; a transposed, strided dout works (API.md §11).
    B, S, H, d = 2, 33, 2, 48
    g = torch.Generator().manual_seed(11)
    base = torch.randn(B, S, H, d, 2, generator=g).to(torch.bfloat16)
    q = base[..., 0]  # last stride 2
    k = torch.randn(B, S, H, d, generator=g).to(torch.bfloat16)
    v = torch.randn(B, S, H, d, generator=g).to(torch.bfloat16)
    dout = torch.randn(B, H, S, d, generator=g).to(torch.bfloat16).transpose(1, 2)
    out, gk = grads_of(lambda a, b, c: flash_attn_func(a, b, c, causal=True), (q, k, v), dout)
    out_c, gc = grads_of(lambda a, b, c: flash_attn_func(a, b, c, causal=True),
                         (q.contiguous(), k, v), dout.contiguous())
    assert torch.equal(out, out_c)
    for a, b in zip(gk, gc):
        assert torch.equal(a, b)


def test_no_grad_saves_nothing():
    q, k, v, _ = make_inputs(1, 9, 9, 2, 2, 16, torch.bfloat16, seed=12)
    q.requires_grad_()
    with torch.no_grad():
        out = flash_attn_func(q, k, v)
    assert out.grad_fn is None


@pytest.mark.slow
@pytest.mark.parametrize("d", [32, 80, 96, 160, 192, 224, 256])
@pytest.mark.parametrize("sq,sk", [(512, 256), (256, 512), (1023, 1024)])
def test_flash_attn_func_big(d, sq, sk):
    dtype = torch.bfloat16
    q, k, v, g = make_inputs(2, sq, sk, 4, 2, d, dtype, seed=13)
    dout = torch.randn(2, sq, 4, d, generator=g).to(dtype)
    out, gk = grads_of(lambda a, b, c: flash_attn_func(a, b, c, causal=True), (q, k, v), dout)
    out_r, gr = grads_of(lambda a, b, c: attention_ref(a, b, c, causal=True)[0],
                         (q.double(), k.double(), v.double()), dout.double())
    out_p, gp = grads_of(lambda a, b, c: attention_ref(a, b, c, causal=True, upcast=False)[0],
                         (q, k, v), dout)
    check_vs_ref(out, out_r, out_p)
    for a, r, p in zip(gk, gr, gp):
        check_vs_ref(a, r, p)
