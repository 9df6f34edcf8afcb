//! Typed argument parsing shared by all commands. Works on byte slices so it
//! is unit-tested without a server; every check happens here, before any key
//! is opened, so that a bad call changes nothing.

use crate::engine::error::{Error, Result};

/// Expiry requested by a write, as the client gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No option: the write clears any existing TTL, as `SET` does.
    Persist,
    /// `KEEPTTL`.
    Keep,
    /// `EX`/`PX`: milliseconds from now.
    Relative(i64),
    /// `EXAT`/`PXAT`: unix time in milliseconds.
    At(i64),
}

impl Expiry {
    /// The absolute deadline in unix ms, or `None` for `Persist`/`Keep`.
    /// Replication carries this form so replicas expire at the same instant.
    pub fn deadline(self, now_ms: i64, cmd: &'static str) -> Result<Option<i64>> {
        match self {
            Expiry::Persist | Expiry::Keep => Ok(None),
            Expiry::At(ms) => Ok(Some(ms)),
            Expiry::Relative(ms) => now_ms
                .checked_add(ms)
                .map(Some)
                .ok_or(Error::InvalidExpire(cmd)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Always,
    IfAbsent,
    IfPresent,
}

#[derive(Debug, PartialEq, Eq)]
pub struct TagSetArgs<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub expiry: Expiry,
    pub condition: Condition,
    pub lease: Option<&'a [u8]>,
    /// `STALE ms`: stale for this long after the expiry, then gone.
    pub stale_ms: Option<i64>,
    /// Distinct tags, in the order first given.
    pub tags: Tags<'a>,
}

/// Parses a strict base-10 i64 the way Redis does (no sign `+`, no spaces).
pub fn parse_i64(arg: &[u8]) -> Result<i64> {
    if arg.first() == Some(&b'+') {
        return Err(Error::NotInteger);
    }
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(Error::NotInteger)
}

/// The option word `arg` spells, in any case ("" for none): compared in
/// place, since every TAG.SET passes here.
fn option_word(arg: &[u8]) -> &'static str {
    const WORDS: [&str; 10] = [
        "TAGS", "EX", "PX", "EXAT", "PXAT", "KEEPTTL", "NX", "XX", "LEASE", "STALE",
    ];
    WORDS
        .iter()
        .find(|w| arg.eq_ignore_ascii_case(w.as_bytes()))
        .copied()
        .unwrap_or("")
}

fn upper(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_uppercase()
}

/// Parses the value of an `EX`/`PX`/`EXAT`/`PXAT` option (`word` already
/// upper-cased). Rules follow `SET`: positive, and no overflow once in ms.
pub fn parse_expiry(word: &str, value: &[u8], cmd: &'static str) -> Result<Expiry> {
    let n = parse_i64(value)?;
    if n <= 0 {
        return Err(Error::InvalidExpire(cmd));
    }
    let ms = |n: i64| n.checked_mul(1000).ok_or(Error::InvalidExpire(cmd));
    match word {
        "EX" => Ok(Expiry::Relative(ms(n)?)),
        "PX" => Ok(Expiry::Relative(n)),
        "EXAT" => Ok(Expiry::At(ms(n)?)),
        "PXAT" => Ok(Expiry::At(n)),
        _ => Err(Error::Syntax(word.as_bytes().to_vec())),
    }
}

fn is_expiry_word(word: &str) -> bool {
    matches!(word, "EX" | "PX" | "EXAT" | "PXAT")
}

/// Keeps the first occurrence of each tag; rejects empty tags.
/// A command's tags, distinct, in order (most commands name a few).
pub type Tags<'a> = smallvec::SmallVec<[&'a [u8]; 4]>;

