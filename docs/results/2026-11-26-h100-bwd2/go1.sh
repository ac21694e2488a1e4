#!/bin/bash
# Call 1 (profile, current kernel = main's binary): per-kernel durations of our backward over a seqlen
# sweep (per-block overhead fit), FA2's kernels on the losing shapes, ncu detail of the main kernel.
D=.device-bwd2
S=$OUT/summary.txt
export PATH=$PATH:/usr/local/cuda/bin LD_LIBRARY_PATH=$PWD/$D/lib:$LD_LIBRARY_PATH
FP=$D/flashplus_base; chmod +x $FP
T0=$(date +%s)
{ date -u; nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader; which nsys ncu; } > $S 2>&1
NT="ncu --csv --print-units base --clock-control none --metrics gpu__time_duration.sum"
for v in d64 d64c d128 d128c; do
  timeout 40 $NT -k regex:bwd_ $FP bench --config $D/cfg/$v.json --backend cuda --mode bwd --warmup 1 --min-samples 2 --max-time 0.01 > $OUT/sweep_$v.csv 2>&1
  echo "sweep $v rc=$? t=$(( $(date +%s) - T0 ))" >> $S
done
timeout 40 $NT python3 $D/fa2prof.py 64,1024,1 128,1024,1 64,1024,0 64,4096,1 128,1024,0 > $OUT/fa2_kernels.csv 2>&1
echo "fa2 rc=$? t=$(( $(date +%s) - T0 ))" >> $S
NC="ncu --clock-control none --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats --metrics sm__cycles_active.avg,sm__cycles_elapsed.avg,sm__cycles_active.max,sm__cycles_active.min,regex:smsp__average_warps_issue_stalled_(barrier|long_scoreboard|wait|gmma|mio_throttle|short_scoreboard)_per_issue_active\.ratio -k regex:bwd_gmma -c 1"
timeout 30 $NC $FP bench --config $D/cfg/d64c1k.json --backend cuda --mode bwd --warmup 0 --min-samples 1 --max-time 0.01 > $OUT/ncu_d64c1k.txt 2>&1
echo "ncu rc=$? t=$(( $(date +%s) - T0 ))" >> $S
timeout 45 $FP bench --config $D/cfg/d64c1k.json --config $D/cfg/d128c.json --config $D/cfg/d64.json --backend cuda --mode bwd --max-time 0.3 > $OUT/bench.txt 2>&1
echo "bench rc=$? t=$(( $(date +%s) - T0 ))" >> $S
cd $D && ONLY=sdpa_flash MODES=bwd DIMS=64,128 SEQS=1024,4096 OUT=/tmp timeout 60 python3 peer_bench.py > $OUT/peers.txt 2>&1; cd - >/dev/null
echo "peers rc=$? t=$(( $(date +%s) - T0 ))" >> $S
# summaries
python3 - "$OUT" >> $S 2>&1 <<'PY'
import csv, sys, glob, os, collections, statistics
out = sys.argv[1]
def rows(f):
    lines = open(f).read().splitlines()
    i = next((k for k, l in enumerate(lines) if l.startswith('"ID"')), None)
    if i is None: return []
    return [r for r in csv.DictReader(lines[i:]) if r.get("Metric Name") == "gpu__time_duration.sum"]
for f in sorted(glob.glob(out + "/sweep_*.csv")) + [out + "/fa2_kernels.csv"]:
    print("==", os.path.basename(f))
    agg = collections.OrderedDict()
    for r in rows(f):
        key = (r["Kernel Name"][:60], r["Grid Size"], r["Block Size"])
        agg.setdefault(key, []).append(float(r["Metric Value"]) / 1e3)
    for (k, g, bs), v in agg.items():
        print(f"  {k:60s} grid {g:16s} blk {bs:12s} n={len(v):2d} med {statistics.median(v):9.1f} us")
PY
grep -E "Duration|Elapsed Cycles|SM Active Cycles|Compute \(SM\) Throughput|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|highest-utilized|Waves Per SM|Registers Per|sm__cycles|stalled" $OUT/ncu_d64c1k.txt | sed 's/  \+/ /g' | head -30 >> $S
echo "== bench" >> $S; grep -E "^p" $OUT/bench.txt | head -30 >> $S
echo "== peers" >> $S; grep -E "PEAK|bwd" $OUT/peers.txt | tail -12 >> $S
cat $S
