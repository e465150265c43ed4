/* Declarations shared between the files of config/ only. */
#ifndef CONFIG_INTERNAL_H
#define CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "config/config.h"

/* config_set_json() for a key already looked up; cross_check false skips
 * config_check() (a file checks the rules between keys once at the end). */
int config_set_one(struct config *c,
                   const struct config_key *k,
                   const cJSON *value,
                   bool cross_check,
                   char *err,
                   size_t errlen);

#endif
