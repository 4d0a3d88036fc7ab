// ggml block formats as GGUF stores them, read in place on the GPU.
//
// Two views of each format: `deq_*` widens one element (embedding rows, dequantize-to-f16 before a
// cuBLAS GEMM), and `dot_*` takes one slice of a block against activations quantized to int8 in
// groups of 32 (`xq`, with `xds[g] = (scale, scale * sum of the group's int8 values)`), four
// products per `dp4a`. Block sizes that are not a multiple of 4 bytes (Q4_0, Q5_0, Q8_0, Q6_K)
// leave words only 2-byte aligned, so those are read as two 16-bit halves.
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

__device__ __forceinline__ float f16_at(const uint8_t* p) {
    return __half2float(__ushort_as_half(*(const unsigned short*)p));
}

__device__ __forceinline__ int ld2(const uint8_t* p) {
    const uint16_t* h = (const uint16_t*)p;
    return (int)((uint32_t)h[0] | ((uint32_t)h[1] << 16));
}

__device__ __forceinline__ int ld4(const uint8_t* p) { return *(const int*)p; }

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

// Each dot_* returns the contribution of slice `p` (0..PARTS-1) of the block at b; `xq` points
// at the block's first activation, `xds` at its first group of 32.

// Q4_K: 8 slices of 32 weights (16 low nibbles of sub-block 2j, 16 high of 2j+1).
struct Q4K {
    static constexpr int QK = 256, PARTS = 8, BYTES = 144;
    __device__ static float dot(const uint8_t* b, int p, const int8_t* xq, const float2* xds) {
        int j = p >> 1, h = p & 1;
        int4 v = *(const int4*)(b + 16 + 32 * j + 16 * h);
        int4 xl = *(const int4*)(xq + 64 * j + 16 * h);
        int4 xh = *(const int4*)(xq + 64 * j + 32 + 16 * h);
        int sl = __dp4a(v.x & 0x0F0F0F0F, xl.x, 0);
        sl = __dp4a(v.y & 0x0F0F0F0F, xl.y, sl);
        sl = __dp4a(v.z & 0x0F0F0F0F, xl.z, sl);
        sl = __dp4a(v.w & 0x0F0F0F0F, xl.w, sl);
        int sh = __dp4a((v.x >> 4) & 0x0F0F0F0F, xh.x, 0);
        sh = __dp4a((v.y >> 4) & 0x0F0F0F0F, xh.y, sh);
        sh = __dp4a((v.z >> 4) & 0x0F0F0F0F, xh.z, sh);
        sh = __dp4a((v.w >> 4) & 0x0F0F0F0F, xh.w, sh);
        int sc0, m0, sc1, m1;
        scale_min_k4(2 * j, b + 4, &sc0, &m0);
        scale_min_k4(2 * j + 1, b + 4, &sc1, &m1);
        float2 a = xds[2 * j], c = xds[2 * j + 1];
        half2 dm = *(const half2*)b;
        float r = __low2float(dm) * (sc0 * a.x * sl + sc1 * c.x * sh);
        // The min term covers a whole group of 32: the h == 0 slice adds it for both halves.
        if (h == 0) r -= __high2float(dm) * (m0 * a.y + m1 * c.y);
        return r;
    }
};

// Q5_K: Q4_K plus a fifth bit per weight in qh[32].
struct Q5K {
    static constexpr int QK = 256, PARTS = 8, BYTES = 176;
    __device__ static float dot(const uint8_t* b, int p, const int8_t* xq, const float2* xds) {
        int j = p >> 1, h = p & 1;
        int4 v = *(const int4*)(b + 48 + 32 * j + 16 * h);
        int4 qh = *(const int4*)(b + 16 + 16 * h);
        int4 xl = *(const int4*)(xq + 64 * j + 16 * h);
        int4 xh = *(const int4*)(xq + 64 * j + 32 + 16 * h);
        int s0 = 2 * j, s1 = 2 * j + 1;
#define Q5K_LO(vv, hh) (((vv) & 0x0F0F0F0F) | ((((hh) >> s0) & 0x01010101) << 4))
#define Q5K_HI(vv, hh) ((((vv) >> 4) & 0x0F0F0F0F) | ((((hh) >> s1) & 0x01010101) << 4))
        int sl = __dp4a(Q5K_LO(v.x, qh.x), xl.x, 0);
        sl = __dp4a(Q5K_LO(v.y, qh.y), xl.y, sl);
        sl = __dp4a(Q5K_LO(v.z, qh.z), xl.z, sl);
        sl = __dp4a(Q5K_LO(v.w, qh.w), xl.w, sl);
        int sh = __dp4a(Q5K_HI(v.x, qh.x), xh.x, 0);
        sh = __dp4a(Q5K_HI(v.y, qh.y), xh.y, sh);
        sh = __dp4a(Q5K_HI(v.z, qh.z), xh.z, sh);
        sh = __dp4a(Q5K_HI(v.w, qh.w), xh.w, sh);
#undef Q5K_LO
#undef Q5K_HI
        int sc0, m0, sc1, m1;
        scale_min_k4(s0, b + 4, &sc0, &m0);
        scale_min_k4(s1, b + 4, &sc1, &m1);
        float2 a = xds[s0], c = xds[s1];
        half2 dm = *(const half2*)b;
        float r = __low2float(dm) * (sc0 * a.x * sl + sc1 * c.x * sh);
        if (h == 0) r -= __high2float(dm) * (m0 * a.y + m1 * c.y);
        return r;
    }
};

