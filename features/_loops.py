"""The loops of the ranking path, compiled by numba: one call per batch, the GIL released.

Each loop replaces a numpy pipeline of a few dozen small array calls (which cost more in call
overhead than in arithmetic for one request's ~200 candidates) and gives the same values:
integer work exactly, float32 sums in the same order as the numpy code they replace
(tests/test_vectorized_equality.py and tests/test_kernels.py hold them to the per-request
reference loops). The one exception is the dot products of `similarities`, which sum in a fixed
order of their own (eight interleaved partial sums: `_partial_sums`, `_finish`), the same for
every row, batch and caller.

Every function has explicit signatures, compiled when this module is imported (from numba's
cache after the first time), so an array of the wrong element type or a read-only output is a
TypeError, never a new compilation. Inputs are typed read-only, which accepts any C-contiguous
array. Every index is bounds-checked here; features/kernels.py prepares the arrays.
fastmath stays off: no fused multiply-adds and no reordered sums, so float32 results are the
same bits on every machine.
"""

from __future__ import annotations

import logging

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

log = logging.getLogger(__name__)

# -- signatures ------------------------------------------------------------------------------------
_IN = {dtype: types.Array(dtype, 1, "C", readonly=True)
       for dtype in (types.int64, types.int32, types.float32, types.boolean)}
_OUT = {dtype: types.Array(dtype, 1, "C") for dtype in (types.int64, types.float32)}
_IN2 = {dtype: types.Array(dtype, 2, "C", readonly=True) for dtype in (types.int64, types.float32)}
I64, F32, BOOL = _IN[types.int64], _IN[types.float32], _IN[types.boolean]
OUT_I64, OUT_F32 = _OUT[types.int64], _OUT[types.float32]
INT = types.int64
# scipy stores a CSR matrix's indptr and indices as int32 or int64 (the same for both)
CSR_INDEX = (_IN[types.int32], _IN[types.int64])


def _compiled(signatures):
    def compile_(function):
        try:
            return numba.njit(signatures, nogil=True, cache=True)(function)
        except RuntimeError as exc:  # numba found no writable folder for its cache
            if "no locator available" not in str(exc):
                raise
            log.warning("numba cannot cache %s (no writable folder: set NUMBA_CACHE_DIR); "
                        "compiling it for this process only", function.__name__)
            return numba.njit(signatures, nogil=True)(function)

    return compile_


def _helper(function):
    """Inlined into the compiled functions (and cached with them)."""
    return numba.njit(nogil=True, inline="always")(function)


# -- a small int64 hash map ------------------------------------------------------------------------
# Keys are item rows or category codes of one request (a few hundred at most), so the map is
# sized per call to twice the largest request and emptied between requests by a generation stamp,
# not by clearing it. A map is (keys, values, stamps, mask); no state outlives a call.
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64: a multiplicative hash


@_helper
def _map_new(entries):
    capacity = 16
    while capacity < 2 * max(entries, 1):
        capacity <<= 1
    return (np.empty(capacity, np.int64), np.empty(capacity, np.int64),
            np.zeros(capacity, np.int64), capacity - 1)


@_helper
def _map_slot(keys, stamps, mask, generation, key):
    """The slot of `key`: found (its stamp is `generation`) or the empty slot where it goes."""
    at = ((key * _GOLDEN) >> 20) & mask
    while stamps[at] == generation and keys[at] != key:
        at = (at + 1) & mask
    return at


# -- dot products ----------------------------------------------------------------------------------
# v . q in a fixed order: eight interleaved partial sums (element i goes to sum i % 8, each
# product rounded before it is added), combined as ((s0 + s4) + (s2 + s6)) + ((s1 + s5) +
# (s3 + s7)). The order does not depend on the caller or on what else is in the batch, so a
# (candidate, query) pair gives the same float32 bits in training and in serving. The eight sums
# are one 8-float vector (written out in LLVM IR: numba leaves the SLP vectoriser off, and the
# loop vectoriser may not reorder a float sum), so the loop runs at vector speed without
# fastmath; six queries share one pass over the candidate's vector, and six independent sums
# keep the adder busy where one product alone waits on the latency of its own additions.
_QUERIES_PER_PASS = 6
_LANES = types.UniTuple(types.float32, 8)
_U = tuple(np.uint64(k) for k in range(8))


