/* Fused CPU kernels for the elementwise parts of the ViL block (float32, one thread per call).
 *
 * PyTorch runs each of these as several passes over E-wide tensors with reorderings between token and head
 * layouts; here each is one pass that keeps a token's row in registers. Built at first use by vil.kernels with
 * the machine's own compiler and -march=native; every function has a plain C path, and AVX-512 and AVX2 paths
 * where the compiler targets them. Layouts: token (B, S, E) row-major; head (B, NH, S, DH).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* ---- headwise 4x4 block-diagonal projections, written in head layout ------------------------------------------
 * out[4b+o] = bias[4b+o] + sum_d w[b][o][d] x[4b+d]. The weight comes pre-arranged as wt[d][4b+o] = w[b][o][d]
 * (4 x E), so that output channel c needs wt[d][c] * x[(c & ~3) + d]: a broadcast of element d inside each group
 * of four channels, which is one in-lane permute on x86. */
static void headwise_row(const float *x, const float *wt, const float *bias, float *out, int64_t from, int64_t to,
                         int64_t dim) {
    int64_t c = from;
#if defined(__AVX512F__)
    for (; c + 16 <= to; c += 16) {
        __m512 xv = _mm512_loadu_ps(x + c);
        __m512 acc = bias ? _mm512_loadu_ps(bias + c) : _mm512_setzero_ps();
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(wt + c), _mm512_permute_ps(xv, 0x00), acc);
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(wt + dim + c), _mm512_permute_ps(xv, 0x55), acc);
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(wt + 2 * dim + c), _mm512_permute_ps(xv, 0xAA), acc);
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(wt + 3 * dim + c), _mm512_permute_ps(xv, 0xFF), acc);
        _mm512_storeu_ps(out + c - from, acc);
    }
#elif defined(__AVX2__)
    for (; c + 8 <= to; c += 8) {
        __m256 xv = _mm256_loadu_ps(x + c);
        __m256 acc = bias ? _mm256_loadu_ps(bias + c) : _mm256_setzero_ps();
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(wt + c), _mm256_permute_ps(xv, 0x00), acc);
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(wt + dim + c), _mm256_permute_ps(xv, 0x55), acc);
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(wt + 2 * dim + c), _mm256_permute_ps(xv, 0xAA), acc);
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(wt + 3 * dim + c), _mm256_permute_ps(xv, 0xFF), acc);
        _mm256_storeu_ps(out + c - from, acc);
    }
#endif
    for (; c < to; ++c) {
        const float *xb = x + (c & ~(int64_t)3);
        float acc = bias ? bias[c] : 0.0f;
        for (int d = 0; d < 4; ++d) acc += wt[d * dim + c] * xb[d];
        out[c - from] = acc;
    }
}

/* q, k = headwise(qk_in), v = headwise(v_in), each (B, NH, S, DH); qk_in and v_in are (B, S, E) with E = NH * DH.
 * Biases may be NULL. */
void vil_headwise_qkv(const float *qk_in, const float *v_in, const float *wq, const float *wk, const float *wv,
                      const float *bq, const float *bk, const float *bv, float *q, float *k, float *v, int64_t batch,
                      int64_t seq_len, int64_t heads, int64_t head_dim) {
    const int64_t dim = heads * head_dim;
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t s = 0; s < seq_len; ++s) {
            const int64_t row = (b * seq_len + s) * dim;
            for (int64_t h = 0; h < heads; ++h) {
                const int64_t dst = ((b * heads + h) * seq_len + s) * head_dim;
                const int64_t from = h * head_dim, to = from + head_dim;
                headwise_row(qk_in + row, wq, bq, q + dst, from, to, dim);
                headwise_row(qk_in + row, wk, bk, k + dst, from, to, dim);
                headwise_row(v_in + row, wv, bv, v + dst, from, to, dim);
            }
        }
    }
}

/* ---- exp and SiLU ------------------------------------------------------------------------------------------------
 * exp(x) = 2^n e^r with n = round(x / ln 2), |r| <= ln(2)/2, e^r by a degree-6 polynomial: relative error ~1e-7,
 * as good as float32 allows. Inputs are clamped to [-87, 88] (the float32 range). */
