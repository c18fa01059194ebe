/* Fused CPU kernels for the elementwise parts of the ViL block (float32).
 *
 * PyTorch runs each of these as several passes over E-wide tensors with reorderings between token and head
 * layouts; here each is one pass that keeps a token's row in registers. Built at first use by vil.kernels with
 * the machine's own compiler and -march=native; every function has a plain C path, and AVX-512 and AVX2 paths
 * where the compiler targets them. Layouts: token (B, S, E) row-major; head (B, NH, S, DH).
 *
 * Threads: every kernel takes the number of threads to use (PyTorch's, passed by the caller) and splits its tokens
 * among them with OpenMP (the same runtime as PyTorch's own thread pool, see vil.kernels.build). A forward kernel
 * writes each token's outputs from one thread; a backward kernel's sums over tokens (weight and bias gradients)
 * are formed per part of `part_rows` tokens, a split fixed by the caller and independent of the thread count,
 * into `partial`, and the parts are then added in order (sum_parts): the results are the same for any number of
 * threads, bit for bit.
 */
#include "headwise.h"
#include "sums.h"
#include "vector.h"

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* out[j] = bias[j] + sum_e wa[j][e] a[e] + wb[j][e] b[e] over dim channels, for the gates j < count (wa, wb:
 * count x dim), count <= GATE_BLOCK. One accumulator per gate, all updated in one pass over the channels: independent
 * chains of FMAs whose latency is hidden (a gate at a time would wait on every FMA), and a and b read once. */
#define GATE_BLOCK 8
static inline __attribute__((always_inline)) void gate_dots_of(const int count, const float *wa, const float *a,
                                                               const float *wb, const float *b, const float *bias,
                                                               float *out, int64_t dim) {
    float totals[GATE_BLOCK] = {0};
    int64_t e = 0;
#ifdef VEC
    vec acc[GATE_BLOCK];
    for (int j = 0; j < count; ++j) acc[j] = vzero();
    for (; e + VW <= dim; e += VW) {
        const vec av = vload(a + e), bv = vload(b + e);
        for (int j = 0; j < count; ++j) acc[j] = vfmadd(vload(wb + j * dim + e), bv, vfmadd(vload(wa + j * dim + e), av, acc[j]));
    }
    for (int j = 0; j < count; ++j) totals[j] = vsum(acc[j]);
#endif
    for (int j = 0; j < count; ++j) {
        for (int64_t f = e; f < dim; ++f) totals[j] += wa[j * dim + f] * a[f] + wb[j * dim + f] * b[f];
        out[j] = bias[j] + totals[j];
    }
}

/* gate_dots_of for any count: blocks of GATE_BLOCK gates, the full ones with the count as a constant */
static void gate_dots(const float *wa, const float *a, const float *wb, const float *b, const float *bias, float *out,
                      int64_t count, int64_t dim) {
    int64_t j = 0;
    for (; j + GATE_BLOCK <= count; j += GATE_BLOCK)
        gate_dots_of(GATE_BLOCK, wa + j * dim, a, wb + j * dim, b, bias + j, out + j, dim);
    for (; j < count; ++j) gate_dots_of(1, wa + j * dim, a, wb + j * dim, b, bias + j, out + j, dim);
}

/* q, k = headwise(qk_in), v = headwise(v_in), each (B, NH, S, DH); qk_in and v_in are (B, S, E) with E = NH * DH.
 * Biases may be NULL. If gates is not NULL, also the gate pre-activations gates (B, G, S) = gate_bias + gate_wqk
 * qk_in + gate_wv v_in, with gate_wqk and gate_wv (G, E): the input and forget gates, read while the rows are hot.
 * With q NULL only the gates are computed (for vil_mlstm_parallel_headwise, which projects q, k and v itself).
 * Tokens go in blocks of HEADWISE_TOKENS, the projections of a block and then its gates: a loop doing both per
 * token was ~20 % slower (224 px, batch 8, one thread), the gates' accumulators and the projections' vectors
 * competing for registers. */