@intrinsic
def _partial_sums(typingctx, v, queries):
    """For each of the six 1-D float32 C arrays in `queries` (each as long as `v`), the eight
    partial sums of v . q over the first len(v) // 8 * 8 elements."""
    arrays = (v, *queries)
    if (len(queries) != _QUERIES_PER_PASS or any(not isinstance(a, types.Array) or a.ndim != 1
                                                 or a.layout != "C" or a.dtype != types.float32
                                                 for a in arrays)):
        return None
    signature = types.UniTuple(_LANES, len(queries))(v, queries)

    def codegen(context, builder, sig, args):
        vector = ir.VectorType(ir.FloatType(), 8)
        made = [context.make_array(sig.args[0])(context, builder, args[0])]
        made += [context.make_array(t)(context, builder, a) for t, a in
                 zip(sig.args[1], cgutils.unpack_tuple(builder, args[1]), strict=True)]
        n = builder.extract_value(made[0].shape, 0)
        chunks = builder.udiv(n, ir.Constant(n.type, 8))
        sums = [cgutils.alloca_once_value(builder, ir.Constant(vector, None))
                for _ in sig.args[1]]
        with cgutils.for_range(builder, chunks) as loop:
            start = builder.mul(loop.index, ir.Constant(n.type, 8))

            def load(array):
                at = builder.bitcast(builder.gep(array.data, [start]), vector.as_pointer())
                return builder.load(at, align=4)

            x = load(made[0])
            for total, array in zip(sums, made[1:], strict=True):
                builder.store(builder.fadd(builder.load(total), builder.fmul(x, load(array))),
                              total)
        out = []
        for total in sums:
            value = builder.load(total)
            out.append(context.make_tuple(builder, _LANES, [
                builder.extract_element(value, ir.Constant(ir.IntType(32), lane))
                for lane in range(8)]))
        return context.make_tuple(builder, sig.return_type, out)

    return signature, codegen


@intrinsic
def _prefetch(typingctx, matrix, row):
    """Ask the CPU for row `row` of a 2-D C array now: the next candidate's vector is a random
    row of a large table, read a moment later."""
    if not (isinstance(matrix, types.Array) and matrix.ndim == 2 and matrix.layout == "C"
            and isinstance(row, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        array = context.make_array(sig.args[0])(context, builder, args[0])
        width = builder.extract_value(array.shape, 1)
        row_index = context.cast(builder, args[1], sig.args[1], types.intp)
        start = builder.bitcast(builder.gep(array.data, [builder.mul(row_index, width)]),
                                ir.IntType(8).as_pointer())
        size = builder.mul(width, ir.Constant(width.type, context.get_abi_sizeof(
            context.get_data_type(sig.args[0].dtype))))
        lines = builder.udiv(builder.add(size, ir.Constant(size.type, 63)),
                             ir.Constant(size.type, 64))
        prefetch = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            ir.VoidType(), [ir.IntType(8).as_pointer()] + [ir.IntType(32)] * 3),
            "llvm.prefetch.p0i8")
        with cgutils.for_range(builder, lines) as loop:
            at = builder.gep(start, [builder.mul(loop.index, ir.Constant(size.type, 64))])
            builder.call(prefetch, [at] + [ir.Constant(ir.IntType(32), k) for k in (0, 3, 1)])
        return context.get_dummy_value()

    return types.none(matrix, row), codegen


@_helper
def _finish(s, v, q, d):
    """The eight partial sums `s` with the last d % 8 elements added to sums 0.., combined."""
    i = d - d % np.uint64(8)
    rest = d - i
    s0 = s[0] + v[i] * q[i] if rest > _U[0] else s[0]
    s1 = s[1] + v[i + _U[1]] * q[i + _U[1]] if rest > _U[1] else s[1]
    s2 = s[2] + v[i + _U[2]] * q[i + _U[2]] if rest > _U[2] else s[2]
    s3 = s[3] + v[i + _U[3]] * q[i + _U[3]] if rest > _U[3] else s[3]
    s4 = s[4] + v[i + _U[4]] * q[i + _U[4]] if rest > _U[4] else s[4]
    s5 = s[5] + v[i + _U[5]] * q[i + _U[5]] if rest > _U[5] else s[5]
    s6 = s[6] + v[i + _U[6]] * q[i + _U[6]] if rest > _U[6] else s[6]
    return ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s[7]))


