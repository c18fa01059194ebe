/* CPU kernels for the mLSTM cell (float32): the parallel form, forward and backward, in strips of rows, and the
 * chunkwise form (its forward pass, and its backward pass through each chunk's outputs).
 *
 * The parallel form with batched matrix products (vil.ops.parallel) computes each row tile against every column
 * up to the tile's end, then applies the decay in a separate pass; at ViL's sizes (S = 196, DH = 96) the products
 * are small, so per-call overhead and the wasted upper triangle cost a third of the cell. Here a strip of rows
 * (STRIP_ROWS in the forward pass, BACKWARD_STRIP_ROWS in the backward pass) is computed against the columns it
 * sees, the decay applied while the strip is in cache, and the strip's products run through one register-tiled
 * kernel (gemm below); the forward pass forms its strips transposed (see strip_forward). Layouts: q, k (mats, S,
 * DH) and v (mats, S, DHV) contiguous; the gate rows a, r (mats, S).
 *
 * Threads (OpenMP, PyTorch's own runtime; the caller passes PyTorch's thread count): the work is cut into items
 * that do not depend on the thread count, each computed by one thread with the same arithmetic whichever thread
 * it is, and no two items add into the same output, so results are the same for any number of threads, bit for
 * bit. The items: the parallel form's forward, one strip of one matrix (B NH S / STRIP_ROWS items), or one matrix
 * where it projects q, k, v itself (vil_mlstm_parallel_headwise); its backward, one matrix (B NH: dk and dv sum
 * over all strips), with the projections' weight sums, where it projects, formed per matrix and then added over the
 * batch in order; the chunkwise forward, one chunk of one matrix for
 * the intra-chunk part and the state's share, with only the d x d state recurrence (cheap) run matrix by matrix;
 * the chunkwise backward, one chunk of one matrix (B NH NC items); the state recurrence's backward, rows of the state
 * of one matrix, whose shares of each chunk's dot products are added in a fixed order. Items of unequal cost are
 * handed out dynamically. */
#include <stdlib.h>

#include "headwise.h"
#include "sums.h"
#include "vector.h"

#define STRIP_ROWS 16 /* rows of the S x S matrices computed at once: 16 x S floats stay in L1/L2 */
/* the backward pass's strips: its two accumulating products (dk, dv) run over a strip's rows, and 64 of them
 * amortise reading and writing the accumulators better; the strip's diagonal block is computed in groups of
 * DIAGONAL_ROWS rows, so that the longer strips do not waste more on the zeros above the diagonal (see
 * strips_backward) */
#define BACKWARD_STRIP_ROWS 64
#define DIAGONAL_ROWS 8

/* ---- the stabilised decay --------------------------------------------------------------------------------------
 * D[t, s] = exp(clamp(a[s] - r[t], min_log, 0)) for s <= t, 0 above the diagonal. */
#ifdef VEC
static inline vec decay_vec(vec a, float rt, float min_log) {
    return vexp(vmin(vmax(vsub(a, vset1(rt)), vset1(min_log)), vzero()));
}
#endif
static inline float decay1(float a, float rt, float min_log) {
    const float log_decay = a - rt;
    return expf(log_decay < min_log ? min_log : (log_decay > 0.0f ? 0.0f : log_decay));
}

/* The backward pass of one row's decay (decay_strip) with the readout's denominator, for row t (stabiliser rt) and
 * the columns s < limit (zeroed from limit to width): p (raw q.k) becomes P = p D and ds (raw dL/dP) becomes
 * dL/d(q.k) = (ds + dd) D; with g = (ds + dd) P, the gradient of the log decay, col_sum[s] += g[s] and the row's
 * sum of g is returned. */
static float decay_row_backward(float *p, float *ds, const float *a, float rt, float dd, float *col_sum, int64_t limit,
                                int64_t width, float min_log) {
    float total = 0.0f;
    int64_t s = 0;
#ifdef VEC
    vec acc = vzero();
    for (; s + VW <= limit; s += VW) {
        const vec decay = decay_vec(vload(a + s), rt, min_log);
        const vec pv = vmul(vload(p + s), decay), dsv = vadd(vload(ds + s), vset1(dd)), g = vmul(dsv, pv);
        vstore(p + s, pv);
        vstore(ds + s, vmul(dsv, decay));
        vstore(col_sum + s, vadd(vload(col_sum + s), g));
        acc = vadd(acc, g);
    }
#if defined(__AVX512F__)
    if (s < limit) {
        const __mmask16 mask = (__mmask16)((1u << (limit - s)) - 1u);
        const vec decay = decay_vec(_mm512_maskz_loadu_ps(mask, a + s), rt, min_log);
        const vec pv = vmul(_mm512_maskz_loadu_ps(mask, p + s), decay);
        const vec dsv = vadd(_mm512_maskz_loadu_ps(mask, ds + s), vset1(dd));
        const vec g = _mm512_maskz_mul_ps(mask, dsv, pv);
        _mm512_mask_storeu_ps(p + s, mask, pv);
        _mm512_mask_storeu_ps(ds + s, mask, vmul(dsv, decay));
        _mm512_mask_storeu_ps(col_sum + s, mask, vadd(_mm512_maskz_loadu_ps(mask, col_sum + s), g));
        acc = vadd(acc, g);
        s = limit;
    }
#endif
    total = vsum(acc);
#endif
    for (; s < limit; ++s) {
        const float decay = decay1(a[s], rt, min_log);
        const float pv = p[s] * decay, dsv = ds[s] + dd, g = dsv * pv;
        p[s] = pv;
        ds[s] = dsv * decay;
        col_sum[s] += g;
        total += g;
    }
    if (limit < width) {
        memset(p + limit, 0, (size_t)(width - limit) * sizeof(float));
        memset(ds + limit, 0, (size_t)(width - limit) * sizeof(float));
    }
    return total;
}

/* ---- small matrix products ------------------------------------------------------------------------------------
 * c (m x n, row stride ldc) = (or +=) sum_k A(i, k) b[k][j], with A(i, k) = a[i * a_row + k * a_col]: any of the
 * strip's products, with a or its transpose read in place. A register tile of up to TILE_MAX_ROWS rows x
 * TILE_VECS vectors of c is kept while k runs; b's rows are read as vectors, A's elements broadcast. Narrow
 * products (one or two vectors wide, e.g. a transposed strip) take taller tiles, so that enough independent
 * accumulators hide the FMA latency. Each element's sum runs over k in order whatever the tile: the tile shape
 * never changes a result. */
#ifdef VEC
#define TILE_MAX_ROWS 8
#if VW == 16
#define TILE_VECS 6    /* 4 rows x 6: 24 accumulators + 6 of b + 1 of a: 31 of the 32 registers */
#define ACCUMULATORS 24
#else
#define TILE_VECS 3 /* AVX2: 4 x 3 = 12 + 3 + 1 of 16 */
#define ACCUMULATORS 12
#endif
/* the forward pass's P v product reads P transposed (a strip's rows side by side); on AVX2 its 6 x 2 tiles run ~5 %
 * of the forward pass faster than 4 x 3 ones (S = 196, DH = 96) */
#if VW == 16
#define READOUT_TILE_VECS TILE_VECS
#else
#define READOUT_TILE_VECS 2
#endif

