/* Auth: key format, SHA-256 hashing, constant-time compare, strict keyring lookups (wrong
 * secret, unknown id, revoked, every malformed shape) and keys persisted through the store. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/auth.h"
#include "base/error.h"
#include "base/log.h"
#include "store/store.h"

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* A keyring holding one fresh key for user "alice". */
typedef struct {
    bh_keyring_t *kr;
    char key[BH_API_KEY_LEN + 1];
    char id[BH_KEY_ID_LEN + 1];
    bh_store_key_t rec;
} fx_t;

static int setup(void **state) {
    fx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->kr = bh_keyring_new();
    assert_non_null(f->kr);
    assert_int_equal(bh_auth_key_generate(f->key, f->id), BH_OK);
    strcpy(f->rec.key_id, f->id);
    strcpy(f->rec.user_id, "alice");
    bh_auth_key_hash(f->key, strlen(f->key), f->rec.hash);
    assert_int_equal(bh_keyring_put(f->kr, &f->rec), BH_OK);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx_t *f = *state;
    bh_keyring_free(f->kr);
    free(f);
    return 0;
}

static int lookup(const bh_keyring_t *kr, const char *key, size_t len, char *user) {
    char kid[BH_KEY_ID_LEN + 1];
    return bh_keyring_lookup(kr, key, len, user, kid);
}

static void test_key_format(void **state) {
    char key[BH_API_KEY_LEN + 1], id[BH_KEY_ID_LEN + 1];
    char key2[BH_API_KEY_LEN + 1], id2[BH_KEY_ID_LEN + 1];
    (void)state;

    assert_int_equal(BH_API_KEY_LEN, 63);
    assert_int_equal(bh_auth_key_generate(key, id), BH_OK);
    assert_int_equal(strlen(key), BH_API_KEY_LEN);
    assert_int_equal(strlen(id), BH_KEY_ID_LEN);
    assert_memory_equal(key, "bh_", 3);
    assert_memory_equal(key + 3, id, BH_KEY_ID_LEN);
    assert_int_equal(key[3 + BH_KEY_ID_LEN], '_');
    for (size_t i = 0; i < BH_KEY_ID_LEN; i++)
        assert_non_null(strchr("0123456789abcdef", id[i]));
    for (size_t i = 4 + BH_KEY_ID_LEN; i < BH_API_KEY_LEN; i++)
        assert_non_null(strchr(b64chars, key[i]));
    assert_int_equal(bh_auth_key_generate(key2, id2), BH_OK);
    assert_string_not_equal(key, key2);
    assert_string_not_equal(id, id2);
    assert_int_equal(bh_auth_key_generate(NULL, id2), BH_EINVAL);
}

