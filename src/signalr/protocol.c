/* SignalR JSON hub protocol: message parsing with ASP.NET's validation rules and the exact
 * byte forms of the messages the server sends. */
#include "protocol.h"

#include <string.h>

#include "../base/error.h"

#define BH_SR_MAX_DEPTH 64

static const char *opt_string(const bh_json_t *root, const char *name, int *bad) {
    const bh_json_t *v = bh_json_get(root, name);
    if (!v || v->type == BH_JSON_NULL)
        return NULL;
    if (v->type != BH_JSON_STRING) {
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
    default:
        break; /* Ping, Close, Ack, Sequence and future types carry nothing we need */
    }
    return BH_OK;
fail:
    bh_json_free(*doc);
    *doc = NULL;
    return BH_EINVAL;
}

static int end_record(bh_buf_t *b) {
    return bh_buf_appendc(b, BH_SR_RS);
}

int bh_sr_write_completion(bh_buf_t *b, const char *invocation_id, const char *error) {
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
    return r ? r : end_record(b);
}

int bh_sr_write_invocation(bh_buf_t *b, const char *target, const char *arg_json, size_t len) {
    int r = bh_buf_appends(b, "{\"type\":1,\"target\":");
    if (r == 0)
        r = bh_json_write_str(b, target, strlen(target));
    if (r == 0)
        r = bh_buf_appends(b, ",\"arguments\":[");
    if (r == 0)
        r = bh_buf_append(b, arg_json, len);
    if (r == 0)
        r = bh_buf_appends(b, "]}");
    return r ? r : end_record(b);
}

int bh_sr_write_ping(bh_buf_t *b) {
    int r = bh_buf_appends(b, "{\"type\":6}");
    return r ? r : end_record(b);
}

int bh_sr_write_close(bh_buf_t *b, const char *error, int allow_reconnect) {
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
    return r ? r : end_record(b);
}

int bh_sr_write_handshake_response(bh_buf_t *b, const char *error) {
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
    return r ? r : end_record(b);
}