/* the rows of a tile `vecs` vectors wide */
static inline int tile_rows(int vecs) {
    const int rows = ACCUMULATORS / vecs;
    return rows > TILE_MAX_ROWS ? TILE_MAX_ROWS : rows;
}

static inline __attribute__((always_inline)) void tile(const int rows, const int vecs, int64_t depth, const float *a,
                                                       int64_t a_row, int64_t a_col, const float *b, int64_t ldb,
                                                       float *c, int64_t ldc, int accumulate) {
    vec acc[TILE_MAX_ROWS][TILE_VECS];
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < vecs; ++j) acc[i][j] = accumulate ? vload(c + i * ldc + j * VW) : vzero();
    for (int64_t k = 0; k < depth; ++k) {
        vec bk[TILE_VECS];
        for (int j = 0; j < vecs; ++j) {
            bk[j] = vload(b + k * ldb + j * VW);
            __asm__("" : "+v"(bk[j])); /* keep b's row in registers: read once, not once per row of the tile */
        }
        for (int i = 0; i < rows; ++i) {
            const vec ai = vset1(a[i * a_row + k * a_col]);
            for (int j = 0; j < vecs; ++j) acc[i][j] = vfmadd(ai, bk[j], acc[i][j]);
        }
    }
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < vecs; ++j) vstore(c + i * ldc + j * VW, acc[i][j]);
}

/* tile() with its sizes as constants, so that the compiler keeps the accumulators in registers; only the shapes
 * tile_rows() allows are compiled */
static void tile_of(int rows, int vecs, int64_t depth, const float *a, int64_t a_row, int64_t a_col, const float *b,
                    int64_t ldb, float *c, int64_t ldc, int accumulate) {
#define TILE_CASE(R, V) \
    case (R) * 8 + (V): tile(R, V, depth, a, a_row, a_col, b, ldb, c, ldc, accumulate); return;
#define TILE_ROWS_UP_TO_4(V) TILE_CASE(1, V) TILE_CASE(2, V) TILE_CASE(3, V) TILE_CASE(4, V)
#define TILE_ROWS_UP_TO_6(V) TILE_ROWS_UP_TO_4(V) TILE_CASE(5, V) TILE_CASE(6, V)
#define TILE_ROWS_UP_TO_8(V) TILE_ROWS_UP_TO_6(V) TILE_CASE(7, V) TILE_CASE(8, V)
    switch (rows * 8 + vecs) {
#if TILE_VECS == 6
        TILE_ROWS_UP_TO_8(1) TILE_ROWS_UP_TO_8(2) TILE_ROWS_UP_TO_8(3) TILE_ROWS_UP_TO_6(4) TILE_ROWS_UP_TO_4(5)
        TILE_ROWS_UP_TO_4(6)
#else
        TILE_ROWS_UP_TO_8(1) TILE_ROWS_UP_TO_6(2) TILE_ROWS_UP_TO_4(3)
#endif
    }
#undef TILE_CASE
#undef TILE_ROWS_UP_TO_4
#undef TILE_ROWS_UP_TO_6
#undef TILE_ROWS_UP_TO_8
}
#else
#define READOUT_TILE_VECS 1 /* unused by the plain loops */
#endif

/* gemm with tiles at most max_vecs vectors wide */
static void gemm_tiles(int max_vecs, int64_t m_total, int64_t n_total, int64_t depth, const float *a, int64_t a_row,
                       int64_t a_col, const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate) {
    int64_t n = 0;
#ifdef VEC
    while (n + VW <= n_total) {
        const int vecs = (n_total - n) / VW > max_vecs ? max_vecs : (int)((n_total - n) / VW);
        const int tall = tile_rows(vecs);
        for (int64_t m = 0; m < m_total; m += tall) {
            const int rows = m_total - m < tall ? (int)(m_total - m) : tall;
            tile_of(rows, vecs, depth, a + m * a_row, a_row, a_col, b + n, ldb, c + m * ldc + n, ldc, accumulate);
        }
        n += vecs * VW;
    }
#endif
    for (; n < n_total; ++n) { /* columns left over from the vectors */
        for (int64_t i = 0; i < m_total; ++i) {
            float total = accumulate ? c[i * ldc + n] : 0.0f;
            for (int64_t k = 0; k < depth; ++k) total += a[i * a_row + k * a_col] * b[k * ldb + n];
            c[i * ldc + n] = total;
        }
    }
}

static void gemm(int64_t m_total, int64_t n_total, int64_t depth, const float *a, int64_t a_row, int64_t a_col,
                 const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate) {
#ifdef VEC
    gemm_tiles(TILE_VECS, m_total, n_total, depth, a, a_row, a_col, b, ldb, c, ldc, accumulate);
#else
    gemm_tiles(1, m_total, n_total, depth, a, a_row, a_col, b, ldb, c, ldc, accumulate);
#endif
}

/* ---- the parallel form in strips ------------------------------------------------------------------------------ */
#ifdef VEC
#define PAD VW
#else
#define PAD 1
#endif

static int64_t padded(int64_t n) { return (n + PAD - 1) / PAD * PAD; }

static float *buffer(int64_t floats) {
    return aligned_alloc(64, (size_t)((floats * (int64_t)sizeof(float) + 63) / 64 * 64));
}

/* whether a thread's scratch buffers were allocated; if not, the call is marked failed (from inside a parallel
 * region, where each thread allocates its own) */
static int scratch_ready(int ready, int *failed) {
    if (!ready) {
#pragma omp atomic write
        *failed = 1;
    }
    return ready;
}


#ifdef __AVX2__
/* the 8 x 8 block at x (row stride ldx) transposed into xt (row stride ldt): unpacks and in-lane shuffles, then the
 * 128-bit halves exchanged */
