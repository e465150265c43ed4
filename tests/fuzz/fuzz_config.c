/* libFuzzer target: the config file loader (config/load.c) and, through it,
 * every key's parser and validator in the table (config/config.c).
 *
 * The input is a config file's text; config_parse_text() gets it with an
 * explicit length from a NUL-terminated copy, as config_load_file() does.
 * What is checked:
 *   - a refusal has a negative code and a non-empty UTF-8 message, and the
 *     reply the daemon would send with it (config.set's bad_value and its
 *     log line quote such messages) is valid JSON by fuzz_check_reply();
 *   - an accepted file gives a config that passes config_check(), whose
 *     reply (every key, as config.get sends it) is valid, and that reads
 *     back from that reply's text to the very same config (the table's
 *     parse and format agree). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "tests/fuzz/fuzz_check.h"

const char fuzz_target_name[] = "config";

/* The reply as the daemon builds it (proto.c error_object, op_admin.c
 * reply_config), printed by cJSON and checked as a line. */
static void check_as_reply(cJSON *root)
{
    char *line;

    if (!root)
        abort();
    line = cJSON_PrintUnformatted(root);
    if (!line)
        abort();
    cJSON_Delete(fuzz_check_reply(line, strlen(line)));
    cJSON_free(line);
    cJSON_Delete(root);
}

static void check_refusal(int r, const char *err, const char *text, size_t len)
{
    cJSON *root = cJSON_CreateObject(), *e;

    if (r >= 0 || !err[0])
        fuzz_fail("a refused config has no negative code or no message", text, len);
    fuzz_check_utf8("a config error message", err, strlen(err));
    if (!root || !cJSON_AddFalseToObject(root, "ok") ||
        !(e = cJSON_AddObjectToObject(root, "error")) ||
        !cJSON_AddStringToObject(e, "code", "bad_value") ||
        !cJSON_AddStringToObject(e, "message", err))
        abort();
    check_as_reply(root);
}

static void check_accepted(const struct config *c, const char *text, size_t len)
{
    char err[CONFIG_ERR_MAX] = "";
    cJSON *root = cJSON_CreateObject(), *obj;
    struct config back;
    char *printed;
    int r;

    if (config_check(c, err, sizeof(err)) < 0)
        fuzz_fail("an accepted config fails config_check()", text, len);
    if (!root || !cJSON_AddTrueToObject(root, "ok") ||
        !(obj = cJSON_AddObjectToObject(root, "config")) || config_add_to_object(c, NULL, obj) < 0)
        abort();
    printed = cJSON_PrintUnformatted(obj);
    if (!printed)
        abort();
    r = config_parse_text(printed, strlen(printed), "printed", &back, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "fuzz: reading back: %s\n", err);
        fuzz_fail("an accepted config, printed, does not read back", printed, strlen(printed));
    }
    for (size_t i = 0; i < config_key_count(); i++)
        if (!config_key_equal(config_key_at(i), c, &back)) {
            fprintf(stderr, "fuzz: key %s differs\n", config_key_name(config_key_at(i)));
            fuzz_fail("an accepted config reads back different", printed, strlen(printed));
        }
    cJSON_free(printed);
    check_as_reply(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[CONFIG_ERR_MAX] = "";
    struct config c;
    char *text;
    int r;

    if (size > CONFIG_MAX_FILE)
        return 0; /* config_load_file refuses these before parsing */
    text = malloc(size + 1);
    if (!text)
        abort();
    memcpy(text, data, size);
    text[size] = 0;
    r = config_parse_text(text, size, "shmheapd.json", &c, err, sizeof(err));
    if (r < 0)
        check_refusal(r, err, text, size);
    else
        check_accepted(&c, text, size);
    free(text);
    return 0;
}
