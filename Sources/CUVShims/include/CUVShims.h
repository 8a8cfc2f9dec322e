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

/// Receive metadata a datagram's control messages carried (filled by cuv_parse_receive_cmsgs).
typedef struct {
    /// 0, AF_INET or AF_INET6: the family of `destination` (packet info present).
    int destination_family;
    /// The destination address, network byte order (4 bytes for AF_INET, 16 for AF_INET6).
    unsigned char destination[16];
    /// The index of the interface the datagram arrived on.
    unsigned int interface_index;
    /// Whether `traffic_class` was reported (IP_TOS / IPV6_TCLASS).
    int has_traffic_class;
    /// The TOS byte or traffic class (the ECN codepoint is its low two bits).
    unsigned int traffic_class;
    /// Whether `seconds`/`nanoseconds` were reported (SCM_TIMESTAMPNS).
    int has_timestamp;
    int64_t seconds;
    int64_t nanoseconds;
    /// The GRO segment size (UDP_GRO), or 0 when the buffer is one datagram.
    int gro_segment_size;
} cuv_receive_metadata;

/// Reads the packet info, TOS/traffic class and SO_TIMESTAMPNS control messages of a received
/// message into `out` (which it zeroes first). Returns 1 if any was found, else 0.
int cuv_parse_receive_cmsgs(struct msghdr *message, cuv_receive_metadata *out);

/// Receive metadata options, as in the Swift ReceiveMetadataOptions.
static const int CUV_META_PACKET_INFO = 1;
static const int CUV_META_ECN = 2;
static const int CUV_META_TIMESTAMP = 4;
static const int CUV_META_GRO = 8;

/// Turns the receive metadata socket options on or off: IP_PKTINFO, IP_RECVTOS (IPv4 level, also
/// on an IPv6 socket that is not IPv6-only, for its IPv4 traffic), IPV6_RECVPKTINFO,
/// IPV6_RECVTCLASS, SO_TIMESTAMPNS, UDP_GRO. Returns 0 or -errno.
int cuv_set_receive_metadata(int fd, int is_ipv6, int ipv6_only, int options);

/// Writes the control messages of one send into `buffer` (`capacity` bytes, aligned for cmsghdr):
/// a source address (IP_PKTINFO or IPV6_PKTINFO; `source` is 4 or 16 bytes in network order,
/// NULL for none) at the level of `family` (the destination's family), and a TOS / traffic class
/// (-1 for none) at the level of `tos_family` (IP_TOS for AF_INET, IPV6_TCLASS for AF_INET6; they
/// differ for an IPv4-mapped destination, which the kernel sends as IPv4). Returns the control
/// length, 0 for nothing, or -1 if it does not fit.
/// With `segment_size` > 0, also a UDP_SEGMENT message (GSO: the kernel cuts the payload into
/// datagrams of that size).
ssize_t cuv_build_send_cmsgs(void *buffer, size_t capacity, int family, const unsigned char *source,
                             int traffic_class, int tos_family, int segment_size);
/// The GSO segment size of a message to send (its UDP_SEGMENT control message), or 0.
int cuv_segment_size(const struct msghdr *message);

/// Linux UDP offload options (<linux/udp.h>).
static const int CUV_UDP_SEGMENT = 103;
static const int CUV_UDP_GRO = 104;
static const int CUV_SO_MEMINFO = 55;        // SO_MEMINFO
static const int CUV_SK_MEMINFO_DROPS = 8;   // index of the drop counter in SO_MEMINFO's array
static const int CUV_SK_MEMINFO_VARS = 9;    // SK_MEMINFO_VARS

#endif
