/* flashplus._core: the Python extension over libflashplus's C ABI (flashplus/flashplus_c.h).
 *
 * Built on CPython's stable ABI (abi3, Python >= 3.9) and linked against no framework: one build
 * serves every Python and torch version. Tensors arrive as torch.Tensor objects (read through
 * their attributes: data_ptr, shape, stride, dtype, device; no DLPack capsule per call, which
 * costs microseconds in torch) or as any object with __dlpack__ (NumPy, CuPy, JAX). Outputs are
 * preallocated by the caller. Each entry point is described by a table of its arguments (kind
 * and offset in the C args struct), so the five functions share one parser.
 * The GIL is released while the library runs. */
#define Py_LIMITED_API 0x03090000
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>

#include "flashplus/flashplus_c.h"

/* ---- module state (one interpreter) ---------------------------------------------------------- */
static PyObject* g_error_type;   /* flashplus._core.FlashPlusError (RuntimeError) */
static PyObject* g_torch_tensor; /* torch.Tensor once register_torch() ran, else NULL */
static PyObject* g_torch_dtypes; /* dict: torch dtype -> (code << 8) | bits */
static int g_torch_gpu_device = kDLCUDA; /* kDLROCM under a ROCm build of torch */
static PyObject *s_data_ptr, *s_shape, *s_stride, *s_dtype, *s_is_cuda, *s_is_cpu, *s_get_device,
    *s_device, *s_dlpack;

#define MAX_TENSORS 16

typedef struct {
  DLTensor t;
  int64_t shape[4];
  int64_t strides[4];
  PyObject* keep; /* a DLPack capsule kept alive for the call */
} Slot;

typedef struct {
  Slot slots[MAX_TENSORS];
  int used;
} Slots;

static void release(Slots* s) {
  for (int i = 0; i < s->used; ++i) Py_XDECREF(s->slots[i].keep);
  s->used = 0;
}

static int fail(PyObject* exc, const char* name, const char* what) {
  PyErr_Format(exc, "%s: %s", name, what);
  return -1;
}

/* Reads a tuple of ints (a torch.Size or stride()) into dst; -1 on error. */
static int read_dims(PyObject* tup, int64_t* dst, int ndim, const char* name) {
  for (int i = 0; i < ndim; ++i) {
    PyObject* it = PyTuple_GetItem(tup, i);
    if (it == NULL) return -1;
    long long x = PyLong_AsLongLong(it);
    if (x == -1 && PyErr_Occurred()) return -1;
    dst[i] = (int64_t)x;
  }
  (void)name;
  return 0;
}

