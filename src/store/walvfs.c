/* Write gathering. SQLite appends a commit to the -wal file as two writes per page (a 24-byte
 * frame header, then the page), then syncs the file; with tens of pages per group commit,
 * most of the commit thread's kernel time went to those small writes. A checkpoint then
 * copies pages into the database file one write per page, mostly in ascending runs. This shim
 * wraps the default VFS and, for the WAL and the main database file, keeps contiguous writes
 * in a buffer that is written with one pwrite (per 120 KiB) before anything that must see
 * them: a sync, a read, a size query, a truncation, a lock change, a file control, a write
 * elsewhere in the file, or close.
 *
 * Durability and visibility are unchanged: xSync returns only after the gathered bytes were
 * written and the real sync succeeded. SQLite publishes a commit to readers (the wal-index
 * header) only after syncing the WAL (synchronous=FULL syncs every commit), and lets readers
 * use checkpointed database pages only after syncing the database; until then no connection
 * reads those bytes from the files. Other files (journals, temp files) pass straight through.
 */
#include "walvfs.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"

#define VFS_NAME "bh-walgather"
#define GATHER_MAX (8u << 20) /* larger appends are flushed and written through */
/* The unix VFS writes at most 128 KiB - 1 bytes per call (its pwrite size is masked to 17
 * bits, and a larger count would come back as SQLITE_FULL): gathered bytes go in chunks. */
#define WRITE_CHUNK (120u << 10)

typedef struct {
    sqlite3_file base;  /* first: what SQLite sees; pMethods = &gather_methods */
    sqlite3_file *real; /* the default VFS's file, allocated right after this struct */
    bool gather;        /* the WAL or the main database */
    unsigned char *buf;
    size_t len, cap;
    sqlite3_int64 off; /* file offset of buf[0] */
} gfile_t;

static sqlite3_vfs gather_vfs;
static const sqlite3_io_methods gather_methods;

static sqlite3_vfs *parent(void) {
    return gather_vfs.pAppData;
}

/* Write the gathered bytes. On failure they are dropped: SQLite fails the transaction, and
 * frames past the last commit are ignored by recovery and overwritten by the next commit. */
static int flush(gfile_t *g) {
    int rc = SQLITE_OK;
    size_t done = 0;
    while (done < g->len && rc == SQLITE_OK) {
        size_t n = g->len - done < WRITE_CHUNK ? g->len - done : WRITE_CHUNK;
        rc =
            g->real->pMethods->xWrite(g->real, g->buf + done, (int)n, g->off + (sqlite3_int64)done);
        done += n;
    }
    g->len = 0;
    return rc;
}

static int g_close(sqlite3_file *f) {
    gfile_t *g = (gfile_t *)f;
    int rc = g->len ? flush(g) : SQLITE_OK;
    int rc2 = g->real->pMethods ? g->real->pMethods->xClose(g->real) : SQLITE_OK;
    free(g->buf);
    g->buf = NULL;
    g->cap = 0;
    return rc != SQLITE_OK ? rc : rc2;
}

static int g_read(sqlite3_file *f, void *p, int n, sqlite3_int64 off) {
    gfile_t *g = (gfile_t *)f;
    int rc = g->len ? flush(g) : SQLITE_OK;
    return rc != SQLITE_OK ? rc : g->real->pMethods->xRead(g->real, p, n, off);
}

/* Room for n more bytes; false when the buffer cannot grow (then the caller writes through). */
static bool reserve(gfile_t *g, size_t n) {
    if (g->len + n <= g->cap)
        return true;
    if (g->len + n > GATHER_MAX)
        return false;
    size_t cap = g->cap ? g->cap : 256u << 10;
    while (cap < g->len + n)
        cap *= 2;
    unsigned char *b = realloc(g->buf, cap);
    if (!b)
        return false;
    g->buf = b;
    g->cap = cap;
    return true;
}

static int g_write(sqlite3_file *f, const void *p, int n, sqlite3_int64 off) {
    gfile_t *g = (gfile_t *)f;
    int rc;
    if (!g->gather || n <= 0)
        return g->real->pMethods->xWrite(g->real, p, n, off);
    if (g->len && off == g->off + (sqlite3_int64)g->len && reserve(g, (size_t)n)) {
        memcpy(g->buf + g->len, p, (size_t)n);
        g->len += (size_t)n;
        return SQLITE_OK;
    }
    /* Not an append to what is gathered (a rewrite of an earlier frame, a new start after a
     * checkpoint), or no room: what is gathered goes first, keeping the order of writes. */
    if (g->len && (rc = flush(g)) != SQLITE_OK)
        return rc;
    if (!reserve(g, (size_t)n))
        return g->real->pMethods->xWrite(g->real, p, n, off);
    memcpy(g->buf, p, (size_t)n);
    g->len = (size_t)n;
    g->off = off;
    return SQLITE_OK;
}