@_helper
def _dots(v, queries, n_queries, out):
    """out[j] = v . queries[j] for j < n_queries, each in the fixed order."""
    d = np.uint64(v.size)
    last = n_queries - 1
    for j in range(0, n_queries, _QUERIES_PER_PASS):
        # a short last group repeats the last query; the extra products are dropped
        group = (queries[j], queries[min(j + 1, last)], queries[min(j + 2, last)],
                 queries[min(j + 3, last)], queries[min(j + 4, last)], queries[min(j + 5, last)])
        sums = _partial_sums(v, group)
        here = n_queries - j  # constant indices below: a tuple indexed by a variable is spilled
        out[j] = _finish(sums[0], v, group[0], d)
        if here > 1:
            out[j + 1] = _finish(sums[1], v, group[1], d)
        if here > 2:
            out[j + 2] = _finish(sums[2], v, group[2], d)
        if here > 3:
            out[j + 3] = _finish(sums[3], v, group[3], d)
        if here > 4:
            out[j + 4] = _finish(sums[4], v, group[4], d)
        if here > 5:
            out[j + 5] = _finish(sums[5], v, group[5], d)


# -- similarities ----------------------------------------------------------------------------------
@_compiled([types.none(_IN2[types.float32], I64, I64, I64, I64, _IN2[types.float32], INT,
                       OUT_F32, OUT_F32, OUT_F32)])
def similarities(profiles, history_items, offsets, request, item, vectors, recent,
                 out_sem, out_last, out_max_recent):
    """For each candidate row: its vector against its request's profile (sem_score), against
    the request's last history item (sim_last) and the best against its last `recent` items
    (sim_max_recent); 0 for the last two where the history is empty."""
    if recent < 0 or recent > 64:
        raise ValueError("similarities: recent must be 0 to 64")
    n_items, d = vectors.shape
    n_req, m, n_hist = profiles.shape[0], item.size, history_items.size
    if profiles.shape[1] != d:
        raise ValueError("profiles and vectors must be [n, d] with the same d")
    if (offsets.size != n_req + 1 or request.size != m or out_sem.size != m
            or out_last.size != m or out_max_recent.size != m):
        raise ValueError("similarities: array lengths disagree")
    for u in range(n_req + 1):
        if offsets[u] < 0 or offsets[u] > n_hist or (u > 0 and offsets[u] < offsets[u - 1]):
            raise IndexError("similarities: offsets out of range or out of order")
    # the queries of the current request: its profile, then its last `recent` history items'
    # vectors, oldest first
    queries = np.empty((recent + 1, d), np.float32)
    scores = np.empty(recent + 1, np.float32)
    current, n_queries = -1, 0
    for r in range(m):
        u, i = request[r], item[r]
        if u < 0 or u >= n_req:
            raise IndexError("similarities: request out of range or out of order")
        if i < 0 or i >= n_items:
            raise IndexError("similarities: item out of range or out of order")
        if u != current:
            queries[0] = profiles[u]
            end = offsets[u + 1]
            start = max(end - recent, offsets[u])
            for t in range(start, end):
                h = history_items[t]
                if h < 0 or h >= n_items:
                    raise IndexError("similarities: history_items out of range or out of order")
                queries[1 + t - start] = vectors[h]
            current, n_queries = u, 1 + end - start
        if r + 1 < m and 0 <= item[r + 1] < n_items:
            _prefetch(vectors, item[r + 1])
        _dots(vectors[i], queries, n_queries, scores)
        out_sem[r] = scores[0]
        best = np.float32(0)
        for j in range(1, n_queries):
            if j == 1 or scores[j] > best:
                best = scores[j]
        out_last[r] = scores[n_queries - 1] if n_queries > 1 else np.float32(0)
        out_max_recent[r] = best


