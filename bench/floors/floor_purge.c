/* FLOOR.PURGE set: what purging a tag costs a module on Redis 7.0 at the
 * least — each member of the set read through the key API and deleted
 * through it, then the set, the command replicated as it is — with no index,
 * no ACL or type checks, no events and no slices. Not a product: a floor to
 * measure `TAG.PURGE` against. */
#include "redismodule.h"

typedef struct {
    RedisModuleCtx *ctx;
    long long deleted;
} Purge;

static void each_member(RedisModuleKey *set, RedisModuleString *member, RedisModuleString *value,
                        void *privdata) {
    (void)set; (void)value;
    Purge *p = privdata;
    RedisModuleKey *k = RedisModule_OpenKey(p->ctx, member, REDISMODULE_WRITE);
    if (RedisModule_KeyType(k) != REDISMODULE_KEYTYPE_EMPTY) {
        RedisModule_DeleteKey(k);
        p->deleted++;
    }
    RedisModule_CloseKey(k);
}

static int floor_purge(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 2) return RedisModule_WrongArity(ctx);
    Purge p = {ctx, 0};
    RedisModuleKey *set = RedisModule_OpenKey(ctx, argv[1], REDISMODULE_READ | REDISMODULE_WRITE);
    if (RedisModule_KeyType(set) == REDISMODULE_KEYTYPE_SET) {
        RedisModuleScanCursor *c = RedisModule_ScanCursorCreate();
        while (RedisModule_ScanKey(set, c, each_member, &p)) {
        }
        RedisModule_ScanCursorDestroy(c);
        RedisModule_DeleteKey(set);
    }
    RedisModule_CloseKey(set);
    RedisModule_ReplicateVerbatim(ctx);
    return RedisModule_ReplyWithLongLong(ctx, p.deleted);
}

int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv; (void)argc;
    if (RedisModule_Init(ctx, "floorpurge", 1, REDISMODULE_APIVER_1) == REDISMODULE_ERR)
        return REDISMODULE_ERR;
    return RedisModule_CreateCommand(ctx, "floor.purge", floor_purge, "write", 1, 1, 1);
}