static int g_truncate(sqlite3_file *f, sqlite3_int64 size) {
    gfile_t *g = (gfile_t *)f;
    int rc = g->len ? flush(g) : SQLITE_OK;
    return rc != SQLITE_OK ? rc : g->real->pMethods->xTruncate(g->real, size);
}

static int g_sync(sqlite3_file *f, int flags) {
    gfile_t *g = (gfile_t *)f;
    int rc = g->len ? flush(g) : SQLITE_OK;
    return rc != SQLITE_OK ? rc : g->real->pMethods->xSync(g->real, flags);
}

static int g_file_size(sqlite3_file *f, sqlite3_int64 *size) {
    gfile_t *g = (gfile_t *)f;
    int rc = g->len ? flush(g) : SQLITE_OK;
    return rc != SQLITE_OK ? rc : g->real->pMethods->xFileSize(g->real, size);
}

/* Another process may look at the file once a lock changes hands. */
static int g_lock(sqlite3_file *f, int l) {
    gfile_t *g = (gfile_t *)f;
    int rc = g->len ? flush(g) : SQLITE_OK;
    return rc != SQLITE_OK ? rc : g->real->pMethods->xLock(g->real, l);
}

static int g_unlock(sqlite3_file *f, int l) {
    gfile_t *g = (gfile_t *)f;
    int rc = g->len ? flush(g) : SQLITE_OK;
    return rc != SQLITE_OK ? rc : g->real->pMethods->xUnlock(g->real, l);
}

/* The rest forward unchanged. */

static int g_check_reserved(sqlite3_file *f, int *out) {
    sqlite3_file *r = ((gfile_t *)f)->real;
    return r->pMethods->xCheckReservedLock(r, out);
}

static int g_file_control(sqlite3_file *f, int op, void *arg) {
    gfile_t *g = (gfile_t *)f;
    /* Anything may inspect or resize the file here: let it see every byte. */
    int rc = g->len ? flush(g) : SQLITE_OK;
    return rc != SQLITE_OK ? rc : g->real->pMethods->xFileControl(g->real, op, arg);
}

static int g_sector_size(sqlite3_file *f) {
    sqlite3_file *r = ((gfile_t *)f)->real;
    return r->pMethods->xSectorSize(r);
}

static int g_device_characteristics(sqlite3_file *f) {
    sqlite3_file *r = ((gfile_t *)f)->real;
    return r->pMethods->xDeviceCharacteristics(r);
}

static int g_shm_map(sqlite3_file *f, int region, int size, int extend, void volatile **p) {
    sqlite3_file *r = ((gfile_t *)f)->real;
    return r->pMethods->xShmMap(r, region, size, extend, p);
}

static int g_shm_lock(sqlite3_file *f, int offset, int n, int flags) {
    sqlite3_file *r = ((gfile_t *)f)->real;
    return r->pMethods->xShmLock(r, offset, n, flags);
}

static void g_shm_barrier(sqlite3_file *f) {
    sqlite3_file *r = ((gfile_t *)f)->real;
    r->pMethods->xShmBarrier(r);
}

static int g_shm_unmap(sqlite3_file *f, int del) {
    sqlite3_file *r = ((gfile_t *)f)->real;
    return r->pMethods->xShmUnmap(r, del);
}

static int g_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp) {
    sqlite3_file *r = ((gfile_t *)f)->real;
    return r->pMethods->xFetch(r, off, n, pp);
}

static int g_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p) {
    sqlite3_file *r = ((gfile_t *)f)->real;
    return r->pMethods->xUnfetch(r, off, p);
}

