// Activation-side kernels of a decoder layer: norms, rotary positions with the KV-cache write,
// split-sequence attention for decoding, tiled flash attention for prompts, gated activations and
// logit soft-capping.
//
// Positions and KV blocks come from the batch map in device memory (batch.cuh), so a decode step
// captured once as a CUDA graph replays for every position without re-capture.
// Kernels that feed a quantized mat-vec also write the int8 groups it reads (when `q` is set),
// saving a launch per product: each warp holds 32 consecutive values (n and blockDim.x are
// multiples of 32), which is exactly one group, and quantizes them in registers.
#include <cuda_fp16.h>
#include "batch.cuh"
#include "reduce.cuh"

// out = x / rms(x) · w for each row (grid y; input row rows[y] when rows is set, else y), plus
// its int8 groups when q is set. The gridDim.x blocks of a row each sum the whole row's squares
// (a re-read from L2 that costs less than a second launch) and normalise their own slice: at a
// few tokens this spreads the rows over many SMs. out must not alias x.
extern "C" __global__ void rms_norm_rows(const float* x, const int* rows, const float* w, float* out, int8_t* q,
                                         float2* ds, int n, float eps) {
    size_t r = blockIdx.y;
    const float* xr = x + (size_t)(rows ? rows[r] : r) * n;
    float* o = out + r * n;
    // n is a multiple of 32 and rows start 16-byte aligned: 16-byte loads, a few per thread,
    // all in flight at once.
    float ss = 0.f;
    const float4* x4 = (const float4*)xr;
#pragma unroll 4
    for (int c = threadIdx.x; c < n / 4; c += blockDim.x) {
        float4 v = x4[c];
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    float scale = rsqrtf(block_sum(ss) / n + eps);
    int8_t* qr = q + r * n;
    float2* dr = ds + r * (n / 32);
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < n; c += gridDim.x * blockDim.x) {
        float v = xr[c] * scale * w[c];
        o[c] = v;
        if (q) quantize_group(v, qr + (c & ~31), dr + c / 32);
    }
}

// x += y, or x += rms_norm(y) · w when a post-norm weight is given (Gemma's sandwich norms).
extern "C" __global__ void add_rows(float* x, const float* y, const float* w, int n, float eps) {
    float* xr = x + (size_t)blockIdx.x * n;
    const float* yr = y + (size_t)blockIdx.x * n;
    float scale = 1.f;
    if (w) {
        float ss = 0.f;
        for (int c = threadIdx.x; c < n; c += blockDim.x) ss += yr[c] * yr[c];
        scale = rsqrtf(block_sum(ss) / n + eps);
    }
    for (int c = threadIdx.x; c < n; c += blockDim.x) xr[c] += w ? yr[c] * scale * w[c] : yr[c];
}

// For each token (grid y) and each q or k head (grid x): add the projection bias, apply the
// per-head RMSNorm if the model has one, rotate by the token's position, and for k heads store
// k and v in the f16 cache row of that position in the token's blocks. One thread per rotated
// pair.
//
// qkv rows are [q | k | v] (`stride` floats apart); bias, when set, is laid out the same way.
extern "C" __global__ void rope_kv(float* qkv, int stride, const int* io, int n_heads, int n_kv_heads, int head_dim,
                                   const float* cos_t, const float* sin_t, int neox, const float* bias,
                                   const float* q_norm, const float* k_norm, float eps, __half* kc, __half* vc) {
    int h = blockIdx.x, t = blockIdx.y, i = threadIdx.x, half_d = head_dim / 2;
    int pos = map_pos(io, t);
    bool is_q = h < n_heads;
    int q_dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim;
    int off = is_q ? h * head_dim : q_dim + (h - n_heads) * head_dim;
    float* row = qkv + (size_t)t * stride;
    int ia = neox ? i : 2 * i, ib = neox ? i + half_d : 2 * i + 1;
    float a = row[off + ia], b = row[off + ib];
    if (bias) {
        a += bias[off + ia];
        b += bias[off + ib];
    }
    const float* nw = is_q ? q_norm : k_norm;
    if (nw) {
        float scale = rsqrtf(block_sum(a * a + b * b) / head_dim + eps);
        a *= scale * nw[ia];
        b *= scale * nw[ib];
    }
    float c = cos_t[(size_t)pos * half_d + i], s = sin_t[(size_t)pos * half_d + i];
    float ra = a * c - b * s, rb = a * s + b * c;
    if (is_q) {
        row[off + ia] = ra;
        row[off + ib] = rb;
        return;
    }
    int kh = h - n_heads;
    size_t dst = kv_row(map_table(io, t), pos) * kv_dim + kh * head_dim;
    kc[dst + ia] = __float2half(ra);
    kc[dst + ib] = __float2half(rb);
    int voff = q_dim + kv_dim + kh * head_dim;
    float va = row[voff + ia], vb = row[voff + ib];
    if (bias) {
        va += bias[voff + ia];
        vb += bias[voff + ib];
    }
    vc[dst + ia] = __float2half(va);
    vc[dst + ib] = __float2half(vb);
}

