// Host-side stand-ins for the few CUDA types and intrinsics blocks.cuh uses, so check.py can
// compile the block decoders with g++ and compare them with the gguf package on any machine.
#pragma once
#include <stdint.h>
#include <string.h>
#include <math.h>
#define __device__
#define __forceinline__ inline
struct __half { uint16_t x; };
struct half2 { __half a, b; };
static inline float h2f(uint16_t h) {
  uint32_t s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023; float v;
  if (e == 0) v = ldexpf((float)m, -24); else if (e == 31) v = m ? NAN : INFINITY; else v = ldexpf((float)(m | 1024), (int)e - 25);
  return s ? -v : v; }
static inline __half __ushort_as_half(unsigned short x) { __half h; h.x = x; return h; }
static inline float __half2float(__half h) { return h2f(h.x); }
static inline float __low2float(half2 h) { return h2f(h.a.x); }
static inline float __high2float(half2 h) { return h2f(h.b.x); }
struct int4 { int x, y, z, w; };
struct float2 { float x, y; };
static inline int __dp4a(int a, int b, int c) { for (int i = 0; i < 4; i++) c += (int8_t)(a >> (8*i)) * (int8_t)(b >> (8*i)); return c; }
static inline unsigned __vsubss4(int a, int b) { unsigned r = 0; for (int i = 0; i < 4; i++) { int v = (int8_t)(a >> (8*i)) - (int8_t)(b >> (8*i)); v = v < -128 ? -128 : v > 127 ? 127 : v; r |= (unsigned)(uint8_t)v << (8*i);} return r; }
