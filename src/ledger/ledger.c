/* The ledger: per-user balances, exposure rules and sequence numbers. An operation is checked
 * against the working state and applied to it at once (later operations see it); it becomes
 * visible to readers (snapshot, listener, answer) only after commit.c made it durable. */
#include "ledger.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../base/buf.h"
#include "../base/error.h"
#include "../base/json.h"
#include "../base/log.h"
#include "internal.h"
#include "snapshot.h"

#define RATE_KEY_MAX (2 * BH_ASSET_MAX)

typedef struct {
    char key[RATE_KEY_MAX]; /* "CURRENCY/ASSET"; first member: the map key */
    bh_dec_t rate;
} rate_t;

/* ---- map: linear probing with backward-shift deletion ---- */

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
    return h;
}

static size_t map_index(const bh_map_t *m, const char *key) {
    size_t mask = m->cap - 1;
    size_t i = (size_t)hash_str(key) & mask;
    while (m->slots[i] && strcmp(m->slots[i], key) != 0)
        i = (i + 1) & mask;
    return i;
}

void *bh_map_get(const bh_map_t *m, const char *key) {
    return m->cap ? m->slots[map_index(m, key)] : NULL;
}

int bh_map_put(bh_map_t *m, void *item) {
    if ((m->n + 1) * 4 > m->cap * 3) {
        bh_map_t nm = {.cap = m->cap ? m->cap * 2 : 16, .n = m->n};
        if (!(nm.slots = calloc(nm.cap, sizeof(void *))))
            return BH_ENOMEM;
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i])
                nm.slots[map_index(&nm, m->slots[i])] = m->slots[i];
        free(m->slots);
        *m = nm;
    }
    m->slots[map_index(m, item)] = item;
    m->n++;
    return BH_OK;
}

void bh_map_remove(bh_map_t *m, const char *key) {
    if (!m->cap)
        return;
    size_t mask = m->cap - 1, i = map_index(m, key);
    if (!m->slots[i])
        return;
    m->slots[i] = NULL;
    m->n--;
    /* Shift later members of the probe run back so lookups never stop at the hole. */
    for (size_t j = (i + 1) & mask; m->slots[j]; j = (j + 1) & mask) {
        size_t home = (size_t)hash_str(m->slots[j]) & mask;
        if (((j - home) & mask) >= ((j - i) & mask)) {
            m->slots[i] = m->slots[j];
            m->slots[j] = NULL;
            i = j;
        }
    }
}

void bh_map_free(bh_map_t *m) {
    free(m->slots);
    memset(m, 0, sizeof *m);
}

/* ---- validation ---- */

bool bh_ledger_valid_user_id(const char *s, size_t n) {
    if (n == 0 || n > BH_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '@' || c == '-'))
            return false;
    }
    return true;
}

