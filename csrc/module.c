/* bce_audit._kernels: the numpy models' float32 cores, compiled (`bce_audit/compiled.py`).
 *
 * One function, apply(name, *buffers): the kernel's outputs first, then its inputs, every one a
 * C-contiguous buffer of float32 ("f") of one length. The GIL is released while it runs. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "kernels.h"
#include "ftz.h"
#include "measure.h"
#include "lines.h"
#include "shortest.h"

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

/* A C-contiguous buffer of one byte a value, `n` of them (`what` names it in the error). */
static int get_bytes(PyObject *obj, Py_buffer *v, Py_ssize_t n, const char *what) {
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (v->itemsize != 1 || v->len != n) {
        PyBuffer_Release(v);
        PyErr_Format(PyExc_ValueError, "%s a value", what);
        return -1;
    }
    return 0;
}

/* Release the buffers taken (those of v[0..got) not skipped: obj NULL), and return `result`. */
static PyObject *released(Py_buffer *v, int got, PyObject *result) {
    for (int i = 0; i < got; i++)
        if (v[i].obj) PyBuffer_Release(&v[i]);
    return result;
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
    return released(v, got, result);
}

/* measure_worst(computed, exact, inv_ulp, mag, complement|None, skip, clip|None, clip_rel,
 * clip_exact, clip_inv_ulp) -> (count, first, nan_at, at, best, rel, abs, clip_count, clip_rel,
 * round_ulp): `struct measured`. computed: float32; skip: one byte a value (nonzero: not measured
 * here); the rest float64; all of one length. With clip None, the last three are None too. */
static PyObject *measure_worst(PyObject *self, PyObject *args) {
    PyObject *o[10];
    if (!PyArg_UnpackTuple(args, "measure_worst", 10, 10, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7],
                           &o[8], &o[9]))
        return NULL;
    Py_buffer v[10];
    int got = 0, f32 = 0;
    Py_ssize_t n = -1;
    PyObject *result = NULL;
    int clipped = o[6] != Py_None;
    for (; got < 10; got++) {
        v[got].obj = NULL;
        v[got].buf = NULL;
        if (o[got] == Py_None && (got == 4 || (got >= 6 && !clipped))) continue;
        if (got == 5) {  /* the skip mask */
            if (get_bytes(o[5], &v[5], n, "measure_worst: one skip byte") < 0) goto done;
            continue;
        }
        if (get(o[got], &v[got], 0, got == 0, got == 0 ? &f32 : NULL, &n) < 0) goto done;
        if (got == 0 && !f32) {
            got++;
            PyErr_SetString(PyExc_TypeError, "measure_worst: float32 computed values");
            goto done;
        }
    }
    struct measured m;
    Py_BEGIN_ALLOW_THREADS
    measure_worst32(v[0].buf, v[1].buf, v[2].buf, v[3].buf, v[4].buf, v[5].buf, v[6].buf, v[7].buf, v[8].buf,
                    v[9].buf, n, &m);
    Py_END_ALLOW_THREADS
    if (clipped)
        result = Py_BuildValue("(nnnndddndd)", m.count, m.first, m.nan_at, m.at, m.best, m.rel, m.abs, m.clip_count,
                               m.clip_rel, m.round_ulp);
    else
        result = Py_BuildValue("(nnnndddOOO)", m.count, m.first, m.nan_at, m.at, m.best, m.rel, m.abs, Py_None,
                               Py_None, Py_None);
done:
    return released(v, got, result);
}

/* scale(exact, complement, below|None, minexp, nmant, mag, inv_ulp): `fastref.scale`'s |exact| and
 * inverse ULPs into mag and inv_ulp (float64, like exact); complement: whether there is one; below:
 * one byte a value. */
static PyObject *scale(PyObject *self, PyObject *args) {
    PyObject *o[5];
    int comp, minexp, nmant;
    if (!PyArg_ParseTuple(args, "OpOiiOO:scale", &o[0], &comp, &o[1], &minexp, &nmant, &o[2], &o[3])) return NULL;
    Py_buffer v[4];
    int got = 0;
    Py_ssize_t n = -1;
    PyObject *result = NULL;
    if (nmant < 1 || nmant - minexp > 1023) { /* (every inverse ULP then a normal power of two) */
        PyErr_SetString(PyExc_ValueError, "scale: a dtype of 32 bits or fewer");
        return NULL;
    }
    static const int order[4] = {0, 2, 3, 1}; /* exact, mag, inv_ulp, then below */
    for (; got < 4; got++) {
        int k = order[got];
        v[got].obj = NULL;
        v[got].buf = NULL;
        if (k == 1) {
            if (o[1] != Py_None && get_bytes(o[1], &v[got], n, "scale: one below byte") < 0) goto done;
            continue;
        }
        if (get(o[k], &v[got], k >= 2, 0, NULL, &n) < 0) goto done;
    }
    int sub;
    Py_BEGIN_ALLOW_THREADS
    sub = scale64(v[0].buf, comp, v[3].buf, minexp, nmant, v[1].buf, v[2].buf, n);
    if (sub) scale64_subnormals(v[0].buf, comp, v[3].buf, minexp, nmant, v[2].buf, n);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    return released(v, got, result);
}