pub fn distinct_tags<'a>(tags: &[&'a [u8]]) -> Result<Tags<'a>> {
    let mut out: Tags<'a> = Tags::with_capacity(tags.len());
    for &t in tags {
        if t.is_empty() {
            return Err(Error::EmptyTag);
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// `TAG.PURGE tag [tag ...] [ASYNC]`, and its general form
/// `TAG.INVALIDATE [ALL] [SOFT grace-ms] [ASYNC] TAGS numtags tag [tag ...]`.
#[derive(Debug, PartialEq, Eq)]
pub struct PurgeArgs<'a> {
    pub tags: Tags<'a>,
    pub is_async: bool,
    /// Keys that carry every tag, rather than any.
    pub all: bool,
    /// Mark stale for this long at most, rather than delete.
    pub grace_ms: Option<i64>,
}

/// Bound on a soft invalidation's grace and a soft expiry: 30 days.
pub const GRACE_MS_MAX: i64 = 2_592_000_000;

/// `TAG.PURGE tag [tag ...] [ASYNC]` — `args` excludes the command name. A
/// last argument `ASYNC` (any case) is the option, never a tag: a tag of
/// that name is purged by naming it elsewhere than last.
pub fn parse_purge<'a>(args: &[&'a [u8]]) -> Result<PurgeArgs<'a>> {
    let (tags, is_async) = match args {
        [tags @ .., last] if !tags.is_empty() && last.eq_ignore_ascii_case(b"ASYNC") => {
            (tags, true)
        }
        _ => (args, false),
    };
    if tags.is_empty() {
        return Err(Error::WrongArity("tag.purge"));
    }
    Ok(PurgeArgs {
        tags: distinct_tags(tags)?,
        is_async,
        all: false,
        grace_ms: None,
    })
}

/// A grace in milliseconds: 1 … `GRACE_MS_MAX`.
pub fn parse_grace(value: &[u8]) -> Result<i64> {
    let n = parse_i64(value)?;
    if !(1..=GRACE_MS_MAX).contains(&n) {
        return Err(Error::Invalid(format!(
            "grace-ms must be between 1 and {GRACE_MS_MAX}"
        )));
    }
    Ok(n)
}

/// `TAG.INVALIDATE [ALL] [SOFT grace-ms] [ASYNC] TAGS numtags tag [tag ...]`
/// — options before `TAGS`, in any order and any case, each at most once.
pub fn parse_invalidate<'a>(args: &[&'a [u8]]) -> Result<PurgeArgs<'a>> {
    const CMD: &str = "tag.invalidate";
    let mut a = PurgeArgs {
        tags: Tags::new(),
        is_async: false,
        all: false,
        grace_ms: None,
    };
    let mut i = 0;
    loop {
        let Some(word) = args.get(i) else {
            return Err(Error::WrongArity(CMD));
        };
        i += 1;
        match upper(word).as_str() {
            "ALL" if !a.all => a.all = true,
            "ASYNC" if !a.is_async => a.is_async = true,
            "SOFT" if a.grace_ms.is_none() => {
                let value = args.get(i).ok_or(Error::WrongArity(CMD))?;
                i += 1;
                a.grace_ms = Some(parse_grace(value)?);
            }
            "TAGS" => break,
            _ => return Err(Error::Syntax(word.to_vec())),
        }
    }
    let n = args.get(i).ok_or(Error::WrongArity(CMD))?;
    let tags = args.get(i + 1..).unwrap_or_default();
    let n = parse_i64(n).map_err(|_| Error::NumTags)?;
    if n < 1 || usize::try_from(n).ok() != Some(tags.len()) {
        return Err(Error::NumTags);
    }
    a.tags = distinct_tags(tags)?;
    Ok(a)
}

