/*
 * uvbench: the libuv C reference of AsyncUDP's benchmarks (implementation "c"): both ends of
 * every workload, written as a libuv 1.44 user would. Every socket reads with recvmmsg
 * (UV_UDP_RECVMMSG, a 20 x 64 KiB receive buffer) and replies with uv_udp_send from inside its
 * receive callback (libuv sends the first reply at once and the rest of the burst in sendmmsg
 * batches of up to 20).
 *
 * Servers print "ready PORT" once bound:
 *   uvbench serve                 echo server on 127.0.0.1:0; on stdin EOF prints
 *                                 {"cpu": seconds since ready, "peak_rss_kib"} and exits
 *   uvbench sink COUNT            receiver; counts datagrams until COUNT arrive or 300 ms pass
 *                                 without one; prints {"received", "seconds", "rate", "cpu", ...}
 *                                 (rate from the first to the last arrival)
 *   uvbench idle SOCKETS          opens SOCKETS bound handles; prints heap bytes per socket
 *
 * Clients print "ready PORT" once bound, then a JSON line with their own CPU seconds:
 *   uvbench flood PORT COUNT SIZE [FLOWS] sends COUNT datagrams of SIZE bytes as fast as it can
 *                                 (uv_udp_try_send, uv_udp_send when the kernel would block),
 *                                 round robin from FLOWS source sockets (default 1)
 *   uvbench window PORT COUNT WINDOW   keeps WINDOW 64-byte datagrams in flight until COUNT round
 *                                 trips are done; prints rate and p50/p99 round-trip µs
 *   uvbench pingpong PORT COUNT   the same as window with WINDOW 1
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
/* recvmmsg needs one 64 KiB chunk per message: libuv reads up to 20 at a time. */
static char recv_slab[20 * 65536];

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

/* The process's own peak RSS (VmHWM): getrusage's ru_maxrss survives execve, so it would report
   the parent's (run.py's) peak when that is higher. */
static long peak_rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kib = 0;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmHWM: %ld", &kib) == 1) break;
  if (f) fclose(f);
  return kib;
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
  /* The receive buffer is reused by the next read: copy the reply into the request. */
  echo_req *req = malloc(sizeof *req + (size_t)nread);
  memcpy(req->data, buf->base, (size_t)nread);
  uv_buf_t out = uv_buf_init(req->data, (unsigned)nread);
  if (uv_udp_send(&req->req, h, &out, 1, addr, echo_sent) < 0) free(req);
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

static void init_receiver(uv_udp_t *h) {
  uv_udp_init_ex(loop, h, AF_INET | UV_UDP_RECVMMSG);
  bind_loopback(h, 0);
  int size = 4 << 20;
  uv_recv_buffer_size((uv_handle_t *)h, &size);
}

