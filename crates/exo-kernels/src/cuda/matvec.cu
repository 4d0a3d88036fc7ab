// Weight-side kernels: quantized matrix-vector products for decode, dequantization to f16 for
// prefill GEMMs. Weights stay in their GGUF block layout.
#include "blocks.cuh"
#include "reduce.cuh"

// Rows per thread block in the quantized mat-vec: each thread's activation slice is read once
// and used against this many weight rows. Several tokens' activations cost more to load, so the
// several-token kernels share them over more rows.
#define MV_ROWS 2
#define MV_ROWS_N 4
// Most threads per block; the launch picks 64..MV_THREADS by the matrix's shape (cuda.rs).
#define MV_THREADS 256
// Most tokens one mat-vec launch takes: each weight block read is used against all of them.
#define MV_COLS 8

// y[c·ldy + row] (+)= W[row] · x_c for the ROWS rows of this block and the NC tokens x_c (int8
// rows of `cols`, one scale pair per 32). Thread slices walk the row block by block, so a warp
// reads consecutive bytes of a row; partial sums meet in shared memory. Each weight slice is
// loaded once and used for all NC tokens.
template <class T, int NC, int ROWS>
__device__ __forceinline__ void mv_q(const uint8_t* __restrict__ w, const int8_t* __restrict__ xq,
                                     const float2* __restrict__ xds, float* __restrict__ y, int rows,
                                     int cols, int accumulate, int ldy) {
    int row0 = blockIdx.x * ROWS;
    int nb = cols / T::QK;
    size_t row_bytes = (size_t)nb * T::BYTES;
    float acc[ROWS][NC];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) acc[r][c] = 0.f;
    int units = nb * T::PARTS;
    for (int u = threadIdx.x; u < units; u += blockDim.x) {
        int blk = u / T::PARTS, p = u % T::PARTS;
        // A block's rows past the matrix end re-read its last row (their sums are never
        // written), so no branch separates the rows' products and each token's activations
        // are loaded once for all of them.
        typename T::W wv[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++)
            wv[r] = T::load(w + (size_t)min(row0 + r, rows - 1) * row_bytes + (size_t)blk * T::BYTES, p);
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int8_t* xc = xq + (size_t)c * cols + (size_t)blk * T::QK;
            const float2* dc = xds + (size_t)c * (cols / 32) + (size_t)blk * (T::QK / 32);
#pragma unroll
            for (int r = 0; r < ROWS; r++) acc[r][c] += T::dot(wv[r], p, xc, dc);
        }
    }
    __shared__ float red[ROWS * NC][MV_THREADS / 32];
    int nw = blockDim.x >> 5;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) {
            float v = warp_sum(acc[r][c]);
            if (lane == 0) red[r * NC + c][warp] = v;
        }
    __syncthreads();
    if (threadIdx.x < ROWS * NC) {
        int r = threadIdx.x / NC, c = threadIdx.x % NC, row = row0 + r;
        if (row < rows) {
            float s = 0.f;
#pragma unroll
            for (int i = 0; i < nw; i++) s += red[threadIdx.x][i];
            float* out = y + (size_t)c * ldy + row;
            *out = accumulate ? *out + s : s;
        }
    }
}

// Two kernels per weight type: one token (decode) on slices of T1, and 2..MV_COLS tokens on
// slices of TN with the count picking the unrolled variant. Kept apart because a kernel's
// register budget is that of its largest variant, which would cut the occupancy of the
// one-token case.
#define MV_KERNEL(name, T1, TN)                                                                       \
    extern "C" __global__ void __launch_bounds__(MV_THREADS)                                          \
        name(const uint8_t* w, const int8_t* xq, const float2* xds, float* y, int rows, int cols,     \
             int accumulate, int, int ldy) {                                                          \
        mv_q<T1, 1, MV_ROWS>(w, xq, xds, y, rows, cols, accumulate, ldy);                             \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(MV_THREADS)                                          \
        name##_n(const uint8_t* w, const int8_t* xq, const float2* xds, float* y, int rows, int cols, \
                 int accumulate, int ncols, int ldy) {                                                \
        switch (ncols) {                                                                              \
            case 2: mv_q<TN, 2, MV_ROWS_N>(w, xq, xds, y, rows, cols, accumulate, ldy); break;        \
            case 3: mv_q<TN, 3, MV_ROWS_N>(w, xq, xds, y, rows, cols, accumulate, ldy); break;        \
            case 4: mv_q<TN, 4, MV_ROWS_N>(w, xq, xds, y, rows, cols, accumulate, ldy); break;        \
            case 5: mv_q<TN, 5, MV_ROWS_N>(w, xq, xds, y, rows, cols, accumulate, ldy); break;        \
            case 6: mv_q<TN, 6, MV_ROWS_N>(w, xq, xds, y, rows, cols, accumulate, ldy); break;        \
            case 7: mv_q<TN, 7, MV_ROWS_N>(w, xq, xds, y, rows, cols, accumulate, ldy); break;        \
            default: mv_q<TN, 8, MV_ROWS_N>(w, xq, xds, y, rows, cols, accumulate, ldy); break;       \
        }                                                                                             \
    }

