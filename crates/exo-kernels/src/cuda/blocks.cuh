// ggml block formats as GGUF stores them, read in place on the GPU.
//
// Two views of each format: `deq` widens one element (dequantize-to-f16 before a cuBLAS GEMM),
// and each type's `load` + `dot` takes one slice of a block against activations quantized to int8
// in groups of 32 (`xq`, with `xds[g] = (scale, scale * sum of the group's int8 values)`), four
// products per `dp4a`. Block sizes that are not a multiple of 4 bytes (Q4_0, Q5_0, Q8_0, Q6_K)
// leave words only 2-byte aligned, so those are read as two 16-bit halves, or for Q6_K's
// 16-byte runs as aligned words joined by funnel shifts (ld16_a2).
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

// ggml type ids (ggml.h), the values GGUF tensor headers carry.
#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14
#define T_BF16 30
// exo's own formats (exo-quant), which no ggml type id names: ids outside ggml's range.
#define T_NF4 1001
#define T_FP8 1002

// NF4's sixteen levels (exo_quant::nf4::LEVELS), in code order.
__constant__ float NF4_LEVELS[16] = {-1.0f, -0.6961928f, -0.52507305f, -0.3949175f, -0.28444138f, -0.18477343f,
                                     -0.091050036f, 0.0f, 0.0795803f, 0.1609302f, 0.2461123f, 0.33791524f,
                                     0.44070983f, 0.562617f, 0.72295684f, 1.0f};

// An E4M3FN byte (4 exponent bits, bias 7, 3 mantissa bits, NaN at S.1111.111) as a float.
__device__ __forceinline__ float fp8_e4m3(uint8_t b) {
    int e = (b >> 3) & 0xF, m = b & 7;
    float v = (b & 0x7F) == 0x7F ? NAN : e == 0 ? m * 0.001953125f : ldexpf(1.0f + m * 0.125f, e - 7);
    return (b & 0x80) ? -v : v;
}

// Bytes of a row of `cols` values of `type` (FP8 rows start with their f32 scale).
__device__ __forceinline__ size_t row_size(int type, int cols);

__device__ __forceinline__ float f16_at(const uint8_t* p) {
    return __half2float(__ushort_as_half(*(const unsigned short*)p));
}

__device__ __forceinline__ int ld2(const uint8_t* p) {
    const uint16_t* h = (const uint16_t*)p;
    return (int)((uint32_t)h[0] | ((uint32_t)h[1] << 16));
}

__device__ __forceinline__ int ld4(const uint8_t* p) { return *(const int*)p; }

// The 16 bytes at p, which is only 2-byte aligned, as four words: five aligned word loads
// re-joined by funnel shifts (a shift of 0 when p is word-aligned), instead of eight 16-bit
// loads. Reads up to 4 bytes past the 16; callers keep that inside the block.
__device__ __forceinline__ void ld16_a2(const uint8_t* p, int out[4]) {
    const uint32_t* w = (const uint32_t*)((uintptr_t)p & ~(uintptr_t)3);
    uint32_t sh = ((uintptr_t)p & 3) * 8, a[5];
#pragma unroll
    for (int i = 0; i < 5; i++) a[i] = w[i];
#pragma unroll
    for (int i = 0; i < 4; i++) out[i] = (int)__funnelshift_r(a[i], a[i + 1], sh);
}

// Scale and min of sub-block j (0..7) of a Q4_K/Q5_K block: 6 bits each, packed into 12 bytes.
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Bits 0..3 of `b` moved to bit 4 of bytes 0..3 (the fifth bit of four Q5 values).
__device__ __forceinline__ int spread4(uint32_t b) {
    return (int)(((b & 1) << 4) | ((b & 2) << 11) | ((b & 4) << 18) | ((b & 8) << 25));
}

struct BlockInfo {
    int qk;     // elements per block
    int bytes;  // bytes per block
};