/// `TAG.SET key value [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL] [NX|XX] [LEASE token]
/// TAGS numtags tag [tag ...]` — `args` excludes the command name.
pub fn parse_tag_set<'a>(args: &[&'a [u8]]) -> Result<TagSetArgs<'a>> {
    let (key, value, rest) = match args {
        [key, value, rest @ ..] if !rest.is_empty() => (*key, *value, rest),
        _ => return Err(Error::WrongArity("tag.set")),
    };
    let mut expiry: Option<Expiry> = None;
    let mut condition = Condition::Always;
    let mut lease = None;
    let mut stale_ms = None;
    let mut i = 0;
    loop {
        let Some(word_raw) = rest.get(i) else {
            return Err(Error::Invalid(
                "TAGS numtags tag [tag ...] is required".into(),
            ));
        };
        let word = option_word(word_raw);
        match word {
            "TAGS" => {
                let n = rest.get(i + 1).ok_or(Error::NumTags)?;
                let n = parse_i64(n).map_err(|_| Error::NumTags)?;
                let given = rest.get(i + 2..).unwrap_or_default();
                if n < 1 || usize::try_from(n).ok() != Some(given.len()) {
                    return Err(Error::NumTags);
                }
                let tags = distinct_tags(given)?;
                let expiry = expiry.unwrap_or(Expiry::Persist);
                if stale_ms.is_some() && matches!(expiry, Expiry::Persist | Expiry::Keep) {
                    return Err(Error::Invalid(
                        "STALE needs an expiry: EX, PX, EXAT or PXAT".into(),
                    ));
                }
                return Ok(TagSetArgs {
                    key,
                    value,
                    expiry,
                    condition,
                    lease,
                    stale_ms,
                    tags,
                });
            }
            w if is_expiry_word(w) => {
                if expiry.is_some() {
                    return Err(Error::Syntax(word_raw.to_vec()));
                }
                let v = rest
                    .get(i + 1)
                    .ok_or_else(|| Error::Syntax(word_raw.to_vec()))?;
                expiry = Some(parse_expiry(w, v, "tag.set")?);
                i += 2;
            }
            "KEEPTTL" => {
                if expiry.is_some() {
                    return Err(Error::Syntax(word_raw.to_vec()));
                }
                expiry = Some(Expiry::Keep);
                i += 1;
            }
            "NX" | "XX" => {
                let c = if word == "NX" {
                    Condition::IfAbsent
                } else {
                    Condition::IfPresent
                };
                if condition != Condition::Always && condition != c {
                    return Err(Error::Syntax(word_raw.to_vec()));
                }
                condition = c;
                i += 1;
            }
            "STALE" => {
                if stale_ms.is_some() {
                    return Err(Error::Syntax(word_raw.to_vec()));
                }
                let v = rest
                    .get(i + 1)
                    .ok_or_else(|| Error::Syntax(word_raw.to_vec()))?;
                stale_ms = Some(parse_grace(v).map_err(|e| match e {
                    Error::Invalid(_) => Error::Invalid(format!(
                        "STALE must be between 1 and {GRACE_MS_MAX} milliseconds"
                    )),
                    other => other,
                })?);
                i += 2;
            }
            "LEASE" => {
                if lease.is_some() {
                    return Err(Error::Syntax(word_raw.to_vec()));
                }
                lease = Some(
                    *rest
                        .get(i + 1)
                        .ok_or_else(|| Error::Syntax(word_raw.to_vec()))?,
                );
                i += 2;
            }
            _ => return Err(Error::Syntax(word_raw.to_vec())),
        }
    }
}

/// `TAG.APPLY key value unix-ms|KEEPTTL|PERSIST numadd set... [set ...]`:
/// the absolute form TAG.SET replicates as. The key joins the first
/// `numadd` sets and leaves the rest.
#[derive(Debug, PartialEq, Eq)]
pub struct ApplyArgs<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub deadline: Option<i64>,
    pub keep_ttl: bool,
    pub add: Vec<&'a [u8]>,
    pub rem: Vec<&'a [u8]>,
}

pub fn parse_apply<'a>(args: &[&'a [u8]]) -> Result<ApplyArgs<'a>> {
    let [key, value, expiry, numadd, sets @ ..] = args else {
        return Err(Error::WrongArity("tag.apply"));
    };
    let (deadline, keep_ttl) = if expiry.eq_ignore_ascii_case(b"KEEPTTL") {
        (None, true)
    } else if expiry.eq_ignore_ascii_case(b"PERSIST") {
        (None, false)
    } else {
        match parse_i64(expiry) {
            Ok(ms) if ms > 0 => (Some(ms), false),
            Ok(_) => return Err(Error::InvalidExpire("tag.apply")),
            Err(_) => return Err(Error::Syntax(expiry.to_vec())),
        }
    };
    let n = usize::try_from(parse_i64(numadd)?).map_err(|_| Error::NotInteger)?;
    if n > sets.len() {
        return Err(Error::WrongArity("tag.apply"));
    }
    let (add, rem) = sets.split_at(n);
    Ok(ApplyArgs {
        key,
        value,
        deadline,
        keep_ttl,
        add: add.to_vec(),
        rem: rem.to_vec(),
    })
}

/// Longest lease or wait, in ms: a day. Larger values are refused so that
/// no timer overflows.
pub const LEASE_MS_MAX: i64 = 86_400_000;

#[derive(Debug, PartialEq, Eq)]
pub struct GetlArgs<'a> {
    pub key: &'a [u8],
    pub ttl_ms: Option<i64>,
    pub wait_ms: Option<i64>,
}

