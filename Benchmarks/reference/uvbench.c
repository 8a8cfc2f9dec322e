/*
 * uvbench: the raw libuv C reference and the load generator for AsyncUDP's benchmarks.
 *
 * Reference implementations (what AsyncUDP is compared against), idiomatic libuv 1.44:
 *   uvbench serve                 echo server on 127.0.0.1:0; prints "ready PORT"; on stdin EOF
 *                                 prints a JSON line with its CPU seconds and exits
 *   uvbench sink COUNT            receiver on 127.0.0.1:0; prints "ready PORT"; counts datagrams
 *                                 until COUNT arrive or 300 ms pass without one; prints JSON
 *   uvbench idle SOCKETS          opens SOCKETS bound handles; prints heap bytes per socket
 *
 * Load generators (the same for every implementation):
 *   uvbench flood PORT COUNT SIZE [FLOWS] sends COUNT datagrams of SIZE bytes as fast as it can,
 *                                         round robin from FLOWS source sockets (default 1)
 *   uvbench pingpong PORT COUNT           one 64-byte datagram in flight; prints p50/p99 µs
 *   uvbench window PORT COUNT WINDOW      WINDOW datagrams in flight; prints round trips/s
 *
 * Built by Benchmarks/run.sh with the system compiler: cc -O2 uvbench.c -luv
 */
#include <uv.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static uv_loop_t *loop;
static char recv_slab[65536];

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static long peak_rss_kib(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h; (void)suggested;
  buf->base = recv_slab;
  buf->len = sizeof recv_slab;
}

static int bind_loopback(uv_udp_t *h, int port) {
  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", port, &addr);
  return uv_udp_bind(h, (const struct sockaddr *)&addr, 0);
}

static int local_port(uv_udp_t *h) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  uv_udp_getsockname(h, (struct sockaddr *)&ss, &len);
  return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* ---- serve ---------------------------------------------------------------------------- */

typedef struct { uv_udp_send_t req; char data[]; } echo_req;

static void echo_sent(uv_udp_send_t *req, int status) { (void)status; free(req); }

static void echo_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *addr, unsigned flags) {
  (void)flags;
  if (nread < 0 || addr == NULL) return;
  uv_buf_t out = uv_buf_init(buf->base, (unsigned)nread);
  /* Try-send first, queue when the kernel would block or libuv has a queue: as AsyncUDP does. */
  int r = uv_udp_try_send(h, &out, 1, addr);
  if (r >= 0) return;
  echo_req *req = malloc(sizeof *req + (size_t)nread);
  memcpy(req->data, buf->base, (size_t)nread);
  out = uv_buf_init(req->data, (unsigned)nread);
  uv_udp_send(&req->req, h, &out, 1, addr, echo_sent);
}

static uv_udp_t server;
static double cpu_at_ready;
static uv_pipe_t stdin_pipe;
static char stdin_buf[64];

static void stdin_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) { (void)h; (void)s; b->base = stdin_buf; b->len = sizeof stdin_buf; }
static void stdin_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  if (n >= 0) return;
  printf("{\"cpu\": %.6f, \"peak_rss_kib\": %ld}\n", cpu_seconds() - cpu_at_ready, peak_rss_kib());
  fflush(stdout);
  uv_close((uv_handle_t *)s, NULL);
  uv_close((uv_handle_t *)&server, NULL);
}

static void watch_stdin(void) {
  uv_pipe_init(loop, &stdin_pipe, 0);
  uv_pipe_open(&stdin_pipe, 0);
  uv_read_start((uv_stream_t *)&stdin_pipe, stdin_alloc, stdin_read);
}

