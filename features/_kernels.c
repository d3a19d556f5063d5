/* Compiled loops for the ranking path shared by training, evaluation, batch scoring and serving.

   Each function replaces a numpy pipeline of a few dozen small array calls (which cost more in
   call overhead than in arithmetic for one request's ~200 candidates) and gives the same
   values: integer work exactly, float32 sums in the same order as the numpy code they replace
   (tests/test_vectorized_equality.py and tests/test_kernels.py hold them to the per-request
   reference loops). The one exception is the dot products of `similarities`, which sum in a
   fixed order of their own (eight interleaved partial sums), the same for every row, batch and
   caller.

   Python sees these through features/kernels.py, which checks dtypes and shapes; here every
   array is a C-contiguous buffer, checked again for element size and kind, and every index is
   bounds-checked. The GIL is released while a loop runs, and no state outlives a call. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* -- buffers ---------------------------------------------------------------------------------- */

typedef struct {
    Py_buffer view;
    int held;
} Buf;

/* kind: 'i' signed integer, 'f' float, 'b' bool; size: bytes per element (0 = 4 or 8). */
static int buf_get(PyObject *obj, Buf *b, char kind, int size, int writable, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    b->held = 0;
    if (PyObject_GetBuffer(obj, &b->view, flags) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: need a C-contiguous%s array", name,
                     writable ? " writable" : "");
        return -1;
    }
    b->held = 1;
    const char *f = b->view.format ? b->view.format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    char got;
    switch (*f) {
        case 'b': case 'h': case 'i': case 'l': case 'q': got = 'i'; break;
        case 'f': case 'd': got = 'f'; break;
        case '?': got = 'b'; break;
        default: got = '?';
    }
    Py_ssize_t item = b->view.itemsize;
    int size_ok = size ? item == size : (item == 4 || item == 8);
    if (got != kind || !size_ok || f[1] != '\0') {
        PyErr_Format(PyExc_TypeError, "%s: unexpected element type '%s' (%zd bytes)", name,
                     b->view.format ? b->view.format : "B", item);
        return -1;
    }
    return 0;
}

static void buf_release(Buf *b) {
    if (b->held) {
        PyBuffer_Release(&b->view);
        b->held = 0;
    }
}

static inline Py_ssize_t buf_len(const Buf *b) { return b->view.len / b->view.itemsize; }

static void buf_release_all(Buf **all, int n) {
    for (int j = 0; j < n; j++) buf_release(all[j]);
}

/* The Python exception for how a loop ended, set and -1, or 0 when it ended well: out of
   memory, or `bad` names the argument holding an index out of range (or offsets out of
   order). */
static int loop_error(const char *kernel, int no_memory, const char *bad) {
    if (no_memory) {
        PyErr_NoMemory();
        return -1;
    }
    if (bad) {
        PyErr_Format(PyExc_IndexError, "%s: %s out of range or out of order", kernel, bad);
        return -1;
    }
    return 0;
}

/* an element of an int32 or int64 index array (scipy picks either for CSR matrices) */
static inline int64_t idx_at(const Buf *b, Py_ssize_t i) {
    return b->view.itemsize == 4 ? (int64_t)((const int32_t *)b->view.buf)[i]
                                 : ((const int64_t *)b->view.buf)[i];
}

/* -- a small int64 hash map ------------------------------------------------------------------ */

/* Keys are item rows or category codes of one request (a few hundred at most), so the map is
   sized per call to twice the largest request and reset between requests by a generation
   stamp, not by clearing it. No state outlives a call. */
typedef struct {
    int64_t *keys;
    int64_t *values;
    uint32_t *stamps;
    size_t mask;
    uint32_t generation;
} IntMap;

static int intmap_init(IntMap *map, Py_ssize_t entries) {
    size_t capacity = 16;
    while (capacity < 2 * (size_t)(entries > 0 ? entries : 1)) capacity <<= 1;
    map->keys = malloc(capacity * sizeof *map->keys);
    map->values = malloc(capacity * sizeof *map->values);
    map->stamps = calloc(capacity, sizeof *map->stamps);
    map->mask = capacity - 1;
    map->generation = 1;
    return map->keys && map->values && map->stamps ? 0 : -1;
}

static void intmap_free(IntMap *map) {
    free(map->keys);
    free(map->values);
    free(map->stamps);
    map->keys = map->values = NULL;
    map->stamps = NULL;
}

/* empty the map for the next request */
static inline void intmap_clear(IntMap *map) {
    if (++map->generation == 0) {
        memset(map->stamps, 0, (map->mask + 1) * sizeof *map->stamps);
        map->generation = 1;
    }
}

/* the slot of `key`: found (its stamp is current) or the empty slot where it belongs */
static inline size_t intmap_slot(const IntMap *map, int64_t key) {
    size_t at = (size_t)(((uint64_t)key * 0x9E3779B97F4A7C15ull) >> 20) & map->mask;
    while (map->stamps[at] == map->generation && map->keys[at] != key) at = (at + 1) & map->mask;
    return at;
}

static inline int intmap_has(const IntMap *map, size_t slot) {
    return map->stamps[slot] == map->generation;
}

static inline void intmap_put(IntMap *map, size_t slot, int64_t key, int64_t value) {
    map->stamps[slot] = map->generation;
    map->keys[slot] = key;
    map->values[slot] = value;
}

/* -- dot products ----------------------------------------------------------------------------- */

/* Dot products in a fixed order: eight interleaved partial sums per product, combined
   pairwise. The order does not depend on the caller or on which products are computed
   together, so a (candidate, query) pair gives the same float32 bits in training and in
   serving, whatever else is in the batch. Three queries share one pass over the candidate's
   vector: six independent sums keep the adder busy, where one product alone waits on the
   latency of its own additions. */
typedef float f4 __attribute__((vector_size(16)));

