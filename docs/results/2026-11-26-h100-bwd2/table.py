import sys, re, glob, os
out = sys.argv[1]
def tf(f):
    r = {}
    for l in open(f):
        m = re.match(r"^fa-bench/(\S+)\s+bwd\s+bf16\s+\d+\s+(\d+)\s.*?\s([\d.]+)\s+[\d.]+\s+[\d.]+%\s+\d+\s+([\d.]+)", l)
        if m: r[(m.group(1), int(m.group(2)))] = float(m.group(4))
    return r
runs = {os.path.basename(f)[6:-4]: tf(f) for f in sorted(glob.glob(out + "/bench_*.txt"))}
fa2 = {}
for l in open(out + "/peers.txt"):
    m = re.search(r"FA2\)\s+bwd d=\s*(\d+) s=\s*(\d+) causal=(\w+)\s+([\d.]+) ms\s+([\d.]+)", l)
    if m: fa2[("d%s%s" % (m.group(1), "-causal" if m.group(3) == "True" else ""), int(m.group(2)))] = float(m.group(5))
names = list(runs)
print("shape             " + " ".join(f"{n:>8s}" for n in names) + "      FA2  r2/FA2 peel/FA2 peel/r2")
for d in (64, 128):
    for c in ("", "-causal"):
        for s in (1024, 4096, 16384):
            k = (f"d{d}{c}", s)
            v = [runs[n].get(k, 0) for n in names]
            r2 = sum(runs[n].get(k, 0) for n in names if n.startswith("r2")) / max(1, sum(1 for n in names if n.startswith("r2")))
            pe = sum(runs[n].get(k, 0) for n in names if n.startswith("peel")) / max(1, sum(1 for n in names if n.startswith("peel")))
            f = fa2.get(k, 0)
            print(f"{k[0]:>12s} {s:5d} " + " ".join(f"{x:8.1f}" for x in v) + f" {f:8.1f} {r2 / f if f else 0:7.3f} {pe / f if f else 0:7.3f} {pe / r2 if r2 else 0:7.3f}")