MV_KERNEL(mv_q4_k, Q4K64, Q4K)
MV_KERNEL(mv_q5_k, Q5K, Q5K)
MV_KERNEL(mv_q6_k, Q6K, Q6K)
MV_KERNEL(mv_q8_0, Q80, Q80)
MV_KERNEL(mv_q4_0, Legacy<T_Q4_0>, Legacy<T_Q4_0>)
MV_KERNEL(mv_q4_1, Legacy<T_Q4_1>, Legacy<T_Q4_1>)
MV_KERNEL(mv_q5_0, Legacy<T_Q5_0>, Legacy<T_Q5_0>)
MV_KERNEL(mv_q5_1, Legacy<T_Q5_1>, Legacy<T_Q5_1>)

// Float weights (f32, f16, bf16) against f32 activations: one warp per row.
extern "C" __global__ void mv_float(int type, const uint8_t* w, const float* x, float* y, int rows, int cols,
                                    int accumulate) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    int es = type == T_F32 ? 4 : 2;
    const uint8_t* wr = w + (size_t)row * cols * es;
    float s = 0.f;
    for (int c = lane; c < cols; c += 32) s += deq(type, wr + (size_t)c * es, 0) * x[c];
    s = warp_sum(s);
    if (lane == 0) y[row] = accumulate ? y[row] + s : s;
}

// NF4 and FP8 weights against f32 activations: one warp per row, each lane a run of values
// through the format's level table (NF4) or decoding (FP8), in f32 as the CPU computes them.
extern "C" __global__ void mv_lut(int type, const uint8_t* w, const float* x, float* y, int rows, int cols,
                                  int accumulate) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const uint8_t* wr = w + (size_t)row * row_size(type, cols);
    float s = 0.f;
    if (type == T_NF4) {
        // A lane per pair of values: byte j of a block holds values 2j (low) and 2j+1 (high).
        for (int p = lane; p < cols / 2; p += 32) {
            const uint8_t* b = wr + (size_t)(p / 32) * 34;
            uint8_t q = b[2 + p % 32];
            s += f16_at(b) * (NF4_LEVELS[q & 0xF] * x[2 * p] + NF4_LEVELS[q >> 4] * x[2 * p + 1]);
        }
    } else {
        for (int c = lane; c < cols; c += 32) s += fp8_e4m3(wr[4 + c]) * x[c];
        s *= *(const float*)wr;
    }
    s = warp_sum(s);
    if (lane == 0) y[row] = accumulate ? y[row] + s : s;
}