#if defined(__AVX512F__)
static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}
static inline __m512 silu512(__m512 x) {
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), exp512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}
#elif defined(__AVX2__)
static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
static inline __m256 silu256(__m256 x) {
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), exp256(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}
#endif
static inline float silu1(float x) { return x / (1.0f + expf(-x)); }

/* ---- the branch output and the output gate -------------------------------------------------------------------
 * out = (LayerNorm_per_head(h) * (1 + w) + base + c * skip) * silu(z): h (B, NH, S, DH); c, z, out (B, S, E);
 * norm_weight, skip (E,); base (E,) or NULL. This is the mLSTM branch's output (per-head norm of the cell output
 * plus the learnable skip of the conv activation) times the layer's output gate, ready for proj_down. */
void vil_gated_branch_output(const float *h, const float *c, const float *z, const float *norm_weight,
                             const float *base, const float *skip, float *out, int64_t batch, int64_t seq_len,
                             int64_t heads, int64_t head_dim, float eps) {
    const int64_t dim = heads * head_dim;
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t s = 0; s < seq_len; ++s) {
            const int64_t row = (b * seq_len + s) * dim;
            for (int64_t hd = 0; hd < heads; ++hd) {
                const float *x = h + ((b * heads + hd) * seq_len + s) * head_dim;
                float sum = 0.0f, sum_sq = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (int64_t j = 0; j < head_dim; ++j) sum += x[j];
                const float mean = sum / (float)head_dim;
#pragma omp simd reduction(+ : sum_sq)
                for (int64_t j = 0; j < head_dim; ++j) sum_sq += (x[j] - mean) * (x[j] - mean);
                const float rstd = 1.0f / sqrtf(sum_sq / (float)head_dim + eps);
                const int64_t off = row + hd * head_dim, ch = hd * head_dim;
                int64_t j = 0;
#if defined(__AVX512F__)
                for (; j + 16 <= head_dim; j += 16) {
                    __m512 y = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + j), _mm512_set1_ps(mean)),
                                             _mm512_set1_ps(rstd));
                    __m512 scale = _mm512_add_ps(_mm512_set1_ps(1.0f), _mm512_loadu_ps(norm_weight + ch + j));
                    __m512 acc = base ? _mm512_loadu_ps(base + ch + j) : _mm512_setzero_ps();
                    acc = _mm512_fmadd_ps(_mm512_loadu_ps(c + off + j), _mm512_loadu_ps(skip + ch + j), acc);
                    acc = _mm512_fmadd_ps(y, scale, acc);
                    _mm512_storeu_ps(out + off + j, _mm512_mul_ps(acc, silu512(_mm512_loadu_ps(z + off + j))));
                }
#elif defined(__AVX2__)
                for (; j + 8 <= head_dim; j += 8) {
                    __m256 y = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), _mm256_set1_ps(mean)),
                                             _mm256_set1_ps(rstd));
                    __m256 scale = _mm256_add_ps(_mm256_set1_ps(1.0f), _mm256_loadu_ps(norm_weight + ch + j));
                    __m256 acc = base ? _mm256_loadu_ps(base + ch + j) : _mm256_setzero_ps();
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(c + off + j), _mm256_loadu_ps(skip + ch + j), acc);
                    acc = _mm256_fmadd_ps(y, scale, acc);
                    _mm256_storeu_ps(out + off + j, _mm256_mul_ps(acc, silu256(_mm256_loadu_ps(z + off + j))));
                }
#endif
                for (; j < head_dim; ++j) {
                    const float y = (x[j] - mean) * rstd * (1.0f + norm_weight[ch + j]);
                    const float acc = (base ? base[ch + j] : 0.0f) + c[off + j] * skip[ch + j] + y;
                    out[off + j] = acc * silu1(z[off + j]);
                }
            }
        }
    }
}

/* ---- depthwise k x k convolution with 'same' zero padding, then SiLU ------------------------------------------
 * x, out (B, H, W, C) (a token sequence read as an image, channels last); weight pre-arranged as (k*k, C). */
