//! The caller's ACL, as the server would apply it: the user a command runs
//! for (or a rule's owner), and whether it may read, write or delete a key
//! as the plain command for that access would be allowed.

use super::keys::{call, from_master, Mode, Reply};
use crate::engine::error::{Error, Result};
use crate::engine::plan::Access;
use redis_module::{raw, Context, RedisString};
use std::cell::{Cell, RefCell};

thread_local! {
    /// Counts the commands seen that may have changed an ACL.
    static ACL_EPOCH: Cell<u64> = const { Cell::new(0) };
    /// Users known to have every key and command (`Caller::all_keys`), per
    /// ACL epoch.
    static ALL_KEYS: RefCell<Vec<(u64, Vec<u8>, bool)>> = const { RefCell::new(Vec::new()) };
}

/// A user whose ACL a command's keys are checked against: the caller of a
/// command, or the owner of a rule.
pub struct Caller {
    /// Looked up when a key is first checked (most callers have every key
    /// and never need it). `None`: a user that does not exist (deleted
    /// while connected, or a rule's owner since removed): it may touch
    /// nothing.
    user: std::cell::OnceCell<Option<std::ptr::NonNull<raw::RedisModuleUser>>>,
    /// The user's name, to ask the server about the user as a whole.
    name: Option<RedisString>,
    /// Called inside `MULTI`/`EXEC` (see `all_keys`); `None`: not known
    /// when the Caller was made (a user by name).
    in_multi: Option<bool>,
}

impl Caller {
    /// The calling user. `None` for the replication link, the AOF loader
    /// and other contexts without a user, which Redis does not restrict
    /// either (and asking for their user crashes Redis 7.0).
    pub fn of(ctx: &Context) -> Option<Caller> {
        let f = ctx.get_flags();
        if f.intersects(
            redis_module::ContextFlags::REPLICATED | redis_module::ContextFlags::LOADING,
        ) {
            return None;
        }
        // SAFETY: a module API call with the running context; the name
        // returned is owned by the Caller.
        unsafe {
            let name = raw::RedisModule_GetCurrentUserName?(ctx.ctx);
            if name.is_null() {
                return None;
            }
            Some(Caller {
                user: std::cell::OnceCell::new(),
                name: Some(RedisString::from_redis_module_string(ctx.ctx, name)),
                in_multi: Some(f.intersects(redis_module::ContextFlags::MULTI)),
            })
        }
    }

    /// The user called `name`, as it is now.
    pub fn named(name: &[u8]) -> Caller {
        Caller {
            user: std::cell::OnceCell::new(),
            name: Some(RedisString::create_from_slice(std::ptr::null_mut(), name)),
            in_multi: None,
        }
    }

    /// The server's user, looked up by name once per Caller (as it is at
    /// the first check of a command, which runs without yielding).
    fn user(&self) -> Option<std::ptr::NonNull<raw::RedisModuleUser>> {
        *self.user.get_or_init(|| {
            let name = self.name.as_ref()?;
            // SAFETY: `name` is a live string for the call; the returned
            // user is owned by this Caller and freed in Drop.
            unsafe {
                raw::RedisModule_GetModuleUserFromUserName
                    .and_then(|f| std::ptr::NonNull::new(f(name.inner)))
            }
        })
    }

    /// The user's name (kept even if the user no longer exists, so that
    /// whoever checks by it later is refused as well).
    pub fn name(&self) -> Option<Vec<u8>> {
        self.name.as_ref().map(|n| n.as_slice().to_vec())
    }

    /// Whether the user may run every command on every key: its root
    /// selector is `~*` and `+@all` (other selectors only ever add to
    /// it), so its keys need no checking one by one. `ACL GETUSER` costs as much as checking
    /// hundreds of keys, so the answer is kept until an ACL may have changed
    /// (`acl_may_have_changed`).
    pub fn all_keys(&self, ctx: &Context) -> bool {
        let Some(name) = &self.name else {
            return false;
        };
        // Inside a transaction an ACL command queued before this one may
        // have run already: keys are checked one by one there.
        let in_multi = self.in_multi.unwrap_or_else(|| {
            ctx.get_flags()
                .intersects(redis_module::ContextFlags::MULTI)
        });
        if in_multi {
            return false;
        }
        let name = name.as_slice();
        let epoch = ACL_EPOCH.with(Cell::get);
        let known = ALL_KEYS.with_borrow(|seen| {
            seen.iter()
                .find(|(e, n, _)| *e == epoch && n.as_slice() == name)
                .map(|(_, _, all)| *all)
        });
        if let Some(all) = known {
            return all;
        }
        // Every key and every command in the root selector (other
        // selectors only ever add to it).
        let all = match call(ctx, Mode::Local, "ACL", &[b"GETUSER", name]) {
            Ok(Reply::Array(fields)) => {
                let field = |name: &[u8]| {
                    fields.chunks(2).find_map(|f| match f {
                        [Reply::Bytes(k), Reply::Bytes(v)] if k == name => Some(v.clone()),
                        _ => None,
                    })
                };
                field(b"keys").as_deref() == Some(b"~*")
                    && field(b"commands").as_deref() == Some(b"+@all")
            }
            _ => false,
        };
        ALL_KEYS.with_borrow_mut(|seen| {
            seen.retain(|(e, _, _)| *e == epoch);
            if seen.len() >= 16 {
                seen.clear();
            }
            seen.push((epoch, name.to_vec(), all));
        });
        all
    }