#define HEADWISE_TOKENS 32
void vil_headwise_qkv(const float *qk_in, const float *v_in, const float *wq, const float *wk, const float *wv,
                      const float *bq, const float *bk, const float *bv, float *q, float *k, float *v,
                      const float *gate_wqk, const float *gate_wv, const float *gate_bias, float *gates,
                      int64_t num_gates, int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim,
                      int64_t threads) {
    const int64_t dim = heads * head_dim, tokens = batch * seq_len;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t first = 0; first < tokens; first += HEADWISE_TOKENS) {
        const int64_t last = min64(first + HEADWISE_TOKENS, tokens);
        for (int64_t t = first; q && t < last; ++t) {
            const int64_t b = t / seq_len, s = t % seq_len, row = t * dim;
            for (int64_t h = 0; h < heads; ++h) {
                const int64_t dst = ((b * heads + h) * seq_len + s) * head_dim;
                const int64_t from = h * head_dim, to = from + head_dim;
                headwise_row_pair(qk_in + row, wq, bq, wk, bk, q + dst, k + dst, from, to, dim);
                headwise_row(v_in + row, wv, bv, v + dst, from, to, dim);
            }
        }
        for (int64_t t = first; gates && t < last; ++t) {
            const int64_t b = t / seq_len, s = t % seq_len, row = t * dim;
            float row_gates[ROW_BUFFER];
            gate_dots(gate_wqk, qk_in + row, gate_wv, v_in + row, gate_bias, row_gates, num_gates, dim);
            for (int64_t j = 0; j < num_gates; ++j) gates[(b * num_gates + j) * seq_len + s] = row_gates[j];
        }
    }
}

/* mean and 1 / sqrt(variance + eps) of one head's n values (LayerNorm statistics, two passes) */
static void head_stats(const float *x, int64_t n, float eps, float *mean, float *rstd) {
    float sum = 0.0f, sum_sq = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) sum += x[j];
    const float m = sum / (float)n;
#pragma omp simd reduction(+ : sum_sq)
    for (int64_t j = 0; j < n; ++j) sum_sq += (x[j] - m) * (x[j] - m);
    *mean = m;
    *rstd = 1.0f / sqrtf(sum_sq / (float)n + eps);
}

/* ---- the branch output and the output gate -------------------------------------------------------------------
 * out = (LayerNorm_per_head(h) * (1 + w) + base + c * skip) * silu(z): h (B, NH, S, DH); c, z, out (B, S, E);
 * norm_weight, skip (E,); base (E,) or NULL. This is the mLSTM branch's output (per-head norm of the cell output
 * plus the learnable skip of the conv activation) times the layer's output gate, ready for proj_down. */
