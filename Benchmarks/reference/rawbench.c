/*
 * rawbench: the "rawmmsg" reference of AsyncUDP's benchmarks: both ends of every workload with
 * plain non-blocking sockets, epoll, recvmmsg and sendmmsg (64 datagrams per call), no libuv.
 * It shows what the kernel allows when nothing stands between the program and the system calls.
 * The command line and the JSON lines are those of uvbench.c:
 *
 *   rawbench serve | sink COUNT | idle SOCKETS
 *   rawbench flood PORT COUNT SIZE | window PORT COUNT WINDOW | pingpong PORT COUNT
 *
 * W4 (bulk transfer with offloads; the "rawgso" reference):
 *   rawbench grosink COUNT        sink with UDP_GRO: counts the datagrams each buffer carries
 *                                 (from its UDP_GRO segment size) and their payload bytes
 *   rawbench gsoflood PORT COUNT SIZE SEGMENTS   sends COUNT datagrams of SIZE bytes as buffers of
 *                                 SEGMENTS datagrams each with UDP_SEGMENT (sendmmsg, 64 per call)
 *
 * Built by Benchmarks/run.sh with the system compiler: cc -O2 rawbench.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define SLOT 65536

static char recv_bufs[BATCH][SLOT];
static struct iovec recv_iov[BATCH];
static struct sockaddr_in peers[BATCH];
static struct mmsghdr recv_msgs[BATCH];

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

static void die(const char *what) {
  perror(what);
  exit(1);
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

/* A non-blocking socket bound to 127.0.0.1:0 with a 4 MiB receive buffer; prints "ready PORT". */
static int open_socket(int announce) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  if (fd < 0) die("socket");
  struct sockaddr_in a = loopback(0);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  int size = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  if (announce) {
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    printf("ready %d\n", ntohs(a.sin_port));
    fflush(stdout);
  }
  return fd;
}

static int epoll_for(int fd) {
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
  return ep;
}

/* Up to BATCH datagrams, without waiting; 0 when none is queued. */
static int receive_batch(int fd) {
  for (int k = 0; k < BATCH; k++) {
    recv_iov[k].iov_base = recv_bufs[k];
    recv_iov[k].iov_len = SLOT;
    memset(&recv_msgs[k].msg_hdr, 0, sizeof recv_msgs[k].msg_hdr);
    recv_msgs[k].msg_hdr.msg_iov = &recv_iov[k];
    recv_msgs[k].msg_hdr.msg_iovlen = 1;
    recv_msgs[k].msg_hdr.msg_name = &peers[k];
    recv_msgs[k].msg_hdr.msg_namelen = sizeof peers[k];
  }
  int n = recvmmsg(fd, recv_msgs, BATCH, MSG_DONTWAIT, NULL);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
    die("recvmmsg");
  }
  return n;
}

/* Sends all n messages, waiting for the socket to be writable when the kernel would block. */
static void send_all(int fd, struct mmsghdr *msgs, int n) {
  int off = 0;
  while (off < n) {
    int r = sendmmsg(fd, msgs + off, (unsigned)(n - off), 0);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        poll(&p, 1, 10);
        continue;
      }
      if (errno == EINTR) continue;
      die("sendmmsg");
    }
    off += r;
  }
}

/* ---- serve ---------------------------------------------------------------------------- */

static int cmd_serve(void) {
  int fd = open_socket(0);
  int ep = epoll_for(fd);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = 0};
  epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
  double cpu0 = cpu_seconds();
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  printf("ready %d\n", ntohs(a.sin_port));
  fflush(stdout);
  for (;;) {
    struct epoll_event events[2];
    int n = epoll_wait(ep, events, 2, -1);
    for (int i = 0; i < n; i++) {
      if (events[i].data.fd == 0) {
        char b[64];
        if (read(0, b, sizeof b) <= 0) {
          printf("{\"cpu\": %.6f, \"peak_rss_kib\": %ld}\n", cpu_seconds() - cpu0, peak_rss_kib());
          return 0;
        }
        continue;
      }
      int got;
      while ((got = receive_batch(fd)) > 0) {
        for (int k = 0; k < got; k++) recv_iov[k].iov_len = recv_msgs[k].msg_len; /* echo what came */
        send_all(fd, recv_msgs, got);
      }
    }
  }
}

