//! The server log. Messages may carry client or admin bytes (a load
//! argument, an error naming a key), so they are escaped to printable
//! ASCII and passed as the argument of a fixed `%s` format: the server
//! formats its log line with printf, and the crate's own logger panics on
//! a NUL and hands the message over as the format.

use redis_module::{raw, Context};
use std::ffi::CString;

/// `msg` with every byte outside printable ASCII (and the backslash) as
/// `\xNN`.
pub fn escape(msg: &[u8]) -> String {
    let mut out = String::with_capacity(msg.len());
    for &b in msg {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn log(ctx: Option<&Context>, level: &std::ffi::CStr, msg: &str) {
    // No NUL is left after escaping, so the conversion cannot fail.
    let Ok(text) = CString::new(escape(msg.as_bytes())) else {
        return;
    };
    let ctx = ctx.map_or(std::ptr::null_mut(), |c| c.ctx);
    // SAFETY: a module API call with a live (or null: allowed, the line
    // then has no module name) context and NUL-terminated strings that
    // outlive it; "%s" takes exactly the one argument given.
    unsafe {
        if let Some(f) = raw::RedisModule_Log {
            f(ctx, level.as_ptr(), c"%s".as_ptr(), text.as_ptr());
        }
    }
}

pub fn warning(ctx: &Context, msg: &str) {
    log(Some(ctx), c"warning", msg);
}

pub fn notice(ctx: &Context, msg: &str) {
    log(Some(ctx), c"notice", msg);
}

/// From where no context is at hand (the panic hook).
pub fn warning_anywhere(msg: &str) {
    log(None, c"warning", msg);
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_everything_but_printable_ascii() {
        assert_eq!(
            super::escape(b"a\0b\r\n%s\\\xff"),
            "a\\x00b\\x0d\\x0a%s\\x5c\\xff"
        );
    }
}