static inline void transpose8x8(const float *x, int64_t ldx, float *xt, int64_t ldt) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(x + i * ldx);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(xt + i * ldt, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(xt + (i + 4) * ldt, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
}
#endif

/* xt (cols x ld) = the transpose of x (rows x cols), zero in the columns from rows to ld */
static void transpose(const float *x, int64_t rows, int64_t cols, float *xt, int64_t ld) {
    for (int64_t c = 0; rows < ld && c < cols; ++c) memset(xt + c * ld + rows, 0, (size_t)(ld - rows) * sizeof(float));
    int64_t r0 = 0, c0 = 0;
#ifdef __AVX2__
    for (; r0 + 8 <= rows; r0 += 8) /* 8 x 8 blocks in registers; the columns past the last block below */
        for (c0 = 0; c0 + 8 <= cols; c0 += 8) transpose8x8(x + r0 * cols + c0, cols, xt + c0 * ld + r0, ld);
    for (int64_t r = 0; r < r0; ++r)
        for (int64_t c = c0; c < cols; ++c) xt[c * ld + r] = x[r * cols + c];
#endif
    for (; r0 < rows; r0 += 16) { /* blocks of 16 rows: both sides stay in cache */
        const int64_t r1 = r0 + 16 < rows ? r0 + 16 : rows;
        for (int64_t c = 0; c < cols; ++c)
            for (int64_t r = r0; r < r1; ++r) xt[c * ld + r] = x[r * cols + c];
    }
}

/* h = num / (max(|den|, exp(-log_m)) + eps) for one row, den = its decayed scores' sum */
static void normalise_row(float *h, int64_t width, float den, float log_m, float eps) {
    const float floor = expf(-log_m), scale = 1.0f / ((fabsf(den) > floor ? fabsf(den) : floor) + eps);
    for (int64_t j = 0; j < width; ++j) h[j] *= scale;
}

/* ---- the forward strip, transposed ----------------------------------------------------------------------------
 * The forward pass computes a strip's scores transposed, pt[s][i] = q[start + i] . k[s] (end x STRIP_ROWS): one
 * vector per token s holds the strip's rows, so k is read as it is stored (no transposed copy of k per matrix,
 * which would tie a thread to a matrix), only the strip's rows of q are transposed (STRIP_ROWS x DH floats), and
 * the decay, the diagonal's mask and the row sums are vector operations along the rows. */

/* STRIP_ROWS zeros then STRIP_ROWS ones: the STRIP_ROWS floats from ONES_FROM + STRIP_ROWS - o are 1 in the lanes
 * i >= o, the rows t = start + i that see token s = start + o on the diagonal */
static const float ONES_FROM[2 * STRIP_ROWS] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

/* In place, pt (end x STRIP_ROWS) -> P: pt[s][i] *= D[start + i, s] (zero for s > start + i), and
 * den[i] = sum_s P[start + i, s]. r holds the strip's rows' stabilisers r[start + i], STRIP_ROWS of them. */
static void decay_strip(float *pt, const float *a, const float *r, int64_t start, int64_t end, float *den,
                        float min_log) {
#ifdef VEC
    for (int64_t lane = 0; lane < STRIP_ROWS; lane += VW) {
        const vec rt = vload(r + lane);
        vec total = vzero();
        for (int64_t s = 0; s < end; ++s) {
            float *row = pt + s * STRIP_ROWS + lane;
            vec weight = vexp(vmin(vmax(vsub(vset1(a[s]), rt), vset1(min_log)), vzero()));
            if (s >= start) weight = vmul(weight, vload(ONES_FROM + STRIP_ROWS - (s - start) + lane));
            const vec value = vmul(vload(row), weight);
            vstore(row, value);
            total = vadd(total, value);
        }
        vstore(den + lane, total);
    }
#else
    for (int64_t i = 0; i < STRIP_ROWS; ++i) den[i] = 0.0f;
    for (int64_t s = 0; s < end; ++s)
        for (int64_t i = 0; i < STRIP_ROWS; ++i) {
            const float mask = s >= start ? ONES_FROM[STRIP_ROWS - (s - start) + i] : 1.0f;
            pt[s * STRIP_ROWS + i] *= decay1(a[s], r[i], min_log) * mask;
            den[i] += pt[s * STRIP_ROWS + i];
        }
#endif
}

/* One strip of the parallel form, before the readout: rows [start, start + STRIP_ROWS) of h (not yet normalised)
 * and den, h[t] = sum_{s <= t} P[t, s] v[s] and den[t] = sum_s P[t, s] with P = (q.k^T) D. a and r are the
 * sequence's gate rows (a[s], r[t] as in decay1); qt (DH x STRIP_ROWS) and pt (seq_len x STRIP_ROWS) are
 * scratch. Shared by the parallel form (strips of the whole sequence) and the chunkwise form (of one chunk). */
static void strip_forward(const float *q, const float *k, const float *v, const float *a, const float *r, float *h,
                          float *den, float *qt, float *pt, int64_t start, int64_t seq_len, int64_t head_dim,
                          int64_t value_dim, float min_log) {
    const int64_t end = start + STRIP_ROWS < seq_len ? start + STRIP_ROWS : seq_len, rows = end - start;
    float row_max[STRIP_ROWS], sums[STRIP_ROWS];
    for (int64_t i = 0; i < STRIP_ROWS; ++i) row_max[i] = r[i < rows ? start + i : end - 1]; /* finite past rows */
    transpose(q + start * head_dim, rows, head_dim, qt, STRIP_ROWS); /* zero in the lanes past the rows */
    gemm(end, STRIP_ROWS, head_dim, k, head_dim, 1, qt, STRIP_ROWS, pt, STRIP_ROWS, 0); /* (q.k^T)^T */
    decay_strip(pt, a, row_max, start, end, sums, min_log);
    for (int64_t i = 0; i < rows; ++i) den[start + i] = sums[i];
    gemm_tiles(READOUT_TILE_VECS, rows, value_dim, end, pt, 1, STRIP_ROWS, v, value_dim, h + start * value_dim,
               value_dim, 0); /* P v */
}

/* The backward pass of the strips of strip_forward over one sequence, given d_num (seq_len x DHV) and d_den (seq_len), the
 * gradients of the readout's numerator and denominator: dq is set, dk and dv are increased, row_sum[t] = sum_s and
 * col_sum[s] += sum_t of dL/d log decay[t, s]. kt, vt (DH x ld, DHV x ld), p and ds (BACKWARD_STRIP_ROWS x ld)
 * are scratch.
 *
 * A strip's columns before its first row are all seen; its block on the diagonal is triangular, and is computed in
 * groups of DIAGONAL_ROWS rows (AVX2's vector width), each against the columns up to its last row only: with strips of
 * 64 rows that wastes ~3 % of the products on the zeros above the diagonal, against ~40 % for whole 32-row strips. */
static void strips_backward(const float *q, const float *k, const float *v, const float *d_num, const float *d_den,
                            const float *a, const float *r, float *dq, float *dk, float *dv, float *row_sum,
                            float *col_sum, float *kt, float *vt, float *p, float *ds, int64_t ld, int64_t seq_len,
                            int64_t head_dim, int64_t value_dim, float min_log) {
    transpose(k, seq_len, head_dim, kt, ld);
    transpose(v, seq_len, value_dim, vt, ld);
    for (int64_t start = 0; start < seq_len; start += BACKWARD_STRIP_ROWS) {
        const int64_t end = start + BACKWARD_STRIP_ROWS < seq_len ? start + BACKWARD_STRIP_ROWS : seq_len;
        const int64_t rows = end - start;
        const float *qs = q + start * head_dim, *d_num_s = d_num + start * value_dim;
        /* the columns [0, start) that every row sees */
        gemm(rows, start, head_dim, qs, head_dim, 1, kt, ld, p, ld, 0);          /* q.k^T */
        gemm(rows, start, value_dim, d_num_s, value_dim, 1, vt, ld, ds, ld, 0); /* dL/dP = d_num v^T */
        /* the diagonal block: group g's rows [g0, g1) see the columns [start, start + g1) (padded) */
        for (int64_t g0 = 0; g0 < rows; g0 += DIAGONAL_ROWS) {
            const int64_t g1 = g0 + DIAGONAL_ROWS < rows ? g0 + DIAGONAL_ROWS : rows, cols = padded(g1);
            gemm(g1 - g0, cols, head_dim, qs + g0 * head_dim, head_dim, 1, kt + start, ld, p + g0 * ld + start, ld, 0);
            gemm(g1 - g0, cols, value_dim, d_num_s + g0 * value_dim, value_dim, 1, vt + start, ld,
                 ds + g0 * ld + start, ld, 0);
            for (int64_t i = g0; i < g1; ++i)
                row_sum[start + i] = decay_row_backward(p + i * ld, ds + i * ld, a, r[start + i], d_den[start + i],
                                                        col_sum, start + i + 1, start + cols, min_log);
        }
        /* dq = dS k: the columns [0, start) for all rows, then each group's diagonal columns added */
        gemm(rows, head_dim, start, ds, ld, 1, k, head_dim, dq + start * head_dim, head_dim, 0);
        for (int64_t g0 = 0; g0 < rows; g0 += DIAGONAL_ROWS) {
            const int64_t g1 = g0 + DIAGONAL_ROWS < rows ? g0 + DIAGONAL_ROWS : rows;
            gemm(g1 - g0, head_dim, g1, ds + g0 * ld + start, ld, 1, k + start * head_dim, head_dim,
                 dq + (start + g0) * head_dim, head_dim, 1);
        }
        /* dv += P^T d_num and dk += dS^T q: the columns [0, start) from all rows, then each diagonal group's
         * columns from the rows at and below it */
        gemm(start, value_dim, rows, p, 1, ld, d_num_s, value_dim, dv, value_dim, 1);
        gemm(start, head_dim, rows, ds, 1, ld, qs, head_dim, dk, head_dim, 1);
        for (int64_t g0 = 0; g0 < rows; g0 += DIAGONAL_ROWS) {
            const int64_t g1 = g0 + DIAGONAL_ROWS < rows ? g0 + DIAGONAL_ROWS : rows, c0 = start + g0;
            gemm(g1 - g0, value_dim, rows - g0, p + g0 * ld + c0, 1, ld, d_num_s + g0 * value_dim, value_dim,
                 dv + c0 * value_dim, value_dim, 1);
            gemm(g1 - g0, head_dim, rows - g0, ds + g0 * ld + c0, 1, ld, qs + g0 * head_dim, head_dim,
                 dk + c0 * head_dim, head_dim, 1);
        }
    }
}

/* The parallel form's forward pass (vil.ops.parallel.parallel_forward): for each matrix, h (S, DHV) and the
 * readout's denominator den (S). a = i - b - log sqrt(DH) (the q.k scaling folded in), r its running maximum,
 * log_m = b + r the rows' stabilisers. Returns 0, or -1 if the scratch buffers could not be allocated. */
int vil_mlstm_parallel(const float *q, const float *k, const float *v, const float *a, const float *r,
                       const float *log_m, float *h, float *den, int64_t mats, int64_t seq_len, int64_t head_dim,
                       int64_t value_dim, float eps, float min_log, int64_t threads) {
    const int64_t strips = (seq_len + STRIP_ROWS - 1) / STRIP_ROWS;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *qt = buffer(head_dim * STRIP_ROWS), *pt = buffer(seq_len * STRIP_ROWS);
        const int ready = scratch_ready(qt && pt, &failed);
        /* matrix after matrix, so that a thread's next strip reads the q, k, v it just read; in a matrix the
         * longest strips (the last rows) first */
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < mats * strips; ++item) {
            if (!ready) continue;
            const int64_t m = item / strips, start = (strips - 1 - item % strips) * STRIP_ROWS, t0 = m * seq_len;
            const int64_t end = start + STRIP_ROWS < seq_len ? start + STRIP_ROWS : seq_len;
            strip_forward(q + t0 * head_dim, k + t0 * head_dim, v + t0 * value_dim, a + t0, r + t0,
                          h + t0 * value_dim, den + t0, qt, pt, start, seq_len, head_dim, value_dim, min_log);
            for (int64_t t = t0 + start; t < t0 + end; ++t)
                normalise_row(h + t * value_dim, value_dim, den[t], log_m[t], eps);
        }
        free(qt);
        free(pt);
    }
    return failed ? -1 : 0;
}

