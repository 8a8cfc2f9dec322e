// C helpers for AsyncUDP. Each exists because Swift cannot express it directly:
// - the thread-local "current loop" slot (Swift has no thread-local storage of its own);
// - recvmmsg/sendmmsg and struct mmsghdr, which glibc only declares under _GNU_SOURCE. Swift's
//   Glibc module is built without it, and a header that defined it would clash with that module,
//   so this header declares a struct of the same layout (checked in shims.c) and only shims.c
//   sees _GNU_SOURCE;
// - the CMSG_* macros for building and reading control messages.
#ifndef CUVSHIMS_H
#define CUVSHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <time.h>

/// The UVLoop whose thread (or late-work drainer) is the calling thread; NULL elsewhere.
void *cuv_current_loop(void);
/// Sets or clears (NULL) the calling thread's current loop.
void cuv_set_current_loop(void *loop);

/// The calling thread's name, set for debuggers and `top -H` (truncated to 15 bytes).
void cuv_set_thread_name(const char *name);

/// struct mmsghdr, by another name (see above).
typedef struct {
    struct msghdr msg_hdr;
    unsigned int msg_len;
} cuv_mmsghdr;

/// recvmmsg(2), retried on EINTR. Returns the count, or -errno.
int cuv_recvmmsg(int fd, cuv_mmsghdr *messages, unsigned int count);
/// sendmmsg(2), retried on EINTR. Returns the count, or -errno.
int cuv_sendmmsg(int fd, cuv_mmsghdr *messages, unsigned int count);
/// sendmsg(2), retried on EINTR. Returns the byte count, or -errno.
ssize_t cuv_sendmsg(int fd, const struct msghdr *message);

/// Control messages: the space one message of `length` payload bytes takes (CMSG_SPACE).
size_t cuv_cmsg_space(size_t length);
/// The first control message of `message`, or NULL (CMSG_FIRSTHDR).
struct cmsghdr *cuv_cmsg_first(struct msghdr *message);
/// The control message after `current`, or NULL (CMSG_NXTHDR).
struct cmsghdr *cuv_cmsg_next(struct msghdr *message, struct cmsghdr *current);
/// The payload of a control message (CMSG_DATA).
unsigned char *cuv_cmsg_data(struct cmsghdr *cmsg);
/// The cmsg_len for a payload of `length` bytes (CMSG_LEN).
size_t cuv_cmsg_len(size_t length);

/// Linux UDP offload options (<linux/udp.h>).
static const int CUV_UDP_SEGMENT = 103;
static const int CUV_UDP_GRO = 104;
static const int CUV_SO_MEMINFO = 55;        // SO_MEMINFO
static const int CUV_SK_MEMINFO_DROPS = 8;   // index of the drop counter in SO_MEMINFO's array
static const int CUV_SK_MEMINFO_VARS = 9;    // SK_MEMINFO_VARS

#endif