void vil_conv2d_silu(const float *x, const float *weight, const float *bias, float *out, int64_t batch,
                     int64_t height, int64_t width, int64_t channels, int64_t kernel) {
    const int64_t pad = kernel / 2;
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t i = 0; i < height; ++i) {
            for (int64_t j = 0; j < width; ++j) {
                float *o = out + ((b * height + i) * width + j) * channels;
                int64_t ch = 0;
#if defined(__AVX512F__)
                for (; ch + 16 <= channels; ch += 16) {
                    __m512 acc = bias ? _mm512_loadu_ps(bias + ch) : _mm512_setzero_ps();
                    for (int64_t di = 0; di < kernel; ++di) {
                        const int64_t ii = i + di - pad;
                        if (ii < 0 || ii >= height) continue;
                        for (int64_t dj = 0; dj < kernel; ++dj) {
                            const int64_t jj = j + dj - pad;
                            if (jj < 0 || jj >= width) continue;
                            const float *xp = x + ((b * height + ii) * width + jj) * channels + ch;
                            acc = _mm512_fmadd_ps(_mm512_loadu_ps(weight + (di * kernel + dj) * channels + ch),
                                                  _mm512_loadu_ps(xp), acc);
                        }
                    }
                    _mm512_storeu_ps(o + ch, silu512(acc));
                }
#elif defined(__AVX2__)
                for (; ch + 8 <= channels; ch += 8) {
                    __m256 acc = bias ? _mm256_loadu_ps(bias + ch) : _mm256_setzero_ps();
                    for (int64_t di = 0; di < kernel; ++di) {
                        const int64_t ii = i + di - pad;
                        if (ii < 0 || ii >= height) continue;
                        for (int64_t dj = 0; dj < kernel; ++dj) {
                            const int64_t jj = j + dj - pad;
                            if (jj < 0 || jj >= width) continue;
                            const float *xp = x + ((b * height + ii) * width + jj) * channels + ch;
                            acc = _mm256_fmadd_ps(_mm256_loadu_ps(weight + (di * kernel + dj) * channels + ch),
                                                  _mm256_loadu_ps(xp), acc);
                        }
                    }
                    _mm256_storeu_ps(o + ch, silu256(acc));
                }
#endif
                for (; ch < channels; ++ch) {
                    float acc = bias ? bias[ch] : 0.0f;
                    for (int64_t di = 0; di < kernel; ++di) {
                        const int64_t ii = i + di - pad;
                        if (ii < 0 || ii >= height) continue;
                        for (int64_t dj = 0; dj < kernel; ++dj) {
                            const int64_t jj = j + dj - pad;
                            if (jj < 0 || jj >= width) continue;
                            acc += weight[(di * kernel + dj) * channels + ch] *
                                   x[((b * height + ii) * width + jj) * channels + ch];
                        }
                    }
                    o[ch] = silu1(acc);
                }
            }
        }
    }
}

/* ---- the mLSTM cell's stabilised decay, applied to the q.k scores ---------------------------------------------
 * For each of `mats` matrices of `rows` x `cols` scores (contiguous): scores[t][s] *= exp(clamp(a[s] - r[t],
 * MIN_LOG, 0)) for s <= t + offset, 0 for s > t + offset; row_sum[t] = the sum of the new row. a, r and row_sum
 * are rows of their own strides (a_stride, r_stride, sum_stride per matrix). One pass instead of building the
 * decay matrix (subtract, clamp, exp, mask) and multiplying and summing it (vil.ops.common.stabilised_decay). */
void vil_decay_scores(float *scores, const float *a, int64_t a_stride, const float *r, int64_t r_stride,
                      float *row_sum, int64_t sum_stride, int64_t mats, int64_t rows, int64_t cols, int64_t offset,
                      float min_log) {
    for (int64_t m = 0; m < mats; ++m) {
        const float *am = a + m * a_stride;
        for (int64_t t = 0; t < rows; ++t) {
            float *row = scores + (m * rows + t) * cols;
            const float rt = r[m * r_stride + t];
            int64_t limit = t + offset + 1;
            if (limit > cols) limit = cols;
            if (limit < 0) limit = 0;
            float total = 0.0f;
            int64_t s = 0;
#if defined(__AVX512F__)
            __m512 acc = _mm512_setzero_ps();
            for (; s + 16 <= limit; s += 16) {
                __m512 log_decay = _mm512_sub_ps(_mm512_loadu_ps(am + s), _mm512_set1_ps(rt));
                log_decay = _mm512_min_ps(_mm512_max_ps(log_decay, _mm512_set1_ps(min_log)), _mm512_setzero_ps());
                __m512 value = _mm512_mul_ps(_mm512_loadu_ps(row + s), exp512(log_decay));
                _mm512_storeu_ps(row + s, value);
                acc = _mm512_add_ps(acc, value);
            }
            if (s < limit) { /* the diagonal's ragged end, masked */
                const __mmask16 mask = (__mmask16)((1u << (limit - s)) - 1u);
                __m512 log_decay = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, am + s), _mm512_set1_ps(rt));
                log_decay = _mm512_min_ps(_mm512_max_ps(log_decay, _mm512_set1_ps(min_log)), _mm512_setzero_ps());
                __m512 value = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, row + s), exp512(log_decay));
                _mm512_mask_storeu_ps(row + s, mask, value);
                acc = _mm512_add_ps(acc, value); /* masked-off lanes hold 0 * exp(...) = 0 */
                s = limit;
            }
            total = _mm512_reduce_add_ps(acc);
