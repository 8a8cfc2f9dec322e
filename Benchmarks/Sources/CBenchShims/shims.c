#include <malloc.h>
#include "CBenchShims.h"

size_t cbench_heap_in_use(void) { return mallinfo2().uordblks; }
