/* A SQLite VFS shim (internal to src/store) that gathers contiguous writes to the write-ahead
 * log and the database file in memory and writes them with one pwrite before the file is
 * synced (or read), instead of two small writes per logged page and one per checkpointed
 * page. */
#ifndef BH_STORE_WALVFS_H
#define BH_STORE_WALVFS_H

/* Register the shim over the default VFS (once per process) and give its name for
 * sqlite3_open_v2; BH_ESTORE when SQLite has no default VFS or registration fails. */
int bh_walvfs_register(const char **name);

#endif
