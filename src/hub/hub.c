/* Execution hub: GetBalances(clientId) answers with the user's snapshot in an executionEvents
 * envelope (bad arguments answer with a preChecksError event, as the exchange's API does), and
 * committed ledger changes are pushed to the user's subscribed connections, each sequence at
 * most once and in order. One per I/O thread; group.c ties them together. */
#include "hub.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"
#include "../base/log.h"
#include "../base/metrics.h"
#include "internal.h"

#define BH_HUB_EVENT "executionEvents"
#define BH_HUB_MIN_BUCKETS 64

typedef struct hub_user hub_user_t;

/* Per-connection state, owned through bh_sr_conn_set_data from on_connected to
 * on_disconnected; a member of its user's list for exactly that time. */
typedef struct hub_conn {
    struct hub_conn *prev, *next; /* the user's connections */
    hub_user_t *user;
    bh_hub_rate_t *rate; /* its key's bucket in the group; NULL: not limited */
    bh_sr_conn_t *c;
    uint64_t round;    /* the last fan-out that already served this connection */
    uint64_t last_seq; /* sequence of the last snapshot or update it was sent */
    int subscribed;    /* had a successful GetBalances */
    size_t client_id_len;
    char client_id[BH_HUB_CLIENT_ID_MAX * 4 + 1]; /* of the latest successful GetBalances */
} hub_conn_t;

/* One user with open connections; exists while its list is non-empty. */
struct hub_user {
    hub_user_t *next_in_bucket;
    hub_conn_t *head;
    /* The newest snapshot of this user this thread has seen (posted changes, or read from the
     * ledger once), referenced: GetBalances answers from it without touching the ledger's lock
     * or the snapshot's shared reference count. Never older than anything sent from here, since
     * it is replaced before each fan-out. */
    bh_snapshot_t *snap;
    uint64_t hash;
    char user_id[BH_SR_ID_MAX + 1];
};

struct bh_hub {
    bh_ledger_t *ledger;
    const bh_keyring_t *keyring;
    bh_buf_t env;         /* envelope scratch */
    bh_buf_t env_mp;      /* the same envelope as MessagePack, for MessagePack connections */
    hub_user_t **buckets; /* user id -> its connections; chained, power-of-two size */
    size_t nbuckets, nusers;
    uint64_t round;        /* fan-out counter, see hub_conn_t.round */
    bh_hub_group_t *group; /* NULL: a hub on its own, without command-rate limit */
    uint64_t seen;         /* bh_ledger_published count whose changes all reached this hub */
};

/* ---- user index ---- */