# -- lookups in a CSR matrix -----------------------------------------------------------------------
@_compiled([types.none(index, index, F32, INT, I64, I64, OUT_F32) for index in CSR_INDEX])
def csr_lookup(indptr, indices, data, n_cols, rows, cols, out):
    """out[j] = M[rows[j], cols[j]] for a CSR matrix with sorted, unique columns per row (binary
    search); 0 where the entry is not stored or rows[j] < 0. Rows and columns past the matrix
    raise IndexError."""
    n_rows, nnz, m = indptr.size - 1, indices.size, rows.size
    if n_rows < 0 or data.size != nnz or cols.size != m or out.size != m:
        raise ValueError("csr_lookup: array lengths disagree")
    for j in range(m):
        r = rows[j]
        value = np.float32(0)
        if r >= 0:
            if r >= n_rows:
                raise IndexError("csr_lookup: rows out of range or out of order")
            want = cols[j]
            if want < 0 or want >= n_cols:
                raise IndexError("csr_lookup: cols out of range or out of order")
            lo, hi = np.int64(indptr[r]), np.int64(indptr[r + 1])
            if lo < 0 or hi > nnz or lo > hi:
                raise IndexError("csr_lookup: indptr out of range or out of order")
            end = hi
            while lo < hi:
                mid = lo + (hi - lo) // 2
                if indices[mid] < want:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < end and indices[lo] == want:
                value = data[lo]
        out[j] = value


# -- co-visitation scores --------------------------------------------------------------------------
@_helper
def _sort_cells(columns, sums, n):
    """The first n (column, sum) cells in ascending column order (columns are distinct)."""
    if n > 64:
        order = np.argsort(columns[:n])
        columns[:n] = columns[:n][order]
        sums[:n] = sums[:n][order]
        return
    for i in range(1, n):
        column, total = columns[i], sums[i]
        j = i
        while j > 0 and columns[j - 1] > column:
            columns[j] = columns[j - 1]
            sums[j] = sums[j - 1]
            j -= 1
        columns[j] = column
        sums[j] = total


@_compiled([types.Tuple((OUT_I64, OUT_I64, OUT_F32))(I64, I64, F32, index, index, F32, INT)
            for index in CSR_INDEX])
def covisitation_scores(history_items, offsets, decay, indptr, indices, data, n_items):
    """Each history's co-visitation scores as CSR rows (indptr, indices, data) with sorted
    columns: the matrix rows of its last len(decay) items, the k-th most recent weighted
    decay[k]. Float32 sums are made in scipy's order for weights @ matrix: a repeated item's
    weights newest first, then the rows in ascending item order; cells that sum to 0 are
    dropped."""
    n, recent, n_hist, nnz = offsets.size - 1, decay.size, history_items.size, indices.size
    if (n < 0 or recent < 1 or recent > 64 or data.size != nnz
            or indptr.size != n_items + 1):
        raise ValueError("covisitation_scores: array lengths disagree (or more than 64 recent "
                         "items)")
    # the output holds at most every stored entry of every tail row
    capacity = widest = 0
    for u in range(n):
        if offsets[u] < 0 or offsets[u + 1] > n_hist or offsets[u + 1] < offsets[u]:
            raise IndexError("covisitation_scores: offsets out of range or out of order")
        row = 0
        for t in range(max(offsets[u + 1] - recent, offsets[u]), offsets[u + 1]):
            a = history_items[t]
            if a < 0 or a >= n_items:
                raise IndexError("covisitation_scores: history_items out of range or out of "
                                 "order")
            lo, hi = np.int64(indptr[a]), np.int64(indptr[a + 1])
            if lo < 0 or hi > nnz or lo > hi:
                raise IndexError("covisitation_scores: indptr out of range or out of order")
            row += hi - lo
        capacity += row
        widest = max(widest, row)
    cell_columns = np.empty(widest + 1, np.int64)
    cell_sums = np.empty(widest + 1, np.float32)
    keys, cell_of, stamps, mask = _map_new(widest)
    out_indptr = np.empty(n + 1, np.int64)
    columns = np.empty(capacity, np.int64)
    sums = np.empty(capacity, np.float32)
    items = np.empty(64, np.int64)
    weights = np.empty(64, np.float32)
    used = 0
    for u in range(n):
        out_indptr[u] = used
        # the tail's distinct items, each weight summed newest first from 0
        distinct = 0
        end = offsets[u + 1]
        start = max(end - recent, offsets[u])
        for t in range(end - 1, start - 1, -1):
            w = decay[end - 1 - t]
            j = 0
            while j < distinct and items[j] != history_items[t]:
                j += 1
            if j == distinct:
                items[distinct] = history_items[t]
                weights[distinct] = np.float32(0)
                distinct += 1
            weights[j] = weights[j] + w
        for i in range(1, distinct):  # ascending item order
            x, w = items[i], weights[i]
            j = i
            while j > 0 and items[j - 1] > x:
                items[j] = items[j - 1]
                weights[j] = weights[j - 1]
                j -= 1
            items[j] = x
            weights[j] = w
        # each cell: 0, plus its contributions in that order (as np.add.at adds them)
        generation = u + 1
        n_cells = 0
        for i in range(distinct):
            for e in range(np.int64(indptr[items[i]]), np.int64(indptr[items[i] + 1])):
                c = np.int64(indices[e])
                if c < 0 or c >= n_items:
                    raise IndexError("covisitation_scores: indices out of range or out of order")
                contribution = weights[i] * data[e]
                slot = _map_slot(keys, stamps, mask, generation, c)
                if stamps[slot] != generation:
                    stamps[slot], keys[slot], cell_of[slot] = generation, c, n_cells
                    cell_columns[n_cells] = c
                    cell_sums[n_cells] = np.float32(0)
                    n_cells += 1
                cell = cell_of[slot]
                cell_sums[cell] = cell_sums[cell] + contribution
        _sort_cells(cell_columns, cell_sums, n_cells)
        for j in range(n_cells):
            if cell_sums[j] != 0:  # scipy's product drops cells that sum to zero
                columns[used] = cell_columns[j]
                sums[used] = cell_sums[j]
                used += 1
    out_indptr[n] = used
    return out_indptr, columns[:used], sums[:used]