static const sqlite3_io_methods gather_methods = {
    .iVersion = 3,
    .xClose = g_close,
    .xRead = g_read,
    .xWrite = g_write,
    .xTruncate = g_truncate,
    .xSync = g_sync,
    .xFileSize = g_file_size,
    .xLock = g_lock,
    .xUnlock = g_unlock,
    .xCheckReservedLock = g_check_reserved,
    .xFileControl = g_file_control,
    .xSectorSize = g_sector_size,
    .xDeviceCharacteristics = g_device_characteristics,
    .xShmMap = g_shm_map,
    .xShmLock = g_shm_lock,
    .xShmBarrier = g_shm_barrier,
    .xShmUnmap = g_shm_unmap,
    .xFetch = g_fetch,
    .xUnfetch = g_unfetch,
};

static int v_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out) {
    gfile_t *g = (gfile_t *)f;
    memset(g, 0, sizeof *g);
    g->real = (sqlite3_file *)(g + 1);
    int rc = parent()->xOpen(parent(), name, g->real, flags, out);
    if (rc != SQLITE_OK || !g->real->pMethods) {
        /* SQLite calls no method of a file whose pMethods is NULL. */
        g->base.pMethods = NULL;
        return rc != SQLITE_OK ? rc : SQLITE_CANTOPEN;
    }
    g->gather = (flags & (SQLITE_OPEN_WAL | SQLITE_OPEN_MAIN_DB)) != 0;
    g->base.pMethods = &gather_methods;
    /* The methods above forward the version 3 ones (shared memory, mmap). */
    if (g->real->pMethods->iVersion < 3) {
        g->real->pMethods->xClose(g->real);
        g->base.pMethods = NULL;
        return SQLITE_CANTOPEN;
    }
    return SQLITE_OK;
}

static int v_delete(sqlite3_vfs *vfs, const char *name, int sync_dir) {
    return parent()->xDelete(parent(), name, sync_dir);
}

static int v_access(sqlite3_vfs *vfs, const char *name, int flags, int *out) {
    return parent()->xAccess(parent(), name, flags, out);
}

static int v_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out) {
    return parent()->xFullPathname(parent(), name, n, out);
}

static void *v_dlopen(sqlite3_vfs *vfs, const char *name) {
    return parent()->xDlOpen(parent(), name);
}

static void v_dlerror(sqlite3_vfs *vfs, int n, char *msg) {
    parent()->xDlError(parent(), n, msg);
}

static void (*v_dlsym(sqlite3_vfs *vfs, void *h, const char *sym))(void) {
    return parent()->xDlSym(parent(), h, sym);
}

static void v_dlclose(sqlite3_vfs *vfs, void *h) {
    parent()->xDlClose(parent(), h);
}

static int v_randomness(sqlite3_vfs *vfs, int n, char *out) {
    return parent()->xRandomness(parent(), n, out);
}

static int v_sleep(sqlite3_vfs *vfs, int us) {
    return parent()->xSleep(parent(), us);
}

static int v_current_time(sqlite3_vfs *vfs, double *out) {
    return parent()->xCurrentTime(parent(), out);
}

static int v_last_error(sqlite3_vfs *vfs, int n, char *out) {
    return parent()->xGetLastError(parent(), n, out);
}

static int v_current_time64(sqlite3_vfs *vfs, sqlite3_int64 *out) {
    return parent()->xCurrentTimeInt64(parent(), out);
}

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int registered = BH_ESTORE;

static void do_register(void) {
    /* Before SQLite initializes (it refuses afterwards, harmlessly): no global allocation
     * statistics, which cost a mutex round trip on every allocation. */
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    sqlite3_vfs *p = sqlite3_vfs_find(NULL);
    if (!p || p->iVersion < 2 || !p->xCurrentTimeInt64)
        return;
    gather_vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)sizeof(gfile_t) + p->szOsFile,
        .mxPathname = p->mxPathname,
        .zName = VFS_NAME,
        .pAppData = p,
        .xOpen = v_open,
        .xDelete = v_delete,
        .xAccess = v_access,
        .xFullPathname = v_full_pathname,
        .xDlOpen = v_dlopen,
        .xDlError = v_dlerror,
        .xDlSym = v_dlsym,
        .xDlClose = v_dlclose,
        .xRandomness = v_randomness,
        .xSleep = v_sleep,
        .xCurrentTime = v_current_time,
        .xGetLastError = v_last_error,
        .xCurrentTimeInt64 = v_current_time64,
    };
    if (sqlite3_vfs_register(&gather_vfs, 0) == SQLITE_OK)
        registered = BH_OK;
}

int bh_walvfs_register(const char **name) {
    pthread_once(&once, do_register);
    *name = VFS_NAME;
    return registered;
}