static int from_torch(PyObject* obj, const char* name, Slot* s) {
  int rc = -1;
  PyObject *ptr = NULL, *shape = NULL, *stride = NULL, *dtype = NULL, *is_cuda = NULL;
  shape = PyObject_GetAttr(obj, s_shape);
  if (shape == NULL) goto done;
  Py_ssize_t ndim = PyTuple_Size(shape);
  if (ndim < 0) goto done;
  if (ndim > 4) {
    PyErr_Format(PyExc_ValueError, "%s has %d dimensions; flashplus takes at most 4", name, (int)ndim);
    goto done;
  }
  s->t.ndim = (int32_t)ndim;
  if (read_dims(shape, s->shape, (int)ndim, name) < 0) goto done;
  stride = PyObject_CallMethodObjArgs(obj, s_stride, NULL);
  if (stride == NULL || read_dims(stride, s->strides, (int)ndim, name) < 0) goto done;
  dtype = PyObject_GetAttr(obj, s_dtype);
  if (dtype == NULL) goto done;
  PyObject* code = PyDict_GetItem(g_torch_dtypes, dtype); /* borrowed */
  if (code == NULL) {
    PyObject* txt = PyObject_Str(dtype);
    PyErr_Format(PyExc_TypeError, "%s has dtype %S; flashplus takes float16, bfloat16, float32 "
                 "(and int32 for index tensors)", name, txt ? txt : Py_None);
    Py_XDECREF(txt);
    goto done;
  }
  long c = PyLong_AsLong(code);
  s->t.dtype.code = (uint8_t)(c >> 8);
  s->t.dtype.bits = (uint8_t)(c & 0xff);
  s->t.dtype.lanes = 1;
  is_cuda = PyObject_GetAttr(obj, s_is_cuda);
  if (is_cuda == NULL) goto done;
  if (is_cuda == Py_True) {
    PyObject* idx = PyObject_CallMethodObjArgs(obj, s_get_device, NULL);
    if (idx == NULL) goto done;
    s->t.device.device_type = (DLDeviceType)g_torch_gpu_device;
    s->t.device.device_id = (int32_t)PyLong_AsLong(idx);
    Py_DECREF(idx);
  } else {
    PyObject* is_cpu = PyObject_GetAttr(obj, s_is_cpu);
    if (is_cpu == NULL) goto done;
    int cpu = is_cpu == Py_True;
    Py_DECREF(is_cpu);
    if (!cpu) {
      PyObject* dev = PyObject_GetAttr(obj, s_device);
      PyObject* txt = dev ? PyObject_Str(dev) : NULL;
      PyErr_Format(PyExc_RuntimeError, "%s is on device %S; flashplus runs CPU and CUDA (ROCm) "
                   "tensors", name, txt ? txt : Py_None);
      Py_XDECREF(txt);
      Py_XDECREF(dev);
      goto done;
    }
    s->t.device.device_type = kDLCPU;
    s->t.device.device_id = 0;
  }
  ptr = PyObject_CallMethodObjArgs(obj, s_data_ptr, NULL);
  if (ptr == NULL) goto done;
  s->t.data = PyLong_AsVoidPtr(ptr);
  if (s->t.data == NULL && PyErr_Occurred()) goto done;
  s->t.shape = s->shape;
  s->t.strides = s->strides;
  s->t.byte_offset = 0;
  rc = 0;
done:
  Py_XDECREF(ptr);
  Py_XDECREF(shape);
  Py_XDECREF(stride);
  Py_XDECREF(dtype);
  Py_XDECREF(is_cuda);
  return rc;
}

/* DLPack 1.0's versioned managed tensor (the layout of the "dltensor_versioned" capsule). */
typedef struct {
  uint32_t major, minor;
} FpDLPackVersion;
typedef struct {
  FpDLPackVersion version;
  void* manager_ctx;
  void (*deleter)(void* self);
  uint64_t flags;
  DLTensor dl_tensor;
} FpDLManagedTensorVersioned;

static int from_dlpack(PyObject* obj, const char* name, Slot* s) {
  PyObject* fn = PyObject_GetAttr(obj, s_dlpack);
  if (fn == NULL) {
    PyErr_Clear();
    PyObject* tname = PyObject_GetAttrString((PyObject*)Py_TYPE(obj), "__name__");
    PyErr_Clear();
    PyErr_Format(PyExc_TypeError, "%s must be a torch.Tensor or an array with __dlpack__ "
                 "(NumPy, CuPy, JAX), got %S", name, tname ? tname : Py_None);
    Py_XDECREF(tname);
    return -1;
  }
  PyObject* cap = PyObject_CallObject(fn, NULL);
  const DLTensor* t = NULL;
  if (cap == NULL && PyErr_ExceptionMatches(PyExc_BufferError)) {
    /* e.g. a read-only NumPy array: only DLPack >= 1.0 can say "read-only" */
    PyErr_Clear();
    PyObject* kw = Py_BuildValue("{s:(ii)}", "max_version", 1, 0);
    PyObject* noargs = PyTuple_New(0);
    cap = kw && noargs ? PyObject_Call(fn, noargs, kw) : NULL;
    Py_XDECREF(kw);
    Py_XDECREF(noargs);
  }
  Py_DECREF(fn);
  if (cap == NULL) return -1;
  if (PyCapsule_IsValid(cap, "dltensor")) {
    DLManagedTensor* m = (DLManagedTensor*)PyCapsule_GetPointer(cap, "dltensor");
    t = m ? &m->dl_tensor : NULL;
  } else if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
    FpDLManagedTensorVersioned* m =
        (FpDLManagedTensorVersioned*)PyCapsule_GetPointer(cap, "dltensor_versioned");
    t = m ? &m->dl_tensor : NULL;
  }
  if (t == NULL) {
    Py_DECREF(cap);
    if (!PyErr_Occurred()) fail(PyExc_TypeError, name, "__dlpack__ did not return a DLPack capsule");
    return -1;
  }
  /* The capsule is not consumed (its name is left as is), so its own destructor frees the
   * tensor when we drop our reference after the call. */
  s->t = *t;
  s->keep = cap;
  return 0;
}