/* the tokens ahead whose rows the per-matrix loops ask for (prefetch_channels): 4 was the best of 2, 4 and 8 */
#define PREFETCH_TOKENS 4

/* q, k (from qk_in) and v (from v_in) of one matrix, head hd of batch element b, into q, k, v (S x DH each): the
 * headwise projections of vil_headwise_qkv (block.c), row by row, with the same arithmetic. qk_in, v_in (B, S, E). */
static void project_matrix(const float *qk_in, const float *v_in, const float *const *weights,
                           const float *const *biases, float *q, float *k, float *v, int64_t b, int64_t hd,
                           int64_t seq_len, int64_t heads, int64_t head_dim) {
    const int64_t dim = heads * head_dim, from = hd * head_dim, to = from + head_dim;
    for (int64_t s = 0; s < seq_len; ++s) {
        const int64_t row = (b * seq_len + s) * dim;
        if (s + PREFETCH_TOKENS < seq_len) {
            prefetch_channels(qk_in + row + PREFETCH_TOKENS * dim, from, to);
            prefetch_channels(v_in + row + PREFETCH_TOKENS * dim, from, to);
        }
        headwise_row_pair(qk_in + row, weights[0], biases[0], weights[1], biases[1], q + s * head_dim,
                          k + s * head_dim, from, to, dim);
        headwise_row(v_in + row, weights[2], biases[2], v + s * head_dim, from, to, dim);
    }
}

/* vil_mlstm_parallel with q, k and v projected inside (vil_headwise_qkv's projections, wq, wk, wv arranged as
 * there, biases may be NULL): they never go through memory, which at ViL-T's sizes costs more than computing them.
 * A thread takes a whole matrix (its q, k, v projected into per-thread scratch, then its strips), so there are
 * only B NH items: the caller uses this where they are enough for the threads. The same values as
 * vil_headwise_qkv followed by vil_mlstm_parallel, bit for bit. */
int vil_mlstm_parallel_headwise(const float *qk_in, const float *v_in, const float *wq, const float *wk,
                                const float *wv, const float *bq, const float *bk, const float *bv, const float *a,
                                const float *r, const float *log_m, float *h, float *den, int64_t batch,
                                int64_t heads, int64_t seq_len, int64_t head_dim, float eps, float min_log,
                                int64_t threads) {
    const int64_t strips = (seq_len + STRIP_ROWS - 1) / STRIP_ROWS, mats = batch * heads;
    const float *weights[3] = {wq, wk, wv}, *biases[3] = {bq, bk, bv};
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *q = buffer(seq_len * head_dim), *k = buffer(seq_len * head_dim), *v = buffer(seq_len * head_dim);
        float *qt = buffer(head_dim * STRIP_ROWS), *pt = buffer(seq_len * STRIP_ROWS);
        const int ready = scratch_ready(q && k && v && qt && pt, &failed);
#pragma omp for schedule(dynamic, 1)
        for (int64_t m = 0; m < mats; ++m) {
            if (!ready) continue;
            const int64_t t0 = m * seq_len;
            project_matrix(qk_in, v_in, weights, biases, q, k, v, m / heads, m % heads, seq_len, heads, head_dim);
            for (int64_t strip = strips - 1; strip >= 0; --strip) {
                const int64_t start = strip * STRIP_ROWS, end = start + STRIP_ROWS < seq_len ? start + STRIP_ROWS : seq_len;
                strip_forward(q, k, v, a + t0, r + t0, h + t0 * head_dim, den + t0, qt, pt, start, seq_len, head_dim,
                              head_dim, min_log);
                for (int64_t t = t0 + start; t < t0 + end; ++t)
                    normalise_row(h + t * head_dim, head_dim, den[t], log_m[t], eps);
            }
        }
        free(q);
        free(k);
        free(v);
        free(qt);
        free(pt);
    }
    return failed ? -1 : 0;
}