// One split of flash-decoding for the query in qs (scaled, in shared memory): the softmax-weighted
// sum of the values over keys [k0, k0 + n) of KV head kvh in the sequence with block table tab,
// written unnormalised to out, and the split's (max, sum of exponentials) returned. Each thread
// scores whole keys (no shuffles; q is broadcast from shared memory); for the weighted sum of
// values each warp takes every nw-th key with its lanes across the head, and the warps' sums meet
// in shared memory. When kcur is set, the last key is the token being decoded, read from
// kcur/vcur (shared memory) instead of the cache. sc holds n floats, red (blockDim.x / 32) ·
// head_dim.
__device__ float2 attend_split(const float* qs, int k0, int n, int kv_dim, int kvh, int head_dim, const int* tab,
                               const __half* kc, const __half* vc, const float* kcur, const float* vcur, float* sc,
                               float* red, float* out) {
    int nw = blockDim.x >> 5, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const __half* kbase = kc + kvh * head_dim;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float dot = 0.f;
        if (kcur && j == n - 1) {
            for (int d = 0; d < head_dim; d++) dot += qs[d] * kcur[d];
        } else {
            const half2* kr = (const half2*)(kbase + kv_row(tab, k0 + j) * kv_dim);
#pragma unroll 8
            for (int d = 0; d < head_dim / 2; d++) {
                float2 k2 = __half22float2(kr[d]);
                dot += qs[2 * d] * k2.x + qs[2 * d + 1] * k2.y;
            }
        }
        sc[j] = dot;
        m = fmaxf(m, dot);
    }
    m = block_max(m);
    float l = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float p = __expf(sc[j] - m);
        sc[j] = p;
        l += p;
    }
    l = block_sum(l);  // its barriers also publish the sc[] writes above
    int per = head_dim / 32;  // dims per lane, at most 8
    float acc[8];
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i] = 0.f;
    const __half* vbase = vc + kvh * head_dim + lane * per;
#pragma unroll 4
    for (int j = warp; j < n; j += nw) {
        float p = sc[j];
        if (vcur && j == n - 1) {
#pragma unroll
            for (int i = 0; i < 8; i++)
                if (i < per) acc[i] += p * vcur[lane * per + i];
        } else {
            const __half* vr = vbase + kv_row(tab, k0 + j) * kv_dim;
#pragma unroll
            for (int i = 0; i < 8; i++)
                if (i < per) acc[i] += p * __half2float(vr[i]);
        }
    }
#pragma unroll
    for (int i = 0; i < 8; i++)
        if (i < per) red[warp * head_dim + lane * per + i] = acc[i];
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float a = 0.f;
        for (int w = 0; w < nw; w++) a += red[w * head_dim + d];
        out[d] = a;
    }
    return make_float2(m, l);
}

