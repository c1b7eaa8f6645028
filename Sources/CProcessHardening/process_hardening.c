#define _GNU_SOURCE
#include "process_hardening.h"

#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

extern char **environ;

int p11jwt_set_not_dumpable(void) {
#if defined(__linux__)
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
#else
    return 0;
#endif
}

int p11jwt_is_dumpable(void) {
#if defined(__linux__)
    return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
#else
    return 1;
#endif
}

int p11jwt_scrub_environment(const char *name) {
    size_t length = strlen(name);
    int scrubbed = 0;
    for (char **entry = environ; entry != NULL && *entry != NULL; entry++) {
        if (strncmp(*entry, name, length) == 0 && (*entry)[length] == '=') {
            char *value = *entry + length + 1;
            memset(value, 'x', strlen(value));
            scrubbed++;
        }
    }
    if (scrubbed > 0) unsetenv(name);
    return scrubbed;
}