static int cmd_serve(void) {
  init_receiver(&server);
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
static double sink_first, sink_last, sink_cpu_at_ready;
static uv_timer_t idle_timer;

static void sink_done(void) {
  double span = sink_last - sink_first;
  printf("{\"received\": %ld, \"seconds\": %.6f, \"rate\": %.1f, \"cpu\": %.6f, \"peak_rss_kib\": %ld, \"last_at\": %.6f}\n",
         sink_count, span, span > 0 ? (sink_count - 1) / span : 0.0, cpu_seconds() - sink_cpu_at_ready, peak_rss_kib(),
         sink_last);
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
  init_receiver(&server);
  uv_udp_recv_start(&server, alloc_cb, sink_recv);
  uv_timer_init(loop, &idle_timer);
  uv_timer_start(&idle_timer, sink_idle, 50, 50);
  sink_cpu_at_ready = cpu_seconds();
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

/* ---- clients -------------------------------------------------------------------------- */

static struct sockaddr_in target;
static uv_udp_t client;
static long gen_count, gen_sent, gen_done, gen_lost, gen_measured;
static double *rtt;
static double start_time, client_cpu_at_start;
static int gen_window;
static uv_timer_t gen_timer;

static void announce(uv_udp_t *h) {
  printf("ready %d\n", local_port(h));
  fflush(stdout);
}

/* One 64-byte datagram: its sequence number and its send time (echoed back by the server). */
static void gen_send_one(void) {
  echo_req *req = malloc(sizeof *req + 64);
  memset(req->data, 0, 64);
  double t = now_seconds();
  memcpy(req->data, &gen_sent, sizeof gen_sent);
  memcpy(req->data + 8, &t, sizeof t);
  uv_buf_t buf = uv_buf_init(req->data, 64);
  if (uv_udp_send(&req->req, &client, &buf, 1, (const struct sockaddr *)&target, echo_sent) < 0) free(req);
  gen_sent++;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void gen_finish(void) {
  double elapsed = now_seconds() - start_time;
  double p50 = 0, p99 = 0;
  if (gen_measured > 0) {
    qsort(rtt, (size_t)gen_measured, sizeof *rtt, cmp_double);
    p50 = rtt[gen_measured / 2] * 1e6;
    p99 = rtt[(long)(gen_measured * 0.99)] * 1e6;
  }
  printf("{\"round_trips\": %ld, \"lost\": %ld, \"seconds\": %.6f, \"rate\": %.1f, \"p50_us\": %.2f, \"p99_us\": %.2f, "
         "\"cpu\": %.6f}\n", gen_done, gen_lost, elapsed, (gen_done - gen_lost) / elapsed, p50, p99,
         cpu_seconds() - client_cpu_at_start);
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
  if (gen_measured < gen_count) rtt[gen_measured++] = now - sent_at;
  gen_done++;
  last_progress = last_answer = now;
  if (gen_done >= gen_count) { gen_finish(); return; }
  while (gen_sent < gen_count && gen_sent - gen_done < gen_window) gen_send_one();
}

static int cmd_window(int port, long count, int window) {
  uv_ip4_addr("127.0.0.1", port, &target);
  gen_count = count;
  gen_window = window;
  rtt = calloc((size_t)count, sizeof *rtt);
  init_receiver(&client);
  uv_udp_recv_start(&client, alloc_cb, gen_recv);
  uv_timer_init(loop, &gen_timer);
  uv_timer_start(&gen_timer, gen_watchdog, 100, 100);
  announce(&client);
  client_cpu_at_start = cpu_seconds();
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
  announce(&clients[0]);
  char *payload = calloc(1, (size_t)size);
  uv_buf_t buf = uv_buf_init(payload, (unsigned)size);
  double cpu0 = cpu_seconds(), t0 = now_seconds();
  long sent = 0;
  while (sent < count) {
    uv_udp_t *h = &clients[sent % flows];
    int r = uv_udp_try_send(h, &buf, 1, (const struct sockaddr *)&to);
    if (r == UV_EAGAIN) {
      /* The kernel would block: queue it, and let the loop send it when the socket is writable
         (uv_run returns once the queue is empty, the handle being idle again). */
      echo_req *req = malloc(sizeof *req);
      r = uv_udp_send(&req->req, h, &buf, 1, (const struct sockaddr *)&to, echo_sent);
      if (r == 0) uv_run(loop, UV_RUN_DEFAULT);
    }
    if (r < 0) { fprintf(stderr, "uvbench flood: %s\n", uv_strerror(r)); return 1; }
    sent++;
  }
  double elapsed = now_seconds() - t0;
  printf("{\"sent\": %ld, \"seconds\": %.6f, \"rate\": %.1f, \"cpu\": %.6f, \"start_at\": %.6f}\n", sent, elapsed,
         sent / elapsed, cpu_seconds() - cpu0, t0);
  return 0;
}

int main(int argc, char **argv) {
  loop = uv_default_loop();
  if (argc >= 2 && strcmp(argv[1], "serve") == 0) return cmd_serve();
  if (argc >= 3 && strcmp(argv[1], "sink") == 0) return cmd_sink(atol(argv[2]));
  if (argc >= 3 && strcmp(argv[1], "idle") == 0) return cmd_idle(atol(argv[2]));
  if (argc >= 5 && strcmp(argv[1], "flood") == 0) return cmd_flood(atoi(argv[2]), atol(argv[3]), atoi(argv[4]), argc >= 6 ? atoi(argv[5]) : 1);
  if (argc >= 4 && strcmp(argv[1], "pingpong") == 0) return cmd_window(atoi(argv[2]), atol(argv[3]), 1);
  if (argc >= 5 && strcmp(argv[1], "window") == 0) return cmd_window(atoi(argv[2]), atol(argv[3]), atoi(argv[4]));
  fprintf(stderr, "usage: uvbench serve | sink COUNT | idle SOCKETS | flood PORT COUNT SIZE [FLOWS] | pingpong PORT COUNT | window PORT COUNT WINDOW\n");
  return 2;
}