/* ---- sink ----------------------------------------------------------------------------- */

static int cmd_sink(long expected) {
  int fd = open_socket(0);
  int ep = epoll_for(fd);
  double cpu0 = cpu_seconds();
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  printf("ready %d\n", ntohs(a.sin_port));
  fflush(stdout);
  long count = 0;
  double first = 0, last = 0;
  for (;;) {
    struct epoll_event ev;
    epoll_wait(ep, &ev, 1, 50);
    int got;
    while ((got = receive_batch(fd)) > 0) {
      double t = now_seconds();
      if (count == 0) first = t;
      last = t;
      count += got;
      if (count >= expected) break;
    }
    if (count >= expected || (count > 0 && now_seconds() - last > 0.3)) break;
  }
  double span = last - first;
  printf("{\"received\": %ld, \"seconds\": %.6f, \"rate\": %.1f, \"cpu\": %.6f, \"peak_rss_kib\": %ld, \"last_at\": %.6f}\n",
         count, span, span > 0 ? (count - 1) / span : 0.0, cpu_seconds() - cpu0, peak_rss_kib(), last);
  return 0;
}

/* ---- idle ----------------------------------------------------------------------------- */

static int cmd_idle(long sockets) {
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  int ep = epoll_create1(0);
  size_t before = mallinfo2().uordblks;
  for (long i = 0; i < sockets; i++) {
    int fd = open_socket(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
  size_t after = mallinfo2().uordblks;
  printf("{\"sockets\": %ld, \"bytes_per_socket\": %.1f}\n", sockets, (double)(after - before) / sockets);
  return 0;
}

/* ---- clients -------------------------------------------------------------------------- */

static int cmd_flood(int port, long count, int size) {
  int fd = open_socket(1);
  struct sockaddr_in to = loopback(port);
  char *payload = calloc(1, (size_t)size);
  struct iovec iov = {.iov_base = payload, .iov_len = (size_t)size};
  struct mmsghdr msgs[BATCH];
  memset(msgs, 0, sizeof msgs);
  for (int k = 0; k < BATCH; k++) {
    msgs[k].msg_hdr.msg_iov = &iov;
    msgs[k].msg_hdr.msg_iovlen = 1;
    msgs[k].msg_hdr.msg_name = &to;
    msgs[k].msg_hdr.msg_namelen = sizeof to;
  }
  double cpu0 = cpu_seconds(), t0 = now_seconds();
  long sent = 0;
  while (sent < count) {
    int n = count - sent < BATCH ? (int)(count - sent) : BATCH;
    send_all(fd, msgs, n);
    sent += n;
  }
  double elapsed = now_seconds() - t0;
  printf("{\"sent\": %ld, \"seconds\": %.6f, \"rate\": %.1f, \"cpu\": %.6f, \"start_at\": %.6f}\n", sent, elapsed,
         sent / elapsed, cpu_seconds() - cpu0, t0);
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static char send_bufs[BATCH][64];
static struct iovec send_iov[BATCH];
static struct mmsghdr send_msgs[BATCH];
static struct sockaddr_in server;
static long w_sent;

/* Sends n stamped 64-byte datagrams (sequence number, send time) in one sendmmsg. */
static void send_stamped(int fd, int n) {
  double t = now_seconds();
  for (int k = 0; k < n; k++) {
    memset(send_bufs[k], 0, 64);
    memcpy(send_bufs[k], &w_sent, sizeof w_sent);
    memcpy(send_bufs[k] + 8, &t, sizeof t);
    w_sent++;
    send_iov[k].iov_base = send_bufs[k];
    send_iov[k].iov_len = 64;
    memset(&send_msgs[k].msg_hdr, 0, sizeof send_msgs[k].msg_hdr);
    send_msgs[k].msg_hdr.msg_iov = &send_iov[k];
    send_msgs[k].msg_hdr.msg_iovlen = 1;
    send_msgs[k].msg_hdr.msg_name = &server;
    send_msgs[k].msg_hdr.msg_namelen = sizeof server;
  }
  send_all(fd, send_msgs, n);
}

/* Sends up to `room` more datagrams, at most `limit` in all, BATCH per system call. */
static void refill(int fd, long room, long limit) {
  while (room > 0 && w_sent < limit) {
    long n = room < BATCH ? room : BATCH;
    if (n > limit - w_sent) n = limit - w_sent;
    send_stamped(fd, (int)n);
    room -= n;
  }
}

static int cmd_window(int port, long count, int window) {
  int fd = open_socket(1);
  int ep = epoll_for(fd);
  server = loopback(port);
  double *rtt = calloc((size_t)count, sizeof *rtt);
  long done = 0, lost = 0, measured = 0;
  double cpu0 = cpu_seconds(), t0 = now_seconds(), last_progress = t0, last_answer = t0;
  refill(fd, window, count);
  while (done < count) {
    struct epoll_event ev;
    epoll_wait(ep, &ev, 1, 100);
    int got;
    while ((got = receive_batch(fd)) > 0) {
      double now = now_seconds();
      for (int k = 0; k < got; k++) {
        if (recv_msgs[k].msg_len < 16) continue;
        double sent_at;
        memcpy(&sent_at, recv_bufs[k] + 8, sizeof sent_at);
        if (measured < count) rtt[measured++] = now - sent_at;
        done++;
      }
      last_progress = last_answer = now;
      if (done >= count) break;
      refill(fd, window - (w_sent - done), count);
    }
    double now = now_seconds();
    if (now - last_answer > 3.0) {
      fprintf(stderr, "rawbench: no answer from 127.0.0.1:%d for 3 s; giving up\n", port);
      return 1;
    }
    /* A datagram lost on loopback (rare) must not stall the run: refill the window. */
    if (done < count && now - last_progress > 0.2) {
      long missing = w_sent - done;
      done += missing;
      lost += missing;
      refill(fd, window, count);
      last_progress = now;
    }
  }
  double elapsed = now_seconds() - t0;
  qsort(rtt, (size_t)measured, sizeof *rtt, cmp_double);
  double p50 = measured ? rtt[measured / 2] * 1e6 : 0, p99 = measured ? rtt[(long)(measured * 0.99)] * 1e6 : 0;
  printf("{\"round_trips\": %ld, \"lost\": %ld, \"seconds\": %.6f, \"rate\": %.1f, \"p50_us\": %.2f, \"p99_us\": %.2f, "
         "\"cpu\": %.6f}\n", done, lost, elapsed, (done - lost) / elapsed, p50, p99, cpu_seconds() - cpu0);
  return 0;
}

/* ---- W4: GSO and GRO ----------------------------------------------------------------- */

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

static char recv_ctl[BATCH][CMSG_SPACE(sizeof(int))];

static int cmd_grosink(long expected) {
  int fd = open_socket(0);
  int on = 1;
  if (setsockopt(fd, IPPROTO_UDP, UDP_GRO, &on, sizeof on) < 0) die("setsockopt UDP_GRO");
  int ep = epoll_for(fd);
  double cpu0 = cpu_seconds();
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  printf("ready %d\n", ntohs(a.sin_port));
  fflush(stdout);
  long count = 0, bytes = 0, buffers = 0;
  double first = 0, last = 0;
  for (;;) {
    struct epoll_event ev;
    epoll_wait(ep, &ev, 1, 50);
    for (;;) {
      for (int k = 0; k < BATCH; k++) {
        recv_iov[k].iov_base = recv_bufs[k];
        recv_iov[k].iov_len = SLOT;
        memset(&recv_msgs[k].msg_hdr, 0, sizeof recv_msgs[k].msg_hdr);
        recv_msgs[k].msg_hdr.msg_iov = &recv_iov[k];
        recv_msgs[k].msg_hdr.msg_iovlen = 1;
        recv_msgs[k].msg_hdr.msg_name = &peers[k];
        recv_msgs[k].msg_hdr.msg_namelen = sizeof peers[k];
        recv_msgs[k].msg_hdr.msg_control = recv_ctl[k];
        recv_msgs[k].msg_hdr.msg_controllen = sizeof recv_ctl[k];
      }
      int got = recvmmsg(fd, recv_msgs, BATCH, MSG_DONTWAIT, NULL);
      if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
        die("recvmmsg");
      }
      if (got == 0) break;
      double t = now_seconds();
      if (count == 0) first = t;
      last = t;
      for (int k = 0; k < got; k++) {
        long n = recv_msgs[k].msg_len, segment = 0;
        struct msghdr *m = &recv_msgs[k].msg_hdr;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c))
          if (c->cmsg_level == IPPROTO_UDP && c->cmsg_type == UDP_GRO) {
            int size;
            memcpy(&size, CMSG_DATA(c), sizeof size);
            segment = size;
          }
        count += segment > 0 && n > segment ? (n + segment - 1) / segment : 1;
        bytes += n;
        buffers++;
      }
      if (count >= expected) break;
    }
    if (count >= expected || (count > 0 && now_seconds() - last > 0.3)) break;
  }
  double span = last - first;
  printf("{\"received\": %ld, \"bytes\": %ld, \"buffers\": %ld, \"seconds\": %.6f, \"rate\": %.1f, \"cpu\": %.6f, "
         "\"peak_rss_kib\": %ld, \"last_at\": %.6f}\n", count, bytes, buffers, span, span > 0 ? (count - 1) / span : 0.0,
         cpu_seconds() - cpu0, peak_rss_kib(), last);
  return 0;
}

