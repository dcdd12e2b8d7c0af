/* SignalR JSON hub protocol: message parsing with ASP.NET's validation rules, the exact byte
 * forms of the messages the server sends, and the protocol table (MessagePack is msgpack.c). */
#include "protocol.h"

#include <limits.h>
#include <string.h>

#include "../base/error.h"

#define BH_SR_MAX_DEPTH 64

static const char *opt_string(const bh_json_t *root, const char *name, int *bad) {
    const bh_json_t *v = bh_json_get(root, name);
    if (!v || v->type == BH_JSON_NULL)
        return NULL;
    /* Ids travel on as C strings: an embedded NUL would silently cut them short. */
    if (v->type != BH_JSON_STRING || memchr(v->str, 0, v->len)) {
        *bad = 1;
        return NULL;
    }
    return v->str;
}

int bh_sr_parse_handshake(const char *text, size_t len, bh_json_doc_t **doc, const char **protocol,
                          int64_t *version, const char **err) {
    *doc = NULL;
    if (bh_json_parse(text, len, BH_SR_MAX_DEPTH, doc) < 0) {
        *err = "Handshake request is not valid JSON.";
        return BH_EINVAL;
    }
    const bh_json_t *root = bh_json_root(*doc);
    const bh_json_t *p = bh_json_get(root, "protocol");
    const bh_json_t *v = bh_json_get(root, "version");
    if (root->type != BH_JSON_OBJECT || !p || p->type != BH_JSON_STRING) {
        *err = "Handshake request is missing the string property 'protocol'.";
        goto fail;
    }
    if (!v || bh_json_int(v, version) < 0) {
        *err = "Handshake request is missing the integer property 'version'.";
        goto fail;
    }
    *protocol = p->str;
    return BH_OK;
fail:
    bh_json_free(*doc);
    *doc = NULL;
    return BH_EINVAL;
}

int bh_sr_parse_message(const char *text, size_t len, bh_json_doc_t **doc, bh_sr_msg_t *msg,
                        const char **err) {
    memset(msg, 0, sizeof *msg);
    *doc = NULL;
    if (bh_json_parse(text, len, BH_SR_MAX_DEPTH, doc) < 0) {
        *err = "Message is not valid JSON.";
        return BH_EINVAL;
    }
    const bh_json_t *root = bh_json_root(*doc);
    int64_t type;
    int bad = 0;
    if (root->type != BH_JSON_OBJECT) {
        *err = "Message is not a JSON object.";
        goto fail;
    }
    const bh_json_t *t = bh_json_get(root, "type");
    if (!t) {
        *err = "Missing required property 'type'.";
        goto fail;
    }
    if (bh_json_int(t, &type) < 0 || type < 0 || type > 1000000) {
        *err = "Expected 'type' to be of type Integer.";
        goto fail;
    }
    msg->type = (int)type;
    msg->invocation_id = opt_string(root, "invocationId", &bad);
    if (bad) {
        *err = "Expected 'invocationId' to be of type String.";
        goto fail;
    }
    switch (msg->type) {
    case BH_SR_INVOCATION:
    case BH_SR_STREAM_INVOCATION: {
        const bh_json_t *target = bh_json_get(root, "target");
        const bh_json_t *args = bh_json_get(root, "arguments");
        const bh_json_t *streams = bh_json_get(root, "streamIds");
        if (!target || target->type != BH_JSON_STRING) {
            *err = "Missing required property 'target'.";
            goto fail;
        }
        if (!args || args->type != BH_JSON_ARRAY) {
            *err = "Missing required property 'arguments'.";
            goto fail;
        }
        if (msg->type == BH_SR_STREAM_INVOCATION && !msg->invocation_id) {
            *err = "Missing required property 'invocationId'.";
            goto fail;
        }
        if (memchr(target->str, 0, target->len)) {
            *err = "Expected 'target' to be a string without NUL characters.";
            goto fail;
        }
        msg->target = target->str;
        msg->arguments = args;
        msg->has_stream_ids = streams && streams->type == BH_JSON_ARRAY && streams->count > 0;
        break;
    }
    case BH_SR_COMPLETION:
    case BH_SR_CANCEL_INVOCATION:
    case BH_SR_STREAM_ITEM:
        if (!msg->invocation_id) {
            *err = "Missing required property 'invocationId'.";
            goto fail;
        }
        break;
    case BH_SR_ACK:
    case BH_SR_SEQUENCE: {
        const bh_json_t *seq = bh_json_get(root, "sequenceId");
        int64_t id;
        if (!seq) {
            *err = "Missing required property 'sequenceId'.";
            goto fail;
        }
        if (bh_json_int(seq, &id) < 0 || id < 0) {
            *err = "Expected 'sequenceId' to be of type Integer.";
            goto fail;
        }
        msg->sequence_id = (uint64_t)id;
        break;
    }
    default:
        break; /* Ping, Close and future types carry nothing we need */
    }
    return BH_OK;
fail:
    bh_json_free(*doc);
    *doc = NULL;
    return BH_EINVAL;
}