static int cmd_serve(void) {
  uv_udp_init(loop, &server);
  bind_loopback(&server, 0);
  uv_udp_recv_start(&server, alloc_cb, echo_recv);
  watch_stdin();
  cpu_at_ready = cpu_seconds();
  printf("ready %d\n", local_port(&server));
  fflush(stdout);
  return uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- sink ----------------------------------------------------------------------------- */

static long sink_expected, sink_count;
static double sink_first, sink_last;
static uv_timer_t idle_timer;

static void sink_done(void) {
  double span = sink_last - sink_first;
  printf("{\"received\": %ld, \"seconds\": %.6f, \"rate\": %.1f, \"peak_rss_kib\": %ld}\n", sink_count, span,
         span > 0 ? (sink_count - 1) / span : 0.0, peak_rss_kib());
  fflush(stdout);
  uv_close((uv_handle_t *)&server, NULL);
  uv_close((uv_handle_t *)&idle_timer, NULL);
}

static void sink_idle(uv_timer_t *t) {
  (void)t;
  if (sink_count > 0 && now_seconds() - sink_last > 0.3) sink_done();
}

static void sink_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *addr, unsigned flags) {
  (void)h; (void)buf; (void)flags;
  if (nread < 0 || addr == NULL) return;
  double t = now_seconds();
  if (sink_count == 0) sink_first = t;
  sink_last = t;
  if (++sink_count == sink_expected) sink_done();
}

