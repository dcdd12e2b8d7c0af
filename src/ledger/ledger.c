/* The ledger: per-user balances, exposure rules and sequence numbers. Every change is computed
 * on a copy and checked, made durable through the store, and only then installed and published
 * as a new snapshot; a failure anywhere before the commit leaves nothing changed.
 * One writer thread calls everything here except bh_ledger_snapshot (any thread). */
#include "ledger.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../base/buf.h"
#include "../base/error.h"
#include "../base/json.h"
#include "../base/log.h"
#include "snapshot.h"

#define RATE_KEY_MAX (2 * BH_ASSET_MAX) /* "CURRENCY/ASSET" + NUL */

typedef struct {
    char user_id[BH_ID_MAX + 1]; /* first member: the map key */
    char base_currency[BH_ASSET_MAX];
    bh_dec_t total_max_exposure;
    uint64_t sequence;
    bool deleted;
    size_t nassets;
    bh_store_asset_t *assets; /* sorted by name (strcmp, as the store sorts) */
    bh_snapshot_t *snap;      /* latest published; swapped under bh_ledger.mu */
} user_t;

typedef struct {
    char key[RATE_KEY_MAX]; /* first member: the map key */
    bh_dec_t rate;
} rate_t;

/* Open-addressing string map of items whose first member is their NUL-terminated key. */
typedef struct {
    void **slots;
    size_t cap; /* power of two, or 0 */
    size_t n;
} map_t;

struct bh_ledger {
    bh_store_t *store;
    map_t users; /* user_t *; structure and ->snap guarded by mu for reader threads */
    map_t rates; /* rate_t *; writer thread only */
    pthread_mutex_t mu;
    bh_ledger_listener_t listener;
    void *listener_ud;
};

/* ---- map ---- */

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    while (*s != '\0') {
        h ^= (unsigned char)*s++;
        h *= 1099511628211ULL;
    }
    return h;
}

static void **map_slot(const map_t *m, const char *key) {
    size_t mask = m->cap - 1;
    for (size_t i = (size_t)hash_str(key) & mask;; i = (i + 1) & mask) {
        void **slot = &m->slots[i];
        if (*slot == NULL || strcmp((const char *)*slot, key) == 0)
            return slot;
    }
}

static void *map_get(const map_t *m, const char *key) {
    return m->cap == 0 ? NULL : *map_slot(m, key);
}

/* Room for one more item, made before a commit so that installing after it cannot fail. */
static int map_reserve(map_t *m) {
    map_t nm;
    if ((m->n + 1) * 4 <= m->cap * 3)
        return BH_OK;
    nm.cap = m->cap != 0 ? m->cap * 2 : 16;
    nm.n = m->n;
    nm.slots = calloc(nm.cap, sizeof(void *));
    if (nm.slots == NULL)
        return BH_ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i] != NULL)
            *map_slot(&nm, (const char *)m->slots[i]) = m->slots[i];
    }
    free(m->slots);
    *m = nm;
    return BH_OK;
}

/* Insert an item whose key is absent, after map_reserve succeeded. */
static void map_insert(map_t *m, void *item) {
    *map_slot(m, (const char *)item) = item;
    m->n++;
}

/* ---- validation ---- */

static bool valid_user_id(const char *s) {
    size_t n = s != NULL ? strnlen(s, BH_ID_MAX + 1) : 0;
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

static bool valid_op_id(const char *s) {
    size_t n = strnlen(s, BH_ID_MAX + 1);
    if (n == 0 || n > BH_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] > 0x7e)
            return false;
    }
    return true;
}

static bool valid_asset(const char *s) {
    size_t n = s != NULL ? strnlen(s, BH_ASSET_MAX) : 0;
    if (n == 0 || n >= BH_ASSET_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9')))
            return false;
    }
    return true;
}

static bool dec_positive(bh_dec_t d) {
    return !bh_dec_is_neg(d) && !bh_dec_is_zero(d);
}