static int tensor_arg(PyObject* obj, const char* name, int optional, Slots* slots,
                      const DLTensor** dst) {
  if (obj == Py_None) {
    if (optional) {
      *dst = NULL;
      return 0;
    }
    PyErr_Format(PyExc_TypeError, "%s is required, got None", name);
    return -1;
  }
  if (slots->used == MAX_TENSORS) return fail(PyExc_RuntimeError, name, "too many tensors");
  Slot* s = &slots->slots[slots->used++];
  memset(s, 0, sizeof(*s));
  int rc = g_torch_tensor && PyObject_IsInstance(obj, g_torch_tensor) == 1
               ? from_torch(obj, name, s)
               : from_dlpack(obj, name, s);
  if (rc < 0) return -1;
  *dst = &s->t;
  return 0;
}

/* ---- argument tables ------------------------------------------------------------------------- */
typedef enum { T_TENSOR, T_OPT_TENSOR, T_FLOAT, T_INT, T_BOOL } Kind;
typedef struct {
  Kind kind;
  size_t offset;
  const char* name;
} ArgSpec;

#define TEN(S, f) {T_TENSOR, offsetof(S, f), #f}
#define OPT(S, f) {T_OPT_TENSOR, offsetof(S, f), #f}
#define FLT(S, f) {T_FLOAT, offsetof(S, f), #f}
#define INT(S, f) {T_INT, offsetof(S, f), #f}
#define BOOL(S, f) {T_BOOL, offsetof(S, f), #f}

#define S flashplus_fwd_args
static const ArgSpec kFwd[] = {
    TEN(S, q), TEN(S, k), TEN(S, v), TEN(S, out), TEN(S, softmax_lse), OPT(S, alibi_slopes),
    OPT(S, s_dmask), FLT(S, p_dropout), FLT(S, softmax_scale), BOOL(S, is_causal),
    INT(S, window_size_left), INT(S, window_size_right), FLT(S, softcap), BOOL(S, return_softmax)};
#undef S
#define S flashplus_bwd_args
static const ArgSpec kBwd[] = {
    TEN(S, dout), TEN(S, q), TEN(S, k), TEN(S, v), TEN(S, out), TEN(S, softmax_lse), TEN(S, dq),
    TEN(S, dk), TEN(S, dv), OPT(S, alibi_slopes), OPT(S, softmax_d), FLT(S, p_dropout),
    FLT(S, softmax_scale), BOOL(S, is_causal), INT(S, window_size_left),
    INT(S, window_size_right), FLT(S, softcap), BOOL(S, deterministic)};
#undef S
#define S flashplus_varlen_fwd_args
static const ArgSpec kVarlenFwd[] = {
    TEN(S, q), TEN(S, k), TEN(S, v), TEN(S, out), TEN(S, softmax_lse), TEN(S, cu_seqlens_q),
    TEN(S, cu_seqlens_k), OPT(S, seqused_k), OPT(S, leftpad_k), OPT(S, block_table),
    OPT(S, alibi_slopes), OPT(S, s_dmask), INT(S, max_seqlen_q), INT(S, max_seqlen_k),
    FLT(S, p_dropout), FLT(S, softmax_scale), BOOL(S, zero_tensors), BOOL(S, is_causal),
    INT(S, window_size_left), INT(S, window_size_right), FLT(S, softcap), BOOL(S, return_softmax),
    INT(S, num_splits)};
