/* The headwise 4 x 4 block-diagonal projection of one row and its weight gradient's sums, shared by block.c (the
 * projection kernels) and cell.c (the parallel form that projects q, k and v itself, forward and backward): the
 * same arithmetic in both. */
#ifndef VIL_HEADWISE_H
#define VIL_HEADWISE_H

#include "vector.h"

/* ---- headwise 4x4 block-diagonal projections, written in head layout ------------------------------------------
 * out[4b+o] = bias[4b+o] + sum_d w[b][o][d] x[4b+d]. The weight comes pre-arranged as wt[d][4b+o] = w[b][o][d]
 * (4 x E), so that output channel c needs wt[d][c] * x[(c & ~3) + d]: a broadcast of element d inside each group
 * of four channels, which is one in-lane permute on x86. */
static inline void headwise_row(const float *x, const float *wt, const float *bias, float *out, int64_t from, int64_t to,
                         int64_t dim) {
    int64_t c = from;
#ifdef VEC
    for (; c + VW <= to; c += VW) {
        const vec xv = vload(x + c);
        vec acc = bias ? vload(bias + c) : vzero();
        acc = vfmadd(vload(wt + c), vlane_broadcast(xv, 0x00), acc);
        acc = vfmadd(vload(wt + dim + c), vlane_broadcast(xv, 0x55), acc);
        acc = vfmadd(vload(wt + 2 * dim + c), vlane_broadcast(xv, 0xAA), acc);
        acc = vfmadd(vload(wt + 3 * dim + c), vlane_broadcast(xv, 0xFF), acc);
        vstore(out + c - from, acc);
    }
#endif
    for (; c < to; ++c) {
        const float *xb = x + (c & ~(int64_t)3);
        float acc = bias ? bias[c] : 0.0f;
        for (int d = 0; d < 4; ++d) acc += wt[d * dim + c] * xb[d];
        out[c - from] = acc;
    }
}

/* headwise_row for two projections of the same x (q and k of qk_input): x's broadcasts made once, and two
 * independent chains of FMAs, each with headwise_row's arithmetic (the same results bit for bit). */
static inline void headwise_row_pair(const float *x, const float *wt_a, const float *bias_a, const float *wt_b,
                                     const float *bias_b, float *out_a, float *out_b, int64_t from, int64_t to,
                                     int64_t dim) {
    int64_t c = from;
#ifdef VEC
    for (; c + VW <= to; c += VW) {
        const vec xv = vload(x + c);
        const vec x0 = vlane_broadcast(xv, 0x00), x1 = vlane_broadcast(xv, 0x55), x2 = vlane_broadcast(xv, 0xAA);
        const vec x3 = vlane_broadcast(xv, 0xFF);
        vec a = bias_a ? vload(bias_a + c) : vzero(), b = bias_b ? vload(bias_b + c) : vzero();
        a = vfmadd(vload(wt_a + c), x0, a);
        b = vfmadd(vload(wt_b + c), x0, b);
        a = vfmadd(vload(wt_a + dim + c), x1, a);
        b = vfmadd(vload(wt_b + dim + c), x1, b);
        a = vfmadd(vload(wt_a + 2 * dim + c), x2, a);
        b = vfmadd(vload(wt_b + 2 * dim + c), x2, b);
        a = vfmadd(vload(wt_a + 3 * dim + c), x3, a);
        b = vfmadd(vload(wt_b + 3 * dim + c), x3, b);
        vstore(out_a + c - from, a);
        vstore(out_b + c - from, b);
    }
#endif
    if (c < to) { /* channels left over from the vectors */
        headwise_row(x, wt_a, bias_a, out_a + c - from, c, to, dim);
        headwise_row(x, wt_b, bias_b, out_b + c - from, c, to, dim);
    }
}

/* Asks for the channels [from, to) of x to be brought into cache: the rows a kernel reads a few tokens ahead. A
 * matrix's rows of one head are E floats apart, so the hardware prefetchers, which follow steps within a page, miss
 * most of them. For the projections of one ViL-T call inside the cell (32 matrices, rows not in cache, one thread)
 * headwise_row_pair took them from 1.12 to 0.58 ms and these prefetches on to 0.39 ms. */
static inline void prefetch_channels(const float *x, int64_t from, int64_t to) {
    for (int64_t c = from; c < to; c += 16) __builtin_prefetch(x + c); /* one 64-byte line per 16 floats */
}

/* The weight and bias gradients' sums of one head's channels [0, width) over n tokens: dwt[d * dwt_stride + c] +=
 * sum_t dy_t[c] x_t[(c & ~3) + d] and db[c] += sum_t dy_t[c], with dy_t = dy + dy_rows[t] (or dy + t * dy_stride
 * where dy_rows is NULL) and x_t = x + t * x_stride (both at the head's first channel, a multiple of 4), added in
 * token order. Per vector of channels the five sums stay in registers while t runs (kept in memory and updated
 * token by token, the loads and stores took half of the kernel). */
static inline void headwise_weight_sums(const float *dy, const int64_t *dy_rows, int64_t dy_stride, const float *x,
                                        int64_t x_stride, int64_t n, int64_t width, float *dwt, int64_t dwt_stride,
                                        float *db) {
#define DY_ROW(t) (dy + (dy_rows ? dy_rows[t] : (t) * dy_stride))
    int64_t c = 0;
#ifdef VEC
    for (; c + VW <= width; c += VW) {
        float *w = dwt + c;
        vec bias = vload(db + c), w0 = vload(w), w1 = vload(w + dwt_stride), w2 = vload(w + 2 * dwt_stride);
        vec w3 = vload(w + 3 * dwt_stride);
        for (int64_t t = 0; t < n; ++t) {
            const vec gv = vload(DY_ROW(t) + c), xv = vload(x + t * x_stride + c);
            bias = vadd(bias, gv);
            w0 = vfmadd(gv, vlane_broadcast(xv, 0x00), w0);
            w1 = vfmadd(gv, vlane_broadcast(xv, 0x55), w1);
            w2 = vfmadd(gv, vlane_broadcast(xv, 0xAA), w2);
            w3 = vfmadd(gv, vlane_broadcast(xv, 0xFF), w3);
        }
        vstore(db + c, bias);
        vstore(w, w0);
        vstore(w + dwt_stride, w1);
        vstore(w + 2 * dwt_stride, w2);
        vstore(w + 3 * dwt_stride, w3);
    }
#endif
    for (; c < width; ++c)
        for (int64_t t = 0; t < n; ++t) {
            const float gc = DY_ROW(t)[c];
            const float *xb = x + t * x_stride + (c & ~(int64_t)3);
            db[c] += gc;
            for (int d = 0; d < 4; ++d) dwt[d * dwt_stride + c] += gc * xb[d];
        }
#undef DY_ROW
}

#endif