bool bh_ledger_valid_op_id(const char *s, size_t n) {
    if (n == 0 || n > BH_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            return false;
    return true;
}

bool bh_ledger_valid_asset(const char *s, size_t n) {
    if (n == 0 || n >= BH_ASSET_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9')))
            return false;
    return true;
}

/* The same checks on the ledger's fixed-size, NUL-terminated fields (an unterminated one fails). */
static bool valid_user_id(const char *s) {
    return bh_ledger_valid_user_id(s, strnlen(s, BH_ID_MAX + 1));
}

static bool valid_op_id(const char *s) {
    return bh_ledger_valid_op_id(s, strnlen(s, BH_ID_MAX + 1));
}

static bool valid_asset(const char *s) {
    return bh_ledger_valid_asset(s, strnlen(s, BH_ASSET_MAX));
}

static bool positive(bh_dec_t d) {
    return !bh_dec_is_neg(d) && !bh_dec_is_zero(d);
}

const char *bh_op_name(bh_op_kind_t kind) {
    static const char *names[] = {"create-user", "deposit", "withdraw",   "allocate",
                                  "release",     "trade",   "set-limits", "delete-user"};
    return (unsigned)kind < sizeof names / sizeof names[0] ? names[kind] : NULL;
}

/* ---- rates and exposure ---- */

static void rate_key(char key[RATE_KEY_MAX], const char *currency, const char *asset) {
    snprintf(key, RATE_KEY_MAX, "%.15s/%.15s", currency, asset);
}

static int exposure_of(const bh_ledger_t *l, const char *base, const bh_store_asset_t *a,
                       bh_dec_t *out) {
    bh_dec_t net, rate = bh_dec_from_int(1);
    if (bh_dec_add(a->available, a->allocated, &net) != BH_OK) {
        /* Each part fits but the sum does not: only same signs overflow, and a positive net
         * position has no exposure. */
        if (bh_dec_is_neg(a->available))
            return BH_ERANGE;
        *out = bh_dec_zero();
        return BH_OK;
    }
    if (!bh_dec_is_neg(net)) {
        *out = bh_dec_zero();
        return BH_OK;
    }
    if (strcmp(a->name, base) != 0) {
        char key[RATE_KEY_MAX];
        rate_key(key, base, a->name);
        const rate_t *r = bh_map_get(&l->rates, key);
        if (!r)
            return BH_ENOTFOUND;
        rate = r->rate;
    }
    return bh_dec_mul(rate, bh_dec_neg(net), out);
}

int bh_ledger_exposure(const bh_ledger_t *l, const char *base_currency, const bh_asset_t *a,
                       bh_dec_t *out) {
    bh_store_asset_t row = {.available = a->available, .allocated = a->allocated};
    memcpy(row.name, a->name, sizeof row.name);
    return exposure_of(l, base_currency, &row, out);
}

/* ---- snapshots ---- */

static int build_snapshot(const bh_ledger_t *l, const bh_user_t *u, bh_snapshot_t **out) {
    bh_asset_t local[8], *arr = local; /* bh_snapshot_new copies them */
    bh_dec_t total = bh_dec_zero(), e;
    if (u->nassets > sizeof local / sizeof local[0] && !(arr = calloc(u->nassets, sizeof *arr)))
        return BH_ENOMEM;
    for (size_t i = 0; i < u->nassets; i++) {
        const bh_store_asset_t *a = &u->assets[i];
        memcpy(arr[i].name, a->name, sizeof arr[i].name);
        arr[i].available = a->available;
        arr[i].allocated = a->allocated;
        arr[i].max_exposure = a->max_exposure;
        /* Changes are checked with a known rate; only rates set later can be missing here. */
        if (exposure_of(l, u->base_currency, a, &e) != BH_OK)
            e = bh_dec_zero();
        arr[i].current_exposure = e;
        bh_dec_add(total, e, &total);
    }
    int rc =
        bh_snapshot_new(u->user_id, u->sequence, u->base_currency, total, u->total_max_exposure,
                        u->deleted, u->nassets ? arr : NULL, u->nassets, out);
    if (arr != local)
        free(arr);
    return rc;
}

uint64_t bh_ledger_published(const bh_ledger_t *l) {
    return atomic_load_explicit(&((bh_ledger_t *)l)->published, memory_order_acquire);
}

bh_snapshot_t *bh_ledger_snapshot(bh_ledger_t *l, const char *user_id) {
    bh_snapshot_t *s = NULL;
    pthread_mutex_lock(&l->mu);
    bh_user_t *u = bh_map_get(&l->users, user_id);
    if (u && u->snap)
        s = bh_snapshot_acquire(u->snap);
    pthread_mutex_unlock(&l->mu);
    return s;
}

void bh_ledger_set_listener(bh_ledger_t *l, bh_ledger_listener_t fn, void *ud) {
    l->listener = fn;
    l->listener_ud = ud;
}

void bh_ledger_publish(bh_ledger_t *l, bh_change_t *c) {
    bh_snapshot_t *next = bh_snapshot_acquire(c->snap);
    pthread_mutex_lock(&l->mu);
    bh_snapshot_t *old = c->user->snap;
    c->user->snap = next;
    pthread_mutex_unlock(&l->mu);
    bh_snapshot_release(old);
    /* Counted before the listener hands the change on: a reader that has seen fewer changes
     * than this knows its own copies may be behind (bh_ledger_published). */
    atomic_fetch_add_explicit(&l->published, 1, memory_order_release);
    if (l->listener)
        l->listener(l->listener_ud, next);
}

void bh_ledger_apply_rates(bh_ledger_t *l, const bh_store_rate_t *rates, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char key[RATE_KEY_MAX];
        rate_key(key, rates[i].currency, rates[i].asset);
        rate_t *r = bh_map_get(&l->rates, key);
        if (!r) {
            /* The key goes in first: the map hashes it on insertion. */
            if ((r = calloc(1, sizeof *r)))
                memcpy(r->key, key, sizeof key);
            if (!r || bh_map_put(&l->rates, r) < 0) {
                bh_log_msg(BH_LOG_ERROR, "ledger: out of memory installing a rate");
                free(r);
                continue;
            }
        }
        r->rate = rates[i].rate;
    }
}

/* ---- changes ---- */

void bh_change_free(bh_change_t *c) {
    for (bh_waiter_t *w = c->waiters, *next; w; w = next) {
        next = w->next;
        free(w);
    }
    bh_snapshot_release(c->snap);
    free(c->assets);
    free(c->rates);
    free(c->detail);
    free(c->result);
    free(c);
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int reject(bh_change_t *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int reject(bh_change_t *c, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->reason, sizeof c->reason, fmt, ap);
    va_end(ap);
    c->status = status;
    return status;
}

/* Check the op's own arguments (no state needed). */
static int check_args(const bh_op_t *op, bh_change_t *c) {
    if (!valid_user_id(op->user_id))
        return reject(c, BH_EINVAL, "userId must be 1 to 64 characters of A-Z a-z 0-9 . _ : @ -");
    if (!valid_op_id(op->op_id))
        return reject(c, BH_EINVAL, "opId must be 1 to 64 printable ASCII characters");
    if (!bh_op_name(op->kind))
        return reject(c, BH_EINVAL, "unknown operation");
    if (op->nlegs > BH_OP_MAX_LEGS)
        return reject(c, BH_EINVAL, "at most %d assets per operation", BH_OP_MAX_LEGS);
    switch (op->kind) {
    case BH_OP_CREATE_USER:
        if (!valid_asset(op->base_currency))
            return reject(c, BH_EINVAL, "baseCurrency must be 1 to 15 characters of A-Z 0-9");
        if (op->has_total && bh_dec_is_neg(op->total_max_exposure))
            return reject(c, BH_EINVAL, "totalMaxExposure must not be negative");
        return BH_OK;
    case BH_OP_DELETE_USER:
        return BH_OK;
    case BH_OP_DEPOSIT:
    case BH_OP_WITHDRAW:
    case BH_OP_ALLOCATE:
    case BH_OP_RELEASE:
        if (op->nlegs != 1)
            return reject(c, BH_EINVAL, "%s takes one asset and amount", bh_op_name(op->kind));
        break;
    case BH_OP_TRADE:
        if (op->nlegs == 0)
            return reject(c, BH_EINVAL, "trade needs at least one leg");
        break;
    case BH_OP_SET_LIMITS:
        if (op->nlegs == 0 && !op->has_total)
            return reject(c, BH_EINVAL, "set-limits needs maxExposure or totalMaxExposure");
        if (op->has_total && bh_dec_is_neg(op->total_max_exposure))
            return reject(c, BH_EINVAL, "totalMaxExposure must not be negative");
        break;
    }
    for (size_t i = 0; i < op->nlegs; i++) {
        const bh_leg_t *g = &op->legs[i];
        if (!valid_asset(g->asset))
            return reject(c, BH_EINVAL, "asset must be 1 to 15 characters of A-Z 0-9");
        for (size_t k = 0; k < i; k++)
            if (strcmp(op->legs[k].asset, g->asset) == 0)
                return reject(c, BH_EINVAL, "asset %s appears twice", g->asset);
        if (op->kind == BH_OP_SET_LIMITS ? bh_dec_is_neg(g->amount)
            : op->kind == BH_OP_TRADE    ? bh_dec_is_zero(g->amount)
                                         : !positive(g->amount))
            return reject(c, BH_EINVAL,
                          op->kind == BH_OP_SET_LIMITS ? "maxExposure of %s must not be negative"
                          : op->kind == BH_OP_TRADE    ? "amount of %s must not be zero"
                                                       : "amount of %s must be positive",
                          g->asset);
    }
    return BH_OK;
}

/* New asset rows of u after op (changed[i] for each leg, sorted into *next_assets). */
static int apply_legs(bh_ledger_t *l, const bh_user_t *u, const bh_op_t *op, bh_change_t *c,
                      bh_store_asset_t **next_assets, size_t *next_n) {
    char a1[BH_DEC_STRLEN], a2[BH_DEC_STRLEN];
    bh_store_asset_t *rows = malloc((u->nassets + op->nlegs) * sizeof *rows);
    c->assets = op->nlegs ? malloc(op->nlegs * sizeof *c->assets) : NULL;
    if (!rows || (op->nlegs && !c->assets)) {
        free(rows);
        return reject(c, BH_ENOMEM, "out of memory");
    }
    if (u->nassets)
        memcpy(rows, u->assets, u->nassets * sizeof *rows);
    size_t n = u->nassets;
    bh_dec_t d_old = bh_dec_zero(), d_new = bh_dec_zero(), e_old, e_new;
    int check_exposure = op->kind == BH_OP_WITHDRAW || op->kind == BH_OP_TRADE;
    for (size_t i = 0; i < op->nlegs; i++) {
        const bh_leg_t *g = &op->legs[i];
        bool found = false;
        size_t lo = 0, hi = n;
        while (lo < hi) { /* binary search in rows, which grows as legs add assets */
            size_t mid = lo + (hi - lo) / 2;
            int d = strcmp(rows[mid].name, g->asset);
            if (d == 0) {
                found = true;
                lo = mid;
                break;
            }
            if (d < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (!found) {
            memmove(rows + lo + 1, rows + lo, (n - lo) * sizeof *rows);
            memset(&rows[lo], 0, sizeof rows[lo]);
            memcpy(rows[lo].name, g->asset, strlen(g->asset) + 1);
            n++;
        }
        bh_store_asset_t cur = rows[lo], *nx = &rows[lo];
        int r = BH_OK;
        switch (op->kind) {
        case BH_OP_DEPOSIT:
            r = bh_dec_add(cur.available, g->amount, &nx->available);
            break;
        case BH_OP_WITHDRAW:
        case BH_OP_TRADE:
            r = bh_dec_add(cur.available,
                           op->kind == BH_OP_TRADE ? g->amount : bh_dec_neg(g->amount),
                           &nx->available);
            if (r == BH_OK && bh_dec_is_neg(nx->available) &&
                bh_dec_cmp(nx->available, cur.available) < 0 && bh_dec_is_zero(cur.max_exposure)) {
                bh_dec_format(cur.available, a1);
                bh_dec_format(bh_dec_is_neg(g->amount) ? bh_dec_neg(g->amount) : g->amount, a2);
                free(rows);
                return reject(c, BH_EFUNDS, "insufficient available %s: %s available, %s needed",
                              g->asset, a1, a2);
            }
            break;
        case BH_OP_ALLOCATE:
        case BH_OP_RELEASE: {
            bool alloc = op->kind == BH_OP_ALLOCATE;
            bh_dec_t from = alloc ? cur.available : cur.allocated;
            if (bh_dec_cmp(from, g->amount) < 0) {
                bh_dec_format(from, a1);
                bh_dec_format(g->amount, a2);
                free(rows);
                return reject(c, BH_EFUNDS, "insufficient %s %s: %s %s, %s needed",
                              alloc ? "available" : "allocated", g->asset, a1,
                              alloc ? "available" : "allocated", a2);
            }
            bh_dec_sub(cur.available, alloc ? g->amount : bh_dec_neg(g->amount), &nx->available);
            r = bh_dec_add(cur.allocated, alloc ? g->amount : bh_dec_neg(g->amount),
                           &nx->allocated);
            break;
        }
        case BH_OP_SET_LIMITS:
            nx->max_exposure = g->amount;
            break;
        default:
            break;
        }
        if (r != BH_OK) {
            free(rows);
            return reject(c, BH_EINVAL, "amount of %s is out of range", g->asset);
        }
        c->assets[i] = *nx;
        if (!check_exposure)
            continue;
        /* Limits bind only what raises exposure: a rate move may already have pushed a user
         * over, and that must not block operations that reduce or keep the risk. */
        if (exposure_of(l, u->base_currency, nx, &e_new) != BH_OK) {
            free(rows);
            return reject(c, BH_ELIMIT, "no rate for %s in %s to value the exposure", g->asset,
                          u->base_currency);
        }
        if (exposure_of(l, u->base_currency, &cur, &e_old) != BH_OK)
            e_old = bh_dec_zero();
        if (bh_dec_cmp(e_new, e_old) > 0 && bh_dec_cmp(e_new, nx->max_exposure) > 0) {
            bh_dec_format(e_new, a1);
            bh_dec_format(nx->max_exposure, a2);
            free(rows);
            return reject(c, BH_ELIMIT, "exposure of %s would be %s, over its maxExposure %s",
                          g->asset, a1, a2);
        }
        bh_dec_add(d_old, e_old, &d_old);
        bh_dec_add(d_new, e_new, &d_new);
    }
    if (check_exposure && bh_dec_cmp(d_new, d_old) > 0) {
        bh_dec_t total = bh_dec_zero(), e;
        for (size_t i = 0; i < n; i++)
            if (exposure_of(l, u->base_currency, &rows[i], &e) == BH_OK)
                bh_dec_add(total, e, &total);
        bh_dec_t limit = op->kind == BH_OP_SET_LIMITS && op->has_total ? op->total_max_exposure
                                                                       : u->total_max_exposure;
        if (bh_dec_cmp(total, limit) > 0) {
            bh_dec_format(total, a1);
            bh_dec_format(limit, a2);
            free(rows);
            return reject(c, BH_ELIMIT, "total exposure would be %s, over totalMaxExposure %s", a1,
                          a2);
        }
    }
    c->nassets = op->nlegs;
    *next_assets = rows;
    *next_n = n;
    return BH_OK;
}

/* Appenders with a sticky error, for the journal texts built on every op: plain copies, no
 * printf (its format parsing was a tenth of the loop thread's instructions per op). */
static void put(bh_buf_t *b, const char *s, int *rc) {
    if (*rc == BH_OK)
        *rc = bh_buf_appends(b, s);
}

static void put_dec(bh_buf_t *b, bh_dec_t d, int *rc) {
    char num[BH_DEC_STRLEN];
    size_t n = bh_dec_format(d, num);
    if (*rc == BH_OK)
        *rc = bh_buf_append(b, num, n);
}

/* "NAME":"AMOUNT" (asset names and decimals need no JSON escaping). */
static void put_member(bh_buf_t *b, const char *name, bh_dec_t d, int *rc) {
    put(b, "\"", rc);
    put(b, name, rc);
    put(b, "\":\"", rc);
    put_dec(b, d, rc);
    put(b, "\"", rc);
}

/* The journal's record of the op's arguments, amounts as exact decimal strings. */
static int detail_json(const bh_op_t *op, bh_buf_t *b) {
    int r = bh_buf_reserve(b, 64 + op->nlegs * 64);
    put(b, "{", &r);
    switch (op->kind) {
    case BH_OP_CREATE_USER:
        put(b, "\"baseCurrency\":\"", &r);
        put(b, op->base_currency, &r);
        put(b, "\",", &r);
        put_member(b, "totalMaxExposure", op->has_total ? op->total_max_exposure : bh_dec_zero(),
                   &r);
        break;
    case BH_OP_DELETE_USER:
        break;
    case BH_OP_TRADE:
        put(b, "\"legs\":[", &r);
        for (size_t i = 0; i < op->nlegs; i++) {
            put(b, i ? ",{\"asset\":\"" : "{\"asset\":\"", &r);
            put(b, op->legs[i].asset, &r);
            put(b, "\",", &r);
            put_member(b, "amount", op->legs[i].amount, &r);
            put(b, "}", &r);
        }
        put(b, "]", &r);
        break;
    case BH_OP_SET_LIMITS:
        if (op->nlegs) {
            put(b, "\"maxExposure\":{", &r);
            for (size_t i = 0; i < op->nlegs; i++) {
                put(b, i ? "," : "", &r);
                put_member(b, op->legs[i].asset, op->legs[i].amount, &r);
            }
            put(b, "}", &r);
        }
        if (op->has_total) {
            put(b, op->nlegs ? "," : "", &r);
            put_member(b, "totalMaxExposure", op->total_max_exposure, &r);
        }
        break;
    default:
        put(b, "\"asset\":\"", &r);
        put(b, op->legs[0].asset, &r);
        put(b, "\",", &r);
        put_member(b, "amount", op->legs[0].amount, &r);
        break;
    }
    put(b, "}", &r);
    return r;
}

/* Look for an earlier application of (user, op id): pending, or durable in the store. */
enum { NEW_OP, ATTACHED, REPEATED };
static int find_earlier(bh_ledger_t *l, const bh_op_t *op, const bh_user_t *u, bh_change_t *c,
                        bh_op_cb cb, void *ud) {
    /* check_args bounded both ids to BH_ID_MAX bytes: the key fits. */
    size_t ulen = strlen(op->user_id), olen = strlen(op->op_id);
    memcpy(c->opkey, op->user_id, ulen);
    c->opkey[ulen] = '\x1f';
    memcpy(c->opkey + ulen + 1, op->op_id, olen + 1);
    c->opkey_len = ulen + 1 + olen;
    bh_change_t *p = bh_map_get(&l->ops, c->opkey);
    if (p) {
        bh_waiter_t *w = malloc(sizeof *w);
        if (!w)
            return reject(c, BH_ENOMEM, "out of memory");
        w->cb = cb;
        w->ud = ud;
        w->next = NULL;
        bh_waiter_t **tail = &p->waiters; /* answered in submission order */
        while (*tail)
            tail = &(*tail)->next;
        *tail = w;
        return ATTACHED;
    }
    /* Every journaled op id of this process's changes and of the store at open is in the
     * filter: a "no" is certain, only a "maybe" (a repeat, or ~1% of new ids) reads SQLite. */
    if (!u || !u->exists || !bh_opfilter_maybe(&l->journaled, c->opkey, c->opkey_len))
        return NEW_OP;
    bh_buf_t res;
    bh_buf_init(&res, 0);
    uint64_t seq;
    int r = bh_store_find_op(l->reader, op->user_id, op->op_id, &seq, &res);
    if (r == BH_ENOTFOUND) {
        bh_buf_free(&res);
        return NEW_OP;
    }
    if (r != BH_OK) {
        bh_buf_free(&res);
        return reject(c, BH_ESTORE, "the store could not be read (%s)", bh_strerror(r));
    }
    c->repeated = true;
    c->row.sequence = seq;
    c->result = res.data; /* the buffer's storage becomes the change's */
    c->result_len = res.len;
    if (!c->result) {
        c->result = strdup("{}");
        c->result_len = 2;
    }
    return REPEATED;
}

/* Validate op against the working state and, when it passes, apply it there and fill c. */
static int prepare(bh_ledger_t *l, const bh_op_t *op, bh_change_t *c, bh_op_cb cb, void *ud) {
    if (check_args(op, c) < 0)
        return c->status;
    bh_user_t *u = bh_map_get(&l->users, op->user_id);
    int e = find_earlier(l, op, u, c, cb, ud);
    if (e != NEW_OP)
        return e;
    bh_user_t next;
    bh_store_asset_t *rows = NULL;
    if (op->kind == BH_OP_CREATE_USER) {
        if (u && u->exists)
            return reject(c, BH_EEXIST, "user %s already exists", op->user_id);
        memset(&next, 0, sizeof next);
        memcpy(next.user_id, op->user_id, strlen(op->user_id) + 1);
        memcpy(next.base_currency, op->base_currency, strlen(op->base_currency) + 1);
        next.total_max_exposure = op->has_total ? op->total_max_exposure : bh_dec_zero();
        next.sequence = 1;
        next.exists = true;
    } else {
        if (!u || !u->exists || u->deleted)
            return reject(c, BH_ENOTFOUND, "no user %s", op->user_id);
        next = *u;
        next.sequence = u->sequence + 1;
        if (op->kind == BH_OP_DELETE_USER) {
            next.deleted = true;
        } else {
            if (op->kind == BH_OP_SET_LIMITS && op->has_total)
                next.total_max_exposure = op->total_max_exposure;
            if (apply_legs(l, u, op, c, &rows, &next.nassets) < 0)
                return c->status;
        }
        next.assets = rows ? rows : u->assets;
    }

    bh_buf_t b;
    bh_buf_init(&b, 0);
    int r = detail_json(op, &b);
    c->detail = b.data;
    bh_buf_init(&b, 0);
    if (r == BH_OK)
        r = build_snapshot(l, &next, &c->snap);
    if (r == BH_OK) {
        char seq[20];
        size_t n = bh_snapshot_u64(next.sequence, seq);
        r = bh_buf_reserve(&b, 24 + n + c->snap->json_len);
        put(&b, "{\"sequence\":", &r);
        if (r == BH_OK)
            r = bh_buf_append(&b, seq, n);
        put(&b, ",\"data\":", &r);
        if (r == BH_OK)
            r = bh_buf_append(&b, c->snap->json, c->snap->json_len);
        put(&b, "}", &r);
    }
    c->result = b.data;
    c->result_len = b.len;
    bh_user_t *fresh = NULL;
    if (r == BH_OK && !u && !(fresh = calloc(1, sizeof *fresh)))
        r = BH_ENOMEM;
    if (r == BH_OK && fresh) {
        memcpy(fresh->user_id, op->user_id, strlen(op->user_id) + 1);
        pthread_mutex_lock(&l->mu);
        r = bh_map_put(&l->users, fresh);
        pthread_mutex_unlock(&l->mu);
        if (r < 0)
            free(fresh);
        else
            u = fresh;
    }
    if (r == BH_OK && (r = bh_map_put(&l->ops, c)) == BH_OK)
        c->in_map = true;
    if (r != BH_OK) {
        free(rows);
        return reject(c, r, "out of memory");
    }

    /* Install the working state; readers keep seeing u->snap until the commit. */
    memset(&c->row, 0, sizeof c->row);
    memcpy(c->row.user_id, next.user_id, sizeof c->row.user_id);
    memcpy(c->row.base_currency, next.base_currency, sizeof c->row.base_currency);
    c->row.total_max_exposure = next.total_max_exposure;
    c->row.sequence = next.sequence;
    c->row.deleted = next.deleted;
    c->journal = (bh_store_journal_t){
        .sequence = next.sequence, .detail = c->detail, .result = c->result, .time_ms = now_ms()};
    memcpy(c->journal.user_id, next.user_id, sizeof c->journal.user_id);
    memcpy(c->journal.op_id, op->op_id, strlen(op->op_id) + 1);
    /* Op names are constants shorter than the field. */
    memcpy(c->journal.op, bh_op_name(op->kind), strlen(bh_op_name(op->kind)) + 1);
    if (rows && u->assets != rows)
        free(u->assets);
    next.snap = u->snap;
    /* I/O threads read u->snap under mu (bh_ledger_snapshot); the copy rewrites it. */
    pthread_mutex_lock(&l->mu);
    *u = next;
    pthread_mutex_unlock(&l->mu);
    c->user = u;
    return NEW_OP;
}

int bh_ledger_submit(bh_ledger_t *l, const bh_op_t *op, bh_op_cb cb, void *ud) {
    bh_change_t *c = calloc(1, sizeof *c);
    if (!c)
        return BH_ENOMEM;
    c->cb = cb;
    c->ud = ud;
    int r = prepare(l, op, c, cb, ud);
    if (r == ATTACHED) {
        bh_change_free(c);
    } else if (r == NEW_OP) {
        bh_commit_enqueue(l, c);
    } else {
        if (r != REPEATED)
            c->row.sequence = 0;
        bh_commit_ready(l, c);
    }
    return BH_OK;
}

int bh_ledger_set_rates(bh_ledger_t *l, const char *currency, const bh_store_rate_t *rates,
                        size_t n, bh_op_cb cb, void *ud) {
    bh_change_t *c = calloc(1, sizeof *c);
    if (!c)
        return BH_ENOMEM;
    c->cb = cb;
    c->ud = ud;
    if (!valid_asset(currency)) {
        reject(c, BH_EINVAL, "baseCurrency must be 1 to 15 characters of A-Z 0-9");
    } else if (n == 0) {
        reject(c, BH_EINVAL, "rates must name at least one asset");
    } else if (!(c->rates = malloc(n * sizeof *c->rates))) {
        reject(c, BH_ENOMEM, "out of memory");
    } else {
        for (size_t i = 0; i < n && c->status == BH_OK; i++) {
            c->rates[i] = rates[i];
            snprintf(c->rates[i].currency, sizeof c->rates[i].currency, "%s", currency);
            if (!valid_asset(rates[i].asset) || strcmp(rates[i].asset, currency) == 0)
                reject(c, BH_EINVAL,
                       "rate asset must be 1 to 15 characters of A-Z 0-9, "
                       "other than the base currency");
            else if (!positive(rates[i].rate))
                reject(c, BH_EINVAL, "rate of %s must be positive", rates[i].asset);
        }
        c->nrates = n;
    }
    if (c->status == BH_OK)
        bh_commit_enqueue(l, c);
    else
        bh_commit_ready(l, c);
    return BH_OK;
}

/* ---- loading ---- */

/* Everything but the key: user_id is set once, before u enters the map, because I/O threads
 * compare it in bh_map_get (under mu) while a failed commit reloads u here without mu. */
static int load_into(bh_user_t *u, const bh_store_user_t *su, const bh_store_asset_t *assets,
                     size_t n) {
    bh_store_asset_t *rows = NULL;
    if (n && !(rows = malloc(n * sizeof *rows)))
        return BH_ENOMEM;
    if (n)
        memcpy(rows, assets, n * sizeof *rows);
    free(u->assets);
    memcpy(u->base_currency, su->base_currency, sizeof u->base_currency);
    u->total_max_exposure = su->total_max_exposure;
    u->sequence = su->sequence;
    u->deleted = su->deleted;
    u->exists = true;
    u->assets = rows;
    u->nassets = n;
    return BH_OK;
}

static int load_user(void *ud, const bh_store_user_t *su, const bh_store_asset_t *assets,
                     size_t n) {
    bh_ledger_t *l = ud;
    if (bh_map_get(&l->users, su->user_id))
        return BH_ESTORE;
    bh_user_t *u = calloc(1, sizeof *u);
    if (!u)
        return BH_ENOMEM;
    memcpy(u->user_id, su->user_id, sizeof u->user_id);
    int r = load_into(u, su, assets, n);
    if (r == BH_OK && (r = bh_map_put(&l->users, u)) < 0)
        free(u->assets);
    if (r < 0)
        free(u);
    return r;
}

static int reload_one(void *ud, const bh_store_user_t *su, const bh_store_asset_t *assets,
                      size_t n) {
    return load_into(ud, su, assets, n);
}

void bh_ledger_reload_user(bh_ledger_t *l, bh_user_t *u) {
    bh_store_visitor_t v = {.ud = u, .user = reload_one};
    int r = bh_store_load_user(l->reader, u->user_id, &v);
    if (r == BH_ENOTFOUND) {
        free(u->assets);
        u->assets = NULL;
        u->nassets = 0;
        u->sequence = 0;
        u->exists = false;
    } else if (r != BH_OK) {
        bh_log(BH_LOG_ERROR, "ledger: cannot reload a user after a failed commit",
               BH_LS("user", u->user_id), BH_LS("error", bh_strerror(r)));
    }
}

static int count_ops(void *ud, uint64_t n) {
    bh_ledger_t *l = ud;
    /* Headroom: the first layer takes half as many new keys again before the filter grows. */
    bh_opfilter_free(&l->journaled);
    return bh_opfilter_init(&l->journaled, n + n / 2);
}

static int load_op(void *ud, const char *user_id, const char *op_id) {
    bh_ledger_t *l = ud;
    char key[BH_OPKEY_MAX];
    int n = snprintf(key, sizeof key, "%s\x1f%s", user_id, op_id);
    if (n < 0 || (size_t)n >= sizeof key)
        return BH_ESTORE;
    bh_opfilter_add(&l->journaled, key, (size_t)n);
    return BH_OK;
}

static int load_rate(void *ud, const bh_store_rate_t *sr) {
    bh_ledger_apply_rates(ud, sr, 1);
    return BH_OK;
}

int bh_ledger_open(uv_loop_t *loop, bh_store_t *writer, bh_store_t *reader, bh_ledger_t **out) {
    bh_ledger_t *l = calloc(1, sizeof *l);
    if (!l)
        return BH_ENOMEM;
    l->loop = loop;
    l->writer = writer;
    l->reader = reader;
    pthread_mutex_init(&l->mu, NULL);
    pthread_mutex_init(&l->qmu, NULL);
    /* Monotonic: the commit thread's timed wait for its next idle probe ignores clock steps. */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->qcond, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&l->store_ok, 1); /* the store was just read; the commit thread keeps it current */
    bh_store_visitor_t v = {.ud = l, .user = load_user, .rate = load_rate};
    int r = bh_store_load(reader, &v);
    /* Exposures need the rates, which the store visits after the users. */
    for (size_t i = 0; r == BH_OK && i < l->users.cap; i++) {
        bh_user_t *u = l->users.slots[i];
        if (u)
            r = build_snapshot(l, u, &u->snap);
    }
    if (r == BH_OK) {
        bh_store_op_visitor_t ov = {.ud = l, .count = count_ops, .op = load_op};
        r = bh_store_visit_ops(reader, &ov);
    }
    if (r == BH_OK)
        r = bh_commit_start(l);
    if (r != BH_OK) {
        if (l->thread_started) {
            bh_ledger_close(l);
        } else {
            if (l->async.loop) { /* handles exist: close them, free when closed */
                l->closing = 2;
                uv_close((uv_handle_t *)&l->async, NULL);
                uv_close((uv_handle_t *)&l->idle, NULL);
                uv_run(loop, UV_RUN_NOWAIT);
            }
            bh_ledger_free(l);
        }
        return r;
    }
    *out = l;
    return BH_OK;
}

void bh_ledger_close(bh_ledger_t *l) {
    if (l)
        bh_commit_stop(l);
}

void bh_ledger_free(bh_ledger_t *l) {
    for (size_t i = 0; i < l->users.cap; i++) {
        bh_user_t *u = l->users.slots[i];
        if (u) {
            bh_snapshot_release(u->snap);
            free(u->assets);
            free(u);
        }
    }
    for (size_t i = 0; i < l->rates.cap; i++)
        free(l->rates.slots[i]);
    bh_map_free(&l->users);
    bh_map_free(&l->rates);
    bh_map_free(&l->ops);
    bh_opfilter_free(&l->journaled);
    pthread_mutex_destroy(&l->mu);
    pthread_mutex_destroy(&l->qmu);
    pthread_cond_destroy(&l->qcond);
    free(l);
}
