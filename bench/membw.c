/* Memory read bandwidth with N threads: the ceiling for token generation, which reads every
 * weight once per token. Each thread sums its share of a buffer far larger than the caches;
 * prints the best of REPS passes in GB/s.
 *
 *   gcc -O3 -march=native -pthread bench/membw.c -o membw && ./membw THREADS [MiB] [REPS]
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t *buf;
static size_t words;
static int threads;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *sum_share(void *arg) {
  size_t id = (size_t)arg, share = words / threads;
  const uint64_t *p = buf + id * share;
  /* Eight independent sums so the loop is bound by loads, not by one add chain; -O3 vectorises. */
  uint64_t s[8] = {0};
  for (size_t i = 0; i + 8 <= share; i += 8)
    for (int j = 0; j < 8; j++) s[j] += p[i + j];
  uint64_t total = 0;
  for (int j = 0; j < 8; j++) total += s[j];
  return (void *)(uintptr_t)total;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s THREADS [MiB] [REPS]\n", argv[0]);
    return 2;
  }
  threads = atoi(argv[1]);
  size_t mib = argc > 2 ? strtoul(argv[2], 0, 10) : 1024;
  int reps = argc > 3 ? atoi(argv[3]) : 10;
  if (threads < 1 || threads > 256 || mib < 64 || reps < 1) {
    fprintf(stderr, "need 1 <= THREADS <= 256, MiB >= 64, REPS >= 1\n");
    return 2;
  }
  words = mib * (1 << 20) / sizeof(uint64_t);
  buf = aligned_alloc(4096, words * sizeof(uint64_t));
  if (!buf) {
    fprintf(stderr, "cannot allocate %zu MiB\n", mib);
    return 1;
  }
  /* Touch every page first, so the passes measure reads and not page faults. */
  memset(buf, 1, words * sizeof(uint64_t));
  double best = 0;
  uintptr_t sink = 0;
  pthread_t th[256];
  for (int r = 0; r < reps; r++) {
    double t = now();
    for (int i = 0; i < threads; i++) pthread_create(&th[i], 0, sum_share, (void *)(size_t)i);
    for (int i = 0; i < threads; i++) {
      void *v;
      pthread_join(th[i], &v);
      sink += (uintptr_t)v;
    }
    double gbs = words * sizeof(uint64_t) / (now() - t) / 1e9;
    if (gbs > best) best = gbs;
  }
  printf("%.2f\n", best);
  return sink == 1; /* keeps the sums live */
}