/// `TAG.GETL key [TTL ms] [WAIT ms]`.
pub fn parse_getl<'a>(args: &[&'a [u8]]) -> Result<GetlArgs<'a>> {
    let Some((key, rest)) = args.split_first() else {
        return Err(Error::WrongArity("tag.getl"));
    };
    let mut a = GetlArgs {
        key,
        ttl_ms: None,
        wait_ms: None,
    };
    let mut words = rest.iter();
    while let Some(word) = words.next() {
        let value = words.next().ok_or_else(|| Error::Syntax(word.to_vec()))?;
        match upper(word).as_str() {
            "TTL" if a.ttl_ms.is_none() => {
                let n = parse_i64(value)?;
                if !(1..=LEASE_MS_MAX).contains(&n) {
                    return Err(Error::Invalid(format!(
                        "TTL must be between 1 and {LEASE_MS_MAX} milliseconds"
                    )));
                }
                a.ttl_ms = Some(n);
            }
            "WAIT" if a.wait_ms.is_none() => {
                let n = parse_i64(value)?;
                if !(0..=LEASE_MS_MAX).contains(&n) {
                    return Err(Error::Invalid(format!(
                        "WAIT must be between 0 and {LEASE_MS_MAX} milliseconds"
                    )));
                }
                a.wait_ms = Some(n);
            }
            _ => return Err(Error::Syntax(word.to_vec())),
        }
    }
    Ok(a)
}

/// `key tag [tag ...]` for TAG.ADD / TAG.REM.
pub fn parse_key_tags<'a>(args: &[&'a [u8]], cmd: &'static str) -> Result<(&'a [u8], Tags<'a>)> {
    match args {
        [key, tags @ ..] if !tags.is_empty() => Ok((*key, distinct_tags(tags)?)),
        _ => Err(Error::WrongArity(cmd)),
    }
}

/// `VER.SET scope key value [EX s|PX ms|EXAT s|PXAT ms]`.
#[derive(Debug, PartialEq, Eq)]
pub struct VerSetArgs<'a> {
    pub scope: &'a [u8],
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub expiry: Expiry,
}

