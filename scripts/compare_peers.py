#!/usr/bin/env python3
"""Side by side: a `flashplus bench --json` result and ../shared/tools/peer_bench.py's peers.json.

    scripts/compare_peers.py BENCH.json PEERS.json --out docs/ [--dtype bf16] [--no-plot]

Both files must come from the same device (the GPU names must match; --allow-other-device
overrides). Cases are joined on (head_dim, causal, mode, seqlen, batch, nheads) for our cases of
one dtype (peer_bench runs bf16); use configs/models/fa-bench.json for FlashAttention's shapes.
Writes, atomically, into the --out folder:
  peers-<fingerprint>.md   the table: TFLOP/s of ours, FA2 (sdpa_flash), cuDNN (sdpa_cudnn),
                           Flex (flex(triton)), and the ratios ours/FA2 and ours/cuDNN;
  peers-<fingerprint>.png  TFLOP/s vs seqlen, one line per implementation, one panel per
                           (head_dim, causal, mode) (needs matplotlib: pip install matplotlib).
Both tools count FLOPs the same way (4*b*h*s*s*d, halved when causal; bwd 2.5x fwd), so TFLOP/s
compare directly. Exit status: 0 ok, 2 bad input or missing matplotlib.
"""
import argparse
import json
import math
import os
import re
import sys
import tempfile

PEERS = [("FA2", "sdpa_flash(FA2)"), ("cuDNN", "sdpa_cudnn"), ("Flex", "flex(triton)")]
IMPLS = ["ours"] + [p[0] for p in PEERS]


