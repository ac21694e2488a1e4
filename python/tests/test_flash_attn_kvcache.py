# flash_attn_with_kvcache (API.md §3.7): attention against the updated cache, in place append,
# rotary on q and the new keys, paged caches through block_table, cache_leftpad,
# cache_batch_idx, int cache_seqlens; upstream's tolerance 3x (5x with ALiBi) + 1e-5, the
# appended v bit-exact and the rotated k within one rounding.
import pytest
import torch

from fa_ref import attention_ref, check_vs_ref
from flash_attn import flash_attn_with_kvcache

EPS = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10, torch.float32: 2.0 ** -23}


def rotate(x, cos, sin, pos, interleaved, dt):
    """x (B, S, H, D) rotated at positions pos (B, S) in dt; cos/sin (seqlen_ro, R/2)."""
    R = cos.shape[1] * 2
    c = cos[pos].to(dt).unsqueeze(2)
    s = sin[pos].to(dt).unsqueeze(2)
    xr = x[..., :R].to(dt)
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        y = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), -1).flatten(-2)
    else:
        x1, x2 = xr[..., :R // 2], xr[..., R // 2:]
        y = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), -1)
    return torch.cat((y, x[..., R:].to(dt)), -1)


def run_case(dtype=torch.bfloat16, B=3, sq=1, H=4, hk=2, d=64, s_cache=70, s_new=0,
             rotary=None, paged=None, leftpad=False, batch_idx=False, int_seqlens=False,
             no_seqlens=False, causal=True, window=(-1, -1), softcap=0.0, alibi=False, seed=0,
             num_splits=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    q = mk(B, sq, H, d)
    if softcap:
        q = (q.float() * softcap / 4).to(dtype)
    k_new = mk(B, s_new, hk, d) if s_new else None
    v_new = mk(B, s_new, hk, d) if s_new else None
    if paged:
        nblk = (s_cache + paged - 1) // paged
        num_blocks = B * nblk + 3
        block_table = torch.randperm(num_blocks, generator=g)[:B * nblk].view(B, nblk).to(
            torch.int32)
        k_cache, v_cache = mk(num_blocks, paged, hk, d), mk(num_blocks, paged, hk, d)
        capacity = nblk * paged
        k_log = k_cache[block_table.long()].reshape(B, capacity, hk, d)
        v_log = v_cache[block_table.long()].reshape(B, capacity, hk, d)
        rows = None
    else:
        block_table = None
        b_cache = B + 2 if batch_idx else B
        k_cache, v_cache = mk(b_cache, s_cache, hk, d), mk(b_cache, s_cache, hk, d)
        capacity = s_cache
        rows = torch.randperm(b_cache, generator=g)[:B] if batch_idx else torch.arange(B)
        k_log, v_log = k_cache[rows].clone(), v_cache[rows].clone()
    if int_seqlens:
        seqlens = torch.full((B,), capacity - s_new - 5, dtype=torch.int32)
        seqlens_arg = int(seqlens[0])
    elif no_seqlens:
        seqlens = torch.full((B,), capacity, dtype=torch.int32)
        seqlens_arg = None
    else:
        seqlens = torch.randint(0, capacity - s_new + 1, (B,), generator=g).to(torch.int32)
        seqlens[0] = capacity - s_new  # one sequence exactly at capacity
        seqlens_arg = seqlens
    lp = None
    if leftpad:
        lp = (torch.rand(B, generator=g) * seqlens.float()).to(torch.int32)
    cos = sin = None
    if rotary is not None:
        R = rotary[0]
        angle = torch.rand(capacity, R // 2, generator=g) * 6.28
        cos, sin = torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)
    slopes = torch.rand(B, H, generator=g) * 0.3 if alibi else None
    kc0, vc0 = k_cache.clone(), v_cache.clone()

    out, lse = flash_attn_with_kvcache(
        q, k_cache, v_cache, k=k_new, v=v_new, rotary_cos=cos, rotary_sin=sin,
        cache_seqlens=seqlens_arg, cache_batch_idx=rows.to(torch.int32) if batch_idx else None,
        cache_leftpad=lp, block_table=block_table, causal=causal, window_size=window,
        softcap=softcap, rotary_interleaved=bool(rotary and rotary[1]), alibi_slopes=slopes,
        num_splits=num_splits, return_softmax_lse=True)
    assert out.shape == q.shape and lse.shape == (B, H, sq) and lse.dtype == torch.float32

    # Reference: the updated logical cache, rotated q, attention over [leftpad, seqlen + s_new).
    rot_q_pos = None
    k_upd, v_upd = k_log.clone(), v_log.clone()
    if s_new:
        kn = k_new
        if rotary is not None:
            pos = seqlens.long().view(B, 1) + torch.arange(s_new).view(1, s_new)
            kn = rotate(k_new, cos, sin, pos, rotary[1], torch.float32).to(dtype)
        for b in range(B):
            s0 = int(seqlens[b])
            k_upd[b, s0:s0 + s_new] = kn[b]
            v_upd[b, s0:s0 + s_new] = v_new[b]
    if rotary is not None:
        local = causal or window != (-1, -1)
        rot_q_pos = seqlens.long().view(B, 1) + (torch.arange(sq).view(1, sq) if local else 0)
    kw = dict(causal=causal, window=window, softcap=softcap, alibi_slopes=slopes,
              k_lens=seqlens + s_new, k_start=lp, sk_star=capacity)

    def ref(upcast):
        qq = q
        if rot_q_pos is not None:
            qq = rotate(q, cos, sin, rot_q_pos.expand(B, sq), rotary[1],
                        torch.float64 if upcast else dtype)
        return attention_ref(qq, k_upd, v_upd, upcast=upcast, **kw)

    out_r, lse_r = ref(True)
    out_p, lse_p = ref(False)
    factor = 5.0 if alibi else 3.0
    check_vs_ref(out, out_r, out_p, factor, "out")
    check_vs_ref(lse, lse_r, lse_p.float(), factor, "lse")

    # The cache after the call: the new tokens (k rotated), nothing else changed.
    if paged:
        k_after = k_cache[block_table.long()].reshape(B, capacity, hk, d)
        v_after = v_cache[block_table.long()].reshape(B, capacity, hk, d)
        untouched = torch.ones(num_blocks, dtype=torch.bool)
        untouched[block_table.long().flatten()] = False
        assert torch.equal(k_cache[untouched], kc0[untouched])
    else:
        k_after, v_after = k_cache[rows], v_cache[rows]
        others = torch.ones(k_cache.shape[0], dtype=torch.bool)
        others[rows] = False
        assert torch.equal(k_cache[others], kc0[others]) and torch.equal(v_cache[others],
                                                                         vc0[others])
    assert torch.equal(v_after, v_upd)
    assert ((k_after.double() - k_upd.double()).abs()
            <= EPS[dtype] * k_upd.double().abs() + 1e-3).all()
    return out, lse


CASES = {
    "decode": dict(),
    "decode_fp16_mqa": dict(dtype=torch.float16, hk=1, d=59),
    "append_rotary": dict(s_new=1, rotary=(32, False)),
    "append_rotary_interleaved_window_gqa": dict(sq=3, s_new=3, rotary=(64, True), hk=2,
                                                 window=(20, 0), d=128),
    "prefill_noncausal_rotary": dict(sq=4, s_new=4, rotary=(16, False), causal=False, hk=4),
    "paged16_append_rotary": dict(paged=16, s_new=2, sq=2, rotary=(32, False)),
    "paged256_int_seqlens": dict(paged=256, s_cache=300, s_new=1, int_seqlens=True),
    "paged7_odd_page": dict(paged=7, s_cache=50, s_new=3, sq=3),
    "leftpad_append": dict(leftpad=True, s_new=2, sq=2),
    "leftpad_alibi": dict(leftpad=True, alibi=True, s_new=1),
    "cache_batch_idx": dict(batch_idx=True, s_new=2, sq=1, rotary=(32, True)),
    "alibi_noncausal": dict(alibi=True, causal=False, sq=3),
    "softcap": dict(softcap=30.0, s_new=1),
    "no_seqlens_whole_cache": dict(no_seqlens=True, causal=False),
    "fp32_append": dict(dtype=torch.float32, s_new=2, sq=2, d=40),
    "sq_gt_sk_empty_rows": dict(sq=6, s_cache=8, s_new=0, hk=4),
}


@pytest.mark.parametrize("name", list(CASES))
def test_kvcache(name):
    run_case(seed=sum(map(ord, name)), **CASES[name])


def test_num_splits_explicit_zero_equals_default_and_splits_agree():
    kw = dict(s_cache=200, sq=1, seed=99)
    out0, lse0 = run_case(**kw)
    out0b, lse0b = run_case(num_splits=0, **kw)
    assert torch.equal(out0, out0b) and torch.equal(lse0, lse0b)
    out1, _ = run_case(num_splits=1, **kw)
    out3, _ = run_case(num_splits=3, **kw)
    torch.testing.assert_close(out1, out3, rtol=1e-2, atol=1e-2)


def test_return_softmax_lse_false_returns_tensor_and_keywords():
    # transformers' continuous-batching decode call, all keywords (API.md §9.3).
    g = torch.Generator().manual_seed(5)
    B, H, hk, d, page = 2, 4, 2, 32, 16
    kc = torch.randn(6, page, hk, d, generator=g).to(torch.bfloat16)
    vc = torch.randn(6, page, hk, d, generator=g).to(torch.bfloat16)
    bt = torch.tensor([[0, 3, -1], [5, -1, -1]], dtype=torch.int32)  # padded with -1
    out = flash_attn_with_kvcache(
        q=torch.randn(B, 1, H, d, generator=g).to(torch.bfloat16), k_cache=kc, v_cache=vc,
        k=torch.randn(B, 1, hk, d, generator=g).to(torch.bfloat16),
        v=torch.randn(B, 1, hk, d, generator=g).to(torch.bfloat16),
        cache_seqlens=torch.tensor([20, 9], dtype=torch.int32), softmax_scale=0.2, causal=True,
        window_size=(-1, -1), block_table=bt)
    assert isinstance(out, torch.Tensor) and out.shape == (B, 1, H, d)
    assert torch.isfinite(out.float()).all()


def test_paged_capacity_exactly_full_and_exceeded():
    g = torch.Generator().manual_seed(6)
    B, H, d, page = 1, 2, 32, 16
    kc = torch.randn(2, page, H, d, generator=g).to(torch.bfloat16)
    vc = torch.randn(2, page, H, d, generator=g).to(torch.bfloat16)
    bt = torch.tensor([[1, 0]], dtype=torch.int32)
    q = torch.randn(B, 1, H, d, generator=g).to(torch.bfloat16)
    kn = torch.randn(B, 1, H, d, generator=g).to(torch.bfloat16)
    out = flash_attn_with_kvcache(q, kc, vc, kn, kn, cache_seqlens=31, block_table=bt,
                                  causal=True)
    assert not torch.isnan(out.float()).any()
    with pytest.raises(RuntimeError, match="block_table"):
        flash_attn_with_kvcache(q, kc, vc, kn, kn, cache_seqlens=32, block_table=bt, causal=True)