__device__ __forceinline__ BlockInfo block_info(int type) {
    switch (type) {
        case T_F32: return {1, 4};
        case T_F16: return {1, 2};
        case T_BF16: return {1, 2};
        case T_Q4_0: return {32, 18};
        case T_Q4_1: return {32, 20};
        case T_Q5_0: return {32, 22};
        case T_Q5_1: return {32, 24};
        case T_Q8_0: return {32, 34};
        case T_Q4_K: return {256, 144};
        case T_Q5_K: return {256, 176};
        default: return {256, 210};  // T_Q6_K
    }
}

__device__ __forceinline__ size_t row_size(int type, int cols) {
    if (type == T_NF4) return (size_t)(cols / 64) * 34;
    if (type == T_FP8) return 4 + (size_t)cols;
    BlockInfo bi = block_info(type);
    return (size_t)(cols / bi.qk) * bi.bytes;
}

// Element i of the block at b.
__device__ __forceinline__ float deq(int type, const uint8_t* b, int i) {
    switch (type) {
        case T_F32: return *(const float*)b;
        case T_F16: return f16_at(b);
        case T_BF16: return __bfloat162float(__ushort_as_bfloat16(*(const unsigned short*)b));
        case T_Q4_0: return f16_at(b) * (float)(((b[2 + (i & 15)] >> (4 * (i >> 4))) & 0xF) - 8);
        case T_Q4_1: return f16_at(b) * (float)((b[4 + (i & 15)] >> (4 * (i >> 4))) & 0xF) + f16_at(b + 2);
        case T_Q5_0: {
            uint32_t qh = (uint32_t)ld2(b + 2);
            int q = ((b[6 + (i & 15)] >> (4 * (i >> 4))) & 0xF) | (((qh >> i) & 1) << 4);
            return f16_at(b) * (float)(q - 16);
        }
        case T_Q5_1: {
            uint32_t qh = (uint32_t)ld4(b + 4);
            int q = ((b[8 + (i & 15)] >> (4 * (i >> 4))) & 0xF) | (((qh >> i) & 1) << 4);
            return f16_at(b) * (float)q + f16_at(b + 2);
        }
        case T_Q8_0: return f16_at(b) * (float)(int8_t)b[2 + i];
        case T_Q4_K:
        case T_Q5_K: {
            int j = i >> 6, l = i & 63, sub = 2 * j + (l >> 5);
            int sc, m;
            scale_min_k4(sub, b + 4, &sc, &m);
            const uint8_t* qs = b + (type == T_Q4_K ? 16 : 48);
            int q = (qs[32 * j + (l & 31)] >> (4 * (l >> 5))) & 0xF;
            if (type == T_Q5_K) q |= ((b[16 + (l & 31)] >> sub) & 1) << 4;
            return f16_at(b) * sc * q - f16_at(b + 2) * m;
        }
        default: {  // T_Q6_K
            int n = i >> 7, r = i & 127, g = r >> 5, l = r & 31;
            int lo = (b[64 * n + (g & 1) * 32 + l] >> ((g >> 1) * 4)) & 0xF;
            int hi = (b[128 + 32 * n + l] >> (2 * g)) & 3;
            int sc = (int8_t)b[192 + 8 * n + (l >> 4) + 2 * g];
            return f16_at(b + 208) * sc * (float)((lo | (hi << 4)) - 32);
        }
    }
}

// Each type's `load` reads slice `p` (0..PARTS-1) of the block at b into registers (a `W`), and
// `dot` returns that slice's contribution against activations: `xq` points at the block's first
// activation, `xds` at its first group of 32. Split so that a mat-vec over several tokens reads
// the weights once and runs `dot` per token.

// Byte k (0..3) of a 32-bit word.
__device__ __forceinline__ int byte_of(uint32_t w, int k) { return (w >> (8 * k)) & 0xFF; }

