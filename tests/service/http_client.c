/* See http_client.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tests/service/http_client.h"

static int make_addr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *) ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *) ss;

    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t) port);
        *len = sizeof(*a4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t) port);
        *len = sizeof(*a6);
        return 0;
    }
    return -EINVAL;
}

int http_free_port(int v6)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int fd, port;

    if (make_addr(v6 ? "::1" : "127.0.0.1", 0, &ss, &len) < 0)
        return -EINVAL;
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *) &ss, len) < 0 ||
        getsockname(fd, (struct sockaddr *) &ss, &len) < 0) {
        port = -errno;
        (void) close(fd);
        return port;
    }
    port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                                          : ((struct sockaddr_in *) &ss)->sin_port);
    (void) close(fd);
    return port;
}

int http_connect(const char *host, int port, const char *from)
{
    struct sockaddr_storage ss, src;
    socklen_t len, slen;
    int fd, r;

    if (make_addr(host, port, &ss, &len) < 0)
        return -EINVAL;
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (from) {
        if (make_addr(from, 0, &src, &slen) < 0) {
            (void) close(fd);
            return -EINVAL;
        }
        if (bind(fd, (struct sockaddr *) &src, slen) < 0)
            goto fail;
    }
    if (connect(fd, (struct sockaddr *) &ss, len) < 0)
        goto fail;
    return fd;
fail:
    r = -errno;
    (void) close(fd);
    return r;
}

static long long now_ms(void)
{
    struct timespec ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Content-Length of a header block, or -1. */
static long content_length(const char *head)
{
    for (const char *p = head; (p = strchr(p, '\n'));) {
        p++;
        if (strncasecmp(p, "Content-Length:", 15) == 0)
            return strtol(p + 15, NULL, 10);
    }
    return -1;
}

int http_request(const char *host,
                 int port,
                 const char *from,
                 const char *method,
                 const char *path,
                 int timeout_ms,
                 struct http_reply *ret)
{
    char req[512], *buf = NULL, *sep;
    size_t len = 0, cap = 0;
    long long deadline = now_ms() + timeout_ms;
    long clen = -1;
    int fd, n, r = 0;

    memset(ret, 0, sizeof(*ret));
    fd = http_connect(host, port, from);
    if (fd < 0)
        return fd;
    n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n",
                 method, path, host, port);
    if (send(fd, req, (size_t) n, MSG_NOSIGNAL) != n) {
        r = -errno;
        goto out;
    }
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        long long left = deadline - now_ms();
        ssize_t got;

        if (left <= 0) {
            r = -ETIMEDOUT;
            goto out;
        }
        if (poll(&pfd, 1, (int) left) <= 0)
            continue;
        if (len + 4096 + 1 > cap) {
            char *nb = realloc(buf, cap = cap ? 2 * cap : 65536);

            if (!nb) {
                r = -ENOMEM;
                goto out;
            }
            buf = nb;
        }
        got = recv(fd, buf + len, cap - len - 1, 0);
        if (got < 0) {
            r = -errno;
            goto out;
        }
        len += (size_t) got;
        buf[len] = 0;
        sep = strstr(buf, "\r\n\r\n");
        if (sep && clen < 0) {
            *sep = 0;
            clen = content_length(buf);
            *sep = '\r';
        }
        /* HEAD: Content-Length says the size of a body that is not sent. */
        if (got == 0 ||
            (sep && clen >= 0 &&
             (strcmp(method, "HEAD") == 0 || len - (size_t) (sep + 4 - buf) >= (size_t) clen)))
            break;
    }
    sep = buf ? strstr(buf, "\r\n\r\n") : NULL;
    if (!sep || sscanf(buf, "HTTP/1.%*d %d", &ret->status) != 1) {
        r = -EPROTO;
        goto out;
    }
    *sep = 0;
    ret->head = strdup(buf);
    ret->body_len = len - (size_t) (sep + 4 - buf);
    ret->body = malloc(ret->body_len + 1);
    if (!ret->head || !ret->body) {
        http_reply_free(ret);
        r = -ENOMEM;
        goto out;
    }
    memcpy(ret->body, sep + 4, ret->body_len);
    ret->body[ret->body_len] = 0;
out:
    free(buf);
    (void) close(fd);
    return r;
}

void http_reply_free(struct http_reply *r)
{
    free(r->head);
    free(r->body);
    r->head = r->body = NULL;
}

char *http_header(const struct http_reply *r, const char *name)
{
    size_t n = strlen(name);

    for (const char *p = r->head; p && (p = strchr(p, '\n'));) {
        p++;
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1, *e;

            while (*v == ' ')
                v++;
            e = v + strcspn(v, "\r\n");
            return strndup(v, (size_t) (e - v));
        }
    }
    return NULL;
}
