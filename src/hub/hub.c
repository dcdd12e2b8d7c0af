/* Execution hub: GetBalances(clientId) answers with the user's snapshot in an executionEvents
 * envelope; bad arguments answer with a preChecksError event, as the exchange's API does. */
#include "hub.h"

#include <stdlib.h>
#include <string.h>

#include "../base/error.h"
#include "../base/log.h"

#define BH_HUB_EVENT "executionEvents"

struct bh_hub {
    bh_ledger_t *ledger;
    const bh_keyring_t *keyring;
    bh_buf_t env; /* envelope scratch */
};

/* Per-connection state: the clientId of its balances subscription, once it has one. */
typedef struct {
    char client_id[BH_HUB_CLIENT_ID_MAX * 4 + 1];
    int subscribed;
} hub_conn_t;

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

static int get_balances(void *ud, bh_sr_conn_t *c, const bh_json_t *args, const char **error) {
    bh_hub_t *h = ud;
    const bh_json_t *id;
    const char *bad = check_client_id(args, &id);
    if (bad) {
        const char *echo =
            id && id->type == BH_JSON_STRING && !memchr(id->str, 0, id->len) ? id->str : NULL;
        send_message_event(h, c, "preChecksError", echo, bad);
        return BH_OK;
    }
    bh_snapshot_t *snap = bh_ledger_snapshot(h->ledger, bh_sr_conn_user(c));
    if (!snap || snap->deleted) {
        if (snap)
            bh_snapshot_release(snap);
        send_message_event(h, c, "account.balances.error", id->str,
                           "balances are not available for this user");
        return BH_OK;
    }
    bh_buf_reset(&h->env);
    int r = bh_hub_write_envelope(&h->env, "account.balances.snapshot", "message", id->str,
                                  snap->json, snap->json_len);
    bh_snapshot_release(snap);
    if (r == 0)
        r = bh_sr_send_event(c, BH_HUB_EVENT, h->env.data, h->env.len);
    hub_conn_t *hcn = bh_sr_conn_data(c);
    if (r == 0 && hcn) {
        memcpy(hcn->client_id, id->str, id->len + 1);
        hcn->subscribed = 1;
    }
    if (r < 0 && r != BH_ECLOSED)
        *error = "internal error";
    return r == BH_ECLOSED ? BH_OK : r;
}

static const bh_sr_method_t methods[] = {
    {"GetBalances", get_balances},
};

static int hub_authenticate(void *ud, const char *key, size_t len, char user_id[BH_SR_ID_MAX + 1],
                            char key_id[BH_SR_ID_MAX + 1]) {
    bh_hub_t *h = ud;
    char kid[BH_KEY_ID_LEN + 1];
    int r = bh_keyring_lookup(h->keyring, key, len, user_id, kid);
    if (r == 0)
        memcpy(key_id, kid, sizeof kid);
    return r;
}

static void hub_connected(void *ud, bh_sr_conn_t *c) {
    hub_conn_t *hcn = calloc(1, sizeof *hcn);
    bh_sr_conn_set_data(c, hcn); /* NULL on allocation failure: GetBalances still answers */
}

static void hub_disconnected(void *ud, bh_sr_conn_t *c) {
    free(bh_sr_conn_data(c));
    bh_sr_conn_set_data(c, NULL);
}

static const bh_sr_hooks_t hooks = {hub_authenticate, hub_connected, hub_disconnected};

const bh_sr_method_t *bh_hub_methods(size_t *n) {
    *n = sizeof methods / sizeof methods[0];
    return methods;
}

const bh_sr_hooks_t *bh_hub_hooks(void) {
    return &hooks;
}

int bh_hub_new(bh_ledger_t *ledger, const bh_keyring_t *keyring, bh_hub_t **out) {
    bh_hub_t *h = calloc(1, sizeof *h);
    if (!h)
        return BH_ENOMEM;
    h->ledger = ledger;
    h->keyring = keyring;
    bh_buf_init(&h->env, 0);
    *out = h;
    return BH_OK;
}

void bh_hub_free(bh_hub_t *h) {
    if (!h)
        return;
    bh_buf_free(&h->env);
    free(h);
}
