/*
 * loadgen: a single-threaded epoll load generator for SSE broadcasters.
 *
 *   loadgen sub  holds N Server-Sent Events connections, checks every event's sequence
 *                number and measures its latency; driven line by line over stdin/stdout.
 *   loadgen pub  publishes events (Herald JSON or Nchan raw bodies) on keep-alive
 *                connections, back to back or paced open-loop, and prints one JSON line;
 *                to Herald also as batches (a JSON array per request) or as one chunked
 *                NDJSON request per connection.
 *   loadgen tokens  K answers, a topic and a connection each, paced at so many tokens a
 *                second: a POST per token, or one chunked NDJSON request per answer.
 *
 * Every event's data is "<seq> <publish_time_us>" (CLOCK_REALTIME microseconds, stamped
 * when the publish request is sent; by `tokens`, the time it was due), so a subscriber
 * needs no side channel to measure latency or to find gaps. Run `loadgen` without
 * arguments for the flags.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define READ_BUF (64 * 1024)
#define MAX_EVENTS 4096
#define STDIN_TAG UINT32_MAX
#define RECONNECT_DELAY_US 100000

/* ------------------------------------------------------------------ utilities */

static _Noreturn void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static uint64_t clock_us(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t mono_us(void) { return clock_us(CLOCK_MONOTONIC); }
static uint64_t real_us(void) { return clock_us(CLOCK_REALTIME); }

static void raise_nofile_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static double seconds_of(struct timeval tv) { return (double)tv.tv_sec + (double)tv.tv_usec / 1e6; }

static void print_cpu_json(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("\"cpu_user_s\":%.3f,\"cpu_sys_s\":%.3f", seconds_of(ru.ru_utime),
           seconds_of(ru.ru_stime));
}

static void epoll_set(int ep, int op, int fd, uint32_t events, uint32_t tag) {
    struct epoll_event ev = {.events = events, .data.u32 = tag};
    if (epoll_ctl(ep, op, fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
}

/* Starts a non-blocking connect from `src` to `dst`; returns the fd or -1. */
static int start_connect(const struct sockaddr_in *src, const struct sockaddr_in *dst) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Let connect() pick the port for the full 4-tuple, so ports are not exhausted by
     * bind() reserving one per source address. */
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (src && bind(fd, (const struct sockaddr *)src, sizeof *src) < 0) goto fail;
    if (connect(fd, (const struct sockaddr *)dst, sizeof *dst) < 0 && errno != EINPROGRESS)
        goto fail;
    return fd;
fail:
    close(fd);
    return -1;
}

static int connect_error(int fd) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
    return err;
}

static struct sockaddr_in ipv4_address(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) die("not an IPv4 address: %s", host);
    return a;
}

/* ------------------------------------------------------------------ output buffers */

/* What is written for a socket but not yet taken by it: buf[sent, len). It grows. */
struct outbuf {
    char *buf;
    size_t len, sent, cap;
};

static void out_append(struct outbuf *o, const char *fmt, ...) {
    for (;;) {
        size_t room = o->cap - o->len;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, room, fmt, ap);
        va_end(ap);
        if (n < 0) die("vsnprintf failed");
        if ((size_t)n < room) {
            o->len += (size_t)n;
            return;
        }
        o->cap = 2 * (o->cap + (size_t)n);
        o->buf = realloc(o->buf, o->cap);
        if (!o->buf) die("out of memory");
    }
}

static void out_clear(struct outbuf *o) { o->len = o->sent = 0; }

static uint8_t out_pending(const struct outbuf *o) { return o->sent < o->len; }

/* ------------------------------------------------------------------ histogram */

/* Log-linear: exact below 2*SUB µs, then SUB buckets per power of two, so a bucket's
 * midpoint is within 1/(2*SUB) (< 0.4%) of any value in it. Covers 2^(MAX_EXP+8) µs. */
#define SUB_BITS 7
#define SUB (1u << SUB_BITS)
#define MAX_EXP 34
#define NBUCKETS (2 * SUB + MAX_EXP * SUB)

struct histogram {
    uint64_t counts[NBUCKETS];
    uint64_t total;
    uint64_t max;
};

static unsigned bucket_of(uint64_t v) {
    if (v < 2 * SUB) return (unsigned)v;
    unsigned e = (unsigned)(63 - __builtin_clzll(v)) - SUB_BITS;
    if (e > MAX_EXP) return NBUCKETS - 1;
    return 2 * SUB + (e - 1) * SUB + (unsigned)((v >> e) - SUB);
}

static uint64_t bucket_value(unsigned b) {
    if (b < 2 * SUB) return b;
    unsigned e = (b - 2 * SUB) / SUB + 1;
    uint64_t m = (b - 2 * SUB) % SUB + SUB;
    return (m << e) + ((1ull << e) >> 1);
}

static void hist_add(struct histogram *h, uint64_t v) {
    h->counts[bucket_of(v)]++;
    h->total++;
    if (v > h->max) h->max = v;
}