// scale_min_k4 on the 12 scale bytes held in registers (q0 = bytes 0-3, q1 = 4-7, q2 = 8-11).
__device__ __forceinline__ void scale_min_k4_reg(int j, uint32_t q0, uint32_t q1, uint32_t q2, int* sc, int* m) {
    if (j < 4) {
        *sc = byte_of(q0, j) & 63;
        *m = byte_of(q1, j) & 63;
    } else {
        int k = j - 4, hi = byte_of(q2, k);
        *sc = (hi & 0xF) | ((byte_of(q0, k) >> 6) << 4);
        *m = (hi >> 4) | ((byte_of(q1, k) >> 6) << 4);
    }
}

// Q4_K and Q5_K share their scales: sub-blocks 2j and 2j+1's 6-bit scale and min under the
// block's d and dmin. Fills a slice's d0, d1 (scales times d), m (dmin, on the h == 0 slice only:
// the min term covers a whole group of 32, so that slice adds it for both halves), m0 and m1.
template <class W>
__device__ __forceinline__ void k_scales(const uint8_t* b, int j, int h, W& w) {
    int sc0, sc1;
    scale_min_k4(2 * j, b + 4, &sc0, &w.m0);
    scale_min_k4(2 * j + 1, b + 4, &sc1, &w.m1);
    float2 dm = __half22float2(*(const half2*)b);
    w.d0 = dm.x * sc0;
    w.d1 = dm.x * sc1;
    w.m = h == 0 ? dm.y : 0.f;
}

// k_scales with the block's first 16 bytes (d, dmin, the 12 scale bytes) in one vector load:
// both block sizes are multiples of 16 bytes, so every block starts 16-byte aligned. Fewer
// load instructions, more registers; the one-token kernel has registers to spare.
template <class W>
__device__ __forceinline__ void k_scales16(const uint8_t* b, int j, int h, W& w) {
    uint4 hdr = *(const uint4*)b;
    int sc0, sc1;
    scale_min_k4_reg(2 * j, hdr.y, hdr.z, hdr.w, &sc0, &w.m0);
    scale_min_k4_reg(2 * j + 1, hdr.y, hdr.z, hdr.w, &sc1, &w.m1);
    float2 dm = __half22float2(*(const half2*)&hdr.x);
    w.d0 = dm.x * sc0;
    w.d1 = dm.x * sc1;
    w.m = h == 0 ? dm.y : 0.f;
}

// A Q4_K/Q5_K slice's contribution from its low- and high-half integer dot products sl, sh.
template <class W>
__device__ __forceinline__ float k_sum(const W& w, int j, int sl, int sh, const float2* xds) {
    float2 a = xds[2 * j], c = xds[2 * j + 1];
    return w.d0 * a.x * sl + w.d1 * c.x * sh - w.m * (w.m0 * a.y + w.m1 * c.y);
}

// acc plus the dot product of 16 int8 activations x with the low (shift 0) or high (shift 4)
// nibbles of the 16 bytes v.
__device__ __forceinline__ int dot_nibbles(int4 v, int4 x, int shift, int acc) {
    acc = __dp4a((v.x >> shift) & 0x0F0F0F0F, x.x, acc);
    acc = __dp4a((v.y >> shift) & 0x0F0F0F0F, x.y, acc);
    acc = __dp4a((v.z >> shift) & 0x0F0F0F0F, x.z, acc);
    return __dp4a((v.w >> shift) & 0x0F0F0F0F, x.w, acc);
}

// Q4_K: 8 slices of 32 weights (16 low nibbles of sub-block 2j, 16 high of 2j+1).
struct Q4K {
    static constexpr int QK = 256, PARTS = 8, BYTES = 144;
    struct W {
        int4 v;
        float d0, d1, m;  // see k_scales
        int m0, m1;
    };
    __device__ static W load(const uint8_t* b, int p) {
        int j = p >> 1, h = p & 1;
        W w;
        w.v = *(const int4*)(b + 16 + 32 * j + 16 * h);
        k_scales(b, j, h, w);
        return w;
    }
    __device__ static float dot(const W& w, int p, const int8_t* xq, const float2* xds) {
        int j = p >> 1, h = p & 1;
        int4 xl = *(const int4*)(xq + 64 * j + 16 * h);
        int4 xh = *(const int4*)(xq + 64 * j + 32 + 16 * h);
        return k_sum(w, j, dot_nibbles(w.v, xl, 0, 0), dot_nibbles(w.v, xh, 4, 0), xds);
    }
};

