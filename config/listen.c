/* The metrics_listen value: "ADDR:PORT", "[IPv6]:PORT", "localhost:PORT",
 * a bare "PORT" (or ":PORT") for loopback, or "" for off. The endpoint
 * listens on loopback unless an address is given: a bare port never means
 * every interface; "0.0.0.0:PORT" or "[::]:PORT" says so explicitly. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

static int listen_error(const char *s, char *err, size_t errlen)
{
    if (err && errlen)
        (void) snprintf(err, errlen,
                        "metrics_listen must be ADDR:PORT (such as \"127.0.0.1:9464\" or "
                        "\"[::1]:9464\"), a port alone for loopback, or \"\" for off; got "
                        "\"%.64s\"",
                        s);
    return -EINVAL;
}

int config_listen_parse(const char *s, struct sockaddr_storage *ret, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    char host[64];
    const char *colon, *port;
    unsigned long p;
    size_t hl;
    char *end;

    if (!s || !ret)
        return -EINVAL;
    memset(&ss, 0, sizeof(ss));
    if (!*s) {
        ss.ss_family = AF_UNSPEC; /* off */
        *ret = ss;
        return 0;
    }
    colon = strrchr(s, ':');
    port = colon ? colon + 1 : s;
    hl = colon ? (size_t) (colon - s) : 0;
    if (hl >= sizeof(host))
        return listen_error(s, err, errlen);
    memcpy(host, s, hl);
    host[hl] = 0;
    errno = 0;
    p = strtoul(port, &end, 10);
    if (*port < '0' || *port > '9' || *end || errno || p == 0 || p > 65535)
        return listen_error(s, err, errlen);
    if (host[0] == '[') {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *) &ss;

        if (hl < 3 || host[hl - 1] != ']')
            return listen_error(s, err, errlen);
        host[hl - 1] = 0;
        if (inet_pton(AF_INET6, host + 1, &a6->sin6_addr) != 1)
            return listen_error(s, err, errlen);
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t) p);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *) &ss;

        if (hl == 0 || strcmp(host, "localhost") == 0)
            a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        else if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
            return listen_error(s, err, errlen);
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t) p);
    }
    *ret = ss;
    return 0;
}
