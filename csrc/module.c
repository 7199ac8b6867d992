/* bce_audit._kernels: the numpy models' float32 cores, compiled (`bce_audit/compiled.py`).
 *
 * One function, apply(name, *buffers): the kernel's outputs first, then its inputs, every one a
 * C-contiguous buffer of float32 ("f") of one length. The GIL is released while it runs. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "kernels.h"
#include "measure.h"

extern const struct kernel glibc_kernels[], eigen_kernels[], xla_kernels[], sleef_kernels[];
static const struct kernel *const TABLES[] = {glibc_kernels, eigen_kernels, xla_kernels, sleef_kernels};

static const struct kernel *find(const char *name) {
    for (size_t t = 0; t < sizeof TABLES / sizeof TABLES[0]; t++)
        for (const struct kernel *k = TABLES[t]; k->name; k++)
            if (strcmp(k->name, name) == 0) return k;
    return NULL;
}

#define MAXARGS 8

static PyObject *apply(PyObject *self, PyObject *args) {
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs < 1 || !PyUnicode_Check(PyTuple_GET_ITEM(args, 0))) {
        PyErr_SetString(PyExc_TypeError, "apply(name, *buffers): name must be a str");
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(args, 0));
    if (!name) return NULL;
    const struct kernel *k = find(name);
    if (!k) {
        PyErr_Format(PyExc_KeyError, "no compiled kernel %s", name);
        return NULL;
    }
    int total = k->nin + k->nout;
    if (nargs - 1 != total) {
        PyErr_Format(PyExc_TypeError, "kernel %s takes %d buffers (outputs, then inputs), not %zd",
                     name, total, nargs - 1);
        return NULL;
    }
    Py_buffer views[MAXARGS];
    int got = 0;
    Py_ssize_t n = -1;
    PyObject *result = NULL;
    for (; got < total; got++) {
        int out = got < k->nout;
        int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (out ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(args, got + 1), &views[got], flags) < 0) goto done;
        Py_buffer *v = &views[got];
        if (v->itemsize != 4 || !v->format || strcmp(v->format, "f") != 0) {
            got++;
            PyErr_Format(PyExc_TypeError, "kernel %s: buffers must hold float32", name);
            goto done;
        }
        Py_ssize_t len = v->len / 4;
        if (n >= 0 && len != n) {
            got++;
            PyErr_Format(PyExc_ValueError, "kernel %s: buffers of %zd and %zd elements", name, n, len);
            goto done;
        }
        n = len;
    }
    {
        const float *in[MAXARGS];
        float *outs[MAXARGS];
        for (int i = 0; i < k->nout; i++) outs[i] = (float *)views[i].buf;
        for (int i = 0; i < k->nin; i++) in[i] = (const float *)views[k->nout + i].buf;
        Py_BEGIN_ALLOW_THREADS
        k->fn(in, outs, n);
        Py_END_ALLOW_THREADS
    }
    result = Py_None;
    Py_INCREF(result);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&views[i]);
    return result;
}

/* A C-contiguous buffer of float32 ("f") or float64 ("d") values, or of float64 only; None where
 * `optional`. Sets *f32 (when not NULL) to whether it holds float32. */
static int get(PyObject *obj, Py_buffer *v, int writable, int any_float, int *f32, Py_ssize_t *n) {
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    int is32 = v->itemsize == 4 && v->format && strcmp(v->format, "f") == 0;
    int is64 = v->itemsize == 8 && v->format && strcmp(v->format, "d") == 0;
    Py_ssize_t len = v->len / (v->itemsize ? v->itemsize : 1);
    if (!(is64 || (any_float && is32)) || (*n >= 0 && len != *n)) {
        PyBuffer_Release(v);
        PyErr_SetString(PyExc_TypeError, any_float ? "float32 or float64 buffers of one length"
                                                   : "float64 buffers of one length");
        return -1;
    }
    if (f32) *f32 = is32;
    *n = len;
    return 0;
}

/* Gets buffers in order; on failure releases those already got. */
static int get_all(PyObject *const *objs, Py_buffer *views, const int *writable, int count, int *f32,
                   Py_ssize_t *n) {
    for (int i = 0; i < count; i++) {
        if (objs[i] == Py_None) { views[i].obj = NULL; views[i].buf = NULL; continue; }
        if (get(objs[i], &views[i], writable[i], i == 0, i == 0 ? f32 : NULL, n) < 0) {
            for (int j = 0; j < i; j++) if (views[j].obj) PyBuffer_Release(&views[j]);
            return -1;
        }
    }
    return 0;
}

static void release_all(Py_buffer *views, int count) {
    for (int i = 0; i < count; i++) if (views[i].obj) PyBuffer_Release(&views[i]);
}