/* The backward pass of the readout h = num / (max(|den|, exp(-log_m)) + eps) for the rows of one matrix, given dh:
 * d_num (S, DHV) and d_den (S), the gradients of its numerator and denominator, and d_log_m (S), the gradient of
 * the rows' stabilisers through the floor exp(-log_m) (vil.ops.common.readout_backward). */
static void readout_backward(const float *dh, const float *h, const float *den, const float *log_m, float *d_num,
                             float *d_den, float *d_log_m, int64_t seq_len, int64_t value_dim, float eps) {
    const float log_eps = eps > 0.0f ? logf(eps) : 0.0f;
    for (int64_t t = 0; t < seq_len; ++t) {
        const float *dh_t = dh + t * value_dim, *h_t = h + t * value_dim;
        float dh_h = 0.0f;
#pragma omp simd reduction(+ : dh_h)
        for (int64_t j = 0; j < value_dim; ++j) dh_h += dh_t[j] * h_t[j];
        /* the floor is inf for log_m < -88 (then h = 0 and inv = 0); its share written as 1 / (1 + eps e^log_m) */
        const float floor = expf(-log_m[t]), magnitude = fabsf(den[t]);
        const int on_floor = floor > magnitude;
        const float inv = 1.0f / ((on_floor ? floor : magnitude) + eps);
        const float sign = den[t] > 0.0f ? 1.0f : (den[t] < 0.0f ? -1.0f : 0.0f);
        d_den[t] = on_floor ? 0.0f : -dh_h * inv * sign;
        d_log_m[t] = on_floor ? dh_h * (eps > 0.0f ? 1.0f / (1.0f + expf(log_m[t] + log_eps)) : 1.0f) : 0.0f;
        for (int64_t j = 0; j < value_dim; ++j) d_num[t * value_dim + j] = dh_t[j] * inv;
    }
}

/* The scratch of the parallel form's backward pass, per thread: kt, vt, p, ds for strips_backward, d_num and d_den
 * for the readout's backward pass, and (for vil_mlstm_parallel_backward_headwise) q, k, v. */
struct backward_scratch {
    float *kt, *vt, *p, *ds, *d_num, *d_den, *q, *k, *v, *dq, *dk, *dv;
};

static int backward_scratch_alloc(struct backward_scratch *w, int64_t seq_len, int64_t head_dim, int64_t value_dim,
                                  int with_qkv) {
    const int64_t ld = padded(seq_len);
    w->kt = buffer(head_dim * ld), w->vt = buffer(value_dim * ld);
    w->p = buffer(BACKWARD_STRIP_ROWS * ld), w->ds = buffer(BACKWARD_STRIP_ROWS * ld);
    w->d_num = buffer(seq_len * value_dim), w->d_den = buffer(seq_len);
    float **qkv[6] = {&w->q, &w->k, &w->v, &w->dq, &w->dk, &w->dv};
    int ready = w->kt && w->vt && w->p && w->ds && w->d_num && w->d_den;
    for (int i = 0; i < 6; ++i) {
        *qkv[i] = with_qkv ? buffer(seq_len * (i % 3 == 2 ? value_dim : head_dim)) : NULL;
        ready = ready && (!with_qkv || *qkv[i]);
    }
    return ready;
}

static void backward_scratch_free(struct backward_scratch *w) {
    float *all[12] = {w->kt, w->vt, w->p, w->ds, w->d_num, w->d_den, w->q, w->k, w->v, w->dq, w->dk, w->dv};
    for (int i = 0; i < 12; ++i) free(all[i]);
}

/* The backward pass of one matrix (its rows t0 .. t0 + S of the per-token arrays), its q, k, v given: its dq, dk, dv
 * written */
static void matrix_backward(const float *q, const float *k, const float *v, const float *dh, const float *h,
                            const float *den, const float *log_m, const float *a, const float *r, float *dq, float *dk,
                            float *dv, float *row_sum, float *col_sum, float *d_log_m, struct backward_scratch *w,
                            int64_t t0, int64_t seq_len, int64_t head_dim, int64_t value_dim, float eps,
                            float min_log) {
    readout_backward(dh + t0 * value_dim, h + t0 * value_dim, den + t0, log_m + t0, w->d_num, w->d_den, d_log_m + t0,
                     seq_len, value_dim, eps);
    /* dk, dv and col_sum accumulate over the strips */
    memset(dk, 0, (size_t)(seq_len * head_dim) * sizeof(float));
    memset(dv, 0, (size_t)(seq_len * value_dim) * sizeof(float));
    memset(col_sum + t0, 0, (size_t)seq_len * sizeof(float));
    strips_backward(q, k, v, w->d_num, w->d_den, a + t0, r + t0, dq, dk, dv, row_sum + t0, col_sum + t0, w->kt, w->vt,
                    w->p, w->ds, padded(seq_len), seq_len, head_dim, value_dim, min_log);
}

/* The parallel form's backward pass (vil.ops.parallel.parallel_backward) for each matrix, given dh (S, DHV) and the
 * forward pass's h (S, DHV) and denominator den (S): dq, dk (S, DH) and dv (S, DHV), row_sum[t] = sum_s and
 * col_sum[s] = sum_t of dL/d log decay[t, s], and d_log_m (S), the readout's gradient of the rows' stabilisers
 * log_m. Returns 0, or -1 as vil_mlstm_parallel. */
int vil_mlstm_parallel_backward(const float *q, const float *k, const float *v, const float *dh, const float *h,
                                const float *den, const float *log_m, const float *a, const float *r, float *dq,
                                float *dk, float *dv, float *row_sum, float *col_sum, float *d_log_m, int64_t mats,
                                int64_t seq_len, int64_t head_dim, int64_t value_dim, float eps, float min_log,
                                int64_t threads) {
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        struct backward_scratch w;
        const int ready = scratch_ready(backward_scratch_alloc(&w, seq_len, head_dim, value_dim, 0), &failed);
#pragma omp for schedule(dynamic, 1)
        for (int64_t m = 0; m < mats; ++m) {
            if (!ready) continue;
            const int64_t t0 = m * seq_len;
            matrix_backward(q + t0 * head_dim, k + t0 * head_dim, v + t0 * value_dim, dh, h, den, log_m, a, r,
                            dq + t0 * head_dim, dk + t0 * head_dim, dv + t0 * value_dim, row_sum, col_sum, d_log_m, &w,
                            t0, seq_len, head_dim, value_dim, eps, min_log);
        }
        backward_scratch_free(&w);
    }
    return failed ? -1 : 0;
}

/* The headwise projections' backward pass for one matrix (head hd of batch element b), given its dq, dk, dv (S x
 * DH): its head's channels of d_qk_in = hw_q^T(dq) + hw_k^T(dk) and d_v_in = hw_v^T(dv) (B, S, E), with hw^T the
 * transposed projection (wt_in arranged as in vil_headwise_qkv_backward, block.c, with the same arithmetic), and
 * its head's channels of batch element b's weight and bias sums: sums (3 projections x (4 + 1) x E), dwt then db, as
 * there. */
