/* The headwise 4 x 4 block-diagonal projection of one row, shared by block.c (the projection kernels) and cell.c
 * (the parallel form that projects q, k and v itself): the same arithmetic in both, so that either way gives the
 * same values bit for bit. */
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

#endif
