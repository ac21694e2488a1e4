#!/usr/bin/env bash
# h-vbwd call 3 (after merging main's backward round 2): correctness of the final binary (new =
# merge + Philox shared by the four lanes of a quad column), then A/B benches in one call:
# main (ce85a16) vs new on fa-bench bwd; pre-merge h-vbwd vs merge (no sharing) vs new on the
# dropout backward; pre-merge vs new on the varlen backward.
set -uo pipefail
D=$PWD/.device-vbwd
export PATH=$PATH:/usr/local/cuda/bin LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-}
for f in main pre merge new; do gunzip -c $D/fp_$f.gz > /tmp/fp_$f; chmod +x /tmp/fp_$f; done
CFG=$D/configs; S=$OUT/summary.txt; T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( 232 - ($(date +%s) - T0) )); }
tl() { local l=$(( $(left) - 10 )); if [ $1 -lt $l ]; then echo $1; elif [ $l -gt 1 ]; then echo $l; else echo 1; fi; }
step() { echo "== $1 (t=$(el))" | tee -a $S; }
vsum() { echo "rc=$1 $(grep -E '^verify:' $2) FAIL-lines=$(grep -c FAIL $2)" | tee -a $S; grep FAIL $2 | head -3 | tee -a $S; }
{ date -u; nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader; } | tee $S
step "verify ci.json (new)"
timeout $(tl 40) /tmp/fp_new verify --backend cuda --suite $CFG/suites/ci.json > $OUT/v-ci.log 2>&1; vsum $? $OUT/v-ci.log
step "memcheck ci.json varlen_bwd_tc + dropout_bwd_tc (new)"
timeout $(tl 25) compute-sanitizer --tool memcheck --error-exitcode 9 /tmp/fp_new verify --backend cuda --suite $CFG/suites/ci.json --filter varlen_bwd_tc --filter dropout_bwd_tc > /tmp/mc.log 2>&1; echo "rc=$? $(grep -E '^verify:|ERROR SUMMARY' /tmp/mc.log | tr '\n' ' ')" | tee -a $S
step "verify gpu_varlen.json bwd_tc + bwd_tc_det (new)"
timeout $(tl 36) /tmp/fp_new verify --backend cuda --suite $CFG/suites/gpu_varlen.json --filter bwd_tc > $OUT/v-gv.log 2>&1; vsum $? $OUT/v-gv.log
echo "PASS cases: $(grep -oE 'PASS +[^ ]+' $OUT/v-gv.log | sort -u | wc -l)" | tee -a $S
B="bench --backend cuda --mode bwd"
step "fa-bench bwd: main, new"
for f in main new; do timeout $(tl 22) /tmp/fp_$f $B --config $CFG/models/fa-bench.json --max-time 0.25 > /tmp/fa_${f}1.txt 2>/dev/null; done
step "dropout bwd: pre, merge, new"
for f in pre merge new; do timeout $(tl 12) /tmp/fp_$f $B --config $CFG/models/llama3-8b-dropout.json --max-time 0.2 > /tmp/drop_$f.txt 2>/dev/null
  timeout $(tl 7) /tmp/fp_$f $B --config $D/vb-drop64.json --max-time 0.2 >> /tmp/drop_$f.txt 2>/dev/null; done
step "varlen bwd: pre, new"
for f in pre new; do timeout $(tl 15) /tmp/fp_$f $B --config $D/vb-varlen.json --max-time 0.2 > /tmp/var_$f.txt 2>/dev/null; done
if [ $(left) -gt 42 ]; then step "fa-bench bwd again: new, main"
  for f in new main; do timeout $(tl 20) /tmp/fp_$f $B --config $CFG/models/fa-bench.json --max-time 0.25 > /tmp/fa_${f}2.txt 2>/dev/null; done; fi
step done
python3 - "$OUT" /tmp >> $S 2>&1 <<'PY'
import sys,re,glob,os
out,tmp=sys.argv[1],sys.argv[2]
def rows(path):
    r={}
    if not os.path.exists(path): return r
    for l in open(path):
        m=re.match(r'(\S+)\s+bwd\s+\S+\s+(\d+)\s+(\d+)\s+\S+\s+\d+\s+(\S+)(.*?)\s(bwd:\S+)\s+([\d.]+)\s+[\d.]+\s+\S+%\s+\d+\s+([\d.]+)',l)
        if m: r[(m.group(1),m.group(2),m.group(3),m.group(5).strip())]=(float(m.group(7)),float(m.group(8)))
    return r
def table(title,files):
    d={k:rows(v) for k,v in files}
    keys=[]
    for k,_ in files:
        for x in d[k]:
            if x not in keys: keys.append(x)
    print('--',title,'(ms / TFLOP/s)'); print('%-40s'%'case'+''.join('%18s'%k for k,_ in files))
    for x in keys:
        print('%-40s'%(x[0].split('/')[-1]+' '+x[1]+'x'+x[2]+' '+x[3][:12])+''.join(('%9.3f %7.1f '%d[k][x]) if x in d[k] else '%18s'%'-' for k,_ in files))
table('fa-bench bwd',[(n,f'{tmp}/fa_{n}.txt') for n in ['main1','new1','main2','new2']])
table('dropout bwd',[(n,f'{tmp}/drop_{n}.txt') for n in ['pre','merge','new']])
table('varlen bwd',[(n,f'{tmp}/var_{n}.txt') for n in ['pre','new']])
PY
for f in /tmp/fa_*.txt /tmp/drop_*.txt /tmp/var_*.txt; do echo "#### $f"; cat $f; done > $OUT/bench.txt 2>/dev/null; cp /tmp/mc.log $OUT/memcheck.log
echo "t=$(el)" >> $S
cat $S