// Flash-decoding, first half: block (split, head, token) attends over keys
// [split·chunk, (split+1)·chunk) ∩ the token's visible range (attend_split), and writes its
// unnormalised output with its running max and sum of exponentials. With skip_tiled, tokens the
// batch map marks tiled are left to attn_prefill.
// Shared memory: head_dim + chunk + (blockDim.x / 32) · head_dim floats. head_dim ≤ 256.
extern "C" __global__ void attn_partial(const float* qkv, int stride, const int* io, int n_heads, int n_kv_heads,
                                        int head_dim, float scale, int window, int skip_tiled, int chunk,
                                        int nsplit, const __half* kc, const __half* vc, float* part, float2* ml) {
    extern __shared__ float sm[];
    int s = blockIdx.x, h = blockIdx.y, t = blockIdx.z;
    if (skip_tiled && map_tiled(io, t)) return;
    int qpos = map_pos(io, t);
    int first = window > 0 ? max(0, qpos - window + 1) : 0;
    int k0 = max(first, s * chunk), k1 = min(qpos + 1, (s + 1) * chunk);
    size_t idx = ((size_t)t * n_heads + h) * nsplit + s;
    if (k0 >= k1) {
        if (threadIdx.x == 0) ml[idx] = make_float2(-INFINITY, 0.f);
        return;
    }
    float* qs = sm;
    float* sc = sm + head_dim;
    float* red = sc + chunk;
    const float* q = qkv + (size_t)t * stride + h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = q[d] * scale;
    __syncthreads();
    int kv_dim = n_kv_heads * head_dim, kvh = h / (n_heads / n_kv_heads);
    float2 r = attend_split(qs, k0, k1 - k0, kv_dim, kvh, head_dim, map_table(io, t), kc, vc, nullptr, nullptr, sc, red,
                            part + idx * head_dim);
    if (threadIdx.x == 0) ml[idx] = r;
}

// Flash-decoding, second half: block (head, token), one thread per dimension, merges the head's
// splits into out (t × n_heads·head_dim), plus the int8 groups when q is set (head_dim is a
// multiple of 32, so each warp holds whole groups). Tiled tokens are skipped as in attn_partial.
extern "C" __global__ void attn_combine(const int* io, int skip_tiled, const float* part, const float2* ml, int nsplit,
                                        int n_heads, int head_dim, float* out, int8_t* q, float2* ds) {
    int h = blockIdx.x, t = blockIdx.y, d = threadIdx.x, q_dim = n_heads * head_dim;
    if (skip_tiled && map_tiled(io, t)) return;
    size_t base = ((size_t)t * n_heads + h) * nsplit;
    float m = -INFINITY;
    for (int s = 0; s < nsplit; s++) m = fmaxf(m, ml[base + s].x);
    float l = 0.f, a = 0.f;
    for (int s = 0; s < nsplit; s++) {
        float2 r = ml[base + s];
        if (r.y > 0.f) {
            float f = __expf(r.x - m);
            l += r.y * f;
            a += part[(base + s) * head_dim + d] * f;
        }
    }
    float v = a / l;
    size_t e = (size_t)t * q_dim + h * head_dim + d;
    out[e] = v;
    if (q) quantize_group(v, q + (e & ~(size_t)31), ds + e / 32);
}

// out = act(gate) · up for rows [gate | up] of gu (2·ffn wide); act 0 = SiLU, 1 = tanh GELU.
// Grid: (ffn / blockDim.x, rows).
extern "C" __global__ void glu(const float* gu, int ffn, int act, float* out, int8_t* q, float2* ds) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= ffn) return;  // whole warps: ffn is a multiple of 32
    size_t r = blockIdx.y;
    float x = gu[r * 2 * ffn + c], u = gu[r * 2 * ffn + ffn + c];
    float a = act == 0 ? x / (1.f + __expf(-x)) : 0.5f * x * (1.f + tanhf(0.7978846f * (x + 0.044715f * x * x * x)));
    out[r * ffn + c] = a * u;
    if (q) quantize_group(a * u, q + r * ffn + (c & ~31), ds + r * (ffn / 32) + c / 32);
}