static uint64_t hash_id(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static hub_user_t *user_find(const bh_hub_t *h, const char *user_id) {
    uint64_t hash = hash_id(user_id);
    for (hub_user_t *u = h->buckets[hash & (h->nbuckets - 1)]; u; u = u->next_in_bucket)
        if (u->hash == hash && strcmp(u->user_id, user_id) == 0)
            return u;
    return NULL;
}

/* Double the table (or make the first one) so chains stay short. */
static int grow(bh_hub_t *h) {
    size_t n = h->nbuckets ? h->nbuckets * 2 : BH_HUB_MIN_BUCKETS;
    hub_user_t **b = calloc(n, sizeof *b);
    if (!b)
        return BH_ENOMEM;
    for (size_t i = 0; i < h->nbuckets; i++) {
        hub_user_t *u = h->buckets[i];
        while (u) {
            hub_user_t *next = u->next_in_bucket;
            hub_user_t **slot = &b[u->hash & (n - 1)];
            u->next_in_bucket = *slot;
            *slot = u;
            u = next;
        }
    }
    free(h->buckets);
    h->buckets = b;
    h->nbuckets = n;
    return BH_OK;
}

static hub_user_t *user_get(bh_hub_t *h, const char *user_id) {
    hub_user_t *u = user_find(h, user_id);
    if (u)
        return u;
    size_t len = strlen(user_id);
    if (len >= sizeof u->user_id)
        return NULL;
    if (h->nusers >= h->nbuckets)
        grow(h); /* on failure the old table stays, with longer chains */
    u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    memcpy(u->user_id, user_id, len + 1);
    u->hash = hash_id(user_id);
    hub_user_t **slot = &h->buckets[u->hash & (h->nbuckets - 1)];
    u->next_in_bucket = *slot;
    *slot = u;
    h->nusers++;
    return u;
}

static void user_remove(bh_hub_t *h, hub_user_t *u) {
    for (hub_user_t **p = &h->buckets[u->hash & (h->nbuckets - 1)]; *p; p = &(*p)->next_in_bucket) {
        if (*p == u) {
            *p = u->next_in_bucket;
            break;
        }
    }
    h->nusers--;
    bh_snapshot_release(u->snap);
    free(u);
}

/* Keep snap as u's newest when it is newer (a posted change, or a read from the ledger). */
static void user_keep_newer(hub_user_t *u, const bh_snapshot_t *snap) {
    if (u->snap && u->snap->sequence >= snap->sequence)
        return;
    bh_snapshot_release(u->snap);
    u->snap = bh_snapshot_acquire(snap);
}

static void conn_link(hub_user_t *u, hub_conn_t *hc) {
    hc->user = u;
    hc->prev = NULL;
    hc->next = u->head;
    if (u->head)
        u->head->prev = hc;
    u->head = hc;
}

static void conn_unlink(bh_hub_t *h, hub_conn_t *hc) {
    hub_user_t *u = hc->user;
    if (hc->prev)
        hc->prev->next = hc->next;
    else
        u->head = hc->next;
    if (hc->next)
        hc->next->prev = hc->prev;
    hc->prev = hc->next = NULL;
    hc->user = NULL;
    if (!u->head)
        user_remove(h, u);
}

/* ---- envelopes ---- */

int bh_hub_write_envelope(bh_buf_t *b, const char *subject, const char *type, const char *client_id,
                          const char *data, size_t data_len) {
    int r = bh_buf_appends(b, "{\"channel\":\"" BH_HUB_EVENT "\",\"topic\":\"account.balances\","
                              "\"subject\":");
    if (r == 0)
        r = bh_json_write_str(b, subject, strlen(subject));
    if (r == 0)
        r = bh_buf_appends(b, ",\"type\":");
    if (r == 0)
        r = bh_json_write_str(b, type, strlen(type));
    if (r == 0)
        r = bh_buf_appends(b, ",\"clientId\":");
    if (r == 0)
        r = client_id ? bh_json_write_str(b, client_id, strlen(client_id))
                      : bh_buf_appends(b, "null");
    if (r == 0)
        r = bh_buf_appends(b, ",\"data\":");
    if (r == 0)
        r = bh_buf_append(b, data, data_len);
    if (r == 0)
        r = bh_buf_appendc(b, '}');
    return r;
}

static int mp_write(void *data, const char *p, size_t n) {
    return bh_buf_append(data, p, n);
}

static int mp_cstr(msgpack_packer *pk, const char *s) {
    return msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* Key-value pairs of the envelope map, in the JSON envelope's order: the bytes the SignalR
 * transcoder would make of bh_hub_write_envelope's text. */
int bh_hub_write_envelope_mp(bh_buf_t *b, const char *subject, const char *type,
                             const char *client_id, const char *data_mp, size_t data_len) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, mp_write);
    int r = msgpack_pack_map(&pk, 6);
    if (r == 0 && (r = mp_cstr(&pk, "channel")) == 0)
        r = mp_cstr(&pk, BH_HUB_EVENT);
    if (r == 0 && (r = mp_cstr(&pk, "topic")) == 0)
        r = mp_cstr(&pk, "account.balances");
    if (r == 0 && (r = mp_cstr(&pk, "subject")) == 0)
        r = mp_cstr(&pk, subject);
    if (r == 0 && (r = mp_cstr(&pk, "type")) == 0)
        r = mp_cstr(&pk, type);
    if (r == 0 && (r = mp_cstr(&pk, "clientId")) == 0)
        r = client_id ? mp_cstr(&pk, client_id) : msgpack_pack_nil(&pk);
    if (r == 0 && (r = mp_cstr(&pk, "data")) == 0)
        r = bh_buf_append(b, data_mp, data_len);
    return r;
}