static uint64_t hist_percentile(const struct histogram *h, double p) {
    if (h->total == 0) return 0;
    uint64_t rank = (uint64_t)(p * (double)h->total + 0.999999);
    if (rank == 0) rank = 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < NBUCKETS; b++) {
        seen += h->counts[b];
        if (seen >= rank) {
            uint64_t v = bucket_value(b);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}

/* ------------------------------------------------------------------ HTTP response head */

#define HEAD_LINE_CAP 128

struct http_head {
    int status;          /* 0 until the status line was read */
    int64_t content_length; /* -1 when absent */
    uint8_t chunked, close, done;
    uint16_t len;
    char line[HEAD_LINE_CAP]; /* longer header lines are truncated: only short ones matter */
};

static void head_reset(struct http_head *h) {
    h->status = 0;
    h->content_length = -1;
    h->chunked = h->close = h->done = 0;
    h->len = 0;
}

static int header_is(const char *line, size_t len, const char *name) {
    size_t n = strlen(name);
    return len > n && strncasecmp(line, name, n) == 0 && line[n] == ':';
}

static uint8_t value_has(const char *line, const char *word) {
    return strcasestr(line, word) != NULL;
}

static void head_line(struct http_head *h) {
    const char *l = h->line;
    size_t len = h->len;
    if (h->status == 0) {
        /* "HTTP/1.1 200 OK"; a malformed status line yields status -1 */
        h->status = (len >= 12 && memcmp(l, "HTTP/1.", 7) == 0) ? atoi(l + 9) : -1;
        if (h->status <= 0) h->status = -1;
    } else if (len == 0) {
        h->done = 1;
    } else if (header_is(l, len, "transfer-encoding")) {
        h->chunked = value_has(l, "chunked");
    } else if (header_is(l, len, "content-length")) {
        h->content_length = strtoll(l + 15, NULL, 10);
    } else if (header_is(l, len, "connection")) {
        h->close = value_has(l, "close");
    }
}

/* Consumes head bytes from [p, p+n) until the blank line; returns bytes consumed. */
static size_t head_feed(struct http_head *h, const char *p, size_t n) {
    size_t i = 0;
    while (i < n && !h->done) {
        char ch = p[i++];
        if (ch == '\n') {
            h->line[h->len < HEAD_LINE_CAP ? h->len : HEAD_LINE_CAP - 1] = '\0';
            head_line(h);
            h->len = 0;
        } else if (ch != '\r' && h->len < HEAD_LINE_CAP - 1) {
            h->line[h->len++] = ch;
        }
    }
    return i;
}

/* ------------------------------------------------------------------ chunked bodies */

enum { DC_SIZE, DC_EXT, DC_DATA, DC_DATA_END, DC_TRAILER, DC_DONE, DC_ERROR };

struct dechunk {
    uint8_t state;
    uint8_t trailer_len; /* non-zero while inside a trailer line */
    uint64_t remaining;  /* chunk size being read, then payload bytes left */
};

static int hex_value(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static void dechunk_size_end(struct dechunk *d) {
    d->state = d->remaining ? DC_DATA : DC_TRAILER;
    d->trailer_len = 0;
}

/* Steps over one framing byte (any state but DC_DATA). */
static void dechunk_frame_byte(struct dechunk *d, char ch) {
    switch (d->state) {
    case DC_SIZE:
        if (ch == '\n') {
            dechunk_size_end(d);
        } else if (ch == ';') {
            d->state = DC_EXT;
        } else if (ch != '\r' && ch != ' ') {
            int v = hex_value(ch);
            if (v < 0 || d->remaining >> 56) d->state = DC_ERROR;
            else d->remaining = d->remaining * 16 + (uint64_t)v;
        }
        break;
    case DC_EXT:
        if (ch == '\n') dechunk_size_end(d);
        break;
    case DC_DATA_END:
        if (ch == '\n') {
            d->state = DC_SIZE;
            d->remaining = 0;
        } else if (ch != '\r') {
            d->state = DC_ERROR;
        }
        break;
    case DC_TRAILER:
        if (ch == '\n') {
            if (!d->trailer_len) d->state = DC_DONE;
            d->trailer_len = 0;
        } else if (ch != '\r') {
            d->trailer_len = 1;
        }
        break;
    default:
        break;
    }
}

/* Steps over framing in [*p, end); returns the length of the next payload run, which
 * starts at *run, or 0 when the input is used up or the body ended (DC_DONE/DC_ERROR). */
static size_t dechunk(struct dechunk *d, const char **p, const char *end, const char **run) {
    while (*p < end && d->state != DC_DONE && d->state != DC_ERROR) {
        if (d->state == DC_DATA) {
            size_t avail = (size_t)(end - *p);
            size_t n = d->remaining < avail ? (size_t)d->remaining : avail;
            *run = *p;
            *p += n;
            d->remaining -= n;
            if (d->remaining == 0) d->state = DC_DATA_END;
            return n;
        }
        dechunk_frame_byte(d, *(*p)++);
    }
    return 0;
}

/* ================================================================== sub mode */

#define SSE_LINE_CAP 200
#define DATA_CAP 64
#define ID_CAP 64

enum { C_IDLE, C_CONNECTING, C_HEAD, C_BODY };

struct conn {
    int fd;
    uint8_t state;
    uint8_t ever_connected, first_done, queued;
    uint8_t cr_seen, has_data;
    uint16_t line_len, data_len;
    uint64_t deadline_us;
    uint64_t due_us; /* earliest (re)connect time while queued */
    uint64_t last_seq;
    uint64_t events_total;
    struct http_head head;
    struct dechunk dc;
    char line[SSE_LINE_CAP];
    char data[DATA_CAP];
    char id_buf[ID_CAP];  /* the SSE "last event ID buffer" */
    char last_id[ID_CAP]; /* the id as of the last dispatched event: resume from here */
};

struct sub_opts {
    const char *host;
    int port;
    const char *path_prefix, *path_suffix; /* the template split around {k} */
    int templated;
    uint32_t conns, topics;
    uint64_t start_seq, expect;
    const char *last_event_id;
    int reconnect, print_ids;
    double connect_rate;  /* new connections per second, 0 = unlimited */
    uint32_t max_pending; /* connections at once between connect() and the response head */
    double connect_timeout_s;
    uint32_t src_salt;
};

struct sub_stats {
    uint64_t events, gaps, dups, unparsed, disconnects, reconnects;
    uint64_t last_event_us; /* monotonic; 0 = none since mark */
    struct histogram hist;
};

struct sub {
    struct sub_opts o;
    struct sockaddr_in dst;
    struct conn *conns;
    int ep;
    /* FIFO of connections waiting to (re)connect; each connection is in it at most once */
    uint32_t *queue, q_head, q_len;
    uint32_t pending, open, connected, first_failed, first_done, complete;
    uint64_t http_errors, connect_failures, started;
    uint64_t start_us, mark_us, complete_us;
    int ready_printed;
    struct sub_stats st;
    char rbuf[READ_BUF];
};

static void queue_push(struct sub *s, uint32_t i, uint64_t due) {
    struct conn *c = &s->conns[i];
    if (c->queued) return;
    c->queued = 1;
    c->due_us = due;
    s->queue[(s->q_head + s->q_len++) % s->o.conns] = i;
}

static uint32_t queue_pop(struct sub *s) {
    uint32_t i = s->queue[s->q_head];
    s->q_head = (s->q_head + 1) % s->o.conns;
    s->q_len--;
    s->conns[i].queued = 0;
    return i;
}

/* Spreads connections over 127.0.0.0/8 so that repeated runs of tens of thousands of
 * connections never run out of ephemeral ports on one source address. */
static struct sockaddr_in source_address(const struct sub *s, uint32_t i) {
    uint32_t a = 1 + s->o.src_salt % 250, b = 1 + (i / 250) % 250, c = 1 + i % 250;
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr = htonl((127u << 24) | (a << 16) | (b << 8) | c);
    return src;
}

static int build_request(const struct sub *s, uint32_t i, const char *last_id, char *buf,
                         size_t cap) {
    char path[512];
    if (s->o.templated)
        snprintf(path, sizeof path, "%s%" PRIu32 "%s", s->o.path_prefix, i % s->o.topics,
                 s->o.path_suffix);
    else
        snprintf(path, sizeof path, "%s", s->o.path_prefix);
    int n = snprintf(buf, cap,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\n",
                     path, s->o.host, s->o.port);
    if (last_id[0]) n += snprintf(buf + n, cap - (size_t)n, "Last-Event-ID: %s\r\n", last_id);
    n += snprintf(buf + n, cap - (size_t)n, "\r\n");
    return n;
}

static void reset_stream_state(struct conn *c) {
    head_reset(&c->head);
    memset(&c->dc, 0, sizeof c->dc);
    c->line_len = c->data_len = 0;
    c->cr_seen = c->has_data = 0;
    /* The buffer starts from the position we resume at, so a blank line before the
     * first id (e.g. after "retry:") does not forget it. */
    memcpy(c->id_buf, c->last_id, ID_CAP);
}

static void first_attempt_over(struct sub *s, struct conn *c, int ok) {
    if (c->first_done) return;
    c->first_done = 1;
    s->first_done++;
    if (!ok) s->first_failed++;
}

/* Closes a connection and, with --reconnect, queues it to come back. */
static void conn_close(struct sub *s, uint32_t i, uint64_t now) {
    struct conn *c = &s->conns[i];
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    if (c->state == C_BODY) {
        s->open--;
        s->st.disconnects++;
    } else if (c->state != C_IDLE) {
        s->pending--;
        if (c->head.status == 0) s->connect_failures++; /* no answer at all */
        first_attempt_over(s, c, 0);
    }
    c->state = C_IDLE;
    if (s->o.reconnect) queue_push(s, i, now + RECONNECT_DELAY_US);
}

static void conn_start(struct sub *s, uint32_t i, uint64_t now) {
    struct conn *c = &s->conns[i];
    struct sockaddr_in src = source_address(s, i);
    if (c->ever_connected || c->first_done) s->st.reconnects++;
    s->started++;
    reset_stream_state(c);
    c->deadline_us = now + (uint64_t)(s->o.connect_timeout_s * 1e6);
    c->fd = start_connect(&src, &s->dst);
    c->state = C_CONNECTING;
    s->pending++;
    if (c->fd < 0) {
        conn_close(s, i, now);
        return;
    }
    epoll_set(s->ep, EPOLL_CTL_ADD, c->fd, EPOLLOUT, i);
}

static void conn_send_request(struct sub *s, uint32_t i, uint64_t now) {
    struct conn *c = &s->conns[i];
    char req[1024];
    if (connect_error(c->fd) != 0) {
        conn_close(s, i, now);
        return;
    }
    int n = build_request(s, i, c->last_id, req, sizeof req);
    /* A fresh socket's send buffer always takes a request this small whole. */
    if (send(c->fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        conn_close(s, i, now);
        return;
    }
    c->state = C_HEAD;
    epoll_set(s->ep, EPOLL_CTL_MOD, c->fd, EPOLLIN, i);
}

static void check_complete(struct sub *s, struct conn *c, uint64_t now) {
    if (s->o.expect && c->events_total == s->o.expect) {
        s->complete++;
        if (s->complete == s->o.conns) s->complete_us = now;
    }
}

static void on_event(struct sub *s, uint32_t i, uint64_t now, uint64_t now_real) {
    struct conn *c = &s->conns[i];
    char text[DATA_CAP + 1], *end;
    memcpy(text, c->data, c->data_len);
    text[c->data_len] = '\0';
    uint64_t seq = strtoull(text, &end, 10);
    uint64_t published = (end != text && *end == ' ') ? strtoull(end + 1, NULL, 10) : 0;
    if (published == 0) {
        s->st.unparsed++; /* e.g. Herald's herald.trimmed notice */
        return;
    }
    s->st.events++;
    s->st.last_event_us = now;
    c->events_total++;
    check_complete(s, c, now);
    if (seq <= c->last_seq) s->st.dups++;
    else s->st.gaps += seq - c->last_seq - 1;
    if (seq > c->last_seq) c->last_seq = seq;
    hist_add(&s->st.hist, now_real > published ? now_real - published : 0);
    if (s->o.print_ids && i == 0) printf("ID %" PRIu64 " %s\n", seq, c->last_id);
}

static void sse_dispatch(struct sub *s, uint32_t i, uint64_t now, uint64_t now_real) {
    struct conn *c = &s->conns[i];
    memcpy(c->last_id, c->id_buf, ID_CAP);
    if (!c->has_data) return;
    on_event(s, i, now, now_real);
    c->has_data = 0;
    c->data_len = 0;
}

static void sse_field(struct conn *c, const char *name, size_t nlen, const char *v, size_t vlen) {
    if (nlen == 4 && memcmp(name, "data", 4) == 0) {
        if (c->has_data && c->data_len < DATA_CAP) c->data[c->data_len++] = '\n';
        size_t room = DATA_CAP - c->data_len;
        size_t n = vlen < room ? vlen : room;
        memcpy(c->data + c->data_len, v, n);
        c->data_len += (uint16_t)n;
        c->has_data = 1;
    } else if (nlen == 2 && memcmp(name, "id", 2) == 0 && !memchr(v, '\0', vlen)) {
        size_t n = vlen < ID_CAP - 1 ? vlen : ID_CAP - 1;
        memcpy(c->id_buf, v, n);
        c->id_buf[n] = '\0';
    }
    /* event and retry do not matter to the measurement; unknown fields are ignored */
}

static void sse_line(struct sub *s, uint32_t i, uint64_t now, uint64_t now_real) {
    struct conn *c = &s->conns[i];
    const char *l = c->line;
    size_t len = c->line_len;
    if (len == 0) {
        sse_dispatch(s, i, now, now_real);
        return;
    }
    if (l[0] == ':') return; /* comment: heartbeats, Nchan's ": hi" */
    const char *colon = memchr(l, ':', len);
    size_t nlen = colon ? (size_t)(colon - l) : len;
    const char *v = colon ? colon + 1 : l + len;
    if (v < l + len && *v == ' ') v++;
    sse_field(c, l, nlen, v, (size_t)(l + len - v));
}

/* Lines end in CRLF, LF or CR, split anywhere across reads. */
static void sse_feed(struct sub *s, uint32_t i, const char *p, size_t n, uint64_t now,
                     uint64_t now_real) {
    struct conn *c = &s->conns[i];
    for (size_t k = 0; k < n; k++) {
        char ch = p[k];
        if (c->cr_seen) {
            c->cr_seen = 0;
            if (ch == '\n') continue;
        }
        if (ch == '\r' || ch == '\n') {
            c->cr_seen = ch == '\r';
            sse_line(s, i, now, now_real);
            c->line_len = 0;
        } else if (c->line_len < SSE_LINE_CAP) {
            c->line[c->line_len++] = ch;
        }
    }
}

static void head_complete(struct sub *s, uint32_t i, uint64_t now) {
    struct conn *c = &s->conns[i];
    if (c->head.status != 200) {
        s->http_errors++;
        conn_close(s, i, now);
        return;
    }
    c->state = C_BODY;
    c->ever_connected = 1;
    s->pending--;
    s->open++;
    if (!c->first_done) s->connected++;
    first_attempt_over(s, c, 1);
}

/* Feeds body bytes, de-chunking when needed; returns 0 once the body has ended. */
static int body_feed(struct sub *s, uint32_t i, const char *p, size_t n, uint64_t now,
                     uint64_t now_real) {
    struct conn *c = &s->conns[i];
    if (!c->head.chunked) {
        sse_feed(s, i, p, n, now, now_real); /* Nchan: the body runs until the close */
        return 1;
    }
    const char *end = p + n, *run;
    size_t len;
    while ((len = dechunk(&c->dc, &p, end, &run)) > 0) sse_feed(s, i, run, len, now, now_real);
    return c->dc.state != DC_DONE && c->dc.state != DC_ERROR;
}

static void conn_readable(struct sub *s, uint32_t i, uint64_t now) {
    struct conn *c = &s->conns[i];
    ssize_t n = recv(c->fd, s->rbuf, READ_BUF, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
        conn_close(s, i, now);
        return;
    }
    uint64_t now_real = real_us();
    size_t used = 0;
    if (c->state == C_HEAD) {
        used = head_feed(&c->head, s->rbuf, (size_t)n);
        if (!c->head.done) return;
        head_complete(s, i, now);
        if (c->state != C_BODY) return;
    }
    if (!body_feed(s, i, s->rbuf + used, (size_t)n - used, now, now_real)) conn_close(s, i, now);
}

static void conn_event(struct sub *s, uint32_t i, uint32_t events, uint64_t now) {
    struct conn *c = &s->conns[i];
    if (c->state == C_CONNECTING) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) conn_send_request(s, i, now);
    } else if (c->state == C_HEAD || c->state == C_BODY) {
        conn_readable(s, i, now);
    }
}

static void start_due_connections(struct sub *s, uint64_t now) {
    while (s->q_len && s->pending < s->o.max_pending) {
        if (s->conns[s->queue[s->q_head]].due_us > now) break;
        if (s->o.connect_rate > 0 &&
            (double)s->started >= s->o.connect_rate * (double)(now - s->start_us) / 1e6 + 1)
            break;
        conn_start(s, queue_pop(s), now);
    }
}

static void expire_setups(struct sub *s, uint64_t now) {
    for (uint32_t i = 0; i < s->o.conns; i++) {
        struct conn *c = &s->conns[i];
        if ((c->state == C_CONNECTING || c->state == C_HEAD) && now > c->deadline_us)
            conn_close(s, i, now);
    }
}

static void print_null_or_seconds(const char *name, uint64_t from, uint64_t to) {
    if (to == 0) printf("\"%s\":null,", name);
    else printf("\"%s\":%.6f,", name, ((double)to - (double)from) / 1e6);
}

static void sub_report(struct sub *s, uint64_t now) {
    const struct sub_stats *st = &s->st;
    printf("{\"conns\":%" PRIu32 ",\"connected\":%" PRIu32 ",\"open\":%" PRIu32
           ",\"http_errors\":%" PRIu64 ",\"connect_failures\":%" PRIu64
           ",\"disconnects\":%" PRIu64 ",\"reconnects\":%" PRIu64 ",\"events\":%" PRIu64
           ",\"gaps\":%" PRIu64 ",\"dups\":%" PRIu64 ",\"unparsed\":%" PRIu64
           ",\"complete\":%" PRIu32 ",\"seconds_since_mark\":%.6f,",
           s->o.conns, s->connected, s->open, s->http_errors, s->connect_failures,
           st->disconnects, st->reconnects, st->events, st->gaps, st->dups, st->unparsed,
           s->complete, (double)(now - s->mark_us) / 1e6);
    print_null_or_seconds("seconds_to_complete", s->mark_us, s->complete_us);
    print_null_or_seconds("last_event_seconds", s->mark_us, st->last_event_us);
    printf("\"p50_us\":%" PRIu64 ",\"p90_us\":%" PRIu64 ",\"p99_us\":%" PRIu64
           ",\"max_us\":%" PRIu64 ",",
           hist_percentile(&st->hist, 0.50), hist_percentile(&st->hist, 0.90),
           hist_percentile(&st->hist, 0.99), st->hist.max);
    print_cpu_json();
    printf("}\n");
}

static void sub_shutdown(struct sub *s) {
    for (uint32_t i = 0; i < s->o.conns; i++)
        if (s->conns[i].fd >= 0) close(s->conns[i].fd);
    fflush(stdout);
    exit(0);
}

/* Commands: mark (zero the event counters and the histogram, restart the clock),
 * report (one JSON line), quit. */
static void sub_command(struct sub *s, const char *cmd, uint64_t now) {
    if (strcmp(cmd, "mark") == 0) {
        memset(&s->st, 0, sizeof s->st);
        s->mark_us = now;
        printf("MARKED\n");
    } else if (strcmp(cmd, "report") == 0) {
        sub_report(s, now);
    } else if (strcmp(cmd, "quit") == 0) {
        sub_shutdown(s);
    } else if (cmd[0]) {
        printf("ERROR unknown command %s\n", cmd);
    }
}

static void sub_stdin(struct sub *s, uint64_t now) {
    static char buf[4096];
    static size_t len;
    ssize_t n = read(STDIN_FILENO, buf + len, sizeof buf - 1 - len);
    if (n <= 0) sub_shutdown(s);
    len += (size_t)n;
    char *start = buf, *nl;
    while ((nl = memchr(start, '\n', (size_t)(buf + len - start)))) {
        *nl = '\0';
        if (nl > start && nl[-1] == '\r') nl[-1] = '\0';
        sub_command(s, start, now);
        start = nl + 1;
    }
    len = (size_t)(buf + len - start);
    memmove(buf, start, len);
    if (len == sizeof buf - 1) len = 0; /* an absurdly long line: drop it */
}

static void sub_loop(struct sub *s) {
    static struct epoll_event evs[MAX_EVENTS];
    uint64_t last_expiry_scan = 0;
    for (;;) {
        int n = epoll_wait(s->ep, evs, MAX_EVENTS, 10);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        uint64_t now = mono_us();
        for (int k = 0; k < n; k++) {
            if (evs[k].data.u32 == STDIN_TAG) sub_stdin(s, now);
            else conn_event(s, evs[k].data.u32, evs[k].events, now);
        }
        start_due_connections(s, now);
        if (s->pending && now - last_expiry_scan > 100000) {
            expire_setups(s, now);
            last_expiry_scan = now;
        }
        if (!s->ready_printed && s->first_done == s->o.conns) {
            printf("READY %" PRIu32 " %" PRIu32 "\n", s->connected, s->first_failed);
            s->ready_printed = 1;
        }
        fflush(stdout);
    }
}

/* ================================================================== pub mode */

struct pub_opts {
    const char *host;
    int port;
    int nchan, stream;
    uint32_t topics, concurrency, batch;
    uint64_t count, start_seq;
    double rate, timeout_s;
    const char *topic_prefix;
};

/* A unit is the events one write carries: a request's (one event, or a --batch), or
 * with --stream a chunk of the connection's one request. */
struct pconn {
    int fd;
    uint8_t connecting, busy; /* busy: a request sent, its answer not yet read */
    uint8_t streaming;        /* --stream: the request is open for more chunks */
    uint64_t units_left;      /* units still to go on this connection */
    uint64_t cursor;          /* back to back: where to look for its next unit */
    uint64_t request_events;  /* events in the request under way */
    struct http_head head;
    struct dechunk dc;
    int64_t body_left;
    struct outbuf out;
};

struct pub {
    struct pub_opts o;
    struct sockaddr_in dst;
    struct pconn *pc;
    int ep;
    uint64_t next, units, ok, errors, in_flight, events_ok;
    uint64_t t0, first_send, last_done, max_lag_us;
    struct outbuf body; /* a Herald request's body, while its request is written */
    char rbuf[READ_BUF];
};

static void pconn_open(struct pub *p, uint32_t i) {
    struct pconn *c = &p->pc[i];
    c->fd = start_connect(NULL, &p->dst);
    if (c->fd < 0) die("connect to %s:%d failed: %s", p->o.host, p->o.port, strerror(errno));
    c->connecting = 1;
    c->busy = 0;
    epoll_set(p->ep, EPOLL_CTL_ADD, c->fd, EPOLLOUT, i);
}

static void pconn_reopen(struct pub *p, uint32_t i) {
    struct pconn *c = &p->pc[i];
    if (c->busy) {
        p->errors++; /* the request in flight got no answer */
        p->in_flight--;
    }
    c->streaming = 0;
    close(c->fd);
    pconn_open(p, i);
}

/* Herald's body for `batch` events of `topic` from `seq` on, into p->body: an object,
 * an array of them (--batch), or NDJSON lines (--stream). */
static void herald_body(struct pub *p, uint64_t topic, uint64_t seq, uint64_t sent_us) {
    int array = p->o.batch > 1 && !p->o.stream;
    out_clear(&p->body);
    for (uint32_t b = 0; b < p->o.batch; b++) {
        const char *before = b == 0 ? (array ? "[" : "") : (p->o.stream ? "" : ",");
        out_append(&p->body,
                   "%s{\"topic\":\"%s%" PRIu64 "\",\"event\":\"tick\",\"data\":\"%" PRIu64
                   " %" PRIu64 "\"}%s",
                   before, p->o.topic_prefix, topic, seq + b, sent_us, p->o.stream ? "\n" : "");
    }
    if (array) out_append(&p->body, "]");
}

/* Unit u goes to topic u % K and carries that topic's events from sequence number
 * start + (u / K) * batch on: each topic's events stay in order on one connection. */
static void format_unit(struct pub *p, struct pconn *c, uint64_t u) {
    uint64_t topic = u % p->o.topics, seq = p->o.start_seq + u / p->o.topics * p->o.batch;
    uint64_t sent_us = real_us();
    if (p->o.nchan) {
        char data[64];
        int len = snprintf(data, sizeof data, "%" PRIu64 " %" PRIu64, seq, sent_us);
        out_append(&c->out,
                   "POST /pub?id=%s%" PRIu64 " HTTP/1.1\r\nHost: %s:%d\r\n"
                   "Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
                   p->o.topic_prefix, topic, p->o.host, p->o.port, len, data);
        return;
    }
    herald_body(p, topic, seq, sent_us);
    size_t len = p->body.len;
    if (!p->o.stream) {
        out_append(&c->out,
                   "POST /publish HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                   "Content-Length: %zu\r\n\r\n%s",
                   p->o.host, p->o.port, len, p->body.buf);
        return;
    }
    if (!c->streaming)
        out_append(&c->out,
                   "POST /publish HTTP/1.1\r\nHost: %s:%d\r\n"
                   "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
                   p->o.host, p->o.port);
    out_append(&c->out, "%zx\r\n%s\r\n", len, p->body.buf);
    if (c->units_left == 1) out_append(&c->out, "0\r\n\r\n");
}

static void pconn_flush(struct pub *p, uint32_t i) {
    struct pconn *c = &p->pc[i];
    struct outbuf *o = &c->out;
    ssize_t n = send(c->fd, o->buf + o->sent, o->len - o->sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EAGAIN) n = 0;
    if (n < 0) {
        pconn_reopen(p, i);
        return;
    }
    o->sent += (size_t)n;
    epoll_set(p->ep, EPOLL_CTL_MOD, c->fd, out_pending(o) ? EPOLLOUT : EPOLLIN, i);
}

/* --rate counts events: unit u is due once its first event is. */
static uint64_t scheduled_us(const struct pub *p, uint64_t u) {
    double j = (double)u * p->o.batch;
    return p->o.rate > 0 ? p->t0 + (uint64_t)(j * 1e6 / p->o.rate) : p->t0;
}

static uint32_t conn_of(const struct pub *p, uint64_t u) {
    return (uint32_t)((u % p->o.topics) % p->o.concurrency);
}

/* A connection takes a unit when no request is under way on it or, streaming, once it
 * wrote the last one. */
static int pconn_takes_unit(const struct pconn *c) {
    return !c->connecting && (!c->busy || (c->streaming && !out_pending(&c->out)));
}

static void send_unit(struct pub *p, uint32_t i, uint64_t u, uint64_t now) {
    struct pconn *c = &p->pc[i];
    if (!p->first_send) p->first_send = now;
    if (!c->busy) {
        head_reset(&c->head);
        memset(&c->dc, 0, sizeof c->dc);
        c->busy = 1;
        c->request_events = 0;
        p->in_flight++;
    }
    out_clear(&c->out);
    format_unit(p, c, u);
    p->next++;
    c->streaming = p->o.stream && c->units_left > 1;
    c->units_left--;
    c->request_events += p->o.batch;
    pconn_flush(p, i);
}

/* Paced, units go in schedule order, each waiting for its topic's connection, which
 * keeps every topic's events in order on one connection. Back to back, each connection
 * takes its own next unit as soon as it is free, so an answer that comes late holds up
 * its own connection only: the ceiling is the server's, not this loop's. */
static void send_due(struct pub *p, uint64_t now) {
    if (p->o.rate <= 0) {
        for (uint32_t i = 0; i < p->o.concurrency; i++) {
            struct pconn *c = &p->pc[i];
            while (c->units_left && pconn_takes_unit(c)) {
                while (conn_of(p, c->cursor) != i) c->cursor++;
                send_unit(p, i, c->cursor++, now);
            }
        }
        return;
    }
    while (p->next < p->units) {
        uint64_t due = scheduled_us(p, p->next);
        if (due > now) return;
        uint32_t i = conn_of(p, p->next);
        if (!pconn_takes_unit(&p->pc[i])) return;
        if (now - due > p->max_lag_us) p->max_lag_us = now - due;
        send_unit(p, i, p->next, now);
    }
}

static void response_done(struct pub *p, uint32_t i, uint64_t now) {
    struct pconn *c = &p->pc[i];
    if (c->head.status >= 200 && c->head.status < 300) {
        p->ok++;
        p->events_ok += c->request_events;
    } else {
        p->errors++;
    }
    c->busy = c->streaming = 0; /* an answer ends a stream, even one that came early */
    p->in_flight--;
    p->last_done = now;
    if (c->head.close) pconn_reopen(p, i);
}

/* Consumes the bytes of a response body that is not kept; returns 1 once it is complete. */
static int response_body(const struct http_head *head, struct dechunk *dc, int64_t *body_left,
                         const char *q, size_t n) {
    if (head->chunked) {
        const char *end = q + n, *run;
        while (dechunk(dc, &q, end, &run) > 0) {
        }
        return dc->state == DC_DONE || dc->state == DC_ERROR;
    }
    *body_left -= (int64_t)n;
    return *body_left <= 0;
}

static void pconn_readable(struct pub *p, uint32_t i, uint64_t now) {
    struct pconn *c = &p->pc[i];
    ssize_t n = recv(c->fd, p->rbuf, READ_BUF, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0 || !c->busy) {
        pconn_reopen(p, i);
        return;
    }
    size_t used = 0;
    if (!c->head.done) {
        used = head_feed(&c->head, p->rbuf, (size_t)n);
        if (!c->head.done) return;
        /* Without a length the body would run to the close; publish answers always
         * carry one, so treat it as empty. */
        c->body_left = c->head.content_length > 0 ? c->head.content_length : 0;
    }
    if (response_body(&c->head, &c->dc, &c->body_left, p->rbuf + used, (size_t)n - used))
        response_done(p, i, now);
}

static void pconn_event(struct pub *p, uint32_t i, uint64_t now) {
    struct pconn *c = &p->pc[i];
    if (c->connecting) {
        if (connect_error(c->fd) != 0)
            die("connect to %s:%d failed: %s", p->o.host, p->o.port,
                strerror(connect_error(c->fd)));
        c->connecting = 0;
        epoll_set(p->ep, EPOLL_CTL_MOD, c->fd, EPOLLIN, i);
    } else if (c->busy && out_pending(&c->out)) {
        pconn_flush(p, i);
    } else {
        pconn_readable(p, i, now);
    }
}

/* How long to sleep in epoll: until the next event is due, or, when it is due but its
 * connection is busy, until that connection answers (never a busy loop). */
static int pub_wait_ms(const struct pub *p, uint64_t now) {
    if (p->next >= p->units || p->o.rate <= 0) return 100;
    uint64_t due = scheduled_us(p, p->next);
    return due <= now ? 100 : (int)((due - now + 999) / 1000);
}

static void pub_report(const struct pub *p, int timed_out) {
    uint64_t end = p->last_done ? p->last_done : mono_us();
    double secs = p->first_send ? (double)(end - p->first_send) / 1e6 : 0;
    uint64_t done = p->ok + p->errors;
    /* sent: events written; ok, errors: requests answered; events_ok: events in the 2xx */
    printf("{\"sent\":%" PRIu64 ",\"ok\":%" PRIu64 ",\"errors\":%" PRIu64
           ",\"events_ok\":%" PRIu64 ",\"timed_out\":%s,\"seconds\":%.6f"
           ",\"achieved_rate\":%.3f,\"events_per_s\":%.3f,\"max_lag_ms\":%.3f,",
           p->next * p->o.batch, p->ok, p->errors, p->events_ok, timed_out ? "true" : "false",
           secs, secs > 0 ? (double)done / secs : 0.0,
           secs > 0 ? (double)p->events_ok / secs : 0.0, (double)p->max_lag_us / 1e3);
    print_cpu_json();
    printf("}\n");
    fflush(stdout);
}

static void pub_run(struct pub *p) {
    static struct epoll_event evs[MAX_EVENTS];
    uint64_t deadline = mono_us() + (uint64_t)(p->o.timeout_s * 1e6);
    p->t0 = 0;
    while (p->next < p->units || p->in_flight) {
        int n = epoll_wait(p->ep, evs, MAX_EVENTS, p->t0 ? pub_wait_ms(p, mono_us()) : 10);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        uint64_t now = mono_us();
        for (int k = 0; k < n; k++) pconn_event(p, evs[k].data.u32, now);
        if (!p->t0) {
            /* the schedule starts once every connection is up */
            int up = 1;
            for (uint32_t i = 0; i < p->o.concurrency; i++) up &= !p->pc[i].connecting;
            if (!up) continue;
            p->t0 = now;
        }
        send_due(p, now);
        if (now > deadline) {
            pub_report(p, 1);
            exit(1);
        }
    }
    pub_report(p, 0);
}

/* ================================================================== tokens mode */

/* K answers, each with its own topic and its own keep-alive connection, each writing
 * --tokens tokens at --rate a second: an LLM typing. Token n of answer a is due at
 * t0 + (n*K + a) / (rate*K): the answers' phases are spread over a token period, so the
 * server sees a steady K*rate tokens/s rather than K at once every period.
 *
 * A token's data is "<n+1> <scheduled time>": the time it was due, not the time it was
 * written, so a producer that falls behind (one POST per token waits for the answer to
 * the previous one) counts as latency at the subscriber. With --stream each answer is
 * one chunked NDJSON request to Herald's POST /publish, a chunk per token. */

#define TIMER_TAG (UINT32_MAX - 1)
/* Due tokens are written on a timer that ticks this often: re-arming a timer for every
 * token cost as much as writing it. It adds at most a tick (half on average) to every
 * token's latency, the same for every server. */
#define TOKEN_TICK_US 250

struct tokens_opts {
    const char *host;
    int port;
    int nchan, stream;
    uint32_t answers;
    uint64_t tokens;
    double rate, timeout_s;
};

struct answer {
    int fd;
    uint8_t connecting, awaiting, want_out, done;
    uint64_t due, sent; /* tokens whose time has come; tokens written */
    struct http_head head;
    struct dechunk dc;
    int64_t body_left;
    struct outbuf out;
};

struct tokens {
    struct tokens_opts o;
    struct sockaddr_in dst;
    struct answer *an;
    int ep, timer;
    uint64_t next; /* the next token to fall due over all answers: answer next % K */
    uint64_t ok, errors, reconnects;
    uint64_t failed[600]; /* requests that failed, by status; 0: no answer at all */
    uint32_t connecting, finished;
    uint64_t t0, t0_real, last_done;
    struct histogram lag; /* from each token's scheduled time until it was written */
    char rbuf[READ_BUF];
};

static uint64_t token_due_us(const struct tokens *t, uint32_t a, uint64_t n) {
    double j = (double)n * t->o.answers + a;
    return t->t0 + (uint64_t)(j * 1e6 / (t->o.rate * t->o.answers));
}

static void answer_connect(struct tokens *t, uint32_t i) {
    struct answer *a = &t->an[i];
    a->fd = start_connect(NULL, &t->dst);
    if (a->fd < 0) die("connect to %s:%d failed: %s", t->o.host, t->o.port, strerror(errno));
    a->connecting = 1;
    a->want_out = 1;
    t->connecting++;
    epoll_set(t->ep, EPOLL_CTL_ADD, a->fd, EPOLLOUT, i);
}

static void answer_finish(struct tokens *t, uint32_t i) {
    struct answer *a = &t->an[i];
    if (a->fd >= 0) close(a->fd);
    a->fd = -1;
    a->done = 1;
    t->finished++;
}

/* The connection failed or was closed. The request under way, if any, is an error. One
 * POST per token goes on with the next token on a new connection, as a producer would;
 * a stream that broke loses the rest of its answer. */
static void answer_broken(struct tokens *t, uint32_t i) {
    struct answer *a = &t->an[i];
    if (a->awaiting) {
        t->errors++;
        t->failed[0]++;
    }
    a->awaiting = 0;
    out_clear(&a->out);
    if (t->o.stream || a->sent == t->o.tokens) {
        answer_finish(t, i);
        return;
    }
    close(a->fd);
    t->reconnects++;
    answer_connect(t, i);
}

static void answer_flush(struct tokens *t, uint32_t i) {
    struct answer *a = &t->an[i];
    struct outbuf *o = &a->out;
    while (out_pending(o)) {
        ssize_t n = send(a->fd, o->buf + o->sent, o->len - o->sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        if (n < 0) {
            answer_broken(t, i);
            return;
        }
        o->sent += (size_t)n;
    }
    if (!out_pending(o)) out_clear(o);
    uint8_t want_out = out_pending(o);
    if (want_out != a->want_out) {
        a->want_out = want_out;
        epoll_set(t->ep, EPOLL_CTL_MOD, a->fd, EPOLLIN | (want_out ? EPOLLOUT : 0), i);
    }
}

static void begin_response(struct answer *a) {
    head_reset(&a->head);
    memset(&a->dc, 0, sizeof a->dc);
    a->awaiting = 1;
}

static void write_token(struct tokens *t, uint32_t i, uint64_t now) {
    struct answer *a = &t->an[i];
    const char *host = t->o.host;
    int port = t->o.port;
    uint64_t n = a->sent++, due = token_due_us(t, i, n);
    hist_add(&t->lag, now > due ? now - due : 0);
    char data[64], line[160];
    snprintf(data, sizeof data, "%" PRIu64 " %" PRIu64, n + 1, t->t0_real + (due - t->t0));
    /* "t<a>": the topics that `loadgen sub --path ...t{k}` follows */
    if (t->o.nchan) {
        out_append(&a->out,
                   "POST /pub?id=t%" PRIu32 " HTTP/1.1\r\nHost: %s:%d\r\n"
                   "Content-Type: text/plain\r\nContent-Length: %zu\r\n\r\n%s",
                   i, host, port, strlen(data), data);
        return;
    }
    int len = snprintf(line, sizeof line,
                       "{\"topic\":\"t%" PRIu32 "\",\"event\":\"token\",\"data\":\"%s\"}", i, data);
    if (!t->o.stream) {
        out_append(&a->out,
                   "POST /publish HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n%s",
                   host, port, len, line);
        return;
    }
    if (n == 0)
        out_append(&a->out,
                   "POST /publish HTTP/1.1\r\nHost: %s:%d\r\n"
                   "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
                   host, port);
    out_append(&a->out, "%x\r\n%s\n\r\n", (unsigned)len + 1, line);
    if (a->sent == t->o.tokens) out_append(&a->out, "0\r\n\r\n");
}

/* Writes what is due: one POST at a time, each once the previous one was answered; or,
 * streaming, every due token at once as chunks of the answer's one request. */
static void answer_pump(struct tokens *t, uint32_t i, uint64_t now) {
    struct answer *a = &t->an[i];
    if (a->connecting || a->done || a->sent == a->due) return;
    if (t->o.stream) {
        if (a->sent == 0) begin_response(a);
        while (a->sent < a->due) write_token(t, i, now);
    } else if (!a->awaiting) {
        begin_response(a);
        write_token(t, i, now);
    }
    answer_flush(t, i);
}

static void answer_answered(struct tokens *t, uint32_t i, uint64_t now) {
    struct answer *a = &t->an[i];
    int status = a->head.status;
    if (status >= 200 && status < 300) {
        t->ok++;
    } else {
        t->errors++;
        t->failed[status > 0 && status < 600 ? status : 0]++;
    }
    a->awaiting = 0;
    t->last_done = now;
    if (t->o.stream || a->sent == t->o.tokens) answer_finish(t, i);
    else if (a->head.close) answer_broken(t, i);
    else answer_pump(t, i, now);
}

static void answer_readable(struct tokens *t, uint32_t i, uint64_t now) {
    struct answer *a = &t->an[i];
    ssize_t n = recv(a->fd, t->rbuf, READ_BUF, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0 || !a->awaiting) {
        answer_broken(t, i);
        return;
    }
    size_t used = 0;
    if (!a->head.done) {
        used = head_feed(&a->head, t->rbuf, (size_t)n);
        if (!a->head.done) return;
        a->body_left = a->head.content_length > 0 ? a->head.content_length : 0;
    }
    if (response_body(&a->head, &a->dc, &a->body_left, t->rbuf + used, (size_t)n - used))
        answer_answered(t, i, now);
}

static void answer_event(struct tokens *t, uint32_t i, uint32_t events, uint64_t now) {
    struct answer *a = &t->an[i];
    if (a->fd < 0) return;
    if (a->connecting) {
        if (connect_error(a->fd) != 0)
            die("connect to %s:%d failed: %s", t->o.host, t->o.port,
                strerror(connect_error(a->fd)));
        a->connecting = 0;
        a->want_out = 0;
        t->connecting--;
        epoll_set(t->ep, EPOLL_CTL_MOD, a->fd, EPOLLIN, i);
        answer_pump(t, i, now);
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) answer_readable(t, i, now);
    if (a->fd >= 0 && !a->connecting && (events & EPOLLOUT)) answer_flush(t, i);
}

static void tokens_fall_due(struct tokens *t, uint64_t now) {
    uint64_t total = t->o.tokens * t->o.answers;
    while (t->next < total) {
        uint32_t i = (uint32_t)(t->next % t->o.answers);
        if (token_due_us(t, i, t->next / t->o.answers) > now) return;
        t->next++;
        t->an[i].due++;
        answer_pump(t, i, now);
    }
}

/* A timerfd rather than epoll_wait's timeout, whose milliseconds are too coarse. */
static void tokens_start_ticking(struct tokens *t) {
    struct timespec tick = {.tv_nsec = TOKEN_TICK_US * 1000};
    struct itimerspec every = {.it_value = tick, .it_interval = tick};
    if (timerfd_settime(t->timer, 0, &every, NULL) < 0)
        die("timerfd_settime: %s", strerror(errno));
}

static void tokens_report(const struct tokens *t, int timed_out) {
    uint64_t sent = 0;
    for (uint32_t i = 0; i < t->o.answers; i++) sent += t->an[i].sent;
    double secs = t->last_done > t->t0 && t->t0 ? (double)(t->last_done - t->t0) / 1e6 : 0;
    printf("{\"answers\":%" PRIu32 ",\"tokens\":%" PRIu64 ",\"sent\":%" PRIu64
           ",\"ok\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"reconnects\":%" PRIu64
           ",\"timed_out\":%s,\"seconds\":%.6f,\"lag_p50_ms\":%.3f,\"lag_p99_ms\":%.3f"
           ",\"max_lag_ms\":%.3f,",
           t->o.answers, t->o.tokens, sent, t->ok, t->errors, t->reconnects,
           timed_out ? "true" : "false", secs, (double)hist_percentile(&t->lag, 0.50) / 1e3,
           (double)hist_percentile(&t->lag, 0.99) / 1e3, (double)t->lag.max / 1e3);
    printf("\"failed\":{");
    const char *sep = "";
    for (int status = 0; status < 600; status++) {
        if (!t->failed[status]) continue;
        printf("%s\"%d\":%" PRIu64, sep, status, t->failed[status]);
        sep = ",";
    }
    printf("},");
    print_cpu_json();
    printf("}\n");
    fflush(stdout);
}

static void tokens_run(struct tokens *t) {
    static struct epoll_event evs[MAX_EVENTS];
    uint64_t deadline = mono_us() + (uint64_t)(t->o.timeout_s * 1e6);
    while (t->finished < t->o.answers) {
        int n = epoll_wait(t->ep, evs, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        uint64_t now = mono_us();
        if (now > deadline) {
            tokens_report(t, 1);
            exit(1);
        }
        for (int k = 0; k < n; k++) {
            if (evs[k].data.u32 == TIMER_TAG) {
                uint64_t expirations;
                if (read(t->timer, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                    die("timerfd read: %s", strerror(errno));
            } else {
                answer_event(t, evs[k].data.u32, evs[k].events, now);
            }
        }
        if (!t->t0) {
            /* the schedule starts once every connection is up */
            if (t->connecting) continue;
            /* read together: a token's scheduled time moves to the subscribers' clock */
            t->t0 = mono_us();
            t->t0_real = real_us();
            tokens_start_ticking(t);
        }
        tokens_fall_due(t, mono_us());
    }
    tokens_report(t, 0);
}

/* ================================================================== command line */

static void usage(void) {
    fputs("usage:\n"
          "  loadgen sub --port P --path TEMPLATE --conns N [--host 127.0.0.1] [--topics K]\n"
          "              [--start-seq S] [--expect E] [--last-event-id ID] [--reconnect]\n"
          "              [--connect-rate R] [--max-pending M] [--connect-timeout SECS]\n"
          "              [--print-ids] [--src-salt X]\n"
          "    TEMPLATE's {k} becomes i %% K for connection i. Prints READY <connected> <failed>\n"
          "    once every connection got its response head or failed; then reads commands\n"
          "    on stdin: mark | report | quit.\n"
          "  loadgen pub --port P --proto herald|nchan --count N [--host 127.0.0.1]\n"
          "              [--topics K] [--rate R] [--concurrency C] [--topic-prefix t]\n"
          "              [--start-seq S] [--timeout SECS] [--batch B] [--stream]\n"
          "    N events (a multiple of B), R a second (0: back to back). Herald only: --batch\n"
          "    sends B events a request as a JSON array; --stream sends each connection's\n"
          "    events as one chunked NDJSON request, B lines a chunk.\n"
          "  loadgen tokens --port P --proto herald|nchan --answers K --tokens N [--rate R]\n"
          "              [--stream] [--host 127.0.0.1] [--timeout SECS]\n"
          "    Answer a publishes N tokens to topic t<a> at R a second (default 25); --stream\n"
          "    sends each answer as one chunked NDJSON request (Herald only).\n",
          stderr);
    exit(2);
}

struct argv_iter {
    int argc, i;
    char **argv;
};

static const char *arg_value(struct argv_iter *it) {
    if (it->i + 1 >= it->argc) die("%s needs a value", it->argv[it->i]);
    return it->argv[++it->i];
}

static uint64_t arg_u64(struct argv_iter *it) {
    const char *v = arg_value(it);
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    if (*end || end == v) die("%s: not a number: %s", it->argv[it->i - 1], v);
    return x;
}

static double arg_double(struct argv_iter *it) {
    const char *v = arg_value(it);
    char *end;
    double x = strtod(v, &end);
    if (*end || end == v) die("%s: not a number: %s", it->argv[it->i - 1], v);
    return x;
}

static void split_template(struct sub_opts *o, const char *tpl) {
    const char *at = strstr(tpl, "{k}");
    o->templated = at != NULL;
    if (!at) {
        o->path_prefix = tpl;
        o->path_suffix = "";
        return;
    }
    o->path_prefix = strndup(tpl, (size_t)(at - tpl));
    o->path_suffix = at + 3;
}

static void parse_sub(int argc, char **argv, struct sub_opts *o) {
    *o = (struct sub_opts){.host = "127.0.0.1", .topics = 1, .start_seq = 1,
                           .max_pending = 1000, .connect_timeout_s = 30,
                           .src_salt = (uint32_t)getpid()};
    const char *path = NULL;
    for (struct argv_iter it = {argc, 2, argv}; it.i < argc; it.i++) {
        const char *a = argv[it.i];
        if (!strcmp(a, "--host")) o->host = arg_value(&it);
        else if (!strcmp(a, "--port")) o->port = (int)arg_u64(&it);
        else if (!strcmp(a, "--path")) path = arg_value(&it);
        else if (!strcmp(a, "--conns")) o->conns = (uint32_t)arg_u64(&it);
        else if (!strcmp(a, "--topics")) o->topics = (uint32_t)arg_u64(&it);
        else if (!strcmp(a, "--start-seq")) o->start_seq = arg_u64(&it);
        else if (!strcmp(a, "--expect")) o->expect = arg_u64(&it);
        else if (!strcmp(a, "--last-event-id")) o->last_event_id = arg_value(&it);
        else if (!strcmp(a, "--reconnect")) o->reconnect = 1;
        else if (!strcmp(a, "--print-ids")) o->print_ids = 1;
        else if (!strcmp(a, "--connect-rate")) o->connect_rate = arg_double(&it);
        else if (!strcmp(a, "--max-pending")) o->max_pending = (uint32_t)arg_u64(&it);
        else if (!strcmp(a, "--connect-timeout")) o->connect_timeout_s = arg_double(&it);
        else if (!strcmp(a, "--src-salt")) o->src_salt = (uint32_t)arg_u64(&it);
        else usage();
    }
    if (!o->port || !path || !o->conns || !o->topics || !o->max_pending) usage();
    if (o->start_seq == 0) die("--start-seq starts at 1");
    if (o->last_event_id && strlen(o->last_event_id) >= ID_CAP) die("--last-event-id too long");
    split_template(o, path);
}

static void parse_pub(int argc, char **argv, struct pub_opts *o) {
    *o = (struct pub_opts){.host = "127.0.0.1", .topics = 1, .concurrency = 1, .batch = 1,
                           .start_seq = 1, .topic_prefix = "t", .timeout_s = 600};
    const char *proto = NULL;
    for (struct argv_iter it = {argc, 2, argv}; it.i < argc; it.i++) {
        const char *a = argv[it.i];
        if (!strcmp(a, "--host")) o->host = arg_value(&it);
        else if (!strcmp(a, "--port")) o->port = (int)arg_u64(&it);
        else if (!strcmp(a, "--proto")) proto = arg_value(&it);
        else if (!strcmp(a, "--topics")) o->topics = (uint32_t)arg_u64(&it);
        else if (!strcmp(a, "--count")) o->count = arg_u64(&it);
        else if (!strcmp(a, "--rate")) o->rate = arg_double(&it);
        else if (!strcmp(a, "--concurrency")) o->concurrency = (uint32_t)arg_u64(&it);
        else if (!strcmp(a, "--topic-prefix")) o->topic_prefix = arg_value(&it);
        else if (!strcmp(a, "--start-seq")) o->start_seq = arg_u64(&it);
        else if (!strcmp(a, "--timeout")) o->timeout_s = arg_double(&it);
        else if (!strcmp(a, "--batch")) o->batch = (uint32_t)arg_u64(&it);
        else if (!strcmp(a, "--stream")) o->stream = 1;
        else usage();
    }
    if (!o->port || !proto || !o->topics || !o->concurrency || !o->batch) usage();
    if (strcmp(proto, "herald") && strcmp(proto, "nchan")) die("--proto is herald or nchan");
    o->nchan = strcmp(proto, "nchan") == 0;
    if (strlen(o->topic_prefix) > 100) die("--topic-prefix too long");
    if (o->count % o->batch) die("--count must be a multiple of --batch");
    if (o->nchan && (o->batch > 1 || o->stream))
        die("--batch and --stream are Herald's; Nchan takes one message a request");
}

static void parse_tokens(int argc, char **argv, struct tokens_opts *o) {
    *o = (struct tokens_opts){.host = "127.0.0.1", .rate = 25, .timeout_s = 600};
    const char *proto = NULL;
    for (struct argv_iter it = {argc, 2, argv}; it.i < argc; it.i++) {
        const char *a = argv[it.i];
        if (!strcmp(a, "--host")) o->host = arg_value(&it);
        else if (!strcmp(a, "--port")) o->port = (int)arg_u64(&it);
        else if (!strcmp(a, "--proto")) proto = arg_value(&it);
        else if (!strcmp(a, "--answers")) o->answers = (uint32_t)arg_u64(&it);
        else if (!strcmp(a, "--tokens")) o->tokens = arg_u64(&it);
        else if (!strcmp(a, "--rate")) o->rate = arg_double(&it);
        else if (!strcmp(a, "--stream")) o->stream = 1;
        else if (!strcmp(a, "--timeout")) o->timeout_s = arg_double(&it);
        else usage();
    }
    if (!o->port || !proto || !o->answers || !o->tokens || !(o->rate > 0)) usage();
    if (strcmp(proto, "herald") && strcmp(proto, "nchan")) die("--proto is herald or nchan");
    o->nchan = strcmp(proto, "nchan") == 0;
    if (o->nchan && o->stream) die("--stream is Herald's NDJSON publish; Nchan has none");
}

static void sub_main(int argc, char **argv) {
    struct sub *s = calloc(1, sizeof *s);
    if (!s) die("out of memory");
    parse_sub(argc, argv, &s->o);
    s->dst = ipv4_address(s->o.host, s->o.port);
    s->conns = calloc(s->o.conns, sizeof *s->conns);
    s->queue = calloc(s->o.conns, sizeof *s->queue);
    if (!s->conns || !s->queue) die("out of memory");
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    epoll_set(s->ep, EPOLL_CTL_ADD, STDIN_FILENO, EPOLLIN, STDIN_TAG);
    s->start_us = s->mark_us = mono_us();
    for (uint32_t i = 0; i < s->o.conns; i++) {
        struct conn *c = &s->conns[i];
        c->fd = -1;
        c->last_seq = s->o.start_seq - 1;
        if (s->o.last_event_id) strcpy(c->last_id, s->o.last_event_id);
        queue_push(s, i, 0);
    }
    sub_loop(s);
}

static void pub_main(int argc, char **argv) {
    struct pub *p = calloc(1, sizeof *p);
    if (!p) die("out of memory");
    parse_pub(argc, argv, &p->o);
    p->dst = ipv4_address(p->o.host, p->o.port);
    p->pc = calloc(p->o.concurrency, sizeof *p->pc);
    if (!p->pc) die("out of memory");
    p->units = p->o.count / p->o.batch;
    for (uint64_t u = 0; u < p->units; u++) p->pc[conn_of(p, u)].units_left++;
    p->ep = epoll_create1(EPOLL_CLOEXEC);
    for (uint32_t i = 0; i < p->o.concurrency; i++) pconn_open(p, i);
    pub_run(p);
}

static void tokens_main(int argc, char **argv) {
    struct tokens *t = calloc(1, sizeof *t);
    if (!t) die("out of memory");
    parse_tokens(argc, argv, &t->o);
    t->dst = ipv4_address(t->o.host, t->o.port);
    t->an = calloc(t->o.answers, sizeof *t->an);
    if (!t->an) die("out of memory");
    t->ep = epoll_create1(EPOLL_CLOEXEC);
    t->timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (t->timer < 0) die("timerfd_create: %s", strerror(errno));
    epoll_set(t->ep, EPOLL_CTL_ADD, t->timer, EPOLLIN, TIMER_TAG);
    for (uint32_t i = 0; i < t->o.answers; i++) {
        answer_connect(t, i);
    }
    tokens_run(t);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    signal(SIGPIPE, SIG_IGN);
    raise_nofile_limit();
    setvbuf(stdout, NULL, _IOFBF, 1 << 16); /* flushed once per loop turn */
    if (!strcmp(argv[1], "sub")) sub_main(argc, argv);
    else if (!strcmp(argv[1], "pub")) pub_main(argc, argv);
    else if (!strcmp(argv[1], "tokens")) tokens_main(argc, argv);
    else usage();
    return 0;
}
