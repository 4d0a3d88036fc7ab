// bf16 stand-in for blocks.cuh on the host (see cuda_fp16.h).
#pragma once
struct __nv_bfloat16 { uint16_t x; };
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { __nv_bfloat16 b; b.x = x; return b; }
static inline float __bfloat162float(__nv_bfloat16 b) { uint32_t u = (uint32_t)b.x << 16; float f; memcpy(&f, &u, 4); return f; }