/* Terminate the record begun at start; on any failure drop it whole, so a capped output buffer
 * never holds half a record. */
static int end_record(bh_buf_t *b, size_t start, int r) {
    if (r == 0)
        r = bh_buf_appendc(b, BH_SR_RS);
    if (r != 0 && b->len > start) {
        b->len = start;
        b->data[start] = '\0';
    }
    return r;
}

int bh_sr_write_completion(bh_buf_t *b, const char *invocation_id, const char *error) {
    size_t start = b->len;
    int r = bh_buf_appends(b, "{\"type\":3,\"invocationId\":");
    if (r == 0)
        r = bh_json_write_str(b, invocation_id, strlen(invocation_id));
    if (r == 0 && error) {
        r = bh_buf_appends(b, ",\"error\":");
        if (r == 0)
            r = bh_json_write_str(b, error, strlen(error));
    } else if (r == 0) {
        r = bh_buf_appends(b, ",\"result\":null");
    }
    if (r == 0)
        r = bh_buf_appendc(b, '}');
    return end_record(b, start, r);
}

int bh_sr_write_invocation(bh_buf_t *b, const char *target, const char *arg_json, size_t len) {
    size_t start = b->len;
    int r = bh_buf_appends(b, "{\"type\":1,\"target\":");
    if (r == 0)
        r = bh_json_write_str(b, target, strlen(target));
    if (r == 0)
        r = bh_buf_appends(b, ",\"arguments\":[");
    if (r == 0)
        r = bh_buf_append(b, arg_json, len);
    if (r == 0)
        r = bh_buf_appends(b, "]}");
    return end_record(b, start, r);
}

int bh_sr_write_ping(bh_buf_t *b) {
    size_t start = b->len;
    int r = bh_buf_appends(b, "{\"type\":6}");
    return end_record(b, start, r);
}

int bh_sr_write_close(bh_buf_t *b, const char *error, int allow_reconnect) {
    size_t start = b->len;
    int r = bh_buf_appends(b, "{\"type\":7");
    if (r == 0 && error) {
        r = bh_buf_appends(b, ",\"error\":");
        if (r == 0)
            r = bh_json_write_str(b, error, strlen(error));
    }
    if (r == 0 && allow_reconnect)
        r = bh_buf_appends(b, ",\"allowReconnect\":true");
    if (r == 0)
        r = bh_buf_appendc(b, '}');
    return end_record(b, start, r);
}

int bh_sr_write_handshake_response(bh_buf_t *b, const char *error) {
    size_t start = b->len;
    int r;
    if (error) {
        r = bh_buf_appends(b, "{\"error\":");
        if (r == 0)
            r = bh_json_write_str(b, error, strlen(error));
        if (r == 0)
            r = bh_buf_appendc(b, '}');
    } else {
        r = bh_buf_appends(b, "{}");
    }
    return end_record(b, start, r);
}

static int write_ack(bh_buf_t *b, uint64_t sequence_id) {
    size_t start = b->len;
    int r = bh_buf_printf(b, "{\"type\":8,\"sequenceId\":%llu}", (unsigned long long)sequence_id);
    return end_record(b, start, r);
}

static int write_sequence(bh_buf_t *b, uint64_t sequence_id) {
    size_t start = b->len;
    int r = bh_buf_printf(b, "{\"type\":9,\"sequenceId\":%llu}", (unsigned long long)sequence_id);
    return end_record(b, start, r);
}

/* A record is everything up to the next 0x1E. Without one yet, the record will be at least len
 * bytes long, so more than max buffered is already too big. */
static int frame(const char *data, size_t len, size_t max, const char **msg, size_t *msg_len) {
    const char *rs = memchr(data, BH_SR_RS, len);
    if (!rs)
        return len > max ? BH_ETOOBIG : 0;
    size_t n = (size_t)(rs - data);
    if (n > max || n >= INT_MAX)
        return BH_ETOOBIG;
    *msg = data;
    *msg_len = n;
    return (int)n + 1;
}

const bh_sr_protocol_t bh_sr_json_protocol = {
    .name = "json",
    .version = 2,
    .binary = 0,
    .frame = frame,
    .parse = bh_sr_parse_message,
    .write_completion = bh_sr_write_completion,
    .write_invocation = bh_sr_write_invocation,
    .write_invocation_encoded = bh_sr_write_invocation, /* the argument is JSON text here */
    .write_ping = bh_sr_write_ping,
    .write_close = bh_sr_write_close,
    .write_ack = write_ack,
    .write_sequence = write_sequence,
};

const bh_sr_protocol_t *bh_sr_protocol_find(const char *name) {
    if (strcmp(name, bh_sr_json_protocol.name) == 0)
        return &bh_sr_json_protocol;
    if (strcmp(name, bh_sr_msgpack_protocol.name) == 0)
        return &bh_sr_msgpack_protocol;
    return NULL;
}