/* An event whose data is {"message": msg}. */
static int send_message_event(bh_hub_t *h, bh_sr_conn_t *c, const char *subject,
                              const char *client_id, const char *msg) {
    bh_buf_t data;
    bh_buf_init(&data, 0);
    int r = bh_buf_appends(&data, "{\"message\":");
    if (r == 0)
        r = bh_json_write_str(&data, msg, strlen(msg));
    if (r == 0)
        r = bh_buf_appendc(&data, '}');
    bh_buf_reset(&h->env);
    if (r == 0)
        r = bh_hub_write_envelope(&h->env, subject, "error", client_id, data.data, data.len);
    if (r == 0)
        r = bh_sr_send_event(c, BH_HUB_EVENT, h->env.data, h->env.len);
    if (r == 0)
        bh_metric_add(
            strcmp(subject, "preChecksError") == 0 ? BH_M_EVENT_PRECHECKS : BH_M_EVENT_ERROR, 1);
    bh_buf_free(&data);
    return r;
}

static size_t utf8_chars(const char *s, size_t n) {
    size_t chars = 0;
    for (size_t i = 0; i < n; i++)
        chars += ((unsigned char)s[i] & 0xC0) != 0x80;
    return chars;
}

/* The pre-check message for GetBalances' arguments, or NULL when they are fine. */
static const char *check_client_id(const bh_json_t *args, const bh_json_t **id) {
    *id = bh_json_at(args, 0);
    if (args->count > 1)
        return "GetBalances takes exactly one argument: clientId";
    if (!*id || (*id)->type == BH_JSON_NULL)
        return "clientId is required";
    if ((*id)->type != BH_JSON_STRING)
        return "clientId must be a string";
    if ((*id)->len == 0)
        return "clientId must not be empty";
    if (utf8_chars((*id)->str, (*id)->len) > BH_HUB_CLIENT_ID_MAX)
        return "clientId must be at most 36 characters";
    if (memchr((*id)->str, 0, (*id)->len))
        return "clientId must not contain NUL characters";
    return NULL;
}

/* Send snap's envelope to c, built in c's protocol only (MessagePack from the snapshot's cached
 * bytes, or JSON; a snapshot without MessagePack bytes goes as JSON, transcoded). */
static int send_snapshot(bh_hub_t *h, bh_sr_conn_t *c, const char *subject, const char *client_id,
                         const bh_snapshot_t *snap) {
    int r;
    if (bh_sr_conn_binary(c) && snap->mp) {
        bh_buf_reset(&h->env_mp);
        r = bh_hub_write_envelope_mp(&h->env_mp, subject, "message", client_id, snap->mp,
                                     snap->mp_len);
        return r ? r
                 : bh_sr_send_event_encoded(c, BH_HUB_EVENT, NULL, 0, h->env_mp.data,
                                            h->env_mp.len);
    }
    bh_buf_reset(&h->env);
    r = bh_hub_write_envelope(&h->env, subject, "message", client_id, snap->json, snap->json_len);
    return r ? r : bh_sr_send_event(c, BH_HUB_EVENT, h->env.data, h->env.len);
}

