/* Text for the shared BH_E* error codes, for logs and diagnostics. */
#include "base/error.h"

const char *bh_strerror(int err) {
    switch (err) {
    case BH_OK:
        return "success";
    case BH_ENOMEM:
        return "out of memory";
    case BH_EINVAL:
        return "invalid input";
    case BH_ETOOBIG:
        return "over the size limit";
    case BH_EAGAIN:
        return "incomplete input";
    case BH_ENOTFOUND:
        return "not found";
    case BH_ESTORE:
        return "store failure";
    case BH_EEXIST:
        return "already exists";
    case BH_ERANGE:
        return "out of range";
    case BH_ELIMIT:
        return "rejected by a limit";
    case BH_EFUNDS:
        return "insufficient funds";
    case BH_ECLOSED:
        return "closed";
    case BH_EPROTO:
        return "protocol violation";
    case BH_EIO:
        return "I/O error";
    default:
        return "unknown error";
    }
}