static inline f4 load4(const float *p) {
    f4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float combine8(f4 lo, f4 hi) {
    f4 t = lo + hi;  /* lanes (s0+s4, s1+s5, s2+s6, s3+s7) */
    return (t[0] + t[2]) + (t[1] + t[3]);
}

/* out[j] = v . q[j] for j < 3 */
static void dot3(const float *v, const float *q0, const float *q1, const float *q2,
                 Py_ssize_t d, float out[3]) {
    f4 a0 = {0}, b0 = {0}, a1 = {0}, b1 = {0}, a2 = {0}, b2 = {0};
    Py_ssize_t i = 0;
    for (; i + 8 <= d; i += 8) {
        f4 lo = load4(v + i), hi = load4(v + i + 4);
        a0 += lo * load4(q0 + i);
        b0 += hi * load4(q0 + i + 4);
        a1 += lo * load4(q1 + i);
        b1 += hi * load4(q1 + i + 4);
        a2 += lo * load4(q2 + i);
        b2 += hi * load4(q2 + i + 4);
    }
    float s0[8], s1[8], s2[8];  /* a dimension that is not a multiple of 8: lanes 0.. */
    memcpy(s0, &a0, 16); memcpy(s0 + 4, &b0, 16);
    memcpy(s1, &a1, 16); memcpy(s1 + 4, &b1, 16);
    memcpy(s2, &a2, 16); memcpy(s2 + 4, &b2, 16);
    for (int j = 0; i < d; i++, j++) {
        s0[j] += v[i] * q0[i];
        s1[j] += v[i] * q1[i];
        s2[j] += v[i] * q2[i];
    }
    out[0] = combine8(load4(s0), load4(s0 + 4));
    out[1] = combine8(load4(s1), load4(s1 + 4));
    out[2] = combine8(load4(s2), load4(s2 + 4));
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
/* The same products with AVX2's 8-wide registers where the CPU has them: each register lane
   is one of the eight partial sums above, added in the same order, so the bits are the same
   as dot3's (tests/test_kernels.py compares both). No FMA: -ffp-contract=off keeps every
   multiply rounded before its add. */
typedef float f8 __attribute__((vector_size(32)));

/* six products per pass: six independent sums hide the adder's latency */
__attribute__((target("avx2"))) static void dot6_avx2(const float *v, const float *const *q,
                                                       Py_ssize_t d, float out[6]) {
    f8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0};
    Py_ssize_t i = 0;
    for (; i + 8 <= d; i += 8) {
        f8 x, y0, y1, y2, y3, y4, y5;
        memcpy(&x, v + i, sizeof x);
        memcpy(&y0, q[0] + i, sizeof y0);
        memcpy(&y1, q[1] + i, sizeof y1);
        memcpy(&y2, q[2] + i, sizeof y2);
        memcpy(&y3, q[3] + i, sizeof y3);
        memcpy(&y4, q[4] + i, sizeof y4);
        memcpy(&y5, q[5] + i, sizeof y5);
        a0 += x * y0;
        a1 += x * y1;
        a2 += x * y2;
        a3 += x * y3;
        a4 += x * y4;
        a5 += x * y5;
    }
    float s[6][8];
    memcpy(s[0], &a0, 32);
    memcpy(s[1], &a1, 32);
    memcpy(s[2], &a2, 32);
    memcpy(s[3], &a3, 32);
    memcpy(s[4], &a4, 32);
    memcpy(s[5], &a5, 32);
    for (int k = 0; k < 6; k++) {
        Py_ssize_t t = i;
        for (int j = 0; t < d; t++, j++) s[k][j] += v[t] * q[k][t];
        out[k] = combine8(load4(s[k]), load4(s[k] + 4));
    }
}
#endif

/* out[j] = v . queries[j] for j < n: six at a time with AVX2 where the CPU has it (picked
   once, at import), else three at a time. RECSYS_KERNELS_PORTABLE=1 keeps the baseline path
   (tests compare the two). */
static int use_avx2 = 0;

static void pick_dots(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    const char *portable = getenv("RECSYS_KERNELS_PORTABLE");
    use_avx2 = (!portable || strcmp(portable, "1") != 0) && __builtin_cpu_supports("avx2");
#endif
}

static inline void dots(const float *v, const float *const *queries, Py_ssize_t n, Py_ssize_t d,
                        float *out) {
    const float *group[6];
    float result[6];
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    if (use_avx2) {
        for (Py_ssize_t j = 0; j < n; j += 6) {
            /* a short last group repeats its first query; the extra products are dropped */
            for (int k = 0; k < 6; k++) group[k] = j + k < n ? queries[j + k] : queries[j];
            dot6_avx2(v, group, d, result);
            for (Py_ssize_t k = 0; k < 6 && j + k < n; k++) out[j + k] = result[k];
        }
        return;
    }
#endif
    for (Py_ssize_t j = 0; j < n; j += 3) {
        for (int k = 0; k < 3; k++) group[k] = j + k < n ? queries[j + k] : queries[j];
        dot3(v, group[0], group[1], group[2], d, result);
        for (Py_ssize_t k = 0; k < 3 && j + k < n; k++) out[j + k] = result[k];
    }
}

/* -- similarities ----------------------------------------------------------------------------- */

static const char similarities_doc[] =
    "similarities(profiles, history_items, offsets, request, item, vectors, recent,\n"
    "             out_sem, out_last, out_max_recent)\n\n"
    "For each candidate row: its vector against its request's profile (sem_score), against\n"
    "the request's last history item (sim_last) and the best against its last `recent` items\n"
    "(sim_max_recent); 0 for the last two where the history is empty.";

static PyObject *similarities(PyObject *self, PyObject *args) {
    PyObject *o[10];
    Py_ssize_t recent;
    if (!PyArg_ParseTuple(args, "OOOOOOnOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5],
                          &recent, &o[6], &o[7], &o[8]))
        return NULL;
    if (recent < 0 || recent > 64) {
        PyErr_SetString(PyExc_ValueError, "similarities: recent must be 0 to 64");
        return NULL;
    }
    Buf prof, hist, off, req, item, vec, sem, last, best;
    Buf *all[] = {&prof, &hist, &off, &req, &item, &vec, &sem, &last, &best};
    for (int j = 0; j < 9; j++) all[j]->held = 0;
    PyObject *result = NULL;
    const char *bad = NULL;
    if (buf_get(o[0], &prof, 'f', 4, 0, "profiles")
        || buf_get(o[1], &hist, 'i', 8, 0, "history_items")
        || buf_get(o[2], &off, 'i', 8, 0, "offsets") || buf_get(o[3], &req, 'i', 8, 0, "request")
        || buf_get(o[4], &item, 'i', 8, 0, "item") || buf_get(o[5], &vec, 'f', 4, 0, "vectors")
        || buf_get(o[6], &sem, 'f', 4, 1, "out_sem") || buf_get(o[7], &last, 'f', 4, 1, "out_last")
        || buf_get(o[8], &best, 'f', 4, 1, "out_max_recent"))
        goto done;
    if (vec.view.ndim != 2 || prof.view.ndim != 2 || prof.view.shape[1] != vec.view.shape[1]) {
        PyErr_SetString(PyExc_ValueError, "profiles and vectors must be [n, d] with the same d");
        goto done;
    }
    Py_ssize_t d = vec.view.shape[1], n_items = vec.view.shape[0];
    Py_ssize_t n_req = prof.view.shape[0], m = buf_len(&item), n_hist = buf_len(&hist);
    if (buf_len(&off) != n_req + 1 || buf_len(&req) != m || buf_len(&sem) != m
        || buf_len(&last) != m || buf_len(&best) != m) {
        PyErr_SetString(PyExc_ValueError, "similarities: array lengths disagree");
        goto done;
    }
    const float *P = prof.view.buf, *V = vec.view.buf;
    const int64_t *H = hist.view.buf, *O = off.view.buf, *R = req.view.buf, *I = item.view.buf;
    float *S = sem.view.buf, *L = last.view.buf, *M = best.view.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t u = 0; u <= n_req && !bad; u++) {
        if (O[u] < 0 || O[u] > n_hist || (u > 0 && O[u] < O[u - 1])) bad = "offsets";
    }
    for (Py_ssize_t r = 0; r < m && !bad; r++) {
        int64_t u = R[r], i = I[r];
        if (u < 0 || u >= n_req) { bad = "request"; break; }
        if (i < 0 || i >= n_items) { bad = "item"; break; }
        /* the queries: the profile, then the last `recent` history items, oldest first */
        const float *queries[65];
        float scores[65];
        Py_ssize_t nq = 0;
        queries[nq++] = P + u * d;
        int64_t end = O[u + 1], start = end - recent > O[u] ? end - recent : O[u];
        for (int64_t t = start; t < end; t++) {
            int64_t h = H[t];
            if (h < 0 || h >= n_items) { bad = "history_items"; break; }
            queries[nq++] = V + h * d;
        }
        if (bad) break;
        if (r + 1 < m && I[r + 1] >= 0 && I[r + 1] < n_items) {
            /* the next candidate's vector is a random row of a large table: ask for it now */
            const char *next = (const char *)(V + I[r + 1] * d);
            for (Py_ssize_t b = 0; b < d * (Py_ssize_t)sizeof(float); b += 64)
                __builtin_prefetch(next + b);
        }
        dots(V + i * d, queries, nq, d, scores);
        S[r] = scores[0];
        float best_recent = 0.0f;
        for (Py_ssize_t j = 1; j < nq; j++) {
            if (j == 1 || scores[j] > best_recent) best_recent = scores[j];
        }
        L[r] = nq > 1 ? scores[nq - 1] : 0.0f;
        M[r] = best_recent;
    }
    Py_END_ALLOW_THREADS
    if (loop_error("similarities", 0, bad)) goto done;
    result = Py_NewRef(Py_None);
done:
    buf_release_all(all, 9);
    return result;
}