static int cmd_gsoflood(int port, long count, int size, int segments) {
  int fd = open_socket(1);
  if (setsockopt(fd, IPPROTO_UDP, UDP_SEGMENT, &size, sizeof size) < 0) die("setsockopt UDP_SEGMENT");
  struct sockaddr_in to = loopback(port);
  char *payload = calloc((size_t)segments, (size_t)size);
  struct iovec iov[BATCH];
  struct mmsghdr msgs[BATCH];
  memset(msgs, 0, sizeof msgs);
  for (int k = 0; k < BATCH; k++) {
    iov[k].iov_base = payload;
    iov[k].iov_len = (size_t)size * (size_t)segments;
    msgs[k].msg_hdr.msg_iov = &iov[k];
    msgs[k].msg_hdr.msg_iovlen = 1;
    msgs[k].msg_hdr.msg_name = &to;
    msgs[k].msg_hdr.msg_namelen = sizeof to;
  }
  double cpu0 = cpu_seconds(), t0 = now_seconds();
  long sent = 0; /* datagrams */
  while (sent < count) {
    int n = 0;
    while (n < BATCH && sent < count) {
      long take = count - sent < segments ? count - sent : segments;
      iov[n].iov_len = (size_t)take * (size_t)size; /* the last buffer may carry fewer */
      sent += take;
      n++;
    }
    send_all(fd, msgs, n);
  }
  double elapsed = now_seconds() - t0;
  printf("{\"sent\": %ld, \"seconds\": %.6f, \"rate\": %.1f, \"cpu\": %.6f, \"start_at\": %.6f}\n", sent, elapsed,
         sent / elapsed, cpu_seconds() - cpu0, t0);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "grosink") == 0) return cmd_grosink(atol(argv[2]));
  if (argc >= 6 && strcmp(argv[1], "gsoflood") == 0) return cmd_gsoflood(atoi(argv[2]), atol(argv[3]), atoi(argv[4]), atoi(argv[5]));
  if (argc >= 2 && strcmp(argv[1], "serve") == 0) return cmd_serve();
  if (argc >= 3 && strcmp(argv[1], "sink") == 0) return cmd_sink(atol(argv[2]));
  if (argc >= 3 && strcmp(argv[1], "idle") == 0) return cmd_idle(atol(argv[2]));
  if (argc >= 5 && strcmp(argv[1], "flood") == 0) return cmd_flood(atoi(argv[2]), atol(argv[3]), atoi(argv[4]));
  if (argc >= 4 && strcmp(argv[1], "pingpong") == 0) return cmd_window(atoi(argv[2]), atol(argv[3]), 1);
  if (argc >= 5 && strcmp(argv[1], "window") == 0) return cmd_window(atoi(argv[2]), atol(argv[3]), atoi(argv[4]));
  fprintf(stderr, "usage: rawbench serve | sink COUNT | idle SOCKETS | flood PORT COUNT SIZE | pingpong PORT COUNT | window PORT COUNT WINDOW\n"
                  "       | grosink COUNT | gsoflood PORT COUNT SIZE SEGMENTS\n");
  return 2;
}
