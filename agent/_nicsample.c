/* agent._nicsample: reads NIC byte counter files at a fixed rate on a thread of its own, without Python.
 *
 * The periodicity collector (agent/collectors/periodicity.py) needs every interface's rx_bytes and tx_bytes 10-20
 * times a second. Woken from Python, each read costs ~170-250 us of CPU on a VM (the interpreter's wakeup and its
 * cold code, ~80% of it); this thread wakes, preads the files the collector opened (their descriptors) and parses
 * them in ~50 us, and holds the values until the collector takes them, a few times a minute. It never touches Python
 * objects, so it runs without the GIL. The collector owns the descriptors: it hands over new ones (set_fds) before
 * it closes the old ones.
 *
 * Sampler(capacity): a stopped sampler holding up to `capacity` reads (ticks); the oldest are overwritten.
 *   set_fds(fds)           the descriptors to read from now on; reads not taken yet are discarded
 *   set_interval(seconds)  the time between reads, from the next one on
 *   start()                starts the thread (the first read one interval later)
 *   take()                 (times, intervals, values, overwritten): the reads since the last take, oldest first, as
 *                          float64 bytes: CLOCK_MONOTONIC s (time.monotonic), interval s in force, and per read one
 *                          value per descriptor (NaN where the read failed or was not a decimal number); how many
 *                          reads were overwritten before being taken
 *   stop()                 ends the thread (it is joined); start() starts it again
 *
 * read_counters(fds): the counts of a group of counter files read now, in the caller's thread (agent/backends/sysfs.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define COUNTER_BYTES 32 /* a decimal u64 and a newline */
#define MAX_FDS 4096

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_cond_t wake; /* CLOCK_MONOTONIC: stop() wakes the thread at once */
    pthread_t thread;
    int running, stopping;
    int *fds;
    Py_ssize_t nfds;
    double interval; /* s */
    Py_ssize_t capacity, head, count; /* ring: next slot to write, reads held */
    double *times, *intervals, *values; /* capacity, capacity, capacity * nfds */
    unsigned long long overwritten;
} Sampler;

/* A decimal count and an optional newline, as sysfs writes counters; 0 for anything else, or a count past 2^64 - 1. */
static int parse_count(const char *text, ssize_t size, unsigned long long *value) {
    if (size <= 0) return 0;
    unsigned long long count = 0;
    ssize_t i = 0;
    for (; i < size && text[i] >= '0' && text[i] <= '9'; i++) {
        unsigned long long digit = (unsigned long long)(text[i] - '0');
        if (count > (ULLONG_MAX - digit) / 10) return 0;
        count = count * 10 + digit;
    }
    if (i == 0 || (i < size && text[i] != '\n')) return 0;
    *value = count;
    return 1;
}

static double parse(const char *text, ssize_t size) {
    unsigned long long value;
    return parse_count(text, size, &value) ? (double)value : NAN;
}

static void read_once(Sampler *s) { /* s->lock held */
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    Py_ssize_t slot = s->head;
    s->times[slot] = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    s->intervals[slot] = s->interval;
    char text[COUNTER_BYTES];
    for (Py_ssize_t i = 0; i < s->nfds; i++) {
        ssize_t size = pread(s->fds[i], text, sizeof(text), 0);
        s->values[slot * s->nfds + i] = parse(text, size);
    }
    s->head = (s->head + 1) % s->capacity;
    if (s->count < s->capacity) s->count++;
    else s->overwritten++;
}

static void add_seconds(struct timespec *t, double seconds) {
    long long ns = t->tv_nsec + (long long)(seconds * 1e9);
    t->tv_sec += ns / 1000000000LL;
    t->tv_nsec = ns % 1000000000LL;
}

