"""The binding choice, measured: the same tiny CPU forward (b=h=sq=sk=1, d=8, one thread) called
through ctypes (a flashplus_fwd_args struct and five DLTensors filled per call from torch tensors)
and through flashplus._core. Both include the same library call, so the difference is the binding.
Usage: python3 python/bench/binding_ctypes_vs_core.py   (prints us/call, 3 alternating rounds)"""
import ctypes, time, torch, flashplus, os
from flashplus import _core
lib = ctypes.CDLL(os.path.join(os.path.dirname(flashplus.__file__), "lib", "libflashplus.so.0.1"))
class DLDevice(ctypes.Structure): _fields_=[("device_type",ctypes.c_int),("device_id",ctypes.c_int32)]
class DLDataType(ctypes.Structure): _fields_=[("code",ctypes.c_uint8),("bits",ctypes.c_uint8),("lanes",ctypes.c_uint16)]
class DLTensor(ctypes.Structure): _fields_=[("data",ctypes.c_void_p),("device",DLDevice),("ndim",ctypes.c_int32),("dtype",DLDataType),("shape",ctypes.POINTER(ctypes.c_int64)),("strides",ctypes.POINTER(ctypes.c_int64)),("byte_offset",ctypes.c_uint64)]
class Opts(ctypes.Structure): _fields_=[("backend",ctypes.c_int32),("num_threads",ctypes.c_int32),("stream",ctypes.c_void_p),("seed",ctypes.c_uint64),("offset",ctypes.c_uint64)]
P=ctypes.POINTER(DLTensor)
class Fwd(ctypes.Structure): _fields_=[("struct_size",ctypes.c_uint32)]+[(n,P) for n in "q k v out lse alibi sdm".split()]+[("p",ctypes.c_float),("scale",ctypes.c_float),("causal",ctypes.c_int32),("wl",ctypes.c_int32),("wr",ctypes.c_int32),("softcap",ctypes.c_float),("rs",ctypes.c_int32),("opts",Opts)]
codes={torch.float32:(2,32),torch.float16:(2,16),torch.bfloat16:(4,16)}
def dl(t):
    d=DLTensor(); d.data=t.data_ptr(); d.device=DLDevice(1,0); d.ndim=t.dim(); c,b=codes[t.dtype]; d.dtype=DLDataType(c,b,1)
    sh=(ctypes.c_int64*t.dim())(*t.shape); st=(ctypes.c_int64*t.dim())(*t.stride()); d.shape=sh; d.strides=st; d._keep=(sh,st); return d
f=lib.flashplus_mha_fwd; f.argtypes=[ctypes.POINTER(Fwd)]; f.restype=ctypes.c_int
q=torch.randn(1,1,1,8); o=torch.empty_like(q); l=torch.empty(1,1,1)
def via_ctypes():
    a=Fwd(); a.struct_size=ctypes.sizeof(Fwd); tq,tk,tv,to,tl=dl(q),dl(q),dl(q),dl(o),dl(l)
    a.q=ctypes.pointer(tq); a.k=ctypes.pointer(tk); a.v=ctypes.pointer(tv); a.out=ctypes.pointer(to); a.lse=ctypes.pointer(tl)
    a.wl=-1; a.wr=-1; a.opts.backend=1; a.opts.num_threads=1
    r=f(ctypes.byref(a)); assert r==0
def via_core(): _core.mha_fwd(q,q,q,o,l,None,None,0.0,0.0,False,-1,-1,0.0,False,1,1,0,0,0)
assert ctypes.sizeof(Fwd) == 128  # sizeof(flashplus_fwd_args) on x86-64
for rnd in range(3):
    for name,fn in (("ctypes",via_ctypes),("_core",via_core)):
        N=5000; t0=time.perf_counter()
        for _ in range(N): fn()
        print(rnd,name, round((time.perf_counter()-t0)/N*1e6,2),"us/call")
