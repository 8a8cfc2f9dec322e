// Only this file sees _GNU_SOURCE (recvmmsg, sendmmsg, struct mmsghdr); see CUVShims.h.
#define _GNU_SOURCE
#include "CUVShims.h"
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/ip.h>

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

int cuv_parse_receive_cmsgs(struct msghdr *message, cuv_receive_metadata *out) {
    memset(out, 0, sizeof *out);
    int found = 0;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(message); cmsg != NULL; cmsg = CMSG_NXTHDR(message, cmsg)) {
        size_t length = cmsg->cmsg_len - CMSG_LEN(0);
        if (cmsg->cmsg_level == IPPROTO_IP) {
            if (cmsg->cmsg_type == IP_PKTINFO && length >= sizeof(struct in_pktinfo)) {
                struct in_pktinfo info;
                memcpy(&info, CMSG_DATA(cmsg), sizeof info);
                out->destination_family = AF_INET;
                memcpy(out->destination, &info.ipi_addr, 4);
                out->interface_index = (unsigned int)info.ipi_ifindex;
                found = 1;
            } else if (cmsg->cmsg_type == IP_TOS && length >= 1) {
                out->has_traffic_class = 1;
                out->traffic_class = *(unsigned char *)CMSG_DATA(cmsg);
                found = 1;
            }
        } else if (cmsg->cmsg_level == IPPROTO_IPV6) {
            if (cmsg->cmsg_type == IPV6_PKTINFO && length >= sizeof(struct in6_pktinfo)) {
                struct in6_pktinfo info;
                memcpy(&info, CMSG_DATA(cmsg), sizeof info);
                out->destination_family = AF_INET6;
                memcpy(out->destination, &info.ipi6_addr, 16);
                out->interface_index = info.ipi6_ifindex;
                found = 1;
            } else if (cmsg->cmsg_type == IPV6_TCLASS && length >= sizeof(int)) {
                int value;
                memcpy(&value, CMSG_DATA(cmsg), sizeof value);
                out->has_traffic_class = 1;
                out->traffic_class = (unsigned int)value & 0xFF;
                found = 1;
            }
        } else if (cmsg->cmsg_level == IPPROTO_UDP && cmsg->cmsg_type == CUV_UDP_GRO && length >= sizeof(int)) {
            int value;
            memcpy(&value, CMSG_DATA(cmsg), sizeof value);
            out->gro_segment_size = value;
            found = 1;
        } else if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_TIMESTAMPNS
                   && length >= sizeof(struct timespec)) {
            struct timespec time;
            memcpy(&time, CMSG_DATA(cmsg), sizeof time);
            out->has_timestamp = 1;
            out->seconds = (int64_t)time.tv_sec;
            out->nanoseconds = (int64_t)time.tv_nsec;
            found = 1;
        }
    }
    return found;
}

static int set_flag(int fd, int level, int name, int on) {
    return setsockopt(fd, level, name, &on, sizeof on) == 0 ? 0 : -errno;
}

int cuv_set_receive_metadata(int fd, int is_ipv6, int ipv6_only, int options) {
    int info = (options & CUV_META_PACKET_INFO) != 0;
    int ecn = (options & CUV_META_ECN) != 0;
    int stamp = (options & CUV_META_TIMESTAMP) != 0;
    int status;
    if (is_ipv6) {
        if ((status = set_flag(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, info)) < 0) return status;
        if ((status = set_flag(fd, IPPROTO_IPV6, IPV6_RECVTCLASS, ecn)) < 0) return status;
        if (!ipv6_only) {
            // IPv4 traffic on a dual-stack socket carries IPv4-level control messages.
            if ((status = set_flag(fd, IPPROTO_IP, IP_PKTINFO, info)) < 0) return status;
            if ((status = set_flag(fd, IPPROTO_IP, IP_RECVTOS, ecn)) < 0) return status;
        }
    } else {
        if ((status = set_flag(fd, IPPROTO_IP, IP_PKTINFO, info)) < 0) return status;
        if ((status = set_flag(fd, IPPROTO_IP, IP_RECVTOS, ecn)) < 0) return status;
    }
    if ((status = set_flag(fd, SOL_SOCKET, SO_TIMESTAMPNS, stamp)) < 0) return status;
    int gro = (options & CUV_META_GRO) != 0;
    status = set_flag(fd, IPPROTO_UDP, CUV_UDP_GRO, gro);
    // A kernel without UDP_GRO (before 5.0) refuses it: fine when it is not wanted.
    return status < 0 && !gro ? 0 : status;
}