static int before(const struct timespec *a, const struct timespec *b) {
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static void *loop(void *arg) {
    Sampler *s = arg;
    struct timespec due, now;
    pthread_mutex_lock(&s->lock);
    clock_gettime(CLOCK_MONOTONIC, &due);
    while (!s->stopping) {
        int rc = pthread_cond_timedwait(&s->wake, &s->lock, &due);
        if (s->stopping) break;
        if (rc != ETIMEDOUT) continue; /* woken early (a new interval): wait on for the same due time */
        read_once(s);
        add_seconds(&due, s->interval);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (before(&due, &now)) { /* fell behind (a stalled host): skip the missed reads, do not burst */
            due = now;
            add_seconds(&due, s->interval);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static int Sampler_init(Sampler *s, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"capacity", NULL};
    Py_ssize_t capacity;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n", names, &capacity)) return -1;
    if (capacity < 1 || capacity > 1 << 20) {
        PyErr_SetString(PyExc_ValueError, "capacity must be 1..1048576 reads");
        return -1;
    }
    if (s->times != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Sampler already initialised");
        return -1;
    }
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&s->wake, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&s->lock, NULL);
    s->capacity = capacity;
    s->interval = 0.1;
    s->times = PyMem_RawCalloc((size_t)capacity, sizeof(double));
    s->intervals = PyMem_RawCalloc((size_t)capacity, sizeof(double));
    if (s->times == NULL || s->intervals == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void stop_thread(Sampler *s) {
    pthread_mutex_lock(&s->lock);
    int running = s->running;
    s->stopping = 1;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    if (running) {
        Py_BEGIN_ALLOW_THREADS
        pthread_join(s->thread, NULL);
        Py_END_ALLOW_THREADS
    }
    s->running = 0;
    s->stopping = 0;
}

static void Sampler_dealloc(Sampler *s) {
    if (s->times != NULL) {
        stop_thread(s);
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->wake);
    }
    PyMem_RawFree(s->fds);
    PyMem_RawFree(s->times);
    PyMem_RawFree(s->intervals);
    PyMem_RawFree(s->values);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *Sampler_set_fds(Sampler *s, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "set_fds takes a sequence of file descriptors");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_FDS) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "at most %d descriptors", MAX_FDS);
    }
    int *fds = PyMem_RawCalloc((size_t)(n ? n : 1), sizeof(int));
    double *values = PyMem_RawCalloc((size_t)(s->capacity * (n ? n : 1)), sizeof(double));
    if (fds == NULL || values == NULL) {
        PyMem_RawFree(fds);
        PyMem_RawFree(values);
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (fd == -1 && PyErr_Occurred()) {
            PyMem_RawFree(fds);
            PyMem_RawFree(values);
            Py_DECREF(seq);
            return NULL;
        }
        fds[i] = (int)fd;
    }
    Py_DECREF(seq);
    int *old_fds;
    double *old_values;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&s->lock);
    old_fds = s->fds;
    old_values = s->values;
    s->fds = fds;
    s->values = values;
    s->nfds = n;
    s->count = 0;
    pthread_mutex_unlock(&s->lock);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(old_fds);
    PyMem_RawFree(old_values);
    Py_RETURN_NONE;
}