static void project_matrix_backward(const float *qk_in, const float *v_in, const float *const *wt_in, const float *dq,
                                    const float *dk, const float *dv, float *d_qk_in, float *d_v_in, float *sums,
                                    int64_t b, int64_t hd, int64_t seq_len, int64_t heads, int64_t head_dim) {
    const int64_t dim = heads * head_dim, from = hd * head_dim, to = from + head_dim, first = b * seq_len * dim;
    float out[ROW_BUFFER];
    for (int64_t s = 0; s < seq_len; ++s) {
        const int64_t row = first + s * dim, at = s * head_dim - from; /* dq + at + c: channel c of token s */
        if (s + PREFETCH_TOKENS < seq_len) { /* the rows written ahead, and the inputs the weight sums read below */
            prefetch_channels(d_qk_in + row + PREFETCH_TOKENS * dim, from, to);
            prefetch_channels(d_v_in + row + PREFETCH_TOKENS * dim, from, to);
            prefetch_channels(qk_in + row + PREFETCH_TOKENS * dim, from, to);
            prefetch_channels(v_in + row + PREFETCH_TOKENS * dim, from, to);
        }
        headwise_row(dq + at, wt_in[0], NULL, d_qk_in + row + from, from, to, dim);
        headwise_row(dk + at, wt_in[1], NULL, out, from, to, dim);
        float *dx = d_qk_in + row + from;
#pragma omp simd
        for (int64_t c = 0; c < head_dim; ++c) dx[c] = out[c] + dx[c];
        headwise_row(dv + at, wt_in[2], NULL, d_v_in + row + from, from, to, dim);
    }
    for (int64_t i = 0; i < 15; ++i) memset(sums + i * dim + from, 0, (size_t)head_dim * sizeof(float));
    const float *grads[3] = {dq, dk, dv}, *inputs[3] = {qk_in, qk_in, v_in};
    for (int p = 0; p < 3; ++p)
        headwise_weight_sums(grads[p], NULL, head_dim, inputs[p] + first + from, dim, seq_len, head_dim,
                             sums + 5 * p * dim + from, dim, sums + (5 * p + 4) * dim + from);
}

/* vil_mlstm_parallel_backward with q, k and v projected inside, per matrix, as vil_mlstm_parallel_headwise does (the
 * same q, k, v bit for bit), and their own backward pass too, while the matrix's dq, dk, dv are in cache: they never
 * go through memory. Writes d_qk_in and d_v_in (B, S, E), the projections' part of dL/d qk_in and dL/d v_in (the
 * gates' part is added by vil_headwise_qkv_backward), and adds the weight and bias sums into sums (3 x 5 x E, laid
 * out as vil_headwise_qkv_backward's), formed per batch element in partial (B x 15 E, scratch; each matrix its
 * head's channels) and added over the batch in order; row_sum, col_sum and d_log_m as vil_mlstm_parallel_backward.
 * wt_q_in, wt_k_in, wt_v_in: the weights arranged for the transposed projection. */
int vil_mlstm_parallel_backward_headwise(const float *qk_in, const float *v_in, const float *wq, const float *wk,
                                         const float *wv, const float *bq, const float *bk, const float *bv,
                                         const float *wt_q_in, const float *wt_k_in, const float *wt_v_in,
                                         const float *dh, const float *h, const float *den, const float *log_m,
                                         const float *a, const float *r, float *d_qk_in, float *d_v_in, float *sums,
                                         float *partial, float *row_sum, float *col_sum, float *d_log_m, int64_t batch,
                                         int64_t heads, int64_t seq_len, int64_t head_dim, float eps, float min_log,
                                         int64_t threads) {
    const float *weights[3] = {wq, wk, wv}, *biases[3] = {bq, bk, bv}, *wt_in[3] = {wt_q_in, wt_k_in, wt_v_in};
    const int64_t dim = heads * head_dim;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        struct backward_scratch w;
        const int ready = scratch_ready(backward_scratch_alloc(&w, seq_len, head_dim, head_dim, 1), &failed);
#pragma omp for schedule(dynamic, 1)
        for (int64_t m = 0; m < batch * heads; ++m) {
            if (!ready) continue;
            const int64_t b = m / heads, hd = m % heads;
            project_matrix(qk_in, v_in, weights, biases, w.q, w.k, w.v, b, hd, seq_len, heads, head_dim);
            matrix_backward(w.q, w.k, w.v, dh, h, den, log_m, a, r, w.dq, w.dk, w.dv, row_sum, col_sum, d_log_m, &w,
                            m * seq_len, seq_len, head_dim, head_dim, eps, min_log);
            project_matrix_backward(qk_in, v_in, wt_in, w.dq, w.dk, w.dv, d_qk_in, d_v_in, partial + b * 15 * dim, b,
                                    hd, seq_len, heads, head_dim);
        }
        backward_scratch_free(&w);
    }
    if (!failed) sum_parts(partial, batch, 15 * dim, sums, 15 * dim, (int)threads);
    return failed ? -1 : 0;
}

/* ---- the chunkwise form's forward pass --------------------------------------------------------------------------
 * vil.ops.chunkwise._forward for each matrix, with the gates' share computed by the caller. Chunks are L tokens;
 * q, k (S, DH) and v, h (S, DHV) unpadded, the last chunk ragged; the per-token gate rows are laid out in chunks,
 * (NC * L): a = i - b + log_scale, r = the row stabiliser, inter = the weight of the state read, log_m = b + r,
 * write = the weight of each token's write into the state; alpha (NC) the decay of the state over each chunk.
 * The state C (DH x DHV), n (DH) starts at c0, n0 and ends in c_last, n_last; c_prev and n_prev receive the state
 * before every chunk (NC x DH x DHV, NC x DH). den (NC * L) receives the readout's denominators. With h NULL only the states are computed (q, a, r, inter, log_m and den are not read): the backward
 * pass recomputes them so that training need not keep them. Returns 0, or -1 if the buffers could not be allocated. */
int vil_mlstm_chunkwise(const float *q, const float *k, const float *v, const float *a, const float *r,
                        const float *inter, const float *log_m, const float *write, const float *alpha,
                        const float *c0, const float *n0, float *h, float *den, float *c_prev, float *n_prev,
                        float *c_last, float *n_last, int64_t mats, int64_t seq_len, int64_t chunk, int64_t head_dim,
                        int64_t value_dim, float eps, float min_log, int64_t threads) {
    const int64_t chunks = (seq_len + chunk - 1) / chunk, state = head_dim * value_dim;
    const int64_t items = mats * chunks;
    float *c_states = c_prev, *n_states = n_prev;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *qt = buffer(head_dim * STRIP_ROWS), *pt = buffer(chunk * STRIP_ROWS);
        float *scaled = buffer(chunk * head_dim);
        const int ready = scratch_ready(qt && pt && scaled, &failed);
        /* 1. each chunk by itself: the intra-chunk part of h and den (the parallel form in strips), and what the
         * chunk writes into the state, U = sum_s write[s] k[s] v[s]^T and u = sum_s write[s] k[s], kept in the
         * chunk's state slot for now */
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; ++item) {
            if (!ready) continue;
            const int64_t m = item / chunks, s0 = item % chunks * chunk;
            const int64_t rows = seq_len - s0 < chunk ? seq_len - s0 : chunk;
            const int64_t t0 = m * seq_len + s0, g0 = item * chunk; /* token row, gate row */
            const float *kc = k + t0 * head_dim, *vc = v + t0 * value_dim;
            for (int64_t start = 0; h && start < rows; start += STRIP_ROWS)
                strip_forward(q + t0 * head_dim, kc, vc, a + g0, r + g0, h + t0 * value_dim, den + g0, qt, pt, start,
                              rows, head_dim, value_dim, min_log);
            float *u = n_states + item * head_dim;
            memset(u, 0, (size_t)head_dim * sizeof(float));
            for (int64_t t = 0; t < rows; ++t) {
                const float weight = write[g0 + t];
                for (int64_t e = 0; e < head_dim; ++e) {
                    scaled[t * head_dim + e] = weight * kc[t * head_dim + e];
                    u[e] += scaled[t * head_dim + e];
                }
            }
            gemm(head_dim, value_dim, rows, scaled, 1, head_dim, vc, value_dim, c_states + item * state, value_dim, 0);
        }
        /* 2. the state recurrence, matrix by matrix: C = alpha C + U over the chunks (d x d adds per chunk); each
         * slot gets the state before its chunk */
