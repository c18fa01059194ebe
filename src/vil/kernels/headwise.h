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
