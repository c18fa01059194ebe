/* Sums formed per part and then added in order, shared by block.c and cell.c: the parts are fixed by the caller,
 * independent of the thread count, so that the sums are the same for any number of threads, bit for bit. */
#ifndef VIL_SUMS_H
#define VIL_SUMS_H

#include <stdint.h>

/* out[c] += sum over the parts p, in order, of partial[p * stride + c] for c < width: SUM_COLUMNS columns at a time,
 * so that their sums run side by side in vectors (one column at a time, each add waited on the one before) */
#define SUM_COLUMNS 64
static void sum_parts(const float *partial, int64_t parts, int64_t stride, float *out, int64_t width, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c0 = 0; c0 < width; c0 += SUM_COLUMNS) {
        const int64_t n = width - c0 < SUM_COLUMNS ? width - c0 : SUM_COLUMNS;
        float total[SUM_COLUMNS] = {0.0f};
        for (int64_t p = 0; p < parts; ++p) {
            const float *row = partial + p * stride + c0;
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) total[j] += row[j];
        }
        for (int64_t j = 0; j < n; ++j) out[c0 + j] += total[j];
    }
}

#endif
