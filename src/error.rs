//! One error type for every command. Each message starts with the code a
//! Redis client expects (`ERR`, `WRONGTYPE`, `NOPERM`, `CROSSSLOT`), because
//! the text is sent to the client exactly as written.

use redis_module::RedisError;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    WrongArity(&'static str),
    Syntax(String),
    NotInteger,
    InvalidExpire(&'static str),
    NumTags,
    EmptyTag,
    NoSuchKey,
    WrongType,
    NoPerm(String),
    CrossSlot,
    Lease(&'static str),
    Invalid(String),
    Internal(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::WrongArity(cmd) => {
                write!(f, "ERR wrong number of arguments for '{cmd}' command")
            }
            Error::Syntax(arg) => write!(f, "ERR syntax error near '{arg}'"),
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
                "NOPERM this user has no permissions to access the '{key}' key"
            ),
            Error::CrossSlot => write!(f, "CROSSSLOT Keys in request don't hash to the same slot"),
            Error::Lease(why) => write!(f, "ERR invalid lease token: {why}"),
            Error::Invalid(msg) => write!(f, "ERR {msg}"),
            Error::Internal(msg) => write!(f, "ERR internal error: {msg}"),
        }
    }
}

impl From<Error> for RedisError {
    fn from(e: Error) -> Self {
        RedisError::String(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_starts_with_a_code() {
        let all = [
            Error::WrongArity("tag.set"),
            Error::Syntax("FOO".into()),
            Error::NotInteger,
            Error::InvalidExpire("tag.set"),
            Error::NumTags,
            Error::EmptyTag,
            Error::NoSuchKey,
            Error::WrongType,
            Error::NoPerm("k".into()),
            Error::CrossSlot,
            Error::Lease("unknown"),
            Error::Invalid("x".into()),
            Error::Internal("x".into()),
        ];
        for e in all {
            let s = e.to_string();
            let code = s.split(' ').next().unwrap_or_default();
            assert!(
                ["ERR", "WRONGTYPE", "NOPERM", "CROSSSLOT"].contains(&code),
                "{s}"
            );
        }
    }
}
