/*
 * modules.h - compiled-in handler modules. To add one: write
 * handlers/<name>.c with a `int bg_<name>_register(char *err, size_t
 * errlen)` that calls bg_handlers_register, declare it here, and list it
 * in handlers/registry.c's `modules`. See docs/handlers.md.
 */
#ifndef BG_MODULES_H
#define BG_MODULES_H

#include <stddef.h>

int bg_builtin_register(char *err, size_t errlen);
int bg_example_register(char *err, size_t errlen);
/* Presence's client events (server/presence.c: presence is the bus's
 * table, so its module lives with the server). */
int bg_presence_register(char *err, size_t errlen);

#endif