# -- history and category features -----------------------------------------------------------------
@_compiled([types.none(I64, I64, I64, I64, I64, OUT_F32, OUT_F32, OUT_F32)])
def history_features(history_items, offsets, request, item, item_categories,
                     out_in_history, out_cat_share, out_cat_last):
    """Per candidate row: how often its item is in its request's history; the share of that
    history in the item's category (count / length in float64, then float32; 0 for an item
    without a category, code < 0); 1 where the last history item has the item's category."""
    n, m, n_items, n_hist = offsets.size - 1, item.size, item_categories.size, history_items.size
    if (n < 0 or request.size != m or out_in_history.size != m or out_cat_share.size != m
            or out_cat_last.size != m):
        raise ValueError("history_features: array lengths disagree")
    longest = 0
    for u in range(n + 1):
        if offsets[u] < 0 or offsets[u] > n_hist or (u > 0 and offsets[u] < offsets[u - 1]):
            raise IndexError("history_features: offsets out of range or out of order")
        if u > 0:
            longest = max(longest, offsets[u] - offsets[u - 1])
    # rows grouped by request with a counting sort (they need not come grouped)
    start = np.zeros(n + 2, np.int64)
    for r in range(m):
        if request[r] < 0 or request[r] >= n:
            raise IndexError("history_features: request out of range or out of order")
        if item[r] < 0 or item[r] >= n_items:
            raise IndexError("history_features: item out of range or out of order")
        start[request[r] + 1] += 1
    for u in range(n):
        start[u + 1] += start[u]
    order = np.empty(m, np.int64)
    for r in range(m):
        order[start[request[r]]] = r
        start[request[r]] += 1
    for u in range(n, 0, -1):
        start[u] = start[u - 1]
    start[0] = 0
    item_keys, item_counts, item_stamps, item_mask = _map_new(longest)
    cat_keys, cat_counts, cat_stamps, cat_mask = _map_new(longest)
    for u in range(n):
        if start[u] == start[u + 1]:
            continue
        generation = u + 1
        length = offsets[u + 1] - offsets[u]
        for t in range(offsets[u], offsets[u + 1]):
            h = history_items[t]
            if h < 0 or h >= n_items:
                raise IndexError("history_features: history_items out of range or out of order")
            slot = _map_slot(item_keys, item_stamps, item_mask, generation, h)
            if item_stamps[slot] != generation:
                item_stamps[slot], item_keys[slot], item_counts[slot] = generation, h, 0
            item_counts[slot] += 1
            c = item_categories[h]
            if c >= 0:
                slot = _map_slot(cat_keys, cat_stamps, cat_mask, generation, c)
                if cat_stamps[slot] != generation:
                    cat_stamps[slot], cat_keys[slot], cat_counts[slot] = generation, c, 0
                cat_counts[slot] += 1
        last = item_categories[history_items[offsets[u + 1] - 1]] if length > 0 else -2
        if last < 0:
            last = -2
        denominator = np.float64(max(length, 1))
        for j in range(start[u], start[u + 1]):
            r = order[j]
            i = item[r]
            c = item_categories[i]
            slot = _map_slot(item_keys, item_stamps, item_mask, generation, i)
            out_in_history[r] = (np.float32(item_counts[slot])
                                 if item_stamps[slot] == generation else np.float32(0))
            share = np.float32(0)
            if c >= 0:
                slot = _map_slot(cat_keys, cat_stamps, cat_mask, generation, c)
                if cat_stamps[slot] == generation:
                    share = np.float32(np.float64(cat_counts[slot]) / denominator)
            out_cat_share[r] = share
            out_cat_last[r] = np.float32(1) if c >= 0 and c == last else np.float32(0)