#pragma omp for schedule(static)
        for (int64_t m = 0; m < mats; ++m) {
            if (failed) continue;
            float *c = c_last + m * state, *n = n_last + m * head_dim;
            memcpy(c, c0 + m * state, (size_t)state * sizeof(float));
            memcpy(n, n0 + m * head_dim, (size_t)head_dim * sizeof(float));
            for (int64_t j = 0; j < chunks; ++j) {
                const float decay = alpha[m * chunks + j];
                float *slot = c_states + (m * chunks + j) * state, *slot_n = n_states + (m * chunks + j) * head_dim;
                for (int64_t e = 0; e < state; ++e) {
                    const float update = slot[e];
                    slot[e] = c[e];
                    c[e] = decay * c[e] + update;
                }
                for (int64_t e = 0; e < head_dim; ++e) {
                    const float update = slot_n[e];
                    slot_n[e] = n[e];
                    n[e] = decay * n[e] + update;
                }
            }
        }
        /* 3. each chunk by itself again: the state's share, h += inter (q C), den += inter (q . n); the readout */
#pragma omp for schedule(static)
        for (int64_t item = 0; item < items; ++item) {
            if (!ready || h == NULL) continue;
            const int64_t m = item / chunks, s0 = item % chunks * chunk;
            const int64_t rows = seq_len - s0 < chunk ? seq_len - s0 : chunk;
            const int64_t t0 = m * seq_len + s0, g0 = item * chunk;
            const float *qc = q + t0 * head_dim, *n = n_states + item * head_dim;
            float *hc = h + t0 * value_dim;
            for (int64_t t = 0; t < rows; ++t) {
                const float weight = inter[g0 + t];
                float dot = 0.0f;
                for (int64_t e = 0; e < head_dim; ++e) {
                    scaled[t * head_dim + e] = weight * qc[t * head_dim + e];
                    dot += scaled[t * head_dim + e] * n[e];
                }
                den[g0 + t] += dot;
            }
            gemm(rows, value_dim, head_dim, scaled, head_dim, 1, c_states + item * state, value_dim, hc, value_dim, 1);
            for (int64_t t = 0; t < rows; ++t)
                normalise_row(hc + t * value_dim, value_dim, den[g0 + t], log_m[g0 + t], eps);
            for (int64_t t = rows; t < chunk; ++t) den[g0 + t] = 0.0f; /* the padding of the last chunk */
        }
        free(qt);
        free(pt);
        free(scaled);
    }
    return failed ? -1 : 0;
}

/* ---- the chunkwise form's backward pass through each chunk's outputs -------------------------------------------
 * What vil.ops.chunkwise.chunkwise_backward computes from the gradients of the readout, chunk by chunk: given
 * d_num (NC * L, DHV) and d_den (NC * L), the gradients of each token's numerator and denominator, and the gate
 * rows of vil_mlstm_chunkwise (a, r, inter), with the states before each chunk c_prev (NC, DH, DHV) and n_prev
 * (NC, DH): dq, dk, dv (NC * L rows, zero in the padding) through the chunk's outputs (dk and dv without the
 * state writes, which the caller adds), row_sum and col_sum (NC * L) the row and column sums of dL/d log decay
 * inside each chunk, and dc_out (NC, DH, DHV), dn_out (NC, DH): dL/d of the state before each chunk through that
 * chunk's outputs. q, k, v are unpadded (S rows). Returns 0, or -1 if the buffers could not be allocated. */
int vil_mlstm_chunkwise_backward(const float *q, const float *k, const float *v, const float *d_num,
                                 const float *d_den, const float *a, const float *r, const float *inter,
                                 const float *c_prev, const float *n_prev, float *dq, float *dk, float *dv,
                                 float *row_sum, float *col_sum, float *dc_out, float *dn_out, int64_t mats,
                                 int64_t seq_len, int64_t chunk, int64_t head_dim, int64_t value_dim, float min_log,
                                 int64_t threads) {
    const int64_t chunks = (seq_len + chunk - 1) / chunk, ld = padded(chunk), state = head_dim * value_dim;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *kt = buffer(head_dim * ld), *vt = buffer(value_dim * ld), *ct = buffer(state);
        float *p = buffer(BACKWARD_STRIP_ROWS * ld), *ds = buffer(BACKWARD_STRIP_ROWS * ld);
        float *scaled = buffer(chunk * value_dim);
        const int ready = scratch_ready(kt && vt && ct && p && ds && scaled, &failed);
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < mats * chunks; ++item) {
            if (!ready) continue;
            const int64_t m = item / chunks, j = item % chunks;
            const int64_t s0 = j * chunk, rows = seq_len - s0 < chunk ? seq_len - s0 : chunk;
            const int64_t t0 = m * seq_len + s0, g0 = (m * chunks + j) * chunk, state0 = (m * chunks + j);
            const float *qc = q + t0 * head_dim, *kc = k + t0 * head_dim, *vc = v + t0 * value_dim;
            const float *d_num_c = d_num + g0 * value_dim;
            const float *c = c_prev + state0 * state, *n = n_prev + state0 * head_dim;
            float *dqc = dq + g0 * head_dim, *dkc = dk + g0 * head_dim, *dvc = dv + g0 * value_dim;
            memset(dkc, 0, (size_t)(chunk * head_dim) * sizeof(float));
            memset(dvc, 0, (size_t)(chunk * value_dim) * sizeof(float));
            memset(dqc + rows * head_dim, 0, (size_t)((chunk - rows) * head_dim) * sizeof(float));
            memset(col_sum + g0, 0, (size_t)chunk * sizeof(float));
            for (int64_t t = rows; t < chunk; ++t) row_sum[g0 + t] = 0.0f;

            /* inside the chunk: the parallel form's backward pass in strips */
            strips_backward(qc, kc, vc, d_num_c, d_den + g0, a + g0, r + g0, dqc, dkc, dvc, row_sum + g0, col_sum + g0,
                            kt, vt, p, ds, ld, rows, head_dim, value_dim, min_log);

            /* the state's share, h += inter (q C), den += inter (q . n): with g = inter d_num,
             * dq += g C^T + inter d_den n, dC = q^T g, dn = q^T (inter d_den) */
            for (int64_t t = 0; t < rows; ++t)
                for (int64_t e = 0; e < value_dim; ++e)
                    scaled[t * value_dim + e] = inter[g0 + t] * d_num_c[t * value_dim + e];
            transpose(c, head_dim, value_dim, ct, head_dim);
            gemm(rows, head_dim, value_dim, scaled, value_dim, 1, ct, head_dim, dqc, head_dim, 1);
            float *dnc = dn_out + state0 * head_dim;
            memset(dnc, 0, (size_t)head_dim * sizeof(float));
            for (int64_t t = 0; t < rows; ++t) {
                const float weight = inter[g0 + t] * d_den[g0 + t];
                for (int64_t e = 0; e < head_dim; ++e) {
                    dqc[t * head_dim + e] += weight * n[e];
                    dnc[e] += weight * qc[t * head_dim + e];
                }
            }
            gemm(head_dim, value_dim, rows, qc, 1, head_dim, scaled, value_dim, dc_out + state0 * state, value_dim, 0);
        }
        free(kt);
        free(vt);
        free(ct);
        free(p);
        free(ds);
        free(scaled);
    }
    return failed ? -1 : 0;
}