static const char *op_name(bh_op_kind_t kind) {
    switch (kind) {
    case BH_OP_DEPOSIT:
        return "deposit";
    case BH_OP_WITHDRAW:
        return "withdraw";
    case BH_OP_ALLOCATE:
        return "allocate";
    case BH_OP_RELEASE:
        return "release";
    case BH_OP_SET_LIMIT:
        return "set-limits";
    }
    return NULL;
}

/* ---- rates and exposure ---- */

static void rate_key(char key[RATE_KEY_MAX], const char *currency, const char *asset) {
    size_t c = strnlen(currency, BH_ASSET_MAX - 1), a = strnlen(asset, BH_ASSET_MAX - 1);
    memcpy(key, currency, c);
    key[c] = '/';
    memcpy(key + c + 1, asset, a);
    key[c + 1 + a] = '\0';
}

static rate_t *find_rate(const bh_ledger_t *l, const char *currency, const char *asset) {
    char key[RATE_KEY_MAX];
    rate_key(key, currency, asset);
    return map_get(&l->rates, key);
}

static int exposure_of(const bh_ledger_t *l, const char *base, const char *name, bh_dec_t available,
                       bh_dec_t allocated, bh_dec_t *out) {
    bh_dec_t net, rate;
    const rate_t *r;

    if (bh_dec_add(available, allocated, &net) != BH_OK)
        return BH_ERANGE;
    if (!bh_dec_is_neg(net)) {
        *out = bh_dec_zero();
        return BH_OK;
    }
    if (strcmp(name, base) == 0) {
        rate = bh_dec_from_int(1);
    } else {
        if ((r = find_rate(l, base, name)) == NULL)
            return BH_ENOTFOUND;
        rate = r->rate;
    }
    return bh_dec_mul(rate, bh_dec_neg(net), out);
}

int bh_ledger_exposure(const bh_ledger_t *l, const char *base_currency, const bh_asset_t *a,
                       bh_dec_t *out) {
    if (l == NULL || base_currency == NULL || a == NULL || out == NULL)
        return BH_EINVAL;
    return exposure_of(l, base_currency, a->name, a->available, a->allocated, out);
}

/* The limits only bind an operation that raises the asset's exposure: a rate move may already
 * have pushed a user over, and that must not block operations that reduce or keep the risk. */
static int check_limits(const bh_ledger_t *l, const user_t *u, const bh_store_asset_t *cur,
                        const bh_store_asset_t *next) {
    bh_dec_t e_old, e_new, e, total;
    int rc;

    rc = exposure_of(l, u->base_currency, next->name, next->available, next->allocated, &e_new);
    if (rc != BH_OK)
        return rc == BH_ERANGE ? BH_ELIMIT : rc;
    if (exposure_of(l, u->base_currency, cur->name, cur->available, cur->allocated, &e_old) !=
        BH_OK)
        e_old = bh_dec_zero();
    if (bh_dec_cmp(e_new, e_old) <= 0)
        return BH_OK;
    if (bh_dec_cmp(e_new, next->max_exposure) > 0)
        return BH_ELIMIT;
    total = e_new;
    for (size_t i = 0; i < u->nassets; i++) {
        const bh_store_asset_t *a = &u->assets[i];
        if (strcmp(a->name, next->name) == 0)
            continue;
        rc = exposure_of(l, u->base_currency, a->name, a->available, a->allocated, &e);
        if (rc != BH_OK)
            return rc == BH_ERANGE ? BH_ELIMIT : rc;
        if (bh_dec_add(total, e, &total) != BH_OK)
            return BH_ELIMIT;
    }
    return bh_dec_cmp(total, u->total_max_exposure) > 0 ? BH_ELIMIT : BH_OK;
}