#undef S
#define S flashplus_varlen_bwd_args
static const ArgSpec kVarlenBwd[] = {
    TEN(S, dout), TEN(S, q), TEN(S, k), TEN(S, v), TEN(S, out), TEN(S, softmax_lse), TEN(S, dq),
    TEN(S, dk), TEN(S, dv), TEN(S, cu_seqlens_q), TEN(S, cu_seqlens_k), OPT(S, alibi_slopes),
    OPT(S, softmax_d), INT(S, max_seqlen_q), INT(S, max_seqlen_k), FLT(S, p_dropout),
    FLT(S, softmax_scale), BOOL(S, zero_tensors), BOOL(S, is_causal), INT(S, window_size_left),
    INT(S, window_size_right), FLT(S, softcap), BOOL(S, deterministic)};
#undef S
#define S flashplus_kvcache_args
static const ArgSpec kKvcache[] = {
    TEN(S, q), TEN(S, kcache), TEN(S, vcache), OPT(S, k_new), OPT(S, v_new),
    OPT(S, cache_seqlens), OPT(S, rotary_cos), OPT(S, rotary_sin), OPT(S, cache_batch_idx),
    OPT(S, cache_leftpad), OPT(S, block_table), OPT(S, alibi_slopes), TEN(S, out),
    TEN(S, softmax_lse), FLT(S, softmax_scale), BOOL(S, is_causal), INT(S, window_size_left),
    INT(S, window_size_right), FLT(S, softcap), BOOL(S, is_rotary_interleaved),
    INT(S, num_splits)};
#undef S

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Fills the C struct at `base` from args[0 .. n) per `spec`, then the run options (with_rng:
 * backend, num_threads, stream, dropout_seed, dropout_offset; else the first three). */
static int parse(const char* fn, PyObject* args, const ArgSpec* spec, int n, int with_rng,
                 char* base, flashplus_run_options* opts, Slots* slots) {
  const int n_opts = with_rng ? 5 : 3;
  Py_ssize_t got = PyTuple_Size(args);
  if (got != n + n_opts) {
    PyErr_Format(PyExc_TypeError, "%s takes %d positional arguments (%d) + %d run options, got %d",
                 fn, n + n_opts, n, n_opts, (int)got);
    return -1;
  }
  for (int i = 0; i < n; ++i) {
    PyObject* o = PyTuple_GetItem(args, i);
    char* field = base + spec[i].offset;
    switch (spec[i].kind) {
      case T_TENSOR:
      case T_OPT_TENSOR:
        if (tensor_arg(o, spec[i].name, spec[i].kind == T_OPT_TENSOR, slots,
                       (const DLTensor**)field) < 0)
          return -1;
        break;
      case T_FLOAT: {
        double x = PyFloat_AsDouble(o);
        if (x == -1.0 && PyErr_Occurred()) return -1;
        *(float*)field = (float)x;
        break;
      }
      case T_INT: {
        long x = PyLong_AsLong(o);
        if (x == -1 && PyErr_Occurred()) return -1;
        if (x < INT32_MIN || x > INT32_MAX) {
          PyErr_Format(PyExc_OverflowError, "%s = %ld does not fit in int32", spec[i].name, x);
          return -1;
        }
        *(int32_t*)field = (int32_t)x;
        break;
      }
      case T_BOOL: {
        int x = PyObject_IsTrue(o);
        if (x < 0) return -1;
        *(int32_t*)field = x;
        break;
      }
    }
  }
  long backend = PyLong_AsLong(PyTuple_GetItem(args, n));
  long threads = PyLong_AsLong(PyTuple_GetItem(args, n + 1));
  PyObject* stream = PyTuple_GetItem(args, n + 2);
  opts->stream = stream == Py_None ? NULL : PyLong_AsVoidPtr(stream);
  if (with_rng) {
    opts->dropout_seed = PyLong_AsUnsignedLongLongMask(PyTuple_GetItem(args, n + 3));
    opts->dropout_offset = PyLong_AsUnsignedLongLongMask(PyTuple_GetItem(args, n + 4));
  }
  if (PyErr_Occurred()) return -1;
  opts->backend = (int32_t)backend;
  opts->num_threads = (int32_t)threads;
  return 0;
}

