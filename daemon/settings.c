/* Applying a config to the running daemon: from config.set and from a
 * SIGHUP reload, both through the one table (config/). The heap's keys go
 * to the control segment (owner_publish_config bumps config_gen); the
 * daemon's own keys take effect here. */
#include <errno.h>
#include <string.h>

#include "daemon/daemon.h"

void settings_apply(struct daemon *d, const struct config *next, const char *why)
{
    bool heap = false, trim = false, timers = false, decay = false;
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
        if (strncmp(config_key_name(k), "decay_", 6) == 0)
            decay = true;
    }
    d->cfg = *next;
    if (!changed)
        return;
    log_set_level(d->cfg.log_level);
    if (heap)
        owner_publish_config(d);
    if (trim)
        work_trim_timer_update(d);
    if (timers)
        conn_timers_reconfigure(d);
    if (decay)
        decay_reconfigure(d);
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
    (void) snprintf(why, sizeof(why), "reload of %s", path);
    settings_apply(d, &next, why);
    log_info("config reloaded from %s", path);
}