static int get_balances(void *ud, bh_sr_conn_t *c, const bh_json_t *args, const char **error) {
    bh_hub_t *h = ud;
    const bh_json_t *id;
    const char *bad = check_client_id(args, &id);
    hub_conn_t *hcr = bh_sr_conn_data(c);
    if (hcr && hcr->rate && !bh_hub_rate_take(h->group, hcr->rate)) {
        /* Over the key's rate: an error event, the invocation still completes normally. */
        const char *echo =
            id && id->type == BH_JSON_STRING && !memchr(id->str, 0, id->len) ? id->str : NULL;
        bh_metric_add(BH_M_LIMIT_RATE, 1);
        bh_log(BH_LOG_DEBUG, "command rate exceeded", BH_LS("connection_id", bh_sr_conn_id(c)),
               BH_LS("key_id", bh_sr_conn_key_id(c)));
        send_message_event(h, c, "account.balances.error", echo, "rate limit exceeded");
        return BH_OK;
    }
    if (bad) {
        const char *echo =
            id && id->type == BH_JSON_STRING && !memchr(id->str, 0, id->len) ? id->str : NULL;
        send_message_event(h, c, "preChecksError", echo, bad);
        return BH_OK;
    }
    hub_user_t *hu = hcr ? hcr->user : NULL;
    if (hu && (!hu->snap || h->seen != bh_ledger_published(h->ledger))) {
        /* No copy yet, or changes published that have not reached this thread: the ledger's
         * (a short lock), so an answer is never older than what the admin API acknowledged. */
        bh_snapshot_t *read = bh_ledger_snapshot(h->ledger, hu->user_id);
        if (read) {
            user_keep_newer(hu, read);
            bh_snapshot_release(read);
        }
    }
    /* Borrowed: nothing replaces hu->snap while this call runs (changes arrive from the loop). */
    bh_snapshot_t *owned = hu ? NULL : bh_ledger_snapshot(h->ledger, bh_sr_conn_user(c));
    const bh_snapshot_t *snap = hu ? hu->snap : owned;
    if (!snap || snap->deleted) {
        bh_snapshot_release(owned);
        send_message_event(h, c, "account.balances.error", id->str,
                           "balances are not available for this user");
        return BH_OK;
    }
    int r = send_snapshot(h, c, "account.balances.snapshot", id->str, snap);
    uint64_t seq = snap->sequence;
    bh_snapshot_release(owned);
    if (r == 0)
        bh_metric_add(BH_M_EVENT_SNAPSHOT, 1);
    hub_conn_t *hcn = bh_sr_conn_data(c);
    if (r == 0 && hcn && id->len < sizeof hcn->client_id) {
        /* From here on, every committed change reaches this connection under this clientId.
         * A change is published before it is posted to this thread, so the ones still queued
         * here are at most seq (skipped then) and every later one arrives after this. Asked
         * for, the snapshot goes out even when it repeats the last sequence sent; it is never
         * older (publication happened before the queued change reached us). */
        memcpy(hcn->client_id, id->str, id->len + 1);
        hcn->client_id_len = id->len;
        hcn->subscribed = 1;
        if (seq > hcn->last_seq)
            hcn->last_seq = seq;
    }
    if (r < 0 && r != BH_ECLOSED)
        *error = "internal error";
    return r == BH_ECLOSED ? BH_OK : r;
}

static const bh_sr_method_t methods[] = {
    {"GetBalances", get_balances, BH_M_INVOKE_GETBALANCES_OK, BH_M_INVOKE_GETBALANCES_ERROR},
};

static int hub_authenticate(void *ud, const char *key, size_t len, char user_id[BH_SR_ID_MAX + 1],
                            char key_id[BH_SR_ID_MAX + 1]) {
    bh_hub_t *h = ud;
    char kid[BH_KEY_ID_LEN + 1];
    int r = bh_keyring_lookup(h->keyring, key, len, user_id, kid);
    if (r < 0)
        return r;
    /* A deleted user's keys open nothing (and a not-yet-durable user has no snapshot). */
    bh_snapshot_t *snap = bh_ledger_snapshot(h->ledger, user_id);
    int live = snap && !snap->deleted;
    bh_snapshot_release(snap);
    if (!live)
        return BH_ENOTFOUND;
    memcpy(key_id, kid, sizeof kid);
    return BH_OK;
}