// x = tanh(x / cap) · cap.
extern "C" __global__ void softcap(float* x, size_t n, float cap) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = tanhf(x[i] / cap) * cap;
}

// Floats as unsigned keys in f32::total_cmp's order (the host sampler's), larger key larger value.
__device__ __forceinline__ unsigned int order_key(float v) {
    unsigned int u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The k largest logits of each row (grid x: rows) as (index, value) pairs, in no set order, at
// ids/vals + row·k: a radix select finds the k-th largest key 8 bits a pass, counting in shared
// memory only the values that share the bits found so far; a last pass collects the larger
// values and as many equal to the k-th as k leaves room for (which of several equal ones is
// unspecified, as on the host).
extern "C" __global__ void topk_rows(const float* x, int vocab, int k, int* ids, float* vals) {
    const float* r = x + (size_t)blockIdx.x * vocab;
    __shared__ unsigned int hist[256];
    __shared__ unsigned int s_prefix, s_left;
    __shared__ int s_above, s_equal;
    unsigned int prefix = 0, mask = 0, left = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            unsigned int key = order_key(r[i]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xFFu], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            // The digit holding the left-th largest of the values still in play: the counts of
            // the larger digits are below it.
            unsigned int above = 0;
            int b = 255;
            for (; b > 0 && above + hist[b] < left; b--) above += hist[b];
            s_prefix = prefix | ((unsigned int)b << shift);
            s_left = left - above;
        }
        __syncthreads();
        prefix = s_prefix;
        left = s_left;
        mask |= 0xFFu << shift;
    }
    if (threadIdx.x == 0) {
        s_above = 0;
        s_equal = 0;
    }
    __syncthreads();
    int n_above = k - (int)left;
    int* out_ids = ids + (size_t)blockIdx.x * k;
    float* out_vals = vals + (size_t)blockIdx.x * k;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = r[i];
        unsigned int key = order_key(v);
        int at = -1;
        if (key > prefix) {
            at = atomicAdd(&s_above, 1);
        } else if (key == prefix) {
            int e = atomicAdd(&s_equal, 1);
            if (e < (int)left) at = n_above + e;
        }
        if (at >= 0) {
            out_ids[at] = i;
            out_vals[at] = v;
        }
    }
}

// out[row] = the index of row's largest logit (grid x: rows), the lowest index among equal
// maxima as the host's greedy pick takes it; NaN never wins.
extern "C" __global__ void argmax_rows(const float* x, int vocab, int* out) {
    const float* r = x + (size_t)blockIdx.x * vocab;
    float best = -INFINITY;
    int at = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = r[i];
        if (v > best) {  // strided ascending: a later equal value has a higher index
            best = v;
            at = i;
        }
    }
    __shared__ float sv[32];
    __shared__ int si[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float v = __shfl_xor_sync(0xffffffffu, best, o);
        int j = __shfl_xor_sync(0xffffffffu, at, o);
        if (v > best || (v == best && j < at)) {
            best = v;
            at = j;
        }
    }
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = at;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (sv[w] > best || (sv[w] == best && si[w] < at)) {
                best = sv[w];
                at = si[w];
            }
        out[blockIdx.x] = at == 0x7fffffff ? 0 : at;
    }
}

// Prefill attention on the tensor cores (flash attention): block (query tile, head) holds 64
// queries of one sequence's t consecutive tokens from token tok0 of the call, four warps of 16
// rows each, and walks the keys in tiles of 64 with an online softmax, so scores never leave
// registers. Keys and values come from the f16 cache, which rope_kv has filled up to the call's
// last position. S = Q·Kᵀ and O += P·V are m16n8k16 f16 MMAs with f32 accumulators; V is stored
// transposed in shared memory so both products read their B operands as 32-bit pairs. No
// sliding window (those take attn_partial).
#define FA_Q 64
#define FA_K 64

__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *(uint32_t*)&h;
}

