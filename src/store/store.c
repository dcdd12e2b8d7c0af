/* Store front door: picks the backend from the URL and forwards every call through the
 * backend's function table, so the ledger never knows which database it talks to. */
#include "store.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "../base/error.h"
#include "sqlite.h"

__attribute__((format(printf, 3, 4))) static void set_err(char *errmsg, size_t errcap,
                                                          const char *fmt, ...) {
    va_list ap;
    if (errmsg == NULL || errcap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(errmsg, errcap, fmt, ap);
    va_end(ap);
}

/* Length of a URL scheme ("postgresql" in "postgresql://...") or 0 when url has none. */
static size_t scheme_len(const char *url) {
    size_t i = 0;
    if (!isalpha((unsigned char)url[0]))
        return 0;
    while (isalnum((unsigned char)url[i]) || url[i] == '+' || url[i] == '-' || url[i] == '.')
        i++;
    return strncmp(url + i, "://", 3) == 0 ? i : 0;
}

int bh_store_open(const char *url, bh_store_t **out, char *errmsg, size_t errcap) {
    const char *path = url;
    size_t slen;

    if (out == NULL)
        return BH_EINVAL;
    *out = NULL;
    if (errmsg != NULL && errcap > 0)
        errmsg[0] = '\0';
    if (url == NULL || url[0] == '\0') {
        set_err(errmsg, errcap, "empty store location");
        return BH_EINVAL;
    }
    if (strncmp(url, "sqlite:", 7) == 0) {
        path = url + 7;
        /* Accept the URL spelling too: sqlite:///abs/path and sqlite://rel/path. */
        if (strncmp(path, "//", 2) == 0)
            path += 2;
    } else if ((slen = scheme_len(url)) > 0) {
        set_err(errmsg, errcap,
                "unsupported store scheme '%.*s': supported are sqlite:PATH or a plain file path",
                (int)slen, url);
        return BH_EINVAL;
    }
    if (path[0] == '\0') {
        set_err(errmsg, errcap, "empty SQLite path in store location '%s'", url);
        return BH_EINVAL;
    }
    return bh_sqlite_open(path, out, errmsg, errcap);
}

void bh_store_close(bh_store_t *s) {
    if (s != NULL)
        s->ops->close(s);
}

int bh_store_load(bh_store_t *s, const bh_store_visitor_t *v) {
    if (s == NULL || v == NULL)
        return BH_EINVAL;
    return s->ops->load(s, v);
}

int bh_store_commit_user(bh_store_t *s, const bh_store_user_t *u, const bh_store_asset_t *assets,
                         size_t n, const bh_store_journal_t *j) {
    if (s == NULL || u == NULL || j == NULL || (n > 0 && assets == NULL))
        return BH_EINVAL;
    return s->ops->commit_user(s, u, assets, n, j);
}

int bh_store_find_op(bh_store_t *s, const char *user_id, const char *op_id, uint64_t *sequence) {
    if (s == NULL || user_id == NULL || op_id == NULL)
        return BH_EINVAL;
    return s->ops->find_op(s, user_id, op_id, sequence);
}

int bh_store_put_rate(bh_store_t *s, const bh_store_rate_t *r) {
    if (s == NULL || r == NULL)
        return BH_EINVAL;
    return s->ops->put_rate(s, r);
}

int bh_store_put_key(bh_store_t *s, const bh_store_key_t *k) {
    if (s == NULL || k == NULL)
        return BH_EINVAL;
    return s->ops->put_key(s, k);
}