void vil_gated_branch_output(const float *h, const float *c, const float *z, const float *norm_weight,
                             const float *base, const float *skip, float *out, int64_t batch, int64_t seq_len,
                             int64_t heads, int64_t head_dim, float eps, int64_t threads) {
    const int64_t dim = heads * head_dim;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < batch * seq_len; ++t) {
        const int64_t b = t / seq_len, s = t % seq_len, row = t * dim;
        for (int64_t hd = 0; hd < heads; ++hd) {
            const float *x = h + ((b * heads + hd) * seq_len + s) * head_dim;
            float mean, rstd;
            head_stats(x, head_dim, eps, &mean, &rstd);
            const int64_t off = row + hd * head_dim, ch = hd * head_dim;
            int64_t j = 0;
#ifdef VEC
            for (; j + VW <= head_dim; j += VW) {
                const vec y = vmul(vsub(vload(x + j), vset1(mean)), vset1(rstd));
                const vec scale = vadd(vset1(1.0f), vload(norm_weight + ch + j));
                vec acc = base ? vload(base + ch + j) : vzero();
                acc = vfmadd(vload(c + off + j), vload(skip + ch + j), acc);
                acc = vfmadd(y, scale, acc);
                vstore(out + off + j, vmul(acc, vsilu(vload(z + off + j))));
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

/* ---- depthwise k x k convolution with 'same' zero padding, then SiLU ------------------------------------------
 * x, out (B, H, W, C) (a token sequence read as an image, channels last); weight pre-arranged as (k*k, C). */

/* the row of x that tap (di, dj) of pixel (b, i, j) reads, or NULL off the image ('same' zero padding) */
static inline const float *tap_row(const float *x, int64_t b, int64_t i, int64_t j, int64_t di, int64_t dj,
                                   int64_t height, int64_t width, int64_t channels, int64_t kernel) {
    const int64_t ii = i + di - kernel / 2, jj = j + dj - kernel / 2;
    if (ii < 0 || ii >= height || jj < 0 || jj >= width) return NULL;
    return x + ((b * height + ii) * width + jj) * channels;
}

#define CONV_VECS 4 /* vectors of channels whose sums stay in registers across the taps */

/* pre[ch] = bias[ch] + sum over the k x k taps inside the image, in tap order, of weight[tap][ch] x[pixel + tap][ch]
 * for pixel (b, i, j), then SiLU with silu set; with flipped set the kernel turned by 180 degrees (weight[n] applied
 * to tap k*k - 1 - n), the transposed conv of the backward pass, summed in the same weight order as before it used
 * this routine (the same bits). The taps' rows are found first; then CONV_VECS vectors of channels at a time are
 * summed in registers across them and stored once, SiLU applied in registers. Against the two versions before (a
 * pass over the row per tap in the forward pass; in the backward pass a register block whose width was a variable,
 * so that its sums went through memory): forward 0.67 against 0.78 ms, backward 1.91 against 2.15 ms (ViL-T 224 x
 * 8, AVX2, one thread, minimum of 60 and 40 calls alternating the builds), the same values bit for bit. */
static void conv_pixel(const float *x, const float *weight, const float *bias, float *pre, int64_t b, int64_t i,
                       int64_t j, int64_t height, int64_t width, int64_t channels, int64_t kernel, int silu,
                       int flipped) {
    const float *rows[kernel * kernel], *weights[kernel * kernel];
    int64_t taps = 0;
    for (int64_t n = 0; n < kernel * kernel; ++n) { /* weight n reads tap n, or the tap opposite it when flipped */
        const int64_t tap = flipped ? kernel * kernel - 1 - n : n;
        rows[taps] = tap_row(x, b, i, j, tap / kernel, tap % kernel, height, width, channels, kernel);
        weights[taps] = weight + n * channels;
        taps += rows[taps] != NULL;
    }
    int64_t ch = 0;
#ifdef VEC
    for (; ch + CONV_VECS * VW <= channels; ch += CONV_VECS * VW) {
        vec acc[CONV_VECS];
        for (int v = 0; v < CONV_VECS; ++v) acc[v] = bias ? vload(bias + ch + v * VW) : vzero();
        for (int64_t tap = 0; tap < taps; ++tap)
            for (int v = 0; v < CONV_VECS; ++v)
                acc[v] = vfmadd(vload(weights[tap] + ch + v * VW), vload(rows[tap] + ch + v * VW), acc[v]);
        for (int v = 0; v < CONV_VECS; ++v) vstore(pre + ch + v * VW, silu ? vsilu(acc[v]) : acc[v]);
    }
    for (; ch + VW <= channels; ch += VW) {
        vec acc = bias ? vload(bias + ch) : vzero();
        for (int64_t tap = 0; tap < taps; ++tap) acc = vfmadd(vload(weights[tap] + ch), vload(rows[tap] + ch), acc);
        vstore(pre + ch, silu ? vsilu(acc) : acc);
    }
#endif
    for (; ch < channels; ++ch) {
        float acc = bias ? bias[ch] : 0.0f;
        for (int64_t tap = 0; tap < taps; ++tap) acc += weights[tap][ch] * rows[tap][ch];
        pre[ch] = silu ? silu1(acc) : acc;
    }
}

void vil_conv2d_silu(const float *x, const float *weight, const float *bias, float *out, int64_t batch,
                     int64_t height, int64_t width, int64_t channels, int64_t kernel, int64_t threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < batch * height * width; ++t) {
        const int64_t b = t / (height * width), i = t / width % height, j = t % width;
        conv_pixel(x, weight, bias, out + t * channels, b, i, j, height, width, channels, kernel, 1, 0);
    }
}

/* ---- the backward pass of vil_headwise_qkv, gates included --------------------------------------------------
 * For dq, dk, dv (B, NH, S, DH) contiguous and, if d_gates is not NULL, the gates' gradient d_gates (B, G, S):
 * writes d_qk_in = hw_q^T(dq) + hw_k^T(dk) + d_gates^T gate_wqk and d_v_in = hw_v^T(dv) + d_gates^T gate_wv
 * (B, S, E), with hw^T the transposed headwise projection (wt_q, wt_k, wt_v arranged as wt_in[o][4b+d] = w[b][o][d],
 * 4 x E, the transpose of the forward arrangement). Adds the sums over tokens into `sums`: for q, k and v in turn
 * dwt (4 x E, dwt[d][4b+o] = dL/dw[b][o][d]) and db (E), then with the gates dL/d gate_wqk, dL/d gate_wv (G x E)
 * and dL/d gate_bias (G). They are formed per part of part_rows tokens in partial (ceil(B S / part_rows) x their
 * size, scratch). One pass over the tokens, part by part: within a part q, k and v in turn (only one projection's
 * sums hot at a time, the part's rows staying in cache), the gates' share after q's and v's. With dq NULL (after
 * vil_mlstm_parallel_backward_headwise, cell.c, which made the projections' part) only the gates' share is added to
 * d_qk_in and d_v_in, and sums holds only the gates' sums. */

/* the weight and bias sums of dy (head layout) against x over the tokens [first, last) of a part, head by head */
static void headwise_weight_grads(const float *dy, const float *x, float *dwt, float *db, int64_t first, int64_t last,
                                  int64_t seq_len, int64_t heads, int64_t head_dim) {
    const int64_t dim = heads * head_dim;
    int64_t rows[last - first]; /* where each token's row of head 0 starts in dy (no division in the loops below) */
    for (int64_t t = first; t < last; ++t) rows[t - first] = (t / seq_len * heads * seq_len + t % seq_len) * head_dim;
    for (int64_t h = 0; h < heads; ++h) {
        const int64_t from = h * head_dim;
        headwise_weight_sums(dy + h * seq_len * head_dim, rows, 0, x + first * dim + from, dim, last - first,
                             head_dim, dwt + from, dim, db + from);
    }
}

/* The gates' share of one input's backward pass over the n tokens of a part (dg: n x count gate gradients,
 * token-major; w: count x dim, the gates' weights for this input; x: the input's n rows): dx[t][c] += sum_j dg[t][j]
 * w[j][c] (the gates in order) and dw[j][c] += sum_t dg[t][j] x[t][c] (the tokens in order). One walk down the part's
 * rows per tile of GATE_TILE gates x GATE_VECS vectors of channels does both: the tile's weight sums stay in
 * registers, each broadcast of dg feeds both products, and the tile's lines GATE_PREFETCH tokens ahead are asked for
 * (a token's slice lies E floats after the one before, a step the hardware prefetchers mostly miss). Against the walk
 * per product with one vector of channels that it replaced (and 4-token tiles of dx whose row count was a variable,
 * so that their sums went through the stack), the gates' share after the cell's backward pass (ViL-T 224 x 8, rows
 * not in cache, medians of three runs of 80 calls alternating the builds) took 1.66 against 2.12 ms at one thread and
 * 0.90 against 1.20 ms at two (AVX-512; built for AVX2, 1.49 against 2.04 ms at one thread), the same values bit for
 * bit. Its rows come from memory: that, not the arithmetic, is what is left. */
#define GATE_TILE 8
#if VW == 16 /* 24 or 16 sums: what the 32 or 16 vector registers hold beside the rest */
#define GATE_VECS 3
#else
#define GATE_VECS 2
#endif
#define GATE_PREFETCH 8
#ifdef VEC
static inline __attribute__((always_inline)) void gate_share_tile(const int count, const int vecs, const float *dg,
                                                                  int64_t stride, const float *w, const float *x,
                                                                  float *dx, float *dw, int64_t n, int64_t dim) {
    vec sums[GATE_TILE][GATE_VECS];
    for (int j = 0; j < count; ++j)
        for (int v = 0; v < vecs; ++v) sums[j][v] = vload(dw + j * dim + v * VW);
    for (int64_t t = 0; t < n; ++t) {
        if (t + GATE_PREFETCH < n) {
            for (int v = 0; v < vecs; ++v) {
                __builtin_prefetch(x + (t + GATE_PREFETCH) * dim + v * VW);
                __builtin_prefetch(dx + (t + GATE_PREFETCH) * dim + v * VW);
            }
        }
        vec xv[GATE_VECS], acc[GATE_VECS];
        for (int v = 0; v < vecs; ++v) xv[v] = vload(x + t * dim + v * VW), acc[v] = vload(dx + t * dim + v * VW);
        for (int j = 0; j < count; ++j) {
            const vec g = vset1(dg[t * stride + j]);
            for (int v = 0; v < vecs; ++v) {
                acc[v] = vfmadd(g, vload(w + j * dim + v * VW), acc[v]);
                sums[j][v] = vfmadd(g, xv[v], sums[j][v]);
            }
        }
        for (int v = 0; v < vecs; ++v) vstore(dx + t * dim + v * VW, acc[v]);
    }
    for (int j = 0; j < count; ++j)
        for (int v = 0; v < vecs; ++v) vstore(dw + j * dim + v * VW, sums[j][v]);
}

/* gate_share_tile over all the gates for one tile of vecs vectors of channels: tiles of GATE_TILE gates, then one at a
 * time, each with its sizes as constants */
static inline __attribute__((always_inline)) void gate_share_columns(const int vecs, const float *dg, int64_t count,
                                                                     const float *w, const float *x, float *dx,
                                                                     float *dw, int64_t n, int64_t dim) {
    int64_t j = 0;
    for (; j + GATE_TILE <= count; j += GATE_TILE)
        gate_share_tile(GATE_TILE, vecs, dg + j, count, w + j * dim, x, dx, dw + j * dim, n, dim);
    for (; j < count; ++j) gate_share_tile(1, vecs, dg + j, count, w + j * dim, x, dx, dw + j * dim, n, dim);
}
#endif

static void gate_share(const float *dg, int64_t count, const float *w, const float *x, float *dx, float *dw, int64_t n,
                       int64_t dim) {
    int64_t c = 0;
#ifdef VEC
    for (; c + GATE_VECS * VW <= dim; c += GATE_VECS * VW)
        gate_share_columns(GATE_VECS, dg, count, w + c, x + c, dx + c, dw + c, n, dim);
    for (; c + VW <= dim; c += VW) gate_share_columns(1, dg, count, w + c, x + c, dx + c, dw + c, n, dim);
#endif
    for (; c < dim; ++c)
        for (int64_t t = 0; t < n; ++t) {
            float acc = dx[t * dim + c];
            for (int64_t j = 0; j < count; ++j) {
                acc += dg[t * count + j] * w[j * dim + c];
                dw[j * dim + c] += dg[t * count + j] * x[t * dim + c];
            }
            dx[t * dim + c] = acc;
        }
}

/* One projection's share of the backward pass over the tokens [first, last) of a part: dx = (or +=, with
 * accumulate) hw^T(dy) + dg . gate_w (the gates' share, their weight sums added into gate_dw; none for gates = 0),
 * and its weight and bias sums added into dwt, db. dg holds the part's gate gradients, token-major. */
static void headwise_part_backward(const float *x, const float *dy, const float *wt_in, const float *dg,
                                   const float *gate_w, int64_t gates, float *gate_dw, float *dx, int accumulate,
                                   float *dwt, float *db, int64_t first, int64_t last, int64_t seq_len, int64_t heads,
                                   int64_t head_dim) {
    const int64_t dim = heads * head_dim;
    float out[ROW_BUFFER];
    for (int64_t t = first; t < last; ++t) {
        const int64_t b = t / seq_len, s = t % seq_len;
        for (int64_t h = 0; h < heads; ++h) { /* read in head layout: a 4 x 4 block never straddles two heads */
            const int64_t from = h * head_dim;
            headwise_row(dy + ((b * heads + h) * seq_len + s) * head_dim - from, wt_in, NULL, out + from, from,
                         from + head_dim, dim);
        }
        float *dxt = dx + t * dim;
        if (accumulate) {
#pragma omp simd
            for (int64_t c = 0; c < dim; ++c) dxt[c] = out[c] + dxt[c];
        } else {
            memcpy(dxt, out, (size_t)dim * sizeof(float));
        }
    }
    if (gates) gate_share(dg, gates, gate_w, x + first * dim, dx + first * dim, gate_dw, last - first, dim);
    headwise_weight_grads(dy, x, dwt, db, first, last, seq_len, heads, head_dim);
}

void vil_headwise_qkv_backward(const float *qk_in, const float *v_in, const float *dq, const float *dk,
                               const float *dv, const float *wt_q, const float *wt_k, const float *wt_v,
                               const float *d_gates, const float *gate_wqk, const float *gate_wv, float *d_qk_in,
                               float *d_v_in, float *sums, float *partial, int64_t part_rows, int64_t num_gates,
                               int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim, int64_t threads) {
    const int64_t dim = heads * head_dim, tokens = batch * seq_len, parts = (tokens + part_rows - 1) / part_rows;
    const int64_t projected = dq ? 15 * dim : 0, gates = d_gates ? num_gates : 0;
    const int64_t size = projected + gates * (2 * dim + 1);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t part = 0; part < parts; ++part) {
        float dg[part_rows * (gates ? gates : 1)]; /* the part's gate gradients, token-major */
        float *sum = partial + part * size, *gate_sum = sum + projected;
        memset(sum, 0, (size_t)size * sizeof(float));
        const int64_t first = part * part_rows, last = min64(tokens, first + part_rows);
        for (int64_t t = first; t < last; ++t)
            for (int64_t j = 0; j < gates; ++j) {
                const float g = d_gates[(t / seq_len * gates + j) * seq_len + t % seq_len];
                dg[(t - first) * gates + j] = g;
                gate_sum[2 * gates * dim + j] += g;
            }
        if (!dq) { /* the gates' share only, added to d_qk_in and d_v_in */
            gate_share(dg, gates, gate_wqk, qk_in + first * dim, d_qk_in + first * dim, gate_sum, last - first, dim);
            gate_share(dg, gates, gate_wv, v_in + first * dim, d_v_in + first * dim, gate_sum + gates * dim,
                       last - first, dim);
        } else {
            /* q, k and v in turn, so that only one projection's sums are hot; the part's rows stay in cache between */
            headwise_part_backward(qk_in, dq, wt_q, dg, gate_wqk, gates, gate_sum, d_qk_in, 0, sum, sum + 4 * dim,
                                   first, last, seq_len, heads, head_dim);
            headwise_part_backward(qk_in, dk, wt_k, dg, NULL, 0, NULL, d_qk_in, 1, sum + 5 * dim, sum + 9 * dim, first,
                                   last, seq_len, heads, head_dim);
            headwise_part_backward(v_in, dv, wt_v, dg, gate_wv, gates, gate_sum + gates * dim, d_v_in, 0,
                                   sum + 10 * dim, sum + 14 * dim, first, last, seq_len, heads, head_dim);
        }
    }
    sum_parts(partial, parts, size, sums, size, (int)threads);
}

/* ---- the backward pass of vil_gated_branch_output --------------------------------------------------------------
 * For g = dL/d out (B, S, E): writes dz, dc (B, S, E) and dh (B, NH, S, DH), adds the token sums of dL/d skip,
 * dL/d norm_weight and (if base is not NULL) dL/d base into d_skip, d_weight, d_base (E,), and writes the forward
 * output into out (needed for the down-projection's weight gradient). With y the normalised h, s = silu(z),
 * A = y (1 + w) + base + c skip and out = A s: dA = g s, dz = g A silu'(z), dc = dA skip, dy = dA (1 + w) and
 * dh = rstd (dy - mean(dy) - y mean(dy y)) per head. The token sums are formed per part of part_rows tokens in
 * partial (ceil(B S / part_rows) x 3E, scratch). */
void vil_gated_branch_output_backward(const float *h, const float *c, const float *z, const float *norm_weight,
                                      const float *base, const float *skip, const float *g, float *out, float *dh,
                                      float *dc, float *dz, float *d_weight, float *d_base, float *d_skip,
                                      float *partial, int64_t part_rows, int64_t batch, int64_t seq_len,
                                      int64_t heads, int64_t head_dim, float eps, int64_t threads) {
    const int64_t dim = heads * head_dim, tokens = batch * seq_len, parts = (tokens + part_rows - 1) / part_rows;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t part = 0; part < parts; ++part) {
        float dy[ROW_BUFFER];
        float *weight_part = partial + part * 3 * dim, *base_part = weight_part + dim, *skip_part = base_part + dim;
        memset(weight_part, 0, (size_t)(3 * dim) * sizeof(float));
        for (int64_t t = part * part_rows; t < min64(tokens, (part + 1) * part_rows); ++t) {
            const int64_t b = t / seq_len, s = t % seq_len, row = t * dim;
            for (int64_t hd = 0; hd < heads; ++hd) {
                const int64_t head_row = ((b * heads + hd) * seq_len + s) * head_dim;
                const float *x = h + head_row;
                float mean, rstd;
                head_stats(x, head_dim, eps, &mean, &rstd);
                const int64_t off = row + hd * head_dim, ch = hd * head_dim;
                float dy_sum = 0.0f, dy_y_sum = 0.0f;
                int64_t j = 0;
#ifdef VEC
                vec dy_acc = vzero(), dy_y_acc = vzero();
                for (; j + VW <= head_dim; j += VW) {
                    const vec y = vmul(vsub(vload(x + j), vset1(mean)), vset1(rstd));
                    const vec scale = vadd(vset1(1.0f), vload(norm_weight + ch + j));
                    const vec cv = vload(c + off + j), skv = vload(skip + ch + j), zv = vload(z + off + j);
                    vec a = base ? vload(base + ch + j) : vzero();
                    a = vfmadd(y, scale, vfmadd(cv, skv, a));
                    const vec sig = vdiv(vset1(1.0f), vadd(vset1(1.0f), vexp(vsub(vzero(), zv))));
                    const vec silu = vmul(zv, sig);
                    const vec gv = vload(g + off + j);
                    const vec da = vmul(gv, silu);
                    /* silu'(z) = sig (1 + z (1 - sig)) */
                    const vec dsilu = vmul(sig, vfmadd(zv, vsub(vset1(1.0f), sig), vset1(1.0f)));
                    vstore(out + off + j, vmul(a, silu));
                    vstore(dz + off + j, vmul(vmul(gv, a), dsilu));
                    vstore(dc + off + j, vmul(da, skv));
                    vstore(skip_part + ch + j, vfmadd(da, cv, vload(skip_part + ch + j)));
                    vstore(weight_part + ch + j, vfmadd(da, y, vload(weight_part + ch + j)));
                    if (base) vstore(base_part + ch + j, vadd(vload(base_part + ch + j), da));
                    const vec dyv = vmul(da, scale);
                    vstore(dy + j, dyv);
                    dy_acc = vadd(dy_acc, dyv);
                    dy_y_acc = vfmadd(dyv, y, dy_y_acc);
                }
                dy_sum = vsum(dy_acc);
                dy_y_sum = vsum(dy_y_acc);
#endif
                for (; j < head_dim; ++j) {
                    const float y = (x[j] - mean) * rstd, scale = 1.0f + norm_weight[ch + j];
                    const float a = y * scale + (base ? base[ch + j] : 0.0f) + c[off + j] * skip[ch + j];
                    const float sig = 1.0f / (1.0f + expf(-z[off + j])), silu = z[off + j] * sig;
                    const float da = g[off + j] * silu;
                    out[off + j] = a * silu;
                    dz[off + j] = g[off + j] * a * sig * (1.0f + z[off + j] * (1.0f - sig));
                    dc[off + j] = da * skip[ch + j];
                    skip_part[ch + j] += da * c[off + j];
                    weight_part[ch + j] += da * y;
                    if (base) base_part[ch + j] += da;
                    dy[j] = da * scale;
                    dy_sum += dy[j];
                    dy_y_sum += dy[j] * y;
                }
                const float dy_mean = dy_sum / (float)head_dim, dy_y_mean = dy_y_sum / (float)head_dim;
                for (int64_t i = 0; i < head_dim; ++i) {
                    const float y = (x[i] - mean) * rstd;
                    dh[head_row + i] = rstd * (dy[i] - dy_mean - y * dy_y_mean);
                }
            }
        }
    }
    sum_parts(partial, parts, 3 * dim, d_weight, dim, (int)threads);
    if (base) sum_parts(partial + dim, parts, 3 * dim, d_base, dim, (int)threads);
    sum_parts(partial + 2 * dim, parts, 3 * dim, d_skip, dim, (int)threads);
}