# -- filtering search hits -------------------------------------------------------------------------
@_compiled([types.none(I64, I64, INT, OUT_I64)])
def distinct_in_range(items, offsets, width, out):
    """out[u]: how many distinct values of list u (items[offsets[u]:offsets[u + 1]]) lie in
    [0, width)."""
    n, total = offsets.size - 1, items.size
    if n < 0 or out.size != n:
        raise ValueError("distinct_in_range: array lengths disagree")
    longest = 0
    for u in range(n):
        if offsets[u] < 0 or offsets[u + 1] > total or offsets[u + 1] < offsets[u]:
            raise IndexError("distinct_in_range: offsets out of range or out of order")
        longest = max(longest, offsets[u + 1] - offsets[u])
    keys, _, stamps, mask = _map_new(longest)
    for u in range(n):
        generation = u + 1
        count = 0
        for t in range(offsets[u], offsets[u + 1]):
            v = items[t]
            if v < 0 or v >= width:
                continue
            slot = _map_slot(keys, stamps, mask, generation, v)
            if stamps[slot] != generation:
                stamps[slot], keys[slot] = generation, v
                count += 1
        out[u] = count


@_compiled([types.none(_IN2[types.int64], _IN2[types.float32], I64, I64, I64, INT,
                       types.boolean, types.Array(types.int64, 2, "C"),
                       types.Array(types.float32, 2, "C"), OUT_I64)])
def filter_hits(rows, scores, queries, skipped_items, skipped_offsets, k, last_try, out_rows,
                out_scores, found):
    """For each searched query j (rows[j], scores[j]: its hits, best first; -1 = none), the
    hits that are not among query queries[j]'s skipped items: found[j] counts them and, when
    found[j] >= k or last_try, the first k go to out_rows[queries[j]] and
    out_scores[queries[j]], left-packed. Other output rows are left as they are."""
    m, n_out, n_skip = queries.size, skipped_offsets.size - 1, skipped_items.size
    fetch = rows.shape[1]
    if (k < 0 or n_out < 0 or (m > 0 and rows.shape[0] != m) or scores.shape[0] != rows.shape[0]
            or scores.shape[1] != fetch or found.size != m or out_rows.shape[0] != n_out
            or out_rows.shape[1] != k or out_scores.shape[0] != n_out
            or out_scores.shape[1] != k):
        raise ValueError("filter_hits: array lengths disagree")
    longest = 0
    for j in range(m):
        q = queries[j]
        if q < 0 or q >= n_out:
            raise IndexError("filter_hits: queries out of range or out of order")
        if (skipped_offsets[q] < 0 or skipped_offsets[q + 1] > n_skip
                or skipped_offsets[q + 1] < skipped_offsets[q]):
            raise IndexError("filter_hits: skipped_offsets out of range or out of order")
        longest = max(longest, skipped_offsets[q + 1] - skipped_offsets[q])
    keys, _, stamps, mask = _map_new(longest)
    for j in range(m):
        q = queries[j]
        generation = j + 1
        for t in range(skipped_offsets[q], skipped_offsets[q + 1]):
            slot = _map_slot(keys, stamps, mask, generation, skipped_items[t])
            stamps[slot], keys[slot] = generation, skipped_items[t]
        kept = 0
        for h in range(fetch):
            hit = rows[j, h]
            if hit >= 0 and stamps[_map_slot(keys, stamps, mask, generation, hit)] != generation:
                kept += 1
        found[j] = kept
        if kept < k and not last_try:
            continue
        at = 0
        for h in range(fetch):
            if at >= k:
                break
            hit = rows[j, h]
            if hit >= 0 and stamps[_map_slot(keys, stamps, mask, generation, hit)] != generation:
                out_rows[q, at] = hit
                out_scores[q, at] = scores[j, h]
                at += 1
