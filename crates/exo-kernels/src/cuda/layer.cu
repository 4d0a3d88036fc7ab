// Activation-side kernels of a decoder layer: norms, rotary positions with the KV-cache write,
// split-sequence attention, gated activations, logit soft-capping and greedy argmax.
//
// Positions come from device memory (`io[0]` is the position of the batch's first token), so a
// decode step captured once as a CUDA graph replays for every position without re-capture.
// Kernels that feed a quantized mat-vec also write the int8 groups it reads (when `q` is set),
// saving a launch per product: each warp holds 32 consecutive values (n and blockDim.x are
// multiples of 32), which is exactly one group, and quantizes them in registers.
#include <cuda_fp16.h>
#include "reduce.cuh"

// out = x / rms(x) · w for each row (grid y), plus its int8 groups when q is set. The gridDim.x
// blocks of a row each sum the whole row's squares (a re-read from L2 that costs less than a
// second launch) and normalise their own slice: at one token this spreads the row over many SMs.
extern "C" __global__ void rms_norm_rows(const float* x, const float* w, float* out, int8_t* q, float2* ds, int n,
                                         float eps) {
    size_t r = blockIdx.y;
    const float* xr = x + r * n;
    float* o = out + r * n;
    float ss = 0.f;
    for (int c = threadIdx.x; c < n; c += blockDim.x) ss += xr[c] * xr[c];
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
// k and v in the f16 cache row of that position. One thread per rotated pair.
//
// qkv rows are [q | k | v] (`stride` floats apart); bias, when set, is laid out the same way.
extern "C" __global__ void rope_kv(float* qkv, int stride, const int* io, int n_heads, int n_kv_heads, int head_dim,
                                   const float* cos_t, const float* sin_t, int neox, const float* bias,
                                   const float* q_norm, const float* k_norm, float eps, __half* kc, __half* vc) {
    int h = blockIdx.x, t = blockIdx.y, i = threadIdx.x, half_d = head_dim / 2;
    int pos = io[0] + t;
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
    size_t dst = (size_t)pos * kv_dim + kh * head_dim;
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

// Flash-decoding, first half: block (split, head, token) attends over keys
// [split·chunk, (split+1)·chunk) ∩ the token's visible range, and writes its unnormalised output
// with its running max and sum of exponentials. Each thread scores whole keys (no shuffles; q is
// broadcast from shared memory); for the weighted sum of values each warp takes every nw-th key
// with its lanes across the head, and the warps' sums meet in shared memory.
// Shared memory: head_dim + chunk + (blockDim.x / 32) · head_dim floats. head_dim ≤ 256.
extern "C" __global__ void attn_partial(const float* qkv, int stride, const int* io, int n_heads, int n_kv_heads,
                                        int head_dim, float scale, int window, int chunk, int nsplit,
                                        const __half* kc, const __half* vc, float* part, float2* ml) {
    extern __shared__ float sm[];
    int s = blockIdx.x, h = blockIdx.y, t = blockIdx.z;
    int qpos = io[0] + t;
    int first = window > 0 ? max(0, qpos - window + 1) : 0;
    int k0 = max(first, s * chunk), k1 = min(qpos + 1, (s + 1) * chunk);
    size_t idx = ((size_t)t * n_heads + h) * nsplit + s;
    if (k0 >= k1) {
        if (threadIdx.x == 0) ml[idx] = make_float2(-INFINITY, 0.f);
        return;
    }
    int n = k1 - k0, nw = blockDim.x >> 5, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float* qs = sm;
    float* sc = sm + head_dim;
    float* red = sc + chunk;
    const float* q = qkv + (size_t)t * stride + h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = q[d] * scale;
    __syncthreads();
    int kv_dim = n_kv_heads * head_dim, kvh = h / (n_heads / n_kv_heads);
    const __half* kbase = kc + (size_t)k0 * kv_dim + kvh * head_dim;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const half2* kr = (const half2*)(kbase + (size_t)j * kv_dim);
        float dot = 0.f;
#pragma unroll 8
        for (int d = 0; d < head_dim / 2; d++) {
            float2 k2 = __half22float2(kr[d]);
            dot += qs[2 * d] * k2.x + qs[2 * d + 1] * k2.y;
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
    const __half* vbase = vc + (size_t)k0 * kv_dim + kvh * head_dim + lane * per;
#pragma unroll 4
    for (int j = warp; j < n; j += nw) {
        const __half* vr = vbase + (size_t)j * kv_dim;
        float p = sc[j];
#pragma unroll
        for (int i = 0; i < 8; i++)
            if (i < per) acc[i] += p * __half2float(vr[i]);
    }
#pragma unroll
    for (int i = 0; i < 8; i++)
        if (i < per) red[warp * head_dim + lane * per + i] = acc[i];
    __syncthreads();
    float* out = part + idx * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float a = 0.f;
        for (int w = 0; w < nw; w++) a += red[w * head_dim + d];
        out[d] = a;
    }
    if (threadIdx.x == 0) ml[idx] = make_float2(m, l);
}

// Flash-decoding, second half: block (head, token), one thread per dimension, merges the head's
// splits into out (t × n_heads·head_dim), plus the int8 groups when q is set (head_dim is a
// multiple of 32, so each warp holds whole groups).
extern "C" __global__ void attn_combine(const float* part, const float2* ml, int nsplit, int n_heads, int head_dim,
                                        float* out, int8_t* q, float2* ds) {
    int h = blockIdx.x, t = blockIdx.y, d = threadIdx.x, q_dim = n_heads * head_dim;
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

// out[0] = index of the largest of x[0..n) (the lowest such index on ties); one block.
extern "C" __global__ void argmax(const float* x, int n, int* out) {
    __shared__ float bv[1024];
    __shared__ int bi[1024];
    float v = -INFINITY;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        if (x[i] > v) {
            v = x[i];
            idx = i;
        }
    bv[threadIdx.x] = v;
    bi[threadIdx.x] = idx;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = bv[threadIdx.x + s];
            int oi = bi[threadIdx.x + s];
            if (ov > bv[threadIdx.x] || (ov == bv[threadIdx.x] && oi < bi[threadIdx.x])) {
                bv[threadIdx.x] = ov;
                bi[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = bi[0];
}