// Q6_K: 16 slices of 16 weights, each under one int8 scale.
struct Q6K {
    static constexpr int QK = 256, PARTS = 16, BYTES = 210;
    __device__ static float dot(const uint8_t* b, int p, const int8_t* xq, const float2* xds) {
        int n = p >> 3, r = p & 7, g = r >> 1, hh = r & 1;
        const uint8_t* ql = b + 64 * n + (g & 1) * 32 + hh * 16;
        const uint8_t* qh = b + 128 + 32 * n + hh * 16;
        const int* x = (const int*)(xq + 128 * n + 32 * g + 16 * hh);
        int shl = (g >> 1) * 4, shh = 2 * g, s = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int q = ((ld2(ql + 4 * i) >> shl) & 0x0F0F0F0F) | (((ld2(qh + 4 * i) >> shh) & 0x03030303) << 4);
            s = __dp4a((int)__vsubss4(q, 0x20202020), x[i], s);
        }
        int sc = (int8_t)b[192 + 8 * n + hh + 2 * g];
        return f16_at(b + 208) * sc * xds[4 * n + g].x * s;
    }
};

// Q8_0: 2 slices of 16.
struct Q80 {
    static constexpr int QK = 32, PARTS = 2, BYTES = 34;
    __device__ static float dot(const uint8_t* b, int p, const int8_t* xq, const float2* xds) {
        const int* x = (const int*)(xq + 16 * p);
        int s = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) s = __dp4a(ld2(b + 2 + 16 * p + 4 * i), x[i], s);
        return f16_at(b) * xds[0].x * s;
    }
};

// Q4_0 / Q4_1 / Q5_0 / Q5_1: one slice of 32 (16 bytes of nibbles).
template <int TYPE>
struct Legacy {
    static constexpr int QK = 32, PARTS = 1;
    static constexpr int BYTES = TYPE == T_Q4_0 ? 18 : TYPE == T_Q4_1 ? 20 : TYPE == T_Q5_0 ? 22 : 24;
    __device__ static float dot(const uint8_t* b, int, const int8_t* xq, const float2* xds) {
        constexpr int QS = TYPE == T_Q4_0 ? 2 : TYPE == T_Q4_1 ? 4 : TYPE == T_Q5_0 ? 6 : 8;
        const int* x = (const int*)xq;
        uint32_t qh = 0;
        if (TYPE == T_Q5_0) qh = (uint32_t)ld2(b + 2);
        if (TYPE == T_Q5_1) qh = (uint32_t)ld4(b + 4);
        int s = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int v = (TYPE == T_Q4_1 || TYPE == T_Q5_1) ? ld4(b + QS + 4 * i) : ld2(b + QS + 4 * i);
            int lo = v & 0x0F0F0F0F, hi = (v >> 4) & 0x0F0F0F0F;
            if (TYPE == T_Q5_0 || TYPE == T_Q5_1) {
                lo |= spread4(qh >> (4 * i));
                hi |= spread4(qh >> (16 + 4 * i));
            }
            s = __dp4a(lo, x[i], s);
            s = __dp4a(hi, x[4 + i], s);
        }
        float d = f16_at(b);
        float2 a = xds[0];
        if (TYPE == T_Q4_0) return d * (a.x * s - 8.0f * a.y);
        if (TYPE == T_Q5_0) return d * (a.x * s - 16.0f * a.y);
        return d * a.x * s + f16_at(b + 2) * a.y;
    }
};
