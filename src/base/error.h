/* Error codes shared by every module: 0 is success, failures are negative BH_E* values. */
#ifndef BH_BASE_ERROR_H
#define BH_BASE_ERROR_H

enum {
    BH_OK = 0,
    BH_ENOMEM = -1,    /* allocation failed */
    BH_EINVAL = -2,    /* malformed input */
    BH_ETOOBIG = -3,   /* input or buffer over its limit */
    BH_EAGAIN = -4,    /* incomplete input: feed more bytes */
    BH_ENOTFOUND = -5, /* no such user, key, asset */
    BH_ESTORE = -6,    /* the store failed */
    BH_EEXIST = -7,    /* already exists / conflict */
    BH_ERANGE = -8,    /* numeric overflow or out of range */
    BH_ELIMIT = -9,    /* rejected by a limit rule */
    BH_EFUNDS = -10,   /* insufficient available funds */
    BH_ECLOSED = -11,  /* peer or session closed */
    BH_EPROTO = -12,   /* protocol violation */
    BH_EIO = -13,      /* operating-system I/O error */
};

/* Human-readable text for a BH_E* code (static storage). */
const char *bh_strerror(int err);

#endif
