/* Applying a config to the running daemon: from config.set and from a
 * SIGHUP reload, both through the one table (config/). The heap's keys go
 * to the control segment (owner_publish_config bumps config_gen); the
 * daemon's own keys take effect here. */
#include <errno.h>
#include <string.h>

#include "daemon/daemon.h"

int settings_apply(
        struct daemon *d, const struct config *next, const char *why, char *err, size_t errlen)
{
    bool heap = false, trim = false, timers = false, metrics = false, decay = false;
    struct config old = d->cfg;
    unsigned changed = 0;

    for (size_t i = 0; i < config_key_count(); i++) {
        const struct config_key *k = config_key_at(i);
        char a[128], b[128];

        if (config_key_equal(k, &old, next))
            continue;
        changed++;
        log_info("config: %s changed from %s to %s (%s)", config_key_name(k),
                 config_format_text(&old, k, a, sizeof(a)),
                 config_format_text(next, k, b, sizeof(b)), why);
        if (config_key_scope(k) == CONFIG_SCOPE_HEAP)
            heap = true;
        if (strcmp(config_key_name(k), "trim_interval_ms") == 0)
            trim = true;
        if (strstr(config_key_name(k), "timeout_ms"))
            timers = true;
        if (strcmp(config_key_name(k), "metrics_listen") == 0)
            metrics = true;
        if (strcmp(config_key_name(k), "state_dir") == 0)
            log_notice("config: state_dir is read at start: this daemon keeps the heap where it "
                       "is%s%s; the new value applies at the next start",
                       d->state_dir_fd >= 0 ? ", in " : "",
                       d->state_dir_fd >= 0 ? d->state_dir : "");
        if (strncmp(config_key_name(k), "decay_", 6) == 0)
            decay = true;
    }
    d->cfg = *next;
    if (!changed)
        return 0;
    log_set_level(d->cfg.log_level);
    if (heap)
        owner_publish_config(d);
    if (trim)
        work_trim_timer_update(d);
    if (timers)
        conn_timers_reconfigure(d);
    if (decay)
        decay_reconfigure(d);
    if (metrics) {
        int r = metrics_apply(d, err, errlen);

        if (r < 0) {
            /* The config says what is served: the old address, or off. */
            (void) snprintf(d->cfg.metrics_listen, sizeof(d->cfg.metrics_listen), "%s",
                            metrics_address(d));
            log_error("config: %s; metrics_listen stays \"%s\"", err, d->cfg.metrics_listen);
            return r;
        }
    }
    return 0;
}

void settings_reload(struct daemon *d)
{
    const char *path = d->config_path ? d->config_path : CONFIG_DEFAULT_PATH;
    char err[CONFIG_ERR_MAX], why[CONFIG_ERR_MAX + 32];
    struct config next;
    int r;

    r = config_load_file(path, d->config_path != NULL, &next, err, sizeof(err));
    if (r < 0) {
        log_error("config reload failed, keeping the running config: %s", err);
        return;
    }
    /* --metrics-listen wins over the file, at start and on reload. */
    if (d->metrics_listen_arg)
        (void) snprintf(next.metrics_listen, sizeof(next.metrics_listen), "%s",
                        d->metrics_listen_arg);
    (void) snprintf(why, sizeof(why), "reload of %s", path);
    if (settings_apply(d, &next, why, err, sizeof(err)) < 0)
        log_error("config reloaded from %s, except metrics_listen", path);
    else
        log_info("config reloaded from %s", path);
}
