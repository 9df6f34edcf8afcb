/* FLOOR.SET key value tag1 tag2: what a tagged write costs a module on
 * Redis 7.0 at the least — the value and its expiry through the key API,
 * the key added to two tag sets through command calls (7.0 has no set API
 * for modules), all replicated — with no index, no hygiene (old tags are
 * left in place) and no argument checks. Not a product: a floor to measure
 * `TAG.SET` against. */
#include "redismodule.h"

static int floor_set(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 5) return RedisModule_WrongArity(ctx);
    RedisModuleKey *k = RedisModule_OpenKey(ctx, argv[1], REDISMODULE_WRITE);
    RedisModule_StringSet(k, argv[2]);
    RedisModule_SetExpire(k, 600000);
    RedisModule_CloseKey(k);
    RedisModule_Replicate(ctx, "SET", "sscc", argv[1], argv[2], "PX", "600000");
    for (int i = 3; i < 5; i++) {
        RedisModuleCallReply *r = RedisModule_Call(ctx, "SADD", "!ss", argv[i], argv[1]);
        if (r) RedisModule_FreeCallReply(r);
    }
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv; (void)argc;
    if (RedisModule_Init(ctx, "floorset", 1, REDISMODULE_APIVER_1) == REDISMODULE_ERR)
        return REDISMODULE_ERR;
    return RedisModule_CreateCommand(ctx, "floor.set", floor_set, "write deny-oom", 1, 1, 1);
}
