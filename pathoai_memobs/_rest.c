/* The monitor's rest loop in C: sleep in poll(), read the memory files, check the rest band.
 *
 * At rest the background thread spends its life here with the GIL released, so a 1 Hz
 * monitor costs the wake and the kernel's reads, not an interpreter woken from cold every
 * second. It returns to Python as soon as anything needs a decision: a kernel event, a
 * reading outside the band, a read that failed, or a full step that is due.
 *
 * It reads what MemorySampler.rest_sample() reads, parsed by the same rules: /proc/meminfo as
 * readers/_files.keyed_value reads it, each limit as parse_limit, usage and memory.stat where
 * a limit applies; never the RSS. Numbers are read as Python's int() reads bytes. combine()
 * and RestBand.holds() are mirrored in rest_holds(); property tests hold the two sides to
 * each other.
 * Each sample is published through a seqlock in a caller-owned int64 buffer, read back by
 * snapshot() from any thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { R_DUE = 0, R_EVENT = 1, R_LEFT = 2, R_ERROR = 3, R_POLL = 4 };
enum { S_SEQ, S_COUNT, S_HOST_TOTAL, S_HOST_AVAILABLE, S_LIMIT, S_WORKING_SET, S_WALL_NS,
       S_MONO_NS, S_SLOTS };
enum { MAX_FDS = 16, MAX_LIMITS = 16 };

#define UNLIMITED_AT (INT64_C(1) << 62)

typedef struct {
    int meminfo, usage, stat;
    int limits[MAX_LIMITS];
    int nlimits;
    const char *key;  /* memory.stat's inactive-file key, separator included */
    Py_ssize_t keylen;
} files_t;

/* One pread of a whole small file into buf, NUL-terminated; -1 with errno on failure. */
static ssize_t read_file(int fd, char *buf, size_t size) {
    ssize_t n;
    do {
        n = pread(fd, buf, size - 1, 0);
    } while (n < 0 && errno == EINTR);
    if (n >= 0) buf[n] = '\0';
    return n;
}

/* Python's bytes.isspace() set: what int() skips around a number. */
static int py_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* [p, end) as Python's int() reads bytes: blanks around, an optional sign, decimal digits
 * with single underscores between them, nothing else; 0 when int() would refuse it (or the
 * value does not fit in int64, which no memory file holds). */
static int parse_int(const char *p, const char *end, int64_t *out) {
    while (p < end && py_space(*p)) p++;
    while (end > p && py_space(end[-1])) end--;
    int negative = 0;
    if (p < end && (*p == '+' || *p == '-')) negative = *p++ == '-';
    if (p == end || *p < '0' || *p > '9') return 0;
    int64_t v = 0;
    for (; p < end; p++) {
        if (*p == '_') {
            if (p + 1 >= end || p[1] < '0' || p[1] > '9') return 0;
            continue;
        }
        if (*p < '0' || *p > '9') return 0;
        if (v > (INT64_MAX - 9) / 10) return 0;
        v = v * 10 + (*p - '0');
    }
    *out = negative ? -v : v;
    return 1;
}

/* The value on the line that starts with key, as readers/_files.keyed_value: the rest of the
 * line, times 1024 when it ends in "kB". 1: read; 0: no line starts with key (KeyError);
 * -1: int() refuses the text (ValueError). */
static int keyed(const char *text, const char *key, size_t keylen, int64_t *out) {
    const char *p = text;
    while (p) {
        if (strncmp(p, key, keylen) == 0) {
            const char *start = p + keylen, *end = strchr(start, '\n');
            if (!end) end = start + strlen(start);
            int kb = end - start >= 2 && end[-2] == 'k' && end[-1] == 'B';
            if (!parse_int(start, kb ? end - 2 : end, out)) return -1;
            if (kb) *out *= 1024;
            return 1;
        }
        p = strchr(p, '\n');
        if (p) p++;
    }
    return 0;
}

typedef struct {
    int64_t host_total, host_available, limit, working_set;
} sample_t;

