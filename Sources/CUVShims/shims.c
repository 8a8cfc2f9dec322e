// Only this file sees _GNU_SOURCE (recvmmsg, sendmmsg, struct mmsghdr); see CUVShims.h.
#define _GNU_SOURCE
#include "CUVShims.h"
#include <errno.h>
#include <pthread.h>
#include <string.h>

_Static_assert(sizeof(cuv_mmsghdr) == sizeof(struct mmsghdr), "cuv_mmsghdr and struct mmsghdr differ in size");
_Static_assert(offsetof(cuv_mmsghdr, msg_len) == offsetof(struct mmsghdr, msg_len), "cuv_mmsghdr.msg_len is misplaced");

static __thread void *current_loop;

void *cuv_current_loop(void) { return current_loop; }
void cuv_set_current_loop(void *loop) { current_loop = loop; }

void cuv_set_thread_name(const char *name) {
    char truncated[16];
    strncpy(truncated, name, sizeof truncated - 1);
    truncated[sizeof truncated - 1] = 0;
    pthread_setname_np(pthread_self(), truncated);
}

int cuv_recvmmsg(int fd, cuv_mmsghdr *messages, unsigned int count) {
    int result;
    do {
        result = recvmmsg(fd, (struct mmsghdr *)messages, count, 0, NULL);
    } while (result < 0 && errno == EINTR);
    return result < 0 ? -errno : result;
}

int cuv_sendmmsg(int fd, cuv_mmsghdr *messages, unsigned int count) {
    int result;
    do {
        result = sendmmsg(fd, (struct mmsghdr *)messages, count, 0);
    } while (result < 0 && errno == EINTR);
    return result < 0 ? -errno : result;
}

ssize_t cuv_sendmsg(int fd, const struct msghdr *message) {
    ssize_t result;
    do {
        result = sendmsg(fd, message, 0);
    } while (result < 0 && errno == EINTR);
    return result < 0 ? -errno : result;
}

size_t cuv_cmsg_space(size_t length) { return CMSG_SPACE(length); }
struct cmsghdr *cuv_cmsg_first(struct msghdr *message) { return CMSG_FIRSTHDR(message); }
struct cmsghdr *cuv_cmsg_next(struct msghdr *message, struct cmsghdr *current) { return CMSG_NXTHDR(message, current); }
unsigned char *cuv_cmsg_data(struct cmsghdr *cmsg) { return CMSG_DATA(cmsg); }
size_t cuv_cmsg_len(size_t length) { return CMSG_LEN(length); }
