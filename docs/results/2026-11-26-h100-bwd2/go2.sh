#!/bin/bash
# Call 2: A/B (main's binary = base, new, new with FLASHPLUS_BWD_POOL=0), FA2 in the same call,
# per-kernel durations (ncu) at s=1024, then verify (ci.json, gpu.json backward subsets).
D=.device-bwd2
S=$OUT/summary.txt
export PATH=$PATH:/usr/local/cuda/bin LD_LIBRARY_PATH=$PWD/$D/lib:$LD_LIBRARY_PATH
for f in flashplus flashplus_base; do gunzip -c $D/$f.gz > /tmp/$f; chmod +x /tmp/$f; done
T0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader; } > $S 2>&1
B="bench --config configs/models/fa-bench.json --backend cuda --mode bwd --max-time 0.3"
for r in 1 2; do
  timeout 40 /tmp/flashplus_base $B > $OUT/bench_base$r.txt 2>&1
  timeout 40 /tmp/flashplus $B > $OUT/bench_new$r.txt 2>&1
done
FLASHPLUS_BWD_POOL=0 timeout 40 /tmp/flashplus $B > $OUT/bench_newnopool.txt 2>&1
echo "bench t=$(( $(date +%s) - T0 ))" >> $S
cd $D && ONLY=sdpa_flash MODES=bwd DIMS=64,128 SEQS=1024,4096,16384 OUT=/tmp timeout 50 python3 peer_bench.py > $OUT/peers.txt 2>&1; cd - >/dev/null
echo "peers t=$(( $(date +%s) - T0 ))" >> $S
NT="ncu --csv --print-units base --clock-control none --metrics gpu__time_duration.sum -k regex:bwd_"
for v in base new; do
  F=/tmp/flashplus; [ $v = base ] && F=/tmp/flashplus_base
  timeout 25 $NT $F bench --config $D/cfg/k1k.json --backend cuda --mode bwd --warmup 1 --min-samples 2 --max-time 0.01 > $OUT/ncu_$v.csv 2>&1
done
echo "ncu t=$(( $(date +%s) - T0 ))" >> $S
python3 - $OUT >> $S 2>&1 <<'PY'
import sys, re, glob, os, csv, collections, statistics
out = sys.argv[1]
def tf(f):
    r = {}
    for l in open(f):
        m = re.match(r"^fa-bench/(\S+)\s+bwd\s+bf16\s+\d+\s+(\d+)\s.*?\s([\d.]+)\s+[\d.]+\s+[\d.]+%\s+\d+\s+([\d.]+)", l)
        if m: r[(m.group(1), int(m.group(2)))] = (float(m.group(3)), float(m.group(4)))
    return r
runs = {os.path.basename(f)[6:-4]: tf(f) for f in sorted(glob.glob(out + "/bench_*.txt"))}
fa2 = {}
for l in open(out + "/peers.txt"):
    m = re.search(r"FA2\)\s+bwd d=\s*(\d+) s=\s*(\d+) causal=(\w+)\s+([\d.]+) ms\s+([\d.]+)", l)
    if m: fa2[("d%s%s" % (m.group(1), "-causal" if m.group(3) == "True" else ""), int(m.group(2)))] = float(m.group(5))
keys = sorted(runs.get("new1", {}).keys(), key=lambda k: (k[0].replace("-causal", "z"), k[1]))
print("shape            " + " ".join(f"{n:>10s}" for n in runs) + "       FA2  new/FA2 base/FA2")
for k in keys:
    vals = [runs[n].get(k, (0, 0))[1] for n in runs]
    f = fa2.get(k, 0)
    best_new = max(runs["new1"].get(k, (0, 0))[1], runs.get("new2", {}).get(k, (0, 0))[1])
    best_base = max(runs["base1"].get(k, (0, 0))[1], runs.get("base2", {}).get(k, (0, 0))[1])
    print(f"{k[0]:>12s} {k[1]:5d} " + " ".join(f"{v:10.1f}" for v in vals) + f" {f:9.1f}  {best_new / f if f else 0:6.3f}  {best_base / f if f else 0:6.3f}")
for v in ("base", "new"):
    lines = open(f"{out}/ncu_{v}.csv").read().splitlines()
    i = next((k for k, l in enumerate(lines) if l.startswith('"ID"')), None)
    if i is None: print("no ncu", v); continue
    seq = [(r["Kernel Name"].split("<")[0].split("::")[-1], r["Grid Size"], float(r["Metric Value"].replace(",", "")) / 1e3) for r in csv.DictReader(lines[i:]) if r.get("Metric Name") == "gpu__time_duration.sum"]
    print("== ncu", v, " ".join(f"{n}{g}:{t:.0f}" for n, g, t in seq))
PY
echo "== verify" >> $S
{ timeout 45 /tmp/flashplus verify --backend cuda --suite configs/suites/ci.json; echo "ci rc=$?"; } > $OUT/verify_ci.txt 2>&1
grep -E "^verify:|rc=|FAIL" $OUT/verify_ci.txt | head -5 >> $S
L=$(( 232 - ($(date +%s) - T0) ))
{ [ $L -gt 5 ] && timeout $L /tmp/flashplus verify --backend cuda --suite configs/suites/gpu.json --filter window/bwd --filter tiles/bwd --filter batch/bwd --filter deterministic/; echo "gpu rc=$?"; } > $OUT/verify_gpu.txt 2>&1
grep -E "^verify:|rc=|FAIL" $OUT/verify_gpu.txt | head -5 >> $S
echo "gpu PASS cases: $(grep -oE "PASS +[^ ]+" $OUT/verify_gpu.txt | sort -u | wc -l) FAIL lines: $(grep -c FAIL $OUT/verify_gpu.txt)" >> $S
echo "t=$(( $(date +%s) - T0 ))" >> $S
cat $S
