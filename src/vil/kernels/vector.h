/* The vector layer shared by the kernels: VW floats per vector on AVX-512 (16) or AVX2 (8), written once; VEC is
 * defined when either is targeted (otherwise only the plain C loops are compiled). Also exp and SiLU on vectors. */
#ifndef VIL_VECTOR_H
#define VIL_VECTOR_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* the widest row (channels, or one head) a kernel keeps on its stack; the Python side checks it (ROW_BUFFER) */
#define ROW_BUFFER 4096

/* ---- one vector type for both instruction sets: VW floats, written once below ---------------------------------- */
#if defined(__AVX512F__)
#define VEC 1
#define VW 16
typedef __m512 vec;
#define vload _mm512_loadu_ps
#define vstore _mm512_storeu_ps
#define vset1 _mm512_set1_ps
#define vzero _mm512_setzero_ps
#define vadd _mm512_add_ps
#define vsub _mm512_sub_ps
#define vmul _mm512_mul_ps
#define vdiv _mm512_div_ps
#define vmin _mm512_min_ps
#define vmax _mm512_max_ps
#define vfmadd _mm512_fmadd_ps
#define vfnmadd _mm512_fnmadd_ps
#define vlane_broadcast _mm512_permute_ps /* element d of every group of 4: imm d * 0x55 */
#define vsum _mm512_reduce_add_ps
static inline vec vround(vec x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vec vscale2(vec p, vec n) { return _mm512_scalef_ps(p, n); } /* p * 2^n */
#elif defined(__AVX2__)
#define VEC 1
#define VW 8
typedef __m256 vec;
#define vload _mm256_loadu_ps
#define vstore _mm256_storeu_ps
#define vset1 _mm256_set1_ps
#define vzero _mm256_setzero_ps
#define vadd _mm256_add_ps
#define vsub _mm256_sub_ps
#define vmul _mm256_mul_ps
#define vdiv _mm256_div_ps
#define vmin _mm256_min_ps
#define vmax _mm256_max_ps
#define vfmadd _mm256_fmadd_ps
#define vfnmadd _mm256_fnmadd_ps
#define vlane_broadcast _mm256_permute_ps
static inline vec vround(vec x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vec vscale2(vec p, vec n) {
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
static inline float vsum(vec x) {
    float lanes[8], total = 0.0f;
    _mm256_storeu_ps(lanes, x);
    for (int i = 0; i < 8; ++i) total += lanes[i];
    return total;
}
#endif

/* exp(x) = 2^n e^r with n = round(x / ln 2), |r| <= ln(2)/2, e^r by a degree-6 polynomial (Cephes): relative error
 * ~1e-7, as good as float32 allows. Inputs are clamped to [-87, 88] (the float32 range). */
#ifdef VEC
static inline vec vexp(vec x) {
    x = vmin(vmax(x, vset1(-87.0f)), vset1(88.0f));
    const vec n = vround(vmul(x, vset1(1.44269504088896341f)));
    vec r = vfnmadd(n, vset1(0.693359375f), x);
    r = vfnmadd(n, vset1(-2.12194440e-4f), r);
    vec p = vset1(1.9875691500e-4f);
    p = vfmadd(p, r, vset1(1.3981999507e-3f));
    p = vfmadd(p, r, vset1(8.3334519073e-3f));
    p = vfmadd(p, r, vset1(4.1665795894e-2f));
    p = vfmadd(p, r, vset1(1.6666665459e-1f));
    p = vfmadd(p, r, vset1(5.0000001201e-1f));
    p = vfmadd(p, vmul(r, r), vadd(r, vset1(1.0f)));
    return vscale2(p, n);
}
static inline vec vsilu(vec x) { return vdiv(x, vadd(vset1(1.0f), vexp(vsub(vzero(), x)))); }
#endif
static inline float silu1(float x) { return x / (1.0f + expf(-x)); }

#endif