/* clip(src, negate, p|None, lo, hi, at_lo, at_hi, floor|None, out): `clip64` (float64 buffers of one
 * length; p None: no bounds) */
static PyObject *clip(PyObject *self, PyObject *args) {
    PyObject *src, *p, *flo, *out;
    int negate;
    double lo, hi, at_lo, at_hi;
    if (!PyArg_ParseTuple(args, "OpOddddOO:clip", &src, &negate, &p, &lo, &hi, &at_lo, &at_hi, &flo, &out))
        return NULL;
    double floor = 0.0;
    int floored = flo != Py_None;
    if (floored && (floor = PyFloat_AsDouble(flo)) == -1.0 && PyErr_Occurred()) return NULL;
    Py_buffer v[3];
    PyObject *o[3] = {src, out, p};
    int got = 0;
    Py_ssize_t n = -1;
    PyObject *result = NULL;
    for (; got < 3; got++) {
        v[got].obj = NULL;
        v[got].buf = NULL;
        if (o[got] == Py_None && got == 2) continue; /* no bounds */
        if (get(o[got], &v[got], got == 1, 0, NULL, &n) < 0) goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    clip64(v[0].buf, negate, v[2].buf, p != Py_None, lo, hi, at_lo, at_hi, floored, floor, v[1].buf, n);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    return released(v, got, result);
}

/* relative(a, b, out): |a - b| / b, float64 buffers of one length */
static PyObject *relative(PyObject *self, PyObject *args) {
    PyObject *o[3];
    if (!PyArg_ParseTuple(args, "OOO:relative", &o[0], &o[1], &o[2])) return NULL;
    Py_buffer v[3];
    int got = 0;
    Py_ssize_t n = -1;
    PyObject *result = NULL;
    for (; got < 3; got++)
        if (get(o[got], &v[got], got == 2, 0, NULL, &n) < 0) goto done;
    Py_BEGIN_ALLOW_THREADS
    relative64(v[0].buf, v[1].buf, v[2].buf, n);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    return released(v, got, result);
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

/* texts(values, absent) -> (texts, ends): a float64 buffer's values as JSON texts, one after
 * another (and SLACK bytes more), and the end of each (native uint32). absent: None or a buffer of one byte a value
 * (nonzero: null). */
static PyObject *texts_of(PyObject *self, PyObject *args) {
    PyObject *values, *gone;
    if (!PyArg_ParseTuple(args, "OO:texts", &values, &gone)) return NULL;
    Py_buffer v, a;
    Py_ssize_t n = -1;
    if (get(values, &v, 0, 0, NULL, &n) < 0) return NULL;
    a.obj = NULL;
    PyObject *data = NULL, *ends = NULL, *result = NULL;
    if (gone != Py_None) {
        if (PyObject_GetBuffer(gone, &a, PyBUF_C_CONTIGUOUS) < 0) goto done;
        if (a.len != n) {
            PyErr_Format(PyExc_ValueError, "texts: %zd absent flags for %zd values", a.len, n);
            goto done;
        }
    }
    if (n > PY_SSIZE_T_MAX / TEXT_MAX || (uint64_t)n * TEXT_MAX > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "texts: too many values for 32-bit ends");
        goto done;
    }
    data = PyBytes_FromStringAndSize(NULL, n * TEXT_MAX + SLACK);
    ends = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(uint32_t));
    if (!data || !ends) goto done;
    char *start = PyBytes_AS_STRING(data), *end;
    shortest_init();  /* while the GIL is held: one thread computes the tables */
    Py_BEGIN_ALLOW_THREADS
    end = texts(v.buf, a.obj ? a.buf : NULL, n, start, (uint32_t *)PyBytes_AS_STRING(ends));
    Py_END_ALLOW_THREADS
    memset(end, 0, SLACK);  /* read by `lines`' 32-byte moves, never written out */
    if (_PyBytes_Resize(&data, end - start + SLACK) < 0) goto done;
    result = PyTuple_Pack(2, data, ends);
done:
    Py_XDECREF(data);
    Py_XDECREF(ends);
    if (a.obj) PyBuffer_Release(&a);
    PyBuffer_Release(&v);
    return result;
}

#define MAXCOLS 64

/* jsonl(literals, columns) -> bytes: n lines, each literals[0], a text of columns[0],
 * literals[1], ..., literals[-1]. literals: bytes, one more than the columns; columns: pairs
 * (texts, ends) of n values each, as `texts` gives them. */