static void hub_connected(void *ud, bh_sr_conn_t *c) {
    bh_hub_t *h = ud;
    hub_conn_t *hc = calloc(1, sizeof *hc);
    hub_user_t *u = hc ? user_get(h, bh_sr_conn_user(c)) : NULL;
    if (!u) {
        /* A connection the hub cannot index could never be closed on delete or revoke. */
        free(hc);
        bh_log(BH_LOG_WARN, "out of memory for a new connection",
               BH_LS("connection_id", bh_sr_conn_id(c)));
        bh_sr_close(c, "Server out of memory.", 1);
        return;
    }
    hc->c = c;
    /* NULL (no group, or out of memory): not limited */
    hc->rate = h->group ? bh_hub_rate_ref(h->group, bh_sr_conn_key_id(c)) : NULL;
    conn_link(u, hc);
    bh_sr_conn_set_data(c, hc);
    /* The key was checked when the transport request came in; a revocation or deletion since
     * then closed only the connections indexed at that moment. Revoking marks the keyring (and
     * deleting publishes the deleted snapshot) before the close is posted to this thread, so
     * from here on either that close finds this connection or this check sees the change. */
    bh_snapshot_t *snap = bh_ledger_snapshot(h->ledger, u->user_id);
    int live = snap && !snap->deleted;
    bh_snapshot_release(snap);
    if (!live)
        bh_sr_close(c, "user deleted", 0);
    else if (h->keyring && !bh_keyring_active(h->keyring, bh_sr_conn_key_id(c)))
        bh_sr_close(c, "API key revoked", 0);
}

static void hub_disconnected(void *ud, bh_sr_conn_t *c) {
    bh_hub_t *h = ud;
    hub_conn_t *hc = bh_sr_conn_data(c);
    if (!hc)
        return;
    conn_unlink(h, hc);
    if (hc->rate)
        bh_hub_rate_unref(h->group, hc->rate);
    bh_sr_conn_set_data(c, NULL);
    free(hc);
}

static const bh_sr_hooks_t hooks = {hub_authenticate, hub_connected, hub_disconnected};

const bh_sr_method_t *bh_hub_methods(size_t *n) {
    *n = sizeof methods / sizeof methods[0];
    return methods;
}

const bh_sr_hooks_t *bh_hub_hooks(void) {
    return &hooks;
}

/* ---- live updates ---- */

static int same_client_id(const hub_conn_t *a, const hub_conn_t *b) {
    return a->client_id_len == b->client_id_len &&
           memcmp(a->client_id, b->client_id, a->client_id_len) == 0;
}

/* Whether hc is to get snap in this fan-out: subscribed, not served yet, and snap is newer
 * than anything it was sent (a GetBalances may have read a newer one). */
static int wants(const hub_conn_t *hc, const bh_snapshot_t *snap, uint64_t round) {
    return hc->subscribed && hc->round != round && snap->sequence > hc->last_seq;
}

/* Push snap to every subscribed connection of u. The envelope is built once per distinct
 * clientId and protocol (MessagePack only when one of them speaks it) and its bytes are sent
 * to every connection subscribed under that clientId. */
static void fan_out(bh_hub_t *h, hub_user_t *u, const bh_snapshot_t *snap) {
    uint64_t round = ++h->round;
    for (hub_conn_t *hc = u->head; hc; hc = hc->next) {
        if (!wants(hc, snap, round))
            continue;
        int have_json = 0, have_mp = 0;
        /* Sending never unlinks a connection: even a close forced by a send (slow consumer
         * over the output cap) reaches on_disconnected from a later libuv callback. */
        for (hub_conn_t *o = hc; o; o = o->next) {
            if (!wants(o, snap, round) || !same_client_id(o, hc))
                continue;
            int r = 0, mp = snap->mp && bh_sr_conn_binary(o->c);
            if (mp && !have_mp) {
                bh_buf_reset(&h->env_mp);
                r = bh_hub_write_envelope_mp(&h->env_mp, "account.balances.update", "message",
                                             hc->client_id, snap->mp, snap->mp_len);
                have_mp = r == 0;
            } else if (!mp && !have_json) {
                bh_buf_reset(&h->env);
                r = bh_hub_write_envelope(&h->env, "account.balances.update", "message",
                                          hc->client_id, snap->json, snap->json_len);
                have_json = r == 0;
            }
            if (r < 0) {
                /* The client sees the sequence gap on the next update and asks again. */
                bh_log(BH_LOG_WARN, "cannot build a balances update",
                       BH_LS("error", bh_strerror(r)));
                continue;
            }
            o->round = round;
            o->last_seq = snap->sequence;
            if (bh_sr_send_event_encoded(o->c, BH_HUB_EVENT, have_json ? h->env.data : NULL,
                                         h->env.len, have_mp ? h->env_mp.data : NULL,
                                         h->env_mp.len) == 0)
                bh_metric_add(BH_M_EVENT_UPDATE, 1);
        }
    }
}

