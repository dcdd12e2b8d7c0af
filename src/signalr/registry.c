/* Connection tokens (HMAC-signed, checkable on any node) and this node's registry of sessions
 * by token: negotiated sessions waiting for their transport (a FIFO, since they all expire
 * after the same time) and live ones that Server-Sent Events, Long Polling and stateful
 * reconnect find again by token. */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"
#include "internal.h"

#define BH_SR_MIN_BUCKETS 64
#define BH_SR_STATEFUL_BIT (1ull << 63)

static void b64url(const uint8_t *in, size_t n, char *out) {
    unsigned char tmp[128];
    int len = EVP_EncodeBlock(tmp, in, (int)n);
    int j = 0;
    for (int i = 0; i < len; i++) {
        char ch = (char)tmp[i];
        if (ch == '=')
            break;
        out[j++] = ch == '+' ? '-' : ch == '/' ? '_' : ch;
    }
    out[j] = 0;
}

static int b64url_decode(const char *in, size_t n, uint8_t *out, size_t want) {
    unsigned char tmp[128], dec[128];
    if (n == 0 || n + 3 >= sizeof tmp)
        return BH_EINVAL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = in[i];
        if (ch == '-')
            ch = '+';
        else if (ch == '_')
            ch = '/';
        else if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                   (ch >= '0' && ch <= '9')))
            return BH_EINVAL;
        tmp[j++] = (unsigned char)ch;
    }
    while (j % 4)
        tmp[j++] = '=';
    int len = EVP_DecodeBlock(dec, tmp, (int)j);
    if (len < (int)want)
        return BH_EINVAL;
    memcpy(out, dec, want);
    return BH_OK;
}

static void token_mac(const bh_sr_server_t *s, const uint8_t *raw, const char *key_id,
                      uint8_t mac[32]) {
    uint8_t msg[24 + BH_SR_ID_MAX];
    size_t kl = strlen(key_id);
    memcpy(msg, raw, 24);
    memcpy(msg + 24, key_id, kl);
    unsigned int ml = 32;
    HMAC(EVP_sha256(), s->secret, sizeof s->secret, msg, 24 + kl, mac, &ml);
}

void bh_sr_random_id(char id[BH_SR_CONN_ID_CHARS + 1]) {
    uint8_t raw[16];
    RAND_bytes(raw, sizeof raw);
    b64url(raw, sizeof raw, id);
}

void bh_sr_token_new(const bh_sr_server_t *s, uint64_t now, const char *key_id, int stateful,
                     char token[BH_SR_TOKEN_CHARS + 1], char id[BH_SR_CONN_ID_CHARS + 1]) {
    uint8_t raw[BH_SR_TOKEN_RAW], mac[32];
    RAND_bytes(raw, 16);
    uint64_t exp = (now + BH_SR_TOKEN_TTL_MS) | (stateful ? BH_SR_STATEFUL_BIT : 0);
    for (int i = 0; i < 8; i++)
        raw[16 + i] = (uint8_t)(exp >> (56 - 8 * i));
    token_mac(s, raw, key_id, mac);
    memcpy(raw + 24, mac, 16);
    b64url(raw, BH_SR_TOKEN_RAW, token);
    b64url(raw, 16, id);
}

int bh_sr_token_check(const bh_sr_server_t *s, uint64_t now, const char *token, size_t n,
                      const char *key_id, char id[BH_SR_CONN_ID_CHARS + 1], int *stateful) {
    uint8_t raw[BH_SR_TOKEN_RAW], mac[32];
    if (n != BH_SR_TOKEN_CHARS || b64url_decode(token, n, raw, sizeof raw) < 0)
        return BH_ENOTFOUND;
    token_mac(s, raw, key_id, mac);
    if (CRYPTO_memcmp(mac, raw + 24, 16) != 0)
        return BH_ENOTFOUND;
    uint64_t exp = 0;
    for (int i = 0; i < 8; i++)
        exp = exp << 8 | raw[16 + i];
    *stateful = (exp & BH_SR_STATEFUL_BIT) != 0;
    if (now > (exp & ~BH_SR_STATEFUL_BIT))
        return BH_ENOTFOUND;
    b64url(raw, 16, id);
    return BH_OK;
}

/* ---- the registry: chained hash table, power-of-two size ---- */

static uint64_t hash_token(const bh_sr_server_t *s, const char *t, size_t n) {
    return bh_sr_shared_hash(s->shared, t, n); /* the owner map's hash too */
}

static int grow(bh_sr_server_t *s) {
    size_t n = s->nbuckets ? s->nbuckets * 2 : BH_SR_MIN_BUCKETS;
    bh_sr_conn_t **b = calloc(n, sizeof *b);
    if (!b)
        return BH_ENOMEM;
    for (size_t i = 0; i < s->nbuckets; i++) {
        bh_sr_conn_t *c = s->buckets[i];
        while (c) {
            bh_sr_conn_t *next = c->hnext;
            bh_sr_conn_t **slot = &b[c->hash & (n - 1)];
            c->hnext = *slot;
            *slot = c;
            c = next;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
    return BH_OK;
}

static bh_sr_conn_t *find(const bh_sr_server_t *s, const char *token, size_t n) {
    if (!s->nbuckets || n != BH_SR_TOKEN_CHARS)
        return NULL;
    uint64_t h = hash_token(s, token, n);
    for (bh_sr_conn_t *c = s->buckets[h & (s->nbuckets - 1)]; c; c = c->hnext)
        if (c->hash == h && memcmp(c->token, token, n) == 0)
            return c;
    return NULL;
}

bh_sr_conn_t *bh_sr_registry_find(bh_sr_server_t *s, const char *token, size_t n, uint64_t now) {
    bh_sr_pending_sweep(s, now);
    return find(s, token, n);
}

int bh_sr_registry_add(bh_sr_server_t *s, bh_sr_conn_t *c) {
    size_t n = strlen(c->token);
    if (n != BH_SR_TOKEN_CHARS || find(s, c->token, n))
        return BH_EEXIST;
    if (s->nregistered >= s->nbuckets && grow(s) < 0 && !s->nbuckets)
        return BH_ENOMEM; /* a failed grow keeps the old table, with longer chains */
    c->hash = hash_token(s, c->token, n);
    int r = bh_sr_owner_add(s->shared, c); /* other threads' servers route to it from now on */
    if (r < 0)
        return r;
    bh_sr_conn_t **slot = &s->buckets[c->hash & (s->nbuckets - 1)];
    c->hnext = *slot;
    *slot = c;
    c->registered = 1;
    s->nregistered++;
    return BH_OK;
}

void bh_sr_registry_remove(bh_sr_server_t *s, bh_sr_conn_t *c) {
    if (!c->registered)
        return;
    for (bh_sr_conn_t **p = &s->buckets[c->hash & (s->nbuckets - 1)]; *p; p = &(*p)->hnext) {
        if (*p == c) {
            *p = c->hnext;
            break;
        }
    }
    c->hnext = NULL;
    c->registered = 0;
    bh_sr_owner_remove(s->shared, c);
    s->nregistered--;
}

void bh_sr_registry_free(bh_sr_server_t *s) {
    free(s->buckets);
    s->buckets = NULL;
    s->nbuckets = s->nregistered = 0;
}

void bh_sr_pending_sweep(bh_sr_server_t *s, uint64_t now) {
    while (s->pending && s->pending->expires_ms <= now)
        bh_sr_session_free_pending(s->pending);
}