/* measure(computed, exact, inv_ulp, mag, complement|None, ulps, rels|None, diff) */
static PyObject *measure(PyObject *self, PyObject *args) {
    PyObject *o[8];
    if (!PyArg_UnpackTuple(args, "measure", 8, 8, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7]))
        return NULL;
    if (o[0] == Py_None || o[1] == Py_None || o[2] == Py_None || o[3] == Py_None || o[5] == Py_None ||
        o[7] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "measure: only complement and rels may be None");
        return NULL;
    }
    static const int writable[8] = {0, 0, 0, 0, 0, 1, 1, 1};
    Py_buffer v[8];
    int f32 = 0;
    Py_ssize_t n = -1;
    if (get_all(o, v, writable, 8, &f32, &n) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    measure64(v[0].buf, f32, v[1].buf, v[2].buf, v[3].buf, v[4].buf, v[5].buf, v[6].buf, v[7].buf, n);
    Py_END_ALLOW_THREADS
    release_all(v, 8);
    Py_RETURN_NONE;
}

/* worst(values, ulp, rel, abs) -> (finite, first_nonfinite, argmax, max_rel, max_abs) */
static PyObject *worst(PyObject *self, PyObject *args) {
    PyObject *o[4];
    if (!PyArg_UnpackTuple(args, "worst", 4, 4, &o[0], &o[1], &o[2], &o[3])) return NULL;
    static const int writable[4] = {0, 0, 0, 0};
    Py_buffer v[4];
    int f32 = 0;
    Py_ssize_t n = -1;
    for (int i = 0; i < 4; i++) if (o[i] == Py_None) { PyErr_SetString(PyExc_TypeError, "worst: buffers"); return NULL; }
    if (get_all(o, v, writable, 4, &f32, &n) < 0) return NULL;
    struct worst w;
    Py_BEGIN_ALLOW_THREADS
    w = worst64(v[0].buf, f32, v[1].buf, v[2].buf, v[3].buf, n);
    Py_END_ALLOW_THREADS
    release_all(v, 4);
    return Py_BuildValue("(nnndd)", w.finite, w.first_nonfinite, w.argmax, w.rel, w.abs);
}

/* clipmax(values, clip, a, b) -> (count, max a, max b) where values are finite and clip is not NaN */
static PyObject *clipmax(PyObject *self, PyObject *args) {
    PyObject *o[4];
    if (!PyArg_UnpackTuple(args, "clipmax", 4, 4, &o[0], &o[1], &o[2], &o[3])) return NULL;
    static const int writable[4] = {0, 0, 0, 0};
    Py_buffer v[4];
    int f32 = 0;
    Py_ssize_t n = -1;
    for (int i = 0; i < 4; i++) if (o[i] == Py_None) { PyErr_SetString(PyExc_TypeError, "clipmax: buffers"); return NULL; }
    if (get_all(o, v, writable, 4, &f32, &n) < 0) return NULL;
    struct clipmax m;
    Py_BEGIN_ALLOW_THREADS
    m = clipmax64(v[0].buf, f32, v[1].buf, v[2].buf, v[3].buf, n);
    Py_END_ALLOW_THREADS
    release_all(v, 4);
    return Py_BuildValue("(ndd)", m.count, m.a, m.b);
}

/* subnormals(buffer) -> whether a float32 or float64 buffer holds a subnormal value */
static PyObject *subnormals(PyObject *self, PyObject *arg) {
    Py_buffer v;
    int f32 = 0;
    Py_ssize_t n = -1;
    if (get(arg, &v, 0, 1, &f32, &n) < 0) return NULL;
    int found;
    Py_BEGIN_ALLOW_THREADS
    found = f32 ? subnormal32((const uint32_t *)v.buf, n) : subnormal64((const uint64_t *)v.buf, n);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v);
    return PyBool_FromLong(found);
}

static PyObject *names(PyObject *self, PyObject *unused) {
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (size_t t = 0; t < sizeof TABLES / sizeof TABLES[0]; t++)
        for (const struct kernel *k = TABLES[t]; k->name; k++) {
            PyObject *s = Py_BuildValue("(sii)", k->name, k->nin, k->nout);
            if (!s || PyList_Append(out, s) < 0) {
                Py_XDECREF(s);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(s);
        }
    return out;
}

static PyMethodDef METHODS[] = {
    {"apply", apply, METH_VARARGS, "apply(name, *buffers): outputs first, then inputs (float32)."},
    {"measure", measure, METH_VARARGS, "measure(c, exact, inv_ulp, mag, complement, ulps, rels, diff)."},
    {"worst", worst, METH_VARARGS, "worst(values, ulp, rel, abs) -> (finite, first_nonfinite, argmax, rel, abs)."},
    {"clipmax", clipmax, METH_VARARGS, "clipmax(values, clip, a, b) -> (count, max a, max b)."},
    {"subnormals", subnormals, METH_O, "subnormals(buffer) -> whether a float32/float64 buffer holds one."},
    {"names", names, METH_NOARGS, "names() -> [(name, inputs, outputs)]: every compiled kernel."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "The numpy models' float32 cores, compiled.", -1, METHODS};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&MODULE); }