/* Close every connection of u (key_id NULL) or those opened with key_id. bh_sr_close only
 * starts the close: each connection stays linked, and valid, until its on_disconnected. */
static void close_conns(hub_user_t *u, const char *key_id, const char *error) {
    hub_conn_t *next;
    for (hub_conn_t *hc = u->head; hc; hc = next) {
        next = hc->next;
        if (!key_id || strcmp(bh_sr_conn_key_id(hc->c), key_id) == 0)
            bh_sr_close(hc->c, error, 0);
    }
}

void bh_hub_on_change(void *hub, const bh_snapshot_t *snap) {
    bh_hub_t *h = hub;
    hub_user_t *u = user_find(h, snap->user_id);
    if (!u)
        return;
    user_keep_newer(u, snap);
    fan_out(h, u, snap);
    if (snap->deleted)
        close_conns(u, NULL, "user deleted");
}

void bh_hub_close_user(bh_hub_t *h, const char *user_id) {
    hub_user_t *u = user_find(h, user_id);
    if (u)
        close_conns(u, NULL, "user deleted");
}

void bh_hub_close_key(bh_hub_t *h, const char *user_id, const char *key_id) {
    if (user_id) {
        hub_user_t *u = user_find(h, user_id);
        if (u)
            close_conns(u, key_id, "API key revoked");
        return;
    }
    for (size_t i = 0; i < h->nbuckets; i++)
        for (hub_user_t *u = h->buckets[i]; u; u = u->next_in_bucket)
            close_conns(u, key_id, "API key revoked");
}

/* ---- lifetime ---- */

int bh_hub_new(bh_ledger_t *ledger, const bh_keyring_t *keyring, bh_hub_t **out) {
    bh_hub_t *h = calloc(1, sizeof *h);
    if (!h)
        return BH_ENOMEM;
    h->ledger = ledger;
    h->keyring = keyring;
    bh_buf_init(&h->env, 0);
    bh_buf_init(&h->env_mp, 0);
    if (grow(h) < 0) {
        free(h);
        return BH_ENOMEM;
    }
    *out = h;
    return BH_OK;
}

/* Connections normally are all gone by now (the server closes them first); whatever is left
 * is freed without touching the SignalR connections, which may be gone already. */
void bh_hub_free(bh_hub_t *h) {
    if (!h)
        return;
    for (size_t i = 0; i < h->nbuckets; i++) {
        hub_user_t *u = h->buckets[i];
        while (u) {
            hub_user_t *next = u->next_in_bucket;
            for (hub_conn_t *hc = u->head, *n; hc; hc = n) {
                n = hc->next;
                free(hc);
            }
            bh_snapshot_release(u->snap);
            free(u);
            u = next;
        }
    }
    free(h->buckets); /* their rate references go with the group */
    bh_buf_free(&h->env);
    bh_buf_free(&h->env_mp);
    free(h);
}

void bh_hub_set_group(bh_hub_t *h, bh_hub_group_t *g) {
    h->group = g;
}

void bh_hub_set_seen(bh_hub_t *h, uint64_t published) {
    h->seen = published;
}

bh_hub_group_t *bh_hub_group_of(const bh_hub_t *h) {
    return h->group;
}

void bh_hub_sources(const bh_hub_t *h, bh_ledger_t **ledger, const bh_keyring_t **keyring) {
    *ledger = h->ledger;
    *keyring = h->keyring;
}