/* -- lookups in a CSR matrix ------------------------------------------------------------------ */

static const char csr_lookup_doc[] =
    "csr_lookup(indptr, indices, data, n_cols, rows, cols, out)\n\n"
    "out[j] = M[rows[j], cols[j]] for a CSR matrix with sorted, unique columns per row (binary\n"
    "search); 0 where the entry is not stored or rows[j] < 0. Rows and columns past the\n"
    "matrix raise IndexError.";

static PyObject *csr_lookup(PyObject *self, PyObject *args) {
    PyObject *o[6];
    Py_ssize_t n_cols;
    if (!PyArg_ParseTuple(args, "OOOnOOO", &o[0], &o[1], &o[2], &n_cols, &o[3], &o[4], &o[5]))
        return NULL;
    Buf ptr, ind, dat, rows, cols, out;
    Buf *all[] = {&ptr, &ind, &dat, &rows, &cols, &out};
    for (int j = 0; j < 6; j++) all[j]->held = 0;
    PyObject *result = NULL;
    const char *bad = NULL;
    if (buf_get(o[0], &ptr, 'i', 0, 0, "indptr") || buf_get(o[1], &ind, 'i', 0, 0, "indices")
        || buf_get(o[2], &dat, 'f', 4, 0, "data") || buf_get(o[3], &rows, 'i', 8, 0, "rows")
        || buf_get(o[4], &cols, 'i', 8, 0, "cols") || buf_get(o[5], &out, 'f', 4, 1, "out"))
        goto done;
    Py_ssize_t n_rows = buf_len(&ptr) - 1, nnz = buf_len(&ind), m = buf_len(&rows);
    if (n_rows < 0 || buf_len(&dat) != nnz || buf_len(&cols) != m || buf_len(&out) != m) {
        PyErr_SetString(PyExc_ValueError, "csr_lookup: array lengths disagree");
        goto done;
    }
    const int64_t *RW = rows.view.buf, *CL = cols.view.buf;
    const float *D = dat.view.buf;
    float *OUT = out.view.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < m; j++) {
        int64_t r = RW[j];
        float v = 0.0f;
        if (r >= 0) {
            if (r >= n_rows) { bad = "rows"; break; }
            int64_t lo = idx_at(&ptr, r), hi = idx_at(&ptr, r + 1), want = CL[j];
            if (want < 0 || want >= n_cols) { bad = "cols"; break; }
            if (lo < 0 || hi > nnz || lo > hi) { bad = "indptr"; break; }
            while (lo < hi) {
                int64_t mid = lo + (hi - lo) / 2;
                if (idx_at(&ind, mid) < want) lo = mid + 1; else hi = mid;
            }
            if (lo < idx_at(&ptr, r + 1) && idx_at(&ind, lo) == want) v = D[lo];
        }
        OUT[j] = v;
    }
    Py_END_ALLOW_THREADS
    if (loop_error("csr_lookup", 0, bad)) goto done;
    result = Py_NewRef(Py_None);
done:
    buf_release_all(all, 6);
    return result;
}

/* -- co-visitation scores --------------------------------------------------------------------- */

typedef struct {
    int64_t column;
    float sum;
} Cell;

static int cmp_cell(const void *a, const void *b) {
    int64_t x = ((const Cell *)a)->column, y = ((const Cell *)b)->column;
    return (x > y) - (x < y);
}

static void sort_cells(Cell *v, Py_ssize_t n) {
    if (n > 64) {
        qsort(v, (size_t)n, sizeof *v, cmp_cell);
        return;
    }
    for (Py_ssize_t i = 1; i < n; i++) {
        Cell x = v[i];
        Py_ssize_t j = i;
        while (j > 0 && v[j - 1].column > x.column) { v[j] = v[j - 1]; j--; }
        v[j] = x;
    }
}