    /// Whether the user may do `access` to `key` as the server would let
    /// it with the plain command for that access (`plain_command`): asked
    /// as for a real call, so that a selector whose keys match but whose
    /// commands do not allow it does not count.
    pub fn check(&self, ctx: &Context, key: &[u8], access: Access) -> Result<()> {
        let denied = || Error::NoPerm(key.to_vec());
        let Some(user) = self.user() else {
            return Err(denied());
        };
        let allowed = plain_commands(access).iter().any(|(cmd, extra)| {
            let mut argv: smallvec::SmallVec<[RedisString; 6]> = smallvec::SmallVec::new();
            argv.push(RedisString::create_from_slice(ctx.ctx, cmd));
            argv.push(RedisString::create_from_slice(ctx.ctx, key));
            for a in extra.iter() {
                argv.push(RedisString::create_from_slice(ctx.ctx, a));
            }
            let mut raw_argv: smallvec::SmallVec<[*mut raw::RedisModuleString; 6]> =
                argv.iter().map(|s| s.inner).collect();
            let argc = i32::try_from(raw_argv.len()).unwrap_or(0);
            // SAFETY: `user` is live while self is; the strings in `argv`
            // are live for the call, which only reads them.
            let ok = unsafe {
                raw::RedisModule_ACLCheckCommandPermissions
                    .map_or(raw::REDISMODULE_ERR as i32, |f| {
                        f(user.as_ptr(), raw_argv.as_mut_ptr(), argc)
                    })
            };
            ok == raw::REDISMODULE_OK as i32
        });
        if allowed {
            Ok(())
        } else {
            Err(denied())
        }
    }
}

/// A command and the arguments after its key.
type Plain = (&'static [u8], &'static [&'static [u8]]);

/// The commands a key access on a user's behalf stands for, any of which
/// the user may run on the key: deleting a key is `DEL` (a key is deleted
/// only if the user could `DEL` it), expiring it `PEXPIRE`; reading one is
/// what `TAG.TAGS` or `TAG.GETL` (read-only key) needs, writing one what
/// `TAG.ADD` or `TAG.SET` (a written key) needs, so that a user given the
/// module's commands uses them on the keys its selectors name.
pub fn plain_commands(access: Access) -> &'static [Plain] {
    match access {
        Access::Delete => &[(b"DEL", &[])],
        Access::Read => &[(b"TAG.TAGS", &[]), (b"TAG.GETL", &[])],
        Access::Write => &[
            (b"TAG.ADD", &[b"t"]),
            (b"TAG.SET", &[b"v", b"TAGS", b"1", b"t"]),
        ],
        Access::Expire => &[(b"PEXPIRE", &[b"0"])],
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        if let Some(Some(user)) = self.user.get().copied() {
            // SAFETY: the user was returned by GetModuleUserFromUserName and
            // is freed once, here.
            unsafe {
                if let Some(free) = raw::RedisModule_FreeModuleUser {
                    free(user.as_ptr());
                }
            }
        }
    }
}

/// The name of the calling user, `None` where there is none (the master
/// link, the AOF loader).
pub fn user_name(ctx: &Context) -> Option<Vec<u8>> {
    if from_master(ctx) {
        return None;
    }
    // SAFETY: plain function pointers of the module API; the returned
    // string is copied and freed here.
    unsafe {
        let name_of = raw::RedisModule_GetCurrentUserName?;
        let name = name_of(ctx.ctx);
        if name.is_null() {
            return None;
        }
        let bytes = RedisString::string_as_slice(name).to_vec();
        if let Some(free) = raw::RedisModule_FreeString {
            free(ctx.ctx, name);
        }
        Some(bytes)
    }
}

/// An ACL may have changed: an `ACL` command, or an `EXEC` (which may run
/// one queued earlier), went by. Users can change no other way (`ACL` is
/// refused in scripts; module users are not named users).
pub fn acl_may_have_changed() {
    ACL_EPOCH.with(|e| e.set(e.get().wrapping_add(1)));
}