ssize_t cuv_build_send_cmsgs(void *buffer, size_t capacity, int family, const unsigned char *source,
                             int traffic_class, int tos_family, int segment_size) {
    size_t needed = 0;
    if (segment_size > 0) needed += CMSG_SPACE(sizeof(uint16_t));
    if (source != NULL) needed += family == AF_INET6 ? CMSG_SPACE(sizeof(struct in6_pktinfo)) : CMSG_SPACE(sizeof(struct in_pktinfo));
    if (traffic_class >= 0) needed += CMSG_SPACE(sizeof(int));
    if (needed == 0) return 0;
    if (needed > capacity) return -1;
    memset(buffer, 0, needed);
    struct cmsghdr *cmsg = (struct cmsghdr *)buffer;
    if (source != NULL) {
        if (family == AF_INET6) {
            struct in6_pktinfo info;
            memset(&info, 0, sizeof info);
            memcpy(&info.ipi6_addr, source, 16);
            cmsg->cmsg_level = IPPROTO_IPV6;
            cmsg->cmsg_type = IPV6_PKTINFO;
            cmsg->cmsg_len = CMSG_LEN(sizeof info);
            memcpy(CMSG_DATA(cmsg), &info, sizeof info);
        } else {
            struct in_pktinfo info;
            memset(&info, 0, sizeof info);
            memcpy(&info.ipi_spec_dst, source, 4);
            cmsg->cmsg_level = IPPROTO_IP;
            cmsg->cmsg_type = IP_PKTINFO;
            cmsg->cmsg_len = CMSG_LEN(sizeof info);
            memcpy(CMSG_DATA(cmsg), &info, sizeof info);
        }
        cmsg = (struct cmsghdr *)((unsigned char *)cmsg + CMSG_SPACE(cmsg->cmsg_len - CMSG_LEN(0)));
    }
    if (traffic_class >= 0) {
        int value = traffic_class;
        cmsg->cmsg_level = tos_family == AF_INET6 ? IPPROTO_IPV6 : IPPROTO_IP;
        cmsg->cmsg_type = tos_family == AF_INET6 ? IPV6_TCLASS : IP_TOS;
        cmsg->cmsg_len = CMSG_LEN(sizeof value);
        memcpy(CMSG_DATA(cmsg), &value, sizeof value);
        cmsg = (struct cmsghdr *)((unsigned char *)cmsg + CMSG_SPACE(sizeof value));
    }
    if (segment_size > 0) {
        uint16_t value = (uint16_t)segment_size;
        cmsg->cmsg_level = IPPROTO_UDP;
        cmsg->cmsg_type = CUV_UDP_SEGMENT;
        cmsg->cmsg_len = CMSG_LEN(sizeof value);
        memcpy(CMSG_DATA(cmsg), &value, sizeof value);
    }
    return (ssize_t)needed;
}

int cuv_segment_size(const struct msghdr *message) {
    if (message->msg_controllen == 0) return 0;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(message); cmsg != NULL; cmsg = CMSG_NXTHDR((struct msghdr *)message, cmsg)) {
        if (cmsg->cmsg_level == IPPROTO_UDP && cmsg->cmsg_type == CUV_UDP_SEGMENT) {
            uint16_t value;
            memcpy(&value, CMSG_DATA(cmsg), sizeof value);
            return value;
        }
    }
    return 0;
}