/* ---- the chunkwise form's state recurrence, backwards over the chunks ------------------------------------------
 * vil.ops.chunkwise._scan_backward for each matrix: C_j = alpha_j C_{j-1} + beta_j U_j (the same for n) and
 * m_j = g_j + max(m_{j-1}, a_last_j). c_prev (NC, DH, DHV) and n_prev (NC, DH) are the states before each chunk,
 * c_last and n_last the state after the last; alpha, beta, from_a_last (1 where a_last_j > m_{j-1}, else 0) and
 * dm_out (dL/d m_{j-1} through chunk j's outputs) have NC entries. d_c (NC, DH, DHV) and d_n (NC, DH) hold dL/d of
 * the state before each chunk through that chunk's outputs, and are overwritten with beta_j dL/dC_j and
 * beta_j dL/dn_j (C_j the state after chunk j), the gradients of the chunk's updates that _scan_backward returns. dc_last, dn_last, dm_last are
 * dL/d of the final state (NULL: none). Out: d_a_last, d_g (NC) and dL/d of the initial state dc0, dn0, dm0.
 *
 * Threads: the d x d recurrence is split into parts of STATE_ROWS rows of C (part 0 also takes n), items that run
 * the whole recurrence on their rows and write their share of the two dot products per chunk; the scalar m
 * recurrence then adds the shares in part order, per matrix: the same results for any thread count. */
#define STATE_ROWS 16

static float dot(const float *x, const float *y, int64_t n) {
    float total = 0.0f;
    int64_t e = 0;
#ifdef VEC
    vec acc = vzero();
    for (; e + VW <= n; e += VW) acc = vfmadd(vload(x + e), vload(y + e), acc);
    total = vsum(acc);
#endif
    for (; e < n; ++e) total += x[e] * y[e];
    return total;
}

/* running = d_out + alpha running after out = running * beta, for n floats: one chunk of the reverse recurrence */
static void state_step_backward(float *running, float *d_out, float alpha, float beta, int64_t n) {
    for (int64_t e = 0; e < n; ++e) {
        const float after = running[e];
        running[e] = d_out[e] + alpha * after;
        d_out[e] = after * beta;
    }
}

int vil_mlstm_state_backward(const float *c_prev, const float *n_prev, const float *c_last, const float *n_last,
                             const float *alpha, const float *beta, const float *from_a_last, const float *dm_out,
                             float *d_c, float *d_n, const float *dc_last, const float *dn_last, const float *dm_last,
                             float *d_a_last, float *d_g, float *dc0, float *dn0, float *dm0, int64_t mats,
                             int64_t chunks, int64_t head_dim, int64_t value_dim, int64_t threads) {
    const int64_t parts = (head_dim + STATE_ROWS - 1) / STATE_ROWS, state = head_dim * value_dim;
    /* shares[((m * parts + p) * chunks + j) * 2 + {0, 1}]: part p's share of <dC_after_j, C_prev_j> and of
     * <dC_after_j, C_after_j> (with n's terms in part 0) */
    float *shares = buffer(mats * parts * chunks * 2);
    if (shares == NULL) return -1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t item = 0; item < mats * parts; ++item) {
        const int64_t m = item / parts, p = item % parts;
        const int64_t row0 = p * STATE_ROWS, rows = head_dim - row0 < STATE_ROWS ? head_dim - row0 : STATE_ROWS;
        const int64_t offset = row0 * value_dim, width = rows * value_dim; /* this part's floats of a state */
        float *running = dc0 + m * state + offset, *running_n = dn0 + m * head_dim;
        if (dc_last) memcpy(running, dc_last + m * state + offset, (size_t)width * sizeof(float));
        else memset(running, 0, (size_t)width * sizeof(float));
        if (p == 0) {
            if (dn_last) memcpy(running_n, dn_last + m * head_dim, (size_t)head_dim * sizeof(float));
            else memset(running_n, 0, (size_t)head_dim * sizeof(float));
        }
        for (int64_t j = chunks - 1; j >= 0; --j) {
            const int64_t slot = m * chunks + j;
            const float *before = c_prev + slot * state + offset;
            const float *after = (j + 1 < chunks ? c_prev + (slot + 1) * state : c_last + m * state) + offset;
            float *share = shares + ((m * parts + p) * chunks + j) * 2;
            share[0] = dot(running, before, width);
            share[1] = dot(running, after, width);
            if (p == 0) {
                const float *n_before = n_prev + slot * head_dim;
                const float *n_after = j + 1 < chunks ? n_prev + (slot + 1) * head_dim : n_last + m * head_dim;
                share[0] += dot(running_n, n_before, head_dim);
                share[1] += dot(running_n, n_after, head_dim);
                state_step_backward(running_n, d_n + slot * head_dim, alpha[slot], beta[slot], head_dim);
            }
            state_step_backward(running, d_c + slot * state + offset, alpha[slot], beta[slot], width);
        }
    }
    /* alpha = exp(m_prev - r), beta = exp(a_last - r), beta U = C_after - alpha C_prev: the log weights' gradients,
     * and the m recurrence, matrix by matrix */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t m = 0; m < mats; ++m) {
        float d_m = dm_last ? dm_last[m] : 0.0f;
        for (int64_t j = chunks - 1; j >= 0; --j) {
            const int64_t slot = m * chunks + j;
            float dot_prev = 0.0f, dot_after = 0.0f;
            for (int64_t p = 0; p < parts; ++p) {
                dot_prev += shares[((m * parts + p) * chunks + j) * 2];
                dot_after += shares[((m * parts + p) * chunks + j) * 2 + 1];
            }
            const float d_log_alpha = dot_prev * alpha[slot], d_log_beta = dot_after - d_log_alpha;
            const float d_r = d_m - d_log_alpha - d_log_beta;
            d_g[slot] = d_m;
            d_a_last[slot] = d_log_beta + d_r * from_a_last[slot];
            d_m = d_log_alpha + d_r * (1.0f - from_a_last[slot]) + dm_out[slot];
        }
        dm0[m] = d_m;
    }
    free(shares);
    return 0;
}
