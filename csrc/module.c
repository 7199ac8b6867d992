/* bce_audit._kernels: the numpy models' float32 cores, compiled (`bce_audit/compiled.py`).
 *
 * One function, apply(name, *buffers): the kernel's outputs first, then its inputs, every one a
 * C-contiguous buffer of float32 ("f") of one length. The GIL is released while it runs. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "kernels.h"
#include "ftz.h"
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
    if (total > MAXARGS) {
        PyErr_Format(PyExc_SystemError, "kernel %s has more than %d buffers", name, MAXARGS);
        return NULL;
    }
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

/* A C-contiguous buffer of float32 ("f") or float64 ("d") values (or of float64 only), of `*n`
 * elements where that is set; sets *f32 (when not NULL) to whether it holds float32. */
static int get(PyObject *obj, Py_buffer *v, int writable, int any_float, int *f32, Py_ssize_t *n) {
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    int is32 = v->itemsize == 4 && v->format && strcmp(v->format, "f") == 0;
    int is64 = v->itemsize == 8 && v->format && strcmp(v->format, "d") == 0;
    Py_ssize_t len = v->len / (v->itemsize ? v->itemsize : 1);
    if (!(is64 || (any_float && is32))) {
        PyBuffer_Release(v);
        PyErr_SetString(PyExc_TypeError, any_float ? "float32 or float64 buffers" : "float64 buffers");
        return -1;
    }
    if (*n >= 0 && len != *n) {
        PyBuffer_Release(v);
        PyErr_Format(PyExc_ValueError, "buffers of %zd and %zd elements", *n, len);
        return -1;
    }
    if (f32) *f32 = is32;
    *n = len;
    return 0;
}

/* measure(computed, exact, inv_ulp, mag, complement|None, ulps, rels|None, diff): float32
 * computed values, the rest float64, all of one length. */
static PyObject *measure(PyObject *self, PyObject *args) {
    PyObject *o[8];
    if (!PyArg_UnpackTuple(args, "measure", 8, 8, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7]))
        return NULL;
    static const int writable[8] = {0, 0, 0, 0, 0, 1, 1, 1};
    Py_buffer v[8];
    int got = 0, f32 = 0;
    Py_ssize_t n = -1;
    PyObject *result = NULL;
    for (; got < 8; got++) {
        v[got].obj = NULL;
        v[got].buf = NULL;
        if (o[got] == Py_None && (got == 4 || got == 6)) continue;
        if (get(o[got], &v[got], writable[got], got == 0, got == 0 ? &f32 : NULL, &n) < 0) goto done;
        if (got == 0 && !f32) {
            got++;
            PyErr_SetString(PyExc_TypeError, "measure: float32 computed values");
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    measure32(v[0].buf, v[1].buf, v[2].buf, v[3].buf, v[4].buf, v[5].buf, v[6].buf, v[7].buf, n);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    for (int i = 0; i < got; i++)
        if (v[i].obj) PyBuffer_Release(&v[i]);
    return result;
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
    {"subnormals", subnormals, METH_O, "subnormals(buffer) -> whether a float32/float64 buffer holds one."},
    {"names", names, METH_NOARGS, "names() -> [(name, inputs, outputs)]: every compiled kernel."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "The numpy models' float32 cores, compiled.", -1, METHODS};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&MODULE); }