// Values c0..c0+31 of a row (c0 a multiple of 32) widened to f32, the storage type known at
// compile time so that the block's scales are decoded once per group, not once per value.
template <int TYPE>
__device__ __forceinline__ void group32(const uint8_t* row, int c0, float* v) {
    if constexpr (TYPE == T_Q4_K || TYPE == T_Q5_K) {
        constexpr int BYTES = TYPE == T_Q4_K ? 144 : 176;
        const uint8_t* b = row + (size_t)(c0 / 256) * BYTES;
        int sub = (c0 % 256) / 32, j = sub >> 1, shift = 4 * (sub & 1);
        int sc, m;
        scale_min_k4(sub, b + 4, &sc, &m);
        float d = f16_at(b) * sc, mn = f16_at(b + 2) * m;
        // Both block sizes are multiples of 16 bytes, so the nibbles (and Q5_K's fifth bits)
        // load as 16-byte vectors.
        __align__(16) uint8_t qs[32], qh[32];
        const uint4* src = (const uint4*)(b + (TYPE == T_Q4_K ? 16 : 48) + 32 * j);
        ((uint4*)qs)[0] = src[0];
        ((uint4*)qs)[1] = src[1];
        if (TYPE == T_Q5_K) {
            ((uint4*)qh)[0] = ((const uint4*)(b + 16))[0];
            ((uint4*)qh)[1] = ((const uint4*)(b + 16))[1];
        }
#pragma unroll
        for (int i = 0; i < 32; i++) {
            int q = (qs[i] >> shift) & 0xF;
            if (TYPE == T_Q5_K) q |= ((qh[i] >> sub) & 1) << 4;
            v[i] = d * q - mn;
        }
    } else if constexpr (TYPE == T_Q6_K) {
        const uint8_t* b = row + (size_t)(c0 / 256) * 210;
        int n = (c0 % 256) >> 7, g = (c0 % 128) >> 5;
        float d = f16_at(b + 208);
        float s0 = d * (int8_t)b[192 + 8 * n + 2 * g], s1 = d * (int8_t)b[192 + 8 * n + 1 + 2 * g];
        const uint8_t* ql = b + 64 * n + (g & 1) * 32;
        const uint8_t* qh = b + 128 + 32 * n;
#pragma unroll
        for (int l = 0; l < 32; l++) {
            int q = ((ql[l] >> ((g >> 1) * 4)) & 0xF) | (((qh[l] >> (2 * g)) & 3) << 4);
            v[l] = (l < 16 ? s0 : s1) * (float)(q - 32);
        }
    } else if constexpr (TYPE == T_NF4) {
        const uint8_t* b = row + (size_t)(c0 / 64) * 34;
        float d = f16_at(b);
        const uint8_t* q = b + 2 + (c0 % 64) / 2;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            v[2 * i] = d * NF4_LEVELS[q[i] & 0xF];
            v[2 * i + 1] = d * NF4_LEVELS[q[i] >> 4];
        }
    } else if constexpr (TYPE == T_FP8) {
        // The FP8 rows' 4-byte scale leaves the codes unaligned for vector loads.
        float scale = *(const float*)row;
#pragma unroll
        for (int i = 0; i < 32; i++) v[i] = scale * fp8_e4m3(row[4 + c0 + i]);
    } else if constexpr (TYPE == T_Q8_0) {
        const uint8_t* b = row + (size_t)(c0 / 32) * 34;
        float d = f16_at(b);
#pragma unroll
        for (int i = 0; i < 32; i++) v[i] = d * (float)(int8_t)b[2 + i];
    } else {
        BlockInfo bi = block_info(TYPE);
#pragma unroll
        for (int i = 0; i < 32; i++) {
            int c = c0 + i;
            v[i] = deq(TYPE, row + (size_t)(c / bi.qk) * bi.bytes, c % bi.qk);
        }
    }
}

// One thread per 32 consecutive values (cols is a multiple of 32); the 64 bytes go out as four
// 16-byte stores.
template <int TYPE>
__device__ void dequant_rows(const uint8_t* w, int rows, int cols, __half* out) {
    size_t row_bytes = row_size(TYPE, cols);
    int per_row = cols / 32;
    size_t groups = (size_t)rows * per_row;
    for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (size_t)gridDim.x * blockDim.x) {
        size_t row = g / per_row;
        int c0 = (int)(g - row * per_row) * 32;
        float v[32];
        group32<TYPE>(w + row * row_bytes, c0, v);
        uint4* dst = (uint4*)(out + row * cols + c0);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            __align__(16) __half h[8];
#pragma unroll
            for (int i = 0; i < 8; i++) h[i] = __float2half(v[8 * k + i]);
            dst[k] = *(const uint4*)h;
        }
    }
}

// The whole rows × cols matrix to f16 (row-major), for a cuBLAS GEMM.
extern "C" __global__ void dequant_f16(int type, const uint8_t* w, int rows, int cols, __half* out) {
    switch (type) {
        case T_F32: dequant_rows<T_F32>(w, rows, cols, out); break;
        case T_F16: dequant_rows<T_F16>(w, rows, cols, out); break;
        case T_BF16: dequant_rows<T_BF16>(w, rows, cols, out); break;
        case T_Q4_0: dequant_rows<T_Q4_0>(w, rows, cols, out); break;
        case T_Q4_1: dequant_rows<T_Q4_1>(w, rows, cols, out); break;
        case T_Q5_0: dequant_rows<T_Q5_0>(w, rows, cols, out); break;
        case T_Q5_1: dequant_rows<T_Q5_1>(w, rows, cols, out); break;
        case T_Q8_0: dequant_rows<T_Q8_0>(w, rows, cols, out); break;
        case T_Q4_K: dequant_rows<T_Q4_K>(w, rows, cols, out); break;
        case T_Q5_K: dequant_rows<T_Q5_K>(w, rows, cols, out); break;
        case T_NF4: dequant_rows<T_NF4>(w, rows, cols, out); break;
        case T_FP8: dequant_rows<T_FP8>(w, rows, cols, out); break;
        default: dequant_rows<T_Q6_K>(w, rows, cols, out); break;
    }
}

// out[i] = (f16) x[i].
extern "C" __global__ void f32_to_f16(const float* x, __half* out, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2half(x[i]);
}