/* One sample, as MemorySampler.rest_sample(); -1 with errno (EINVAL for a text it can't
 * parse). */
static int take(const files_t *f, sample_t *s) {
    char buf[8192];
    if (read_file(f->meminfo, buf, sizeof buf) < 0) return -1;
    if (keyed(buf, "MemTotal:", 9, &s->host_total) != 1 ||
        keyed(buf, "MemAvailable:", 13, &s->host_available) != 1) {
        errno = EINVAL;
        return -1;
    }
    int64_t lowest = UNLIMITED_AT;
    for (int i = 0; i < f->nlimits; i++) {
        ssize_t n = read_file(f->limits[i], buf, 64);
        if (n < 0) return -1;
        if (n == 0 || buf[0] == 'm' || buf[0] <= ' ') continue; /* parse_limit: "max" or blank */
        int64_t v;
        if (!parse_int(buf, buf + n, &v) || v < 0) { /* parse_limit refuses negatives too */
            errno = EINVAL;
            return -1;
        }
        if (v < lowest) lowest = v; /* at or past UNLIMITED_AT: unlimited, as parse_limit */
    }
    s->limit = lowest < UNLIMITED_AT ? lowest : -1;
    s->working_set = -1;
    if (s->limit >= 0 && s->limit < s->host_total && f->usage >= 0) {
        int64_t usage, inactive = 0;
        ssize_t n = read_file(f->usage, buf, 64);
        if (n < 0) return -1;
        if (!parse_int(buf, buf + n, &usage) || usage < 0) { /* as the sampler: never negative */
            errno = EINVAL;
            return -1;
        }
        if (read_file(f->stat, buf, sizeof buf) < 0) return -1;
        /* absent: 0, as inactive_file(); present but unreadable: an error, as int() */
        if (keyed(buf, f->key, (size_t)f->keylen, &inactive) < 0) {
            errno = EINVAL;
            return -1;
        }
        s->working_set = inactive < usage ? usage - inactive : 0;
    }
    return 0;
}

