/* A small HTTP/1.1 client for the metrics tests: one request per
 * connection, the whole reply read until the server closes or
 * Content-Length is reached. Plain sockets, no library: the tests check
 * what goes over the wire. */
#ifndef TESTS_SERVICE_HTTP_CLIENT_H
#define TESTS_SERVICE_HTTP_CLIENT_H

#include <stddef.h>

struct http_reply {
    int status; /* 200, 404, ... */
    char *head; /* the status line and headers, NUL-terminated */
    char *body; /* NUL-terminated */
    size_t body_len;
};

/* A TCP port of family AF_INET (or AF_INET6 if v6) that was free on
 * loopback a moment ago. Returns the port or a negative errno. */
int http_free_port(int v6);

/* Connects to host:port (an IPv4 or IPv6 literal), optionally from the
 * source address `from` (NULL: any), sends "METHOD PATH HTTP/1.1" with
 * Host and Connection: close, and reads the reply within timeout_ms.
 * Returns 0 or a negative errno (-ETIMEDOUT, -ECONNREFUSED, -EPROTO for a
 * reply that is not HTTP). */
int http_request(const char *host,
                 int port,
                 const char *from,
                 const char *method,
                 const char *path,
                 int timeout_ms,
                 struct http_reply *ret);
void http_reply_free(struct http_reply *r);
/* The value of header `name` (case-insensitive) in r->head, malloc'd, or NULL. */
char *http_header(const struct http_reply *r, const char *name);

/* An open connection to host:port from `from` (NULL: any): an fd or a
 * negative errno. */
int http_connect(const char *host, int port, const char *from);

#endif