static const char covisitation_scores_doc[] =
    "covisitation_scores(history_items, offsets, decay, indptr, indices, data, n_items)\n"
    "    -> (indptr, indices, data) as bytearrays of int64, int64 and float32\n\n"
    "Each history's co-visitation scores as CSR rows with sorted columns: the matrix rows of\n"
    "its last len(decay) items, the k-th most recent weighted decay[k]. Float32 sums are made\n"
    "in scipy's order for weights @ matrix: a repeated item's weights newest first, then the\n"
    "rows in ascending item order; cells that sum to 0 are dropped.";

static PyObject *covisitation_scores(PyObject *self, PyObject *args) {
    PyObject *o[6];
    Py_ssize_t n_items;
    if (!PyArg_ParseTuple(args, "OOOOOOn", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &n_items))
        return NULL;
    Buf hist, off, dec, ptr, ind, dat;
    Buf *all[] = {&hist, &off, &dec, &ptr, &ind, &dat};
    for (int j = 0; j < 6; j++) all[j]->held = 0;
    PyObject *result = NULL, *out_ptr = NULL, *out_ind = NULL, *out_dat = NULL;
    Cell *cells = NULL;
    int64_t *optr = NULL, *columns = NULL;
    float *sums = NULL;
    IntMap cell_at = {0};
    const char *bad = NULL;
    int no_memory = 0;
    if (buf_get(o[0], &hist, 'i', 8, 0, "history_items")
        || buf_get(o[1], &off, 'i', 8, 0, "offsets")
        || buf_get(o[2], &dec, 'f', 4, 0, "decay") || buf_get(o[3], &ptr, 'i', 0, 0, "indptr")
        || buf_get(o[4], &ind, 'i', 0, 0, "indices") || buf_get(o[5], &dat, 'f', 4, 0, "data"))
        goto done;
    Py_ssize_t n = buf_len(&off) - 1, recent = buf_len(&dec), n_hist = buf_len(&hist);
    Py_ssize_t nnz = buf_len(&ind);
    if (n < 0 || recent < 1 || recent > 64 || buf_len(&dat) != nnz
        || buf_len(&ptr) != n_items + 1) {
        PyErr_SetString(PyExc_ValueError, "covisitation_scores: array lengths disagree (or more "
                                          "than 64 recent items)");
        goto done;
    }
    const int64_t *H = hist.view.buf, *O = off.view.buf;
    const float *W = dec.view.buf, *D = dat.view.buf;
    Py_ssize_t capacity = 0, widest = 0, used = 0;
    Py_BEGIN_ALLOW_THREADS
    /* the output holds at most every stored entry of every tail row */
    for (Py_ssize_t u = 0; u < n && !bad; u++) {
        if (O[u] < 0 || O[u + 1] > n_hist || O[u + 1] < O[u]) { bad = "offsets"; break; }
        int64_t start = O[u + 1] - recent > O[u] ? O[u + 1] - recent : O[u];
        Py_ssize_t row = 0;
        for (int64_t t = start; t < O[u + 1]; t++) {
            int64_t a = H[t];
            if (a < 0 || a >= n_items) { bad = "history_items"; break; }
            int64_t lo = idx_at(&ptr, a), hi = idx_at(&ptr, a + 1);
            if (lo < 0 || hi > nnz || lo > hi) { bad = "indptr"; break; }
            row += hi - lo;
        }
        capacity += row;
        if (row > widest) widest = row;
    }
    if (!bad) {
        cells = malloc((size_t)(widest + 1) * sizeof *cells);
        columns = malloc((size_t)(capacity + 1) * sizeof *columns);
        sums = malloc((size_t)(capacity + 1) * sizeof *sums);
        optr = malloc((size_t)(n + 1) * sizeof *optr);
        if (!cells || !columns || !sums || !optr || intmap_init(&cell_at, widest) < 0)
            no_memory = 1;
    }
    for (Py_ssize_t u = 0; u < n && !bad && !no_memory; u++) {
        optr[u] = used;
        /* the tail's distinct items, each weight summed newest first from 0 */
        int64_t items[64];
        float weights[64];
        Py_ssize_t distinct = 0;
        int64_t start = O[u + 1] - recent > O[u] ? O[u + 1] - recent : O[u];
        for (int64_t t = O[u + 1] - 1; t >= start; t--) {
            float w = W[O[u + 1] - 1 - t];
            Py_ssize_t j = 0;
            while (j < distinct && items[j] != H[t]) j++;
            if (j == distinct) {
                items[distinct] = H[t];
                weights[distinct++] = 0.0f;
            }
            weights[j] = weights[j] + w;
        }
        for (Py_ssize_t i = 1; i < distinct; i++) {  /* ascending item order */
            int64_t x = items[i];
            float w = weights[i];
            Py_ssize_t j = i;
            while (j > 0 && items[j - 1] > x) {
                items[j] = items[j - 1];
                weights[j] = weights[j - 1];
                j--;
            }
            items[j] = x;
            weights[j] = w;
        }
        /* each cell: 0, plus its contributions in that order (as np.add.at adds them) */
        intmap_clear(&cell_at);
        Py_ssize_t n_cells = 0;
        for (Py_ssize_t i = 0; i < distinct && !bad; i++) {
            int64_t lo = idx_at(&ptr, items[i]), hi = idx_at(&ptr, items[i] + 1);
            for (int64_t e = lo; e < hi; e++) {
                int64_t c = idx_at(&ind, e);
                if (c < 0 || c >= n_items) { bad = "indices"; break; }
                float contribution = weights[i] * D[e];
                size_t slot = intmap_slot(&cell_at, c);
                if (!intmap_has(&cell_at, slot)) {
                    intmap_put(&cell_at, slot, c, n_cells);
                    cells[n_cells].column = c;
                    cells[n_cells++].sum = 0.0f;
                }
                Cell *cell = &cells[cell_at.values[slot]];
                cell->sum = cell->sum + contribution;
            }
        }
        if (bad) break;
        sort_cells(cells, n_cells);
        for (Py_ssize_t j = 0; j < n_cells; j++) {
            if (cells[j].sum != 0.0f) {  /* scipy's product drops cells that sum to zero */
                columns[used] = cells[j].column;
                sums[used++] = cells[j].sum;
            }
        }
    }
    if (!bad && !no_memory) optr[n] = used;
    Py_END_ALLOW_THREADS
    if (loop_error("covisitation_scores", no_memory, bad)) goto done;
    out_ptr = PyByteArray_FromStringAndSize((const char *)optr,
                                            (Py_ssize_t)((n + 1) * sizeof *optr));
    out_ind = PyByteArray_FromStringAndSize((const char *)columns,
                                            (Py_ssize_t)(used * sizeof *columns));
    out_dat = PyByteArray_FromStringAndSize((const char *)sums,
                                            (Py_ssize_t)(used * sizeof *sums));
    if (out_ptr && out_ind && out_dat) result = PyTuple_Pack(3, out_ptr, out_ind, out_dat);
done:
    Py_XDECREF(out_ptr);
    Py_XDECREF(out_ind);
    Py_XDECREF(out_dat);
    free(cells);
    free(columns);
    free(sums);
    free(optr);
    intmap_free(&cell_at);
    buf_release_all(all, 6);
    return result;
}