#elif defined(__AVX2__)
            __m256 acc = _mm256_setzero_ps();
            for (; s + 8 <= limit; s += 8) {
                __m256 log_decay = _mm256_sub_ps(_mm256_loadu_ps(am + s), _mm256_set1_ps(rt));
                log_decay = _mm256_min_ps(_mm256_max_ps(log_decay, _mm256_set1_ps(min_log)), _mm256_setzero_ps());
                __m256 value = _mm256_mul_ps(_mm256_loadu_ps(row + s), exp256(log_decay));
                _mm256_storeu_ps(row + s, value);
                acc = _mm256_add_ps(acc, value);
            }
            float lanes[8];
            _mm256_storeu_ps(lanes, acc);
            for (int i = 0; i < 8; ++i) total += lanes[i];
#endif
            for (; s < limit; ++s) {
                float log_decay = am[s] - rt;
                log_decay = log_decay < min_log ? min_log : (log_decay > 0.0f ? 0.0f : log_decay);
                row[s] *= expf(log_decay);
                total += row[s];
            }
            if (limit < cols) memset(row + limit, 0, (size_t)(cols - limit) * sizeof(float));
            row_sum[m * sum_stride + t] = total;
        }
    }
}

/* ---- the backward pass of vil_decay_scores, fused with what the cell's backward does next -------------------
 * In place, for each matrix: qk (raw q.k scores) becomes P = qk * D (D the stabilised decay as above) and d_scores
 * (raw dL/dP from the numerator) becomes dL/d(qk) = (d_scores + d_den[t]) * D; with g = (d_scores + d_den[t]) * P,
 * the gradient of the log decay, row_sum[t] = sum_s g and col_sum[s] += sum_t g. */
void vil_decay_scores_backward(float *qk, float *d_scores, const float *d_den, int64_t den_stride, const float *a,
                               int64_t a_stride, const float *r, int64_t r_stride, float *row_sum,
                               int64_t sum_stride, float *col_sum, int64_t col_stride, int64_t mats, int64_t rows,
                               int64_t cols, int64_t offset, float min_log) {
    for (int64_t m = 0; m < mats; ++m) {
        const float *am = a + m * a_stride;
        float *cm = col_sum + m * col_stride;
        for (int64_t t = 0; t < rows; ++t) {
            float *p = qk + (m * rows + t) * cols;
            float *ds = d_scores + (m * rows + t) * cols;
            const float rt = r[m * r_stride + t], dd = d_den[m * den_stride + t];
            int64_t limit = t + offset + 1;
            if (limit > cols) limit = cols;
            if (limit < 0) limit = 0;
            float total = 0.0f;
            int64_t s = 0;
#if defined(__AVX512F__)
            __m512 acc = _mm512_setzero_ps();
            for (; s < limit; s += 16) {
                const __mmask16 mask = limit - s >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (limit - s)) - 1u);
                __m512 log_decay = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, am + s), _mm512_set1_ps(rt));
                log_decay = _mm512_min_ps(_mm512_max_ps(log_decay, _mm512_set1_ps(min_log)), _mm512_setzero_ps());
                const __m512 decay = exp512(log_decay);
                const __m512 pv = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, p + s), decay);
                const __m512 dsv = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, ds + s), _mm512_set1_ps(dd));
                const __m512 g = _mm512_maskz_mul_ps(mask, dsv, pv);
                _mm512_mask_storeu_ps(p + s, mask, pv);
                _mm512_mask_storeu_ps(ds + s, mask, _mm512_mul_ps(dsv, decay));
                _mm512_mask_storeu_ps(cm + s, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, cm + s), g));
                acc = _mm512_add_ps(acc, g);
            }
            total = _mm512_reduce_add_ps(acc);