static PyObject *Sampler_set_interval(Sampler *s, PyObject *arg) {
    double seconds = PyFloat_AsDouble(arg);
    if (seconds == -1.0 && PyErr_Occurred()) return NULL;
    if (!(seconds >= 0.001 && seconds <= 3600.0)) {
        PyErr_SetString(PyExc_ValueError, "interval must be 0.001..3600 s");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&s->lock);
    s->interval = seconds;
    pthread_mutex_unlock(&s->lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Sampler_start(Sampler *s, PyObject *Py_UNUSED(ignored)) {
    if (s->values == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_fds before start");
        return NULL;
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&s->lock);
    if (!s->running) {
        s->stopping = 0;
        failed = pthread_create(&s->thread, NULL, loop, s);
        s->running = failed == 0;
    }
    pthread_mutex_unlock(&s->lock);
    Py_END_ALLOW_THREADS
    if (failed) {
        errno = failed;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Sampler_take(Sampler *s, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&s->lock); /* held for at most one read of the counters: no need to drop the GIL */
    Py_ssize_t count = s->count, nfds = s->nfds;
    Py_ssize_t first = (s->head - count + s->capacity) % s->capacity;
    PyObject *times = PyBytes_FromStringAndSize(NULL, count * (Py_ssize_t)sizeof(double));
    PyObject *intervals = PyBytes_FromStringAndSize(NULL, count * (Py_ssize_t)sizeof(double));
    PyObject *values = PyBytes_FromStringAndSize(NULL, count * nfds * (Py_ssize_t)sizeof(double));
    if (times != NULL && intervals != NULL && values != NULL) {
        double *t = (double *)PyBytes_AS_STRING(times), *iv = (double *)PyBytes_AS_STRING(intervals);
        double *v = (double *)PyBytes_AS_STRING(values);
        for (Py_ssize_t k = 0; k < count; k++) {
            Py_ssize_t slot = (first + k) % s->capacity;
            t[k] = s->times[slot];
            iv[k] = s->intervals[slot];
            if (nfds) memcpy(v + k * nfds, s->values + slot * nfds, (size_t)nfds * sizeof(double));
        }
        s->count = 0;
    }
    unsigned long long overwritten = s->overwritten;
    s->overwritten = 0;
    pthread_mutex_unlock(&s->lock);
    if (times == NULL || intervals == NULL || values == NULL) {
        Py_XDECREF(times);
        Py_XDECREF(intervals);
        Py_XDECREF(values);
        return NULL;
    }
    return Py_BuildValue("(NNNK)", times, intervals, values, overwritten);
}

static PyObject *Sampler_stop(Sampler *s, PyObject *Py_UNUSED(ignored)) {
    stop_thread(s);
    Py_RETURN_NONE;
}

static PyMethodDef Sampler_methods[] = {
    {"set_fds", (PyCFunction)Sampler_set_fds, METH_O, "The descriptors to read from now on (untaken reads are dropped)."},
    {"set_interval", (PyCFunction)Sampler_set_interval, METH_O, "Seconds between reads, from the next one on."},
    {"start", (PyCFunction)Sampler_start, METH_NOARGS, "Start the thread (the first read one interval later)."},
    {"take", (PyCFunction)Sampler_take, METH_NOARGS, "(times, intervals, values, overwritten) since the last take."},
    {"stop", (PyCFunction)Sampler_stop, METH_NOARGS, "End the thread (joined)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SamplerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent._nicsample.Sampler",
    .tp_doc = "Reads counter files at a fixed rate on its own thread (see the module's docstring).",
    .tp_basicsize = sizeof(Sampler),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sampler_init,
    .tp_dealloc = (destructor)Sampler_dealloc,
    .tp_methods = Sampler_methods,
};

/* read_counters(fds): a list of each descriptor's count, pread at offset 0 now, None where the read failed or the
 * text is not a count (the caller reads those again to say why). For the network collector's ~600 sysfs counter
 * files a scrape: one call instead of a pread, a bytes object and an int() each. `fds`: an array('i'). */
static PyObject *read_counters(PyObject *Py_UNUSED(module), PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_FORMAT) < 0) return NULL;
    if (view.itemsize != (Py_ssize_t)sizeof(int) || view.format == NULL || strcmp(view.format, "i") != 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "read_counters: the descriptors must be an array('i')");
        return NULL;
    }
    const int *fds = view.buf;
    Py_ssize_t n = view.len / view.itemsize;
    PyObject *counts = PyList_New(n);
    char text[COUNTER_BYTES];
    for (Py_ssize_t i = 0; counts != NULL && i < n; i++) {
        unsigned long long value;
        PyObject *item;
        if (parse_count(text, pread(fds[i], text, sizeof(text), 0), &value)) {
            item = PyLong_FromUnsignedLongLong(value);
        } else {
            item = Py_None;
            Py_INCREF(item);
        }
        if (item == NULL) Py_CLEAR(counts);
        else PyList_SET_ITEM(counts, i, item);
    }
    PyBuffer_Release(&view);
    return counts;
}

static PyMethodDef module_functions[] = {
    {"read_counters", read_counters, METH_O, "Counts of descriptors (array('i')) read now, None where unreadable."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "agent._nicsample", "NIC byte counters read on a thread without Python.", -1,
    module_functions,
};

PyMODINIT_FUNC PyInit__nicsample(void) {
    if (PyType_Ready(&SamplerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&SamplerType);
    if (PyModule_AddObject(m, "Sampler", (PyObject *)&SamplerType) < 0) {
        Py_DECREF(&SamplerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