/* -- merging the candidate sources ------------------------------------------------------------ */

typedef struct {
    float value;
    int64_t column;
} Scored;

/* best score first, ties by lower item row (np.lexsort((cols, -vals, users)) within a row) */
static int cmp_scored(const void *a, const void *b) {
    const Scored *x = a, *y = b;
    if (x->value != y->value) return x->value > y->value ? -1 : 1;
    return (x->column > y->column) - (x->column < y->column);
}

static const char merge_candidates_doc[] =
    "merge_candidates(n_requests, semantic_requests, semantic_rows, covis_indptr,\n"
    "                 covis_indices, covis_data, n_covisitation, popular, n_popular, allowed,\n"
    "                 skipped_items, skipped_offsets, history_items, history_offsets,\n"
    "                 width, missing_rank, out_request, out_item, out_sem_rank,\n"
    "                 out_covis_rank, out_pop_rank) -> rows written\n\n"
    "One row per (request, item), in request order and, within a request, in order of first\n"
    "appearance across the sources: semantic hits (semantic_rows[j] belongs to request\n"
    "semantic_requests[j], ascending; rank = column), the n_covisitation best eligible\n"
    "co-visitation items (score descending, item ascending; rank = position among the\n"
    "eligible), the first n_popular eligible popular items (rank = position in the popularity\n"
    "order), then the offered history items (no rank). Eligible: not among the request's\n"
    "skipped items, and allowed (None: everything is). Each row carries the rank each source\n"
    "gave it (the last, if a source repeats an item), missing_rank where it gave none.";