// Q4_K for one token: 4 slices of 64 weights (the 32 low nibbles of sub-block 2j, the 32 high
// of 2j+1), so each header load and scale decode serves 32 bytes of weights. The several-token
// kernels take Q4K, whose smaller slices leave registers for more tokens.
struct Q4K64 {
    static constexpr int QK = 256, PARTS = 4, BYTES = 144;
    struct W {
        int4 a, b;
        float d0, d1, m;  // see k_scales
        int m0, m1;
    };
    __device__ static W load(const uint8_t* b, int p) {
        W w;
        w.a = *(const int4*)(b + 16 + 32 * p);
        w.b = *(const int4*)(b + 32 + 32 * p);
        k_scales16(b, p, 0, w);
        return w;
    }
    __device__ static float dot(const W& w, int p, const int8_t* xq, const float2* xds) {
        const int4* x = (const int4*)(xq + 64 * p);
        int4 l0 = x[0], l1 = x[1], h0 = x[2], h1 = x[3];
        int sl = dot_nibbles(w.b, l1, 0, dot_nibbles(w.a, l0, 0, 0));
        int sh = dot_nibbles(w.b, h1, 4, dot_nibbles(w.a, h0, 4, 0));
        return k_sum(w, p, sl, sh, xds);
    }
};

// Q5_K: Q4_K plus a fifth bit per weight in qh[32], merged into the nibbles at load.
struct Q5K {
    static constexpr int QK = 256, PARTS = 8, BYTES = 176;
    struct W {
        int lo[4], hi[4];
        float d0, d1, m;
        int m0, m1;
    };
    __device__ static W load(const uint8_t* b, int p) {
        int j = p >> 1, h = p & 1, s0 = 2 * j, s1 = 2 * j + 1;
        int4 v = *(const int4*)(b + 48 + 32 * j + 16 * h);
        int4 qh = *(const int4*)(b + 16 + 16 * h);
        const int vv[4] = {v.x, v.y, v.z, v.w}, hh[4] = {qh.x, qh.y, qh.z, qh.w};
        W w;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w.lo[i] = (vv[i] & 0x0F0F0F0F) | (((hh[i] >> s0) & 0x01010101) << 4);
            w.hi[i] = ((vv[i] >> 4) & 0x0F0F0F0F) | (((hh[i] >> s1) & 0x01010101) << 4);
        }
        k_scales(b, j, h, w);
        return w;
    }
    __device__ static float dot(const W& w, int p, const int8_t* xq, const float2* xds) {
        int j = p >> 1, h = p & 1;
        int4 xl = *(const int4*)(xq + 64 * j + 16 * h);
        int4 xh = *(const int4*)(xq + 64 * j + 32 + 16 * h);
        int sl = __dp4a(w.lo[0], xl.x, 0);
        sl = __dp4a(w.lo[1], xl.y, sl);
        sl = __dp4a(w.lo[2], xl.z, sl);
        sl = __dp4a(w.lo[3], xl.w, sl);
        int sh = __dp4a(w.hi[0], xh.x, 0);
        sh = __dp4a(w.hi[1], xh.y, sh);
        sh = __dp4a(w.hi[2], xh.z, sh);
        sh = __dp4a(w.hi[3], xh.w, sh);
        return k_sum(w, j, sl, sh, xds);
    }
};

