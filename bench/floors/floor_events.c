/* The least a module must do on Redis 7.0 to hear every overwrite of a
 * tagged key: a subscription to every keyspace event and a command filter,
 * both empty. Loaded beside nothing else, it measures the server's own cost
 * of delivering them (the floor under the plain-`SET` tax). */
#include "redismodule.h"

static int on_event(RedisModuleCtx *ctx, int type, const char *event, RedisModuleString *key) {
    (void)ctx; (void)type; (void)event; (void)key;
    return 0;
}

static void on_filter(RedisModuleCommandFilterCtx *f) { (void)f; }

int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv; (void)argc;
    if (RedisModule_Init(ctx, "floorevents", 1, REDISMODULE_APIVER_1) == REDISMODULE_ERR)
        return REDISMODULE_ERR;
    RedisModule_SubscribeToKeyspaceEvents(ctx, REDISMODULE_NOTIFY_ALL, on_event);
    RedisModule_RegisterCommandFilter(ctx, on_filter, 0);
    return REDISMODULE_OK;
}
