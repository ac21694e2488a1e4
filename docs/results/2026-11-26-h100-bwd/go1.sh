#!/bin/bash
# Call 1: wgmma unit test, selftest check, new-vs-old bench, ncu profiles, peers (bwd).
D=.device-bwd
S=$OUT/summary.txt
export PATH=$PATH:/usr/local/cuda/bin
{ date -u; nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader; } > $S 2>&1
chmod +x $D/gmma_test $D/tc_selftest
timeout 20 $D/gmma_test >> $S 2>&1
timeout 100 $D/tc_selftest check > $OUT/check.txt 2>&1; echo "check rc=$?" >> $S
grep -E "FAIL|CHECK|error" $OUT/check.txt | head -20 >> $S
(timeout 60 $D/tc_selftest bench nofwd; FLASHPLUS_BWD_NO_WGMMA=1 timeout 60 $D/tc_selftest bench) > $OUT/bench.txt 2>&1
NC="ncu --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section WarpStateStats --section SchedulerStats --section InstructionStats --section LaunchStats --section Occupancy -c 1"
for d in 128 64; do
  FLASHPLUS_BWD_NO_WGMMA=1 timeout 40 $NC --kernel-name regex:bwd_tc_kernel $D/tc_selftest one 4096 $d 0 > $OUT/ncu_old_d$d.txt 2>&1
  timeout 40 $NC --kernel-name regex:bwd_gmma_kernel $D/tc_selftest one 4096 $d 0 > $OUT/ncu_new_d$d.txt 2>&1
done
(cuobjdump -sass $D/tc_selftest | awk '/Function : .*bwd_gmma_kernel/{f=1;print;next} /Function :/{f=0} f' | grep -E "Function|HGMMA|LDL|STL|WARPGROUP|BAR" | sed 's/^ *//' | cut -c1-100 | uniq -c | head -200) > $OUT/sass.txt 2>&1
cd $D && ONLY=sdpa_flash,sdpa_cudnn MODES=bwd DIMS=64,128 SEQS=1024,4096,16384 OUT=/tmp timeout 100 python3 peer_bench.py > $OUT/peers.txt 2>&1; cd - >/dev/null
echo "== ours (new; old with FLASHPLUS_BWD_NO_WGMMA=1) ==" >> $S
grep BENCH $OUT/bench.txt | grep -v " fwd " >> $S
echo "== peers ==" >> $S; grep -E "PEAK|bwd" $OUT/peers.txt | tail -30 >> $S
for f in $OUT/ncu_*.txt; do echo "== $f" >> $S; grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Shared Memory Throughput|Bank|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|L1/TEX Hit|Executed Ipc A" $f | head -16 >> $S; done
cat $S
