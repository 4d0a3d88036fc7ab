// The batch map: where each token of a forward call sits, in device memory (`io`, int32), written
// by the host before each call so that a captured graph replays for any positions and blocks.
//
//   io[0]               blocks per table row (the widest sequence's block count this call)
//   io[1]               offset of seq[] in io
//   io[2]               offset of the block tables in io
//   io[3]               tokens in the call
//   io[4 + i]           position of token i in its sequence
//   io[io[1] + i]       row of token i's sequence in the tables, plus MAP_TILED when a tiled
//                       prompt-attention launch (not the split kernels) handles its attention
//   io[io[2] + s·io[0] + b]
//                       KV block holding positions [16b, 16b + 16) of table row s
//
// The KV cache is paged like the CPU's: block b holds KV_BLOCK consecutive positions' rows, so a
// sequence's key j lives at cache row table[j / KV_BLOCK] · KV_BLOCK + j % KV_BLOCK.
#pragma once

#define KV_BLOCK 16
#define MAP_TILED (1 << 30)

__device__ __forceinline__ int map_pos(const int* io, int i) { return io[4 + i]; }

__device__ __forceinline__ bool map_tiled(const int* io, int i) { return (io[io[1] + i] & MAP_TILED) != 0; }

// The block table of token i's sequence.
__device__ __forceinline__ const int* map_table(const int* io, int i) {
    return io + io[2] + (size_t)(io[io[1] + i] & ~MAP_TILED) * io[0];
}

// Cache row of position j in a sequence with block table tab.
__device__ __forceinline__ size_t kv_row(const int* tab, int j) {
    return (size_t)tab[j / KV_BLOCK] * KV_BLOCK + (j % KV_BLOCK);
}