/* ---- the backward pass of vil_conv2d_silu ------------------------------------------------------------------------ */

/* The weight and bias sums of one part's pixels [first, last), d_pre given: weight_part[tap][c] = sum_t
 * d_pre[t][c] x[t + tap][c] and bias_part[c] = sum_t d_pre[t][c], in pixel order. Per vector of channels the sums
 * of up to WEIGHT_TILE taps stay in registers while t runs, d_pre's vector read once for all of them (summed in
 * memory, tap after tap, the loads and stores of the sums bounded the kernel). */
#define WEIGHT_TILE 9
static inline __attribute__((always_inline)) void conv_weight_sums_of(const int count, const float *const *rows,
                                                                      int64_t taps, const float *d_pre, int64_t n,
                                                                      float *sums, int64_t channels) {
    /* rows[t * taps + tap]: the row of x that tap reads for the part's pixel t (NULL off the image); sums[j] for
     * the count taps from rows' first */
    int64_t c = 0;
#ifdef VEC
    for (; c + VW <= channels; c += VW) {
        vec acc[WEIGHT_TILE];
        for (int j = 0; j < count; ++j) acc[j] = vzero();
        for (int64_t t = 0; t < n; ++t) {
            const vec dp = vload(d_pre + t * channels + c);
            for (int j = 0; j < count; ++j) {
                const float *xp = rows[t * taps + j];
                if (xp) acc[j] = vfmadd(dp, vload(xp + c), acc[j]);
            }
        }
        for (int j = 0; j < count; ++j) vstore(sums + j * channels + c, acc[j]);
    }
#endif
    for (; c < channels; ++c)
        for (int j = 0; j < count; ++j) {
            float acc = 0.0f;
            for (int64_t t = 0; t < n; ++t) {
                const float *xp = rows[t * taps + j];
                if (xp) acc += d_pre[t * channels + c] * xp[c];
            }
            sums[j * channels + c] = acc;
        }
}

