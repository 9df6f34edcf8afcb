//! One error type for every command. Each message starts with the code a
//! Redis client expects (`ERR`, `WRONGTYPE`, `NOPERM`, `CROSSSLOT`, `TRYAGAIN`), because
//! the text is sent to the client exactly as written.

use redis_module::RedisError;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    WrongArity(&'static str),
    /// The offending argument, as the client sent it.
    Syntax(Vec<u8>),
    NotInteger,
    InvalidExpire(&'static str),
    NumTags,
    EmptyTag,
    NoSuchKey,
    WrongType,
    /// The key the caller may not touch.
    NoPerm(Vec<u8>),
    CrossSlot,
    Lease(&'static str),
    Invalid(String),
    /// A version past the largest 64-bit integer.
    Overflow,
    /// A cluster in motion: the same call is to be made again.
    TryAgain(&'static str),
    Internal(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::WrongArity(cmd) => {
                write!(f, "ERR wrong number of arguments for '{cmd}' command")
            }
            Error::Syntax(arg) => write!(f, "ERR syntax error near '{}'", Escaped(arg)),
            Error::NotInteger => write!(f, "ERR value is not an integer or out of range"),
            Error::InvalidExpire(cmd) => write!(f, "ERR invalid expire time in '{cmd}' command"),
            Error::NumTags => write!(
                f,
                "ERR numtags must be a positive integer equal to the number of tags that follow"
            ),
            Error::EmptyTag => write!(f, "ERR tag must not be empty"),
            Error::NoSuchKey => write!(f, "ERR no such key"),
            Error::WrongType => write!(
                f,
                "WRONGTYPE Operation against a key holding the wrong kind of value"
            ),
            Error::NoPerm(key) => write!(
                f,
                "NOPERM this user has no permissions to access the '{}' key",
                Escaped(key)
            ),
            Error::CrossSlot => write!(f, "CROSSSLOT Keys in request don't hash to the same slot"),
            Error::Lease(why) => write!(f, "ERR invalid lease token: {why}"),
            Error::Invalid(msg) => write!(f, "ERR {msg}"),
            Error::Overflow => write!(f, "ERR increment or decrement would overflow"),
            Error::TryAgain(why) => write!(f, "TRYAGAIN {why}"),
            Error::Internal(msg) => write!(f, "ERR internal error: {msg}"),
        }
    }
}

/// Client bytes shown in an error: printable ASCII as is, anything else
/// (and the quote and backslash) as `\xHH`, so that the message is one
/// well-formed line whatever the client sent. The crate sends errors
/// through a C string: a raw NUL there would abort the server.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if (0x20..0x7f).contains(&b) && b != b'\'' && b != b'\\' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl From<Error> for RedisError {
    fn from(e: Error) -> Self {
        // Every client byte is escaped above; this pass keeps the promise
        // for any text that came from elsewhere (a server's own message).
        let text: String = e
            .to_string()
            .chars()
            .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
            .collect();
        RedisError::String(text)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_bytes_are_escaped() {
        let e = Error::Syntax("a\0b\r\n'\\😀".as_bytes().to_vec());
        assert_eq!(
            e.to_string(),
            "ERR syntax error near 'a\\x00b\\x0d\\x0a\\x27\\x5c\\xf0\\x9f\\x98\\x80'"
        );
    }

    #[test]
    fn every_message_starts_with_a_code() {
        let all = [
            Error::WrongArity("tag.set"),
            Error::Syntax(b"FOO".to_vec()),
            Error::NotInteger,
            Error::InvalidExpire("tag.set"),
            Error::NumTags,
            Error::EmptyTag,
            Error::NoSuchKey,
            Error::WrongType,
            Error::NoPerm(b"k".to_vec()),
            Error::CrossSlot,
            Error::Lease("unknown"),
            Error::Invalid("x".into()),
            Error::Overflow,
            Error::TryAgain("x"),
            Error::Internal("x".into()),
        ];
        for e in all {
            let s = e.to_string();
            let code = s.split(' ').next().unwrap_or_default();
            assert!(
                ["ERR", "WRONGTYPE", "NOPERM", "CROSSSLOT", "TRYAGAIN"].contains(&code),
                "{s}"
            );
        }
    }
}