def fail(msg):
    print(f"compare_peers.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def load(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        fail(f"{path}: cannot read the {what}: {e.strerror}")
    except json.JSONDecodeError as e:
        fail(f"{path}: the {what} is not valid JSON: {e}")


def _public(tmp):
    """mkstemp creates 0600; give the file the mode a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def write_atomic(path, data, binary=False):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp.", dir=d)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            f.write(data)
        _public(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def join(bench, peers, dtype):
    """{(d, causal, mode, s, b, h): {impl: tflops}} over the keys our bench has."""
    ours = {}
    for c in bench.get("cases", []):
        if c.get("status", "ok") != "ok" or c.get("mode") not in ("fwd", "bwd") or c.get("dtype") != dtype:
            continue
        if c.get("seqlen_q") != c.get("seqlen_k") or c.get("window_left", -1) >= 0 \
                or c.get("softcap", 0) or c.get("alibi", False):
            continue  # peer_bench measures plain (causal or not) attention only
        key = (c["head_dim"], bool(c["causal"]), c["mode"], c["seqlen_q"], c["batch"], c["nheads"])
        ours[key] = {"ours": c["tflops"]}
    names = dict((p[1], p[0]) for p in PEERS)
    for r in peers.get("rows", []):
        impl = names.get(r.get("backend"))
        if impl is None or r.get("mode") not in ("fwd", "bwd"):
            continue
        key = (r["d"], bool(r["causal"]), r["mode"], r["s"], r["b"], r["h"])
        if key in ours:
            ours[key][impl] = r["tflops"]
    return ours


def fmt(x):
    return "–" if x is None else f"{x:.1f}" if x >= 1 else f"{x:.3g}"


def ratio(a, b):
    return "–" if a is None or not b else f"{a / b:.2f}"


def markdown(bench, peers, rows, dtype, bench_path, peers_path):
    dev = bench["device"]
    meta = bench.get("meta", {})
    out = [f"# Ours vs peers on {dev['name']}", ""]
    out.append(f"* ours: `{os.path.basename(bench_path)}`, flashplus {meta.get('flashplus_version', '?')} "
               f"git {meta.get('git_revision', '?')}, {meta.get('date', '?')}, backend {dev.get('backend')}, "
               f"fingerprint `{dev.get('fingerprint')}`, tuned table: {dev.get('tuned_table', '?')}")
    out.append(f"* peers: `{os.path.basename(peers_path)}` (../shared/tools/peer_bench.py), torch "
               f"{peers.get('torch', '?')}, triton {peers.get('triton', '?')}, GPU {peers.get('gpu', '?')}; "
               f"peaks: bf16 matmul {peers.get('peak_mm', float('nan')):.0f} TFLOP/s, copy "
               f"{peers.get('peak_bw', float('nan')):.2f} TB/s")
    out.append(f"* dtype {dtype}; TFLOP/s = 4·b·h·s²·d (halved when causal), bwd 2.5× fwd, the same "
               "convention on both sides (cli/flops.h); ours is the median of `flashplus bench`, "
               "peers the median of triton.testing.do_bench. – = not measured.")
    out.append("")
    out.append("| head_dim | causal | mode | seqlen | batch × heads | ours | FA2 | cuDNN | Flex | ours/FA2 | ours/cuDNN |")
    out.append("|---:|:---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in sorted(rows, key=lambda k: (k[0], k[1], k[2] != "fwd", k[3], k[4], k[5])):
        d, causal, mode, s, b, h = key
        v = rows[key]
        out.append(f"| {d} | {'yes' if causal else 'no'} | {mode} | {s} | {b} × {h} | "
                   + " | ".join(fmt(v.get(i)) for i in IMPLS)
                   + f" | {ratio(v.get('ours'), v.get('FA2'))} | {ratio(v.get('ours'), v.get('cuDNN'))} |")
    out.append("")
    return "\n".join(out)


def plot(rows, title, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(k[0], k[1], k[2]) for k in rows}, key=lambda p: (p[0], p[1], p[2] != "fwd"))
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    styles = {"ours": "o-", "FA2": "s--", "cuDNN": "^--", "Flex": "d--"}
    for ax, (d, causal, mode) in zip(axes.flat, panels):
        keys = sorted((k for k in rows if k[:3] == (d, causal, mode)), key=lambda k: k[3])
        for impl in IMPLS:
            pts = [(k[3], rows[k][impl]) for k in keys if rows[k].get(impl) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[impl], label=impl)
        ax.set_xscale("log", base=2)
        seqs = sorted({k[3] for k in keys})
        ax.set_xticks(seqs)
        ax.set_xticklabels([str(x) for x in seqs])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_title(f"d={d} {'causal' if causal else 'no mask'} {mode}")
        ax.set_xlabel("seqlen")
        ax.set_ylabel("TFLOP/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp.", suffix=".png", dir=d)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        _public(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", help="flashplus bench --json output")
    ap.add_argument("peers", help="peers.json from ../shared/tools/peer_bench.py")
    ap.add_argument("--out", required=True, help="folder for peers-<fingerprint>.md and .png")
    ap.add_argument("--dtype", default="bf16", help="our dtype to compare (peer_bench runs bf16)")
    ap.add_argument("--no-plot", action="store_true", help="write the table only")
    ap.add_argument("--allow-other-device", action="store_true",
                    help="join even when the device names differ")
    a = ap.parse_args()

    if not a.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            fail("matplotlib is needed for the plot: `pip install matplotlib` (or pass --no-plot)")
    if not os.path.isdir(a.out):
        fail(f"{a.out}: no such folder")
    bench = load(a.bench, "bench result")
    peers = load(a.peers, "peers file")
    if bench.get("tool") != "flashplus bench" or "cases" not in bench or "device" not in bench:
        fail(f"{a.bench}: not a `flashplus bench --json` result")
    if "rows" not in peers:
        fail(f"{a.peers}: not a peer_bench.py peers.json (no 'rows')")
    ours_dev, peer_dev = bench["device"].get("name", ""), peers.get("gpu", "")
    if ours_dev != peer_dev and not a.allow_other_device:
        fail(f"the files come from different devices: bench ran on '{ours_dev}', peers on "
             f"'{peer_dev}' (--allow-other-device to join anyway)")
    rows = join(bench, peers, a.dtype)
    if not rows:
        fail(f"no {a.dtype} fwd/bwd case of {a.bench} is a plain (causal or not) attention case")
    matched = sum(1 for v in rows.values() if len(v) > 1)
    if matched == 0:
        print(f"compare_peers.py: warning: no case of {a.bench} has a peer measurement with the same "
              "(head_dim, causal, mode, seqlen, batch, heads); run configs/models/fa-bench.json",
              file=sys.stderr)
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", bench["device"].get("fingerprint") or "device")
    md_path = os.path.join(a.out, f"peers-{slug}.md")
    png_path = os.path.join(a.out, f"peers-{slug}.png")
    text = markdown(bench, peers, rows, a.dtype, a.bench, a.peers)
    if not a.no_plot:
        plot(rows, f"TFLOP/s on {ours_dev} ({a.dtype})", png_path)
        text += f"\n![TFLOP/s vs seqlen]({os.path.basename(png_path)})\n"
    write_atomic(md_path, text)
    print(f"wrote {md_path}" + ("" if a.no_plot else f" and {png_path}") +
          f" ({len(rows)} case(s), {matched} with peer numbers)")


if __name__ == "__main__":
    main()