template <int D>
__device__ void attn_prefill(const float* qkv, int stride, const int* io, int tok0, int t, int n_heads, int n_kv_heads,
                             float scale, const __half* kc, const __half* vc, float* out) {
    constexpr int KS = D + 8;     // K row stride in halves (padding spreads a warp's rows over banks)
    constexpr int VS = FA_K + 8;  // V row stride in halves: V is stored transposed, one row per dim
    __shared__ __align__(16) __half ks[FA_K * KS];
    __shared__ __align__(16) __half vs[D * VS];
    int q0 = blockIdx.x * FA_Q, h = blockIdx.y;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
    int pos0 = map_pos(io, tok0);
    const int* tab = map_table(io, tok0);
    qkv += (size_t)tok0 * stride;
    out += (size_t)tok0 * n_heads * D;
    int kv_dim = n_kv_heads * D, kvh = h / (n_heads / n_kv_heads);
    // This warp's 16 query rows as A fragments, pre-scaled; rows past the call read as zero.
    uint32_t qf[D / 16][4];
    int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int r = (i & 1) ? r1 : r0, c = kk * 16 + 2 * tig + ((i & 2) ? 8 : 0);
            float a = 0.f, b = 0.f;
            if (r < t) {
                const float* q = qkv + (size_t)r * stride + h * D + c;
                a = q[0] * scale;
                b = q[1] * scale;
            }
            qf[kk][i] = pack_half2(a, b);
        }
    }
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    int qp0 = pos0 + r0, qp1 = pos0 + r1;
    // Keys up to the tile's last query (and never past the call's last token).
    int kend = pos0 + min(q0 + FA_Q, t);
    for (int k0 = 0; k0 < kend; k0 += FA_K) {
        __syncthreads();
        for (int e = threadIdx.x; e < FA_K * D / 8; e += blockDim.x) {
            int r = e / (D / 8), c = (e % (D / 8)) * 8;
            uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = make_uint4(0, 0, 0, 0);
            if (k0 + r < kend) {
                size_t off = kv_row(tab, k0 + r) * kv_dim + kvh * D + c;
                kv4 = *(const uint4*)(kc + off);
                vv4 = *(const uint4*)(vc + off);
            }
            *(uint4*)(ks + r * KS + c) = kv4;
            const __half* v8 = (const __half*)&vv4;
#pragma unroll
            for (int i = 0; i < 8; i++) vs[(c + i) * VS + r] = v8[i];
        }
        __syncthreads();
        float s[FA_K / 8][4];
#pragma unroll
        for (int n = 0; n < FA_K / 8; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
            const __half* kr = ks + (n * 8 + g) * KS + 2 * tig;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                mma16816(s[n], qf[kk], *(const uint32_t*)(kr + kk * 16), *(const uint32_t*)(kr + kk * 16 + 8));
        }
        // Causal mask, then the online softmax of rows r0 (s[.][0..1]) and r1 (s[.][2..3]).
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int n = 0; n < FA_K / 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int kp = k0 + n * 8 + 2 * tig + (i & 1);
                if (kp > ((i & 2) ? qp1 : qp0)) s[n][i] = -INFINITY;
                mx[i >> 1] = fmaxf(mx[i >> 1], s[n][i]);
            }
        float corr[2], sum[2] = {0.f, 0.f};
#pragma unroll
        for (int j = 0; j < 2; j++) {
            mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 1));
            mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 2));
            // A row with every key masked so far keeps m = -inf: exponents against 0 give 0.
            float base = mx[j] == -INFINITY ? 0.f : mx[j];
            corr[j] = __expf(m[j] - base);
            m[j] = mx[j];
            mx[j] = base;
        }
        uint32_t pf[FA_K / 16][4];