/* Compute next from cur (next starts as a copy of cur). Arithmetic overflow is bad input. */
static int apply_rule(const bh_ledger_t *l, const user_t *u, const bh_op_t *op,
                      const bh_store_asset_t *cur, bh_store_asset_t *next) {
    bh_dec_t amt = op->amount;

    if (op->kind == BH_OP_SET_LIMIT) {
        if (bh_dec_is_neg(amt))
            return BH_EINVAL;
        next->max_exposure = amt;
        return BH_OK;
    }
    if (!dec_positive(amt))
        return BH_EINVAL;
    switch (op->kind) {
    case BH_OP_DEPOSIT:
        return bh_dec_add(cur->available, amt, &next->available) == BH_OK ? BH_OK : BH_EINVAL;
    case BH_OP_WITHDRAW:
        if (bh_dec_sub(cur->available, amt, &next->available) != BH_OK)
            return BH_EINVAL;
        if (!bh_dec_is_neg(next->available))
            return BH_OK;
        /* Going below zero draws on credit; without any maxExposure there is none. */
        if (bh_dec_is_zero(cur->max_exposure))
            return BH_EFUNDS;
        return check_limits(l, u, cur, next);
    case BH_OP_ALLOCATE:
        if (bh_dec_cmp(cur->available, amt) < 0)
            return BH_EFUNDS;
        if (bh_dec_sub(cur->available, amt, &next->available) != BH_OK ||
            bh_dec_add(cur->allocated, amt, &next->allocated) != BH_OK)
            return BH_EINVAL;
        return BH_OK;
    case BH_OP_RELEASE:
        if (bh_dec_cmp(cur->allocated, amt) < 0)
            return BH_EFUNDS;
        if (bh_dec_sub(cur->allocated, amt, &next->allocated) != BH_OK ||
            bh_dec_add(cur->available, amt, &next->available) != BH_OK)
            return BH_EINVAL;
        return BH_OK;
    default:
        return BH_EINVAL;
    }
}

/* ---- publishing ---- */

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int build_snapshot(const bh_ledger_t *l, const user_t *st, bh_snapshot_t **out) {
    bh_asset_t *arr = NULL;
    bh_dec_t total = bh_dec_zero(), e;
    int rc;

    if (st->nassets > 0 && (arr = calloc(st->nassets, sizeof(*arr))) == NULL)
        return BH_ENOMEM;
    for (size_t i = 0; i < st->nassets; i++) {
        const bh_store_asset_t *a = &st->assets[i];
        memcpy(arr[i].name, a->name, sizeof(arr[i].name));
        arr[i].available = a->available;
        arr[i].allocated = a->allocated;
        arr[i].max_exposure = a->max_exposure;
        /* Committed changes were checked with a known rate; only a rate change since then can
         * make this fail (overflow), and a snapshot must still be published. */
        if (exposure_of(l, st->base_currency, a->name, a->available, a->allocated, &e) != BH_OK) {
            bh_log(BH_LOG_WARN, "ledger: exposure of %s for user %s not computable, shown as 0",
                   a->name, st->user_id);
            e = bh_dec_zero();
        }
        arr[i].current_exposure = e;
        bh_dec_add(total, e, &total); /* on overflow total keeps its last value */
    }
    rc = bh_snapshot_new(st->user_id, st->sequence, st->base_currency, total,
                         st->total_max_exposure, st->deleted, arr, st->nassets, out);
    free(arr);
    return rc;
}

/* {"k1":"v1","k2":"decimal"}: the journal's record of an operation's arguments. */
static int detail_json(bh_buf_t *b, const char *k1, const char *v1, const char *k2, bh_dec_t v2) {
    char num[BH_DEC_STRLEN];
    int rc;

    bh_dec_format(v2, num);
    if ((rc = bh_buf_printf(b, "{\"%s\":", k1)) != BH_OK ||
        (rc = bh_json_write_str(b, v1, strlen(v1))) != BH_OK ||
        (rc = bh_buf_printf(b, ",\"%s\":\"%s\"}", k2, num)) != BH_OK)
        return rc;
    return BH_OK;
}

