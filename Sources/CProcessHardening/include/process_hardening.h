#ifndef P11JWT_PROCESS_HARDENING_H
#define P11JWT_PROCESS_HARDENING_H

/// Marks the process not dumpable (PR_SET_DUMPABLE 0): no core file with the held PIN, and its
/// /proc files (environ, mem) readable by root only. Returns 0, or -1 with errno.
int p11jwt_set_not_dumpable(void);

/// Whether the process is dumpable (1), not (0), or -1 with errno.
int p11jwt_is_dumpable(void);

/// Overwrites the value of every `name=` entry of the process environment in place (the bytes
/// /proc/PID/environ shows), then removes the variable. Returns how many entries were scrubbed.
int p11jwt_scrub_environment(const char *name);

#endif