#pragma unroll
        for (int n = 0; n < FA_K / 8; n++) {
            float p0 = __expf(s[n][0] - mx[0]), p1 = __expf(s[n][1] - mx[0]);
            float p2 = __expf(s[n][2] - mx[1]), p3 = __expf(s[n][3] - mx[1]);
            sum[0] += p0 + p1;
            sum[1] += p2 + p3;
            // C fragments of key tiles 2c and 2c+1 are the A fragment of key chunk c.
            pf[n >> 1][(n & 1) * 2 + 0] = pack_half2(p0, p1);
            pf[n >> 1][(n & 1) * 2 + 1] = pack_half2(p2, p3);
        }
#pragma unroll
        for (int j = 0; j < 2; j++) {
            sum[j] += __shfl_xor_sync(0xffffffffu, sum[j], 1);
            sum[j] += __shfl_xor_sync(0xffffffffu, sum[j], 2);
            l[j] = l[j] * corr[j] + sum[j];
        }
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            o[n][0] *= corr[0];
            o[n][1] *= corr[0];
            o[n][2] *= corr[1];
            o[n][3] *= corr[1];
            const __half* vr = vs + (n * 8 + g) * VS + 2 * tig;
#pragma unroll
            for (int c = 0; c < FA_K / 16; c++)
                mma16816(o[n], pf[c], *(const uint32_t*)(vr + c * 16), *(const uint32_t*)(vr + c * 16 + 8));
        }
    }
    int q_dim = n_heads * D;
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        int c = h * D + n * 8 + 2 * tig;
        if (r0 < t) {
            out[(size_t)r0 * q_dim + c] = o[n][0] / l[0];
            out[(size_t)r0 * q_dim + c + 1] = o[n][1] / l[0];
        }
        if (r1 < t) {
            out[(size_t)r1 * q_dim + c] = o[n][2] / l[1];
            out[(size_t)r1 * q_dim + c + 1] = o[n][3] / l[1];
        }
    }
}

#define ATTN_PREFILL(D)                                                                                        \
    extern "C" __global__ void __launch_bounds__(128) attn_prefill_##D(                                         \
        const float* qkv, int stride, const int* io, int tok0, int t, int n_heads, int n_kv_heads, float scale, \
        const __half* kc, const __half* vc, float* out) {                                                      \
        attn_prefill<D>(qkv, stride, io, tok0, t, n_heads, n_kv_heads, scale, kc, vc, out);                    \
    }

ATTN_PREFILL(64)
ATTN_PREFILL(128)

// One head's rotated pair i (of head_dim / 2) from the head at `off` in a [q | k | v] row:
// projection bias, the per-head RMSNorm when nw is set, then the rotation, times mul, into
// out[0..head_dim). Every thread of the block calls it (the norm is a block sum); threads with
// i >= head_dim / 2 only take part in that sum.
__device__ __forceinline__ void rotate_head(const float* row, int off, int i, int head_dim, int neox, const float* bias,
                                            const float* nw, float eps, const float* cos_row, const float* sin_row,
                                            float mul, float* out) {
    int half_d = head_dim / 2;
    bool active = i < half_d;
    int ia = neox ? i : 2 * i, ib = neox ? i + half_d : 2 * i + 1;
    float a = 0.f, b = 0.f;
    if (active) {
        a = row[off + ia];
        b = row[off + ib];
        if (bias) {
            a += bias[off + ia];
            b += bias[off + ib];
        }
    }
    if (nw) {
        float scale = rsqrtf(block_sum(a * a + b * b) / head_dim + eps);
        if (active) {
            a *= scale * nw[ia];
            b *= scale * nw[ib];
        }
    }
    if (active) {
        float c = cos_row[i], s = sin_row[i];
        out[ia] = (a * c - b * s) * mul;
        out[ib] = (a * s + b * c) * mul;
    }
}