static void test_hash(void **state) {
    /* FIPS 180-2 test vector for "abc". */
    static const uint8_t abc[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea,
                                    0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
                                    0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c,
                                    0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    uint8_t h1[32], h2[32];
    (void)state;

    bh_auth_key_hash("abc", 3, h1);
    assert_memory_equal(h1, abc, 32);
    bh_auth_key_hash("abcdef", 3, h2); /* length, not NUL, bounds the input */
    assert_memory_equal(h2, abc, 32);
    bh_auth_key_hash("abd", 3, h2);
    assert_memory_not_equal(h1, h2, 32);
}

static void test_ct_equal(void **state) {
    uint8_t a[32], b[32];
    (void)state;

    for (int i = 0; i < 32; i++)
        a[i] = b[i] = (uint8_t)i;
    assert_int_equal(bh_auth_ct_equal(a, b, 32), 1);
    assert_int_equal(bh_auth_ct_equal(a, b, 0), 1);
    b[0] ^= 1;
    assert_int_equal(bh_auth_ct_equal(a, b, 32), 0);
    b[0] ^= 1;
    b[31] ^= 0x80;
    assert_int_equal(bh_auth_ct_equal(a, b, 32), 0);
    assert_int_equal(bh_auth_ct_equal(a, b, 31), 1);
}

static void test_lookup_ok(void **state) {
    fx_t *f = *state;
    char user[BH_ID_MAX + 1], kid[BH_KEY_ID_LEN + 1];

    assert_int_equal(bh_keyring_lookup(f->kr, f->key, BH_API_KEY_LEN, user, kid), BH_OK);
    assert_string_equal(user, "alice");
    assert_string_equal(kid, f->id);
    /* key_id out is optional; the key need not be NUL-terminated. */
    char copy[BH_API_KEY_LEN + 5];
    memcpy(copy, f->key, BH_API_KEY_LEN);
    memcpy(copy + BH_API_KEY_LEN, "XXXX", 4);
    memset(user, 0, sizeof(user));
    assert_int_equal(bh_keyring_lookup(f->kr, copy, BH_API_KEY_LEN, user, NULL), BH_OK);
    assert_string_equal(user, "alice");
}

static void test_lookup_wrong_secret(void **state) {
    fx_t *f = *state;
    char user[BH_ID_MAX + 1] = "untouched";
    char bad[BH_API_KEY_LEN + 1];

    /* Change each secret character in turn to another valid one. */
    for (size_t i = 4 + BH_KEY_ID_LEN; i < BH_API_KEY_LEN - 1; i++) {
        strcpy(bad, f->key);
        bad[i] = bad[i] == 'A' ? 'B' : 'A';
        assert_int_equal(lookup(f->kr, bad, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    }
    strcpy(bad, f->key);
    bad[BH_API_KEY_LEN - 1] = bad[BH_API_KEY_LEN - 1] == 'A' ? 'E' : 'A'; /* still canonical */
    assert_int_equal(lookup(f->kr, bad, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    assert_string_equal(user, "untouched");
}

static void test_lookup_unknown_id(void **state) {
    fx_t *f = *state;
    char user[BH_ID_MAX + 1];
    char bad[BH_API_KEY_LEN + 1];
    char other[BH_API_KEY_LEN + 1], oid[BH_KEY_ID_LEN + 1];

    strcpy(bad, f->key);
    bad[3] = bad[3] == '0' ? '1' : '0';
    assert_int_equal(lookup(f->kr, bad, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    assert_int_equal(bh_auth_key_generate(other, oid), BH_OK);
    assert_int_equal(lookup(f->kr, other, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    /* An empty keyring answers too. */
    bh_keyring_t *empty = bh_keyring_new();
    assert_int_equal(lookup(empty, f->key, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    bh_keyring_free(empty);
    assert_int_equal(lookup(NULL, f->key, BH_API_KEY_LEN, user), BH_ENOTFOUND);
}

static void test_lookup_malformed(void **state) {
    fx_t *f = *state;
    char user[BH_ID_MAX + 1];
    char bad[BH_API_KEY_LEN + 8];
    static const char *const wrong_chars = "=+/ .\n\t\"%";
    unsigned seed = 12345;

    /* Every prefix, heap-allocated to its exact length so ASan catches any over-read. */
    for (size_t n = 0; n < BH_API_KEY_LEN; n++) {
        char *p = malloc(n + 1);
        memcpy(p, f->key, n);
        assert_int_equal(lookup(f->kr, p, n, user), BH_ENOTFOUND);
        free(p);
    }
    /* One extra byte, and the right key followed by garbage within the length. */
    memcpy(bad, f->key, BH_API_KEY_LEN);
    bad[BH_API_KEY_LEN] = 'A';
    assert_int_equal(lookup(f->kr, bad, BH_API_KEY_LEN + 1, user), BH_ENOTFOUND);
    /* Each structural position broken. */
    strcpy(bad, f->key);
    bad[0] = 'B';
    assert_int_equal(lookup(f->kr, bad, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    strcpy(bad, f->key);
    bad[2] = '-';
    assert_int_equal(lookup(f->kr, bad, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    strcpy(bad, f->key);
    bad[3 + BH_KEY_ID_LEN] = '-';
    assert_int_equal(lookup(f->kr, bad, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    /* Uppercase hex in the id is not the same key. */
    strcpy(bad, f->key);
    for (size_t i = 3; i < 3 + BH_KEY_ID_LEN; i++)
        if (bad[i] >= 'a' && bad[i] <= 'f')
            bad[i] = (char)(bad[i] - 'a' + 'A');
    if (strcmp(bad, f->key) != 0)
        assert_int_equal(lookup(f->kr, bad, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    strcpy(bad, f->key);
    bad[5] = 'g';
    assert_int_equal(lookup(f->kr, bad, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    /* Non-base64url characters anywhere in the secret, and an embedded NUL. */
    for (size_t i = 4 + BH_KEY_ID_LEN; i < BH_API_KEY_LEN; i++) {
        for (const char *c = wrong_chars; *c; c++) {
            strcpy(bad, f->key);
            bad[i] = *c;
            assert_int_equal(lookup(f->kr, bad, BH_API_KEY_LEN, user), BH_ENOTFOUND);
        }
        strcpy(bad, f->key);
        bad[i] = '\0';
        assert_int_equal(lookup(f->kr, bad, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    }
    /* A last character with stray low bits is not a canonical 32-byte encoding. */
    strcpy(bad, f->key);
    bad[BH_API_KEY_LEN - 1] = 'B';
    assert_int_equal(lookup(f->kr, bad, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    /* Random garbage of the right length. */
    for (int round = 0; round < 2000; round++) {
        for (size_t i = 0; i < BH_API_KEY_LEN; i++) {
            seed = seed * 1103515245u + 12345u;
            bad[i] = (char)(seed >> 16);
        }
        if (round % 2 == 0)
            memcpy(bad, "bh_", 3);
        assert_int_equal(lookup(f->kr, bad, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    }
    assert_int_equal(lookup(f->kr, NULL, BH_API_KEY_LEN, user), BH_ENOTFOUND);
}

static void test_revoked(void **state) {
    fx_t *f = *state;
    char user[BH_ID_MAX + 1];

    assert_true(bh_keyring_active(f->kr, f->rec.key_id));
    assert_false(bh_keyring_active(f->kr, "0123456789abcdef")); /* unknown */
    assert_false(bh_keyring_active(f->kr, ""));
    assert_false(bh_keyring_active(f->kr, NULL));
    f->rec.revoked = true;
    assert_int_equal(bh_keyring_put(f->kr, &f->rec), BH_OK);
    assert_int_equal(lookup(f->kr, f->key, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    assert_false(bh_keyring_active(f->kr, f->rec.key_id));
    /* Put replaces by key id (here: reinstated, and moved to another user). */
    f->rec.revoked = false;
    strcpy(f->rec.user_id, "bob");
    assert_int_equal(bh_keyring_put(f->kr, &f->rec), BH_OK);
    assert_int_equal(lookup(f->kr, f->key, BH_API_KEY_LEN, user), BH_OK);
    assert_string_equal(user, "bob");
    assert_true(bh_keyring_active(f->kr, f->rec.key_id));
}

static void test_keyring_put_invalid(void **state) {
    fx_t *f = *state;
    bh_store_key_t k;

    memset(&k, 0, sizeof(k));
    strcpy(k.user_id, "x");
    assert_int_equal(bh_keyring_put(f->kr, &k), BH_EINVAL); /* empty key id */
    memset(k.key_id, 'a', sizeof(k.key_id));                /* unterminated */
    assert_int_equal(bh_keyring_put(f->kr, &k), BH_EINVAL);
    assert_int_equal(bh_keyring_put(f->kr, NULL), BH_EINVAL);
    assert_int_equal(bh_keyring_put(NULL, &f->rec), BH_EINVAL);
}

static void test_many_keys(void **state) {
    enum { N = 500 };
    fx_t *f = *state;
    static char keys[N][BH_API_KEY_LEN + 1];
    char id[BH_KEY_ID_LEN + 1], user[BH_ID_MAX + 1], want[32];
    bh_store_key_t k;

    for (int i = 0; i < N; i++) {
        assert_int_equal(bh_auth_key_generate(keys[i], id), BH_OK);
        memset(&k, 0, sizeof(k));
        strcpy(k.key_id, id);
        snprintf(k.user_id, sizeof(k.user_id), "user-%d", i);
        bh_auth_key_hash(keys[i], BH_API_KEY_LEN, k.hash);
        assert_int_equal(bh_keyring_put(f->kr, &k), BH_OK);
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(lookup(f->kr, keys[i], BH_API_KEY_LEN, user), BH_OK);
        snprintf(want, sizeof(want), "user-%d", i);
        assert_string_equal(user, want);
    }
    assert_int_equal(lookup(f->kr, f->key, BH_API_KEY_LEN, user), BH_OK);
    assert_string_equal(user, "alice");
}

/* ---- persistence ---- */

static int key_into_ring(void *ud, const bh_store_key_t *k) {
    return bh_keyring_put(ud, k);
}

static bool file_contains(const char *path, const char *needle) {
    FILE *fp = fopen(path, "rb");
    char *buf;
    long n;
    bool found = false;
    if (fp == NULL)
        return false;
    fseek(fp, 0, SEEK_END);
    n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    if (fread(buf, 1, (size_t)n, fp) == (size_t)n)
        found = memmem(buf, (size_t)n, needle, strlen(needle)) != NULL;
    free(buf);
    fclose(fp);
    return found;
}

static void test_create_key_persisted(void **state) {
    char dir[] = "/tmp/bh_auth_XXXXXX", path[128], wal[140], shm[140], err[256];
    char key[BH_API_KEY_LEN + 1], id[BH_KEY_ID_LEN + 1], user[BH_ID_MAX + 1];
    char other[BH_API_KEY_LEN + 1], oid[BH_KEY_ID_LEN + 1], long_user[BH_ID_MAX + 2];
    bh_store_t *s = NULL;
    bh_keyring_t *kr = bh_keyring_new(), *kr2 = bh_keyring_new();
    bh_store_visitor_t v;
    bh_store_key_t rec;
    (void)state;

    memset(long_user, 'u', sizeof(long_user) - 1);
    long_user[sizeof(long_user) - 1] = '\0';

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/bh.db", dir);
    snprintf(wal, sizeof(wal), "%s-wal", path);
    snprintf(shm, sizeof(shm), "%s-shm", path);
    assert_int_equal(bh_store_open(path, &s, err, sizeof(err)), BH_OK);

    assert_int_equal(bh_auth_create_key(s, kr, "carol", key, id), BH_OK);
    assert_int_equal(strlen(key), BH_API_KEY_LEN);
    assert_memory_equal(key + 3, id, BH_KEY_ID_LEN);
    assert_int_equal(lookup(kr, key, BH_API_KEY_LEN, user), BH_OK);
    assert_string_equal(user, "carol");
    assert_int_equal(bh_auth_create_key(s, kr, "", other, oid), BH_EINVAL);
    assert_int_equal(bh_auth_create_key(s, kr, long_user, other, oid), BH_EINVAL);
    assert_int_equal(bh_auth_create_key(NULL, kr, "carol", other, oid), BH_EINVAL);
    /* A second key, revoked durably (as the admin API does: store first, then keyring). */
    assert_int_equal(bh_auth_create_key(s, kr, "dave", other, oid), BH_OK);
    memset(&rec, 0, sizeof(rec));
    strcpy(rec.key_id, oid);
    strcpy(rec.user_id, "dave");
    bh_auth_key_hash(other, BH_API_KEY_LEN, rec.hash);
    rec.revoked = true;
    assert_int_equal(bh_store_put_key(s, &rec), BH_OK);
    bh_store_close(s);

    /* Only the hash is stored: the secret text is nowhere in the database files. */
    assert_false(file_contains(path, key + 4 + BH_KEY_ID_LEN));
    assert_false(file_contains(wal, key + 4 + BH_KEY_ID_LEN));
    assert_true(file_contains(path, id) || file_contains(wal, id));

    assert_int_equal(bh_store_open(path, &s, err, sizeof(err)), BH_OK);
    memset(&v, 0, sizeof(v));
    v.ud = kr2;
    v.key = key_into_ring;
    assert_int_equal(bh_store_load(s, &v), BH_OK);
    memset(user, 0, sizeof(user));
    assert_int_equal(lookup(kr2, key, BH_API_KEY_LEN, user), BH_OK);
    assert_string_equal(user, "carol");
    assert_int_equal(lookup(kr2, other, BH_API_KEY_LEN, user), BH_ENOTFOUND);
    bh_store_close(s);

    bh_keyring_free(kr);
    bh_keyring_free(kr2);
    unlink(path);
    unlink(wal);
    unlink(shm);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_format),
        cmocka_unit_test(test_hash),
        cmocka_unit_test(test_ct_equal),
        cmocka_unit_test_setup_teardown(test_lookup_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_wrong_secret, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_unknown_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revoked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keyring_put_invalid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_keys, setup, teardown),
        cmocka_unit_test(test_create_key_persisted),
    };
    bh_log_set_level(BH_LOG_ERROR + 1);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