static PyObject* raise_status(flashplus_status st, const char* msg) {
  PyObject* exc = PyObject_CallFunction(g_error_type, "s", msg);
  if (exc == NULL) return NULL;
  PyObject* name = PyUnicode_FromString(flashplus_status_name(st));
  if (name) {
    PyObject_SetAttrString(exc, "status", name);
    Py_DECREF(name);
  }
  PyErr_SetObject(g_error_type, exc);
  Py_DECREF(exc);
  return NULL;
}

/* One wrapper per entry point: parse into the struct, run without the GIL, report. */
#define ENTRY(pyname, CType, spec, with_rng, cfn)                                           \
  static PyObject* py_##pyname(PyObject* self, PyObject* args) {                            \
    (void)self;                                                                             \
    CType a;                                                                                \
    memset(&a, 0, sizeof(a));                                                               \
    a.struct_size = sizeof(a);                                                              \
    Slots slots;                                                                            \
    slots.used = 0;                                                                         \
    if (parse(#pyname, args, spec, COUNT(spec), with_rng, (char*)&a, &a.opts, &slots) < 0) { \
      release(&slots);                                                                      \
      return NULL;                                                                          \
    }                                                                                       \
    flashplus_status st;                                                                    \
    char msg[2048];                                                                         \
    msg[0] = 0;                                                                             \
    Py_BEGIN_ALLOW_THREADS st = cfn(&a);                                                    \
    if (st != FLASHPLUS_OK) {                                                               \
      strncpy(msg, flashplus_last_error(), sizeof(msg) - 1);                                \
      msg[sizeof(msg) - 1] = 0;                                                             \
    }                                                                                       \
    Py_END_ALLOW_THREADS release(&slots);                                                   \
    if (st != FLASHPLUS_OK) return raise_status(st, msg);                                   \
    Py_RETURN_NONE;                                                                         \
  }

ENTRY(mha_fwd, flashplus_fwd_args, kFwd, 1, flashplus_mha_fwd)
ENTRY(mha_bwd, flashplus_bwd_args, kBwd, 1, flashplus_mha_bwd)
ENTRY(mha_varlen_fwd, flashplus_varlen_fwd_args, kVarlenFwd, 1, flashplus_mha_varlen_fwd)
ENTRY(mha_varlen_bwd, flashplus_varlen_bwd_args, kVarlenBwd, 1, flashplus_mha_varlen_bwd)
ENTRY(mha_fwd_kvcache, flashplus_kvcache_args, kKvcache, 0, flashplus_mha_fwd_kvcache)

/* A call that does nothing but cross the same boundary: the measured floor of the binding's
 * per-call cost (python/flashplus/bench_overhead.py). */
static PyObject* py_noop(PyObject* self, PyObject* args) {
  (void)self;
  (void)args;
  Py_RETURN_NONE;
}

static PyObject* py_register_torch(PyObject* self, PyObject* args) {
  (void)self;
  PyObject *tensor_type, *dtypes;
  int rocm = 0;
  if (!PyArg_ParseTuple(args, "OO!|p", &tensor_type, &PyDict_Type, &dtypes, &rocm)) return NULL;
  Py_XDECREF(g_torch_tensor);
  Py_XDECREF(g_torch_dtypes);
  Py_INCREF(tensor_type);
  Py_INCREF(dtypes);
  g_torch_tensor = tensor_type;
  g_torch_dtypes = dtypes;
  g_torch_gpu_device = rocm ? kDLROCM : kDLCUDA;
  Py_RETURN_NONE;
}