static int cmd_sink(long count) {
  sink_expected = count;
  uv_udp_init(loop, &server);
  bind_loopback(&server, 0);
  int size = 4 << 20;
  uv_recv_buffer_size((uv_handle_t *)&server, &size);
  uv_udp_recv_start(&server, alloc_cb, sink_recv);
  uv_timer_init(loop, &idle_timer);
  uv_timer_start(&idle_timer, sink_idle, 50, 50);
  printf("ready %d\n", local_port(&server));
  fflush(stdout);
  return uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- idle ----------------------------------------------------------------------------- */

static int cmd_idle(long sockets) {
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  uv_udp_t **handles = calloc((size_t)sockets, sizeof *handles);
  size_t before = mallinfo2().uordblks;
  for (long i = 0; i < sockets; i++) {
    handles[i] = malloc(sizeof(uv_udp_t));
    uv_udp_init(loop, handles[i]);
    if (bind_loopback(handles[i], 0) != 0) { fprintf(stderr, "bind failed at %ld\n", i); return 1; }
    uv_udp_recv_start(handles[i], alloc_cb, echo_recv);
  }
  uv_run(loop, UV_RUN_NOWAIT);
  size_t after = mallinfo2().uordblks;
  printf("{\"sockets\": %ld, \"bytes_per_socket\": %.1f}\n", sockets, (double)(after - before) / sockets);
  return 0;
}

/* ---- load generators ------------------------------------------------------------------ */

static struct sockaddr_in target;
static uv_udp_t client;
static long gen_count, gen_sent, gen_done, gen_lost, gen_measured;
static double *rtt;
static double start_time;
static int gen_window;
static uv_timer_t gen_timer;

static void gen_send_one(void) {
  char payload[64];
  memset(payload, 0, sizeof payload);
  double t = now_seconds();
  memcpy(payload, &gen_sent, sizeof gen_sent);
  memcpy(payload + 8, &t, sizeof t);
  uv_buf_t buf = uv_buf_init(payload, sizeof payload);
  if (uv_udp_try_send(&client, &buf, 1, (const struct sockaddr *)&target) < 0) {
    echo_req *req = malloc(sizeof *req + sizeof payload);
    memcpy(req->data, payload, sizeof payload);
    buf = uv_buf_init(req->data, sizeof payload);
    uv_udp_send(&req->req, &client, &buf, 1, (const struct sockaddr *)&target, echo_sent);
  }
  gen_sent++;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void gen_finish(void) {
  double elapsed = now_seconds() - start_time;
  if (rtt) {
    qsort(rtt, (size_t)gen_measured, sizeof *rtt, cmp_double);
    printf("{\"round_trips\": %ld, \"lost\": %ld, \"seconds\": %.6f, \"p50_us\": %.2f, \"p99_us\": %.2f, \"rate\": %.1f}\n", gen_done, gen_lost,
           elapsed, rtt[gen_measured / 2] * 1e6, rtt[(long)(gen_measured * 0.99)] * 1e6, gen_done / elapsed);
  } else {
    printf("{\"round_trips\": %ld, \"lost\": %ld, \"seconds\": %.6f, \"rate\": %.1f}\n", gen_done, gen_lost, elapsed, gen_done / elapsed);
  }
  fflush(stdout);
  uv_close((uv_handle_t *)&client, NULL);
  uv_close((uv_handle_t *)&gen_timer, NULL);
}

static double last_progress, last_answer;
static void gen_watchdog(uv_timer_t *t) {
  (void)t;
  if (now_seconds() - last_answer > 3.0) {
    fprintf(stderr, "uvbench: no answer from 127.0.0.1:%d for 3 s; giving up\n", ntohs(target.sin_port));
    exit(1);
  }
  /* A datagram lost on loopback (rare) must not stall the run: refill the window. */
  if (now_seconds() - last_progress > 0.2 && gen_done < gen_count) {
    long missing = gen_sent - gen_done;
    gen_done += missing; /* given up on: reported as "lost" */
    gen_lost += missing;
    if (gen_done >= gen_count) { gen_finish(); return; }
    while (gen_sent < gen_count && gen_sent - gen_done < gen_window) gen_send_one();
    last_progress = now_seconds();
  }
}

static void gen_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *addr, unsigned flags) {
  (void)h; (void)flags;
  if (nread < 16 || addr == NULL) return;
  double sent_at;
  memcpy(&sent_at, buf->base + 8, sizeof sent_at);
  double now = now_seconds();
  if (rtt) rtt[gen_measured++] = now - sent_at;
  gen_done++;
  last_progress = last_answer = now;
  if (gen_done >= gen_count) { gen_finish(); return; }
  while (gen_sent < gen_count && gen_sent - gen_done < gen_window) gen_send_one();
}

static int cmd_generate(int port, long count, int window, int record) {
  uv_ip4_addr("127.0.0.1", port, &target);
  gen_count = count;
  gen_window = window;
  if (record) rtt = calloc((size_t)count, sizeof *rtt);
  uv_udp_init(loop, &client);
  bind_loopback(&client, 0);
  uv_udp_recv_start(&client, alloc_cb, gen_recv);
  uv_timer_init(loop, &gen_timer);
  uv_timer_start(&gen_timer, gen_watchdog, 100, 100);
  start_time = last_progress = last_answer = now_seconds();
  for (int i = 0; i < window && gen_sent < count; i++) gen_send_one();
  return uv_run(loop, UV_RUN_DEFAULT);
}

static int cmd_flood(int port, long count, int size, int flows) {
  struct sockaddr_in to;
  uv_ip4_addr("127.0.0.1", port, &to);
  if (flows < 1) flows = 1;
  uv_udp_t *clients = calloc((size_t)flows, sizeof *clients);
  for (int i = 0; i < flows; i++) {
    uv_udp_init(loop, &clients[i]);
    bind_loopback(&clients[i], 0);
  }
  char *payload = calloc(1, (size_t)size);
  uv_buf_t buf = uv_buf_init(payload, (unsigned)size);
  double t0 = now_seconds();
  long sent = 0;
  while (sent < count) {
    int r = uv_udp_try_send(&clients[sent % flows], &buf, 1, (const struct sockaddr *)&to);
    if (r >= 0) sent++;
  }
  double elapsed = now_seconds() - t0;
  printf("{\"sent\": %ld, \"seconds\": %.6f, \"rate\": %.1f}\n", sent, elapsed, sent / elapsed);
  return 0;
}

int main(int argc, char **argv) {
  loop = uv_default_loop();
  if (argc >= 2 && strcmp(argv[1], "serve") == 0) return cmd_serve();
  if (argc >= 3 && strcmp(argv[1], "sink") == 0) return cmd_sink(atol(argv[2]));
  if (argc >= 3 && strcmp(argv[1], "idle") == 0) return cmd_idle(atol(argv[2]));
  if (argc >= 5 && strcmp(argv[1], "flood") == 0) return cmd_flood(atoi(argv[2]), atol(argv[3]), atoi(argv[4]), argc >= 6 ? atoi(argv[5]) : 1);
  if (argc >= 4 && strcmp(argv[1], "pingpong") == 0) return cmd_generate(atoi(argv[2]), atol(argv[3]), 1, 1);
  if (argc >= 5 && strcmp(argv[1], "window") == 0) return cmd_generate(atoi(argv[2]), atol(argv[3]), atoi(argv[4]), 0);
  fprintf(stderr, "usage: uvbench serve | sink COUNT | idle SOCKETS | flood PORT COUNT SIZE [FLOWS] | pingpong PORT COUNT | window PORT COUNT WINDOW\n");
  return 2;
}
