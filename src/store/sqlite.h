/* SQLite backend of the store (internal to src/store): store.c dispatches "sqlite:PATH" and
 * plain paths here. */
#ifndef BH_STORE_SQLITE_H
#define BH_STORE_SQLITE_H

#include <stddef.h>

#include "store.h"

/* Open (creating when absent) the database file at path; its directory must exist. BH_ESTORE
 * with one line in errmsg (when non-NULL) when the file or schema cannot be opened. */
int bh_sqlite_open(const char *path, bh_store_t **out, char *errmsg, size_t errcap);

#endif
