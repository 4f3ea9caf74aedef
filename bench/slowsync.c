/* fsync and fdatasync that take SLOWSYNC_US microseconds longer (default 5000), as on
 * network or virtualised storage. For bench/latency.py --slow-fsync-ms: loaded into the
 * gateway's process with LD_PRELOAD, so SQLite's commits wait as they would there. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

static void pause_for_storage(void) {
    const char *text = getenv("SLOWSYNC_US");
    usleep(text ? (useconds_t)atoi(text) : 5000);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    pause_for_storage();
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    pause_for_storage();
    return real(fd);
}
