// Warp and block reductions, and quantization of activations to int8 groups of 32.
#pragma once
#include <stdint.h>

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    float s = 0.f;
    for (int i = 0; i < nw; i++) s += part[i];
    return s;
}

__device__ __forceinline__ float block_max(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int i = 0; i < nw; i++) m = fmaxf(m, part[i]);
    return m;
}

// One warp quantizes the 32 values it holds (one per lane) to int8 with a shared scale, and
// records (scale, scale * sum of the int8 values) for the min/offset terms of the dot products.
__device__ __forceinline__ void quantize_group(float v, int8_t* q, float2* ds) {
    int lane = threadIdx.x & 31;
    float amax = warp_max(fabsf(v));
    float d = amax / 127.f;
    int qi = amax == 0.f ? 0 : __float2int_rn(v / d);
    float s = warp_sum((float)qi);
    q[lane] = (int8_t)qi;
    if (lane == 0) *ds = make_float2(d, d * s);
}

// Called by every thread of a block once its outputs are written: counts the block in *cnt and
// tells whether it is the last of the `total` blocks counted there (that one resets *cnt to 0 and
// can then read, through L2, everything the others wrote). Only thread 0 synchronizes with the
// device: its acquire-release add, after the barrier, orders the block's writes before it (a
// release is cumulative over what the barrier made visible to it), and the barrier after it
// hands the acquired view to the rest of the block. A __threadfence in every thread would do
// the same at many times the cost in these short blocks.
__device__ __forceinline__ bool block_finishes(int* cnt, int total) {
    __shared__ bool last;
    __syncthreads();
    if (threadIdx.x == 0) {
        int old;
        asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;" : "=r"(old) : "l"(cnt) : "memory");
        last = old == total - 1;
        if (last) *cnt = 0;
    }
    __syncthreads();
    return last;
}