// The whole attention of decoded tokens (one per sequence), in one launch: block (split, head,
// token) rotates its query (bias, per-head norm, rotary position), attends over its split of the
// cache like attn_partial and counts itself done; the last of a head's splits merges them like
// attn_combine, with the int8 groups for the output projection when q8 is set. The split holding
// the token itself computes the token's key and value (rounded to f16 as the cache holds them)
// instead of reading them, and the first query head of each KV group writes them to the cache for
// later tokens. This replaces rope_kv, attn_partial and attn_combine in the captured decode step.
// cnt: one int per head and token, at 0. Shared memory: (7 · head_dim + chunk) floats.
// The arguments up to vc are rope_kv's.
extern "C" __global__ void attn_decode(const float* qkv, int stride, const int* io, int n_heads, int n_kv_heads,
                                       int head_dim, const float* cos_t, const float* sin_t, int neox,
                                       const float* bias, const float* q_norm, const float* k_norm, float eps,
                                       __half* kc, __half* vc, float scale, int window, int chunk, int nsplit,
                                       float* part, float2* ml, int* cnt, float* out, int8_t* q8, float2* ds) {
    extern __shared__ float sm[];
    int s = blockIdx.x, h = blockIdx.y, t = blockIdx.z, D = head_dim, tid = threadIdx.x;
    int pos = map_pos(io, t);
    const int* tab = map_table(io, t);
    const float* row = qkv + (size_t)t * stride;
    int first = window > 0 ? max(0, pos - window + 1) : 0;
    int k0 = max(first, s * chunk), k1 = min(pos + 1, (s + 1) * chunk);
    size_t idx = ((size_t)t * n_heads + h) * nsplit + s;
    if (k0 < k1) {
        float* qs = sm;
        float* kcur = sm + D;
        float* vcur = kcur + D;
        float* sc = vcur + D;
        float* red = sc + chunk;
        int q_dim = n_heads * D, kv_dim = n_kv_heads * D, kvh = h / (n_heads / n_kv_heads);
        bool own = k1 == pos + 1;
        const float* cr = cos_t + (size_t)pos * (D / 2);
        const float* sr = sin_t + (size_t)pos * (D / 2);
        rotate_head(row, h * D, tid, D, neox, bias, q_norm, eps, cr, sr, scale, qs);
        if (own) {
            rotate_head(row, q_dim + kvh * D, tid, D, neox, bias, k_norm, eps, cr, sr, 1.f, kcur);
            __syncthreads();
            bool writer = h % (n_heads / n_kv_heads) == 0;
            size_t dst = kv_row(tab, pos) * kv_dim + kvh * D;
            for (int d = tid; d < D; d += blockDim.x) {
                int vo = q_dim + kv_dim + kvh * D + d;
                __half kh = __float2half(kcur[d]), vh = __float2half(row[vo] + (bias ? bias[vo] : 0.f));
                kcur[d] = __half2float(kh);
                vcur[d] = __half2float(vh);
                if (writer) {
                    kc[dst + d] = kh;
                    vc[dst + d] = vh;
                }
            }
        }
        __syncthreads();
        float2 r = attend_split(qs, k0, k1 - k0, kv_dim, kvh, D, tab, kc, vc, own ? kcur : nullptr, own ? vcur : nullptr, sc,
                                red, part + idx * D);
        if (tid == 0) ml[idx] = r;
    } else if (tid == 0) {
        ml[idx] = make_float2(-INFINITY, 0.f);
    }

    // The last split block of this head to finish merges all of them.
    if (!block_finishes(cnt + t * n_heads + h, nsplit)) return;
    size_t base = ((size_t)t * n_heads + h) * nsplit;
    float mx = -INFINITY;
    for (int i = 0; i < nsplit; i++) mx = fmaxf(mx, __ldcg(&ml[base + i]).x);
    for (int d = tid; d < D; d += blockDim.x) {
        float l = 0.f, a = 0.f;
        for (int i = 0; i < nsplit; i++) {
            float2 r = __ldcg(&ml[base + i]);
            if (r.y > 0.f) {
                float f = __expf(r.x - mx);
                l += r.y * f;
                a += __ldcg(&part[(base + i) * D + d]) * f;
            }
        }
        float v = a / l;
        size_t e = (size_t)t * n_heads * D + h * D + d;
        out[e] = v;
        if (q8) quantize_group(v, q8 + (e & ~(size_t)31), ds + e / 32);
    }
}
