/* shmheapctl's command line: options may come before or after the command
 * words (as with getopt's permutation); "--" ends the options, so that a
 * config value may start with a dash. */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl.h"

void args_usage(FILE *f)
{
    fputs("Usage: shmheapctl [--socket PATH] COMMAND [OPTIONS]\n"
          "\n"
          "Commands:\n"
          "  stats [--json|--prometheus]  heap figures: bytes, counts, size classes, segments\n"
          "  trim [--wait MS]             ask the daemon to give unused memory back\n"
          "                               (MS: how long to wait for busy threads, 0..60000)\n"
          "  config get [KEY]             show one configuration key, or all of them\n"
          "  config set KEY VALUE         change a key; VALUE is read as JSON if it parses\n"
          "                               (number, string, array), else as a string\n"
          "  clients                      attached client processes\n"
          "  segments                     heap segments and their page sizes\n"
          "  verify                       check the heap's invariants (exit 1 if broken)\n"
          "\n"
          "Options:\n"
          "  -s, --socket PATH  the daemon's control socket (default: $SHMHEAP_SOCKET, else\n"
          "                     /run/shmheap/shmheap.sock as root, else\n"
          "                     $XDG_RUNTIME_DIR/shmheap.sock or /tmp/shmheap-$UID.sock)\n"
          "      --json         print the daemon's reply as is (one JSON line); any command\n"
          "      --prometheus   stats in the Prometheus text exposition format\n"
          "  -h, --help         show this help\n"
          "  -V, --version      show the version\n"
          "\n"
          "Exit status: 0 success, 1 the daemon refused (its message on stderr), 2 usage,\n"
          "3 cannot connect to the daemon.\n",
          f);
}

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("shmheapctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n\n", stderr);
    args_usage(stderr);
    return -1;
}

/* Matches "--name" (the value in the next argument) and "--name=value". */
static bool opt_with_value(char **argv,
                           int argc,
                           int *i,
                           const char *name,
                           const char *shrt,
                           const char **ret,
                           bool *ret_missing)
{
    size_t n = strlen(name);
    const char *a = argv[*i];

    *ret_missing = false;
    if (strncmp(a, name, n) == 0 && a[n] == '=') {
        *ret = a + n + 1;
        return true;
    }
    if (strcmp(a, name) != 0 && !(shrt && strcmp(a, shrt) == 0))
        return false;
    if (*i + 1 >= argc) {
        *ret_missing = true;
        return true;
    }
    *ret = argv[++*i];
    return true;
}

static int parse_ms(const char *s, unsigned *ret)
{
    char *end;
    unsigned long v;

    if (!*s || *s == '-' || *s == '+')
        return -1;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || *end || v > 60000)
        return -1;
    *ret = (unsigned) v;
    return 0;
}

static const struct {
    const char *word;
    enum ctl_command cmd;
} commands[] = {
        {"stats", CMD_STATS},       {"trim", CMD_TRIM},     {"clients", CMD_CLIENTS},
        {"segments", CMD_SEGMENTS}, {"verify", CMD_VERIFY},
};

/* The command from the positional words pos[0 .. npos - 1] (npos > 0). */
static int parse_command(const char *const *pos, int npos, struct ctl_args *ret)
{
    for (size_t k = 0; k < sizeof(commands) / sizeof(commands[0]); k++)
        if (strcmp(pos[0], commands[k].word) == 0)
            ret->command = commands[k].cmd;
    if (ret->command != CMD_NONE) {
        if (npos > 1)
            return usage_error("'%s' takes no argument '%s'", pos[0], pos[1]);
    } else if (strcmp(pos[0], "config") == 0) {
        if (npos < 2)
            return usage_error("'config' needs 'get' or 'set'");
        if (strcmp(pos[1], "get") == 0) {
            if (npos > 3)
                return usage_error("'config get' takes at most one KEY");
            ret->command = CMD_CONFIG_GET;
            ret->key = npos == 3 ? pos[2] : NULL;
        } else if (strcmp(pos[1], "set") == 0) {
            if (npos != 4)
                return usage_error("'config set' needs KEY and VALUE");
            ret->command = CMD_CONFIG_SET;
            ret->key = pos[2];
            ret->value = pos[3];
        } else {
            return usage_error("unknown config command '%s' (get or set)", pos[1]);
        }
    } else {
        return usage_error("unknown command '%s'", pos[0]);
    }
    return 0;
}

/* The checks of the options that depend on the command, then the output
 * format. */
static int apply_options(bool json, bool prom, const char *wait, struct ctl_args *ret)
{
    if (json && prom)
        return usage_error("--json and --prometheus exclude each other");
    if (prom && ret->command != CMD_STATS)
        return usage_error("--prometheus is for 'stats' only");
    if (wait) {
        if (ret->command != CMD_TRIM)
            return usage_error("--wait is for 'trim' only");
        if (parse_ms(wait, &ret->wait_ms) < 0)
            return usage_error("--wait needs milliseconds from 0 to 60000, got '%s'", wait);
        ret->has_wait = true;
    }
    ret->format = json ? FMT_JSON : prom ? FMT_PROMETHEUS : FMT_TABLE;
    return 0;
}

int args_parse(int argc, char **argv, struct ctl_args *ret)
{
    const char *pos[8];
    bool only_positional = false, json = false, prom = false, missing;
    const char *wait = NULL, *v;
    int npos = 0, r;

    memset(ret, 0, sizeof(*ret));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (only_positional || a[0] != '-' || a[1] == 0 ||
            (a[1] >= '0' && a[1] <= '9')) { /* "-", or a negative number */
            if (npos == (int) (sizeof(pos) / sizeof(pos[0])))
                return usage_error("too many arguments");
            pos[npos++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_positional = true;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            ret->help = true;
        } else if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
            ret->version = true;
        } else if (strcmp(a, "--json") == 0) {
            json = true;
        } else if (strcmp(a, "--prometheus") == 0) {
            prom = true;
        } else if (opt_with_value(argv, argc, &i, "--socket", "-s", &v, &missing)) {
            if (missing || !*v)
                return usage_error("--socket needs a path");
            ret->socket_path = v;
        } else if (opt_with_value(argv, argc, &i, "--wait", NULL, &v, &missing)) {
            if (missing)
                return usage_error("--wait needs a number of milliseconds");
            wait = v;
        } else {
            return usage_error("unknown option '%s'", a);
        }
    }
    if (ret->help || ret->version)
        return 0;
    if (npos == 0)
        return usage_error("no command given");
    r = parse_command(pos, npos, ret);
    if (r != 0)
        return r;
    return apply_options(json, prom, wait, ret);
}