#endif
            for (; s < limit; ++s) {
                float log_decay = am[s] - rt;
                log_decay = log_decay < min_log ? min_log : (log_decay > 0.0f ? 0.0f : log_decay);
                const float decay = expf(log_decay);
                const float pv = p[s] * decay, dsv = ds[s] + dd, g = dsv * pv;
                p[s] = pv;
                ds[s] = dsv * decay;
                cm[s] += g;
                total += g;
            }
            if (limit < cols) {
                memset(p + limit, 0, (size_t)(cols - limit) * sizeof(float));
                memset(ds + limit, 0, (size_t)(cols - limit) * sizeof(float));
            }
            row_sum[m * sum_stride + t] = total;
        }
    }
}

/* ---- the backward pass of one headwise projection, y = headwise(x) in head layout -----------------------------
 * x (B, S, E) token layout; dy (B, NH, S, DH) rows of DH contiguous floats with strides dy_batch, dy_head
 * (elements); w arranged as wt_in[o][4b+d] = w[b][o][d] (4 x E), the transpose of the forward arrangement.
 * dx (B, S, E) is set (accumulate = 0) or increased; dwt[d][4b+o] += dL/dw[b][o][d] (4 x E); db (E) += dL/dbias. */
void vil_headwise_backward(const float *x, const float *dy, int64_t dy_batch, int64_t dy_head, const float *wt_in,
                           float *dx, float *dwt, float *db, int64_t batch, int64_t seq_len, int64_t heads,
                           int64_t head_dim, int64_t accumulate) {
    const int64_t dim = heads * head_dim;
    float row[4096];
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t s = 0; s < seq_len; ++s) {
            const float *xr = x + (b * seq_len + s) * dim;
            float *dxr = dx + (b * seq_len + s) * dim;
            for (int64_t h = 0; h < heads; ++h) {
                const float *g = dy + b * dy_batch + h * dy_head + s * head_dim;  /* dy for channels of head h */
                const int64_t from = h * head_dim;
                /* gather this head's gradient into token order, then dx = headwise^T(dy) like the forward */
                memcpy(row + from, g, (size_t)head_dim * sizeof(float));
                int64_t c = from;
#if defined(__AVX512F__)
                for (; c + 16 <= from + head_dim; c += 16) {
                    const __m512 gv = _mm512_loadu_ps(g + c - from), xv = _mm512_loadu_ps(xr + c);
                    _mm512_storeu_ps(db + c, _mm512_add_ps(_mm512_loadu_ps(db + c), gv));
                    _mm512_storeu_ps(dwt + c, _mm512_fmadd_ps(gv, _mm512_permute_ps(xv, 0x00), _mm512_loadu_ps(dwt + c)));
                    _mm512_storeu_ps(dwt + dim + c,
                                     _mm512_fmadd_ps(gv, _mm512_permute_ps(xv, 0x55), _mm512_loadu_ps(dwt + dim + c)));
                    _mm512_storeu_ps(dwt + 2 * dim + c, _mm512_fmadd_ps(gv, _mm512_permute_ps(xv, 0xAA),
                                                                        _mm512_loadu_ps(dwt + 2 * dim + c)));
                    _mm512_storeu_ps(dwt + 3 * dim + c, _mm512_fmadd_ps(gv, _mm512_permute_ps(xv, 0xFF),
                                                                        _mm512_loadu_ps(dwt + 3 * dim + c)));
                }
#endif
                for (; c < from + head_dim; ++c) {
                    const float gc = g[c - from];
                    const float *xb = xr + (c & ~(int64_t)3);
                    db[c] += gc;
                    for (int d = 0; d < 4; ++d) dwt[d * dim + c] += gc * xb[d];
                }
            }
            if (accumulate) {
                float out[4096];
                headwise_row(row, wt_in, NULL, out, 0, dim, dim);
                for (int64_t c = 0; c < dim; ++c) dxr[c] += out[c];
            } else {
                headwise_row(row, wt_in, NULL, dxr, 0, dim, dim);
            }
        }
    }
}