static void conv_weight_sums(const float *x, const float *d_pre, float *weight_part, float *bias_part, int64_t first,
                             int64_t last, int64_t height, int64_t width, int64_t channels, int64_t kernel) {
    const int64_t taps = kernel * kernel, n = last - first;
    const float *rows[n * taps];
    for (int64_t t = first; t < last; ++t)
        for (int64_t tap = 0; tap < taps; ++tap)
            rows[(t - first) * taps + tap] = tap_row(x, t / (height * width), t / width % height, t % width,
                                                     tap / kernel, tap % kernel, height, width, channels, kernel);
    const float *dp = d_pre + first * channels;
    int64_t tap = 0;
    for (; tap + WEIGHT_TILE <= taps; tap += WEIGHT_TILE)
        conv_weight_sums_of(WEIGHT_TILE, rows + tap, taps, dp, n, weight_part + tap * channels, channels);
    for (; tap < taps; ++tap) conv_weight_sums_of(1, rows + tap, taps, dp, n, weight_part + tap * channels, channels);
    for (int64_t c = 0; c < channels; ++c) bias_part[c] = 0.0f;
    for (int64_t t = 0; t < n; ++t) {
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) bias_part[c] += dp[t * channels + c];
    }
}

/* For g = dL/d out (B, H, W, C): d_pre = g silu'(conv(x)) (into the scratch buffer d_pre), dx (B, H, W, C) = the
 * transposed depthwise conv of d_pre, and d_weight (k*k, C), d_bias (C,) (may be NULL) increased by their sums,
 * formed per part of part_rows pixels in partial (ceil(B H W / part_rows) x (k*k + 1) C, scratch). */