/* Make next durable, then install it in place of u (or as a new user when u is NULL), publish
 * its snapshot and tell the listener. On failure nothing changed and next stays the caller's;
 * on success next's storage (its assets, or next itself for a new user) belongs to the ledger. */
static int publish(bh_ledger_t *l, user_t *u, user_t *next, const bh_store_asset_t *changed,
                   size_t nchanged, const char *op, const char *op_id, const char *detail) {
    bh_snapshot_t *snap = NULL, *old = NULL;
    bh_store_user_t row;
    bh_store_journal_t j;
    int rc;

    if ((rc = build_snapshot(l, next, &snap)) != BH_OK)
        return rc;
    if (u == NULL) {
        pthread_mutex_lock(&l->mu);
        rc = map_reserve(&l->users);
        pthread_mutex_unlock(&l->mu);
        if (rc != BH_OK)
            goto fail;
    }
    memset(&row, 0, sizeof(row));
    memcpy(row.user_id, next->user_id, sizeof(row.user_id));
    memcpy(row.base_currency, next->base_currency, sizeof(row.base_currency));
    row.total_max_exposure = next->total_max_exposure;
    row.sequence = next->sequence;
    row.deleted = next->deleted;
    memset(&j, 0, sizeof(j));
    memcpy(j.user_id, next->user_id, sizeof(j.user_id));
    j.sequence = next->sequence;
    snprintf(j.op_id, sizeof(j.op_id), "%s", op_id);
    snprintf(j.op, sizeof(j.op), "%s", op);
    j.detail = detail;
    j.time_ms = now_ms();
    if ((rc = bh_store_commit_user(l->store, &row, changed, nchanged, &j)) != BH_OK)
        goto fail;

    next->snap = snap;
    pthread_mutex_lock(&l->mu);
    if (u == NULL) {
        map_insert(&l->users, next);
    } else {
        old = u->snap;
        free(u->assets);
        *u = *next;
    }
    pthread_mutex_unlock(&l->mu);
    bh_snapshot_release(old);
    if (l->listener != NULL)
        l->listener(l->listener_ud, snap);
    return BH_OK;
fail:
    bh_snapshot_release(snap);
    return rc;
}

/* ---- public operations ---- */

int bh_ledger_create_user(bh_ledger_t *l, const char *user_id, const char *base_currency,
                          bh_dec_t total_max_exposure) {
    user_t *nu;
    bh_buf_t detail;
    int rc;

    if (l == NULL || !valid_user_id(user_id) || !valid_asset(base_currency) ||
        bh_dec_is_neg(total_max_exposure))
        return BH_EINVAL;
    if (map_get(&l->users, user_id) != NULL)
        return BH_EEXIST;
    bh_buf_init(&detail, 0);
    if ((nu = calloc(1, sizeof(*nu))) == NULL)
        return BH_ENOMEM;
    memcpy(nu->user_id, user_id, strlen(user_id) + 1);
    memcpy(nu->base_currency, base_currency, strlen(base_currency) + 1);
    nu->total_max_exposure = total_max_exposure;
    nu->sequence = 1;
    if ((rc = detail_json(&detail, "baseCurrency", base_currency, "totalMaxExposure",
                          total_max_exposure)) != BH_OK)
        goto fail;
    rc = publish(l, NULL, nu, NULL, 0, "create-user", "create-user", detail.data);
    if (rc != BH_OK)
        goto fail;
    bh_buf_free(&detail);
    return BH_OK;
fail:
    bh_buf_free(&detail);
    free(nu);
    return rc;
}

