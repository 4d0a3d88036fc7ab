// Runs blocks.cuh's decoders on the host: argv = type id, block file, element count, output file.
// Writes every dequantized element, and prints the float dot product with test activations, the
// same with int8-rounded activations, and the sum of the dp4a slice kernels (must equal the second).
#include "../../../crates/exo-kernels/src/cuda/blocks.cuh"
#include <stdio.h>
#include <stdlib.h>
#include <vector>
// stdin: type id, n_blocks; then raw block bytes. stdout: deq values then dot results
template <class T> double dotall(const uint8_t* w, int nb, const int8_t* xq, const float2* xds) {
  double s = 0; for (int b = 0; b < nb; b++) for (int p = 0; p < T::PARTS; p++) s += T::dot(w + (size_t)b*T::BYTES, p, xq + b*T::QK, xds + b*T::QK/32); return s; }
int main(int argc, char** argv) {
  int type = atoi(argv[1]); const char* path = argv[2]; int n = atoi(argv[3]);
  FILE* f = fopen(path, "rb"); std::vector<uint8_t> w(1<<24); size_t len = fread(w.data(), 1, w.size(), f); fclose(f);
  BlockInfo bi = block_info(type); int nb = n / bi.qk;
  std::vector<float> y(n); for (int i = 0; i < n; i++) y[i] = deq(type, w.data() + (size_t)(i/bi.qk)*bi.bytes, i % bi.qk);
  // activations: x_i = sin(i); quantize in groups of 32
  std::vector<int8_t> xq(n); std::vector<float2> ds(n/32); std::vector<float> x(n);
  for (int i = 0; i < n; i++) x[i] = sinf(0.37f*i) * (1 + (i % 7));
  for (int g = 0; g < n/32; g++) { float am = 0; for (int l = 0; l < 32; l++) am = fmaxf(am, fabsf(x[g*32+l])); float d = am/127; int s = 0; for (int l=0;l<32;l++){ int q = (int)lrintf(x[g*32+l]/d); xq[g*32+l]=q; s+=q;} ds[g] = {d, d*s}; }
  double ref = 0, refq = 0; for (int i = 0; i < n; i++) { ref += (double)y[i]*x[i]; refq += (double)y[i]*xq[i]*ds[i/32].x; }
  double got = 0;
  switch (type) { case T_Q4_K: got = dotall<Q4K>(w.data(), nb, xq.data(), ds.data()); break; case T_Q5_K: got = dotall<Q5K>(w.data(), nb, xq.data(), ds.data()); break;
    case T_Q6_K: got = dotall<Q6K>(w.data(), nb, xq.data(), ds.data()); break; case T_Q8_0: got = dotall<Q80>(w.data(), nb, xq.data(), ds.data()); break;
    case T_Q4_0: got = dotall<Legacy<T_Q4_0>>(w.data(), nb, xq.data(), ds.data()); break; case T_Q4_1: got = dotall<Legacy<T_Q4_1>>(w.data(), nb, xq.data(), ds.data()); break;
    case T_Q5_0: got = dotall<Legacy<T_Q5_0>>(w.data(), nb, xq.data(), ds.data()); break; case T_Q5_1: got = dotall<Legacy<T_Q5_1>>(w.data(), nb, xq.data(), ds.data()); break; }
  FILE* o = fopen(argv[4], "wb"); fwrite(y.data(), 4, n, o); fclose(o);
  printf("dot_ref %.6g dot_q8ref %.6g dot_kernel %.6g\n", ref, refq, got);
}