pub fn parse_ver_set<'a>(args: &[&'a [u8]]) -> Result<VerSetArgs<'a>> {
    let (scope, key, value, rest) = match args {
        [s, k, v, rest @ ..] => (*s, *k, *v, rest),
        _ => return Err(Error::WrongArity("ver.set")),
    };
    let expiry = match rest {
        [] => Expiry::Persist,
        [word, n] => {
            let w = upper(word);
            if !is_expiry_word(&w) {
                return Err(Error::Syntax(word.to_vec()));
            }
            parse_expiry(&w, n, "ver.set")?
        }
        [word] => return Err(Error::Syntax(word.to_vec())),
        [_, _, extra, ..] => return Err(Error::Syntax(extra.to_vec())),
    };
    Ok(VerSetArgs {
        scope,
        key,
        value,
        expiry,
    })
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_form() {
        fn a(s: &'static str) -> Result<ApplyArgs<'static>> {
            let v: Vec<&[u8]> = s.split(' ').map(str::as_bytes).collect();
            parse_apply(&v)
        }
        let x = a("k v 5 2 s1 s2 s3").unwrap();
        assert_eq!((x.deadline, x.add.len(), x.rem.len()), (Some(5), 2, 1));
        assert!(a("k v KEEPTTL 0").unwrap().keep_ttl);
        assert_eq!(a("k v persist 0 s").unwrap().rem, vec![&b"s"[..]]);
        assert_eq!(a("k v PERSIST 3 s"), Err(Error::WrongArity("tag.apply")));
        assert_eq!(a("k v NOW 0"), Err(Error::Syntax(b"NOW".to_vec())));
        assert_eq!(a("k v 0 0"), Err(Error::InvalidExpire("tag.apply")));
        assert_eq!(a("k v PERSIST -1"), Err(Error::NotInteger));
        assert_eq!(a("k v PERSIST"), Err(Error::WrongArity("tag.apply")));
    }

    #[test]
    fn getl_bounds() {
        fn g(s: &'static str) -> Result<GetlArgs<'static>> {
            let v: Vec<&[u8]> = s.split(' ').map(str::as_bytes).collect();
            parse_getl(&v)
        }
        assert_eq!(
            g("k ttl 5 WAIT 0").map(|a| (a.ttl_ms, a.wait_ms)),
            Ok((Some(5), Some(0)))
        );
        assert!(g("k TTL 86400000").is_ok());
        assert!(matches!(g("k TTL 86400001"), Err(Error::Invalid(_))));
        assert!(matches!(g("k TTL 0"), Err(Error::Invalid(_))));
        assert!(matches!(g("k WAIT -1"), Err(Error::Invalid(_))));
        assert_eq!(g("k TTL"), Err(Error::Syntax(b"TTL".to_vec())));
        assert_eq!(g("k TTL 1 TTL 2"), Err(Error::Syntax(b"TTL".to_vec())));
        assert_eq!(g("k x"), Err(Error::Syntax(b"x".to_vec())));
    }

    #[test]
    fn ver_set_args() {
        fn v(s: &str) -> Vec<&[u8]> {
            s.split(' ').map(str::as_bytes).collect()
        }
        assert_eq!(
            parse_ver_set(&v("s k v")).map(|a| a.expiry),
            Ok(Expiry::Persist)
        );
        assert_eq!(
            parse_ver_set(&v("s k v px 5")).map(|a| a.expiry),
            Ok(Expiry::Relative(5))
        );
        assert_eq!(parse_ver_set(&v("s k")), Err(Error::WrongArity("ver.set")));
        assert_eq!(
            parse_ver_set(&v("s k v EX")),
            Err(Error::Syntax(b"EX".to_vec()))
        );
        assert_eq!(
            parse_ver_set(&v("s k v KEEPTTL 1")),
            Err(Error::Syntax(b"KEEPTTL".to_vec()))
        );
        assert_eq!(
            parse_ver_set(&v("s k v EX 0")),
            Err(Error::InvalidExpire("ver.set"))
        );
        assert_eq!(
            parse_ver_set(&v("s k v EX 1 PX 2")),
            Err(Error::Syntax(b"PX".to_vec()))
        );
    }

    fn p(s: &str) -> Result<TagSetArgs<'_>> {
        let v: Vec<&[u8]> = s.split(' ').map(str::as_bytes).collect();
        parse_tag_set(&v)
    }

    #[test]
    fn minimal_and_options() {
        let a = p("k v TAGS 2 a b").unwrap();
        assert_eq!(a.key, b"k");
        assert_eq!(a.tags.as_slice(), [&b"a"[..], b"b"]);
        assert_eq!(a.expiry, Expiry::Persist);
        let a = p("k v ex 10 nx TAGS 1 a").unwrap();
        assert_eq!(a.expiry, Expiry::Relative(10_000));
        assert_eq!(a.condition, Condition::IfAbsent);
        let a = p("k v PXAT 5 XX KEEPTTL TAGS 1 a");
        assert_eq!(a, Err(Error::Syntax(b"KEEPTTL".to_vec())));
        let a = p("k v keepttl lease tok TAGS 3 a a b").unwrap();
        assert_eq!(a.expiry, Expiry::Keep);
        assert_eq!(a.lease, Some(&b"tok"[..]));
        assert_eq!(a.tags.len(), 2);
    }

    #[test]
    fn bad_inputs() {
        assert_eq!(p("k v"), Err(Error::WrongArity("tag.set")));
        assert!(matches!(p("k v EX 10"), Err(Error::Invalid(_))));
        assert_eq!(p("k v TAGS 2 a"), Err(Error::NumTags));
        assert_eq!(p("k v TAGS 1 a b"), Err(Error::NumTags));
        assert_eq!(p("k v TAGS 0"), Err(Error::NumTags));
        assert_eq!(p("k v TAGS -1 a"), Err(Error::NumTags));
        assert_eq!(p("k v TAGS x a"), Err(Error::NumTags));
        assert_eq!(p("k v TAGS"), Err(Error::NumTags));
        assert_eq!(p("k v EX 0 TAGS 1 a"), Err(Error::InvalidExpire("tag.set")));
        assert_eq!(
            p("k v PX -5 TAGS 1 a"),
            Err(Error::InvalidExpire("tag.set"))
        );
        assert_eq!(p("k v EX abc TAGS 1 a"), Err(Error::NotInteger));
        assert_eq!(p("k v EX +5 TAGS 1 a"), Err(Error::NotInteger));
        assert_eq!(
            p("k v EX 9223372036854775807 TAGS 1 a"),
            Err(Error::InvalidExpire("tag.set"))
        );
        assert_eq!(
            p("k v EX 1 PX 1 TAGS 1 a"),
            Err(Error::Syntax(b"PX".to_vec()))
        );
        assert_eq!(p("k v NX XX TAGS 1 a"), Err(Error::Syntax(b"XX".to_vec())));
        assert_eq!(p("k v FOO TAGS 1 a"), Err(Error::Syntax(b"FOO".to_vec())));
        assert_eq!(p("k v EX"), Err(Error::Syntax(b"EX".to_vec())));
        let v: Vec<&[u8]> = vec![b"k", b"v", b"TAGS", b"1", b""];
        assert_eq!(parse_tag_set(&v), Err(Error::EmptyTag));
    }

    #[test]
    fn deadline_overflow() {
        assert_eq!(Expiry::Relative(10).deadline(5, "x"), Ok(Some(15)));
        assert!(Expiry::Relative(i64::MAX).deadline(5, "x").is_err());
        assert_eq!(Expiry::Keep.deadline(5, "x"), Ok(None));
    }

    #[test]
    fn binary_tags() {
        let v: Vec<&[u8]> = vec![b"\x00k", b"\xff", b"TAGS", b"1", b"\x00\xff"];
        let a = parse_tag_set(&v).unwrap();
        assert_eq!(a.tags.as_slice(), [&b"\x00\xff"[..]]);
    }

    #[test]
    fn purge_arguments() {
        fn p<'a>(a: &[&'a [u8]]) -> Result<PurgeArgs<'a>> {
            parse_purge(a)
        }
        let got = p(&[b"a", b"b", b"a"]).unwrap();
        assert_eq!(got.tags.as_slice(), &[b"a".as_slice(), b"b"]);
        assert!(!got.is_async);
        let got = p(&[b"a", b"aSyNc"]).unwrap();
        assert_eq!(got.tags.as_slice(), &[b"a".as_slice()]);
        assert!(got.is_async);
        // Alone, ASYNC is a tag; anywhere but last, too.
        assert_eq!(
            p(&[b"async"]).unwrap().tags.as_slice(),
            &[b"async".as_slice()]
        );
        assert_eq!(p(&[b"ASYNC", b"x"]).unwrap().tags.len(), 2);
        assert_eq!(p(&[]), Err(Error::WrongArity("tag.purge")));
        assert_eq!(p(&[b"", b"ASYNC"]), Err(Error::EmptyTag));
    }

    #[test]
    fn invalidate_arguments() {
        fn p<'a>(a: &[&'a [u8]]) -> Result<PurgeArgs<'a>> {
            parse_invalidate(a)
        }
        let got = p(&[b"soft", b"500", b"all", b"ASYNC", b"TAGS", b"2", b"a", b"b"]).unwrap();
        assert_eq!(got.tags.as_slice(), &[b"a".as_slice(), b"b"]);
        assert!(got.all && got.is_async);
        assert_eq!(got.grace_ms, Some(500));
        let plain = p(&[b"TAGS", b"1", b"ALL"]).unwrap();
        assert_eq!(plain.tags.as_slice(), &[b"ALL".as_slice()]);
        assert!(!plain.all && !plain.is_async && plain.grace_ms.is_none());
        assert_eq!(p(&[]).unwrap_err(), Error::WrongArity("tag.invalidate"));
        assert_eq!(
            p(&[b"ALL"]).unwrap_err(),
            Error::WrongArity("tag.invalidate")
        );
        assert_eq!(
            p(&[b"TAGS"]).unwrap_err(),
            Error::WrongArity("tag.invalidate")
        );
        assert_eq!(p(&[b"TAGS", b"2", b"a"]).unwrap_err(), Error::NumTags);
        assert_eq!(p(&[b"TAGS", b"0"]).unwrap_err(), Error::NumTags);
        assert_eq!(p(&[b"TAGS", b"x", b"a"]).unwrap_err(), Error::NumTags);
        assert_eq!(
            p(&[b"ALL", b"ALL", b"TAGS", b"1", b"a"]).unwrap_err(),
            Error::Syntax(b"ALL".to_vec())
        );
        assert_eq!(
            p(&[b"SOFT", b"0", b"TAGS", b"1", b"a"]).unwrap_err(),
            Error::Invalid("grace-ms must be between 1 and 2592000000".into())
        );
        assert_eq!(
            p(&[b"SOFT", b"2592000001", b"TAGS", b"1", b"a"]).unwrap_err(),
            Error::Invalid("grace-ms must be between 1 and 2592000000".into())
        );
        assert_eq!(
            p(&[b"SOFT", b"x", b"TAGS", b"1", b"a"]).unwrap_err(),
            Error::NotInteger
        );
        assert_eq!(
            p(&[b"SOFT"]).unwrap_err(),
            Error::WrongArity("tag.invalidate")
        );
        assert_eq!(
            p(&[b"BOGUS", b"TAGS", b"1", b"a"]).unwrap_err(),
            Error::Syntax(b"BOGUS".to_vec())
        );
        assert_eq!(p(&[b"TAGS", b"1", b""]).unwrap_err(), Error::EmptyTag);
    }
}
