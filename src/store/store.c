/* Store front door: picks the backend from the URL and forwards every call through the
 * backend's function table, so the ledger never knows which database it talks to. */
#include "store.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
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

/* A fixed-size id field holds a non-empty, NUL-terminated string (what the loaders accept). */
static int ok_str(const char *s, size_t cap) {
    return s[0] != '\0' && memchr(s, '\0', cap) != NULL;
}

/* Everything a backend relies on is checked before the transaction starts, so a malformed
 * change rejects the whole batch without touching the database. */
static int check_change(const bh_store_change_t *c) {
    const bh_store_user_t *u = c->user;
    const bh_store_journal_t *j = c->journal;

    if ((c->nassets > 0 && (c->assets == NULL || u == NULL)) || (c->nrates > 0 && c->rates == NULL))
        return BH_EINVAL;
    if (u != NULL &&
        (!ok_str(u->user_id, sizeof(u->user_id)) ||
         !ok_str(u->base_currency, sizeof(u->base_currency)) || u->sequence > INT64_MAX))
        return BH_EINVAL;
    for (size_t i = 0; i < c->nassets; i++) {
        if (!ok_str(c->assets[i].name, sizeof(c->assets[i].name)))
            return BH_EINVAL;
    }
    if (j != NULL) {
        if (!ok_str(j->user_id, sizeof(j->user_id)) || !ok_str(j->op_id, sizeof(j->op_id)) ||
            !ok_str(j->op, sizeof(j->op)) || j->sequence > INT64_MAX)
            return BH_EINVAL;
        /* A user's journal entry travels with that user's row. */
        if (u != NULL && strcmp(u->user_id, j->user_id) != 0)
            return BH_EINVAL;
    }
    for (size_t i = 0; i < c->nrates; i++) {
        if (!ok_str(c->rates[i].currency, sizeof(c->rates[i].currency)) ||
            !ok_str(c->rates[i].asset, sizeof(c->rates[i].asset)))
            return BH_EINVAL;
    }
    return BH_OK;
}

int bh_store_commit_batch(bh_store_t *s, const bh_store_change_t *changes, size_t n) {
    int rc;
    if (s == NULL || (n > 0 && changes == NULL))
        return BH_EINVAL;
    if (n == 0)
        return BH_OK;
    for (size_t i = 0; i < n; i++) {
        if ((rc = check_change(&changes[i])) != BH_OK)
            return rc;
    }
    return s->ops->commit_batch(s, changes, n);
}

int bh_store_find_op(bh_store_t *s, const char *user_id, const char *op_id, uint64_t *sequence,
                     bh_buf_t *result) {
    if (s == NULL || user_id == NULL || op_id == NULL)
        return BH_EINVAL;
    return s->ops->find_op(s, user_id, op_id, sequence, result);
}

int bh_store_read_journal(bh_store_t *s, const char *user_id, uint64_t since, size_t limit,
                          bh_store_journal_fn fn, void *ud) {
    if (s == NULL || user_id == NULL || fn == NULL)
        return BH_EINVAL;
    return s->ops->read_journal(s, user_id, since, limit, fn, ud);
}

int bh_store_load_user(bh_store_t *s, const char *user_id, const bh_store_visitor_t *v) {
    if (s == NULL || user_id == NULL || v == NULL)
        return BH_EINVAL;
    return s->ops->load_user(s, user_id, v);
}

int bh_store_put_key(bh_store_t *s, const bh_store_key_t *k) {
    if (s == NULL || k == NULL)
        return BH_EINVAL;
    return s->ops->put_key(s, k);
}

int bh_store_visit_ops(bh_store_t *s, const bh_store_op_visitor_t *v) {
    if (s == NULL || v == NULL || v->op == NULL)
        return BH_EINVAL;
    return s->ops->visit_ops(s, v);
}

int bh_store_probe(bh_store_t *s) {
    if (s == NULL)
        return BH_EINVAL;
    return s->ops->probe != NULL ? s->ops->probe(s) : BH_OK;
}
