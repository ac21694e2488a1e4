# Rotary embedding kernel (API.md §7.2) with upstream's name and signature. Upstream launches a
# Triton kernel; this one is plain PyTorch (no Triton needed, any device, torch.compile-able):
# the first rotary_dim channels are rotated in fp32 and rounded to x's dtype, the rest copied.
from typing import Optional, Union

import torch


def _positions_cos_sin(cos, sin, seqlen_offsets, cu_seqlens, batch, seqlen, total, device):
    """cos/sin gathered per token: (seqlen, R/2) or (batch, seqlen, R/2), or (total, R/2) in
    varlen mode. Positions past seqlen_ro (only reachable with tensor offsets) use cos=1, sin=0."""
    seqlen_ro = cos.shape[0]
    if cu_seqlens is None and isinstance(seqlen_offsets, int):
        return (cos[seqlen_offsets:seqlen_offsets + seqlen],
                sin[seqlen_offsets:seqlen_offsets + seqlen])
    if cu_seqlens is None:
        pos = torch.arange(seqlen, device=device).unsqueeze(0) + seqlen_offsets.to(
            device=device, dtype=torch.long).unsqueeze(1)  # (batch, seqlen)
    else:
        tok = torch.arange(total, device=device)
        cu = cu_seqlens.to(device=device, dtype=torch.long)
        seq = torch.searchsorted(cu[1:], tok, right=True).clamp_(max=batch - 1)
        pos = tok - cu[seq]
        if isinstance(seqlen_offsets, int):
            pos = pos + seqlen_offsets
        else:
            pos = pos + seqlen_offsets.to(device=device, dtype=torch.long)[seq]
        pos = torch.where(tok < cu[-1], pos, seqlen_ro)  # tokens of no sequence stay as they are
    half = cos.shape[1]
    cos = torch.cat([cos, cos.new_ones((1, half))])
    sin = torch.cat([sin, sin.new_zeros((1, half))])
    pos = pos.clamp(0, seqlen_ro)
    return cos[pos], sin[pos]


def apply_rotary(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    seqlen_offsets: Union[int, torch.Tensor] = 0,
    cu_seqlens: Optional[torch.Tensor] = None,
    max_seqlen: Optional[int] = None,
    interleaved=False,
    inplace=False,
    conjugate=False,
) -> torch.Tensor:
    """
    Arguments:
        x: (batch, seqlen, nheads, headdim) if cu_seqlens is None
            else (total_seqlen, nheads, headdim).
        cos: (seqlen_ro, rotary_dim / 2)
        sin: (seqlen_ro, rotary_dim / 2)
        seqlen_offsets: integer or integer tensor of size (batch,)
        cu_seqlens: (batch + 1,) or None
        max_seqlen: int
        interleaved: rotate pairs (2j, 2j+1) (GPT-J) instead of (j, j + rotary_dim/2) (GPT-NeoX).
        inplace: write into x (any strides) and return it.
        conjugate: rotate by the negative angle (the backward).
    Returns:
        y: like x, rotated in its first rotary_dim channels.
    """
    is_varlen = cu_seqlens is not None
    if not is_varlen:
        batch, seqlen, nheads, headdim = x.shape
        total = None
    else:
        assert max_seqlen is not None, "If cu_seqlens is passed in, then max_seqlen must be passed"
        total, nheads, headdim = x.shape
        batch = cu_seqlens.shape[0] - 1
        seqlen = max_seqlen
    seqlen_ro, rotary_dim = cos.shape
    assert sin.shape == cos.shape
    rotary_dim *= 2
    assert rotary_dim <= headdim, "rotary_dim must be <= headdim"
    assert headdim <= 256, "Only support headdim <= 256"
    assert seqlen_ro >= seqlen, "seqlen_ro must be >= seqlen"
    if isinstance(seqlen_offsets, torch.Tensor):
        assert seqlen_offsets.shape == (batch,)
        assert seqlen_offsets.dtype in (torch.int32, torch.int64)
    else:
        assert seqlen_offsets + seqlen <= seqlen_ro

    c, s = _positions_cos_sin(cos, sin, seqlen_offsets, cu_seqlens, batch, seqlen, total,
                              x.device)
    c = c.to(torch.float32).unsqueeze(-2)  # broadcast over heads
    s = s.to(torch.float32).unsqueeze(-2)
    if conjugate:
        s = -s
    xr = x[..., :rotary_dim].to(torch.float32)
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        y = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = xr[..., :rotary_dim // 2], xr[..., rotary_dim // 2:]
        y = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    if inplace:
        x[..., :rotary_dim].copy_(y)
        return x
    out = x.clone()
    out[..., :rotary_dim] = y
    return out