static PyObject *merge_candidates(PyObject *self, PyObject *args) {
    Py_ssize_t n, n_covis, n_pop, width;
    double missing;
    PyObject *o[16];
    if (!PyArg_ParseTuple(args, "nOOOOOnOnOOOOOndOOOOO", &n, &o[0], &o[1], &o[2], &o[3], &o[4],
                          &n_covis, &o[5], &n_pop, &o[6], &o[7], &o[8], &o[9], &o[10], &width,
                          &missing, &o[11], &o[12], &o[13], &o[14], &o[15]))
        return NULL;
    Buf sreq, srows, cptr, cind, cdat, pop, allow, skip, skoff, hist, hoff;
    Buf oreq, oitem, osem, ocov, opop;
    Buf *all[] = {&sreq, &srows, &cptr, &cind, &cdat, &pop, &allow, &skip, &skoff, &hist, &hoff,
                  &oreq, &oitem, &osem, &ocov, &opop};
    for (int j = 0; j < 16; j++) all[j]->held = 0;
    PyObject *result = NULL;
    const char *bad = NULL;
    int no_memory = 0, overflow = 0;
    Scored *scored = NULL;
    IntMap skipped = {0}, row_of = {0};
    int has_allowed = o[6] != Py_None;
    if (buf_get(o[0], &sreq, 'i', 8, 0, "semantic_requests")
        || buf_get(o[1], &srows, 'i', 8, 0, "semantic_rows")
        || buf_get(o[2], &cptr, 'i', 0, 0, "covis_indptr")
        || buf_get(o[3], &cind, 'i', 0, 0, "covis_indices")
        || buf_get(o[4], &cdat, 'f', 4, 0, "covis_data")
        || buf_get(o[5], &pop, 'i', 8, 0, "popular")
        || (has_allowed && buf_get(o[6], &allow, 'b', 1, 0, "allowed"))
        || buf_get(o[7], &skip, 'i', 8, 0, "skipped_items")
        || buf_get(o[8], &skoff, 'i', 8, 0, "skipped_offsets")
        || buf_get(o[9], &hist, 'i', 8, 0, "history_items")
        || buf_get(o[10], &hoff, 'i', 8, 0, "history_offsets")
        || buf_get(o[11], &oreq, 'i', 8, 1, "out_request")
        || buf_get(o[12], &oitem, 'i', 8, 1, "out_item")
        || buf_get(o[13], &osem, 'f', 4, 1, "out_sem_rank")
        || buf_get(o[14], &ocov, 'f', 4, 1, "out_covis_rank")
        || buf_get(o[15], &opop, 'f', 4, 1, "out_pop_rank"))
        goto done;
    Py_ssize_t n_sem = buf_len(&sreq), k_sem = n_sem ? buf_len(&srows) / n_sem : 0;
    Py_ssize_t capacity = buf_len(&oreq), n_popular_list = buf_len(&pop);
    Py_ssize_t n_allowed = has_allowed ? buf_len(&allow) : 0;
    Py_ssize_t n_skip = buf_len(&skip), n_hist = buf_len(&hist), cnnz = buf_len(&cind);
    if (n < 0 || width < 1 || (n_sem && buf_len(&srows) != n_sem * k_sem)
        || buf_len(&cptr) != n + 1 || buf_len(&cdat) != cnnz || buf_len(&skoff) != n + 1
        || buf_len(&hoff) != n + 1 || buf_len(&oitem) != capacity
        || buf_len(&osem) != capacity || buf_len(&ocov) != capacity
        || buf_len(&opop) != capacity) {
        PyErr_SetString(PyExc_ValueError, "merge_candidates: array lengths disagree");
        goto done;
    }
    const int64_t *SQ = sreq.view.buf, *SR = srows.view.buf, *PO = pop.view.buf;
    const int64_t *SK = skip.view.buf, *SO = skoff.view.buf, *HI = hist.view.buf;
    const int64_t *HO = hoff.view.buf;
    const float *CD = cdat.view.buf;
    const char *AL = has_allowed ? allow.view.buf : NULL;
    int64_t *RQ = oreq.view.buf, *IT = oitem.view.buf;
    float *RS = osem.view.buf, *RC = ocov.view.buf, *RP = opop.view.buf;
    float miss = (float)missing;
    Py_ssize_t used = 0, next_sem = 0;
    Py_BEGIN_ALLOW_THREADS
    /* sizes of the per-request maps: the most skipped items and rows any request can have */
    Py_ssize_t most_skipped = 0, most_rows = 0, longest_covis = 0;
    for (Py_ssize_t u = 0; u < n && !bad; u++) {
        int64_t lo = idx_at(&cptr, u), hi = idx_at(&cptr, u + 1);
        if (lo < 0 || hi > cnnz || lo > hi) { bad = "covis_indptr"; break; }
        if (SO[u] < 0 || SO[u + 1] > n_skip || SO[u + 1] < SO[u]) {
            bad = "skipped_offsets";
            break;
        }
        if (HO[u] < 0 || HO[u + 1] > n_hist || HO[u + 1] < HO[u]) {
            bad = "history_offsets";
            break;
        }
        Py_ssize_t covis = (Py_ssize_t)(hi - lo);
        Py_ssize_t rows = k_sem + (covis < n_covis ? covis : n_covis) + (n_pop > 0 ? n_pop : 0)
                          + (Py_ssize_t)(HO[u + 1] - HO[u]);
        if (covis > longest_covis) longest_covis = covis;
        if (SO[u + 1] - SO[u] > most_skipped) most_skipped = (Py_ssize_t)(SO[u + 1] - SO[u]);
        if (rows > most_rows) most_rows = rows;
    }
    if (!bad && (intmap_init(&skipped, most_skipped) < 0 || intmap_init(&row_of, most_rows) < 0
                 || !(scored = malloc((size_t)(longest_covis + 1) * sizeof *scored))))
        no_memory = 1;
    for (Py_ssize_t u = 0; u < n && !bad && !no_memory && !overflow; u++) {
        intmap_clear(&skipped);
        intmap_clear(&row_of);
        for (int64_t t = SO[u]; t < SO[u + 1]; t++) {
            int64_t v = SK[t];
            if (v >= 0 && v < width) {  /* rows outside the catalogue match nothing */
                size_t slot = intmap_slot(&skipped, v);
                intmap_put(&skipped, slot, v, 1);
            }
        }
/* add (u, item) with rank `rank_` from source `source_` (0-2; 3 = history, no rank) */
#define ADD(item_, source_, rank_)                                                      \
        do {                                                                            \
            int64_t it_ = (item_);                                                      \
            if (it_ < 0 || it_ >= width) { bad = "item"; goto done_nogil; }             \
            size_t slot_ = intmap_slot(&row_of, it_);                                   \
            Py_ssize_t at_;                                                             \
            if (intmap_has(&row_of, slot_)) {                                           \
                at_ = (Py_ssize_t)row_of.values[slot_];                                 \
            } else {                                                                    \
                if (used == capacity) { overflow = 1; goto done_nogil; }                \
                at_ = used++;                                                           \
                intmap_put(&row_of, slot_, it_, at_);                                   \
                RQ[at_] = u; IT[at_] = it_; RS[at_] = miss; RC[at_] = miss; RP[at_] = miss; \
            }                                                                           \
            if ((source_) == 0) RS[at_] = (rank_);                                      \
            else if ((source_) == 1) RC[at_] = (rank_);                                 \
            else if ((source_) == 2) RP[at_] = (rank_);                                 \
        } while (0)
/* not skipped by the request, and allowed */
#define ELIGIBLE(item_)                                                                 \
        (!intmap_has(&skipped, intmap_slot(&skipped, (item_)))                          \
         && (!AL || AL[(item_)]))
        /* semantic hits: the index has already left out skipped and disallowed rows */
        if (next_sem < n_sem && SQ[next_sem] == u) {
            const int64_t *hits = SR + next_sem * k_sem;
            for (Py_ssize_t j = 0; j < k_sem; j++) {
                if (hits[j] >= 0) ADD(hits[j], 0, (float)j);
            }
            next_sem++;
        }
        /* co-visitation: best first among the eligible */
        if (n_covis > 0) {
            int64_t lo = idx_at(&cptr, u), hi = idx_at(&cptr, u + 1);
            Py_ssize_t m = 0;
            for (int64_t e = lo; e < hi; e++) {
                scored[m].value = CD[e];
                scored[m++].column = idx_at(&cind, e);
            }
            qsort(scored, (size_t)m, sizeof *scored, cmp_scored);
            Py_ssize_t taken = 0;
            for (Py_ssize_t j = 0; j < m && taken < n_covis; j++) {
                int64_t c = scored[j].column;
                if (c < 0 || c >= width || (AL && c >= n_allowed)) { bad = "covis_indices"; break; }
                if (ELIGIBLE(c)) {
                    ADD(c, 1, (float)taken);
                    taken++;
                }
            }
            if (bad) break;
        }
        /* popularity: the first n_popular eligible, ranked by position in the popular list */
        if (n_pop > 0) {
            Py_ssize_t taken = 0;
            for (Py_ssize_t p = 0; p < n_popular_list && taken < n_pop; p++) {
                int64_t c = PO[p];
                if (c < 0 || c >= width || (AL && c >= n_allowed)) { bad = "popular"; break; }
                if (ELIGIBLE(c)) {
                    ADD(c, 2, (float)p);
                    taken++;
                }
            }
            if (bad) break;
        }
        /* the history items offered back, in the caller's order */
        for (int64_t t = HO[u]; t < HO[u + 1]; t++) ADD(HI[t], 3, 0.0f);
#undef ADD
#undef ELIGIBLE
    }
    if (next_sem != n_sem && !bad && !no_memory && !overflow) bad = "semantic_requests";
done_nogil:
    Py_END_ALLOW_THREADS
    if (overflow) {
        PyErr_SetString(PyExc_ValueError, "merge_candidates: output arrays too short");
        goto done;
    }
    if (loop_error("merge_candidates", no_memory, bad)) goto done;
    result = PyLong_FromSsize_t(used);
done:
    free(scored);
    intmap_free(&skipped);
    intmap_free(&row_of);
    buf_release_all(all, 16);
    return result;
}

/* -- history and category features ------------------------------------------------------------ */

static const char history_features_doc[] =
    "history_features(history_items, offsets, request, item, item_categories,\n"
    "                 out_in_history, out_cat_share, out_cat_last)\n\n"
    "Per candidate row: how often its item is in its request's history; the share of that\n"
    "history in the item's category (count / length in float64, then float32; 0 for an item\n"
    "without a category, code < 0); 1 where the last history item has the item's category.";