static PyObject *jsonl(PyObject *self, PyObject *args) {
    PyObject *lits, *cols;
    if (!PyArg_ParseTuple(args, "O!O!:jsonl", &PyTuple_Type, &lits, &PyTuple_Type, &cols)) return NULL;
    Py_ssize_t ncol = PyTuple_GET_SIZE(cols), n = -1;
    if (ncol > MAXCOLS || PyTuple_GET_SIZE(lits) != ncol + 1) {
        PyErr_Format(PyExc_ValueError, "jsonl: up to %d columns, and one literal more", MAXCOLS);
        return NULL;
    }
    struct piece pieces[MAXCOLS + 1];
    struct column columns[MAXCOLS];
    Py_ssize_t per_line = 0, text = 0;
    for (Py_ssize_t c = 0; c <= ncol; c++) {
        PyObject *t = PyTuple_GET_ITEM(lits, c);
        if (!PyBytes_Check(t)) {
            PyErr_SetString(PyExc_TypeError, "jsonl: literals must be bytes");
            return NULL;
        }
        pieces[c].len = (size_t)PyBytes_GET_SIZE(t);
        per_line += PyBytes_GET_SIZE(t);
        if (c == ncol) break;
        PyObject *pair = PyTuple_GET_ITEM(cols, c), *data, *ends;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(data = PyTuple_GET_ITEM(pair, 0))
            || !PyBytes_Check(ends = PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "jsonl: columns must be (texts, ends) pairs of bytes");
            return NULL;
        }
        Py_ssize_t len = PyBytes_GET_SIZE(ends) / (Py_ssize_t)sizeof(uint32_t), size = PyBytes_GET_SIZE(data) - SLACK;
        const uint32_t *e = (const uint32_t *)PyBytes_AS_STRING(ends);
        int fits = PyBytes_GET_SIZE(ends) % (Py_ssize_t)sizeof(uint32_t) == 0 && size >= 0
                   && (len ? e[len - 1] : 0) == (uint64_t)size;
        for (Py_ssize_t i = 0; fits && i < len; i++)  /* each text of 0 to TEXT_MAX bytes, in order */
            fits = e[i] - (i ? e[i - 1] : 0) <= TEXT_MAX && e[i] >= (i ? e[i - 1] : 0);
        if ((n >= 0 && len != n) || !fits) {
            PyErr_SetString(PyExc_ValueError, "jsonl: columns of different lengths, or not as texts() gave them");
            return NULL;
        }
        n = len;
        text += size;
        columns[c].texts = PyBytes_AS_STRING(data);
        columns[c].ends = e;
    }
    if (n < 0) n = 0;
    if (n && per_line > (PY_SSIZE_T_MAX - text - SLACK) / n) return PyErr_NoMemory();
    /* the literals, each with SLACK bytes after it */
    char *arena = PyMem_Malloc((size_t)per_line + (size_t)(ncol + 1) * SLACK);
    if (!arena) return PyErr_NoMemory();
    char *at = arena;
    for (Py_ssize_t c = 0; c <= ncol; c++) {
        memcpy(at, PyBytes_AS_STRING(PyTuple_GET_ITEM(lits, c)), pieces[c].len);
        memset(at + pieces[c].len, 0, SLACK);
        pieces[c].text = at;
        at += pieces[c].len + SLACK;
    }
    Py_ssize_t size = n * per_line + text;
    PyObject *result = PyBytes_FromStringAndSize(NULL, size + SLACK);
    if (result) {
        char *start = PyBytes_AS_STRING(result);
        Py_BEGIN_ALLOW_THREADS
        lines(pieces, columns, (int)ncol, n, start);
        Py_END_ALLOW_THREADS
        if (_PyBytes_Resize(&result, size) < 0) result = NULL;
    }
    PyMem_Free(arena);
    return result;
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
    {"measure_worst", measure_worst, METH_VARARGS,
     "measure_worst(c, exact, inv_ulp, mag, complement, skip, clip, clip_rel, clip_exact, clip_inv_ulp)."},
    {"scale", scale, METH_VARARGS, "scale(exact, complement, below, minexp, nmant, mag, inv_ulp)."},
    {"clip", clip, METH_VARARGS, "clip(src, negate, p, lo, hi, at_lo, at_hi, floor, out): fastref.clipped's tail."},
    {"relative", relative, METH_VARARGS, "relative(a, b, out): |a - b| / b."},
    {"subnormals", subnormals, METH_O, "subnormals(buffer) -> whether a float32/float64 buffer holds one."},
    {"texts", texts_of, METH_VARARGS, "texts(values, absent) -> (texts, ends): float64 values as JSON texts."},
    {"jsonl", jsonl, METH_VARARGS, "jsonl(literals, columns) -> bytes: lines of literals and (texts, ends)."},
    {"names", names, METH_NOARGS, "names() -> [(name, inputs, outputs)]: every compiled kernel."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "The numpy models' float32 cores, compiled.", -1, METHODS};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&MODULE); }