static PyObject* py_abi_version(PyObject* self, PyObject* args) {
  (void)self;
  (void)args;
  return PyLong_FromLong(flashplus_c_abi_version());
}
static PyObject* py_version(PyObject* self, PyObject* args) {
  (void)self;
  (void)args;
  return PyUnicode_FromString(flashplus_version_string());
}
static PyObject* py_backend_compiled(PyObject* self, PyObject* args) {
  (void)self;
  int b;
  if (!PyArg_ParseTuple(args, "i", &b)) return NULL;
  return PyBool_FromLong(flashplus_backend_compiled(b));
}
static PyObject* py_device_count(PyObject* self, PyObject* args) {
  (void)self;
  int b;
  if (!PyArg_ParseTuple(args, "i", &b)) return NULL;
  int n;
  Py_BEGIN_ALLOW_THREADS n = flashplus_device_count(b);
  Py_END_ALLOW_THREADS return PyLong_FromLong(n);
}

static PyMethodDef kMethods[] = {
    {"mha_fwd", py_mha_fwd, METH_VARARGS, "Forward (C ABI flashplus_mha_fwd)."},
    {"mha_bwd", py_mha_bwd, METH_VARARGS, "Backward (flashplus_mha_bwd)."},
    {"mha_varlen_fwd", py_mha_varlen_fwd, METH_VARARGS, "Varlen forward."},
    {"mha_varlen_bwd", py_mha_varlen_bwd, METH_VARARGS, "Varlen backward."},
    {"mha_fwd_kvcache", py_mha_fwd_kvcache, METH_VARARGS, "KV-cache forward."},
    {"noop", py_noop, METH_VARARGS, "Does nothing (overhead floor)."},
    {"register_torch", py_register_torch, METH_VARARGS,
     "register_torch(torch.Tensor, {dtype: (code << 8) | bits}, rocm=False)"},
    {"abi_version", py_abi_version, METH_NOARGS, "The loaded library's C ABI version."},
    {"version", py_version, METH_NOARGS, "The loaded library's version."},
    {"backend_compiled", py_backend_compiled, METH_VARARGS, "Is backend b compiled in?"},
    {"device_count", py_device_count, METH_VARARGS, "Devices backend b finds."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_core",
                                     "flashplus: the C ABI of libflashplus.", -1, kMethods,
                                     NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__core(void) {
  PyObject* m = PyModule_Create(&kModule);
  if (m == NULL) return NULL;
  if (flashplus_c_abi_version() != FLASHPLUS_C_ABI_VERSION) {
    PyErr_Format(PyExc_ImportError, "flashplus._core was built for C ABI %d but libflashplus "
                 "has %d: reinstall the package", FLASHPLUS_C_ABI_VERSION, flashplus_c_abi_version());
    Py_DECREF(m);
    return NULL;
  }
  g_error_type = PyErr_NewException("flashplus.FlashPlusError", PyExc_RuntimeError, NULL);
  if (g_error_type == NULL || PyModule_AddObject(m, "FlashPlusError", g_error_type) < 0) {
    Py_DECREF(m);
    return NULL;
  }
  Py_INCREF(g_error_type);
  s_data_ptr = PyUnicode_InternFromString("data_ptr");
  s_shape = PyUnicode_InternFromString("shape");
  s_stride = PyUnicode_InternFromString("stride");
  s_dtype = PyUnicode_InternFromString("dtype");
  s_is_cuda = PyUnicode_InternFromString("is_cuda");
  s_is_cpu = PyUnicode_InternFromString("is_cpu");
  s_get_device = PyUnicode_InternFromString("get_device");
  s_device = PyUnicode_InternFromString("device");
  s_dlpack = PyUnicode_InternFromString("__dlpack__");
  PyModule_AddIntConstant(m, "BACKEND_AUTO", FLASHPLUS_BACKEND_AUTO);
  PyModule_AddIntConstant(m, "BACKEND_CPU", FLASHPLUS_BACKEND_CPU);
  PyModule_AddIntConstant(m, "BACKEND_CUDA", FLASHPLUS_BACKEND_CUDA);
  PyModule_AddIntConstant(m, "BACKEND_HIP", FLASHPLUS_BACKEND_HIP);
  PyModule_AddIntConstant(m, "ABI_VERSION", FLASHPLUS_C_ABI_VERSION);
  return m;
}
