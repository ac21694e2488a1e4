"""Times the peers' decode kernels (PyTorch SDPA: cuDNN and FlashAttention-2) under the two
device-side protocols `flashplus bench` offers, so that ours and theirs are compared under the
same one (docs/PERF.md "KV-cache decoding, round 8"):

  flush:  triton's do_bench, as ../shared/tools/peer_bench.py runs it (a 256 MB memset before each
          sample: the L2 left full of dirty lines);
  stream: a spin kernel (torch.cuda._sleep) before each sample's start event, two k/v sets used in
          turn so that nothing of the previous sample is in the L2 (`flashplus bench --timing
          stream`).

Shapes: one query token, GQA 32/8 heads, d 128, bf16, a contiguous (b, hk, s, d) cache; TB/s =
bytes of k and v / time. Usage on the device: python3 peer_decode_protocols.py  (env: REPS=200)
"""
import os
import statistics

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

dev = "cuda"
reps = int(os.environ.get("REPS", "200"))


def time_stream(fns):
    """Median ms of fns[i % len(fns)]() with a ~300 us spin kernel before each start event."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i in range(20):
        fns[i % len(fns)]()
    torch.cuda.synchronize()
    # _sleep takes clock cycles: about 300 us at the H100's 1.98 GHz.
    cycles = int(300e-6 * 1.98e9)
    out = []
    for i in range(reps):
        torch.cuda._sleep(cycles)
        start.record()
        fns[i % len(fns)]()
        stop.record()
        stop.synchronize()
        out.append(start.elapsed_time(stop))
    return statistics.median(out)


def main():
    print(f"device {torch.cuda.get_device_name()}", flush=True)
    for b, sk in [(1, 131072), (8, 16384), (64, 4096)]:
        h, hk, d = 32, 8, 128
        sets = []
        for _ in range(2):
            q = torch.randn(b, h, 1, d, device=dev, dtype=torch.bfloat16)
            k = torch.randn(b, hk, sk, d, device=dev, dtype=torch.bfloat16)
            sets.append((q, k, torch.randn_like(k)))
        byts = 2 * sets[0][1].numel() * 2
        for name, kind in [("sdpa_flash(FA2)", SDPBackend.FLASH_ATTENTION),
                           ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)]:
            def make(s):
                def f():
                    with sdpa_kernel([kind]):
                        return F.scaled_dot_product_attention(s[0], s[1], s[2], enable_gqa=True)
                return f
            fns = [make(s) for s in sets]
            ms_flush = triton.testing.do_bench(fns[0], warmup=50, rep=200, return_mode="median")
            ms_stream = time_stream(fns)
            print(f"decode {name:16s} b={b:3d} sk={sk:6d} flush {ms_flush:.4f} ms "
                  f"{byts / ms_flush / 1e9:.3f} TB/s | stream {ms_stream:.4f} ms "
                  f"{byts / ms_stream / 1e9:.3f} TB/s", flush=True)
        del sets


if __name__ == "__main__":
    main()
