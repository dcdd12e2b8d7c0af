/* API keys: random generation, SHA-256 hashing, and the keyring the transports consult on every
 * connection. Only hashes are kept; a presented key is parsed strictly, found by its id, and
 * its hash compared in constant time. Nothing here ever logs a key. */
#include "auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../base/error.h"

#define SECRET_BYTES 32
#define SECRET_LEN 43 /* base64url of 32 bytes, no padding */
#define KEY_PREFIX "bh_"
#define KEY_PREFIX_LEN 3

/* Open addressing on the key id; records are never removed (revocation is a flag). */
struct bh_keyring {
    pthread_rwlock_t lock; /* lookups on I/O threads, puts from the admin side */
    bh_store_key_t **slots;
    size_t cap; /* power of two, or 0 */
    size_t n;
};

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
static const char hexdig[] = "0123456789abcdef";

static void b64url_encode(const uint8_t *in, size_t n, char *out) {
    size_t i = 0, o = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64url[v >> 18];
        out[o++] = b64url[(v >> 12) & 63];
        out[o++] = b64url[(v >> 6) & 63];
        out[o++] = b64url[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64url[v >> 18];
        out[o++] = b64url[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64url[v >> 18];
        out[o++] = b64url[(v >> 12) & 63];
        out[o++] = b64url[(v >> 6) & 63];
    }
    out[o] = '\0';
}

/* Value of a base64url character, or -1. */
static int b64url_val(char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* The exact shape bh_auth_key_generate produces, nothing else: "bh_" 16 lowercase hex "_" and
 * 43 base64url characters whose last one carries no stray bits (canonical encoding). */
static bool key_well_formed(const char *key, size_t len) {
    const char *id = key + KEY_PREFIX_LEN, *secret = id + BH_KEY_ID_LEN + 1;
    if (len != BH_API_KEY_LEN || memcmp(key, KEY_PREFIX, KEY_PREFIX_LEN) != 0 ||
        id[BH_KEY_ID_LEN] != '_')
        return false;
    for (size_t i = 0; i < BH_KEY_ID_LEN; i++) {
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return false;
    }
    for (size_t i = 0; i < SECRET_LEN; i++) {
        if (b64url_val(secret[i]) < 0)
            return false;
    }
    /* 43 characters carry 258 bits; the last 2 must be zero for 32 bytes. */
    return (b64url_val(secret[SECRET_LEN - 1]) & 3) == 0;
}

int bh_auth_key_generate(char out[BH_API_KEY_LEN + 1], char key_id[BH_KEY_ID_LEN + 1]) {
    uint8_t id[BH_KEY_ID_LEN / 2], secret[SECRET_BYTES];
    char *p = out;

    if (out == NULL || key_id == NULL)
        return BH_EINVAL;
    if (RAND_bytes(id, sizeof(id)) != 1 || RAND_bytes(secret, sizeof(secret)) != 1) {
        OPENSSL_cleanse(secret, sizeof(secret));
        return BH_EIO;
    }
    for (size_t i = 0; i < sizeof(id); i++) {
        key_id[2 * i] = hexdig[id[i] >> 4];
        key_id[2 * i + 1] = hexdig[id[i] & 15];
    }
    key_id[BH_KEY_ID_LEN] = '\0';
    memcpy(p, KEY_PREFIX, KEY_PREFIX_LEN);
    p += KEY_PREFIX_LEN;
    memcpy(p, key_id, BH_KEY_ID_LEN);
    p += BH_KEY_ID_LEN;
    *p++ = '_';
    b64url_encode(secret, sizeof(secret), p);
    OPENSSL_cleanse(secret, sizeof(secret));
    return BH_OK;
}

void bh_auth_key_hash(const char *key, size_t len, uint8_t out[32]) {
    unsigned int n = 32;
    /* SHA-256 cannot fail on in-memory input short of allocation failure inside OpenSSL; the
     * output is then zeroed, which matches no stored hash. */
    if (EVP_Digest(key, len, out, &n, EVP_sha256(), NULL) != 1)
        memset(out, 0, 32);
}

int bh_auth_ct_equal(const void *a, const void *b, size_t n) {
    return CRYPTO_memcmp(a, b, n) == 0;
}

/* ---- keyring ---- */

static uint64_t hash_id(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    while (*s != '\0') {
        h ^= (unsigned char)*s++;
        h *= 1099511628211ULL;
    }
    return h;
}

static bh_store_key_t **kr_slot(bh_store_key_t **slots, size_t cap, const char *key_id) {
    size_t mask = cap - 1;
    for (size_t i = (size_t)hash_id(key_id) & mask;; i = (i + 1) & mask) {
        if (slots[i] == NULL || strcmp(slots[i]->key_id, key_id) == 0)
            return &slots[i];
    }
}

static int kr_grow(bh_keyring_t *kr) {
    size_t ncap = kr->cap != 0 ? kr->cap * 2 : 16;
    bh_store_key_t **ns = calloc(ncap, sizeof(*ns));
    if (ns == NULL)
        return BH_ENOMEM;
    for (size_t i = 0; i < kr->cap; i++) {
        if (kr->slots[i] != NULL)
            *kr_slot(ns, ncap, kr->slots[i]->key_id) = kr->slots[i];
    }
    free(kr->slots);
    kr->slots = ns;
    kr->cap = ncap;
    return BH_OK;
}

bh_keyring_t *bh_keyring_new(void) {
    bh_keyring_t *kr = calloc(1, sizeof(*kr));
    if (kr == NULL)
        return NULL;
    if (pthread_rwlock_init(&kr->lock, NULL) != 0) {
        free(kr);
        return NULL;
    }
    return kr;
}

void bh_keyring_free(bh_keyring_t *kr) {
    if (kr == NULL)
        return;
    for (size_t i = 0; i < kr->cap; i++) {
        if (kr->slots[i] != NULL) {
            OPENSSL_cleanse(kr->slots[i], sizeof(*kr->slots[i]));
            free(kr->slots[i]);
        }
    }
    free(kr->slots);
    pthread_rwlock_destroy(&kr->lock);
    free(kr);
}

static bool valid_key_id(const char *s) {
    size_t n = strnlen(s, BH_ID_MAX + 1);
    return n > 0 && n <= BH_ID_MAX;
}

int bh_keyring_put(bh_keyring_t *kr, const bh_store_key_t *k) {
    bh_store_key_t **slot, *rec;
    int rc = BH_OK;

    if (kr == NULL || k == NULL || !valid_key_id(k->key_id) ||
        strnlen(k->user_id, BH_ID_MAX + 1) > BH_ID_MAX)
        return BH_EINVAL;
    pthread_rwlock_wrlock(&kr->lock);
    if (kr->cap == 0 || (kr->n + 1) * 4 > kr->cap * 3)
        rc = kr_grow(kr);
    if (rc == BH_OK) {
        slot = kr_slot(kr->slots, kr->cap, k->key_id);
        if (*slot != NULL) {
            **slot = *k;
        } else if ((rec = malloc(sizeof(*rec))) == NULL) {
            rc = BH_ENOMEM;
        } else {
            *rec = *k;
            *slot = rec;
            kr->n++;
        }
    }
    pthread_rwlock_unlock(&kr->lock);
    return rc;
}

int bh_keyring_lookup(const bh_keyring_t *kr, const char *key, size_t len,
                      char user_id[BH_ID_MAX + 1], char key_id[BH_KEY_ID_LEN + 1]) {
    bh_keyring_t *m = (bh_keyring_t *)kr; /* the lock is the only thing a lookup changes */
    char id[BH_KEY_ID_LEN + 1];
    uint8_t hash[32];
    const bh_store_key_t *rec;
    int rc = BH_ENOTFOUND;

    if (kr == NULL || key == NULL || user_id == NULL || !key_well_formed(key, len))
        return BH_ENOTFOUND;
    memcpy(id, key + KEY_PREFIX_LEN, BH_KEY_ID_LEN);
    id[BH_KEY_ID_LEN] = '\0';
    bh_auth_key_hash(key, len, hash);
    pthread_rwlock_rdlock(&m->lock);
    if (m->cap > 0) {
        rec = *kr_slot(m->slots, m->cap, id);
        if (rec != NULL && bh_auth_ct_equal(rec->hash, hash, sizeof(hash)) && !rec->revoked) {
            memcpy(user_id, rec->user_id, BH_ID_MAX + 1);
            if (key_id != NULL)
                memcpy(key_id, id, sizeof(id));
            rc = BH_OK;
        }
    }
    pthread_rwlock_unlock(&m->lock);
    OPENSSL_cleanse(hash, sizeof(hash));
    return rc;
}

bool bh_keyring_active(const bh_keyring_t *kr, const char *key_id) {
    bh_keyring_t *m = (bh_keyring_t *)kr; /* the lock is the only thing a lookup changes */
    const bh_store_key_t *rec = NULL;
    bool active;

    if (kr == NULL || key_id == NULL || !valid_key_id(key_id))
        return false;
    pthread_rwlock_rdlock(&m->lock);
    if (m->cap > 0)
        rec = *kr_slot(m->slots, m->cap, key_id);
    active = rec != NULL && !rec->revoked;
    pthread_rwlock_unlock(&m->lock);
    return active;
}

static bool keyring_has(bh_keyring_t *kr, const char *key_id) {
    bool has;
    pthread_rwlock_rdlock(&kr->lock);
    has = kr->cap > 0 && *kr_slot(kr->slots, kr->cap, key_id) != NULL;
    pthread_rwlock_unlock(&kr->lock);
    return has;
}

int bh_auth_create_key(bh_store_t *store, bh_keyring_t *kr, const char *user_id,
                       char out[BH_API_KEY_LEN + 1], char key_id[BH_KEY_ID_LEN + 1]) {
    bh_store_key_t rec;
    size_t ulen;
    int rc, tries = 0;

    if (store == NULL || kr == NULL || user_id == NULL || out == NULL || key_id == NULL)
        return BH_EINVAL;
    ulen = strnlen(user_id, BH_ID_MAX + 1);
    if (ulen == 0 || ulen > BH_ID_MAX)
        return BH_EINVAL;
    /* A 64-bit id collides about never, but a collision would silently keep the old key's
     * owner in the store (the upsert only updates the revoked flag): draw again. */
    do {
        if ((rc = bh_auth_key_generate(out, key_id)) != BH_OK)
            goto fail;
    } while (keyring_has(kr, key_id) && ++tries < 8);
    if (tries == 8) {
        rc = BH_EEXIST;
        goto fail;
    }
    memset(&rec, 0, sizeof(rec));
    memcpy(rec.key_id, key_id, BH_KEY_ID_LEN + 1);
    memcpy(rec.user_id, user_id, ulen + 1);
    bh_auth_key_hash(out, BH_API_KEY_LEN, rec.hash);
    if ((rc = bh_store_put_key(store, &rec)) != BH_OK)
        goto fail;
    /* On failure the stored row is harmless: nobody ever sees its secret. */
    if ((rc = bh_keyring_put(kr, &rec)) != BH_OK)
        goto fail;
    return BH_OK;
fail:
    OPENSSL_cleanse(out, BH_API_KEY_LEN + 1);
    out[0] = '\0';
    key_id[0] = '\0';
    return rc;
}