/* combine() and RestBand.holds() in one: is this sample inside the band? */
static int rest_holds(const sample_t *s, const int64_t band[3]) {
    int64_t total, used;
    if (s->limit >= 0 && s->working_set >= 0 && s->limit < s->host_total) {
        total = s->limit;
        used = s->working_set < total ? s->working_set : total;
    } else {
        total = s->host_total;
        used = s->host_available < s->host_total ? s->host_total - s->host_available : 0;
    }
    int64_t available = total - used;
    if (s->host_available < available) available = s->host_available;
    if (available < 0) available = 0;
    return total == band[0] && available >= band[1] && used <= band[2];
}

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void publish(int64_t *slots, const sample_t *s) {
    int64_t seq = __atomic_load_n(&slots[S_SEQ], __ATOMIC_RELAXED);
    __atomic_store_n(&slots[S_SEQ], seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&slots[S_COUNT], slots[S_COUNT] + 1, __ATOMIC_RELAXED);
    __atomic_store_n(&slots[S_HOST_TOTAL], s->host_total, __ATOMIC_RELAXED);
    __atomic_store_n(&slots[S_HOST_AVAILABLE], s->host_available, __ATOMIC_RELAXED);
    __atomic_store_n(&slots[S_LIMIT], s->limit, __ATOMIC_RELAXED);
    __atomic_store_n(&slots[S_WORKING_SET], s->working_set, __ATOMIC_RELAXED);
    __atomic_store_n(&slots[S_WALL_NS], now_ns(CLOCK_REALTIME), __ATOMIC_RELAXED);
    __atomic_store_n(&slots[S_MONO_NS], now_ns(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
    __atomic_store_n(&slots[S_SEQ], seq + 2, __ATOMIC_RELEASE);
}

static int get_slots(PyObject *obj, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (view->len < (Py_ssize_t)(S_SLOTS * sizeof(int64_t)) ||
        ((uintptr_t)view->buf % sizeof(int64_t)) != 0) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "slots: an aligned buffer of at least 8 int64");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(watch_doc,
"watch(pollfds, timeout_ms, samples, files, band, slots) -> (reason, taken, detail)\n\n"
"Up to samples times: poll pollfds ((fd, events) pairs) for timeout_ms, then take a\n"
"sample and publish it in slots. files: (meminfo, usage, stat, stat_key, limit_fds);\n"
"usage and stat -1 where no cgroup. band: (total, min_available, max_used).\n"
"reason 0: one more timeout ran out after samples samples (a full step is due);\n"
"1: poll reported events, detail is their (fd, revents) list; 2: the last sample left\n"
"the band; 3: a read failed, 4: poll failed, detail is the errno. The GIL is released\n"
"throughout.");

static PyObject *watch(PyObject *self, PyObject *args) {
    PyObject *pollseq, *fileseq, *slots_obj, *limitseq;
    int timeout_ms;
    long samples;
    long long band_in[3];
    files_t f;
    if (!PyArg_ParseTuple(args, "Oil(iiiy#O)(LLL)O", &pollseq, &timeout_ms, &samples, &f.meminfo,
                          &f.usage, &f.stat, &f.key, &f.keylen, &limitseq, &band_in[0],
                          &band_in[1], &band_in[2], &slots_obj))
        return NULL;
    struct pollfd fds[MAX_FDS];
    Py_ssize_t nfds = PySequence_Size(pollseq);
    f.nlimits = (int)PySequence_Size(limitseq);
    if (nfds < 0 || f.nlimits < 0) return NULL;
    if (nfds > MAX_FDS || f.nlimits > MAX_LIMITS) {
        PyErr_SetString(PyExc_ValueError, "too many descriptors");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nfds; i++) {
        PyObject *item = PySequence_GetItem(pollseq, i);
        if (!item) return NULL;
        int ok = PyArg_ParseTuple(item, "ih", &fds[i].fd, &fds[i].events);
        Py_DECREF(item);
        if (!ok) return NULL;
        fds[i].revents = 0;
    }
    for (int i = 0; i < f.nlimits; i++) {
        PyObject *item = PySequence_GetItem(limitseq, i);
        if (!item) return NULL;
        f.limits[i] = (int)PyLong_AsLong(item);
        Py_DECREF(item);
        if (f.limits[i] == -1 && PyErr_Occurred()) return NULL;
    }
    int64_t band[3] = {band_in[0], band_in[1], band_in[2]};
    Py_buffer view;
    if (get_slots(slots_obj, &view) < 0) return NULL;
    int64_t *slots = (int64_t *)view.buf;

    int reason = R_DUE, ready = 0, err = 0;
    long taken = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        /* A signal cuts poll() short: wait out the rest of the interval, as Python does. */
        int64_t deadline = now_ns(CLOCK_MONOTONIC) + (int64_t)timeout_ms * 1000000;
        int wait_ms = timeout_ms;
        while ((ready = poll(fds, (nfds_t)nfds, wait_ms)) < 0 && errno == EINTR) {
            int64_t left = deadline - now_ns(CLOCK_MONOTONIC);
            wait_ms = left > 0 ? (int)((left + 999999) / 1000000) : 0;
        }
        if (ready != 0) {
            reason = ready > 0 ? R_EVENT : R_POLL;
            err = ready < 0 ? errno : 0;
            break;
        }
        if (taken == samples) break;
        sample_t s;
        if (take(&f, &s) < 0) {
            reason = R_ERROR;
            err = errno;
            break;
        }
        publish(slots, &s);
        taken++;
        if (!rest_holds(&s, band)) {
            reason = R_LEFT;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);

    PyObject *detail;
    if (reason == R_EVENT) {
        detail = PyList_New(0);
        if (!detail) return NULL;
        for (Py_ssize_t i = 0; i < nfds; i++) {
            if (!fds[i].revents) continue;
            PyObject *pair = Py_BuildValue("(ih)", fds[i].fd, fds[i].revents);
            if (!pair || PyList_Append(detail, pair) < 0) {
                Py_XDECREF(pair);
                Py_DECREF(detail);
                return NULL;
            }
            Py_DECREF(pair);
        }
    } else {
        detail = PyLong_FromLong(err);
        if (!detail) return NULL;
    }
    return Py_BuildValue("(ilN)", reason, taken, detail);
}

PyDoc_STRVAR(snapshot_doc,
"snapshot(slots) -> (count, host_total, host_available, limit, working_set, wall_ns,\n"
"mono_ns): the latest sample watch() published, read consistently from any thread.\n"
"limit and working_set are -1 where absent.");

static PyObject *snapshot(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (get_slots(arg, &view) < 0) return NULL;
    int64_t *slots = (int64_t *)view.buf, copy[S_SLOTS];
    for (;;) {
        int64_t seq = __atomic_load_n(&slots[S_SEQ], __ATOMIC_ACQUIRE);
        for (int i = 1; i < S_SLOTS; i++) copy[i] = __atomic_load_n(&slots[i], __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (!(seq & 1) && __atomic_load_n(&slots[S_SEQ], __ATOMIC_RELAXED) == seq) break;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(LLLLLLL)", (long long)copy[S_COUNT], (long long)copy[S_HOST_TOTAL],
                         (long long)copy[S_HOST_AVAILABLE], (long long)copy[S_LIMIT],
                         (long long)copy[S_WORKING_SET], (long long)copy[S_WALL_NS],
                         (long long)copy[S_MONO_NS]);
}


/* ---- The GC pause timer: a C callable for gc.callbacks ---------------------------------
 *
 * A Python callable in gc.callbacks runs bytecode inside every collection, and the eval loop
 * may hand the GIL to another thread there; no other collection can start meanwhile, so a
 * threaded process collects a thousand times less often and grows by the garbage it no
 * longer reaches. This one runs no bytecode. It writes into a caller-owned int64 buffer
 * under a seqlock (the layout is gc_pauses.py's), and nothing it does can raise half-way:
 * the version is odd only between two plain stores. */

enum { G_VERSION = 0, G_START = 1, G_LAST_NS = 2, G_LAST_GEN = 3, G_WRITTEN = 4, G_HEAD = 8 };
enum { G_GENERATIONS = 3, G_MAX_BOUNDS = 32 };

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int64_t *slots;
    Py_ssize_t nslots;
    int64_t bounds[G_MAX_BOUNDS];
    int nbounds;
    Py_ssize_t ring;
} gctimer_t;

static PyObject *k_generation, *k_collected, *k_uncollectable, *k_start;

static int gctimer_init(gctimer_t *self, PyObject *args, PyObject *kw) {
    PyObject *slots, *bounds;
    Py_ssize_t ring;
    if (!PyArg_ParseTuple(args, "OOn", &slots, &bounds, &ring)) return -1;
    if (self->slots) {
        PyErr_SetString(PyExc_RuntimeError, "GcTimer is already initialised");
        return -1;
    }
    Py_ssize_t n = PySequence_Size(bounds);
    if (n < 0) return -1;
    if (n > G_MAX_BOUNDS || ring <= 0) {
        PyErr_SetString(PyExc_ValueError, "too many bounds, or no ring");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_GetItem(bounds, i);
        if (!item) return -1;
        self->bounds[i] = PyLong_AsLongLong(item);
        Py_DECREF(item);
        if (self->bounds[i] == -1 && PyErr_Occurred()) return -1;
    }
    self->nbounds = (int)n;
    self->ring = ring;
    if (PyObject_GetBuffer(slots, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return -1;
    Py_ssize_t need = G_HEAD + G_GENERATIONS * (5 + n + 1) + 2 * ring;
    if (self->view.len < need * (Py_ssize_t)sizeof(int64_t) ||
        ((uintptr_t)self->view.buf % sizeof(int64_t)) != 0) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, "slots: an aligned int64 buffer too small for the layout");
        return -1;
    }
    self->slots = (int64_t *)self->view.buf;
    self->nslots = need;
    return 0;
}

static void gctimer_dealloc(gctimer_t *self) {
    if (self->slots) PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int64_t dict_int(PyObject *info, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(info, key); /* borrowed; no allocation */
    if (!v) {
        PyErr_Clear();
        return -1;
    }
    int64_t n = PyLong_AsLongLong(v);
    if (n == -1 && PyErr_Occurred()) PyErr_Clear();
    return n;
}

/* timer(phase, info): "start" stamps the clock; "stop" records the pause. Anything else, or
 * a generation outside 0..2, is ignored: a callback must never fail a collection. */
static PyObject *gctimer_call(gctimer_t *self, PyObject *args, PyObject *kw) {
    int64_t *g = self->slots;
    if (!g || PyTuple_GET_SIZE(args) != 2) Py_RETURN_NONE;
    PyObject *phase = PyTuple_GET_ITEM(args, 0), *info = PyTuple_GET_ITEM(args, 1);
    int64_t now = now_ns(CLOCK_MONOTONIC);
    if (PyUnicode_Check(phase) && PyUnicode_Compare(phase, k_start) == 0) {
        g[G_START] = now;
        Py_RETURN_NONE;
    }
    if (!PyDict_Check(info)) Py_RETURN_NONE;
    int64_t gen = dict_int(info, k_generation);
    if (gen < 0 || gen >= G_GENERATIONS) Py_RETURN_NONE;
    int64_t collected = dict_int(info, k_collected), uncollectable = dict_int(info, k_uncollectable);
    int64_t elapsed = now - g[G_START];
    if (elapsed < 0) elapsed = 0;
    int b = 0;
    while (b < self->nbounds && elapsed > self->bounds[b]) b++;
    Py_ssize_t stride = 5 + self->nbounds + 1;
    int64_t *row = g + G_HEAD + gen * stride; /* count, sum_ns, collected, uncollectable, -, buckets */
    int64_t v = g[G_VERSION];
    __atomic_store_n(&g[G_VERSION], v + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    row[0] += 1;
    row[1] += elapsed;
    if (collected > 0) row[2] += collected;
    if (uncollectable > 0) row[3] += uncollectable;
    row[5 + b] += 1;
    g[G_LAST_NS] = elapsed;
    g[G_LAST_GEN] = gen;
    int64_t *ring = g + G_HEAD + G_GENERATIONS * stride;
    int64_t slot = g[G_WRITTEN] % self->ring;
    ring[slot] = elapsed;
    ring[self->ring + slot] = gen;
    g[G_WRITTEN] += 1;
    __atomic_store_n(&g[G_VERSION], v + 2, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyTypeObject GcTimerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pathoai_memobs._rest.GcTimer",
    .tp_basicsize = sizeof(gctimer_t),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "GcTimer(slots, bounds_ns, ring): a gc.callbacks timer that runs no bytecode.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)gctimer_init,
    .tp_dealloc = (destructor)gctimer_dealloc,
    .tp_call = (ternaryfunc)gctimer_call,
};

static PyMethodDef methods[] = {
    {"watch", watch, METH_VARARGS, watch_doc},
    {"snapshot", snapshot, METH_O, snapshot_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rest",
    "The monitor's rest loop and the GC pause timer, outside the interpreter.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__rest(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "DUE", R_DUE) < 0 || PyModule_AddIntConstant(m, "EVENT", R_EVENT) < 0 ||
        PyModule_AddIntConstant(m, "LEFT", R_LEFT) < 0 || PyModule_AddIntConstant(m, "ERROR", R_ERROR) < 0 ||
        PyModule_AddIntConstant(m, "POLL", R_POLL) < 0 ||
        PyModule_AddIntConstant(m, "SLOTS", S_SLOTS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    k_generation = PyUnicode_InternFromString("generation");
    k_collected = PyUnicode_InternFromString("collected");
    k_uncollectable = PyUnicode_InternFromString("uncollectable");
    k_start = PyUnicode_InternFromString("start");
    if (!k_generation || !k_collected || !k_uncollectable || !k_start ||
        PyType_Ready(&GcTimerType) < 0 ||
        PyModule_AddObjectRef(m, "GcTimer", (PyObject *)&GcTimerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