/* Index of the asset called name in u, or where it would be inserted (*found tells which). */
static size_t find_asset(const user_t *u, const char *name, bool *found) {
    size_t lo = 0, hi = u->nassets;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(u->assets[mid].name, name);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

int bh_ledger_apply(bh_ledger_t *l, const char *user_id, const bh_op_t *op, uint64_t *sequence) {
    bh_store_asset_t cur, nx;
    user_t *u, next;
    bh_buf_t detail;
    uint64_t first;
    size_t pos;
    bool found;
    int rc;

    if (l == NULL || op == NULL || !valid_user_id(user_id) || !valid_op_id(op->op_id) ||
        !valid_asset(op->asset) || op_name(op->kind) == NULL)
        return BH_EINVAL;
    u = map_get(&l->users, user_id);
    if (u == NULL || u->deleted)
        return BH_ENOTFOUND;
    rc = bh_store_find_op(l->store, user_id, op->op_id, &first);
    if (rc == BH_OK) {
        if (sequence != NULL)
            *sequence = first;
        return BH_EEXIST;
    }
    if (rc != BH_ENOTFOUND)
        return rc;

    pos = find_asset(u, op->asset, &found);
    memset(&cur, 0, sizeof(cur));
    if (found)
        cur = u->assets[pos];
    else
        memcpy(cur.name, op->asset, strlen(op->asset) + 1);
    nx = cur;
    if ((rc = apply_rule(l, u, op, &cur, &nx)) != BH_OK)
        return rc;

    next = *u;
    next.sequence = u->sequence + 1;
    next.nassets = u->nassets + (found ? 0 : 1);
    next.assets = malloc(next.nassets * sizeof(*next.assets));
    if (next.assets == NULL)
        return BH_ENOMEM;
    /* The copy with nx at pos: replacing the old row when found, else inserted there. */
    for (size_t i = 0, k = 0; i < next.nassets; i++) {
        if (i == pos) {
            next.assets[i] = nx;
            k += found ? 1 : 0;
        } else {
            next.assets[i] = u->assets[k++];
        }
    }

    bh_buf_init(&detail, 0);
    if ((rc = detail_json(&detail, "asset", op->asset, "amount", op->amount)) != BH_OK)
        goto fail;
    rc = publish(l, u, &next, &nx, 1, op_name(op->kind), op->op_id, detail.data);
    if (rc == BH_EEXIST) {
        /* Another writer journaled this op id between the lookup and the commit. */
        if (bh_store_find_op(l->store, user_id, op->op_id, &first) == BH_OK && sequence != NULL)
            *sequence = first;
        goto fail;
    }
    if (rc != BH_OK)
        goto fail;
    bh_buf_free(&detail);
    if (sequence != NULL)
        *sequence = u->sequence;
    return BH_OK;
fail:
    bh_buf_free(&detail);
    free(next.assets);
    return rc;
}

int bh_ledger_set_rate(bh_ledger_t *l, const char *currency, const char *asset, bh_dec_t rate) {
    bh_store_rate_t row;
    rate_t *r, *fresh = NULL;
    int rc;

    if (l == NULL || !valid_asset(currency) || !valid_asset(asset) ||
        strcmp(currency, asset) == 0 || !dec_positive(rate))
        return BH_EINVAL;
    r = find_rate(l, currency, asset);
    if (r == NULL) {
        if ((fresh = calloc(1, sizeof(*fresh))) == NULL)
            return BH_ENOMEM;
        rate_key(fresh->key, currency, asset);
        if ((rc = map_reserve(&l->rates)) != BH_OK)
            goto fail;
    }
    memset(&row, 0, sizeof(row));
    memcpy(row.currency, currency, strlen(currency) + 1);
    memcpy(row.asset, asset, strlen(asset) + 1);
    row.rate = rate;
    if ((rc = bh_store_put_rate(l->store, &row)) != BH_OK)
        goto fail;
    if (r == NULL) {
        fresh->rate = rate;
        map_insert(&l->rates, fresh);
    } else {
        r->rate = rate;
    }
    return BH_OK;
fail:
    free(fresh);
    return rc;
}

bh_snapshot_t *bh_ledger_snapshot(bh_ledger_t *l, const char *user_id) {
    bh_snapshot_t *s = NULL;
    user_t *u;

    if (l == NULL || user_id == NULL)
        return NULL;
    pthread_mutex_lock(&l->mu);
    if ((u = map_get(&l->users, user_id)) != NULL)
        s = bh_snapshot_acquire(u->snap);
    pthread_mutex_unlock(&l->mu);
    return s;
}

void bh_ledger_set_listener(bh_ledger_t *l, bh_ledger_listener_t fn, void *ud) {
    if (l == NULL)
        return;
    l->listener = fn;
    l->listener_ud = ud;
}

/* ---- open / close ---- */

static int load_user(void *ud, const bh_store_user_t *su, const bh_store_asset_t *assets,
                     size_t n) {
    bh_ledger_t *l = ud;
    user_t *u;
    int rc;

    if (map_get(&l->users, su->user_id) != NULL)
        return BH_ESTORE;
    for (size_t i = 1; i < n; i++) {
        if (strcmp(assets[i - 1].name, assets[i].name) >= 0)
            return BH_ESTORE; /* the store promised sorted, distinct names */
    }
    if ((rc = map_reserve(&l->users)) != BH_OK)
        return rc;
    if ((u = calloc(1, sizeof(*u))) == NULL)
        return BH_ENOMEM;
    if (n > 0 && (u->assets = malloc(n * sizeof(*u->assets))) == NULL) {
        free(u);
        return BH_ENOMEM;
    }
    memcpy(u->user_id, su->user_id, sizeof(u->user_id));
    memcpy(u->base_currency, su->base_currency, sizeof(u->base_currency));
    u->total_max_exposure = su->total_max_exposure;
    u->sequence = su->sequence;
    u->deleted = su->deleted;
    if (n > 0)
        memcpy(u->assets, assets, n * sizeof(*u->assets));
    u->nassets = n;
    map_insert(&l->users, u);
    return BH_OK;
}

static int load_rate(void *ud, const bh_store_rate_t *sr) {
    bh_ledger_t *l = ud;
    rate_t *r = find_rate(l, sr->currency, sr->asset);
    int rc;

    if (r == NULL) {
        if ((rc = map_reserve(&l->rates)) != BH_OK)
            return rc;
        if ((r = calloc(1, sizeof(*r))) == NULL)
            return BH_ENOMEM;
        rate_key(r->key, sr->currency, sr->asset);
        map_insert(&l->rates, r);
    }
    r->rate = sr->rate;
    return BH_OK;
}

int bh_ledger_open(bh_store_t *store, bh_ledger_t **out) {
    bh_store_visitor_t v;
    bh_ledger_t *l;
    int rc;

    if (store == NULL || out == NULL)
        return BH_EINVAL;
    *out = NULL;
    if ((l = calloc(1, sizeof(*l))) == NULL)
        return BH_ENOMEM;
    if (pthread_mutex_init(&l->mu, NULL) != 0) {
        free(l);
        return BH_ENOMEM;
    }
    l->store = store;
    memset(&v, 0, sizeof(v));
    v.ud = l;
    v.user = load_user;
    v.rate = load_rate;
    if ((rc = bh_store_load(store, &v)) != BH_OK)
        goto fail;
    /* Exposures need the rates, which the store visits after the users. */
    for (size_t i = 0; i < l->users.cap; i++) {
        user_t *u = l->users.slots[i];
        if (u != NULL && (rc = build_snapshot(l, u, &u->snap)) != BH_OK)
            goto fail;
    }
    *out = l;
    return BH_OK;
fail:
    bh_ledger_close(l);
    return rc;
}

void bh_ledger_close(bh_ledger_t *l) {
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->users.cap; i++) {
        user_t *u = l->users.slots[i];
        if (u != NULL) {
            bh_snapshot_release(u->snap);
            free(u->assets);
            free(u);
        }
    }
    for (size_t i = 0; i < l->rates.cap; i++)
        free(l->rates.slots[i]);
    free(l->users.slots);
    free(l->rates.slots);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
