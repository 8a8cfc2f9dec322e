// The system libuv (Debian's libuv1-dev, 1.44.x) and the socket headers its UDP API uses.
#ifndef ASYNCUDP_CLIBUV_SHIM_H
#define ASYNCUDP_CLIBUV_SHIM_H
#include <uv.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <net/if.h>
#endif
