/* The floor of a same-host request/response: a 64-byte ping-pong over a Unix
 * socket pair between two threads, blocking or busy-polling on either side.
 * BENCHMARKS.md section 4 uses it to show what a wake-up costs on this machine.
 *
 *   cc -O2 -pthread scripts/unix-pingpong.c -o /tmp/unix-pingpong
 *   /tmp/unix-pingpong CLIENT_SPIN SERVER_SPIN     (each 0 or 1)
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { ROUNDS = 20000, LEN = 64 };
static int sv[2];
static int client_spin, server_spin;

/* Reads exactly n bytes: blocking, or polling without sleeping. */
static void read_full(int fd, char *b, int n, int spin) {
  int got = 0;
  while (got < n) {
    ssize_t r = spin ? recv(fd, b + got, n - got, MSG_DONTWAIT) : read(fd, b + got, n - got);
    if (r > 0) {
      got += (int)r;
    } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
      perror("read");
      exit(1);
    }
  }
}

static void *server(void *arg) {
  (void)arg;
  char b[LEN];
  for (int i = 0; i < ROUNDS; i++) {
    read_full(sv[1], b, LEN, server_spin);
    if (write(sv[1], b, LEN) != LEN) exit(1);
  }
  return NULL;
}

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  client_spin = argc > 1 ? atoi(argv[1]) : 0;
  server_spin = argc > 2 ? atoi(argv[2]) : 0;
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 1;
  pthread_t t;
  pthread_create(&t, NULL, server, NULL);
  static double lat[ROUNDS];
  char b[LEN] = {0};
  for (int i = 0; i < ROUNDS; i++) {
    double s = now_us();
    if (write(sv[0], b, LEN) != LEN) return 1;
    read_full(sv[0], b, LEN, client_spin);
    lat[i] = now_us() - s;
  }
  pthread_join(t, NULL);
  qsort(lat, ROUNDS, sizeof lat[0], cmp);
  printf("client %s, server %s: p50 %.1f us, p99 %.1f us\n", client_spin ? "polls" : "blocks",
         server_spin ? "polls" : "blocks", lat[ROUNDS / 2], lat[ROUNDS * 99 / 100]);
  return 0;
}