void vil_conv2d_silu_backward(const float *x, const float *weight, const float *bias, const float *g, float *d_pre,
                              float *dx, float *d_weight, float *d_bias, float *partial, int64_t part_rows,
                              int64_t batch, int64_t height, int64_t width, int64_t channels, int64_t kernel,
                              int64_t threads) {
    const int64_t pixels = batch * height * width, parts = (pixels + part_rows - 1) / part_rows;
    const int64_t taps = kernel * kernel, stride = (taps + 1) * channels;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t part = 0; part < parts; ++part) {
        float pre[ROW_BUFFER];
        const int64_t first = part * part_rows, last = min64(pixels, first + part_rows);
        for (int64_t t = first; t < last; ++t) {
            const int64_t b = t / (height * width), i = t / width % height, j = t % width, pixel = t * channels;
            conv_pixel(x, weight, bias, pre, b, i, j, height, width, channels, kernel, 0, 0);
            float *dp = d_pre + pixel;
            int64_t ch = 0;
#ifdef VEC
            for (; ch + VW <= channels; ch += VW) {
                const vec p = vload(pre + ch);
                const vec sig = vdiv(vset1(1.0f), vadd(vset1(1.0f), vexp(vsub(vzero(), p))));
                vstore(dp + ch, vmul(vload(g + pixel + ch), vmul(sig, vfmadd(p, vsub(vset1(1.0f), sig), vset1(1.0f)))));
            }
#endif
            for (; ch < channels; ++ch) {
                const float sig = 1.0f / (1.0f + expf(-pre[ch]));
                dp[ch] = g[pixel + ch] * sig * (1.0f + pre[ch] * (1.0f - sig));
            }
        }
        float *weight_part = partial + part * stride;
        conv_weight_sums(x, d_pre, weight_part, weight_part + taps * channels, first, last, height, width, channels,
                         kernel);
    }
    sum_parts(partial, parts, stride, d_weight, taps * channels, (int)threads);
    if (d_bias) sum_parts(partial + taps * channels, parts, stride, d_bias, channels, (int)threads);
    /* dx[i, j] = sum over taps of weight[di, dj] d_pre[i - di + k/2, j - dj + k/2], in weight order: the conv of d_pre
     * with the kernel turned by 180 degrees (as fast as the pass over dx's row per tap that it replaced, 2.16 against
     * 2.13 ms per ViL-T call at 224 x 8, and the same bits) */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < pixels; ++t) {
        const int64_t b = t / (height * width), i = t / width % height, j = t % width;
        conv_pixel(d_pre, weight, NULL, dx + t * channels, b, i, j, height, width, channels, kernel, 0, 1);
    }
}