static PyObject *history_features(PyObject *self, PyObject *args) {
    PyObject *o[8];
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6],
                          &o[7]))
        return NULL;
    Buf hist, off, req, item, cats, oin, oshare, olast;
    Buf *all[] = {&hist, &off, &req, &item, &cats, &oin, &oshare, &olast};
    for (int j = 0; j < 8; j++) all[j]->held = 0;
    PyObject *result = NULL;
    const char *bad = NULL;
    int no_memory = 0;
    int64_t *order = NULL, *start = NULL;
    IntMap by_item = {0}, by_category = {0};
    if (buf_get(o[0], &hist, 'i', 8, 0, "history_items")
        || buf_get(o[1], &off, 'i', 8, 0, "offsets")
        || buf_get(o[2], &req, 'i', 8, 0, "request") || buf_get(o[3], &item, 'i', 8, 0, "item")
        || buf_get(o[4], &cats, 'i', 8, 0, "item_categories")
        || buf_get(o[5], &oin, 'f', 4, 1, "out_in_history")
        || buf_get(o[6], &oshare, 'f', 4, 1, "out_cat_share")
        || buf_get(o[7], &olast, 'f', 4, 1, "out_cat_last"))
        goto done;
    Py_ssize_t n = buf_len(&off) - 1, m = buf_len(&item), n_items = buf_len(&cats);
    Py_ssize_t n_hist = buf_len(&hist);
    if (n < 0 || buf_len(&req) != m || buf_len(&oin) != m || buf_len(&oshare) != m
        || buf_len(&olast) != m) {
        PyErr_SetString(PyExc_ValueError, "history_features: array lengths disagree");
        goto done;
    }
    const int64_t *H = hist.view.buf, *O = off.view.buf, *R = req.view.buf, *I = item.view.buf;
    const int64_t *C = cats.view.buf;
    float *IN = oin.view.buf, *SH = oshare.view.buf, *LA = olast.view.buf;
    Py_BEGIN_ALLOW_THREADS
    /* rows grouped by request with a counting sort (they need not come grouped) */
    Py_ssize_t longest = 0;
    for (Py_ssize_t u = 0; u <= n && !bad; u++) {
        if (O[u] < 0 || O[u] > n_hist || (u > 0 && O[u] < O[u - 1])) { bad = "offsets"; break; }
        if (u > 0 && O[u] - O[u - 1] > longest) longest = (Py_ssize_t)(O[u] - O[u - 1]);
    }
    if (!bad) {
        order = malloc((size_t)(m + 1) * sizeof *order);
        start = calloc((size_t)(n + 2), sizeof *start);
        if (!order || !start || intmap_init(&by_item, longest) < 0
            || intmap_init(&by_category, longest) < 0)
            no_memory = 1;
    }
    for (Py_ssize_t r = 0; r < m && !bad && !no_memory; r++) {
        if (R[r] < 0 || R[r] >= n) { bad = "request"; break; }
        if (I[r] < 0 || I[r] >= n_items) { bad = "item"; break; }
        start[R[r] + 1]++;
    }
    if (!bad && !no_memory) {
        for (Py_ssize_t u = 0; u < n; u++) start[u + 1] += start[u];
        for (Py_ssize_t r = 0; r < m; r++) order[start[R[r]]++] = r;
        for (Py_ssize_t u = n; u > 0; u--) start[u] = start[u - 1];
        start[0] = 0;
    }
    for (Py_ssize_t u = 0; u < n && !bad && !no_memory; u++) {
        if (start[u] == start[u + 1]) continue;
        intmap_clear(&by_item);
        intmap_clear(&by_category);
        int64_t length = O[u + 1] - O[u];
        for (int64_t t = O[u]; t < O[u + 1]; t++) {
            int64_t h = H[t];
            if (h < 0 || h >= n_items) { bad = "history_items"; break; }
            size_t slot = intmap_slot(&by_item, h);
            if (!intmap_has(&by_item, slot)) intmap_put(&by_item, slot, h, 0);
            by_item.values[slot]++;
            int64_t c = C[h];
            if (c >= 0) {
                slot = intmap_slot(&by_category, c);
                if (!intmap_has(&by_category, slot)) intmap_put(&by_category, slot, c, 0);
                by_category.values[slot]++;
            }
        }
        if (bad) break;
        int64_t last = length > 0 ? C[H[O[u + 1] - 1]] : -2;
        if (last < 0) last = -2;
        double denominator = (double)(length > 1 ? length : 1);
        for (int64_t j = start[u]; j < start[u + 1]; j++) {
            int64_t r = order[j], i = I[r], c = C[i];
            size_t slot = intmap_slot(&by_item, i);
            IN[r] = intmap_has(&by_item, slot) ? (float)by_item.values[slot] : 0.0f;
            float share = 0.0f;
            if (c >= 0) {
                slot = intmap_slot(&by_category, c);
                if (intmap_has(&by_category, slot))
                    share = (float)((double)by_category.values[slot] / denominator);
            }
            SH[r] = share;
            LA[r] = (c >= 0 && c == last) ? 1.0f : 0.0f;
        }
    }
    Py_END_ALLOW_THREADS
    if (loop_error("history_features", no_memory, bad)) goto done;
    result = Py_NewRef(Py_None);
done:
    free(order);
    free(start);
    intmap_free(&by_item);
    intmap_free(&by_category);
    buf_release_all(all, 8);
    return result;
}

/* -- filtering search hits -------------------------------------------------------------------- */

static const char distinct_in_range_doc[] =
    "distinct_in_range(items, offsets, width, out)\n\n"
    "out[u]: how many distinct values of list u (items[offsets[u]:offsets[u + 1]]) lie in\n"
    "[0, width).";

