/* The least a module must do on Redis 7.0 to hear every overwrite of a
 * tagged key: a subscription to every keyspace event and a command filter,
 * both empty. Loaded beside nothing else, it measures the server's own cost
 * of delivering them (the floor under the plain-`SET` tax). With the load
 * argument `atomic` it also declares that it handles Valkey 9's atomic slot
 * migration (which the server refuses while a module has not), and does
 * nothing about it: the floor under a resharding by `CLUSTER MIGRATESLOTS`. */
#include <string.h>
#include "redismodule.h"

static int on_event(RedisModuleCtx *ctx, int type, const char *event, RedisModuleString *key) {
    (void)ctx; (void)type; (void)event; (void)key;
    return 0;
}

static void on_filter(RedisModuleCommandFilterCtx *f) { (void)f; }

int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (RedisModule_Init(ctx, "floorevents", 1, REDISMODULE_APIVER_1) == REDISMODULE_ERR)
        return REDISMODULE_ERR;
    size_t len;
    if (argc == 1 && strcmp(RedisModule_StringPtrLen(argv[0], &len), "atomic") == 0)
        RedisModule_SetModuleOptions(ctx, 1 << 5); /* VALKEYMODULE_OPTIONS_HANDLE_ATOMIC_SLOT_MIGRATION */
    RedisModule_SubscribeToKeyspaceEvents(ctx, REDISMODULE_NOTIFY_ALL, on_event);
    RedisModule_RegisterCommandFilter(ctx, on_filter, 0);
    return REDISMODULE_OK;
}
