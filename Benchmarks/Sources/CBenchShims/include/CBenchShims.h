// mallinfo2() is not visible through Swift's Glibc module; the idle-socket benchmark needs the
// heap's in-use bytes, the same figure the C reference reads.
#include <stddef.h>
size_t cbench_heap_in_use(void);