static PyObject *distinct_in_range(PyObject *self, PyObject *args) {
    PyObject *o[3];
    Py_ssize_t width;
    if (!PyArg_ParseTuple(args, "OOnO", &o[0], &o[1], &width, &o[2])) return NULL;
    Buf items, off, out;
    Buf *all[] = {&items, &off, &out};
    for (int j = 0; j < 3; j++) all[j]->held = 0;
    PyObject *result = NULL;
    const char *bad = NULL;
    int no_memory = 0;
    IntMap seen = {0};
    if (buf_get(o[0], &items, 'i', 8, 0, "items") || buf_get(o[1], &off, 'i', 8, 0, "offsets")
        || buf_get(o[2], &out, 'i', 8, 1, "out"))
        goto done;
    Py_ssize_t n = buf_len(&off) - 1, total = buf_len(&items);
    if (n < 0 || buf_len(&out) != n) {
        PyErr_SetString(PyExc_ValueError, "distinct_in_range: array lengths disagree");
        goto done;
    }
    const int64_t *V = items.view.buf, *O = off.view.buf;
    int64_t *OUT = out.view.buf;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t longest = 0;
    for (Py_ssize_t u = 0; u < n; u++) {
        if (O[u] < 0 || O[u + 1] > total || O[u + 1] < O[u]) { bad = "offsets"; break; }
        if (O[u + 1] - O[u] > longest) longest = (Py_ssize_t)(O[u + 1] - O[u]);
    }
    if (!bad && intmap_init(&seen, longest) < 0) no_memory = 1;
    for (Py_ssize_t u = 0; u < n && !bad && !no_memory; u++) {
        intmap_clear(&seen);
        int64_t count = 0;
        for (int64_t t = O[u]; t < O[u + 1]; t++) {
            int64_t v = V[t];
            if (v < 0 || v >= width) continue;
            size_t slot = intmap_slot(&seen, v);
            if (!intmap_has(&seen, slot)) {
                intmap_put(&seen, slot, v, 0);
                count++;
            }
        }
        OUT[u] = count;
    }
    Py_END_ALLOW_THREADS
    if (loop_error("distinct_in_range", no_memory, bad)) goto done;
    result = Py_NewRef(Py_None);
done:
    intmap_free(&seen);
    buf_release_all(all, 3);
    return result;
}

static const char filter_hits_doc[] =
    "filter_hits(rows, scores, queries, skipped_items, skipped_offsets, k, last_try,\n"
    "            out_rows, out_scores, found)\n\n"
    "For each searched query j (rows[j], scores[j]: its hits, best first; -1 = none), the\n"
    "hits that are not among query queries[j]'s skipped items: found[j] counts them and, when\n"
    "found[j] >= k or last_try, the first k go to out_rows[queries[j]] and\n"
    "out_scores[queries[j]], left-packed. Other output rows are left as they are.";

static PyObject *filter_hits(PyObject *self, PyObject *args) {
    PyObject *o[8];
    Py_ssize_t k;
    int last_try;
    if (!PyArg_ParseTuple(args, "OOOOOnpOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &k, &last_try,
                          &o[5], &o[6], &o[7]))
        return NULL;
    Buf rows, scores, queries, skip, skoff, orows, oscores, found;
    Buf *all[] = {&rows, &scores, &queries, &skip, &skoff, &orows, &oscores, &found};
    for (int j = 0; j < 8; j++) all[j]->held = 0;
    PyObject *result = NULL;
    const char *bad = NULL;
    int no_memory = 0;
    IntMap skipped = {0};
    if (buf_get(o[0], &rows, 'i', 8, 0, "rows") || buf_get(o[1], &scores, 'f', 4, 0, "scores")
        || buf_get(o[2], &queries, 'i', 8, 0, "queries")
        || buf_get(o[3], &skip, 'i', 8, 0, "skipped_items")
        || buf_get(o[4], &skoff, 'i', 8, 0, "skipped_offsets")
        || buf_get(o[5], &orows, 'i', 8, 1, "out_rows")
        || buf_get(o[6], &oscores, 'f', 4, 1, "out_scores")
        || buf_get(o[7], &found, 'i', 8, 1, "found"))
        goto done;
    Py_ssize_t m = buf_len(&queries), n_out = buf_len(&skoff) - 1;
    Py_ssize_t fetch = m ? buf_len(&rows) / m : 0, n_skip = buf_len(&skip);
    if (k < 0 || n_out < 0 || (m && buf_len(&rows) != m * fetch) || buf_len(&scores) != m * fetch
        || buf_len(&found) != m || buf_len(&orows) != n_out * k
        || buf_len(&oscores) != n_out * k) {
        PyErr_SetString(PyExc_ValueError, "filter_hits: array lengths disagree");
        goto done;
    }
    const int64_t *R = rows.view.buf, *Q = queries.view.buf, *SK = skip.view.buf;
    const int64_t *SO = skoff.view.buf;
    const float *S = scores.view.buf;
    int64_t *OR = orows.view.buf, *F = found.view.buf;
    float *OS = oscores.view.buf;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t longest = 0;
    for (Py_ssize_t j = 0; j < m; j++) {
        int64_t q = Q[j];
        if (q < 0 || q >= n_out) { bad = "queries"; break; }
        if (SO[q] < 0 || SO[q + 1] > n_skip || SO[q + 1] < SO[q]) {
            bad = "skipped_offsets";
            break;
        }
        if (SO[q + 1] - SO[q] > longest) longest = (Py_ssize_t)(SO[q + 1] - SO[q]);
    }
    if (!bad && intmap_init(&skipped, longest) < 0) no_memory = 1;
    for (Py_ssize_t j = 0; j < m && !bad && !no_memory; j++) {
        int64_t q = Q[j];
        intmap_clear(&skipped);
        for (int64_t t = SO[q]; t < SO[q + 1]; t++)
            intmap_put(&skipped, intmap_slot(&skipped, SK[t]), SK[t], 0);
        const int64_t *hits = R + j * fetch;
        const float *hit_scores = S + j * fetch;
        int64_t kept = 0;
        for (Py_ssize_t h = 0; h < fetch; h++) {
            if (hits[h] >= 0 && !intmap_has(&skipped, intmap_slot(&skipped, hits[h]))) kept++;
        }
        F[j] = kept;
        if (kept < k && !last_try) continue;
        Py_ssize_t at = 0;
        for (Py_ssize_t h = 0; h < fetch && at < k; h++) {
            if (hits[h] >= 0 && !intmap_has(&skipped, intmap_slot(&skipped, hits[h]))) {
                OR[q * k + at] = hits[h];
                OS[q * k + at] = hit_scores[h];
                at++;
            }
        }
    }
    Py_END_ALLOW_THREADS
    if (loop_error("filter_hits", no_memory, bad)) goto done;
    result = Py_NewRef(Py_None);
done:
    intmap_free(&skipped);
    buf_release_all(all, 8);
    return result;
}

/* -- module ----------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"similarities", similarities, METH_VARARGS, similarities_doc},
    {"csr_lookup", csr_lookup, METH_VARARGS, csr_lookup_doc},
    {"covisitation_scores", covisitation_scores, METH_VARARGS, covisitation_scores_doc},
    {"merge_candidates", merge_candidates, METH_VARARGS, merge_candidates_doc},
    {"history_features", history_features, METH_VARARGS, history_features_doc},
    {"distinct_in_range", distinct_in_range, METH_VARARGS, distinct_in_range_doc},
    {"filter_hits", filter_hits, METH_VARARGS, filter_hits_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "features._kernels",
    "Compiled loops of the ranking path (see features/kernels.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) {
    pick_dots();
    return PyModule_Create(&module);
}