// Q6_K: 16 slices of 16 weights, each under one int8 scale.
struct Q6K {
    static constexpr int QK = 256, PARTS = 16, BYTES = 210;
    struct W {
        int q[4];  // the 6-bit values, re-centred to signed bytes
        float d;   // d times the slice's scale
    };
    __device__ static W load(const uint8_t* b, int p) {
        int n = p >> 3, r = p & 7, g = r >> 1, hh = r & 1;
        const uint8_t* ql = b + 64 * n + (g & 1) * 32 + hh * 16;
        const uint8_t* qh = b + 128 + 32 * n + hh * 16;
        int shl = (g >> 1) * 4, shh = 2 * g;
        // ql and qh end at most 98 and 34 bytes before the block's end: room for ld16_a2.
        int lo[4], hi[4];
        ld16_a2(ql, lo);
        ld16_a2(qh, hi);
        W w;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int q = ((lo[i] >> shl) & 0x0F0F0F0F) | (((hi[i] >> shh) & 0x03030303) << 4);
            w.q[i] = (int)__vsubss4(q, 0x20202020);
        }
        w.d = f16_at(b + 208) * (int8_t)b[192 + 8 * n + hh + 2 * g];
        return w;
    }
    __device__ static float dot(const W& w, int p, const int8_t* xq, const float2* xds) {
        int n = p >> 3, g = (p & 7) >> 1, hh = p & 1;
        const int* x = (const int*)(xq + 128 * n + 32 * g + 16 * hh);
        int s = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) s = __dp4a(w.q[i], x[i], s);
        return w.d * xds[4 * n + g].x * s;
    }
};

// Q8_0: 2 slices of 16.
struct Q80 {
    static constexpr int QK = 32, PARTS = 2, BYTES = 34;
    struct W {
        int q[4];
        float d;
    };
    __device__ static W load(const uint8_t* b, int p) {
        W w;
#pragma unroll
        for (int i = 0; i < 4; i++) w.q[i] = ld2(b + 2 + 16 * p + 4 * i);
        w.d = f16_at(b);
        return w;
    }
    __device__ static float dot(const W& w, int p, const int8_t* xq, const float2* xds) {
        const int* x = (const int*)(xq + 16 * p);
        int s = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) s = __dp4a(w.q[i], x[i], s);
        return w.d * xds[0].x * s;
    }
};

// Q4_0 / Q4_1 / Q5_0 / Q5_1: one slice of 32 (16 bytes of nibbles).
template <int TYPE>
struct Legacy {
    static constexpr int QK = 32, PARTS = 1;
    static constexpr int BYTES = TYPE == T_Q4_0 ? 18 : TYPE == T_Q4_1 ? 20 : TYPE == T_Q5_0 ? 22 : 24;
    struct W {
        int lo[4], hi[4];
        float d, m;  // scale; the offset (Q4_1/Q5_1 min, or -8/-16 times the scale)
    };
    __device__ static W load(const uint8_t* b, int) {
        constexpr int QS = TYPE == T_Q4_0 ? 2 : TYPE == T_Q4_1 ? 4 : TYPE == T_Q5_0 ? 6 : 8;
        uint32_t qh = 0;
        if (TYPE == T_Q5_0) qh = (uint32_t)ld2(b + 2);
        if (TYPE == T_Q5_1) qh = (uint32_t)ld4(b + 4);
        W w;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int v = (TYPE == T_Q4_1 || TYPE == T_Q5_1) ? ld4(b + QS + 4 * i) : ld2(b + QS + 4 * i);
            w.lo[i] = v & 0x0F0F0F0F;
            w.hi[i] = (v >> 4) & 0x0F0F0F0F;
            if (TYPE == T_Q5_0 || TYPE == T_Q5_1) {
                w.lo[i] |= spread4(qh >> (4 * i));
                w.hi[i] |= spread4(qh >> (16 + 4 * i));
            }
        }
        w.d = f16_at(b);
        w.m = TYPE == T_Q4_0 ? -8.0f * w.d : TYPE == T_Q5_0 ? -16.0f * w.d : f16_at(b + 2);
        return w;
    }
    __device__ static float dot(const W& w, int, const int8_t* xq, const float2* xds) {
        const int* x = (const int*)xq;
        int s = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            s = __dp4a(w.lo[i], x[i], s);
            s = __dp4a(w.hi[i], x[4 + i], s);
        }
        float2 a = xds[0];
        return w.d * a.x * s + w.m * a.y;
    }
};
