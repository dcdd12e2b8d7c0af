/* Hub URLs for the client: http:// and https:// only, split into what the HTTP requests need
 * (host for Host, SNI and certificate checks; port; path; query), and query-component encoding
 * for the connection token and access token. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../base/error.h"
#include "internal.h"

static int is_alnum(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* RFC 3986 reg-name characters (no percent-encoding: host names are ASCII for us). */
static int host_char(unsigned char c) {
    return is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

/* Visible ASCII that may stand in a path or query as given (no spaces, controls, '#'). */
static int uri_char(unsigned char c) {
    return c > 0x20 && c < 0x7f && c != '#';
}

void bh_cl_url_free(bh_cl_url_t *u) {
    free(u->host);
    free(u->path);
    free(u->query);
    memset(u, 0, sizeof(*u));
}

int bh_cl_url_parse(const char *s, bh_cl_url_t *u, const char **err) {
    const char *p, *host, *host_end, *end;
    size_t n;

    memset(u, 0, sizeof(*u));
    if (s == NULL) {
        *err = "no URL";
        return BH_EINVAL;
    }
    if (strncasecmp(s, "http://", 7) == 0) {
        p = s + 7;
    } else if (strncasecmp(s, "https://", 8) == 0) {
        p = s + 8;
        u->tls = 1;
    } else {
        *err = "the URL must start with http:// or https://";
        return BH_EINVAL;
    }
    end = p + strcspn(p, "#"); /* the fragment never goes to the server */
    n = strcspn(p, "/?#");
    if (memchr(p, '@', n) != NULL) {
        *err = "user names and passwords in the URL are not supported (use the API key)";
        return BH_EINVAL;
    }
    host = p;
    if (*p == '[') {
        host_end = memchr(p, ']', n);
        if (host_end == NULL || host_end == p + 1) {
            *err = "bad IPv6 address in the URL";
            return BH_EINVAL;
        }
        for (const char *q = p + 1; q < host_end; q++)
            if (!(is_alnum((unsigned char)*q) || *q == ':' || *q == '.')) {
                *err = "bad IPv6 address in the URL";
                return BH_EINVAL;
            }
        host++;
        u->ipv6 = 1;
        p = host_end + 1;
    } else {
        for (host_end = p; host_end < p + n && host_char((unsigned char)*host_end); host_end++)
            ;
        if (host_end == p) {
            *err = "the URL has no host";
            return BH_EINVAL;
        }
        p = host_end;
    }
    u->port = u->tls ? 443 : 80;
    if (*p == ':') {
        unsigned long port = 0;
        size_t digits = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, digits++)
            if (port <= 65535)
                port = port * 10 + (unsigned long)(*p - '0');
        if (digits == 0 || port == 0 || port > 65535) {
            *err = "bad port in the URL";
            return BH_EINVAL;
        }
        u->port = (unsigned)port;
        u->port_given = 1;
    }
    if (*p != '\0' && *p != '/' && *p != '?' && *p != '#') {
        *err = "bad host in the URL";
        return BH_EINVAL;
    }
    for (const char *q = p; q < end; q++)
        if (!uri_char((unsigned char)*q)) {
            *err = "the URL contains spaces or control characters";
            return BH_EINVAL;
        }
    u->host = strndup(host, (size_t)(host_end - host));
    n = strcspn(p, "?#");
    /* trailing slashes go: "/hub/" and "/hub" name the same hub, and "/negotiate" is appended */
    size_t plen = n;
    while (plen > 0 && p[plen - 1] == '/')
        plen--;
    u->path = strndup(p, plen);
    if (p[n] == '?' && p + n + 1 < end)
        u->query = strndup(p + n + 1, (size_t)(end - (p + n + 1)));
    if (u->host == NULL || u->path == NULL || (p[n] == '?' && p + n + 1 < end && !u->query)) {
        bh_cl_url_free(u);
        *err = "out of memory";
        return BH_ENOMEM;
    }
    return BH_OK;
}

int bh_cl_url_encode(bh_buf_t *b, const char *s) {
    static const char hex[] = "0123456789ABCDEF";
    int r = BH_OK;

    for (const unsigned char *p = (const unsigned char *)s; *p && r == BH_OK; p++) {
        if (is_alnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~')
            r = bh_buf_appendc(b, (char)*p);
        else
            r = bh_buf_printf(b, "%%%c%c", hex[*p >> 4], hex[*p & 15]);
    }
    return r;
}
